"""Float64 central-difference gradient checks, used by the tests and by ``gpu-lstm check``.

The loss is a fixed random weighting of every output, L = sum(Gy*y) + sum(Gh*h_n) + sum(Gc*c_n), so
its gradients with respect to the outputs are exactly (Gy, Gh, Gc) and every path through the network
(every gate, every step, every layer, through h_n and c_n) is exercised. The check works on any
backend: perturbations are applied to the model's own arrays, on the device where they live.
"""

import numpy as np


def relative_error(analytic, numeric):
    """max |a - n| / max(max |a|, max |n|): one number per array, insensitive to tiny elements."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(n), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a - n), initial=0.0)) / scale


def numeric_gradient(f, arr, eps):
    """Central differences of the scalar f() with respect to every element of ``arr`` (changed in place
    and restored). Returns a float64 NumPy array shaped like ``arr``."""
    flat = arr.reshape(-1)   # a view: arrays here are contiguous
    out = np.empty(flat.size, dtype=np.float64)
    for i in range(flat.size):
        old = flat[i].item()
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[i] = (fp - fm) / (2.0 * eps)
    return out.reshape(arr.shape)


def lstm_gradient_check(lstm, T=4, B=3, eps=1e-6, seed=0, with_state=True, lengths=None):
    """Check every parameter gradient and dx (and dh0, dc0 with ``with_state``) of ``lstm``.

    Returns a list of ``(name, relative_error)``. The model must be float64 for the numbers to mean
    anything (central differences in float32 are dominated by rounding). Gradients are zeroed first.
    ``lengths`` (B,) checks a variable-length batch. With dropout or zoneout, the generator is reseeded
    before every forward so all of them draw the same masks.
    """
    if lstm.dtype != np.float64:
        raise ValueError(f"lstm: gradient checks need dtype float64, got {lstm.dtype.name}")
    from .lstm import to_numpy
    be = lstm._be
    rng = np.random.default_rng(seed)
    LD, H, P, I = lstm.num_layers * lstm.num_directions, lstm.hidden_size, lstm.output_size, lstm.input_size
    DP = lstm.num_directions * P
    x_shape = (B, T, I) if lstm.batch_first else (T, B, I)
    y_shape = (B, T, DP) if lstm.batch_first else (T, B, DP)
    dev = lambda a: be.asarray("gradcheck", a)  # noqa: E731
    x = dev(rng.standard_normal(x_shape))
    h0 = dev(rng.standard_normal((LD, B, P)) * 0.5)
    c0 = dev(rng.standard_normal((LD, B, H)) * 0.5)
    gy = dev(rng.standard_normal(y_shape))
    gh = dev(rng.standard_normal((LD, B, P)))
    gc = dev(rng.standard_normal((LD, B, H)))
    hc = (h0, c0) if with_state else None

    def run():
        if lstm.stochastic:
            lstm.reseed_dropout(seed)
        return lstm(x, hc, lengths=lengths)

    def loss():
        y, (h_n, c_n) = run()
        return float((y * gy).sum() + (h_n * gh).sum() + (c_n * gc).sum())

    lstm.zero_grad()
    run()
    dx, (dh0, dc0) = lstm.backward(gy, (gh, gc))
    rows = []
    for name, p in lstm.params.items():
        rows.append((name, relative_error(to_numpy(lstm.grads[name]), numeric_gradient(loss, p, eps))))
    rows.append(("dx", relative_error(to_numpy(dx), numeric_gradient(loss, x, eps))))
    if with_state:
        rows.append(("dh0", relative_error(to_numpy(dh0), numeric_gradient(loss, h0, eps))))
        rows.append(("dc0", relative_error(to_numpy(dc0), numeric_gradient(loss, c0, eps))))
    return rows
