"""Training with dropout and zoneout through plans: the mask kernels read the Philox call counter from
a scalar the plan owns (cuda/lstm_kernels.cu, call_at), written before each forward replay, so a plan
(and on a GPU its CUDA graph) draws new masks every call, the ones the eager loop draws, bitwise."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.checkpoint import load_checkpoint, save_checkpoint
from gpu_lstm.losses import mse_loss
from gpu_lstm.model import SequenceModel
from gpu_lstm.optim import Adam

from cpu_kernel_support import unavailable

CONFIGS = [
    dict(bidirectional=True, peephole=True, dropout=0.3, zoneout_h=0.2, zoneout_c=0.4),
    dict(proj_size=3, learn_initial_state=True, dropout=0.5, zoneout_c=0.3),
    dict(num_layers=3, dropout=0.4),
]


def _device(device):
    if device == "host":
        from gpu_lstm.backend import host_backend
        if host_backend.compiler() is None:
            unavailable("no host C++ compiler")
    return device


def _model(device, algo, cfg):
    cfg = dict(cfg)
    L = cfg.pop("num_layers", 2)
    return gl.LSTM(4, 6, L, dtype="float64", device=device, seed=11, algo=algo, **cfg)


def _outputs(m, x, hc, lengths, dy, dhc):
    y, (hn, cn) = m(x, hc, lengths=lengths)
    dx, (dh0, dc0) = m.backward(dy, dhc)
    return [y, hn, cn, dx, dh0, dc0] + [m.grads[k].copy() for k in sorted(m.grads)]


@pytest.mark.parametrize("device", ["cpu", "host"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_plan_equals_eager_bitwise_in_training_over_several_calls(device, cfg):
    plan, eager = (_model(_device(device), a, cfg) for a in ("plan", "eager"))
    rng = np.random.default_rng(0)
    D = plan.num_directions
    LD, P, H = plan.num_layers * D, plan.output_size, plan.hidden_size
    x = rng.standard_normal((5, 3, 4))
    ys = []
    for call, lengths in enumerate([None, None, np.array([5, 2, 4]), None, np.array([1, 5, 3])]):
        hc = None if call % 2 else (rng.standard_normal((LD, 3, P)), rng.standard_normal((LD, 3, H)))
        dy = rng.standard_normal((5, 3, D * P))
        dhc = (rng.standard_normal((LD, 3, P)), rng.standard_normal((LD, 3, H))) if call % 3 == 1 else None
        got, ref = _outputs(plan, x, hc, lengths, dy, dhc), _outputs(eager, x, hc, lengths, dy, dhc)
        assert plan._saved.plan is not None and eager._saved.plan is None
        assert plan._saved.mask_call == eager._saved.mask_call == call
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
        ys.append(got[0])
    assert plan.rng_state() == eager.rng_state() == {"seed": plan._dropout_seed, "calls": 5}
    assert not np.array_equal(ys[0], ys[1])          # same x and state, new masks: new outputs


@pytest.mark.parametrize("device", ["cpu", "host"])
@pytest.mark.parametrize("dtype, math", [("bfloat16", "default"), ("float16", "default"), ("float32", "tf32")])
@pytest.mark.parametrize("cfg", CONFIGS[:2])
def test_16_bit_and_tf32_plans_equal_eager_bitwise(device, dtype, math, cfg):
    """Plans of 16-bit and TF32 models replay exactly the eager loop's operations: the float32 cell
    state, carry, cells and dropout scale stay wide; c_n and dc0 are rounded to the model dtype once."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    cfg = dict(cfg, num_layers=2)
    L = cfg.pop("num_layers")
    plan, eager = (gl.LSTM(4, 6, L, dtype=dtype, device=_device(device), seed=11, algo=a, math=math, **cfg)
                   for a in ("plan", "eager"))
    assert plan._algo == "plan" and eager._algo == "eager"
    rng = np.random.default_rng(0)
    D, LD = plan.num_directions, plan.num_layers * plan.num_directions
    P, H = plan.output_size, plan.hidden_size
    x = rng.standard_normal((5, 3, 4)).astype(np.float32).astype(plan.dtype)
    for call, lengths in enumerate([None, np.array([5, 2, 4]), None]):
        hc = None if call % 2 else tuple(rng.standard_normal((LD, 3, n)).astype(np.float32).astype(plan.dtype)
                                         for n in (P, H))
        dy = rng.standard_normal((5, 3, D * P)).astype(np.float32).astype(plan.dtype)
        dhc = (tuple(rng.standard_normal((LD, 3, n)).astype(np.float32).astype(plan.dtype) for n in (P, H))
               if call == 1 else None)
        got = [plan(x, hc, lengths=lengths, return_cells=True)]
        ref = [eager(x, hc, lengths=lengths, return_cells=True)]
        got.append(plan.backward(dy, dhc))
        ref.append(eager.backward(dy, dhc))
        flat = lambda r: [r[0][0], *r[0][1], r[0][2], r[1][0], *r[1][1]]   # noqa: E731
        for a, b in zip(flat(got), flat(ref)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))
        for k in plan.grads:
            np.testing.assert_array_equal(plan.grads[k], eager.grads[k], err_msg=k)


