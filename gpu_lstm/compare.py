"""Run one model on two paths (e.g. the GPU and the NumPy reference) and measure the differences."""

import numpy as np

from .lstm import LSTM, to_numpy


def _rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def compare_paths(input_size, hidden, layers, *, T, B, dtype, seed=0, device="gpu", reference="cpu",
                  batch_first=False, backward_calls=1):
    """Forward + backward of identical models on ``device`` and ``reference``.

    Returns ``[(name, relative difference)]`` for y, h_n, c_n, dx, dh0, dc0 and every gradient, each
    difference taken relative to the reference array's largest magnitude.
    """
    rng = np.random.default_rng(seed + 1)
    shape = (B, T, input_size) if batch_first else (T, B, input_size)
    x = rng.standard_normal(shape).astype(dtype)
    h0 = (rng.standard_normal((layers, B, hidden)) * 0.5).astype(dtype)
    c0 = (rng.standard_normal((layers, B, hidden)) * 0.5).astype(dtype)
    y_shape = (B, T, hidden) if batch_first else (T, B, hidden)
    dy = rng.standard_normal(y_shape).astype(dtype)
    dh_n = rng.standard_normal((layers, B, hidden)).astype(dtype)
    dc_n = rng.standard_normal((layers, B, hidden)).astype(dtype)
    results = {}
    for dev in (device, reference):
        m = LSTM(input_size, hidden, layers, dtype=dtype, device=dev, seed=seed, batch_first=batch_first)
        y, (h_n, c_n) = m(x, (h0, c0))
        for _ in range(backward_calls):
            dx, (dh0, dc0) = m.backward(dy, (dh_n, dc_n))
        out = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
        out.update({f"grad {k}": v for k, v in m.grads.items()})
        results[dev] = {k: to_numpy(v) for k, v in out.items()}
    return [(k, _rel(results[device][k], results[reference][k])) for k in results[reference]]
