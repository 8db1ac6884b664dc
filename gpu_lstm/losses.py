"""Losses that return ``(loss, gradient)``, computed where the arrays live (NumPy or CuPy).

``loss`` is a 0-d array on the same device (call ``float(loss)`` when you want the number: on the GPU
that is the only host synchronisation). The gradient has the shape of the prediction.
"""

import numbers
from typing import Any, Tuple

import numpy as np

from . import _checks as ck
from .backend import backend_for

IGNORE_INDEX = -100


def _xp(a):
    return backend_for(a).xp


def _check_array(name, a):
    # Losses compute where the arrays live, so they take arrays only (no lists to guess a device for).
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}")


def _check_mask_dtype(dtype):
    if dtype.kind not in "biuf" and dtype.name != "bfloat16":
        raise TypeError(f"mask: expected bool, integer or real floating values (1 counts, 0 is padding), "
                        f"got dtype {dtype.name}")


def mse_loss(pred: Any, target: Any, mask: Any = None, check_mask: bool = True) -> Tuple[Any, Any]:
    """Mean squared error, mean over the counted elements: sum(w d^2) / sum(w) with d = pred - target
    and w the mask (1 everywhere without one).

    Parameters
    ----------
    pred : array
        Floats.
    target : array
        pred's shape and dtype; may be a host (NumPy) array for predictions on the GPU (it is copied
        over).
    mask : array, optional
        pred's number of axes, broadcastable to its shape (a (T, B) padding mask for (T, B, O)
        predictions is ``mask[..., None]``), host or device: weights >= 0, 1 for elements that count
        and 0 for padding.
    check_mask : bool
        Verify that the weights are finite and >= 0; on a GPU that costs one device-to-host
        synchronisation, so a loop whose masks are valid by construction can turn it off.

    Returns
    -------
    loss : 0-d array
        On the device (``float(loss)`` for the number).
    dpred : array
        d(loss)/d(pred), pred's shape.
    """
    _check_array("pred", pred)
    _check_array("target", target)
    be = backend_for(pred)
    xp = be.xp
    target = be.asarray("target", target)     # host targets for device predictions: copied over
    if target.shape != pred.shape:
        raise ValueError(f"target: expected shape {ck.shape_str(pred.shape)} (that of pred), got {ck.shape_str(target.shape)}")
    pdt = be.dtype_of(pred)   # a GPU bfloat16 array is uint16 bit patterns: its logical dtype
    ck.float_kind("pred", pdt)   # integer predictions would get a truncated integer gradient
    ck.check_dtype("target", target, pdt, be)
    # 16-bit predictions: the loss in float32 (be.wide), the gradient rounded once to pred's dtype
    w = be.wide
    diff = be.astype(pred, w) - be.astype(target, w)
    if mask is None:
        n = max(diff.size, 1)
        return (diff * diff).sum() / n, be.astype(diff * (2.0 / n), pdt)
    if be.is_device_array(mask):
        mask = be.asarray("mask", mask)
        _check_mask_dtype(be.dtype_of(mask))
        mask = be.astype(mask, w)   # the backend's conversion: a GPU bfloat16 array is bit patterns
    else:                           # host mask: converted on the host (ml_dtypes knows bfloat16), uploaded
        mask = ck.host_array("mask", mask)
        _check_mask_dtype(mask.dtype)
        mask = be.asarray("mask", mask.astype(w, copy=False))
    # Broadcasting aligns trailing axes, so a (T, B) mask would land on pred's (B, O) axes: same ndim only.
    if mask.ndim != pred.ndim:
        raise ValueError(f"mask: expected {pred.ndim} axes like pred {ck.shape_str(pred.shape)} (a (T, B) "
                         f"padding mask is mask[..., None]), got shape {ck.shape_str(mask.shape)}")
    try:
        mask = xp.broadcast_to(mask, pred.shape)
    except ValueError:
        raise ValueError(f"mask: expected an array broadcastable to {ck.shape_str(pred.shape)} (that of "
                         f"pred), got shape {ck.shape_str(mask.shape)}") from None
    if check_mask and bool((~xp.isfinite(mask) | (mask < 0)).any()):
        raise ValueError(f"mask: expected finite weights >= 0 (1 counts, 0 is padding), got values from "
                         f"{float(mask.min())} to {float(mask.max())}")
    total = mask.sum()
    n = xp.where(total > 0, total, 1)   # the weights' sum (below 1 too); nothing counted: loss 0, not NaN
    wdiff = diff * mask          # w d: the gradient's numerator; the loss is sum(w d^2), not (w d)^2
    return (wdiff * diff).sum() / n, be.astype(wdiff * (2 / n), pdt)


