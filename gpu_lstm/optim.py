"""Optimizers and gradient clipping that update parameters in place where they live.

Every operation is an array expression on the parameter's own device: on the GPU nothing is copied
to the host (step counts and hyper-parameters are host scalars, never read back from the device).
"""

from typing import Any, Dict, Iterable, Tuple, Union

import numpy as np

from . import _checks as ck


def _xp(a):
    from .backend import backend_for
    return backend_for(a).xp


Arrays = Union[Dict[str, Any], Iterable[Any]]


def _backend(a):
    from .backend import backend_for
    return backend_for(a)


def adam_constants(opt):
    """The scalars of one Adam/AdamW step as the array expressions of Adam._update use them (Python
    floats; the fused kernel rounds each to the parameter's dtype, as NumPy does)."""
    b1, b2 = opt.betas
    wd = opt.weight_decay
    return {"lr_c1": opt.lr / (1 - b1 ** opt.step_count), "b1": b1, "omb1": 1 - b1, "b2": b2,
            "omb2": 1 - b2, "c2": 1 - b2 ** opt.step_count, "eps": opt.eps, "wd": wd,
            "l2": bool(wd and not opt.decoupled), "decay": 1.0 - opt.lr * wd,
            "decoupled": bool(wd and opt.decoupled)}


class Optimizer:
    """Base class: updates ``params`` in place from ``grads``.

    Parameters
    ----------
    params, grads : dict of str to array
        The same keys and shapes (e.g. ``model.params`` and ``model.grads``).
    lr : float
        Learning rate, >= 0.
    """

    slots = ()

    def __init__(self, params: Dict[str, Any], grads: Dict[str, Any], lr: float) -> None:
        if set(params) != set(grads):
            raise ValueError(f"grads: expected the keys of params {sorted(params)}, got {sorted(grads)}")
        for k in params:
            if params[k].shape != grads[k].shape:
                raise ValueError(f"grads[{k!r}]: expected the parameter's shape {tuple(params[k].shape)}, "
                                 f"got {tuple(grads[k].shape)}")
        self.params, self.grads = params, grads
        self.lr = ck.nonnegative_float("lr", lr)
        self.step_count = 0
        self.state = {k: {s: _xp(p).zeros_like(p) for s in self.slots} for k, p in params.items()}

    def step(self) -> None:
        """Apply one update to every parameter, in place, on its device."""
        self.step_count += 1
        for k, p in self.params.items():
            self._update(p, self.grads[k], self.state[k])

    def hyperparameters(self) -> Dict[str, Any]:
        """The settings, as JSON-able values.

        Returns
        -------
        dict
        """
        return {"lr": self.lr}

    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state.

        Returns
        -------
        dict
            ``{'step_count', 'hyperparameters', 'state': {param: {slot: array}}}`` (arrays on the
            device, not copies).
        """
        return {"step_count": self.step_count, "hyperparameters": self.hyperparameters(), "state": self.state}

    def check_state_dict(self, sd: Dict[str, Any]) -> Tuple[int, Dict[str, Dict[str, Any]]]:
        """Check :meth:`state_dict`'s output against this optimizer without writing anything.

        Parameters
        ----------
        sd : dict
            ``{'step_count', 'state'}`` as :meth:`state_dict` returns it.

        Returns
        -------
        step_count : int
        state : dict
            ``{param: {slot: array}}``, every slot an array of real numbers of its parameter's shape.

        Raises
        ------
        TypeError, KeyError, ValueError
            Naming the entry (``sd['state']['l0.W']['m']``, ...), what was expected and what was got.
        """
        if not isinstance(sd, dict) or "state" not in sd or "step_count" not in sd:
            raise TypeError(f"sd: expected a dict with 'state' and 'step_count', got {type(sd).__name__}")
        step_count = sd["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"sd['step_count']: expected an int >= 0, got {step_count!r}")
        state = sd["state"]
        if not isinstance(state, dict):
            raise TypeError(f"sd['state']: expected a dict {{param: {{slot: array}}}}, got {type(state).__name__}")
        out = {}
        for k in self.params:
            slots = state.get(k)
            if not isinstance(slots, dict):
                raise KeyError(f"sd['state'][{k!r}]: expected a dict of the slots {list(self.slots)}, got "
                               f"{'nothing' if slots is None else type(slots).__name__}")
            out[k] = {}
            for s in self.slots:
                name = f"sd['state'][{k!r}][{s!r}]"
                if s not in slots:
                    raise KeyError(f"{name}: expected an array of shape {tuple(self.params[k].shape)}, got nothing")
                v = slots[s]
                if not (hasattr(v, "shape") and hasattr(v, "dtype")):
                    v = np.asarray(v)
                if v.dtype.kind not in "fiu":
                    raise TypeError(f"{name}: expected an array of real numbers, got dtype {v.dtype.name}")
                if tuple(v.shape) != tuple(self.params[k].shape):
                    raise ValueError(f"{name}: expected shape {tuple(self.params[k].shape)}, got {tuple(v.shape)}")
                out[k][s] = v
        return int(step_count), out

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, all or nothing.

        Parameters
        ----------
        sd : dict
            ``{'step_count', 'state'}`` as :meth:`state_dict` returns it; everything is checked by
            :meth:`check_state_dict` before anything is written.
        """
        step_count, state = self.check_state_dict(sd)
        for k in self.params:
            for s in self.slots:
                self.state[k][s][...] = _xp(self.params[k]).asarray(state[k][s])
        self.step_count = step_count


