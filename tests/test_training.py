"""Short training runs whose loss must fall clearly (kept small for CI), and the data pipeline."""

import io

import numpy as np
import pytest

from gpu_lstm import tasks, training
from gpu_lstm.checkpoint import read_checkpoint


def test_adding_problem_data():
    x, y = tasks.adding_batch(np.random.default_rng(0), 10, 500)
    assert x.shape == (10, 500, 2) and y.shape == (500, 1)
    assert (x[:, :, 1].sum(axis=0) == 2).all()
    assert (x[:5, :, 1].sum(axis=0) == 1).all()          # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=0), rtol=1e-6)
    assert abs(float(((y - 1.0) ** 2).mean()) - 1 / 6) < 0.03   # predicting the mean: about 0.167


def test_adding_training_learns(tmp_path):
    s = training.train_adding(steps=300, T=10, B=32, hidden=16, lr=1e-2, device="cpu", out_dir=str(tmp_path),
                           log_every=100, stream=io.StringIO())
    assert s["test_mse"] < 0.1 * s["baseline_mse"], s["test_mse"]
    assert s["history"][-1][1] < 0.2 * s["history"][0][1]
    meta, arrays = read_checkpoint(s["checkpoint"])
    assert meta["extra"]["task"] == "adding" and "param/head.W" in arrays


def test_charlm_training_learns_and_samples(tmp_path):
    out = io.StringIO()
    s = training.train_charlm(steps=80, T=16, B=16, hidden=32, lr=1e-2, device="cpu", out_dir=str(tmp_path),
                           log_every=40, sample_length=40, stream=out)
    assert s["history"][0][1] > 5.5            # starts near log2(62) = 5.95 bits
    assert s["test_bpc"] < 4.0                 # clearly below uniform after 80 steps
    assert s["sample"].startswith("And God said") and len(s["sample"]) == len("And God said") + 40
    assert "step 40/80" in out.getvalue() and "tokens/s" in out.getvalue()
    from gpu_lstm.cli import main
    assert main(["sample", s["checkpoint"], "--length", "25", "--device", "cpu"]) == 0


def test_stream_batches_continue_each_stream():
    ids = np.arange(1000)
    b = tasks.StreamBatches(ids, T=7, B=4)
    x1, y1, r1 = b.next()
    x2, _, _ = b.next()
    assert not r1 and x1.shape == (7, 4)
    np.testing.assert_array_equal(y1, x1 + 1)                 # targets are the next character
    np.testing.assert_array_equal(x2[0], x1[-1] + 1)          # chunk 2 continues chunk 1 per stream
    with pytest.raises(ValueError, match="too short"):
        tasks.StreamBatches(np.arange(10), T=8, B=4)


def test_corpus_and_vocab():
    text = tasks.load_corpus()
    assert len(text) > 300_000 and text.startswith("In the beginning God created")
    v = tasks.CharVocab(text)
    assert v.decode(v.encode("And God said")) == "And God said"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("é")


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from gpu_lstm.cli import main
    assert main(["sample", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu-lstm sample: error: checkpoint:") and "does not exist" in err
    with pytest.raises(SystemExit):
        main(["train", "adding", "--steps", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err