def softmax_cross_entropy(logits: Any, targets: Any, ignore_index: int = IGNORE_INDEX,
                          check_targets: bool = True) -> Tuple[Any, Any]:
    """Softmax cross-entropy from logits, averaged over the targets that are not ``ignore_index``.

    Computed stably (log-sum-exp after subtracting each row's max) in one fused pass per row: a CUDA
    kernel on the GPU, NumPy on the CPU.

    Parameters
    ----------
    logits : array
        (..., V) floats.
    targets : array of int
        (...) values in [0, V), or ``ignore_index`` (padding), on the logits' device or on the host
        (NumPy; copied to the device).
    ignore_index : int
        The target value that marks padding.
    check_targets : bool
        Verify the range of the targets; on a GPU that costs one device-to-host synchronisation, so a
        training loop whose targets are valid by construction can turn it off.

    Returns
    -------
    loss : 0-d array
        Mean over the counted targets, in nats, on the device.
    dlogits : array
        d(loss)/d(logits), logits' shape.
    """
    _check_array("logits", logits)
    _check_array("targets", targets)
    be = backend_for(logits)
    xp = be.xp
    ck.float_kind("logits", be.dtype_of(logits))
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an int, got {ignore_index!r} ({type(ignore_index).__name__})")
    targets = be.asarray("targets", targets)  # host targets for device logits: copied over
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets: expected shape {ck.shape_str(logits.shape[:-1])} (logits without the "
                         f"class axis), got {ck.shape_str(targets.shape)}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets: expected an integer array, got {targets.dtype.name}")
    V = logits.shape[-1]
    if V == 0:
        raise ValueError(f"logits: expected at least one class on the last axis, got shape {ck.shape_str(logits.shape)}")
    t = xp.ascontiguousarray(targets.reshape(-1), dtype=xp.int64)
    valid = t != ignore_index
    if check_targets and bool((valid & ((t < 0) | (t >= V))).any()):
        bad = t[valid & ((t < 0) | (t >= V))]
        raise ValueError(f"targets: expected integers whose values must be in [0, {V}) or be "
                         f"ignore_index={ignore_index}, got "
                         f"out-of-range values from {int(bad.min())} to {int(bad.max())}")
    z = xp.ascontiguousarray(logits.reshape(-1, V))
    count = valid.sum()
    inv_count = (1.0 / xp.maximum(count, 1)).astype(be.wide)   # loss rows float32 for 16-bit logits
    loss_rows = xp.empty(z.shape[0], dtype=be.wide)
    grad = xp.empty_like(z)
    be.softmax_xent(z, t, ignore_index, inv_count, loss_rows, grad)
    return loss_rows.sum() * inv_count, grad.reshape(logits.shape)


def nats_to_bits(loss_nats: Any) -> float:
    """Convert a mean cross-entropy in nats to bits (per character for a char model).

    Parameters
    ----------
    loss_nats : float or 0-d array
        As the losses return it (host or device).

    Returns
    -------
    float
    """
    is_number = isinstance(loss_nats, numbers.Real) and not isinstance(loss_nats, bool)
    dt = getattr(loss_nats, "dtype", None)
    # NumPy/CuPy dtypes have .kind, torch's .is_floating_point: a 0-d float of either kind is a loss
    is_scalar_array = getattr(loss_nats, "ndim", None) == 0 and (
        getattr(dt, "kind", None) == "f" or getattr(dt, "is_floating_point", False))
    if not (is_number or is_scalar_array):
        raise TypeError(f"loss_nats: expected a real number or a 0-d array, got {type(loss_nats).__name__}"
                        + (f" of shape {ck.shape_str(loss_nats.shape)}" if hasattr(loss_nats, "shape") else ""))
    return float(loss_nats) / np.log(2.0)
