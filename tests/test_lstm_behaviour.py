"""Properties of the forward and backward that hold whatever the parameters are."""

import subprocess
import sys

import numpy as np
import pytest

import gpu_lstm as gl
from conftest import make_inputs


def test_shapes_and_param_names(cpu_lstm, rng):
    lstm = cpu_lstm(I=5, H=7, L=3)
    assert {k: v.shape for k, v in lstm.params.items()} == {
        "l0.W": (28, 5), "l0.R": (28, 7), "l0.b": (28,),
        "l1.W": (28, 7), "l1.R": (28, 7), "l1.b": (28,),
        "l2.W": (28, 7), "l2.R": (28, 7), "l2.b": (28,)}
    assert lstm.grads.keys() == lstm.params.keys()
    y, (h, c) = lstm(rng.standard_normal((6, 2, 5)))
    assert y.shape == (6, 2, 7) and h.shape == c.shape == (3, 2, 7)
    assert gl.GATE_ORDER == ("i", "f", "g", "o")


def test_matches_an_independent_per_step_reference(cpu_lstm, rng):
    """Eqs. (1)-(6) written out directly, with no shared code, must give the same numbers."""
    I, H, T, B = 3, 4, 5, 2
    lstm = cpu_lstm(I=I, H=H, L=1)
    x, h0, c0 = make_inputs(rng, T, B, I, H, 1)
    W, R, b = (lstm.params[k] for k in ("l0.W", "l0.R", "l0.b"))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h, c, ys = h0[0], c0[0], []
    for t in range(T):
        z = x[t] @ W.T + h @ R.T + b
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c = g * i + c * f
        h = o * np.tanh(c)
        ys.append(h)
    y, (h_n, c_n) = lstm(x, (h0, c0))
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(h_n[0], h, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(c_n[0], c, rtol=1e-13, atol=1e-14)


def test_step_by_step_equals_whole_sequence(cpu_lstm, rng):
    lstm = cpu_lstm(I=3, H=4, L=3)
    x, h0, c0 = make_inputs(rng, 6, 2, 3, 4, 3)
    y, (h_n, c_n) = lstm(x, (h0, c0))
    state, ys = (h0, c0), []
    for t in range(6):
        yt, state = lstm(x[t:t + 1], state)
        ys.append(yt[0])
    np.testing.assert_allclose(np.stack(ys), y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[0], h_n, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1], c_n, rtol=1e-12, atol=1e-14)


def test_samples_do_not_depend_on_each_other(cpu_lstm, rng):
    lstm = cpu_lstm(I=3, H=4, L=2)
    x, h0, c0 = make_inputs(rng, 5, 4, 3, 4, 2)
    y, (h_n, _) = lstm(x, (h0, c0))
    x2 = x.copy()
    x2[:, 1:] = rng.standard_normal(x2[:, 1:].shape)   # change every other sample
    y2, (h_n2, _) = lstm(x2, (h0, c0))
    np.testing.assert_allclose(y2[:, 0], y[:, 0], rtol=1e-13, atol=0)
    np.testing.assert_allclose(h_n2[:, 0], h_n[:, 0], rtol=1e-13, atol=0)
    assert not np.allclose(y2[:, 1], y[:, 1])
    y_single, _ = lstm(x[:, :1], (h0[:, :1], c0[:, :1]))
    np.testing.assert_allclose(y_single[:, 0], y[:, 0], rtol=1e-12, atol=1e-15)


def test_batch_first_gives_the_same_numbers_transposed(rng):
    tm = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=9)
    bf = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=9, batch_first=True)
    x, h0, c0 = make_inputs(rng, 5, 2, 3, 4, 2)
    y, (h, c) = tm(x, (h0, c0))
    yb, (hb, cb) = bf(x.transpose(1, 0, 2).copy(), (h0, c0))
    np.testing.assert_array_equal(yb, y.transpose(1, 0, 2))
    np.testing.assert_array_equal(hb, h)
    dy = rng.standard_normal(y.shape)
    dx, (dh0, dc0) = tm.backward(dy)
    dxb, (dh0b, dc0b) = bf.backward(dy.transpose(1, 0, 2).copy())
    np.testing.assert_array_equal(dxb, dx.transpose(1, 0, 2))
    np.testing.assert_array_equal(dh0b, dh0)
    for k in tm.grads:
        np.testing.assert_array_equal(bf.grads[k], tm.grads[k])


def test_two_backwards_accumulate_twice_and_zero_grad_resets(cpu_lstm, rng):
    lstm = cpu_lstm(I=3, H=4, L=2)
    x, h0, c0 = make_inputs(rng, 4, 3, 3, 4, 2)
    y, _ = lstm(x, (h0, c0))
    dy = rng.standard_normal(y.shape)
    dx1, _ = lstm.backward(dy)
    once = {k: v.copy() for k, v in lstm.grads.items()}
    dx2, _ = lstm.backward(dy)
    np.testing.assert_array_equal(dx1, dx2)
    for k, v in lstm.grads.items():
        assert np.abs(once[k]).max() > 0
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-14, atol=0)
    lstm.zero_grad()
    assert all(not v.any() for v in lstm.grads.values())
    lstm.backward(dy)
    for k, v in lstm.grads.items():
        np.testing.assert_array_equal(v, once[k])


