"""The bad-input suite, by class (issue 11). Each class has a table; a new case of a known class is one
more row, and a regression in any row fails CI.

1. Silent wrong answers: batch-first and time-major calls must agree exactly, never just in shape.
2. Half-done operations: a mutating call that raises leaves every array and counter as it was.
5. Messages: every error names the argument, the expected and the received value; hints must work.
(Classes 3, 4 and 6, late errors, tracebacks and leftovers, are in test_faults.py.)
"""

import re

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm import losses, optim
from gpu_lstm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpu_lstm.dense import Dense
from gpu_lstm.model import SequenceModel


def _x(T=7, B=3, I=2, seed=0, batch_first=False):
    x = np.random.default_rng(seed).standard_normal((T, B, I))
    return x.transpose(1, 0, 2).copy() if batch_first else x


# ---- class 1: silent wrong answers ----------------------------------------------------------------------
@pytest.mark.parametrize("head", ["last", "all"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("options", [{}, {"bidirectional": True}, {"proj_size": 2, "num_layers": 2}])
def test_batch_first_model_equals_time_major(head, with_lengths, options):
    """The issue's example: head='last' with batch_first returned every step of the last sample."""
    kw = dict(head=head, dtype="float64", device="cpu", seed=3, **options)
    L = kw.pop("num_layers", 1)
    tm = SequenceModel(2, 4, 1, L, **kw)
    bf = SequenceModel(2, 4, 1, L, batch_first=True, **kw)
    x = _x()
    lengths = np.array([7, 3, 5]) if with_lengths else None
    p_tm, (h_tm, c_tm) = tm(x, lengths=lengths)
    p_bf, (h_bf, c_bf) = bf(x.transpose(1, 0, 2).copy(), lengths=lengths)
    if head == "last":
        assert p_bf.shape == (3, 1)
        np.testing.assert_array_equal(p_bf, p_tm)
    else:
        assert p_bf.shape == (3, 7, 1)
        np.testing.assert_array_equal(p_bf, p_tm.transpose(1, 0, 2))
    np.testing.assert_array_equal(h_bf, h_tm)
    np.testing.assert_array_equal(c_bf, c_tm)
    g = np.random.default_rng(1).standard_normal(p_tm.shape)
    tm.backward(g)
    bf.backward(g if head == "last" else g.transpose(1, 0, 2).copy())
    for k in tm.grads:
        np.testing.assert_allclose(bf.grads[k], tm.grads[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_last_head_reads_each_samples_own_last_step():
    """Independent of the model's internals: the prediction of sample b is the head applied to y[T-1, b]."""
    m = SequenceModel(2, 4, 1, head="last", batch_first=True, dtype="float64", device="cpu", seed=0)
    x = _x(batch_first=True)
    pred, _ = m(x)
    y, _ = m.lstm(x)
    np.testing.assert_array_equal(pred, m.head(y[:, -1]))


def test_batch_first_lstm_equals_time_major_with_cells():
    tm = gl.LSTM(2, 4, 2, dtype="float64", device="cpu", seed=0)
    bf = gl.LSTM(2, 4, 2, dtype="float64", device="cpu", seed=0, batch_first=True)
    x = _x()
    y, hc, cells = tm(x, return_cells=True)
    y2, hc2, cells2 = bf(x.transpose(1, 0, 2).copy(), return_cells=True)
    np.testing.assert_array_equal(y2, y.transpose(1, 0, 2))
    np.testing.assert_array_equal(cells2, cells.transpose(1, 0, 2))
    dx, _ = tm.backward(np.ones_like(y))
    dx2, _ = bf.backward(np.ones_like(y2))
    np.testing.assert_array_equal(dx2, dx.transpose(1, 0, 2))


@pytest.mark.parametrize("call", [
    lambda g: optim.clip_grad_norm(g, 0.0),        # would zero every gradient
    lambda g: optim.clip_grad_value(g, 0.0),
])
def test_calls_that_would_silently_zero_gradients_refuse(call):
    g = {"a": np.ones(3)}
    with pytest.raises(ValueError, match="expected a finite number > 0, got 0.0"):
        call(g)
    np.testing.assert_array_equal(g["a"], np.ones(3))


# ---- class 2: half-done operations ----------------------------------------------------------------------
def _snapshot(*objs):
    """Every array and counter a mutating call could touch, copied."""
    out = []
    for o in objs:
        if isinstance(o, optim.Optimizer):
            out.append(("step", o.step_count))
            out += [(f"{k}/{s}", v.copy()) for k, st in o.state.items() for s, v in st.items()]
        else:
            out += [(f"p/{k}", v.copy()) for k, v in o.params.items()]
            out += [(f"g/{k}", v.copy()) for k, v in o.grads.items()]
    return out


def _assert_unchanged(before, after):
    assert [k for k, _ in before] == [k for k, _ in after]
    for (k, a), (_, b) in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)


def _trained_model():
    m = SequenceModel(2, 4, 1, head="last", device="cpu", seed=0)
    opt = optim.Adam(m.params, m.grads, lr=1e-2)
    x = _x().astype(np.float32)
    out, _ = m(x)
    m.backward(np.ones_like(out))
    opt.step()
    return m, opt


def _lstm():
    m = gl.LSTM(2, 4, device="cpu", seed=0)
    y, _ = m(_x().astype(np.float32))
    m.backward(np.ones_like(y))
    return m


def _write_checkpoint(tmp_path, damage):
    """A checkpoint of _trained_model() whose LAST checked item is wrong, the rest good."""
    m, opt = _trained_model()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, m, opt)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    import json
    meta = json.loads(arrays["meta"].tobytes().decode())
    if damage == "last optimizer slot misshapen":
        arrays["optim/head.b/v"] = np.zeros(5, np.float32)
    elif damage == "step count corrupt":
        meta["optimizer"]["step_count"] = "three"
    elif damage == "optimizer slot of text":
        arrays["optim/head.b/v"] = np.array(["x"])
    elif damage == "step count negative":        # passed the old int-only check, then the optimizer refused
        meta["optimizer"]["step_count"] = -1
    elif damage == "mask generator seed a float":
        meta["mask_rng"] = {"seed": 1.5, "calls": 0}
    elif damage == "mask generator without calls":
        meta["mask_rng"] = {"seed": 1}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", [
    "set_params: good W, R of text", "set_params: good W, R misshapen", "set_params: good W, R complex",
    "set_params: good W, unknown name", "set_params: not a dict",
    "torch state dict: one bias misshapen", "backward: good dy, bad dhc", "reseed_dropout: bad seed",
])
def test_lstm_mutations_are_all_or_nothing(case):
    m = _lstm()
    before = _snapshot(m)
    good_W = np.ones((16, 2))
    with pytest.raises((ValueError, TypeError, KeyError)):
        if case == "set_params: good W, R of text":
            m.set_params({"l0.W": good_W, "l0.R": np.full((16, 4), "a")})
        elif case == "set_params: good W, R misshapen":
            m.set_params({"l0.W": good_W, "l0.R": np.ones((16, 5))})
        elif case == "set_params: good W, R complex":
            m.set_params({"l0.W": good_W, "l0.R": np.ones((16, 4)) * 1j})
        elif case == "set_params: good W, unknown name":
            m.set_params({"l0.W": good_W, "l1.W": good_W})
        elif case == "set_params: not a dict":
            m.set_params([("l0.W", good_W)])
        elif case == "torch state dict: one bias misshapen":
            sd = m.torch_state_dict()
            sd["weight_ih_l0"] = good_W
            sd["bias_hh_l0"] = np.zeros(15)
            m.load_torch_state_dict(sd)
        elif case == "backward: good dy, bad dhc":
            m.backward(np.ones((7, 3, 4), np.float32), (np.zeros((1, 3, 4), np.float32), np.zeros((2, 3, 4))))
        elif case == "reseed_dropout: bad seed":
            m.reseed_dropout("x")
    _assert_unchanged(before, _snapshot(m))