def test_one_plan_serves_every_training_call_and_eval_uses_another():
    m = _model("cpu", "plan", CONFIGS[0])
    x = np.random.default_rng(1).standard_normal((4, 2, 4))
    m(x)
    plan = m._saved.plan
    for call in range(1, 4):
        m(x)
        assert m._saved.plan is plan and int(plan.counter[0]) == call
    m.eval()
    m(x)
    assert m._saved.plan is not plan and m._saved.plan.counter is None   # no masks: no counter
    m.train()
    m(x)
    assert m._saved.plan is plan and int(plan.counter[0]) == 4


@pytest.mark.parametrize("device", ["cpu", "host"])
def test_detached_training_tapes_use_their_own_forwards_masks(device):
    """Forwards in flight: each detached tape's plan keeps its own counter, so backwards in any order
    recompute their own forward's masks."""
    cfg = CONFIGS[0]
    m, ref = _model(_device(device), "plan", cfg), _model(_device(device), "eager", cfg)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((4, 3, 4)) for _ in range(3)]
    dys = [rng.standard_normal((4, 3, 12)) for _ in range(3)]
    expected = []
    for x, dy in zip(xs, dys):
        ref.zero_grad()
        ref(x)
        dx, _ = ref.backward(dy)
        expected.append((dx, {k: v.copy() for k, v in ref.grads.items()}))
    tapes = []
    for x in xs:
        m(x)
        tapes.append(m.detach_tape())
    assert len({id(t.plan) for t in tapes}) == 3 and [t.mask_call for t in tapes] == [0, 1, 2]
    for i in (2, 0, 1):
        m.zero_grad()
        dx, _ = m.backward(dys[i], tape=tapes[i])
        np.testing.assert_array_equal(dx, expected[i][0])
        for k, g in expected[i][1].items():
            np.testing.assert_array_equal(m.grads[k], g)


def test_reseeding_builds_masks_of_the_new_seed():
    m, ref = (_model("cpu", a, CONFIGS[1]) for a in ("plan", "eager"))
    x = np.random.default_rng(3).standard_normal((4, 2, 4))
    for model in (m, ref):
        model(x)
        model.reseed_dropout(99)
    np.testing.assert_array_equal(m(x)[0], ref(x)[0])


@pytest.mark.parametrize("device", ["cpu", "host"])
def test_checkpoint_resume_in_plan_mode_is_bitwise_the_eager_run(tmp_path, device):
    kw = dict(head="last", device=_device(device), seed=3, dropout=0.3, zoneout_h=0.1, zoneout_c=0.2)
    data = [np.random.default_rng(i).standard_normal((4, 3, 2)).astype(np.float32) for i in range(6)]

    def steps(m, opt, xs):
        for x in xs:
            m.zero_grad()
            out, _ = m(x)
            m.backward(mse_loss(out, np.ones_like(out))[1])
            opt.step()

    eager = SequenceModel(2, 5, 1, 3, **kw, algo="eager")
    opt_e = Adam(eager.params, eager.grads, lr=1e-2)
    steps(eager, opt_e, data)
    m = SequenceModel(2, 5, 1, 3, **kw, algo="plan")
    opt = Adam(m.params, m.grads, lr=1e-2)
    steps(m, opt, data[:3])
    assert m.lstm._saved.plan is not None
    save_checkpoint(tmp_path / "ck.npz", m, opt)
    m2 = SequenceModel(2, 5, 1, 3, **dict(kw, seed=4), algo="plan")
    opt2 = Adam(m2.params, m2.grads, lr=1e-2)
    load_checkpoint(tmp_path / "ck.npz", m2, opt2)
    steps(m2, opt2, data[3:])
    assert m2.lstm._saved.plan is not None and m2.lstm.rng_state()["calls"] == 6
    for k in eager.params:
        np.testing.assert_array_equal(m2.params[k], eager.params[k])
