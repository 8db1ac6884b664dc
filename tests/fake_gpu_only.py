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


# ---- capture and graphs (fake_cupy's capture section) -------------------------------------------------
def _kernel_launches(be):
    return sum(k.launches for k in be._k.values())


def test_graph_mode_replays_without_per_step_host_work():
    """After the first call (run + capture) a forward and a backward are one graph launch each: no
    kernel launch and no GEMM is issued from Python."""
    import fake_cupy
    m = gl.LSTM(4, 8, 2, device="gpu", dtype="float64", seed=0, algo="graph", bidirectional=True)
    x = np.random.default_rng(0).standard_normal((6, 3, 4))
    for _ in range(2):
        y, _ = m(x)
        m.backward(np.ones(y.shape))
    be, cap, lib = m._be, fake_cupy._cap, fake_cupy.fake_libcublas
    before = (_kernel_launches(be), lib.calls["gemm"], lib.calls["recorded"], cap.graphs, cap.launched)
    y2, _ = m(x * 2)
    m.backward(np.ones(y.shape))
    after = (_kernel_launches(be), lib.calls["gemm"], lib.calls["recorded"], cap.graphs, cap.launched)
    assert after[:4] == before[:4] and after[4] == before[4] + 2
    ref = gl.LSTM(4, 8, 2, device="cpu", dtype="float64", seed=0, bidirectional=True)
    np.testing.assert_allclose(gl.to_numpy(y2), ref(x * 2)[0], rtol=0, atol=1e-12)


def test_plan_mode_uses_the_capture_binding_not_cupys_wrapper():
    import fake_cupy
    m = gl.LSTM(4, 8, 1, device="gpu", dtype="float32", seed=0, algo="plan")
    lib = fake_cupy.fake_libcublas
    n = lib.calls["gemm"]
    m(np.zeros((5, 2, 4), np.float32))
    assert lib.calls["gemm"] == n + 1 + 5                # x W^T, then h R^T per step
    assert m._saved.plan is not None and not m._saved.plan.graphs


def test_the_fake_refuses_what_capture_refuses():
    import cupy
    import fake_cupy
    from cupy_backends.cuda.libs import cublas
    be = gl.LSTM(3, 4, device="gpu", dtype="float64", algo="eager")._be
    a = be.zeros((2, 2))
    s = cupy.cuda.Stream(non_blocking=True)
    rng = cupy.random.RandomState(0)
    refused = [
        (fake_cupy.CaptureError, lambda: cupy.empty((3,))),                 # allocation
        (fake_cupy.CaptureError, lambda: a + 1),                           # allocation (no out=)
        (fake_cupy.CaptureError, lambda: a.get()),                         # host synchronisation
        (fake_cupy.CaptureError, lambda: cupy.asarray(np.zeros(2))),       # synchronous copy
        (fake_cupy.CaptureError, lambda: rng.random_sample((2,))),         # cuRAND
        (RuntimeError, lambda: be.gemm(a, a, a)),     # CuPy's cuBLAS wrapper: NotImplementedError inside
    ]
    for exc, fn in refused:
        with s:
            s.begin_capture()
            try:
                with pytest.raises(exc) as info:
                    fn()
                if exc is RuntimeError:
                    assert isinstance(info.value.__cause__, NotImplementedError)
            finally:
                s.end_capture()
    with s:                                   # what may be captured is recorded, not run
        s.begin_capture()
        a.fill(5)
        cupy.multiply(a, 2.0, out=a)
        g = s.end_capture()
    assert float(a.sum()) == 0.0
    g.launch()
    assert float(a.sum()) == 40.0


def test_the_fake_is_as_strict_as_cupy_about_host_arrays():
    import cupy as cp
    a = cp.asarray(np.ones(3))
    with pytest.raises(TypeError, match="expected a cupy.ndarray"):
        cp.ascontiguousarray(np.ones(3))
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3) - a
    b = a
    b += 1                                   # in place stays the same object
    assert b is a and isinstance(a * 2, cp.ndarray) and isinstance(a.sum(), cp.ndarray)


class _TorchLikeCudaTensor:
    """A stand-in for a torch CUDA tensor that requires grad: DLPack on 'CUDA', and a
    __cuda_array_interface__ that raises (as torch's does for such tensors)."""

    def __init__(self, arr):
        self._arr, self.requires_grad, self.detached = arr, True, False

    def detach(self):
        out = _TorchLikeCudaTensor(self._arr)
        out.requires_grad, out.detached = False, True
        return out

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    def __dlpack_device__(self):
        return (2, 0)   # kDLCUDA

    def __dlpack__(self, stream=None, **kwargs):
        if self.requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        return self._arr.__dlpack__()