@pytest.mark.parametrize("damage", ["last optimizer slot misshapen", "step count corrupt", "optimizer slot of text",
                                    "step count negative", "mask generator seed a float",
                                    "mask generator without calls"])
def test_load_checkpoint_is_all_or_nothing(tmp_path, damage):
    path = _write_checkpoint(tmp_path, damage)
    m = SequenceModel(2, 4, 1, head="last", device="cpu", seed=5)
    opt = optim.Adam(m.params, m.grads, lr=1e-2)
    before = _snapshot(m, opt) + [("mask rng", list(m.lstm.rng_state().values()))]
    with pytest.raises(CheckpointError, match="checkpoint: "):
        load_checkpoint(path, m, opt)
    _assert_unchanged(before, _snapshot(m, opt) + [("mask rng", list(m.lstm.rng_state().values()))])


@pytest.mark.parametrize("state", [None, {}, {"seed": 1}, {"seed": 1.0, "calls": 0}, {"seed": "1", "calls": 0},
                                   {"seed": True, "calls": 0}, {"seed": 1, "calls": float("nan")},
                                   {"seed": 1, "calls": float("inf")}, {"seed": 2 ** 32, "calls": 0},
                                   {"seed": 1, "calls": -1}, [1, 2]])
def test_set_rng_state_checks_everything_first(state):
    m = gl.LSTM(2, 4, device="cpu", seed=0, dropout=0.0)
    m.set_rng_state({"seed": 5, "calls": 3})
    with pytest.raises((TypeError, ValueError, KeyError)) as info:
        m.set_rng_state(state)
    assert _first_line(info.value).startswith("state"), info.value
    assert m.rng_state() == {"seed": 5, "calls": 3}