def test_outputs_are_not_overwritten_by_the_next_forward(cpu_lstm, rng):
    lstm = cpu_lstm()
    y1, (h1, _) = lstm(rng.standard_normal((3, 2, 3)))
    keep = y1.copy(), h1.copy()
    lstm(rng.standard_normal((3, 2, 3)))
    np.testing.assert_array_equal(y1, keep[0])
    np.testing.assert_array_equal(h1, keep[1])


def test_seed_reproducible_and_pytorch_like_init():
    a = gl.LSTM(3, 16, 2, device="cpu", seed=7)
    b = gl.LSTM(3, 16, 2, device="cpu", seed=7)
    c = gl.LSTM(3, 16, 2, device="cpu", seed=8)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        assert a.params[k].dtype == np.float32
        assert np.abs(a.params[k]).max() <= 1 / 4   # 1/sqrt(H)
    assert not np.array_equal(a.params["l0.W"], c.params["l0.W"])
    big = gl.LSTM(64, 64, device="cpu", seed=0).params["l0.R"]
    assert np.abs(big).max() > 0.9 / 8          # fills the interval, not a narrower one


def test_float32_close_to_float64(rng):
    x, h0, c0 = make_inputs(rng, 8, 3, 5, 6, 2)
    m64 = gl.LSTM(5, 6, 2, dtype="float64", device="cpu", seed=1)
    m32 = gl.LSTM(5, 6, 2, dtype="float32", device="cpu", seed=1)
    m32.set_params({k: v for k, v in m64.params.items()})
    y64, _ = m64(x, (h0, c0))
    y32, _ = m32(x.astype(np.float32), (h0.astype(np.float32), c0.astype(np.float32)))
    assert y32.dtype == np.float32
    assert np.abs(y32 - y64).max() < 1e-5


def test_empty_time_axis_is_well_defined(cpu_lstm, rng):
    lstm = cpu_lstm(L=2)
    _, h0, c0 = make_inputs(rng, 1, 2, 3, 4, 2)
    y, (h_n, c_n) = lstm(np.zeros((0, 2, 3)), (h0, c0))
    assert y.shape == (0, 2, 4)
    np.testing.assert_array_equal(h_n, h0)
    np.testing.assert_array_equal(c_n, c0)
    dh, dc = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)
    dx, (dh0, dc0) = lstm.backward(np.zeros((0, 2, 4)), (dh, dc))
    assert dx.shape == (0, 2, 3)
    np.testing.assert_array_equal(dh0, dh)
    np.testing.assert_array_equal(dc0, dc)
    assert all(not v.any() for v in lstm.grads.values())


def test_empty_batch_is_well_defined(cpu_lstm):
    lstm = cpu_lstm(L=2)
    y, (h_n, c_n) = lstm(np.zeros((4, 0, 3)))
    assert y.shape == (4, 0, 4) and h_n.shape == (2, 0, 4)
    dx, (dh0, _) = lstm.backward(np.zeros((4, 0, 4)))
    assert dx.shape == (4, 0, 3) and dh0.shape == (2, 0, 4)
    assert all(not v.any() for v in lstm.grads.values())


def test_nan_propagates_without_check_finite_and_raises_with_it(cpu_lstm, rng):
    lstm = cpu_lstm()
    x = rng.standard_normal((3, 2, 3))
    x[1, 0, 2] = np.nan
    y, (h, _) = lstm(x)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all() and np.isnan(h[0, 0]).all()
    with pytest.raises(ValueError, match=r"x: expected finite values \(check_finite=True\), got NaN or Inf"):
        lstm(x, check_finite=True)
    strict = cpu_lstm(check_finite=True)
    x[1, 0, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        strict(x)
    h0 = np.zeros((1, 2, 4))
    h0[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="h0: expected finite values .* got NaN"):
        strict(np.zeros((3, 2, 3)), (h0, np.zeros((1, 2, 4))))


def test_large_inputs_do_not_overflow(cpu_lstm):
    lstm = cpu_lstm()
    with np.errstate(over="raise", invalid="raise"):   # overflow or inf/inf would raise here
        y, _ = lstm(np.full((2, 1, 3), 1e4))
        lstm.backward(np.ones_like(y))
    assert np.isfinite(y).all()


def test_import_needs_no_cupy_nor_torch_and_touches_no_gpu():
    code = ("import sys, gpu_lstm; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends', 'nvtx', 'torch')]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
