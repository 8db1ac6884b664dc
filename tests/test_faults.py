"""The fault suite, by class (issue 11); see test_bad_inputs.py for classes 1, 2 and 5.

3. Late errors: whatever can be checked is checked before the first training step (a run that would
   fail must fail before ``fit`` is reached); a disk that fails at the end keeps the trained model.
4. Tracebacks: no user mistake and no missing or broken GPU ends in a traceback from the CLI.
6. Leftovers: killed saves leave no pile of temporaries, outputs follow the umask, and summary.json
   never describes another checkpoint than the one beside it.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import types

import pytest

from gpu_lstm import checkpoint, cli, training
from gpu_lstm.checkpoint import read_checkpoint

TINY = dict(steps=3, T=4, B=4, hidden=4, log_every=100)


@pytest.fixture
def no_training(monkeypatch):
    """Make reaching the training loop a test failure: every check must come before it."""
    def fit(*a, **k):
        raise AssertionError("the training loop was reached: the error came too late")
    monkeypatch.setattr(training, "fit", fit)


def _quiet(**kw):
    import io
    return dict(stream=io.StringIO(), device="cpu", **kw)


# ---- class 3: late errors --------------------------------------------------------------------------------
LATE = [
    ("out_dir", lambda p: training.train_adding(out_dir=str(p / "a-file"), **_quiet(**TINY))),
    ("out_dir", lambda p: training.train_adding(out_dir=str(p / "a-file" / "sub"), **_quiet(**TINY))),
    ("steps", lambda p: training.train_adding(out_dir=str(p), **_quiet(**{**TINY, "steps": 0}))),
    ("T", lambda p: training.train_adding(out_dir=str(p), **_quiet(**{**TINY, "T": 1}))),
    ("B", lambda p: training.train_adding(out_dir=str(p), **_quiet(**{**TINY, "B": 0}))),
    ("hidden", lambda p: training.train_adding(out_dir=str(p), **_quiet(**{**TINY, "hidden": -1}))),
    ("lr", lambda p: training.train_adding(out_dir=str(p), lr=0.0, **_quiet(**TINY))),
    ("clip", lambda p: training.train_adding(out_dir=str(p), clip=-1.0, **_quiet(**TINY))),
    ("optimizer", lambda p: training.train_adding(out_dir=str(p), optimizer="rmsprop", **_quiet(**TINY))),
    ("dtype", lambda p: training.train_adding(out_dir=str(p), dtype="int32", **_quiet(**TINY))),
    ("seed", lambda p: training.train_adding(out_dir=str(p), seed=-3, **_quiet(**TINY))),
    ("log_every", lambda p: training.train_adding(out_dir=str(p), **_quiet(**{**TINY, "log_every": 0}))),
    ("hidden, layers, B, T", lambda p: training.train_adding(out_dir=str(p), **_quiet(**{**TINY, "hidden": 10**6}))),
    ("text", lambda p: training.train_charlm(out_dir=str(p), text=str(p / "missing.txt"), **_quiet(**TINY))),
    ("text", lambda p: training.train_charlm(out_dir=str(p), text=str(p / "binary.txt"), **_quiet(**TINY))),
    ("text", lambda p: training.train_charlm(out_dir=str(p), text=str(p / "short.txt"), **_quiet(**TINY))),
    ("text", lambda p: training.train_charlm(out_dir=str(p), text=str(p / "one-char.txt"), **_quiet(**TINY))),
    ("text", lambda p: training.train_charlm(out_dir=str(p), text=str(p), **_quiet(**TINY))),
    ("sample_length", lambda p: training.train_charlm(out_dir=str(p), sample_length=0, **_quiet(**TINY))),
    ("hidden, layers, B, T", lambda p: training.train_charlm(out_dir=str(p), **_quiet(**{**TINY, "hidden": 10**6}))),
]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00abc" * 50)
    (tmp_path / "short.txt").write_text("abcdefghij" * 2)
    (tmp_path / "one-char.txt").write_text("a" * 1000)
    return tmp_path


@pytest.mark.parametrize("arg, call", LATE, ids=[f"{i}-{a}" for i, (a, _) in enumerate(LATE)])
def test_run_errors_come_before_the_first_step(files, no_training, arg, call):
    with pytest.raises((ValueError, TypeError, OSError, MemoryError)) as info:
        call(files)
    msg = str(info.value)
    assert msg.startswith(f"{arg}: ") or f"{arg}: " in msg, msg


def test_unwritable_output_folder_is_found_before_the_first_step(tmp_path, no_training, monkeypatch):
    import tempfile

    import gpu_lstm._preflight as pre

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(pre.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OSError, match="out_dir: expected a writable folder, got .*Permission denied"):
        training.train_adding(out_dir=str(tmp_path / "ro"), **_quiet(**TINY))
    assert tempfile is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OSError, match="out_dir: expected a writable folder"):
            training.train_adding(out_dir=str(ro), **_quiet(**TINY))
    finally:
        ro.chmod(0o700)


def _disk_full_after_training(monkeypatch, out_dir):
    real = training.save_checkpoint

    def save(path, *a, **k):
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(out_dir):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)
    monkeypatch.setattr(training, "save_checkpoint", save)


def test_disk_full_at_the_end_keeps_the_trained_model_and_says_where(tmp_path, monkeypatch):
    _disk_full_after_training(monkeypatch, tmp_path)
    s = training.train_adding(out_dir=str(tmp_path), **_quiet(**TINY))
    assert not s["checkpoint"].startswith(str(tmp_path))
    assert "No space left on device" in s["save_error"] and s["checkpoint"] in s["save_error"]
    meta, arrays = read_checkpoint(s["checkpoint"])
    assert meta["extra"]["run_id"] == s["run_id"] and "param/head.W" in arrays
    with open(s["summary"]) as f:
        assert json.load(f)["checkpoint"] == s["checkpoint"]


def test_cli_reports_the_rescued_checkpoint(tmp_path, monkeypatch, capsys):
    _disk_full_after_training(monkeypatch, tmp_path / "out")
    rc = cli.main(["train", "adding", "--steps", "2", "-T", "4", "-B", "4", "-H", "4", "--device", "cpu",
                   "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "the trained model was saved to" in err and "gpu-lstm-rescue-" in err
    assert "checkpoint: " in out and "gpu-lstm-rescue-" in out


def test_bench_json_path_is_checked_before_benchmarking(tmp_path, monkeypatch, capsys):
    from gpu_lstm import bench
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("benchmark ran before the check"))
    assert cli.main(["bench", "--device", "cpu", "--json", str(tmp_path)]) == 2
    assert "--json: expected a file name, got the folder" in capsys.readouterr().err


@pytest.fixture
def no_ddp_processes(monkeypatch):
    """distributed.run with process spawning and training replaced by failures: what the test reaches
    must be an error raised before any process starts."""
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    from gpu_lstm import distributed
    monkeypatch.setattr(mp, "spawn", lambda *a, **k: pytest.fail("processes were started"))
    monkeypatch.setattr(distributed, "train", lambda *a, **k: pytest.fail("training started"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    return distributed


@pytest.mark.parametrize("argv, expected", [
    (["--nproc", "2", "-B", "3"], "-B/--batch: expected a multiple of the number of processes (2)"),
    (["--nproc", "3"], "-B/--batch: expected a multiple of the number of processes (3) so that every process "
                       "gets an equal shard, got 64"),          # the default batch
])
def test_ddp_batch_split_is_checked_before_any_process_starts(no_ddp_processes, tmp_path, capsys, argv, expected):
    """--ddp --nproc 2 --batch 3 failed inside the spawned processes, with their tracebacks flattened."""
    rc = cli.main(["train", "adding", "--ddp", "--device", "cpu", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("gpu-lstm train: error: ") and expected in err, err


@pytest.mark.parametrize("option, value", [("lr", 0.0), ("T", 0), ("B", 0), ("hidden", 0)])
def test_ddp_zero_is_an_error_not_the_task_default(no_ddp_processes, tmp_path, option, value):
    """run(lr=0.0) trained at the task's default lr (0.01): `lr or default` read 0 as unset."""
    with pytest.raises(ValueError, match=f"^{option}: expected"):
        no_ddp_processes.run(nproc=2, task="adding", out_dir=str(tmp_path / "o"), **{option: value})