@pytest.mark.parametrize("case", ["slot misshapen", "step count negative", "step count text", "not a dict"])
def test_optimizer_load_state_dict_is_all_or_nothing(case):
    m, opt = _trained_model()
    sd = {"step_count": 7, "state": {k: {s: np.full(v.shape, 9.0) for s in opt.slots} for k, v in m.params.items()}}
    if case == "slot misshapen":
        sd["state"]["head.b"]["v"] = np.zeros(3)
    elif case == "step count negative":
        sd["step_count"] = -1
    elif case == "step count text":
        sd["step_count"] = "7"
    else:
        sd = [sd]
    before = _snapshot(opt)
    with pytest.raises((ValueError, TypeError, KeyError)):
        opt.load_state_dict(sd)
    _assert_unchanged(before, _snapshot(opt))


@pytest.mark.parametrize("case", ["model backward: dout misshapen", "model backward: dout float64",
                                  "dense backward: dy misshapen", "clip: bad max_norm"])
def test_gradient_writers_check_first(case):
    m, _ = _trained_model()
    out, _ = m(_x().astype(np.float32))
    before = _snapshot(m)
    with pytest.raises((ValueError, TypeError)):
        if case == "model backward: dout misshapen":
            m.backward(np.ones((4, 1), np.float32))
        elif case == "model backward: dout float64":
            m.backward(np.ones((3, 1)))
        elif case == "dense backward: dy misshapen":
            m.head.backward(np.ones((3, 2), np.float32))
        else:
            optim.clip_grad_norm(m.grads, -1.0)
    _assert_unchanged(before, _snapshot(m))


# ---- class 5: messages name the argument, the expected and the received value ---------------------------
def _model():
    return gl.LSTM(3, 4, 2, device="cpu", seed=0)


def _seqmodel():
    return SequenceModel(3, 4, 2, device="cpu", seed=0)


def _after_forward():
    m = _model()
    m(np.zeros((5, 2, 3), np.float32))
    return m


