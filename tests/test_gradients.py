"""Float64 central-difference checks of every gradient the LSTM returns or accumulates."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.gradcheck import lstm_gradient_check, numeric_gradient, relative_error

TOL = 1e-6


@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("L", [1, 3])
def test_every_gradient_matches_central_differences(T, B, L):
    lstm = gl.LSTM(3, 4, L, dtype="float64", device="cpu", seed=T * 10 + B + L)  # I != H
    rows = lstm_gradient_check(lstm, T=T, B=B, seed=T + B)
    names = {name for name, _ in rows}
    assert names == set(lstm.params) | {"dx", "dh0", "dc0"}
    for name, err in rows:
        assert err < TOL, f"{name}: relative error {err:.3e} (T={T}, B={B}, L={L})"


@pytest.mark.parametrize("batch_first", [False, True])
def test_gradients_without_bias_and_batch_first(batch_first):
    lstm = gl.LSTM(2, 3, 2, bias=False, batch_first=batch_first, dtype="float64", device="cpu", seed=3)
    assert not any(k.endswith(".b") for k in lstm.params)
    for name, err in lstm_gradient_check(lstm, T=4, B=2):
        assert err < TOL, name


def test_gradients_without_initial_state():
    lstm = gl.LSTM(3, 2, 2, dtype="float64", device="cpu", seed=5)
    for name, err in lstm_gradient_check(lstm, T=3, B=2, with_state=False):
        assert err < TOL, name


def test_the_check_can_fail():
    """A wrong gradient must be reported: corrupt dR after backward and compare again."""
    lstm = gl.LSTM(2, 3, 1, dtype="float64", device="cpu", seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 2))
    gy = rng.standard_normal((4, 2, 3))

    def loss():
        return float((lstm(x)[0] * gy).sum())

    lstm(x)
    lstm.backward(gy)
    numeric = numeric_gradient(loss, lstm.params["l0.R"], 1e-6)
    assert relative_error(lstm.grads["l0.R"], numeric) < TOL
    wrong = lstm.grads["l0.R"].copy()
    wrong[0, 0] += 1e-3 * np.abs(wrong).max()
    assert relative_error(wrong, numeric) > 1e-4


def test_gradient_check_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        lstm_gradient_check(gl.LSTM(2, 2, dtype="float32", device="cpu"))


def test_dropping_the_recursion_through_h_fails_the_check(monkeypatch):
    """The gate-dependence question, numerically: without eq. (14)'s R^T term (the path through
    h(t-1) into every gate of the next step), the per-gate formulas alone are NOT the gradient."""
    from gpu_lstm.backend.numpy_backend import NumpyBackend
    real = NumpyBackend.gemm

    def truncated(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
        if beta == 1.0 and not trans_a and not trans_b:   # only the backward's dh[t-1] += dz R
            return
        return real(self, a, b, out, trans_a, trans_b, beta)

    lstm = gl.LSTM(3, 4, 1, dtype="float64", device="cpu", seed=0)
    assert all(err < TOL for _, err in lstm_gradient_check(lstm, T=4, B=2))
    monkeypatch.setattr(NumpyBackend, "gemm", truncated)
    errors = dict(lstm_gradient_check(lstm, T=4, B=2))
    assert errors["l0.W"] > 1e-2 and errors["l0.R"] > 1e-2 and errors["dh0"] > 1e-2