def test_asarray_prefers_dlpack_and_detaches_tensors_that_require_grad():
    import fake_cupy
    be = gl.LSTM(3, 4, device="gpu", dtype="float64")._be
    src = np.arange(6.0).reshape(2, 3)
    fake_cupy.dlpack_calls.clear()
    got = be.asarray("x", _TorchLikeCudaTensor(src))
    assert fake_cupy.dlpack_calls == [True]              # went through DLPack, after detach()
    np.testing.assert_array_equal(gl.to_numpy(got), src)
    assert got.ctypes.data == src.ctypes.data            # zero-copy view


def test_gpu_available_probes_cublas_and_nvrtc(monkeypatch):
    import cupy
    from cupy_backends.cuda.libs import nvrtc
    from gpu_lstm.backend import gpu_available, resolve_device
    assert gpu_available()[0]

    def missing():
        raise OSError("libnvrtc.so.13: cannot open shared object file")
    monkeypatch.setattr(nvrtc, "getVersion", missing)
    ok, why = gpu_available()
    assert not ok and "NVRTC cannot be loaded" in why and "libnvrtc" in why
    monkeypatch.delenv("GPU_LSTM_DEVICE", raising=False)
    assert resolve_device("auto") == "cpu"               # auto falls back instead of crashing later
    with pytest.raises(RuntimeError, match="NVRTC cannot be loaded"):
        gl.LSTM(3, 4, device="gpu")
    monkeypatch.undo()

    def no_cublas():
        raise OSError("libcublas.so.13: cannot open shared object file")
    monkeypatch.setattr(cupy.cuda.device, "get_cublas_handle", no_cublas)
    ok, why = gpu_available()
    assert not ok and "cuBLAS cannot be loaded" in why


def test_profile_reports_host_and_device_time_separately(capsys):
    from gpu_lstm.profile import profile_training_step
    rows, step, n_ops = profile_training_step("gpu", 16, 4, 5, reps=2)
    assert step["host_ms"] > 0 and step["device_ms"] is not None
    assert all(h is not None and d is not None for _, h, d in rows)
    assert abs(sum(d for _, _, d in rows) - step["device_ms"]) < 1e-9
    assert abs(sum(h for _, h, _ in rows) - step["host_ms"]) < 1e-9


def test_gpu_optimizers_are_one_fused_launch_per_parameter():
    import cupy as cp
    from gpu_lstm import optim
    m = gl.LSTM(3, 4, 2, device="gpu", dtype="float32", seed=0)
    be = m._be
    for cls, kw, kernel in ((optim.AdamW, dict(lr=1e-2), "adam_step"),
                            (optim.SGD, dict(lr=0.1, momentum=0.9), "sgd_step")):
        ref_p = {k: gl.to_numpy(v) for k, v in m.params.items()}
        ref_g = {k: np.full(v.shape, 0.5, np.float32) for k, v in ref_p.items()}
        for k in m.grads:
            m.grads[k][...] = cp.asarray(ref_g[k])
        opt, ref = cls(m.params, m.grads, **kw), cls(ref_p, ref_g, **kw)
        before = be._k[kernel].launches
        opt.step()
        ref.step()
        assert be._k[kernel].launches - before == len(m.params)
        for k in m.params:   # the host build of the fused kernel: bitwise the NumPy optimizer
            np.testing.assert_array_equal(gl.to_numpy(m.params[k]), ref_p[k])


def test_tf32_gemms_go_through_gemm_ex():
    """math='tf32' on the GPU backend: every GEMM is cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_TF32
    (the fake rounds the operands to TF32 as the CPU reference does, so the two agree to float32
    rounding), and a default float32 model never calls it."""
    import fake_cupy
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    state = fake_cupy._cublas_state
    n0 = state.get("gemm_ex", 0)
    gl.LSTM(3, 8, device="gpu", seed=1)(x)
    assert state.get("gemm_ex", 0) == n0
    g = gl.LSTM(3, 8, device="gpu", seed=1, math="tf32")
    c = gl.LSTM(3, 8, device="cpu", seed=1, math="tf32")
    yg, _ = g(x)
    yc, _ = c(x)
    assert state.get("gemm_ex", 0) > n0
    assert np.allclose(gl.to_numpy(yg), yc, rtol=1e-5, atol=1e-6)