f32 = np.float32
MESSAGES = [
    # (argument named, call)
    ("input_size", lambda: gl.LSTM(0, 4, device="cpu")),
    ("hidden_size", lambda: gl.LSTM(3, "4", device="cpu")),
    ("num_layers", lambda: gl.LSTM(3, 4, 1.5, device="cpu")),
    ("dtype", lambda: gl.LSTM(3, 4, dtype="int32", device="cpu")),
    ("dtype", lambda: gl.LSTM(3, 4, dtype="flaot32", device="cpu")),
    ("device", lambda: gl.LSTM(3, 4, device="tpu")),
    ("bias", lambda: gl.LSTM(3, 4, bias="yes", device="cpu")),
    ("seed", lambda: gl.LSTM(3, 4, seed=-1, device="cpu")),
    ("seed", lambda: gl.LSTM(3, 4, seed=1.5, device="cpu")),
    ("proj_size", lambda: gl.LSTM(3, 4, proj_size=-1, device="cpu")),
    ("proj_size", lambda: gl.LSTM(3, 4, proj_size=4, device="cpu")),
    ("dropout", lambda: gl.LSTM(3, 4, dropout=1.0, device="cpu")),
    ("dropout", lambda: gl.LSTM(3, 4, dropout=-0.1, device="cpu")),
    ("zoneout_h", lambda: gl.LSTM(3, 4, zoneout_h=2, device="cpu")),
    ("forget_bias", lambda: gl.LSTM(3, 4, forget_bias="x", device="cpu")),
    ("forget_bias", lambda: gl.LSTM(3, 4, forget_bias=1.0, bias=False, device="cpu")),
    ("check_finite", lambda: gl.LSTM(3, 4, check_finite=1, device="cpu")),
    ("x", lambda: _model()(np.zeros((5, 2, 3), np.float16))),
    ("x", lambda: _model()(None)),
    ("x", lambda: _model()([[1.0, 2.0], [3.0]])),
    ("x", lambda: _model()(np.zeros((5, 3), f32))),
    ("x", lambda: _model()(np.zeros((5, 2, 4), f32))),
    ("x", lambda: _model()(np.full((5, 2, 3), np.nan, f32), check_finite=True)),
    ("hc", lambda: _model()(np.zeros((5, 2, 3), f32), np.zeros((2, 2, 4), f32))),
    ("hc[0] (h)", lambda: _model()(np.zeros((5, 2, 3), f32), (np.zeros((1, 2, 4), f32),) * 2)),
    ("lengths", lambda: _model()(np.zeros((5, 2, 3), f32), lengths=np.array([1.0, 2.0]))),
    ("lengths", lambda: _model()(np.zeros((5, 2, 3), f32), lengths=np.array([1, 2, 3]))),
    ("lengths", lambda: _model()(np.zeros((5, 2, 3), f32), lengths=np.array([0, 5]))),
    ("lengths", lambda: _model()(np.zeros((5, 2, 3), f32), lengths=np.array([6, 5]))),
    ("dy", lambda: _after_forward().backward(np.zeros((5, 2, 3), f32))),
    ("dy", lambda: _after_forward().backward(np.zeros((5, 2, 4)))),
    ("dhc[0] (h)", lambda: _after_forward().backward(None, (np.zeros((2, 1, 4), f32),) * 2)),
    ("values", lambda: _model().set_params([])),
    ("values", lambda: _model().set_params({"l7.W": np.zeros(2)})),
    ("l0.W", lambda: _model().set_params({"l0.W": np.zeros((16, 2))})),
    ("l0.W", lambda: _model().set_params({"l0.W": np.full((16, 3), "a")})),
    ("seed", lambda: _model().reseed_dropout("x")),
    ("state", lambda: _model().set_rng_state(None)),
    ("state", lambda: _model().set_rng_state({})),
    ("state['seed']", lambda: _model().set_rng_state({"seed": float("nan"), "calls": 0})),
    ("state['calls']", lambda: _model().set_rng_state({"seed": 0, "calls": float("inf")})),
    ("state['seed']", lambda: _model().set_rng_state({"seed": False, "calls": 0})),
    ("state['calls']", lambda: _model().set_rng_state({"seed": 0, "calls": -2})),
    ("head", lambda: SequenceModel(3, 4, 2, head="first", device="cpu")),
    ("output_size", lambda: SequenceModel(3, 4, 0, device="cpu")),
    ("activation", lambda: SequenceModel(3, 4, 2, activation="relu", device="cpu")),
    ("x", lambda: _seqmodel()(np.zeros((5, 2, 3)))),
    ("in_features", lambda: Dense(0, 2, device="cpu")),
    ("h", lambda: Dense(3, 2, device="cpu")(np.zeros((4, 2), f32))),
    ("pred", lambda: losses.mse_loss([1.0], np.ones(1))),
    ("target", lambda: losses.mse_loss(np.ones(2), [1.0, 2.0])),
    ("target", lambda: losses.mse_loss(np.ones(2), np.ones(3))),
    ("target", lambda: losses.mse_loss(np.ones(2), np.ones(2, f32))),
    ("mask", lambda: losses.mse_loss(np.ones((2, 3)), np.ones((2, 3)), mask=np.ones(4))),
    ("targets", lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2))),
    ("targets", lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))),
    ("targets", lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))),
    ("targets", lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), [0, 1])),
    ("logits", lambda: losses.softmax_cross_entropy(np.zeros((2, 3), int), np.array([0, 1]))),
    ("lr", lambda: optim.Adam({"a": np.ones(2)}, {"a": np.ones(2)}, lr=-1)),
    ("betas", lambda: optim.Adam({"a": np.ones(2)}, {"a": np.ones(2)}, betas=(0.9,))),
    ("betas[0]", lambda: optim.Adam({"a": np.ones(2)}, {"a": np.ones(2)}, betas=(1.0, 0.9))),
    ("betas[1]", lambda: optim.Adam({"a": np.ones(2)}, {"a": np.ones(2)}, betas=(0.9, "x"))),
    ("eps", lambda: optim.Adam({"a": np.ones(2)}, {"a": np.ones(2)}, eps=-1)),
    ("momentum", lambda: optim.SGD({"a": np.ones(2)}, {"a": np.ones(2)}, momentum="x")),
    ("grads", lambda: optim.SGD({"a": np.ones(2)}, {"b": np.ones(2)})),
    ("grads['a']", lambda: optim.SGD({"a": np.ones(2)}, {"a": np.ones(3)})),
    ("max_norm", lambda: optim.clip_grad_norm({"a": np.ones(2)}, 0)),
    ("grads", lambda: optim.clip_grad_norm({}, 1.0)),
    ("clip_value", lambda: optim.clip_grad_value({"a": np.ones(2)}, -1)),
    ("extra", lambda: save_checkpoint("/tmp/x.npz", _seqmodel(), extra=[1])),
    ("extra", lambda: save_checkpoint("/tmp/x.npz", _seqmodel(), extra={"a": object()})),
    ("model", lambda: save_checkpoint("/tmp/x.npz", object())),
    ("path", lambda: save_checkpoint("/tmp", _seqmodel())),
]