def test_ddp_unknown_option_is_an_error_before_any_process_starts(no_ddp_processes, tmp_path):
    with pytest.raises(TypeError, match="stepz"):
        no_ddp_processes.run(nproc=2, task="adding", out_dir=str(tmp_path / "o"), stepz=3)


def test_ddp_16_bit_dtype_is_refused_before_any_process_starts(no_ddp_processes, tmp_path, capsys):
    """--ddp --dtype bfloat16 passed the preflight and died inside the spawned processes (KeyError)."""
    rc = cli.main(["train", "adding", "--ddp", "--device", "cpu", "--nproc", "2", "--dtype", "bfloat16",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "dtype: expected 'float32' or 'float64' for a --ddp run, got 'bfloat16'" in err, err


@pytest.mark.parametrize("kwargs, expected", [
    (dict(lr=0.0), "lr: expected"),
    (dict(dtype="float16"), "dtype: expected 'float32' or 'float64'"),
    (dict(device="auto"), "device: expected 'cpu' or 'gpu'"),
])
def test_ddp_rank_loop_checks_its_options_when_called_directly(kwargs, expected):
    pytest.importorskip("torch")
    from gpu_lstm import distributed
    with pytest.raises(ValueError, match=expected):
        distributed.train("adding", steps=1, **kwargs)


# ---- class 4: tracebacks ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def charlm_ckpt(tmp_path_factory):
    import io
    out = tmp_path_factory.mktemp("charlm")
    s = training.train_charlm(steps=2, T=8, B=4, hidden=8, device="cpu", out_dir=str(out), log_every=10,
                              sample_length=5, stream=io.StringIO())
    return s["checkpoint"]


@pytest.fixture(scope="module")
def adding_ckpt(tmp_path_factory):
    import io
    out = tmp_path_factory.mktemp("adding")
    return training.train_adding(out_dir=str(out), stream=io.StringIO(), device="cpu", **TINY)["checkpoint"]


CLI_ERRORS = [
    # (argv, text the one error line must contain); {ckpt}, {adding}, {tmp} are filled in
    (["sample", "{ckpt}", "--prime", ""], "--prime: expected at least one character"),
    (["sample", "{ckpt}", "--prime", "\u00a7"], "--prime: expected characters of the model's vocabulary"),
    (["sample", "{tmp}/missing.npz"], "does not exist"),
    (["sample", "{adding}"], "checkpoint: expected a char-model checkpoint"),
    (["sample", "{tmp}/garbage.npz"], "corrupt or truncated"),
    (["sample", "{tmp}"], "checkpoint:"),
    (["sample", "{ckpt}", "--device", "gpu"], "device='gpu' requested but"),
    (["train", "adding", "--out", "{tmp}/garbage.npz"], "--out: expected a folder"),
    (["train", "adding", "--text", "{tmp}/garbage.npz"], "--text: expected only with the charlm task"),
    (["train", "charlm", "--text", "{tmp}/missing.txt", "--out", "{tmp}/o"], "No such file"),
    (["train", "charlm", "--text", "{tmp}/garbage.npz", "--out", "{tmp}/o"], "text: expected UTF-8 text"),
    (["train", "adding", "-T", "1", "--out", "{tmp}/o"], "-T/--seq-len: expected at least 2 steps"),
    (["train", "adding", "-H", "2000000", "--out", "{tmp}/o"],
     "-H/--hidden, -L/--layers, -B/--batch, -T/--seq-len: expected sizes"),
    (["train", "adding", "--device", "gpu", "--out", "{tmp}/o"], "device='gpu' requested but"),
    (["check", "--device", "gpu"], "device='gpu' requested but"),
    (["bench", "--device", "gpu"], "--device: expected a usable GPU"),
    (["profile", "--device", "gpu"], "--device: expected a usable GPU"),
    (["train", "adding", "--nproc", "2", "--out", "{tmp}/o"], "--nproc: expected only with --ddp"),
    (["bench", "--host-overhead", "--json", "{tmp}/r.json"], "--json: expected no --json with --host-overhead"),
    (["bench", "--host-overhead", "--device", "gpu"], "--device: expected no --device with --host-overhead"),
    (["bench", "--host-overhead", "--quick"], "--quick: expected no --quick with --host-overhead"),
]


def _one_error_line(err):
    """The error line of stderr ``err``: exactly one, and the last (train's settings line may come first)."""
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def _fill(argv, ckpt, adding, tmp):
    return [a.format(ckpt=ckpt, adding=adding, tmp=tmp) for a in argv]


@pytest.mark.parametrize("argv, expected", CLI_ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(CLI_ERRORS)])
def test_cli_user_errors_are_one_line(tmp_path, capsys, monkeypatch, charlm_ckpt, adding_ckpt, argv, expected):
    import gpu_lstm.backend as backend
    monkeypatch.setattr(backend, "gpu_available", lambda: (False, "cupy not importable (test)"))
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.delenv("GPU_LSTM_DEBUG", raising=False)
    (tmp_path / "garbage.npz").write_bytes(b"\xff\x00 not a zip")
    rc = cli.main(_fill(argv, charlm_ckpt, adding_ckpt, tmp_path))
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err, err
    # stderr also carries progress (train's settings line); the error itself is one line, the last
    line = _one_error_line(err)
    assert line.startswith(f"gpu-lstm {argv[0]}: error: ") and expected in line, err


def test_bench_host_overhead_outside_a_checkout_is_one_error_line(tmp_path, monkeypatch, capsys):
    import subprocess
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("the script was started"))
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "gpu_lstm" / "cli.py"))
    monkeypatch.delenv("GPU_LSTM_DEBUG", raising=False)
    assert cli.main(["bench", "--host-overhead"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert err.startswith("gpu-lstm bench: error: --host-overhead: expected host_overhead.py of a source checkout")


def test_bench_host_overhead_takes_reps(monkeypatch):
    import subprocess
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv: calls.append(argv) or 0)
    assert cli.main(["bench", "--host-overhead", "--reps", "3"]) == 0
    assert calls[0][1].endswith("host_overhead.py") and calls[0][2:] == ["--reps", "3"]


@pytest.mark.parametrize("argv", [["train", "adding", "--steps", "0"], ["train", "adding", "--lr", "0"],
                                  ["sample", "x", "--temperature", "0"], ["sample", "x", "--length", "-1"],
                                  ["profile", "-H", "0"], ["check", "--seed", "-1"], ["train", "sgd"],
                                  ["bench", "--reps", "x"]])
def test_argument_errors_name_the_option(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("gpu-lstm ") and "error: argument" in err


class _CudaError(Exception):
    """Like cupy's CUDA errors: not a RuntimeError subclass in every version."""


def _broken_cupy(monkeypatch):
    """cupy that imports and counts a device, which then fails: a driver or device that is unusable."""
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                    getDeviceProperties=lambda i: (_ for _ in ()).throw(
                                        _CudaError("cudaErrorInsufficientDriver")))
    fake = types.ModuleType("cupy")
    fake.__version__ = "99.0-test"
    fake.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    import gpu_lstm.backend as backend
    monkeypatch.setattr(backend, "_cupy_installed", lambda: True)
    monkeypatch.setattr(backend, "_warned_fallback", False)
    monkeypatch.delenv("GPU_LSTM_DEVICE", raising=False)
    monkeypatch.delenv("GPU_LSTM_DEBUG", raising=False)


def test_info_with_cupy_but_no_usable_gpu(monkeypatch, capsys):
    _broken_cupy(monkeypatch)
    with pytest.warns(RuntimeWarning, match="falls back to the CPU: cupy is installed but no usable CUDA"):
        assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cupy       99.0-test" in out and "gpu        no: no usable CUDA device" in out


@pytest.mark.parametrize("argv", [["bench", "--device", "gpu"], ["profile", "--device", "gpu"],
                                  ["check", "--device", "gpu"]])
def test_gpu_commands_with_cupy_but_no_usable_gpu(monkeypatch, capsys, argv):
    _broken_cupy(monkeypatch)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cudaErrorInsufficientDriver" in err


def test_auto_falls_back_with_one_warning(monkeypatch):
    import warnings

    import gpu_lstm as gl
    _broken_cupy(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert gl.LSTM(2, 3).device == "cpu"
        assert gl.LSTM(2, 3).device == "cpu"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "cudaErrorInsufficientDriver" in msgs[0]


def test_unexpected_errors_are_one_line_and_debug_shows_them(monkeypatch, capsys):
    def boom(args):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(cli, "cmd_info", boom)
    monkeypatch.delenv("GPU_LSTM_DEBUG", raising=False)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "gpu-lstm info: error: ZeroDivisionError: a bug (set GPU_LSTM_DEBUG=1 for the traceback)"
    monkeypatch.setenv("GPU_LSTM_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["info"])


# ---- class 6: leftovers ----------------------------------------------------------------------------------
_KILLED_SAVE = """
import os, signal, sys
import numpy as np
from gpu_lstm.checkpoint import save_checkpoint
from gpu_lstm.model import SequenceModel
m = SequenceModel(2, 16, 1, device="cpu", seed=0)
def die(f, **arrays):
    f.write(b"PK" + bytes(100000))
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = die
save_checkpoint(sys.argv[1], m)
"""


def _kill_during_save(path):
    r = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path)], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()


def test_killed_saves_leave_no_pile_of_temporaries(tmp_path):
    from gpu_lstm.model import SequenceModel
    path = tmp_path / "checkpoint.npz"
    for _ in range(3):
        _kill_during_save(path)
        # SIGKILL leaves the killed save's own temporary; each save removes its dead predecessors'
        assert len([n for n in os.listdir(tmp_path) if n.endswith(".tmp")]) == 1
    checkpoint.save_checkpoint(path, SequenceModel(2, 16, 1, device="cpu", seed=0))
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    from gpu_lstm.model import SequenceModel
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".ckpt-{sleeper.pid}-abc.tmp"
        live.write_bytes(b"in progress")
        checkpoint.save_checkpoint(tmp_path / "c.npz", SequenceModel(2, 3, 1, device="cpu"))
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        s = training.train_adding(out_dir=str(tmp_path), **_quiet(**TINY))
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for path in (s["checkpoint"], s["summary"]) + ((s["plot"],) if s["plot"] else ()):
        assert os.stat(path).st_mode & 0o777 == expected, path


def test_summary_always_describes_the_checkpoint_beside_it(tmp_path, monkeypatch):
    first = training.train_adding(out_dir=str(tmp_path), **_quiet(**TINY))
    with open(first["summary"]) as f:
        assert json.load(f)["run_id"] == read_checkpoint(first["checkpoint"])[0]["extra"]["run_id"]

    def killed(path, write, mode=0o666):     # the process dies between the two writes
        raise KeyboardInterrupt("kill")
    monkeypatch.setattr(training, "write_atomically", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train_adding(out_dir=str(tmp_path), **_quiet(**{**TINY, "seed": 1}))
    meta, _ = read_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["extra"]["run_id"] != first["run_id"]          # the new checkpoint is there ...
    assert not (tmp_path / "summary.json").exists()            # ... and no summary of the old run
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# ---- the command line in its own terms (review findings) ------------------------------------------------
def test_an_invalid_option_value_is_one_line(capsys):
    """argparse printed a 7-line usage block before its error."""
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "adding", "--steps", "0"])
    assert e.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("gpu-lstm train: error: argument --steps: expected a positive integer"), line


