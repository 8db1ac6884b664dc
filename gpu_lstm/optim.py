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


def _check_updatable(name, a):
    """a is updated in place: a float array (its logical dtype: a GPU bfloat16 array is uint16 bits)
    that can be written. Checked before anything is written, so a failure cannot leave half an update."""
    ck.float_kind(name, _backend(a).dtype_of(a))
    if not getattr(a.flags, "writeable", True):      # CuPy arrays have no such flag: always writable
        raise ValueError(f"{name}: expected a writable array (it is updated in place), got a read-only one")


def _named_grads(grads):
    """[(name, array)] of a dict or an iterable of gradients, each checked updatable."""
    named = ([(f"grads[{k!r}]", g) for k, g in grads.items()] if isinstance(grads, dict)
             else [(f"grads[{i}]", g) for i, g in enumerate(grads)])
    for name, g in named:
        _check_updatable(name, g)
    return named


def adam_constants(opt):
    """The scalars of one Adam/AdamW step as the array expressions of Adam._update use them (Python
    floats; the fused kernel rounds each to the parameter's dtype, as NumPy does).

    Parameters
    ----------
    opt : Adam or AdamW
        After its ``step_count`` was advanced for this step.

    Returns
    -------
    dict
        ``lr_c1`` (lr over the first moment's bias correction), ``b1``, ``omb1`` (1 - b1), ``b2``,
        ``omb2``, ``c2`` (the second moment's bias correction), ``eps``, ``wd``, ``l2`` and
        ``decoupled`` (which weight decay applies), ``decay`` (1 - lr * wd).
    """
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
            _check_updatable(f"params[{k!r}]", params[k])
            if params[k].shape != grads[k].shape:
                raise ValueError(f"grads[{k!r}]: expected the parameter's shape {tuple(params[k].shape)}, "
                                 f"got {tuple(grads[k].shape)}")
            # A 16-bit model has float32 gradients; updating its 16-bit parameters (and keeping 16-bit
            # moments) directly loses small updates and underflows the second moment.
            pd, gd = _backend(params[k]).dtype_of(params[k]), _backend(grads[k]).dtype_of(grads[k])
            if pd != gd:
                raise TypeError(f"params[{k!r}]: expected the dtype of its gradient ({gd.name}), got {pd.name}; "
                                "for a bfloat16/float16 model use optim.MixedPrecision (float32 master "
                                "weights), e.g. gpu_lstm.training.make_optimizer")
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
                if not (hasattr(v, "shape") and isinstance(getattr(v, "dtype", None), np.dtype)):
                    try:                 # lists, torch tensors, ...: what NumPy makes of them
                        v = np.asarray(v)
                    except (TypeError, ValueError) as exc:
                        raise TypeError(f"{name}: expected an array of real numbers, got {type(v).__name__} "
                                        f"({exc})") from None
                if v.dtype.kind not in "fiu":
                    raise TypeError(f"{name}: expected an array of real numbers, got dtype {v.dtype.name}")
                if tuple(v.shape) != tuple(self.params[k].shape):
                    raise ValueError(f"{name}: expected shape {tuple(self.params[k].shape)}, got {tuple(v.shape)}")
                self._check_slot(name, s, v)
                out[k][s] = v
        return int(step_count), out

    def _check_slot(self, name: str, slot: str, v: Any) -> None:
        """A loaded slot's values: finite (a NaN moment would turn every later update into NaN)."""
        if not bool(_xp(v).isfinite(v).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or Inf")

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, all or nothing.

        Parameters
        ----------
        sd : dict
            ``{'step_count', 'state'}`` as :meth:`state_dict` returns it; everything is checked by
            :meth:`check_state_dict` before anything is written.
        """
        self._write_state(*self.check_state_dict(sd))

    def _write_state(self, step_count: int, state: Dict[str, Dict[str, Any]]) -> None:
        """Write what :meth:`check_state_dict` returned (callers that checked already write through
        this, not load_state_dict, so the state is checked once)."""
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
    lr : float
        At least 0.
    momentum : float
        At least 0.
    weight_decay : float
        At least 0.
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
    eps : float
    weight_decay : float
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

    def _check_slot(self, name: str, slot: str, v: Any) -> None:
        super()._check_slot(name, slot, v)
        # sqrt(v) in the update: a negative second moment makes the parameters NaN.
        if slot == "v" and bool((v < 0).any()):
            raise ValueError(f"{name}: expected values >= 0 (a second moment), got a minimum of {float(v.min())}")

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
    eps : float
    weight_decay : float
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
        Added to the norm, finite and >= 0 (a negative one can flip the gradients' sign).

    Returns
    -------
    0-d array
        The norm before clipping, on the device.
    """
    # 0 would silently zero every gradient: clipping is turned off by not calling this.
    max_norm = ck.positive_float("max_norm", max_norm)
    eps = ck.nonnegative_float("eps", eps)
    glist = [g for _, g in _named_grads(grads)]
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
    for _, g in _named_grads(grads):
        _xp(g).clip(g, -clip_value, clip_value, out=g)


# ---- mixed precision (docs/precision.md) ----------------------------------------------------------
class LossScaler:
    """Dynamic loss scaling for float16 training (bfloat16 needs none: it has float32's exponent range).

    The loss gradient is multiplied by ``scale`` (a power of two: exact in float16 unless it over- or
    underflows) before the backward, so small gradients survive float16's narrow range; the float32
    gradients are divided by it again before the optimizer step. When they hold Inf or NaN the step is
    skipped and the scale shrinks by ``backoff_factor``; after ``growth_interval`` clean steps in a
    row it grows by ``growth_factor`` (torch.cuda.amp.GradScaler's policy and defaults).

    Parameters
    ----------
    init_scale : float
        The first scale, > 0.
    growth_factor : float
        Greater than 1.
    backoff_factor : float
        In (0, 1).
    growth_interval : int
        Clean steps in a row before the scale grows, >= 1.
    min_scale : float
        The scale never backs off below this; > 0 and at most ``init_scale``.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 min_scale=2.0 ** -24):
        init_scale = ck.positive_float("init_scale", init_scale)
        growth_factor = ck.finite_float("growth_factor", growth_factor, "a finite number > 1")
        if growth_factor <= 1:
            raise ValueError(f"growth_factor: expected a finite number > 1, got {growth_factor}")
        backoff_factor = ck.finite_float("backoff_factor", backoff_factor, "a number in (0, 1)")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor: expected a number in (0, 1), got {backoff_factor}")
        min_scale = ck.positive_float("min_scale", min_scale)
        if min_scale > init_scale:      # a backoff would then raise the scale
            raise ValueError(f"min_scale: expected at most init_scale ({init_scale}), got {min_scale}")
        self.scale, self.growth_factor, self.backoff_factor = init_scale, growth_factor, backoff_factor
        self.growth_interval = ck.positive_int("growth_interval", growth_interval)
        self.min_scale = min_scale
        self.clean_steps = 0
        self.skipped_steps = 0

    def scale_grad(self, dpred):
        """dpred * scale, computed in float32 and rounded once to dpred's dtype (the default scale 2^16
        is itself beyond float16's range, 65504, so it is never a float16 number).

        Parameters
        ----------
        dpred : array
            The loss gradient, in the model's 16-bit dtype.

        Returns
        -------
        array
            The scaled gradient, same shape and dtype.
        """
        be = _backend(dpred)
        return be.astype(be.astype(dpred, np.float32) * np.float32(self.scale), be.dtype_of(dpred))

    def unscale_(self, grads):
        """Divide the (float32) gradients by the scale in place; True when all are finite. The flags
        are combined on the device and read once: one host synchronisation per step on a GPU.

        Parameters
        ----------
        grads : dict of str to array
            Float32 gradients, divided in place.

        Returns
        -------
        bool
        """
        inv = 1.0 / self.scale
        flags, xp = [], None
        for g in grads.values():
            xp = xp or _xp(g)       # the gradients' array module (not the flags': bool has no backend)
            g *= g.dtype.type(inv)
            flags.append(xp.isfinite(g).all())
        return bool(xp.stack(flags).all()) if flags else True

    def update(self, finite):
        if finite:
            self.clean_steps += 1
            if self.clean_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.clean_steps = 0
        else:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.clean_steps = 0
            self.skipped_steps += 1

    def state_dict(self):
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, sd):
        """Restore :meth:`state_dict`'s output; everything is checked before anything is written.

        Parameters
        ----------
        sd : dict
            ``{'scale': float > 0, 'clean_steps': int >= 0, 'skipped_steps': int >= 0}``
            (``skipped_steps`` optional, 0 when absent).
        """
        if not isinstance(sd, dict):
            raise TypeError(f"sd: expected a dict from LossScaler.state_dict(), got {type(sd).__name__}")
        if "scale" not in sd or "clean_steps" not in sd:
            raise ValueError(f"sd: expected the keys 'scale' and 'clean_steps', got {sorted(sd)}")
        scale = ck.positive_float("sd['scale']", sd["scale"])
        clean, skipped = (ck.nonnegative_int(f"sd[{k!r}]", sd.get(k, 0)) for k in ("clean_steps", "skipped_steps"))
        self.scale, self.clean_steps, self.skipped_steps = scale, clean, skipped


def _widened_copy(p):
    w = _backend(p).astype(p, np.float32)
    return w.copy() if w is p else w


class MixedPrecision:
    """Float32 master weights for a bfloat16/float16 model.

    ``params`` are the model's 16-bit parameters (the GEMM operands), ``grads`` its float32 gradients.
    The wrapped optimizer (``optimizer_cls``, e.g. :class:`Adam`) updates float32 copies of the
    parameters (its moments are float32 too); after each step the 16-bit parameters are refreshed
    from them, rounded once (the ``narrow_copy`` kernel on the GPU and the host build). Updates far
    below a 16-bit ulp of a weight therefore accumulate instead of being lost. With a
    :class:`LossScaler` (float16) the training loop scales the loss gradient (:meth:`scale_grad`),
    :meth:`unscale_` undoes it and checks for Inf/NaN, and :meth:`step` skips the update when it
    found any.

    Parameters
    ----------
    optimizer_cls : type
        :class:`SGD`, :class:`Adam` or :class:`AdamW`.
    params : dict of str to array
        The model's 16-bit parameters.
    grads : dict of str to array
        Their float32 gradients.
    loss_scaler : LossScaler, optional
        For float16 models; None (bfloat16) applies no scaling.
    **kwargs
        The wrapped optimizer's options (``lr``, ``betas``, ``weight_decay``, ...).
    """

    def __init__(self, optimizer_cls, params, grads, loss_scaler=None, **kwargs):
        self.params, self.grads = params, grads
        for k, p in params.items():      # refreshed in place after every step: checked before the first
            _check_updatable(f"params[{k!r}]", p)
        for k, g in grads.items():
            if np.dtype(g.dtype) != np.float32:
                raise TypeError(f"grads[{k!r}]: mixed precision expects float32 gradients, got {g.dtype}")
        # widened exactly, on the parameters' device (a GPU bfloat16 model's arrays are uint16 bits)
        self.master = {k: _widened_copy(p) for k, p in params.items()}
        self.inner = optimizer_cls(self.master, grads, **kwargs)
        self.loss_scaler = loss_scaler
        self._finite = True

    @property
    def lr(self):
        return self.inner.lr

    @lr.setter
    def lr(self, value):
        self.inner.lr = value

    @property
    def step_count(self):
        return self.inner.step_count

    def scale_grad(self, dpred):
        return dpred if self.loss_scaler is None else self.loss_scaler.scale_grad(dpred)

    def unscale_(self):
        """Undo the loss scale on the gradients; returns whether they are finite (True without a scaler)."""
        if self.loss_scaler is None:
            self._finite = True
        else:
            self._finite = self.loss_scaler.unscale_(self.grads)
            self.loss_scaler.update(self._finite)
        return self._finite

    def step(self):
        """The wrapped optimizer's step on the master weights, then the 16-bit copies; skipped (returns
        False) when the last :meth:`unscale_` found Inf/NaN."""
        if not self._finite:
            self._finite = True
            return False
        self.inner.step()
        self._refresh()
        return True

    def _refresh(self):
        """The 16-bit parameters from the master weights, each rounded once."""
        for k, p in self.params.items():
            narrow = getattr(_backend(p), "narrow_copy", None)
            if narrow is not None:
                narrow(self.master[k], p)
            else:
                p[...] = self.master[k].astype(p.dtype)

    def hyperparameters(self):
        return dict(self.inner.hyperparameters(), inner=type(self.inner).__name__)

    @property
    def slots(self):
        """The wrapped optimizer's slots plus 'master' (the float32 weights), per parameter: what a
        checkpoint saves and :meth:`load_state_dict` restores."""
        return tuple(self.inner.slots) + ("master",)

    def state_dict(self):
        """``{'step_count', 'hyperparameters', 'state': {param: {slot: array}}}`` like every optimizer,
        the master weights being the slot 'master' (so checkpoints carry them). The float16 loss
        scale is not part of it: after a load it starts again from its initial value and adapts."""
        sd = self.inner.state_dict()
        return {"step_count": sd["step_count"], "hyperparameters": self.hyperparameters(),
                "state": {k: dict(sd["state"][k], master=self.master[k]) for k in self.master}}

    def check_state_dict(self, sd):
        """The wrapped optimizer's :meth:`Optimizer.check_state_dict` plus the slot 'master' of every
        parameter (float32 weights of its shape); nothing is written.

        Parameters
        ----------
        sd : dict
            As :meth:`state_dict` returns it.

        Returns
        -------
        step_count : int
        state : dict
            ``{param: {slot: array}}``, 'master' included.
        """
        step_count, state = self.inner.check_state_dict(sd)
        for k, w in self.master.items():
            name = f"sd['state'][{k!r}]['master']"
            v = sd["state"][k].get("master")
            if v is None or not hasattr(v, "shape") or tuple(v.shape) != tuple(w.shape) or v.dtype.kind != "f":
                got = "nothing" if v is None else f"{getattr(v, 'dtype', type(v).__name__)} {getattr(v, 'shape', '')}"
                raise ValueError(f"{name}: expected a float array of shape {tuple(w.shape)}, got {got}")
            state[k]["master"] = v
        return step_count, state

    def load_state_dict(self, sd):
        """Restore :meth:`state_dict`'s output, all or nothing: everything is checked
        (:meth:`check_state_dict`) before the wrapped optimizer, the master weights and the 16-bit
        copies made from them are written.

        Parameters
        ----------
        sd : dict
            As :meth:`state_dict` returns it.
        """
        self._write_state(*self.check_state_dict(sd))

    def _write_state(self, step_count, state):
        """Write what :meth:`check_state_dict` returned: the wrapped optimizer's slots and step count,
        the master weights and the 16-bit copies made from them."""
        self.inner._write_state(step_count, state)
        for k in self.master:
            self.master[k][...] = _xp(self.master[k]).asarray(state[k]["master"])
        self._refresh()


def mixed_precision(name, params, grads, dtype, **kwargs):
    """The optimizer ``name`` for a model of ``dtype``: itself for float32 and float64, wrapped in
    :class:`MixedPrecision` for bfloat16, plus a :class:`LossScaler` for float16.

    Parameters
    ----------
    name : str
        'sgd', 'adam' or 'adamw'.
    params : dict of str to array
    grads : dict of str to array
    dtype : str or dtype
        The model's dtype.
    **kwargs
        The optimizer's options (``lr``, ``weight_decay``, ...).

    Returns
    -------
    Optimizer or MixedPrecision
    """
    cls = OPTIMIZERS[name]
    dt = np.dtype(dtype).name
    if dt not in ("bfloat16", "float16"):
        return cls(params, grads, **kwargs)
    return MixedPrecision(cls, params, grads, LossScaler() if dt == "float16" else None, **kwargs)
