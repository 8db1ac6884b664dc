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
    rows = data["rows"]
    assert [r["mode"] for r in rows] == ["inference", "training"]
    for r in rows:
        assert r["ours_ms"] > 0 and r["ours_tflops"] > 0
        if env["torch"]:
            assert r["opponent_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["opponent_ms"])
        else:
            assert r["opponent_ms"] is None and r["ratio"] is None


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


def test_plot_script(tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location("plot_results", pathlib.Path(__file__).parents[1] / "benchmarks" / "plot_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
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
    result = bench.run(device="cpu", quick=True, reps=2, log=lambda s: None,
                       on_row=lambda r: (calls.append(len(r["rows"])), bench.write_json(path, r)))
    rows = result["rows"]
    assert calls == list(range(1, len(rows) + 1))                    # written after every row
    assert json.loads(path.read_text())["rows"] == rows
    inf, tr = rows
    assert inf["ours_ms"] == 1.5 and inf["opponent_ms"] is None and inf["ratio"] is None
    assert inf["note"] == "torch failed: RuntimeError: bf16 LSTM not supported by this torch"
    assert tr["ours_ms"] is None and tr["ours_tflops"] is None and "gpu_lstm failed: MemoryError" in tr["note"]
    # the CLI exits non-zero when gpu_lstm's own measurement failed, after writing the JSON
    assert main(["bench", "--device", "cpu", "--quick", "--reps", "2", "--json", str(path)]) == 1
    assert len(json.loads(path.read_text())["rows"]) == 2
    assert "2 measurement(s) failed" in capsys.readouterr().out


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