@pytest.mark.parametrize("argv, expected", [
    (["--out", ""], "--out: expected a folder name, got ''"),
    (["-T", "1"], "-T/--seq-len: expected at least 2 steps"),
    (["--out", "{tmp}/a-file"], "--out: expected a folder"),
])
def test_train_errors_name_the_command_line_option(files, capsys, no_training, argv, expected):
    """--out '' trained into runs/adding (the `or` default); -T 1 and --out FILE were reported as the
    API's 'T:' and 'out_dir:'."""
    rc = cli.main(["train", "adding", "--device", "cpu", "--steps", "2", *_fill(argv, None, None, files)])
    assert rc == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    """Under torchrun --nproc was ignored silently (torchrun's --nproc_per_node decides)."""
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(k, v)
    from gpu_lstm import distributed
    monkeypatch.setattr(distributed, "run", lambda *a, **k: pytest.fail("training started"))
    assert cli.main(["train", "adding", "--device", "cpu", "--nproc", "4"]) == 2
    assert "--nproc: expected only when not under torchrun" in _one_error_line(capsys.readouterr().err)


def test_train_on_a_missing_gpu_leaves_no_output_folder(tmp_path, monkeypatch):
    """The output folder was created before the model found no GPU: an empty folder was left."""
    import gpu_lstm.backend as backend
    monkeypatch.setattr(backend, "gpu_available", lambda: (False, "cupy not importable (test)"))
    out = tmp_path / "run"
    assert cli.main(["train", "adding", "--device", "gpu", "--steps", "2", "--out", str(out)]) == 2
    assert not out.exists()


