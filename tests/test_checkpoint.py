"""Checkpoints: bitwise round trip, atomic writes, clear errors for wrong or corrupt files."""

import os

import numpy as np
import pytest

from gpu_lstm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpu_lstm.losses import mse_loss
from gpu_lstm.model import SequenceModel
from gpu_lstm.optim import Adam


def _trained(seed=0, steps=3):
    rng = np.random.default_rng(seed)
    m = SequenceModel(2, 5, 1, 2, head="last", device="cpu", seed=seed)
    opt = Adam(m.params, m.grads, lr=1e-2)
    for _ in range(steps):
        x = rng.standard_normal((4, 3, 2)).astype(np.float32)
        m.zero_grad()
        out, _ = m(x)
        m.backward(mse_loss(out, np.ones_like(out))[1])
        opt.step()
    return m, opt


def test_round_trip_is_bitwise_and_training_continues_identically(tmp_path):
    m, opt = _trained()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, m, opt, extra={"note": "x"})
    m2 = SequenceModel(2, 5, 1, 2, head="last", device="cpu", seed=99)
    opt2 = Adam(m2.params, m2.grads, lr=1e-2)
    meta = load_checkpoint(path, m2, opt2)
    assert meta["extra"] == {"note": "x"} and meta["optimizer"]["step_count"] == 3
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
        for s in opt.slots:
            np.testing.assert_array_equal(opt2.state[k][s], opt.state[k][s])
    x = np.random.default_rng(7).standard_normal((4, 3, 2)).astype(np.float32)
    for model, o in ((m, opt), (m2, opt2)):
        model.zero_grad()
        out, _ = model(x)
        model.backward(mse_loss(out, np.ones_like(out))[1])
        o.step()
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])


def test_wrong_shapes_give_a_clear_error_and_leave_the_model_alone(tmp_path):
    m, opt = _trained()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, m, opt)
    other = SequenceModel(2, 6, 1, 2, head="last", device="cpu", seed=1)
    before = {k: v.copy() for k, v in other.params.items()}
    with pytest.raises(CheckpointError, match=r"parameter 'lstm.l0.W' is float32 \(20, 2\), the model expects float32 \(24, 2\)"):
        load_checkpoint(path, other)
    fewer = SequenceModel(2, 5, 1, 1, head="last", device="cpu")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(path, fewer)
    for k in before:
        np.testing.assert_array_equal(other.params[k], before[k])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files(tmp_path, damage):
    m, opt = _trained()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, m, opt)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(500), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, m)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz", m)


def test_crash_mid_save_keeps_the_old_file(tmp_path, monkeypatch):
    m, opt = _trained()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, m, opt)
    good = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, m, opt)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.npz"]   # no temporary file left behind


@pytest.mark.parametrize("device", ["cpu", "host"])
def test_training_with_dropout_and_zoneout_resumes_bitwise(tmp_path, device):
    """The mask generator's call counter travels with the checkpoint: the resumed run draws the masks
    the uninterrupted run draws."""
    kw = dict(head="last", device=device, seed=3, dropout=0.3, zoneout_h=0.1, zoneout_c=0.2)
    data = [np.random.default_rng(i).standard_normal((4, 3, 2)).astype(np.float32) for i in range(6)]

    def steps(m, opt, xs):
        for x in xs:
            m.zero_grad()
            out, _ = m(x)
            m.backward(mse_loss(out, np.ones_like(out))[1])
            opt.step()

    m = SequenceModel(2, 5, 1, 3, **kw)
    opt = Adam(m.params, m.grads, lr=1e-2)
    steps(m, opt, data[:3])
    save_checkpoint(tmp_path / "ck.npz", m, opt)
    steps(m, opt, data[3:])
    m2 = SequenceModel(2, 5, 1, 3, **dict(kw, seed=4))          # another seed: restored from the file
    opt2 = Adam(m2.params, m2.grads, lr=1e-2)
    load_checkpoint(tmp_path / "ck.npz", m2, opt2)
    assert m2.lstm.rng_state() == {"seed": m.lstm.rng_state()["seed"], "calls": 3}
    steps(m2, opt2, data[3:])
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])


def test_an_optimizer_over_some_of_the_parameters_round_trips(tmp_path):
    """save_checkpoint wrote the state of an optimizer over the head only; load_checkpoint then looked
    for every model parameter's slots and failed ('optimizer slot ... missing')."""
    m = SequenceModel(2, 3, 1, dtype="float64", device="cpu", seed=0)
    head = {k: m.params[k] for k in ("head.W", "head.b")}
    opt = Adam(head, {k: m.grads[k] for k in head}, lr=0.1)
    for g in m.grads.values():
        g[...] = 1.0
    opt.step()
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m, opt)
    m2 = SequenceModel(2, 3, 1, dtype="float64", device="cpu", seed=1)
    head2 = {k: m2.params[k] for k in head}
    opt2 = Adam(head2, {k: m2.grads[k] for k in head}, lr=0.1)
    load_checkpoint(path, m2, opt2)
    assert opt2.step_count == 1
    for k in head:
        for s in ("m", "v"):
            np.testing.assert_array_equal(opt2.state[k][s], opt.state[k][s])


def test_an_optimizer_over_other_parameters_is_refused_at_save(tmp_path):
    from gpu_lstm.optim import SGD
    m = SequenceModel(2, 3, 1, dtype="float64", device="cpu", seed=0)
    opt = SGD({"other": np.ones(2)}, {"other": np.ones(2)}, lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer: expected an optimizer over the model's parameters, "
                                         r"got one over 'other'"):
        save_checkpoint(str(tmp_path / "c.npz"), m, opt)
    with pytest.raises(TypeError, match="optimizer: expected an optimizer with state_dict"):
        save_checkpoint(str(tmp_path / "c.npz"), m, object())
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("extra, match", [
    ({1: "int", "1": "str"}, r"extra: expected str keys, got 1 \(int\)"),
    ({"a": {2: "x"}}, r"extra\['a'\]: expected str keys, got 2 \(int\)"),
])
def test_extra_keys_must_be_strings(tmp_path, extra, match):
    """{1: 'int', '1': 'str'} read back as {'1': 'str'}: JSON keys are strings, one entry was lost."""
    m = SequenceModel(2, 3, 1, dtype="float64", device="cpu", seed=0)
    with pytest.raises(TypeError, match=match):
        save_checkpoint(str(tmp_path / "c.npz"), m, extra=extra)


def test_checkpoint_arguments_and_metadata_shape_are_checked(tmp_path):
    """read_checkpoint(None), load_checkpoint(path, None) and metadata that is a JSON list failed with
    TypeError/AttributeError from inside; save_checkpoint('') with FileNotFoundError naming a temp file."""
    import json
    from gpu_lstm.checkpoint import read_checkpoint
    from gpu_lstm.sampling import model_from_checkpoint
    m = SequenceModel(2, 3, 1, dtype="float64", device="cpu", seed=0)
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m)
    with pytest.raises(TypeError, match="path: expected a str or path-like, got NoneType"):
        read_checkpoint(None)
    with pytest.raises(ValueError, match="path: expected a file name, got ''"):
        save_checkpoint("", m)
    with pytest.raises(TypeError, match="model: expected a model with a params dict, got NoneType"):
        load_checkpoint(path, None)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    good = json.loads(arrays["meta"].tobytes().decode())
    bad = str(tmp_path / "bad.npz")
    for meta, match in (([1, 2], "metadata is not a JSON object"), (dict(good, config=[1]), "config")):
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(bad, **arrays)
        with pytest.raises(CheckpointError, match=match):
            model_from_checkpoint(bad, device="cpu")
