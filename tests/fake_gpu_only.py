"""Checks that only make sense against tests/fake_cupy.py (run by tests/test_fake_gpu.py)."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.backend import kernels


def test_runtime_compiles_what_the_nvrtc_check_compiles():
    import fake_cupy
    gl.LSTM(3, 4, device="gpu", dtype="float64")(np.zeros((2, 1, 3)))
    code, options, exprs = fake_cupy.compiled[-1]
    assert code == kernels.kernel_source()
    assert options == kernels.compile_options()
    assert exprs == kernels.name_expressions()


def test_the_fake_catches_wrong_kernel_arguments():
    be = gl.LSTM(3, 4, device="gpu", dtype="float32")._be
    g, c = be.zeros((2, 16)), be.zeros((2, 4))
    k = be._k["lstm_cell_forward"]
    with pytest.raises(TypeError, match=r"argument 0 \(i64\): expected np.int64, got int"):
        k((1,), (32,), (2, np.int64(4), g, np.uintp(0), np.uintp(0), c, c, c))
    with pytest.raises(TypeError, match=r"argument 2 \(T\*\): expected a C-contiguous float32 array, got float64"):
        k((1,), (32,), (np.int64(2), np.int64(4), g.astype(np.float64), np.uintp(0), np.uintp(0), c, c, c))
    with pytest.raises(TypeError, match="7 arguments for 8 parameters"):
        k((1,), (32,), (np.int64(2), np.int64(4), g, np.uintp(0), c, c, c))


def test_cli_profile_and_bench_on_the_fake_gpu(capsys):
    from gpu_lstm import bench
    from gpu_lstm.cli import main
    assert main(["profile", "--device", "gpu", "-H", "16", "-B", "4", "-T", "5", "--reps", "2"]) == 0
    assert "fused cell forward" in capsys.readouterr().out
    result = bench.run(device="gpu", shapes=[(16, 4, 5)], reps=3, warmup=1, log=lambda s: None)
    assert [r["mode"] for r in result["rows"] if r["dtype"] == "float32"] == ["inference", "training"]
    assert "fake GPU" in result["environment"]["device_name"]
