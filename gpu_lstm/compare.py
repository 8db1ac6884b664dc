"""Run one model on two paths (e.g. the GPU and the NumPy reference) and measure the differences."""

import numpy as np

from .lstm import LSTM


def _rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def compare_paths(input_size, hidden, layers, *, T, B, dtype, seed=0, device="gpu", reference="cpu",
                  batch_first=False, backward_calls=1, lengths=None, return_cells=False, train=True,
                  **options):
    """Forward + backward of identical models on ``device`` and ``reference``.

    ``options`` are further LSTM keyword arguments (bidirectional, proj_size, peephole, dropout, ...).
    Dropout and zoneout masks come from each device's own generator, so compare those in evaluation
    mode (``train=False``).
    Returns ``[(name, relative difference)]`` for y, h_n, c_n, dx, dh0, dc0 (and the cells) and every
    gradient, each difference taken relative to the reference array's largest magnitude.
    """
    rng = np.random.default_rng(seed + 1)
    results = {}
    for dev in (device, reference):
        m = LSTM(input_size, hidden, layers, dtype=dtype, device=dev, seed=seed, batch_first=batch_first,
                 **options)
        if not train:
            m.eval()
        if not results:   # inputs drawn once, shaped for this configuration
            LD, P, DP = layers * m.num_directions, m.output_size, m.num_directions * m.output_size
            shape = (B, T, input_size) if batch_first else (T, B, input_size)
            x = rng.standard_normal(shape).astype(dtype)
            h0 = (rng.standard_normal((LD, B, P)) * 0.5).astype(dtype)
            c0 = (rng.standard_normal((LD, B, hidden)) * 0.5).astype(dtype)
            dy = rng.standard_normal((B, T, DP) if batch_first else (T, B, DP)).astype(dtype)
            dh_n = rng.standard_normal((LD, B, P)).astype(dtype)
            dc_n = rng.standard_normal((LD, B, hidden)).astype(dtype)
        out = m(x, (h0, c0), lengths=lengths, return_cells=return_cells)
        y, (h_n, c_n) = out[0], out[1]
        for _ in range(backward_calls):
            dx, (dh0, dc0) = m.backward(dy, (dh_n, dc_n))
        res = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
        if return_cells:
            res["cells"] = out[2]
        res.update({f"grad {k}": v for k, v in m.grads.items()})
        results[dev] = m.to_numpy(res)   # a GPU bfloat16 model's bits come back as bfloat16
    return [(k, _rel(results[device][k], results[reference][k])) for k in results[reference]]
