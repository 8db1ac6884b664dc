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
