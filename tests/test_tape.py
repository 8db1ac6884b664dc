"""Several forwards in flight: a detached tape keeps its forward's state for a later backward."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.lstm import BackwardBeforeForwardError


def _model(**kw):
    return gl.LSTM(3, 5, 2, dtype="float64", device="cpu", seed=1, **kw)


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True, "proj_size": 2},
                                {"zoneout_h": 0.2, "zoneout_c": 0.3, "dropout": 0.3, "seed": 4}])
def test_interleaved_backwards_match_sequential(kw):
    seed = kw.pop("seed", 1)
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((6, 4, 3)), rng.standard_normal((4, 2, 3))   # different shapes too
    feat = (2 if kw.get("bidirectional") else 1) * (kw.get("proj_size") or 5)   # D * P
    dya, dyb = rng.standard_normal((6, 4, feat)), rng.standard_normal((4, 2, feat))

    ref = gl.LSTM(3, 5, 2, dtype="float64", device="cpu", seed=seed, **kw)
    ref(xa)
    dxa_ref, _ = ref.backward(dya)
    ga = {k: v.copy() for k, v in ref.grads.items()}
    ref.zero_grad()
    ref(xb)
    dxb_ref, _ = ref.backward(dyb)
    gb = {k: v.copy() for k, v in ref.grads.items()}

    m = gl.LSTM(3, 5, 2, dtype="float64", device="cpu", seed=seed, **kw)
    m(xa)
    ta = m.detach_tape()
    m(xb)                               # would overwrite a's state without the detach
    tb = m.detach_tape()
    dxb, _ = m.backward(dyb, tape=tb)   # in reverse order
    for k in gb:
        np.testing.assert_array_equal(m.grads[k], gb[k])
    m.zero_grad()
    dxa, _ = m.backward(dya, tape=ta)
    for k in ga:
        np.testing.assert_array_equal(m.grads[k], ga[k])
    np.testing.assert_array_equal(dxa, dxa_ref)
    np.testing.assert_array_equal(dxb, dxb_ref)


def test_detached_tape_is_not_reused_by_next_forward():
    m = _model()
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    m(x)
    t = m.detach_tape()
    saved = t.out[0].copy()
    m(x * 3)                                        # same shape: must not write into t
    np.testing.assert_array_equal(t.out[0], saved)
    m.detach_tape()
    with pytest.raises(BackwardBeforeForwardError):
        m.detach_tape()                             # nothing left to detach


def test_backward_after_detach_needs_the_tape():
    m = _model()
    m(np.zeros((2, 1, 3)))
    m.detach_tape()
    with pytest.raises(BackwardBeforeForwardError, match="tape"):
        m.backward(np.zeros((2, 1, 5)))


def test_tape_of_another_model_is_rejected():
    a, b = _model(), _model()
    a(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="tape: expected a Tape from this model"):
        b.backward(np.zeros((2, 1, 5)), tape=a.detach_tape())
    with pytest.raises(ValueError, match="tape: expected a Tape.*got dict"):
        b.backward(np.zeros((2, 1, 5)), tape={})


def test_a_failed_forward_leaves_no_tape_and_no_plan_booked_twice(monkeypatch):
    """A forward that fails (here: a plan that cannot be built, as on a GPU out of memory) must not
    leave the model holding a plan that is also in its free pool: two later detached tapes would then
    share that plan's buffers and the first one's backward would read the second one's forward."""
    from gpu_lstm import plan as plan_mod
    rng = np.random.default_rng(0)
    m = gl.LSTM(3, 5, 1, dtype="float64", device="cpu", seed=1, algo="plan")
    x6, x7 = rng.standard_normal((6, 2, 3)), rng.standard_normal((7, 2, 3))
    m(x6)

    def cannot_build(self, *args, **kwargs):
        raise MemoryError("simulated out of memory")
    with monkeypatch.context() as mp:
        mp.setattr(plan_mod.Plan, "__init__", cannot_build)
        with pytest.raises(MemoryError):
            m(x7)
    with pytest.raises(BackwardBeforeForwardError):
        m.backward(np.ones((7, 2, 5)))              # nothing half-run to go back through
    m(x6)
    t1 = m.detach_tape()
    m(rng.standard_normal((6, 2, 3)))
    t2 = m.detach_tape()
    assert t1.plan is not t2.plan
    dx1, _ = m.backward(np.ones((6, 2, 5)), tape=t1)
    ref = gl.LSTM(3, 5, 1, dtype="float64", device="cpu", seed=1, algo="eager")
    ref(x6)
    np.testing.assert_array_equal(dx1, ref.backward(np.ones((6, 2, 5)))[0])


def test_use_arrays_uses_the_callers_memory_or_refuses():
    """use_arrays promises no copy: gradients must land in the caller's arrays. Array-likes that would
    be converted, and strided arrays (kernels and plans address parameters as dense rows), are refused
    naming the entry."""
    m = _model()
    params = {k: v.copy() for k, v in m.params.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    with m.use_arrays(params, grads):
        m(np.ones((2, 1, 3)))
        m.backward(np.ones((2, 1, 5)))
    assert max(np.abs(g).max() for g in grads.values()) > 0          # written in place
    listed = dict(params, **{"l0.b": params["l0.b"].tolist()})
    with pytest.raises(TypeError, match=r"params\['l0.b'\]: expected a NumPy array, used in place; got list"):
        with m.use_arrays(listed):
            pass
    strided = dict(params, **{"l0.b": np.repeat(params["l0.b"], 2)[::2]})
    with pytest.raises(ValueError, match=r"params\['l0.b'\]: expected a C-contiguous array, got strides"):
        with m.use_arrays(strided):
            pass
    assert m.params["l0.b"] is not strided["l0.b"]                   # nothing swapped in on failure