class SGD(Optimizer):
    """Stochastic gradient descent: p -= lr * v with v = momentum * v + g (+ weight_decay * p), as
    torch.optim.SGD (no dampening).

    Parameters
    ----------
    params, grads : dict of str to array
    lr, momentum, weight_decay : float
        All >= 0.
    """

    def __init__(self, params: Dict[str, Any], grads: Dict[str, Any], lr: float = 0.1,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.momentum = ck.nonnegative_float("momentum", momentum)
        self.weight_decay = ck.nonnegative_float("weight_decay", weight_decay)
        self.slots = ("velocity",) if self.momentum else ()
        super().__init__(params, grads, lr)

    def hyperparameters(self) -> Dict[str, Any]:
        """The settings, as JSON-able values.

        Returns
        -------
        dict
        """
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}

    def _update(self, p, g, st):
        fused = getattr(_backend(p), "sgd_step", None)
        if fused is not None and p.flags.c_contiguous and g.flags.c_contiguous:
            fused(p, g, st.get("velocity"), {"lr": self.lr, "mu": self.momentum, "wd": self.weight_decay,
                                             "l2": bool(self.weight_decay)})
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = st["velocity"]
            v *= self.momentum
            v += g
            g = v
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction; ``weight_decay`` is L2 added to the gradient.

    Parameters
    ----------
    params, grads : dict of str to array
    lr : float
    betas : (float, float)
        Each in [0, 1).
    eps, weight_decay : float
    """

    slots = ("m", "v")
    decoupled = False

    def __init__(self, params: Dict[str, Any], grads: Dict[str, Any], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        b1, b2 = betas
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if ck.nonnegative_float(name, b) >= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1), got {b}")
        self.betas = (float(b1), float(b2))
        self.eps = ck.nonnegative_float("eps", eps)
        self.weight_decay = ck.nonnegative_float("weight_decay", weight_decay)
        super().__init__(params, grads, lr)

    def hyperparameters(self) -> Dict[str, Any]:
        """The settings, as JSON-able values.

        Returns
        -------
        dict
        """
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, p, g, st):
        fused = getattr(_backend(p), "adam_step", None)
        if fused is not None and p.flags.c_contiguous and g.flags.c_contiguous:
            fused(p, g, st["m"], st["v"], adam_constants(self))   # one kernel: the same operations
            return
        b1, b2 = self.betas
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p
        if self.weight_decay and self.decoupled:
            p *= 1.0 - self.lr * self.weight_decay     # AdamW: decay the weights, not the gradient
        m, v = st["m"], st["v"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        xp = _xp(p)
        c1 = 1 - b1 ** self.step_count
        c2 = 1 - b2 ** self.step_count
        p -= (self.lr / c1) * m / (xp.sqrt(v / c2) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019), as torch.optim.AdamW.

    Parameters
    ----------
    params, grads : dict of str to array
    lr : float
    betas : (float, float)
    eps, weight_decay : float
    """

    decoupled = True

    def __init__(self, params: Dict[str, Any], grads: Dict[str, Any], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def _fused_norm(grads):
    """The backend's fused global norm (cuda/clip_kernels.cuh) when every gradient can use it: same
    dtype as the backend, C-contiguous. None otherwise (the array expressions below run instead)."""
    be = _backend(grads[0])
    fused = getattr(be, "grad_norm", None)
    if fused is None or not all(g.dtype == be.dtype and g.flags.c_contiguous for g in grads):
        return None
    return fused


def global_grad_norm(grads: Arrays) -> Any:
    """The global L2 norm of all gradients.

    On the GPU: the fixed-order two-level reduction of cuda/clip_kernels.cuh (P + 2 launches, no host
    sync); NumPy's sum is pairwise, so the two agree to rounding, not bitwise.

    Parameters
    ----------
    grads : dict of arrays, or iterable of arrays

    Returns
    -------
    0-d array
        sqrt(sum of every squared element), float64, on the gradients' device.
    """
    grads = list(grads.values()) if isinstance(grads, dict) else list(grads)
    if not grads:
        raise ValueError("grads: expected at least one gradient array, got none")
    fused = _fused_norm(grads)
    if fused is not None:
        return fused(grads)
    xp = _xp(grads[0])
    total = xp.zeros((), dtype=np.float64)
    for g in grads:
        total = total + (g.astype(np.float64, copy=False) ** 2).sum()
    return xp.sqrt(total)


def clip_grad_norm(grads: Arrays, max_norm: float, eps: float = 1e-6) -> Any:
    """Clip gradients by their global norm, in place.

    Every gradient is scaled by min(1, max_norm / (norm + eps)), norm being their global L2 norm; the
    scale is applied on the device with no host round trip.

    Parameters
    ----------
    grads : dict of arrays, or iterable of arrays
    max_norm : float
        Positive. (To turn clipping off, do not call this.)
    eps : float

    Returns
    -------
    0-d array
        The norm before clipping, on the device.
    """
    # 0 would silently zero every gradient: clipping is turned off by not calling this.
    max_norm = ck.positive_float("max_norm", max_norm)
    glist = list(grads.values()) if isinstance(grads, dict) else list(grads)
    if not glist:
        raise ValueError("grads: expected at least one gradient array, got none")
    fused = _fused_norm(glist)
    if fused is not None:   # norm, coefficient and scaling on the device: 2P + 2 launches
        return fused(glist, max_norm, eps)
    norm = global_grad_norm(glist)
    xp = _xp(norm)
    scale = xp.minimum(1.0, max_norm / (norm + eps))
    for g in glist:
        g *= scale.astype(g.dtype)
    return norm


def clip_grad_value(grads: Arrays, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value], in place.

    Parameters
    ----------
    grads : dict of arrays, or iterable of arrays
    clip_value : float
        Positive.
    """
    clip_value = ck.positive_float("clip_value", clip_value)   # 0 would zero every gradient
    for g in (grads.values() if isinstance(grads, dict) else grads):
        _xp(g).clip(g, -clip_value, clip_value, out=g)
