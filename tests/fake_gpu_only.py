"""Checks that only make sense against tests/fake_cupy.py (run by tests/test_fake_gpu.py)."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.backend import kernels


def test_runtime_compiles_what_the_nvrtc_check_compiles():
    import fake_cupy
    gl.LSTM(3, 4, device="gpu", dtype="float64")(np.zeros((2, 1, 3)))
    # every module made: the float module, and the 16-bit one where a 16-bit model ran before
    assert fake_cupy.compiled
    for code, options, exprs in fake_cupy.compiled:
        assert code == kernels.kernel_source()
        assert options == kernels.compile_options()
        assert exprs in (kernels.name_expressions(), kernels.name_expressions(tuple(kernels.LOWP_CTYPES)))
    assert kernels.name_expressions() in [e for _, _, e in fake_cupy.compiled]


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
    rows = [r for r in result["rows"] if r["precision"] == "fp32"]
    assert [(r["mode"], r["algo"]) for r in rows] == [(m, a) for m in ("inference", "training")
                                                      for a in ("eager", "graph", "persistent")]
    assert [r["ran"] for r in rows] == [r["algo"] for r in rows]     # each engine ran what it names
    assert all(r["ours_ms"] > 0 and r["note"] == "" for r in rows)
    # TF32, bf16 and fp16 rows: eager and graph (no persistent kernels for them); their dtype and TF32
    # flag, no failure; every training row has its step's memory from the (fake) CuPy pool, the 16-bit
    # ones less than float32's
    assert [(r["mode"], r["precision"], r["algo"], r["dtype"], r["tf32"]) for r in result["rows"]
            if r["precision"] != "fp32"] == [(m, p, a, d, p == "tf32") for m in ("inference", "training")
                                             for p, d in (("tf32", "float32"), ("bf16", "bfloat16"),
                                                          ("fp16", "float16"))
                                             for a in ("eager", "graph")]
    assert all(r["ours_ms"] > 0 and r["note"] == "" and r["ran"] == r["algo"] for r in result["rows"]
               if r["precision"] != "fp32")
    mem = {(r["precision"], r["algo"]): r["ours_mem_bytes"] for r in result["rows"] if r["mode"] == "training"}
    assert all(v > 0 for v in mem.values()) and mem["bf16", "eager"] < mem["fp32", "eager"], mem
    assert all(r["ours_mem_bytes"] is None for r in result["rows"] if r["mode"] == "inference")
    big = bench.run(device="gpu", shapes=[(4096, 2, 2)], reps=1, warmup=0, log=lambda s: None,
                    modes=("inference",), engines=("persistent",))["rows"][0]
    assert big["ours_ms"] is None and big["note"].startswith("persistent not run: R does not fit on chip")
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


def test_clip_grad_norm_is_2p_plus_2_fused_launches_bitwise_the_host_build():
    import cupy as cp
    from gpu_lstm import optim
    from gpu_lstm.backend.host_backend import HostKernelBackend
    m = gl.LSTM(3, 4, 2, device="gpu", dtype="float32", seed=0)
    be = m._be
    rng = np.random.default_rng(2)
    host = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in m.grads.items()}
    for k in m.grads:
        m.grads[k][...] = cp.asarray(host[k])
    names = ("grad_sumsq_partial", "grad_norm_finish", "grad_clip_coef", "grad_scale")
    before = {k: be._k[k].launches for k in names}
    norm = optim.clip_grad_norm(m.grads, 0.1)
    P = len(m.grads)
    assert {k: be._k[k].launches - before[k] for k in names} == {
        "grad_sumsq_partial": P, "grad_norm_finish": 1, "grad_clip_coef": 1, "grad_scale": P}
    assert isinstance(norm, cp.ndarray) and norm.shape == ()
    ref = [host[k] for k in m.grads]
    assert HostKernelBackend("float32").grad_norm(ref, 0.1, 1e-6) == float(norm)
    for k, r in zip(m.grads, ref):
        np.testing.assert_array_equal(gl.to_numpy(m.grads[k]), r)


# ---- the persistent kernels' cooperative launch on the stand-in ---------------------------------------
def _persistent_runner(dtype="float32"):
    from gpu_lstm.backend import persistent
    return persistent.runner_for(gl.LSTM(3, 4, device="gpu", dtype=dtype, algo="eager")._be)


def test_persistent_module_is_what_the_nvrtc_check_compiles():
    import fake_cupy
    from gpu_lstm.backend import persistent
    runner = _persistent_runner("float64")
    code, options, exprs = fake_cupy.compiled_persistent[-1]
    assert code == persistent.kernel_source() and options == persistent.compile_options()
    assert set(exprs) <= set(persistent.name_expressions())
    assert runner.sms == 4 and runner.smem_block == fake_cupy.PERSISTENT_DEVICE["MaxSharedMemoryPerBlockOptin"]
    kinds = fake_cupy._persistent_kernels()   # also checks the host entries = kernel parameters - sync
    assert all(barrier for _, barrier, _ in kinds.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_persistent_on_the_stand_in_is_one_cooperative_launch_per_direction(dtype, bidirectional):
    """algo='persistent' on the GPU path: one cooperative launch per direction per layer, forward and
    backward, matching the CPU path (tests/test_gpu.py's tolerance: the stand-in's GEMMs round
    differently from NumPy's, so not bitwise; the runner alone is, below)."""
    import fake_cupy
    x = np.random.default_rng(3).standard_normal((6, 3, 5)).astype(dtype)
    outs = []
    for device in ("gpu", "cpu"):
        m = gl.LSTM(5, 9, 2, device=device, dtype=dtype, seed=4, algo="persistent" if device == "gpu" else "auto",
                    peephole=True, bidirectional=bidirectional)
        before = fake_cupy.cooperative["launches"]
        y, (h, c) = m(x)
        dx, _ = m.backward(np.ones(y.shape, dtype))
        if device == "gpu":
            assert m._saved.persistent
            assert fake_cupy.cooperative["launches"] - before == 2 * 2 * (2 if bidirectional else 1)
        outs.append([gl.to_numpy(a) for a in (y, h, c, dx, *m.grads.values())])
    tol = {"float64": 1e-10, "float32": 1e-5}[dtype]
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H, lengths", [(9, False), (33, True)])
def test_gpu_runner_on_the_stand_in_equals_the_host_runner_bitwise(dtype, H, lengths):
    """GpuRunner's launches (argument order, buffers, the sync words) on the stand-in run the same phases
    as persistent.HostRunner: bitwise, although U differs (4 fake SMs vs the host runner's 132): the
    summation order depends on H and KS only."""
    import cupy as cp
    from gpu_lstm.backend import persistent
    rng = np.random.default_rng(H)
    T, B = 5, 3
    host = dict(gates=rng.standard_normal((T, B, 4 * H)), bias=rng.standard_normal(4 * H),
                peep=rng.standard_normal((3, H)), R=rng.standard_normal((4 * H, H)) / np.sqrt(H),
                h=rng.standard_normal((T + 1, B, H)), c=rng.standard_normal((T + 1, B, H)),
                dh=rng.standard_normal((T, B, H)), dc=rng.standard_normal((B, H)),
                dgates=np.zeros((T, B, 4 * H)), dh0=np.zeros((B, H)))
    host = {k: v.astype(dtype) for k, v in host.items()}
    host["lengths"] = np.array([T, 2, 4], np.int64) if lengths else None
    dev = {k: None if v is None else cp.asarray(v) for k, v in host.items()}
    runners = (_persistent_runner(dtype), persistent.HostRunner(dtype))
    for r, a in zip(runners, (dev, host)):
        r.forward(a["gates"], a["bias"], a["peep"], a["R"], a["h"], a["c"], a["lengths"])
        r.backward(a["gates"], a["peep"], a["R"], a["c"], a["dh"], a["dc"], a["dgates"], a["dh0"], a["lengths"])
    for k in ("gates", "h", "c", "dh", "dc", "dgates", "dh0"):
        np.testing.assert_array_equal(gl.to_numpy(dev[k]), host[k], err_msg=k)


def _forward_args(runner, T=3, B=2, H=8):
    be = runner.be
    cfg = runner.config(H, B)
    gates, R = be.zeros((T, B, 4 * H)), be.zeros((4 * H, H))
    h, c = be.zeros((T + 1, B, H)), be.zeros((T + 1, B, H))
    null = np.uintp(0)
    args = (np.int64(T), np.int64(B), np.int64(H), np.int64(cfg.units), np.int32(cfg.lanes_fwd), gates, null,
            null, R, h, c, null)
    return cfg, args


def _with_sync(runner, args):
    """What GpuRunner._launch passes: the arguments and the current stream's zeroed sync words."""
    sync = runner.sync_words()
    sync.fill(0)
    return args + (sync,)


def test_the_stand_in_refuses_what_a_cooperative_launch_would():
    import fake_cupy
    runner = _persistent_runner()
    cfg, args = _forward_args(runner)
    args = _with_sync(runner, args)
    fn = runner._k["persistent_lstm_forward"]
    fn.max_dynamic_shared_size_bytes = max(fn.max_dynamic_shared_size_bytes, cfg.smem)
    with pytest.raises(fake_cupy.CooperativeLaunchError, match="grid barrier launched without"):
        fn((cfg.grid,), (cfg.threads,), args, shared_mem=cfg.smem)          # RawKernel.__call__
    with pytest.raises(fake_cupy.CooperativeLaunchError, match="COOPERATIVE_LAUNCH_TOO_LARGE"):
        fn.kernel((1000,), (cfg.threads,), args, shared_mem=cfg.smem, enable_cooperative_groups=True)
    with pytest.raises(fake_cupy.CooperativeLaunchError, match="exceeds max_dynamic_shared_size_bytes"):
        fn.kernel((cfg.grid,), (cfg.threads,), args, shared_mem=fn.max_dynamic_shared_size_bytes + 1,
                  enable_cooperative_groups=True)
    with pytest.raises(fake_cupy.CooperativeLaunchError, match="opt-in maximum"):
        fn.max_dynamic_shared_size_bytes = 10 ** 6
    with pytest.raises(fake_cupy.CooperativeLaunchError, match="launch_bounds"):
        fn.kernel((cfg.grid,), (1024,), args, shared_mem=cfg.smem, enable_cooperative_groups=True)
    with pytest.raises(fake_cupy.CooperativeLaunchError, match="4 U H sizeof"):
        fn.kernel((cfg.grid,), (cfg.threads,), args, shared_mem=cfg.smem - 4, enable_cooperative_groups=True)
    bad = args[:4] + (np.int64(args[4]),) + args[5:]
    with pytest.raises(TypeError, match=r"argument 4 \(i32\): expected np.int32"):
        fn.kernel((cfg.grid,), (cfg.threads,), bad, shared_mem=cfg.smem, enable_cooperative_groups=True)
    wrong_sync = args[:-1] + (runner.be.zeros((3,)),)
    with pytest.raises(TypeError, match=r"argument 12 \(u32\*\): expected a C-contiguous uint32 array"):
        fn.kernel((cfg.grid,), (cfg.threads,), wrong_sync, shared_mem=cfg.smem, enable_cooperative_groups=True)


def test_the_kernels_own_refusal_reaches_the_runner():
    """A grid that does not cover H: the kernel sets the error flag and the runner raises."""
    from gpu_lstm.backend import persistent
    runner = _persistent_runner()
    cfg, args = _forward_args(runner, H=8)
    small = persistent.LaunchConfig(cfg.grid, 1, cfg.lanes_fwd, cfg.lanes_bwd, cfg.threads, cfg.smem)   # U = 1: 4 units
    args = args[:3] + (np.int64(1),) + args[4:]
    assert runner.check_contract          # tests/conftest.py turns the read-back on for every test
    with pytest.raises(RuntimeError, match="launch contract broken"):
        runner._launch("persistent_lstm_forward", small, args)
    runner._launch("persistent_lstm_forward", cfg, _forward_args(runner, T=5)[1])
    assert [int(v) for v in gl.to_numpy(runner.sync_words())] == [0, 0, 4]   # counter 0, error 0, 4 barriers


def test_the_contract_read_back_is_opt_in(monkeypatch):
    """Off by default (a host synchronisation per launch; launch_config covers H by construction), on
    under GPU_LSTM_DEBUG=1."""
    from gpu_lstm.backend import persistent
    monkeypatch.setattr(persistent.GpuRunner, "check_contract", False)
    monkeypatch.delenv("GPU_LSTM_DEBUG", raising=False)
    runner = persistent.GpuRunner(_persistent_runner().be)
    assert not runner.check_contract
    cfg, args = _forward_args(runner, H=8)
    small = persistent.LaunchConfig(cfg.grid, 1, cfg.lanes_fwd, cfg.lanes_bwd, cfg.threads, cfg.smem)
    runner._launch("persistent_lstm_forward", small, args[:3] + (np.int64(1),) + args[4:])   # not read back
    assert int(gl.to_numpy(runner.sync_words())[1]) == 1                                    # though set
    monkeypatch.setenv("GPU_LSTM_DEBUG", "1")
    assert persistent.GpuRunner(runner.be).check_contract


def _sync_words_of_launches(monkeypatch):
    """The sync-word arrays (by identity) every persistent launch gets, in order."""
    import fake_cupy
    seen = []
    launch = fake_cupy._PersistentKernel._launch

    def record(self, grid, block, args, shared_mem, coop):
        seen.append(id(args[-1]))
        return launch(self, grid, block, args, shared_mem, coop)
    monkeypatch.setattr(fake_cupy._PersistentKernel, "_launch", record)
    return seen


def test_models_on_different_streams_get_their_own_sync_words(monkeypatch):
    """One runner per (device, dtype) is shared by every model: two models launching on two streams
    must not share the grid barrier's words (they would race on the arrival counter)."""
    import cupy as cp
    seen = _sync_words_of_launches(monkeypatch)
    x = np.ones((4, 2, 3), np.float32)
    models = [gl.LSTM(3, 4, device="gpu", seed=s, algo="persistent") for s in (0, 1)]
    streams = [cp.cuda.Stream(non_blocking=True) for _ in models]
    per_stream = []
    for m, stream in zip(models, streams):
        start = len(seen)
        with stream:
            y, _ = m(x)
            m.backward(np.ones(y.shape, np.float32))
            m(x)
        per_stream.append(set(seen[start:]))
        assert len(seen) - start == 3
    assert all(len(ids) == 1 for ids in per_stream)           # one stream: one set of words, reused
    assert not per_stream[0] & per_stream[1]                  # two streams: never the same words


def test_the_occupancy_query_runs_once_per_kernel_and_shape(monkeypatch):
    import cupy as cp
    runner = _persistent_runner()
    runner._resident.clear()
    calls = []
    query = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor
    monkeypatch.setattr(cp.cuda.driver, "occupancyMaxActiveBlocksPerMultiprocessor",
                        lambda *a: calls.append(a) or query(*a))
    m = gl.LSTM(3, 4, device="gpu", seed=0, algo="persistent")
    x = np.ones((4, 2, 3), np.float32)
    for _ in range(3):
        y, _ = m(x)
        m.backward(np.ones(y.shape, np.float32))
    assert len(calls) == 2             # forward and backward kernels, first call each


# ---- masks from the plan's device counter; two streams per bidirectional layer -----------------------
def test_graph_mode_training_draws_new_masks_per_call_without_python_launches():
    """Dropout and zoneout in training through graphs: after the first calls (run + capture), a
    training step is one async counter copy (pinned) and one graph launch per forward and backward, no
    kernel launch or GEMM from Python, and every call's masks are the NumPy eager path's."""
    import fake_cupy
    kw = dict(dtype="float64", seed=3, bidirectional=True, dropout=0.4, zoneout_h=0.2, zoneout_c=0.3)
    m = gl.LSTM(4, 8, 2, device="gpu", algo="graph", **kw)
    ref = gl.LSTM(4, 8, 2, device="cpu", algo="eager", **kw)
    x = np.random.default_rng(0).standard_normal((6, 3, 4))
    dy = np.random.default_rng(1).standard_normal((6, 3, 16))
    for model in (m, ref):
        for _ in range(2):
            model(x)
            model.backward(dy)
    be, cap, lib = m._be, fake_cupy._cap, fake_cupy.fake_libcublas
    ys = []
    for _ in range(3):
        before = (_kernel_launches(be), lib.calls["gemm"], lib.calls["recorded"], cap.graphs, cap.launched,
                  len(fake_cupy.memcpy_calls))
        y, _ = m(x)
        dx, _ = m.backward(dy)
        after = (_kernel_launches(be), lib.calls["gemm"], lib.calls["recorded"], cap.graphs, cap.launched,
                 len(fake_cupy.memcpy_calls))
        assert after[:4] == before[:4] and after[4] == before[4] + 2 and after[5] == before[5] + 1
        y_ref, _ = ref(x)
        dx_ref, _ = ref.backward(dy)
        np.testing.assert_allclose(gl.to_numpy(y), y_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(gl.to_numpy(dx), dx_ref, rtol=0, atol=1e-12)
        ys.append(gl.to_numpy(y))
    assert not np.array_equal(ys[0], ys[1]) and not np.array_equal(ys[1], ys[2])
    assert int(m._saved.plan.counter.get()[0]) == m.rng_state()["calls"] - 1 == 4


def test_bidirectional_plans_fork_and_join_two_streams():
    """A bidirectional layer's two directions are captured on two streams (fork and join by events,
    two cuBLAS handles): the fake checks every cross-stream access pair is ordered, and the result is
    the NumPy path's. Plan mode (no graph) replays the same fork/join on a private second stream."""
    import fake_cupy
    from gpu_lstm.backend import cublas_capture
    cap = fake_cupy._cap
    for algo in ("graph", "plan"):
        m = gl.LSTM(5, 6, 2, device="gpu", dtype="float64", seed=2, algo=algo, bidirectional=True,
                    proj_size=3)
        ref = gl.LSTM(5, 6, 2, device="cpu", dtype="float64", seed=2, bidirectional=True, proj_size=3)
        x = np.random.default_rng(2).standard_normal((4, 3, 5))
        lengths = np.array([4, 1, 3])
        forks, pairs = cap.forks, cap.checked_pairs
        ys = []
        for model in (m, ref):
            y, _ = model(x, lengths=lengths)
            model.backward(np.ones(y.shape))
            ys.append(gl.to_numpy(y))
        np.testing.assert_allclose(ys[0], ys[1], rtol=0, atol=1e-12)
        for k in ref.grads:
            np.testing.assert_allclose(gl.to_numpy(m.grads[k]), ref.grads[k], rtol=0, atol=1e-12)
        # 2 layers x (forward, backward) fork/join regions; in a capture the cross-stream accesses
        # after the join (the layer output, din) are checked as ordered too.
        assert cap.forks >= forks + (2 if algo == "graph" else 4)
        assert cap.checked_pairs > pairs or algo == "plan"
        assert m._saved.plan.lanes
    handles = {key[3]: h for key, h in cublas_capture._handles.items() if key[2] == id(fake_cupy.fake_libcublas)}
    assert set(handles) >= {0, 1} and handles[0].workspace_ptr != handles[1].workspace_ptr


def _fork(main, side):
    import cupy
    ev = cupy.cuda.Event()
    ev.record(main)
    side.wait_event(ev)


def _join(main, side):
    import cupy
    ev = cupy.cuda.Event()
    ev.record(side)
    main.wait_event(ev)


def test_the_fake_checks_ordering_across_streams():
    import cupy
    import fake_cupy
    a, b = cupy.zeros((4,)), cupy.zeros((4,))
    main, side = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)

    def captured(body):
        with main:
            main.begin_capture()
            try:
                body()
            finally:
                graph = main.end_capture()        # raises for what CUDA refuses at the end
            return graph

    def no_fork():
        with side:
            a.fill(1)
    with pytest.raises(fake_cupy.CaptureError, match="not part of the capture"):
        captured(no_fork)

    def no_join():
        _fork(main, side)
        with side:
            a.fill(1)
    with pytest.raises(fake_cupy.CaptureError, match="not joined back"):
        captured(no_join)

    def read_before_join():
        _fork(main, side)
        with side:
            a.fill(1)
        cupy.multiply(a, 2.0, out=b)             # on main: reads what side writes, no event between
        _join(main, side)
    with pytest.raises(fake_cupy.CaptureError, match="data race"):
        captured(read_before_join)

    def write_before_fork_read_after():           # ordered: main's write happens before the fork
        a.fill(3)
        _fork(main, side)
        with side:
            cupy.multiply(a, 2.0, out=b)
        _join(main, side)
        cupy.multiply(b, 2.0, out=a)
    g = captured(write_before_fork_read_after)
    g.launch()
    assert float(a.get()[0]) == 12.0

    with pytest.raises(fake_cupy.CaptureError, match="data race"):   # outside capture: the same check
        with main:
            _fork(main, side)
            with side:
                a.fill(1)
            cupy.multiply(a, 2.0, out=b)
            _join(main, side)
    assert fake_cupy._cap.tracker is None


def test_the_fake_catches_two_streams_sharing_a_cublas_workspace():
    import cupy
    import fake_cupy
    be = gl.LSTM(3, 4, device="gpu", dtype="float64", algo="plan")._be
    a, b, c, d = (cupy.ones((4, 4)) for _ in range(4))
    main, side = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    h = be._capture_handle(0)
    ops = [h.gemm_call(0, 0, 4, 4, 4, a.data.ptr, 4, b.data.ptr, 4, 0.0, c.data.ptr, 4),
           h.gemm_call(0, 0, 4, 4, 4, a.data.ptr, 4, b.data.ptr, 4, 0.0, d.data.ptr, 4)]
    with main:
        with pytest.raises(fake_cupy.CaptureError, match="data race"):
            _fork(main, side)
            h.set_stream(main.ptr)
            ops[0]()
            with side:
                h.set_stream(side.ptr)           # one handle on both streams: one workspace
                ops[1]()
            _join(main, side)
    h.set_stream(0)


def test_use_arrays_refuses_host_arrays_for_a_gpu_model():
    """Host arrays would be copied to the device and the backward's gradients lost with the copy."""
    m = gl.LSTM(3, 4, 1, dtype="float64", device="gpu", seed=1)
    params = {k: gl.to_numpy(v) for k, v in m.params.items()}
    with pytest.raises(TypeError, match=r"params\['l0.W'\]: expected an array on GPU 0, used in place; got host"):
        with m.use_arrays(params):
            pass


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


@pytest.mark.parametrize("dtype, name", [("bfloat16", "bfloat16"), ("float16", "float16")])
def test_16_bit_gemms_go_through_gemm_ex_with_float32_gradients(dtype, name):
    """Every GEMM of a 16-bit model is cublasGemmEx with 16-bit A/B: C 16-bit (gates, delta-h, dx)
    or float32 (the parameter gradients); the fake checks each type/compute/ld argument."""
    pytest.importorskip("ml_dtypes")
    import cupy
    from cupy_backends.cuda.libs import cublas
    m = gl.LSTM(4, 8, device="gpu", dtype=dtype, seed=0)
    assert m._be.storage == (np.uint16 if dtype == "bfloat16" else np.float16)
    cublas.state["gemm_ex_types"] = {}
    plain = cublas.state["plain"]
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(m.dtype)
    for _ in range(2):   # (in graph mode the second call replays the captured GEMMs)
        y, _ = m(x)
        m.backward(np.ones(y.shape, m.dtype))
    types = cublas.state["gemm_ex_types"]
    assert set(types) == {(name, name), (name, "float32")}, types
    assert cublas.state["plain"] == plain      # no Sgemm/Dgemm, through either binding
    assert isinstance(y, cupy.ndarray) and y.dtype == m._be.storage
    assert m.to_numpy(y).dtype == m.dtype
    assert gl.to_numpy(y).dtype == m._be.storage   # the generic conversion keeps the device dtype


def test_fake_refuses_integer_maths_on_bfloat16_bits():
    import cupy
    a = cupy.zeros((3,), dtype=cupy.uint16)
    with pytest.raises(TypeError, match="bit pattern"):
        a + a
    with pytest.raises(TypeError, match="numerically"):
        a.astype(cupy.float32)
    with pytest.raises(TypeError, match="numerically"):
        a[...] = cupy.ones(3, dtype=cupy.float32)
    pytest.importorskip("ml_dtypes")
    import ml_dtypes
    with pytest.raises(TypeError, match="bfloat16 device array"):
        cupy.zeros((3,), dtype=ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gradient_flow_of_a_16_bit_gpu_model(dtype):
    """track_gradient_flow on a 16-bit GPU model: delta-h (bfloat16 bit patterns, or float16) is
    widened through the backend before it is squared (CuPy would multiply the bits as integers, which
    the fake refuses); the norms are float32 and equal the float64 norms of the stored delta-h to the
    float32 sum's error ((B H + 2) u32 relative)."""
    pytest.importorskip("ml_dtypes")
    T, B, H = 6, 4, 16
    m = gl.LSTM(3, H, 1, dtype=dtype, device="gpu", seed=2)
    m.track_gradient_flow = True
    rng = np.random.default_rng(0)
    y, _ = m(rng.standard_normal((T, B, 3)).astype(m.dtype))
    m.backward(rng.standard_normal(y.shape).astype(m.dtype))
    flow = m.gradient_flow["l0"]
    dh = m.to_numpy(m._scratch.dh).astype(np.float64)
    assert flow["dh"].dtype == np.float32 and flow["dc"].dtype == np.float32 and flow["dh"].shape == (T,)
    np.testing.assert_allclose(flow["dh"], np.sqrt((dh * dh).sum(axis=(1, 2))), rtol=(B * H + 2) * 2.0 ** -24)
    assert np.all(np.isfinite(flow["dc"])) and np.all(flow["dc"] > 0)


def test_16_bit_and_tf32_models_run_graphs():
    """bfloat16, float16 and TF32 models replay plans and CUDA graphs, their GEMMs captured as
    cublasGemmEx (TF32: compute 32F_FAST_TF32), no Sgemm/Dgemm; a bfloat16 model's conversions and
    sums between its buffers are kernels (widen_copy, narrow_copy, add_rows), which the stand-in
    checks: it refuses numeric casts and integer arithmetic on uint16 bit patterns."""
    pytest.importorskip("ml_dtypes")
    from cupy_backends.cuda.libs import cublas
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    for kw in (dict(dtype="bfloat16"), dict(dtype="float16"), dict(math="tf32")):
        m = gl.LSTM(4, 8, 2, device="gpu", seed=0, algo="graph", bidirectional=True, learn_initial_state=True,
                    **kw)
        assert m._algo == "graph", m.algo_reason
        cublas.state["gemm_ex_types"] = {}
        plain = cublas.state["plain"]
        xs = x.astype(m.dtype)
        for call in range(3):
            lengths = np.array([5, 2, 4]) if call else None
            y, (h, c) = m(xs, lengths=lengths)
            dhc = (np.ones(h.shape, m.dtype), np.ones(c.shape, m.dtype)) if call == 2 else None
            m.backward(np.ones(y.shape, m.dtype), dhc)
        assert m._saved.plan.graphs, "no graph captured"
        assert cublas.state["gemm_ex_types"] and cublas.state["plain"] == plain, cublas.state["gemm_ex_types"]


@pytest.mark.parametrize("kw", [dict(math="tf32"), dict(dtype="float16"), dict(dtype="bfloat16")])
def test_algo_env_persistent_never_runs_the_fp32_kernels_for_tf32_or_16_bit(monkeypatch, kw):
    """GPU_LSTM_ALGO=persistent sets what 'auto' means; a TF32 or 16-bit model (which the float32/
    float64 FMA kernels cannot run as asked) gets what plain 'auto' runs, and says so."""
    if kw.get("dtype") == "bfloat16":
        pytest.importorskip("ml_dtypes")
    monkeypatch.setenv("GPU_LSTM_ALGO", "persistent")
    m = gl.LSTM(4, 8, device="gpu", seed=0, **kw)
    assert m._algo == "graph" and "persistent" in m.algo_reason, m.algo_reason
    x = np.ones((3, 2, 4), np.float32).astype(m.dtype)
    y, _ = m(x)
    m.backward(np.ones(y.shape, m.dtype))
    from gpu_lstm.backend import persistent
    assert not persistent.persistent_supported(m, 3, 2)[0]


@pytest.mark.parametrize("dtype, math", [("bfloat16", "default"), ("float16", "default"), ("float32", "tf32")])
@pytest.mark.parametrize("cfg", [dict(bidirectional=True, peephole=True, dropout=0.3, zoneout_h=0.2, zoneout_c=0.4),
                                 dict(proj_size=3, learn_initial_state=True, dropout=0.5, zoneout_c=0.3),
                                 dict(bidirectional=True, learn_initial_state=True)])
def test_16_bit_and_tf32_graphs_equal_the_eager_loop_bitwise(dtype, math, cfg):
    """On the GPU backend (stand-in: host-built kernels, emulated GemmEx), a 16-bit or TF32 model's
    graph replays compute bitwise what its eager loop computes: outputs, cells, states, input and state
    gradients and every parameter gradient, over calls with and without lengths, given states and
    dh_n/dc_n (the plan's conversions of bfloat16 bit patterns are kernels, checked here)."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    a, e = (gl.LSTM(4, 6, 2, dtype=dtype, math=math, device="gpu", seed=11, algo=algo, **cfg)
            for algo in ("graph", "eager"))
    rng = np.random.default_rng(0)
    D, LD, P, H = a.num_directions, a.num_layers * a.num_directions, a.output_size, a.hidden_size
    x = rng.standard_normal((5, 3, 4)).astype(np.float32).astype(a.dtype)
    for call, lengths in enumerate([None, np.array([5, 2, 4]), None, np.array([1, 5, 3])]):
        hc = None if call % 2 else tuple(rng.standard_normal((LD, 3, n)).astype(np.float32).astype(a.dtype)
                                         for n in (P, H))
        dy = rng.standard_normal((5, 3, D * P)).astype(np.float32).astype(a.dtype)
        dhc = (tuple(rng.standard_normal((LD, 3, n)).astype(np.float32).astype(a.dtype) for n in (P, H))
               if call in (1, 2) else None)
        outs = []
        for m in (a, e):
            y, (hn, cn), cells = m(x, hc, lengths=lengths, return_cells=True)
            dx, (dh0, dc0) = m.backward(dy, dhc)
            outs.append([m.to_numpy(v) for v in (y, hn, cn, cells, dx, dh0, dc0)]
                        + [m.to_numpy(m.grads[k]) for k in sorted(m.grads)])
        assert a._saved.plan is not None and e._saved.plan is None
        names = "y hn cn cells dx dh0 dc0".split() + sorted(a.grads)
        for n, p, q in zip(names, *outs):
            assert p.dtype == q.dtype, n
            np.testing.assert_array_equal(p.astype(np.float64), q.astype(np.float64), err_msg=f"call {call}: {n}")
    assert a._saved.plan.graphs


@pytest.mark.parametrize("algo", ["plan", "graph"])
@pytest.mark.parametrize("kw, lengths", [(dict(peephole=True), None),
                                         (dict(proj_size=3, zoneout_h=0.2, zoneout_c=0.3, dropout=0.4,
                                               learn_initial_state=True), np.array([6, 2, 4])),
                                         (dict(dtype="bfloat16", dropout=0.3), np.array([1, 6, 3]))])
def test_weight_gradients_of_a_layer_overlap_the_loop_of_the_layer_below(algo, kw, lengths):
    """A stack of unidirectional layers on the GPU: each layer's dW/dR/db work is issued on the second
    lane after its dx GEMM, joined before the layer below's scratch is reused and at the end; the
    stand-in's race checker (cross-stream accesses without an event) passes, and the results equal
    the eager loop's bitwise."""
    if kw.get("dtype") == "bfloat16":
        pytest.importorskip("ml_dtypes")
    m, e = (gl.LSTM(4, 8, 3, device="gpu", seed=0, algo=a, **kw) for a in (algo, "eager"))
    x = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32).astype(m.dtype)
    for _ in range(3):
        outs = []
        for model in (m, e):
            y, _ = model(x, lengths=lengths)
            dx, _ = model.backward(np.ones(y.shape, np.float32).astype(m.dtype))
            outs.append([model.to_numpy(dx)] + [model.to_numpy(model.grads[k]) for k in sorted(model.grads)])
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))
    plan = m._saved.plan
    assert plan.grad_lane and plan.alt is not None and plan.alt.dgates is not plan.scratch.dgates
    ops = plan.backward_ops(m, True, False)
    lane1 = [op.label for op in ops if getattr(op, "lane", 0) == 1]
    assert lane1 and all("gemm" in lbl or "sum_rows" in lbl for lbl in lane1), lane1
    kinds = [op.kind for op in ops if isinstance(op, gl.plan.Sync)]
    assert kinds == ["fork", "join", "fork", "join", "fork", "join"], kinds
    assert not any("-> (18, " in lbl for lbl in lane1)            # no dx GEMM (T*B rows) on the second lane


def test_weight_gradient_lane_only_for_unidirectional_stacks_on_the_gpu():
    """Bidirectional layers keep their own two-lane scheme; NumPy replays in order (no lanes)."""
    x32 = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    bi = gl.LSTM(4, 8, 2, device="gpu", seed=0, algo="graph", bidirectional=True)
    y, _ = bi(x32)
    bi.backward(np.ones(y.shape, np.float32))
    assert not bi._saved.plan.grad_lane and bi._saved.plan.lanes
    cpu = gl.LSTM(4, 8, 3, device="cpu", seed=0)
    y, _ = cpu(x32)
    assert not cpu._saved.plan.grad_lane                           # NumPy replays in order: no lanes