def _first_line(exc):
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(msg)


@pytest.mark.parametrize("arg, call", MESSAGES, ids=[f"{i}-{a}" for i, (a, _) in enumerate(MESSAGES)])
def test_every_message_names_argument_expected_and_received(arg, call):
    with pytest.raises((ValueError, TypeError, KeyError, OSError)) as info:
        call()
    msg = _first_line(info.value)
    assert msg.startswith(f"{arg}: "), msg
    assert "expected" in msg and "got" in msg, msg


def test_dtype_hints_only_suggest_what_works():
    """The issue's example: a float16 input suggested dtype='float16' when the constructor rejected it.
    Every hint in a dtype message is followed here and must then succeed."""
    for model_dtype in ("float32", "float64"):
        for x_dtype in ("float16", "float32", "float64", "int64", "int8", "bool"):
            if x_dtype == model_dtype:
                continue
            m = gl.LSTM(3, 4, dtype=model_dtype, device="cpu")
            x = np.zeros((5, 2, 3), x_dtype)
            with pytest.raises(TypeError) as info:
                m(x)
            msg = str(info.value)
            for target in re.findall(r"\.astype\('(\w+)'\)", msg):
                m(x.astype(target))
            for target in re.findall(r"dtype='(\w+)'", msg):
                gl.LSTM(3, 4, dtype=target, device="cpu")(x)
            assert ".astype(" in msg


def test_no_message_of_the_api_says_a_non_argument_prefix():
    """The one deliberate exception to 'name the argument': backward before forward names the call."""
    with pytest.raises(gl.BackwardBeforeForwardError, match="backward: called before forward"):
        _model().backward()


def test_dtype_none_is_refused_not_float64():
    """dtype=None gave a float64 model (np.dtype(None)), though the default is float32."""
    with pytest.raises(TypeError, match="dtype: expected 'float32', 'float64', 'bfloat16' or 'float16', got None"):
        gl.LSTM(2, 3, dtype=None, device="cpu")


@pytest.mark.parametrize("call, name", [
    (lambda m, x: m(x, check_finite="no"), "check_finite"),
    (lambda m, x: m(x, return_cells="no"), "return_cells"),
    (lambda m, x: m.torch_state_dict(as_tensors="no"), "as_tensors"),
])
def test_call_flags_are_true_or_false(call, name):
    """check_finite='no' checked, return_cells='no' returned the cells, as_tensors='no' gave tensors:
    any non-empty string read as True (the constructor's flags were already strict)."""
    m = gl.LSTM(2, 3, device="cpu", seed=0)
    with pytest.raises(TypeError, match=f"{name}: expected True or False"):
        call(m, np.zeros((2, 1, 2), np.float32))
