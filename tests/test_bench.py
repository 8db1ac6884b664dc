"""Smoke tests of the benchmark harness and the profiler on the CPU (CI-sized)."""

import json

import pytest

from gpu_lstm import bench
from gpu_lstm.cli import main
from gpu_lstm.profile import profile_training_step


def test_cpu_bench_rows_and_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["bench", "--device", "cpu", "--quick", "--reps", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inference" in out and "training" in out
    data = json.loads(path.read_text())
    env = data["environment"]
    for key in ("gpu_lstm", "numpy", "date", "command", "device_name"):
        assert env[key]
    assert "saved" in env["memory"]
    rows = data["rows"]
    # per precision one row per engine that runs it (on the CPU every precision runs both), side by
    # side, each against the same torch measurement of that precision
    assert [(r["mode"], r["precision"], r["algo"]) for r in rows] == [
        (m, p, a) for m in ("inference", "training") for p in ("fp32", "bf16", "fp16")
        for a in bench.ENGINES["cpu"]]
    assert [r["ran"] for r in rows] == [r["algo"] for r in rows]      # eager ran eager, plan ran a plan
    assert [(r["dtype"], r["tf32"]) for r in rows] == [(bench.PRECISION_DTYPES[r["precision"]][0], False)
                                                       for r in rows]
    assert len({r["opponent_ms"] for r in rows if r["mode"] == "training" and r["precision"] == "fp32"}) == 1
    for r in rows:
        assert r["ours_ms"] > 0 and r["ours_tflops"] > 0 and r["note"] == ""
        if env["torch"]:
            assert r["opponent_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["opponent_ms"])
        else:
            assert r["opponent_ms"] is None and r["ratio"] is None
        # memory of a training step, measured on both sides (torch's CPU LSTM runs bf16 and fp16 here)
        if r["mode"] == "training":
            assert r["ours_mem_bytes"] > 0 and (r["opponent_mem_bytes"] > 0 if env["torch"] else True)
        else:
            assert r["ours_mem_bytes"] is None and r["opponent_mem_bytes"] is None
    mem = {(r["precision"], r["algo"]): r["ours_mem_bytes"] for r in rows if r["mode"] == "training"}
    assert mem["bf16", "eager"] == mem["fp16", "eager"] < mem["fp32", "eager"] == mem["fp32", "plan"]


def test_flops_and_floor():
    assert bench.flops(512, 64, 100, "inference") == 16 * 512 ** 2 * 64 * 100
    assert bench.flops(512, 64, 100, "training") == 3 * bench.flops(512, 64, 100, "inference")
    f = bench.floor_ms(512, 64, 100, "training", "GPU 0: NVIDIA H100 80GB HBM3")
    compute = 1e3 * bench.flops(512, 64, 100, "training") / 67e12     # 1.20 ms at peak FP32
    launches = 1e3 * 200 * 2 * bench.LAUNCH_S                          # 1.00 ms of dependent launches
    assert f == pytest.approx(max(compute, launches)) and compute > launches
    assert bench.floor_ms(256, 1, 1000, "inference", "NVIDIA H100") == pytest.approx(1e3 * 1000 * 2 * bench.LAUNCH_S)
    assert bench.floor_ms(4096, 64, 25, "inference", "NVIDIA H200")   # defined
    assert bench.floor_ms(512, 64, 100, "training", "Some Unknown GPU") is None


def test_profile_accounts_for_the_step():
    rows, step, n_ops = profile_training_step("cpu", 32, 4, 6, reps=2)
    # forward: 1 input GEMM + T x (GEMM + cell); backward: T x (cell + GEMM) + dW, dR, dx GEMMs + db sum
    assert n_ops == 4 * 6 + 5
    assert abs(sum(h for _, h, _ in rows) - step["host_ms"]) < 1e-9
    assert step["device_ms"] is None and all(d is None for _, _, d in rows)   # CPU: one column
    assert rows[0][0].startswith("cuBLAS") and rows[0][1] > 0


def test_profile_prints_a_step_below_the_timer_resolution(monkeypatch, capsys):
    """Device events can read 0 ms for a tiny step: the table prints without shares, no ZeroDivisionError."""
    import gpu_lstm.profile as prof
    step = {"host_ms": 0.4, "device_ms": 0.0, "host_outran_spin": 0}
    monkeypatch.setattr(prof, "profile_training_step", lambda *a, **k: ([("cuBLAS GEMM", 0.1, 0.0)], step, 1))
    prof.print_profile("gpu", 16, 4, 10)
    out = capsys.readouterr().out
    assert "cuBLAS GEMM" in out and "% of device" not in out
    step.update(device_ms=None, host_ms=0.0)
    prof.print_profile("cpu", 16, 4, 10)
    assert "cuBLAS GEMM" in capsys.readouterr().out


def _plot_results():
    """benchmarks/plot_results.py, a script outside the package, loaded as a module."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "plot_results.py"
    spec = importlib.util.spec_from_file_location("plot_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plot_script(tmp_path):
    pytest.importorskip("matplotlib")
    mod = _plot_results()
    result = bench.run(device="cpu", quick=True, reps=2, log=lambda s: None)
    out = mod.plot(result, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 5000 and out.endswith("p.png")


def test_bench_without_torch_leaves_the_opponent_columns_empty(monkeypatch):
    monkeypatch.setattr(bench, "_torch_available", lambda: False)
    rows = bench.run(device="cpu", quick=True, reps=2, log=lambda s: None)["rows"]
    assert rows and all(r["opponent_ms"] is None and r["ratio"] is None and r["ours_ms"] > 0 for r in rows)
    assert "-" in bench.format_row(rows[0])


def test_a_failing_measurement_is_recorded_and_the_json_is_written_per_row(monkeypatch, tmp_path, capsys):
    calls = []

    def broken_torch(*args, **kwargs):
        raise RuntimeError("bf16 LSTM not supported by this torch\nsecond line")

    def fake_ours(device, H, B, T, mode, *args, **kwargs):
        if mode == "training":
            raise MemoryError("out of memory")
        return 1.5

    monkeypatch.setattr(bench, "_torch_available", lambda: True)
    monkeypatch.setattr(bench, "time_torch", broken_torch)
    monkeypatch.setattr(bench, "time_ours", fake_ours)
    path = tmp_path / "r.json"
    result = bench.run(device="cpu", quick=True, reps=2, log=lambda s: None, precisions=("fp32",),
                       on_row=lambda r: (calls.append(len(r["rows"])), bench.write_json(path, r)))
    rows = result["rows"]
    assert calls == list(range(1, len(rows) + 1))                    # written after every row
    assert json.loads(path.read_text())["rows"] == rows
    assert [r["algo"] for r in rows] == ["eager", "plan"] * 2
    inf, tr = rows[0], rows[2]
    assert inf["ours_ms"] == 1.5 and inf["opponent_ms"] is None and inf["ratio"] is None
    assert inf["note"] == "torch failed: RuntimeError: bf16 LSTM not supported by this torch"
    assert tr["ours_ms"] is None and tr["ours_tflops"] is None and "gpu_lstm failed: MemoryError" in tr["note"]
    # the CLI exits non-zero when gpu_lstm's own measurement failed, after writing the JSON
    assert main(["bench", "--device", "cpu", "--quick", "--reps", "2", "--json", str(path)]) == 1
    assert len(json.loads(path.read_text())["rows"]) == 12         # fp32, bf16, fp16 x eager, plan x 2 modes
    assert "12 measurement(s) failed" in capsys.readouterr().out


def test_gpu_verify_fails_loudly_without_a_gpu(tmp_path):
    """On a machine where the GPU tests would all skip, the verification script must not pass."""
    import os
    import pathlib
    import shutil
    import subprocess
    import sys
    from gpu_lstm.backend import gpu_available
    if gpu_available()[0] or shutil.which("bash") is None:
        pytest.skip("needs a machine without a usable GPU, and bash")
    root = pathlib.Path(__file__).parents[1]
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("GPU_LSTM_FAKE_CUPY", None)
    res = subprocess.run(["bash", str(root / "benchmarks" / "gpu_verify.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert "GPU VERIFICATION FAILED" in res.stdout and "probe" in res.stdout and "pytest" in res.stdout


def test_an_engine_that_cannot_run_a_shape_says_why_and_is_not_a_failure(monkeypatch, capsys):
    """The persistent row where persistent_supported says no: no time, the reason in the note, and the
    other engines' rows and the exit status unaffected."""
    real = bench.time_ours

    def ours(device, H, B, T, mode, reps, warmup, algo="auto", info=None, **kw):
        if algo == "persistent":
            raise bench.EngineNotRun("R does not fit on chip: ...")
        return real(device, H, B, T, mode, reps, warmup, algo=algo, info=info, **kw)

    monkeypatch.setattr(bench, "time_ours", ours)
    monkeypatch.setattr(bench, "_torch_available", lambda: False)
    rows = bench.run(device="cpu", quick=True, reps=2, log=lambda s: None, modes=("inference",),
                     engines=("eager", "persistent", "plan"), precisions=("fp32",))["rows"]
    assert [r["algo"] for r in rows] == ["eager", "persistent", "plan"]
    p = rows[1]
    assert p["ours_ms"] is None and p["ratio"] is None and p["note"] == "persistent not run: R does not fit on chip: ..."
    assert rows[0]["ours_ms"] > 0 and rows[2]["ours_ms"] > 0
    assert "persistent" in bench.format_row(p) and "failed" not in p["note"]


def test_persistent_time_ours_checks_support_first():
    """On the CPU (NumPy backend) algo='persistent' cannot even build a model: the harness gets a
    ValueError there, a failure; on a GPU an unsupported shape raises EngineNotRun before timing."""
    with pytest.raises(ValueError, match="persistent"):
        bench.time_ours("cpu", 8, 2, 3, "inference", 1, 0, algo="persistent")


def test_plot_script_handles_engine_rows_and_old_files(tmp_path):
    pytest.importorskip("matplotlib")
    mod = _plot_results()
    base = {"H": 8, "B": 2, "T": 3, "dtype": "float32", "tf32": False, "mode": "training", "opponent_ms": 2.0,
            "floor_ms": 0.5, "note": ""}
    rows = [dict(base, algo="eager", ours_ms=4.0, ratio=2.0), dict(base, algo="graph", ours_ms=3.0, ratio=1.5),
            dict(base, algo="persistent", ours_ms=None, ratio=None, note="persistent not run: ..."),
            dict(base, dtype="tf32", algo=None, ours_ms=None, ratio=None)]
    env = {"device_name": "test", "date": "2026-01-01", "torch": None}
    assert mod.plot({"environment": env, "rows": rows}, str(tmp_path / "a.png")).endswith("a.png")
    old = [{k: v for k, v in r.items() if k != "algo"} for r in rows[:1]]     # a file from before the engine rows
    assert mod.plot({"environment": env, "rows": old}, str(tmp_path / "b.png")).endswith("b.png")
    assert (tmp_path / "a.png").stat().st_size > 5000 and (tmp_path / "b.png").stat().st_size > 5000


def _record_torch_flags(monkeypatch, fail=False):
    """Wrap bench._torch_setup: record (precision, allow_tf32 flags) as each torch measurement sees them."""
    import torch
    seen, real = [], bench._torch_setup

    def setup(device, H, B, T, mode, sets, seed, precision):
        seen.append((precision, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        if fail:
            raise RuntimeError("boom")
        return real(device, H, B, T, mode, sets, seed, precision)
    monkeypatch.setattr(bench, "_torch_setup", setup)
    return seen


@pytest.mark.parametrize("before", [(True, False), (False, True)])
def test_torch_tf32_flags_are_set_per_row_and_restored(monkeypatch, before):
    """Every torch measurement runs with both allow_tf32 flags set for its precision (on only for
    'tf32'); afterwards, also after a failure inside, the flags are what they were before."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(bench, "_TORCH_PROBES", {})
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    try:
        seen = _record_torch_flags(monkeypatch)
        bench.run(device="cpu", quick=True, reps=1, warmup=0, log=lambda s: None)
        assert {p for p, _, _ in seen} == {"fp32", "bf16", "fp16"}
        assert all((a, b) == (False, False) for _, a, b in seen)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        seen.clear()
        bench.time_torch("cpu", 8, 2, 3, "inference", 1, 0, precision="tf32")   # the GPU's TF32 row's setting
        assert seen == [("tf32", True, True)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        seen = _record_torch_flags(monkeypatch, fail=True)
        with pytest.raises(RuntimeError, match="boom"):
            bench.memory_torch("cpu", 8, 2, 3, precision="tf32")
        assert seen == [("tf32", True, True)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_a_torch_without_a_16_bit_lstm_gives_a_note_not_a_failure(monkeypatch, capsys):
    """Where torch's LSTM refuses bfloat16 (the probe fails), the bf16 rows have gpu_lstm's time and
    memory, no torch columns and a note saying why; the run does not count that as a failure."""
    pytest.importorskip("torch")
    real = bench._torch_setup

    def setup(device, H, B, T, mode, sets, seed, precision):
        if precision == "bf16":
            raise RuntimeError("\"_thnn_fused_lstm_cell\" not implemented for 'BFloat16'\nmore")
        return real(device, H, B, T, mode, sets, seed, precision)
    monkeypatch.setattr(bench, "_torch_setup", setup)
    monkeypatch.setattr(bench, "_TORCH_PROBES", {})
    rows = bench.run(device="cpu", quick=True, reps=1, warmup=0, log=lambda s: None)["rows"]
    bf16 = [r for r in rows if r["precision"] == "bf16"]
    assert len(bf16) == 4          # (inference, training) x (eager, plan)
    for r in bf16:
        assert r["ours_ms"] > 0 and r["opponent_ms"] is None and r["ratio"] is None
        assert r["opponent_mem_bytes"] is None and (r["ours_mem_bytes"] or 0) >= (r["mode"] == "training")
        assert r["note"] == ("torch not run: its LSTM refuses bfloat16 on cpu in this build (RuntimeError: "
                             "\"_thnn_fused_lstm_cell\" not implemented for 'BFloat16')")
    assert all(r["opponent_ms"] > 0 and r["note"] == "" for r in rows if r["precision"] != "bf16")
    assert main(["bench", "--device", "cpu", "--quick", "--reps", "1"]) == 0
    assert "measurement(s) failed" not in capsys.readouterr().out


@pytest.mark.parametrize("dtype, per_unit", [("float32", 4 * (1 + 1 + 4 + 1 + 1)), ("bfloat16", 2 * (1 + 1 + 4 + 1) + 4),
                                             ("float16", 2 * (1 + 1 + 4 + 1) + 4)])
def test_cpu_memory_column_is_the_tape_byte_count(dtype, per_unit):
    """The CPU memory column counts the tape: input copy (T, B, I), layer output (T, B, H), gates
    (T, B, 4H), h and c (T+1, B, H), c in float32 for the 16-bit types (docs/precision.md "Memory")."""
    pytest.importorskip("ml_dtypes")
    H, B, T = 16, 3, 5      # I = H
    prec = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]
    got = bench.memory_ours("cpu", H, B, T, precision=prec, algo="eager")
    size = 4 if dtype == "float32" else 2
    expect = (T * B * H * size) * (1 + 1 + 4) + (T + 1) * B * H * (size + 4)
    assert got == expect
    assert per_unit * T * B * H < expect    # the (T + 1)-th h and c on top of the per-step table


def test_tf32_is_not_a_cpu_precision():
    with pytest.raises(ValueError, match="precisions: expected some of .*'fp32', 'bf16', 'fp16'.* got 'tf32'"):
        bench.run(device="cpu", quick=True, reps=1, precisions=("tf32",), log=lambda s: None)


def test_engines_for_each_precision():
    all4 = ("graph", "plan", "eager", "persistent")
    assert bench.engines_for("fp32", all4) == all4
    for prec in ("tf32", "bf16", "fp16"):
        assert bench.engines_for(prec, all4) == ("graph", "plan", "eager")
    assert bench.engines_for("bf16", ("plan", "eager")) == ("plan", "eager")


def test_a_missing_cell_keeps_the_columns_aligned():
    """An empty cell printed as an unpadded '-', so on the CPU (no floor) the memory columns moved one
    header to the left."""
    from gpu_lstm.bench import HEADER, format_row
    full = dict(H=256, B=32, T=50, precision="fp32", dtype="float32", mode="training", algo="eager",
                ours_ms=1.0, opponent_ms=2.0, ratio=0.5, ours_tflops=1.0, floor_ms=0.5,
                ours_mem_bytes=2 ** 20, opponent_mem_bytes=2 ** 21, note="")
    empty = dict(full, ours_ms=None, opponent_ms=None, ratio=None, ours_tflops=None, floor_ms=None,
                 ours_mem_bytes=None, opponent_mem_bytes=None)
    assert len(format_row(full)) == len(format_row(empty)) == len(HEADER) - len("note")
    mib_at = HEADER.index("ours MiB") + len("ours MiB")
    assert format_row(dict(full, floor_ms=None))[:mib_at].endswith("1.00")


def test_json_and_checkpoints_write_through_a_symlink(tmp_path):
    """os.replace over 'latest.json -> run.json' turned the link into a file and left run.json as it was."""
    from gpu_lstm.bench import write_json
    from gpu_lstm.checkpoint import write_atomically
    target, link = tmp_path / "run.json", tmp_path / "latest.json"
    target.write_text("{}")
    link.symlink_to(target)
    write_json(str(link), {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    write_atomically(str(link), lambda f: f.write(b'{"b": 2}'))
    assert link.is_symlink() and json.loads(target.read_text()) == {"b": 2}


def test_plot_results_default_png_stays_beside_its_input():
    """'run.v2/results' gave 'run.png' one folder up (rsplit('.') over the whole path)."""
    mod = _plot_results()
    assert mod.default_png("/tmp/run.v2/results") == "/tmp/run.v2/results.png"
    assert mod.default_png("/tmp/run/bench.json") == "/tmp/run/bench.png"


@pytest.mark.parametrize("reps", ["0", "-1"])
def test_host_overhead_refuses_non_positive_reps(reps):
    """--reps 0 used the default silently, --reps -1 crashed with a StatisticsError traceback."""
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "host_overhead.py")
    res = subprocess.run([sys.executable, script, "--reps", reps], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--reps" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_host_overhead_refuses_an_explicit_device_auto_too(capsys):
    """--device auto was accepted (indistinguishable from the default) though --host-overhead refuses --device."""
    assert main(["bench", "--host-overhead", "--device", "auto"]) == 2
    assert "--device" in capsys.readouterr().err
