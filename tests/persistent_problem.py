"""One direction's forward + backward problem, shared by the persistent-engine checks on the CPU
(tests/test_persistent_host.py) and on a GPU (tests/test_persistent_gpu.py), so both rings test the
same inputs and read back the same quantities."""

import types

import numpy as np

from gpu_lstm import _direction as dirn


def problem(rng, T, B, I, H, dtype, lengths):
    """NumPy parameters (prefix "d", every optional tensor present) and data. R is scaled 0.9/sqrt(H)
    so the recurrence stays in tanh's sensitive range; with `lengths`, dy is zero at padded steps and
    one row is full length."""
    params = {"d.W": 0.5 * rng.standard_normal((4 * H, I)), "d.R": (0.9 / np.sqrt(H)) * rng.standard_normal((4 * H, H)),
              "d.b": rng.standard_normal(4 * H), "d.P": 0.5 * rng.standard_normal((3, H))}
    params = {k: v.astype(dtype) for k, v in params.items()}
    data = dict(x=rng.standard_normal((T, B, I)).astype(dtype), h0=(0.5 * rng.standard_normal((B, H))).astype(dtype),
                c0=(0.5 * rng.standard_normal((B, H))).astype(dtype), dy=rng.standard_normal((T, B, H)).astype(dtype),
                dh_n=rng.standard_normal((B, H)).astype(dtype), dc_n=rng.standard_normal((B, H)).astype(dtype))
    data["lengths"] = rng.integers(1, T + 1, B).astype(np.int64) if lengths else None
    if lengths:
        data["lengths"][0] = T
        data["dy"][np.arange(T)[:, None] >= data["lengths"][None, :]] = 0
    return params, data


def run(be, prm, params, data, forward, backward, T, B, I, H):
    """forward then backward of one direction; `params` and `data` already live on `be`. Returns the
    workspace, the gradients with respect to every input, and one gradient per parameter, as `be` arrays."""
    ws = dirn.DirectionWorkspace(be, T, B, I, H, H, False, False, None)
    forward(be, prm, ws, data["x"], data["h0"], data["c0"], data["lengths"])
    grads = {k: be.zeros(v.shape) for k, v in params.items()}
    shared = types.SimpleNamespace(dgates=be.empty((T, B, 4 * H)), dc=be.empty((B, H)), dm=None, keep=None)
    dh, dh0, dc0, dx = data["dy"].copy(), be.empty((B, H)), be.empty((B, H)), be.empty((T, B, I))
    backward(be, prm, grads, "d", ws, shared, data["x"], dh, data["dh_n"], data["dc_n"], dh0, dc0, dx, data["lengths"])
    out = {"gates": ws.gates, "h": ws.h, "c": ws.c, "dgates": shared.dgates, "dh": dh, "dh0": dh0, "dc0": dc0, "dx": dx}
    out.update({f"grad {k}": v for k, v in grads.items()})
    return out
