"""Losses that return ``(loss, gradient)``, computed where the arrays live (NumPy or CuPy).

``loss`` is a 0-d array on the same device (call ``float(loss)`` when you want the number: on the GPU
that is the only host synchronisation). The gradient has the shape of the prediction.
"""

import numpy as np

from . import _checks as ck
from .backend import backend_for

IGNORE_INDEX = -100


def _xp(a):
    return backend_for(a).xp


def mse_loss(pred, target, mask=None):
    """Mean squared error, mean over the counted elements.

    pred, target : same shape and dtype (target may be a host array for device predictions). mask : optional, broadcastable to pred's shape, 1 for elements
    that count and 0 for padding. Returns ``(loss, dpred)``.
    """
    be = backend_for(pred)
    xp = be.xp
    target = be.asarray("target", target)     # host targets for device predictions: copied over
    if target.shape != pred.shape:
        raise ValueError(f"target: expected shape {ck.shape_str(pred.shape)} (that of pred), got {ck.shape_str(target.shape)}")
    ck.check_dtype("target", target, pred.dtype)
    # 16-bit predictions: the loss in float32 (be.wide), the gradient rounded once to pred's dtype
    w = be.wide
    diff = pred.astype(w, copy=False) - target.astype(w, copy=False)
    if mask is None:
        n = max(diff.size, 1)
        return (diff * diff).sum() / n, (diff * (2.0 / n)).astype(pred.dtype, copy=False)
    mask = xp.broadcast_to(be.asarray("mask", mask).astype(w, copy=False), pred.shape)
    n = xp.maximum(mask.sum(), 1)
    diff = diff * mask
    return (diff * diff).sum() / n, (diff * (2 / n)).astype(pred.dtype, copy=False)


def softmax_cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, check_targets=True):
    """Softmax cross-entropy from logits, averaged over the targets that are not ``ignore_index``.

    logits : (..., V) float. targets : (...) integers in [0, V) or ``ignore_index`` (padding), on the
    logits' device or on the host (NumPy; copied to the device).
    Computed stably (log-sum-exp after subtracting each row's max) in one fused pass per row: a CUDA
    kernel on the GPU, NumPy on the CPU. Returns ``(loss, dlogits)``. ``check_targets`` verifies the
    range of the targets, which on a GPU costs one device-to-host synchronisation; a training loop
    whose targets are valid by construction can turn it off.
    """
    be = backend_for(logits)
    xp = be.xp
    targets = be.asarray("targets", targets)  # host targets for device logits: copied over
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets: expected shape {ck.shape_str(logits.shape[:-1])} (logits without the "
                         f"class axis), got {ck.shape_str(targets.shape)}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets: expected an integer array, got {targets.dtype.name}")
    V = logits.shape[-1]
    t = xp.ascontiguousarray(targets.reshape(-1), dtype=xp.int64)
    valid = t != ignore_index
    if check_targets and bool((valid & ((t < 0) | (t >= V))).any()):
        raise ValueError(f"targets: values must be in [0, {V}) or ignore_index={ignore_index}")
    z = xp.ascontiguousarray(logits.reshape(-1, V))
    count = valid.sum()
    inv_count = (1.0 / xp.maximum(count, 1)).astype(be.wide)   # loss rows float32 for 16-bit logits
    loss_rows = xp.empty(z.shape[0], dtype=be.wide)
    grad = xp.empty_like(z)
    be.softmax_xent(z, t, ignore_index, inv_count, loss_rows, grad)
    return loss_rows.sum() * inv_count, grad.reshape(logits.shape)


def nats_to_bits(loss_nats):
    """Convert a mean cross-entropy in nats to bits (per character for a char model)."""
    return float(loss_nats) / np.log(2.0)
