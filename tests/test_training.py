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


def _char_model(vocab, **kwargs):
    from gpu_lstm.model import SequenceModel
    V = len(vocab)
    return SequenceModel(V, 8, V, dtype="float64", device="cpu", seed=0, **kwargs)


def test_sample_text_restores_the_callers_mode_even_on_error(monkeypatch):
    """sample_text left every model in training mode (dropout back on after model.eval())."""
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.sampling import sample_text
    vocab = tasks.CharVocab("abc\n")
    m = _char_model(vocab)
    m.eval()
    sample_text(m, vocab, 3)
    assert m.training is False
    m.train()
    sample_text(m, vocab, 3)
    assert m.training is True
    calls = []
    real = SequenceModel.forward

    def fails_on_the_second_step(self, *a, **k):        # an error inside the loop, in eval mode
        calls.append(self.training)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real(self, *a, **k)
    monkeypatch.setattr(SequenceModel, "__call__", fails_on_the_second_step)
    with pytest.raises(RuntimeError, match="device lost"):
        sample_text(m, vocab, 3)
    assert calls == [False, False] and m.training is True


def test_sample_text_is_finite_at_a_tiny_temperature():
    """temperature=1e-310 made the logits / temperature overflow to inf and the probabilities NaN."""
    from gpu_lstm.sampling import sample_text
    vocab = tasks.CharVocab("abc\n")
    text = sample_text(_char_model(vocab), vocab, 5, temperature=1e-310)
    assert len(text) == 6 and set(text) <= set(vocab.chars)


def test_sample_text_reads_a_batch_first_model_in_its_layout():
    """A batch_first model got (T, 1, V) inputs: the prime read as T one-step sequences."""
    from gpu_lstm.sampling import sample_text
    vocab = tasks.CharVocab("abcdefgh\n")
    a, b = _char_model(vocab), _char_model(vocab, batch_first=True)
    assert sample_text(a, vocab, 20, prime="abcabc", seed=3) == sample_text(b, vocab, 20, prime="abcabc", seed=3)


@pytest.mark.parametrize("inputs, outputs, kwargs, match", [
    (9, 9, dict(head="last"), "model: expected a character model with head='all'"),
    (9, 5, {}, r"model: expected 9 outputs \(the vocabulary's size\), got 5"),
    (5, 9, {}, r"model: expected 9 inputs \(one-hot over the vocabulary\), got 5"),
])
def test_sample_text_refuses_a_model_that_does_not_fit_the_vocabulary(inputs, outputs, kwargs, match):
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.sampling import sample_text
    vocab = tasks.CharVocab("abcdefgh\n")        # 9 characters
    m = SequenceModel(inputs, 4, outputs, device="cpu", seed=0, **kwargs)
    with pytest.raises(ValueError, match=match):
        sample_text(m, vocab, 3)


def test_save_plot_writes_a_png_at_exactly_the_path_it_returns(tmp_path):
    """A path without '.png' got 'noext.png' written while 'noext' was returned; '.pdf' wrote a PDF;
    and the caller's matplotlib backend was switched to Agg."""
    matplotlib = pytest.importorskip("matplotlib")
    from gpu_lstm.plotting import save_plot
    backend = matplotlib.get_backend()
    for name in ("noext", "curve.pdf"):
        path = str(tmp_path / name)
        assert save_plot([(1, 1.0), (2, 0.5)], path, "t", "loss") == path
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend


@pytest.mark.parametrize("args, error, match", [
    (([], "t", "y"), ValueError, "history: expected at least one"),
    (([(1, 1.0)], "t", None), TypeError, "ylabel: expected a str"),
    (([(1, 1.0)], 3, "y"), TypeError, "title: expected a str"),
])
def test_save_plot_checks_its_arguments(tmp_path, args, error, match):
    pytest.importorskip("matplotlib")
    from gpu_lstm.plotting import save_plot
    history, title, ylabel = args
    with pytest.raises(error, match=match):
        save_plot(history, str(tmp_path / "p.png"), title, ylabel)


@pytest.mark.parametrize("rng, dtype, error, match", [
    (np.random.default_rng(0), "int32", TypeError, "dtype: expected"),
    (np.random.default_rng(0), "complex64", TypeError, "dtype: expected"),
    (0, "float32", TypeError, r"rng: expected a numpy\.random\.Generator .*, got int"),
])
def test_adding_batch_checks_dtype_and_rng(rng, dtype, error, match):
    """dtype='int32' returned all-zero inputs and targets (values in [0, 1) truncated)."""
    with pytest.raises(error, match=match):
        tasks.adding_batch(rng, 4, 2, dtype)