def test_a_rerun_into_a_folder_leaves_nothing_of_the_previous_run(tmp_path, monkeypatch):
    """Without matplotlib the previous run's loss.png stayed beside the new checkpoint; a DDP run's
    checkpoint.pt stayed beside a single-process run's files."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    training.train_adding(out_dir=str(out), **_quiet(**TINY))
    (out / "checkpoint.pt").write_bytes(b"from another kind of run")
    assert (out / "loss.png").exists()          # the earlier run's plot, which must not survive
    monkeypatch.setitem(sys.modules, "matplotlib", None)           # matplotlib missing now
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    s = training.train_adding(out_dir=str(out), **_quiet(**TINY))
    assert s["plot"] is None
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "summary.json"]


def test_a_data_parallel_run_removes_a_single_process_runs_files(tmp_path):
    """A --ddp run into a single-process run's folder replaced summary.json but left checkpoint.npz and
    loss.png, so the folder mixed two runs."""
    pytest.importorskip("torch")
    from gpu_lstm import distributed
    out = tmp_path / "run"
    training.train_adding(out_dir=str(out), **_quiet(**TINY))
    distributed.train("adding", out_dir=str(out), **_quiet(steps=2, T=4, B=4, hidden=3, dtype="float64"))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "summary.json"]


@pytest.mark.parametrize("command", ["check", "profile"])
def test_sizes_that_cannot_fit_name_the_options(command, capsys):
    """-H 2000000 ended in numpy's 'Unable to allocate 1.16 TiB', naming no option."""
    assert cli.main([command, "--device", "cpu", "-H", "2000000"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "-H/--hidden, -B/--batch, -T/--seq-len: expected sizes whose training fits" in line, line
