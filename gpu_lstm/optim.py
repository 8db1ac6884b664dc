"""Optimizers and gradient clipping that update parameters in place where they live.

Every operation is an array expression on the parameter's own device: on the GPU nothing is copied
to the host (step counts and hyper-parameters are host scalars, never read back from the device).
"""

import numpy as np

from . import _checks as ck


def _xp(a):
    from .backend import backend_for
    return backend_for(a).xp


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
    """Base: ``params`` and ``grads`` are dicts of arrays with the same keys (e.g. ``model.params``)."""

    slots = ()

    def __init__(self, params, grads, lr):
        if set(params) != set(grads):
            raise ValueError(f"grads: keys {sorted(grads)} differ from params keys {sorted(params)}")
        for k in params:
            if params[k].shape != grads[k].shape:
                raise ValueError(f"grads[{k!r}]: shape {grads[k].shape} differs from the parameter's {params[k].shape}")
        self.params, self.grads = params, grads
        self.lr = ck.nonnegative_float("lr", lr)
        self.step_count = 0
        self.state = {k: {s: _xp(p).zeros_like(p) for s in self.slots} for k, p in params.items()}

    def step(self):
        self.step_count += 1
        for k, p in self.params.items():
            self._update(p, self.grads[k], self.state[k])

    def hyperparameters(self):
        return {"lr": self.lr}

    def state_dict(self):
        """{'step_count', 'hyperparameters', 'state': {param: {slot: array}}} (arrays on the device)."""
        return {"step_count": self.step_count, "hyperparameters": self.hyperparameters(), "state": self.state}

    def load_state_dict(self, sd):
        state = sd["state"]
        for k in self.params:
            for s in self.slots:
                if k not in state or s not in state[k]:
                    raise KeyError(f"optimizer state: missing {k!r}/{s!r}")
                if tuple(state[k][s].shape) != tuple(self.params[k].shape):
                    raise ValueError(f"optimizer state {k!r}/{s!r}: expected shape {self.params[k].shape}, "
                                     f"got {tuple(state[k][s].shape)}")
        for k in self.params:
            for s in self.slots:
                self.state[k][s][...] = _xp(self.params[k]).asarray(state[k][s])
        self.step_count = int(sd["step_count"])


class SGD(Optimizer):
    """p -= lr * v with v = momentum * v + g (+ weight_decay * p), as torch.optim.SGD (no dampening)."""

    def __init__(self, params, grads, lr=0.1, momentum=0.0, weight_decay=0.0):
        self.momentum = ck.nonnegative_float("momentum", momentum)
        self.weight_decay = ck.nonnegative_float("weight_decay", weight_decay)
        self.slots = ("velocity",) if self.momentum else ()
        super().__init__(params, grads, lr)

    def hyperparameters(self):
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
    """Adam (Kingma and Ba, 2015) with bias correction; ``weight_decay`` is L2 added to the gradient."""

    slots = ("m", "v")
    decoupled = False

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        b1, b2 = betas
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1), got {b}")
        self.betas = (float(b1), float(b2))
        self.eps = ck.nonnegative_float("eps", eps)
        self.weight_decay = ck.nonnegative_float("weight_decay", weight_decay)
        super().__init__(params, grads, lr)

    def hyperparameters(self):
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
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019), as torch.optim.AdamW."""

    decoupled = True

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
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


def global_grad_norm(grads):
    """sqrt(sum of every squared gradient element), as a 0-d array on the gradients' device.

    On the GPU: the fixed-order two-level reduction of cuda/clip_kernels.cuh (P + 2 launches, no host
    sync); NumPy's sum below is pairwise, so the two agree to rounding, not bitwise."""
    grads = list(grads.values()) if isinstance(grads, dict) else list(grads)
    fused = _fused_norm(grads)
    if fused is not None:
        return fused(grads)
    xp = _xp(grads[0])
    total = xp.zeros((), dtype=np.float64)
    for g in grads:
        total = total + (g.astype(np.float64, copy=False) ** 2).sum()
    return xp.sqrt(total)


def clip_grad_norm(grads, max_norm, eps=1e-6):
    """Scale all gradients by min(1, max_norm / (norm + eps)) where norm is their global L2 norm
    (gradient clipping by norm, as in the chain-rules seed). Returns the norm before clipping, a 0-d
    device array; the scale is applied on the device with no host round trip."""
    max_norm = ck.nonnegative_float("max_norm", max_norm)
    glist = list(grads.values()) if isinstance(grads, dict) else list(grads)
    fused = _fused_norm(glist)
    if fused is not None:   # norm, coefficient and scaling on the device: 2P + 2 launches
        return fused(glist, max_norm, eps)
    norm = global_grad_norm(grads)
    xp = _xp(norm)
    scale = xp.minimum(1.0, max_norm / (norm + eps))
    for g in (grads.values() if isinstance(grads, dict) else grads):
        g *= scale.astype(g.dtype)
    return norm


def clip_grad_value(grads, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value], in place."""
    clip_value = ck.nonnegative_float("clip_value", clip_value)
    for g in (grads.values() if isinstance(grads, dict) else grads):
        _xp(g).clip(g, -clip_value, clip_value, out=g)