@pytest.mark.parametrize("ids, V, error, match", [
    (np.array([-1]), 3, ValueError, r"ids: expected values in \[0, 3\), got values from -1 to -1"),
    (np.array([3]), 3, ValueError, r"ids: expected values in \[0, 3\), got values from 3 to 3"),
    (np.array([True, False]), 3, TypeError, "ids: expected integers, got dtype bool"),
    (np.array([1.0]), 3, TypeError, "ids: expected integers, got dtype float64"),
    (np.array([0]), 0, ValueError, "V: expected a positive integer"),
])
def test_one_hot_checks_ids_and_V(ids, V, error, match):
    """-1 silently gave the last class and bool ids were used as a row mask."""
    with pytest.raises(error, match=match):
        tasks.one_hot(ids, V, np.float32)


def test_one_hot_of_valid_ids():
    np.testing.assert_array_equal(tasks.one_hot(np.array([[2, 0]]), 3, np.float32),
                                  [[[0, 0, 1], [1, 0, 0]]])


@pytest.mark.parametrize("ids, error, match", [
    ([-1], ValueError, r"ids: expected integers in \[0, 3\), got -1"),
    ([3], ValueError, r"ids: expected integers in \[0, 3\), got 3"),
    ([1.7], TypeError, r"ids: expected integers in \[0, 3\), got 1.7 \(float\)"),
])
def test_decode_checks_ids(ids, error, match):
    """decode([-1]) silently returned the last character, decode([1.7]) the second."""
    with pytest.raises(error, match=match):
        tasks.CharVocab("abc").decode(ids)


def test_decode_takes_numpy_integers():
    assert tasks.CharVocab("abc").decode(np.array([2, 0])) == "ca"


@pytest.mark.parametrize("T, B, error, match", [
    (0, 2, ValueError, "T: expected a positive integer, got 0"),
    (-3, 2, ValueError, "T: expected a positive integer, got -3"),
    (2, 0, ValueError, "B: expected a positive integer, got 0"),
    (2.5, 2, TypeError, "T: expected a positive integer"),
])
def test_stream_batches_checks_T_and_B(T, B, error, match):
    """T=0 returned empty chunks forever; T=-3 a 7-row chunk; B=0 divided by zero."""
    with pytest.raises(error, match=match):
        tasks.StreamBatches(np.arange(20), T, B)


def test_stream_batches_takes_a_sequence_of_integer_ids():
    b = tasks.StreamBatches(list(range(9)), 2, 2)
    x, y, reset = b.next()
    np.testing.assert_array_equal(x, [[0, 4], [1, 5]])
    with pytest.raises(TypeError, match="ids: expected a 1-D sequence of integer ids, got dtype float64"):
        tasks.StreamBatches(np.zeros(9), 2, 2)


@pytest.mark.parametrize("args, error, match", [
    ((0, 1), ValueError, "total: expected a positive integer, got 0"),
    ((5, 0), ValueError, "every: expected a positive integer, got 0"),
    ((5, None), TypeError, "every: expected a positive integer"),
    ((5, 1, 3), TypeError, "stream: expected a file-like object"),
])
def test_progress_checks_its_arguments(args, error, match):
    """total=0 divided by zero in show(); every=0 became 1 silently."""
    from gpu_lstm.progress import Progress
    with pytest.raises(error, match=match):
        Progress(*args)


def test_progress_keeps_a_falsy_stream_and_a_bounded_bar():
    from gpu_lstm.progress import Progress

    class Collector(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass
    out = Collector()                   # empty, so falsy: `stream or sys.stderr` wrote to stderr
    Progress(2, 1, out).show(7, 1.0, 10)
    assert len(out) == 1 and "[" + "#" * 24 + "]" in out[0]


def test_load_text_reads_gzip_by_content_and_any_path_type(tmp_path):
    """'x.GZ' was read as raw bytes ('non-UTF-8 byte at offset 1'); a bytes path failed in endswith."""
    import gzip
    raw = "In the beginning\n" * 3
    for name in ("a.GZ", "a.txt.gz", "no_extension"):
        p = tmp_path / name
        p.write_bytes(gzip.compress(raw.encode()))
        assert tasks.load_text(p) == raw
    plain = tmp_path / "plain.txt"
    plain.write_text(raw)
    assert tasks.load_text(bytes(plain)) == raw
    with pytest.raises(TypeError, match="text: expected a file path"):
        tasks.load_text(None)
