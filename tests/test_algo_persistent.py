"""algo='persistent' wired into gl.LSTM: the host build of the persistent phases inside the real layer
loop, against the NumPy path; fallback to what 'auto' runs where the kernels cannot run a call."""

import numpy as np
import pytest

import gpu_lstm as gl
from cpu_kernel_support import unavailable


@pytest.fixture(autouse=True, scope="module")
def host_build():
    """Skips without a C++ compiler, fails instead on CI (like the other host-kernel tests)."""
    from gpu_lstm.backend import host_backend, persistent
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    persistent.load_host_library()

# float64, T <= 6, H <= 7: the persistent kernels sum R h in their own order (docs/persistent.md), so
# they differ from NumPy's matmul by rounding only: a few ulps of the largest term per step, grown over
# T steps and two layers; 1e-12 is ~5000 ulps at the magnitudes here (< 10), far below any real bug.
TOL = 1e-12


@pytest.mark.parametrize("kw", [{}, {"peephole": True}, {"bidirectional": True, "bias": False},
                                {"learn_initial_state": True}])
@pytest.mark.parametrize("lengths", [None, np.array([5, 2, 4])])
def test_persistent_matches_numpy(kw, lengths):
    per = gl.LSTM(4, 7, 2, dtype="float64", device="host", seed=3, algo="persistent", **kw)
    ref = gl.LSTM(4, 7, 2, dtype="float64", device="cpu", seed=3, **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = per(x, lengths=lengths), ref(x, lengths=lengths)
    assert per._saved.persistent and per.algo_reason == "requested"
    dy = rng.standard_normal(y_ref.shape)
    dhc = (rng.standard_normal(h_ref.shape), rng.standard_normal(c_ref.shape))
    dx, (dh0, dc0) = per.backward(dy, dhc)
    dx_ref, (dh0_ref, dc0_ref) = ref.backward(dy, dhc)
    for a, b in [(y, y_ref), (h, h_ref), (c, c_ref), (dx, dx_ref), (dh0, dh0_ref), (dc0, dc0_ref)]:
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    for k in ref.grads:
        np.testing.assert_allclose(per.grads[k], ref.grads[k], rtol=0, atol=TOL, err_msg=k)


@pytest.mark.parametrize("kw, why", [({"proj_size": 3}, "projection"), ({"zoneout_c": 0.2}, "zoneout")])
def test_unsupported_options_fall_back_with_a_reason(kw, why):
    per = gl.LSTM(4, 7, 1, dtype="float64", device="host", seed=3, algo="persistent", **kw).eval()
    ref = gl.LSTM(4, 7, 1, dtype="float64", device="cpu", seed=3, **kw).eval()
    x = np.random.default_rng(1).standard_normal((4, 2, 4))
    np.testing.assert_allclose(per(x)[0], ref(x)[0], rtol=0, atol=TOL)
    assert why in per.algo_reason and "ran 'plan'" in per.algo_reason
    assert not getattr(per._saved, "persistent", False)


def test_persistent_needs_a_gpu_or_the_host_build():
    with pytest.raises(ValueError, match="algo='persistent': the persistent kernels need device='gpu'"):
        gl.LSTM(4, 7, device="cpu", algo="persistent")


def test_auto_never_picks_persistent():
    m = gl.LSTM(4, 7, device="host", algo="auto")
    assert m._algo != "persistent"


def test_algo_environment_variable_is_checked_everywhere_and_never_the_fallback(monkeypatch):
    monkeypatch.setenv("GPU_LSTM_ALGO", "bogus")
    with pytest.raises(ValueError, match="GPU_LSTM_ALGO: expected one of .* got 'bogus'"):
        gl.LSTM(4, 7, device="cpu")                      # checked on the CPU too, not ignored
    monkeypatch.setenv("GPU_LSTM_ALGO", "auto")
    assert gl.LSTM(4, 7, device="host")._algo == "plan"
    # Under GPU_LSTM_ALGO=persistent the fallback is still what plain 'auto' runs, never 'persistent'.
    monkeypatch.setenv("GPU_LSTM_ALGO", "persistent")
    m = gl.LSTM(4, 7, device="host", algo="persistent", proj_size=3, dtype="float64")
    x = np.random.default_rng(2).standard_normal((3, 2, 4))
    m(x)
    assert m._persistent_fallback == "plan" and "ran 'plan'" in m.algo_reason and m._saved.plan is not None
