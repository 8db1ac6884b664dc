"""Ring 3: the GPU path against the NumPy path. Marked `gpu`; skipped without cupy or a CUDA device.

Run on a GPU machine with `python -m pytest -m gpu tests/test_gpu.py -v`
(benchmarks/gpu_verify.sh does that and records the output). Every test runs three times, in eager, graph and
persistent mode (the `algo` fixture); on the CuPy stand-in too (tests/test_fake_gpu.py)."""

import os

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.backend import gpu_available
from gpu_lstm.compare import compare_paths
from gpu_lstm.gradcheck import lstm_gradient_check

_ok, _why = gpu_available()
if not _ok and os.environ.get("GPU_LSTM_REQUIRE_GPU") == "1":
    # benchmarks/gpu_verify.sh sets this: on a GPU machine a missing device (driver too old, no
    # cuBLAS, no NVRTC) must fail the verification, not skip it into a green run.
    raise RuntimeError(f"GPU_LSTM_REQUIRE_GPU=1 but no usable GPU: {_why}")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _ok, reason=f"no GPU: {_why}")]

TOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(autouse=True, params=["eager", "graph", "persistent"])
def algo(request, monkeypatch):
    """Every test runs in every mode: 'eager' (the per-step loop, the GPU reference), 'graph' (plans
    captured into CUDA graphs) and 'persistent' (one cooperative launch per direction where it can
    run, 'graph' where it cannot); GPU_LSTM_ALGO sets what algo='auto' means on the GPU."""
    monkeypatch.setenv("GPU_LSTM_ALGO", request.param)
    return request.param


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("L, batch_first, T, B, H, I", [
    (1, False, 7, 3, 5, 3), (3, False, 9, 4, 33, 7), (2, True, 5, 2, 16, 16), (1, False, 1, 1, 1, 1),
    (2, False, 20, 64, 128, 64)])
def test_gpu_matches_numpy(dtype, L, batch_first, T, B, H, I):
    rows = compare_paths(I, H, L, T=T, B=B, dtype=dtype, seed=L + T, device="gpu", reference="cpu",
                         batch_first=batch_first)
    assert len(rows) == 6 + 3 * L
    for name, err in rows:
        assert err < TOL[dtype], f"{name}: {err:.2e} ({dtype})"


def test_two_backwards_accumulate_on_gpu():
    import cupy as cp
    m = gl.LSTM(4, 8, 2, dtype="float64", device="gpu", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 4))
    y, _ = m(x)
    dy = cp.ones_like(y)
    m.backward(dy)
    once = {k: v.copy() for k, v in m.grads.items()}
    m.backward(dy)
    for k in m.grads:
        assert float(cp.abs(once[k]).max()) > 0
        cp.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-14, atol=0)
    m.zero_grad()
    assert all(not bool(v.any()) for v in m.grads.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_repeated_runs_are_bitwise_identical(dtype):
    outs = []
    x = np.random.default_rng(1).standard_normal((12, 16, 32)).astype(dtype)
    for _ in range(2):
        m = gl.LSTM(32, 64, 2, dtype=dtype, device="gpu", seed=3)
        y, (h, c) = m(x)
        dx, _ = m.backward(y)
        outs.append([gl.to_numpy(a) for a in (y, h, c, dx, *m.grads.values())])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_gradient_check_on_gpu():
    m = gl.LSTM(3, 4, 2, dtype="float64", device="gpu", seed=5)
    for name, err in lstm_gradient_check(m, T=5, B=3):
        assert err < 1e-6, name


def test_numpy_in_device_out_and_errors():
    import cupy as cp
    m = gl.LSTM(3, 4, 1, dtype="float32", device="gpu", seed=0)
    y, (h, c) = m(np.zeros((2, 1, 3), np.float32))
    assert isinstance(y, cp.ndarray) and isinstance(h, cp.ndarray)
    assert isinstance(gl.to_numpy(y), np.ndarray)
    with pytest.raises(TypeError, match="x: expected dtype float32, got float64"):
        m(cp.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="expected input size I = 3"):
        m(cp.zeros((2, 1, 4), dtype=cp.float32))
    assert m.device == "gpu" and "GPU" in m._be.describe()


def test_empty_shapes_on_gpu():
    m = gl.LSTM(3, 4, 2, dtype="float64", device="gpu", seed=0)
    y, (h, c) = m(np.zeros((0, 2, 3)))
    assert y.shape == (0, 2, 4)
    y, _ = m(np.zeros((3, 0, 3)))
    dx, _ = m.backward(y)
    assert dx.shape == (3, 0, 3)


def test_cli_check_on_gpu():
    from gpu_lstm.cli import main
    assert main(["check", "--device", "gpu"]) == 0


OPTIONS = {
    "bidirectional": dict(bidirectional=True),
    "projection": dict(proj_size=16),
    "peephole": dict(peephole=True),
    "learned-state": dict(learn_initial_state=True),
    "bi+proj+peep": dict(bidirectional=True, proj_size=8, peephole=True),
}   # dropout and zoneout: test_gpu_matches_numpy_with_dropout_and_zoneout_in_training


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("lengths", [None, np.array([7, 3, 5, 1])], ids=["full", "lengths"])
def test_gpu_matches_numpy_with_options(dtype, name, lengths):
    rows = compare_paths(6, 24, 2, T=7, B=4, dtype=dtype, seed=4, device="gpu", reference="cpu",
                         lengths=lengths, return_cells=True, **OPTIONS[name])
    for n, err in rows:
        assert err < TOL[dtype], f"{n}: {err:.2e} ({dtype}, {name})"


def test_gpu_matches_numpy_zoneout_and_dropout_in_eval():
    rows = compare_paths(6, 24, 3, T=7, B=4, dtype="float64", seed=4, device="gpu", reference="cpu",
                         lengths=np.array([7, 3, 5, 1]), train=False, dropout=0.3, zoneout_h=0.2,
                         zoneout_c=0.4, peephole=True)
    for n, err in rows:
        assert err < TOL["float64"], f"{n}: {err:.2e}"


def test_gpu_training_pieces():
    """Dense, the fused softmax cross-entropy, optimizers and clipping on the device."""
    import cupy as cp
    from gpu_lstm.losses import softmax_cross_entropy
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.optim import Adam, clip_grad_norm
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 3, 11)) * 30
    targets = rng.integers(0, 11, (6, 3))
    targets[0, 1] = -100
    ref = softmax_cross_entropy(logits, targets)
    got = softmax_cross_entropy(cp.asarray(logits), cp.asarray(targets))
    assert isinstance(got[1], cp.ndarray)
    assert abs(float(got[0]) - float(ref[0])) < 1e-12
    np.testing.assert_allclose(gl.to_numpy(got[1]), ref[1], rtol=1e-12, atol=1e-14)
    m = SequenceModel(4, 16, 4, 2, device="gpu", seed=0)
    opt = Adam(m.params, m.grads, lr=1e-2)
    x = cp.asarray(rng.standard_normal((10, 8, 4)).astype(np.float32))
    y = x.argmax(axis=-1)          # learnable: which input feature is largest at this step
    losses = []
    for _ in range(60):
        m.zero_grad()
        out, _ = m(x)
        loss, d = softmax_cross_entropy(out, y)
        m.backward(d)
        clip_grad_norm(m.grads, 1.0)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]   # the NumPy path goes from 1.38 to 0.06 on this data


def test_gpu_gradient_check_with_options():
    m = gl.LSTM(3, 4, 2, dtype="float64", device="gpu", seed=5, bidirectional=True, proj_size=2,
                peephole=True, dropout=0.3, zoneout_h=0.2, zoneout_c=0.3)
    for name, err in lstm_gradient_check(m, T=5, B=3, lengths=np.array([5, 2, 4])):
        assert err < 1e-6, name


def test_gpu_dropout_same_seed_bitwise():
    x = np.random.default_rng(2).standard_normal((6, 8, 16)).astype(np.float32)
    ys = [gl.to_numpy(gl.LSTM(16, 32, 3, dropout=0.5, device="gpu", seed=11)(x)[0]) for _ in range(2)]
    np.testing.assert_array_equal(ys[0], ys[1])


def test_zero_copy_inputs():
    import cupy as cp
    m = gl.LSTM(3, 4, 1, dtype="float32", device="gpu", seed=0)
    x = cp.random.standard_normal((5, 2, 3), dtype=cp.float32)
    assert m._be.asarray("x", x) is x
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        t = torch.randn(5, 2, 3, device="cuda")
        view = m._be.asarray("x", t)
        assert view.data.ptr == t.data_ptr()          # no copy
        y, _ = m(t)
        np.testing.assert_allclose(gl.to_numpy(y), gl.to_numpy(m(cp.asarray(view))[0]))


# ---- plans and graphs ------------------------------------------------------------------------------
def _pair(dtype, **kw):
    gpu = gl.LSTM(5, 12, 2, dtype=dtype, device="gpu", seed=7, **kw)
    cpu = gl.LSTM(5, 12, 2, dtype=dtype, device="cpu", seed=7, **kw)
    return gpu, cpu


def _close(a, b, dtype):
    a, b = gl.to_numpy(a), gl.to_numpy(b)
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-300)
    assert float(np.abs(a - b).max(initial=0.0)) / scale < TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_replays_with_new_inputs_match_numpy(algo, dtype):
    """The same plan (graph) replayed with new x, h0/c0, lengths, dy and dh_n each call."""
    gpu, cpu = _pair(dtype, bidirectional=True, peephole=True)
    rng = np.random.default_rng(3)
    for call, lengths in enumerate([None, None, np.array([6, 2, 5, 1]), np.array([3, 6, 6, 2]), None]):
        x = rng.standard_normal((6, 4, 5)).astype(dtype)
        hc = tuple(rng.standard_normal((4, 4, 12)).astype(dtype) for _ in range(2))
        outs = [m(x, hc, lengths=lengths) for m in (gpu, cpu)]
        dy = rng.standard_normal(outs[1][0].shape).astype(dtype)
        dhc = tuple(rng.standard_normal(a.shape).astype(dtype) for a in outs[1][1])
        backs = [m.backward(dy, dhc if call % 2 else None) for m in (gpu, cpu)]
        for a, b in zip((outs[0][0], *outs[0][1], backs[0][0], *backs[0][1]),
                        (outs[1][0], *outs[1][1], backs[1][0], *backs[1][1])):
            _close(a, b, dtype)
    for k in cpu.grads:
        _close(gpu.grads[k], cpu.grads[k], dtype)
    if algo == "graph":
        assert gpu._algo == "graph" and gpu._saved.plan is not None and gpu._saved.plan.graphs


def test_detached_tapes_in_flight(algo):
    gpu, cpu = _pair("float64", proj_size=4)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((5, 3, 5)) for _ in range(3)]
    dys = [rng.standard_normal((5, 3, 4)) for _ in range(3)]
    tapes = []
    for x in xs:
        gpu(x)
        tapes.append(gpu.detach_tape())
    for x, dy, tape in reversed(list(zip(xs, dys, tapes))):
        gpu.zero_grad()
        cpu.zero_grad()
        cpu(x)
        dx_ref, _ = cpu.backward(dy)
        dx, _ = gpu.backward(dy, tape=tape)
        _close(dx, dx_ref, "float64")
        for k in cpu.grads:
            _close(gpu.grads[k], cpu.grads[k], "float64")


def test_replaced_parameters_are_used(algo):
    """A parameter or gradient array replaced wholesale: the plan is rebuilt (a graph never reads an
    array the model no longer owns); set_params copies in place."""
    import cupy as cp
    gpu, cpu = _pair("float64")
    x = np.random.default_rng(5).standard_normal((4, 2, 5))
    gpu(x)
    gpu.backward(np.ones((4, 2, 12)))
    new = {k: np.random.default_rng(6).uniform(-0.3, 0.3, v.shape) for k, v in cpu.params.items()}
    cpu.set_params(new)
    gpu.params["l0.W"] = cp.asarray(new["l0.W"])          # replaced, not copied into
    gpu.set_params({k: v for k, v in new.items() if k != "l0.W"})
    gpu.grads["l1.R"] = cp.zeros_like(gpu.grads["l1.R"])
    gpu.zero_grad()
    cpu.zero_grad()
    for m in (gpu, cpu):
        y, _ = m(x)
        m.backward(np.ones((4, 2, 12)))
    _close(gpu(x)[0], cpu(x)[0], "float64")
    for k in cpu.grads:
        _close(gpu.grads[k], cpu.grads[k], "float64")


def test_training_with_dropout_and_zoneout_runs_through_plans(algo):
    """The mask kernels read the call counter from the plan's device scalar, written before each
    replay: graph mode draws new masks every call, the NumPy path's (bitwise the same masks), with no
    eager fallback; the backward recomputes its own forward's masks."""
    gpu, cpu = _pair("float64", bidirectional=True, dropout=0.3, zoneout_h=0.2, zoneout_c=0.3)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 3, 5))
    ys = []
    for lengths in (None, None, np.array([5, 2, 4]), None):
        outs = [m(x, lengths=lengths) for m in (gpu, cpu)]
        dy = rng.standard_normal(outs[1][0].shape)
        backs = [m.backward(dy) for m in (gpu, cpu)]
        for a, b in zip((outs[0][0], *outs[0][1], backs[0][0], *backs[0][1]),
                        (outs[1][0], *outs[1][1], backs[1][0], *backs[1][1])):
            _close(a, b, "float64")
        assert (gpu._saved.plan is not None) == (algo != "eager")   # persistent: zoneout -> 'graph'
        ys.append(gl.to_numpy(outs[0][0]))
    assert not np.array_equal(ys[0], ys[1])       # same input, new masks
    for k in cpu.grads:
        _close(gpu.grads[k], cpu.grads[k], "float64")
    assert gpu.rng_state() == cpu.rng_state()
    if algo == "graph":
        assert gpu._saved.plan.graphs


def test_losses_accept_host_targets_and_masks():
    import cupy as cp
    from gpu_lstm.losses import mse_loss, softmax_cross_entropy
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 3, 7))
    targets = rng.integers(0, 7, (4, 3))
    targets[0, 0] = -100
    ref_loss, ref_grad = softmax_cross_entropy(logits, targets)
    loss, grad = softmax_cross_entropy(cp.asarray(logits), targets)           # NumPy targets
    assert isinstance(grad, cp.ndarray)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-12)
    np.testing.assert_allclose(gl.to_numpy(grad), ref_grad, rtol=1e-10, atol=1e-15)
    pred, target = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    mask = (rng.uniform(size=(5, 1)) > 0.3).astype(np.float64)
    ref_loss, ref_grad = mse_loss(pred, target, mask)
    loss, grad = mse_loss(cp.asarray(pred), target, mask)                      # NumPy target and mask
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-12)
    np.testing.assert_allclose(gl.to_numpy(grad), ref_grad, rtol=1e-12)


def test_gpu_masks_equal_numpy_masks_bitwise():
    """Philox masks computed inside the GPU kernels are the NumPy masks, bit for bit (same seed, same
    call), so training with dropout and zoneout gives the NumPy path's numbers."""
    import cupy as cp
    from gpu_lstm import philox
    from gpu_lstm.backend import get_backend
    be = get_backend("gpu", "float32")
    dm = philox.DropoutMask(77, 1, 5, 0.3, (9, 7, 65), np.float32)
    out = cp.empty((9, 7, 65), dtype=cp.float32)
    be.dropout(dm, cp.ones((9, 7, 65), dtype=cp.float32), out)
    np.testing.assert_array_equal(gl.to_numpy(out), dm.array())
    zm = philox.ZoneoutMask(77, 2, 1, philox.ZONEOUT_C, 5, 0.4, (3, 7, 65))
    got = cp.empty((3, 7, 65), dtype=cp.float32)
    for t in range(3):
        be.zoneout_mix(zm[t], 0.0, cp.ones((7, 65), dtype=cp.float32), cp.zeros((7, 65), dtype=cp.float32), got[t])
    np.testing.assert_array_equal(gl.to_numpy(got), zm.array(np.float32))


def test_gpu_matches_numpy_with_dropout_and_zoneout_in_training():
    rows = compare_paths(6, 24, 3, T=7, B=4, dtype="float64", seed=4, device="gpu", reference="cpu",
                         lengths=np.array([7, 3, 5, 1]), train=True, dropout=0.3, zoneout_h=0.2,
                         zoneout_c=0.4, peephole=True, bidirectional=True)
    for n, err in rows:
        assert err < TOL["float64"], f"{n}: {err:.2e}"


@pytest.mark.parametrize("cls, kw", [("Adam", dict(lr=1e-2, weight_decay=0.1)), ("AdamW", dict(lr=1e-2)),
                                     ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01))])
def test_fused_gpu_optimizers_match_numpy(cls, kw):
    """Fused kernels against the NumPy optimizer, float64, five steps. Only FMA contraction may differ
    (an ulp per operation): relative 1e-13 is far above that and far below any real error."""
    import cupy as cp
    from gpu_lstm import optim
    rng = np.random.default_rng(1)
    host = {"w": rng.standard_normal((33, 17)), "b": rng.standard_normal(33)}
    hg = {k: np.zeros_like(v) for k, v in host.items()}
    dev = {k: cp.asarray(v) for k, v in host.items()}
    dg = {k: cp.zeros_like(v) for k, v in dev.items()}
    ref, got = getattr(optim, cls)(host, hg, **kw), getattr(optim, cls)(dev, dg, **kw)
    for _ in range(5):
        for k in host:
            hg[k][...] = rng.standard_normal(hg[k].shape)
            dg[k][...] = cp.asarray(hg[k])
        ref.step()
        got.step()
    for k in host:
        np.testing.assert_allclose(gl.to_numpy(dev[k]), host[k], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_clip_grad_norm_matches_numpy(dtype):
    """Global norm and clipping on the device (cuda/clip_kernels.cuh: a fixed-order two-level sum, the
    coefficient computed on the device) against optim's NumPy expressions (a pairwise sum), within the
    derived bound of tests/clip_bounds.py, counting FMA contraction of s + x * x on a GPU."""
    import cupy as cp
    from clip_bounds import clipped_rtol, norm_rtol
    from gpu_lstm import optim
    rng = np.random.default_rng(6)
    shapes = [(512, 130), (33,), (0,), (7, 3), (70001,)]
    host = [(3 * rng.standard_normal(s)).astype(dtype) for s in shapes]
    dev = [cp.asarray(g) for g in host]
    sizes = [g.size for g in host]
    np.testing.assert_allclose(gl.to_numpy(optim.global_grad_norm(dev)), optim.global_grad_norm(host),
                               rtol=norm_rtol(sizes, fma=True), atol=0)
    n_ref = optim.clip_grad_norm(host, 0.5)
    n_dev = optim.clip_grad_norm(dev, 0.5)
    assert isinstance(n_dev, cp.ndarray) and n_dev.shape == () and n_dev.dtype == np.float64
    np.testing.assert_allclose(gl.to_numpy(n_dev), n_ref, rtol=norm_rtol(sizes, fma=True), atol=0)
    for a, b in zip(dev, host):
        np.testing.assert_allclose(gl.to_numpy(a), b, rtol=clipped_rtol(sizes, dtype, fma=True), atol=0)


# ---- 16-bit models (bfloat16, float16) against the NumPy rounding reference --------------------------
# Not bitwise: the GPU adds its float32 GEMM products in cuBLAS's order and uses CUDA's expf/tanhf, the
# reference NumPy's. Both are approximations of the float64 model with the same (rounded) weights and
# inputs, and each obeys docs/precision.md's first-order bounds, relative Frobenius norms:
# ||y - y64|| <= b_f ||y64||, b_f = 3 u + K u32, gradients b_g = 5 u + K u32 (u the storage type's unit
# roundoff, K <= T B the longest float32 sum; the same analysis covers both, since they round at the
# same places). By the triangle inequality ||y_gpu - y_ref|| <= 2 b ||y64|| <= 2 b ||y_ref|| / (1 - b).
# tests/test_lowp.py checks the reference against float64 at this configuration.
def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _bits(a):
    return np.asarray(a).view(np.uint16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_models_match_the_rounding_reference(dtype):
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.backend import lowp
    H, B, T, I = 64, 4, 30, 8
    kw = dict(bidirectional=True, peephole=True, proj_size=32, num_layers=2, seed=3, dtype=dtype)
    g = gl.LSTM(I, H, device="gpu", **kw)
    c = gl.LSTM(I, H, device="cpu", **kw)
    for k in c.params:   # the same weights, rounded once on the host and uploaded as bit patterns
        assert np.array_equal(_bits(gl.to_numpy(g.params[k])), _bits(c.params[k])), k
    u, K = lowp.unit_roundoff(dtype), T * B
    b_f, b_g = 3 * u + K * 2.0 ** -24, 5 * u + K * 2.0 ** -24
    tol_f, tol_g = 2 * b_f / (1 - b_f), 2 * b_g / (1 - b_g)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(c.dtype)
    lengths = rng.integers(T // 2, T + 1, B)
    yg, (hg, cg) = g(x, lengths=lengths)           # host input: uploaded
    yc, (hc, cc) = c(x, lengths=lengths)
    for got, want in ((yg, yc), (hg, hc), (cg, cc)):
        got = g.to_numpy(got)
        assert got.dtype == c.dtype and got.shape == want.shape
        assert _rel(got, want) <= tol_f, (_rel(got, want), tol_f)
    dy = rng.standard_normal(yc.shape).astype(c.dtype)
    dxg, _ = g.backward(dy)
    dxc, _ = c.backward(dy)
    assert _rel(g.to_numpy(dxg), dxc) <= tol_g
    for k in c.grads:
        gk = gl.to_numpy(g.grads[k])
        assert gk.dtype == np.float32
        assert _rel(gk, c.grads[k]) <= tol_g, (k, _rel(gk, c.grads[k]), tol_g)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_mixed_precision_training_on_gpu(dtype):
    """LSTM + Dense + mse_loss + MixedPrecision(Adam) on GPU arrays, against the CPU reference.
    After one Adam step from the same state each master weight moved by lr g / (|g| + eps), at most
    lr, on each side: GPU and CPU masters differ by at most 2 lr (plus a float32 rounding of each
    master). The 16-bit parameters are the masters rounded once (narrow_copy): bitwise."""
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.losses import mse_loss
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.optim import Adam, LossScaler, MixedPrecision
    lr = 1e-3
    runs = {}
    for device in ("gpu", "cpu"):
        model = SequenceModel(3, 16, 2, head="last", dtype=dtype, device=device, seed=0)
        scaler = LossScaler(init_scale=2.0 ** 8) if dtype == "float16" else None
        opt = MixedPrecision(Adam, model.params, model.grads, scaler, lr=lr)
        rng = np.random.default_rng(0)
        losses = []
        for step in range(3):
            x = rng.standard_normal((12, 5, 3)).astype(model.dtype)
            y = rng.standard_normal((5, 2)).astype(model.dtype)
            for gr in model.grads.values():
                gr[...] = 0
            pred = model(x)[0]
            loss, dpred = mse_loss(pred, y)
            losses.append(float(loss))
            model.backward(opt.scale_grad(dpred))
            opt.unscale_()
            assert opt.step()
            if step == 0:
                masters = {k: np.asarray(gl.to_numpy(v)).copy() for k, v in opt.master.items()}
        for k, p in model.params.items():
            m = gl.to_numpy(opt.master[k])
            assert m.dtype == np.float32 and np.isfinite(m).all()
            assert np.array_equal(_bits(model.to_numpy(p)), _bits(m.astype(model.to_numpy(p).dtype))), k
        runs[device] = (masters, losses)
    (mg, lg), (mc, _) = runs["gpu"], runs["cpu"]
    assert np.isfinite(lg).all()
    for k in mc:
        assert np.all(np.abs(mg[k] - mc[k]) <= 2 * lr + 2.0 ** -24 * (np.abs(mc[k]) + lr)), k


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_softmax_cross_entropy_on_gpu(dtype):
    """16-bit logits: float32 loss rows, 16-bit gradient. The GPU kernel and the reference compute in
    float32 with different exp/log (a few float32 ulps apart), so the gradient differs by at most one
    16-bit ulp (<= 2 u |g|, docs/precision.md) and the float32 loss by a few float32 ulps (64, as
    tests/test_lowp.py allows for the same kernel pair)."""
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.backend import lowp
    from gpu_lstm.losses import softmax_cross_entropy
    d = lowp.dtype_of(dtype)
    u = lowp.unit_roundoff(dtype)
    z = np.random.default_rng(0).standard_normal((40, 7)).astype(d)
    t = np.random.default_rng(1).integers(0, 7, 40)
    t[3] = -100
    be = gl.LSTM(2, 2, device="gpu", dtype=dtype)._be
    lg, gg = softmax_cross_entropy(be.asarray("z", z), t)
    lc, gc = softmax_cross_entropy(z, t)
    gg, gc = be.to_numpy(gg).astype(np.float32), gc.astype(np.float32)
    assert np.all(np.abs(gg - gc) <= 2 * u * np.abs(gc))
    assert abs(float(lg) - float(lc)) <= 64 * 2.0 ** -24 * (1 + abs(float(lc)))


# ---- 16-bit GPU models: checkpoints, cells, masks, integer arrays, parameter uploads -----------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_gpu_checkpoint_round_trip_across_devices(dtype, tmp_path):
    """A GPU model's parameters are compared and uploaded in their logical dtype (a bfloat16 model's
    uint16 device arrays are bfloat16): GPU -> GPU, GPU -> CPU and CPU -> GPU are bitwise, and the
    sampler's model_from_checkpoint loads a GPU model."""
    pytest.importorskip("ml_dtypes")
    from gpu_lstm import sampling
    from gpu_lstm.checkpoint import load_checkpoint, save_checkpoint
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.optim import Adam, LossScaler, MixedPrecision
    a = SequenceModel(3, 8, 4, dtype=dtype, device="gpu", seed=0)
    opt_a = MixedPrecision(Adam, a.params, a.grads, LossScaler() if dtype == "float16" else None, lr=1e-2)
    path = save_checkpoint(tmp_path / "g.npz", a, opt_a)
    want = {k: _bits(gl.to_numpy(v)) for k, v in a.params.items()}   # bits, whatever the host dtype
    for device in ("gpu", "cpu"):
        b = SequenceModel(3, 8, 4, dtype=dtype, device=device, seed=1)
        opt_b = MixedPrecision(Adam, b.params, b.grads, LossScaler() if dtype == "float16" else None, lr=1e-2)
        load_checkpoint(path, b, opt_b)
        for k in want:
            assert np.array_equal(_bits(gl.to_numpy(b.params[k])), want[k]), (device, k)
    c = SequenceModel(3, 8, 4, dtype=dtype, device="cpu", seed=2)
    load_checkpoint(save_checkpoint(tmp_path / "c.npz", c), a)           # CPU -> GPU
    for k in c.params:
        assert np.array_equal(_bits(gl.to_numpy(a.params[k])), _bits(c.params[k])), k
    s, _ = sampling.model_from_checkpoint(path, device="gpu")
    assert s.device == "gpu" and all(np.array_equal(_bits(gl.to_numpy(s.params[k])), want[k]) for k in want)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_return_cells_of_a_16_bit_gpu_model_are_its_float32_cell_states(dtype):
    """cells are the float32 cell states the model computes with (as on the CPU), copied, not stored
    into a 16-bit buffer: the forward direction's columns equal the tape's c bitwise, and the whole
    array matches the CPU reference to the bound of test_16_bit_models_match_the_rounding_reference
    (c is float32 there too)."""
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.backend import lowp
    H, B, T, I = 8, 3, 6, 4
    kw = dict(bidirectional=True, seed=0, dtype=dtype)
    g, c = gl.LSTM(I, H, device="gpu", **kw), gl.LSTM(I, H, device="cpu", **kw)
    x = (np.random.default_rng(0).standard_normal((T, B, I)) * 3).astype(c.dtype)
    lengths = np.array([T, 2, 4])
    cg = g(x, lengths=lengths, return_cells=True)[2]
    cc = c(x, lengths=lengths, return_cells=True)[2]
    assert cg.dtype == np.float32 and cc.dtype == np.float32 and cg.shape == cc.shape == (T, B, 2 * H)
    cg = g.to_numpy(cg)
    tape_c = g.to_numpy(g._saved.dirs[0][0].c[1:]) * (np.arange(T)[:, None] < lengths)[:, :, None]
    assert np.array_equal(cg[:, :, :H], tape_c)
    u, K = lowp.unit_roundoff(dtype), T * B
    b_f = 3 * u + K * 2.0 ** -24
    assert _rel(cg, cc) <= 2 * b_f / (1 - b_f)


@pytest.mark.parametrize("mask_on", ["host", "device"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mse_loss_with_a_16_bit_mask_on_the_gpu(dtype, mask_on):
    """A 16-bit mask (host, or bit patterns on the device) is converted by the backend, not as
    integers: the gradient is bitwise the CPU's (the same float32 operations on the same inputs, one
    rounding) and the loss equals it to the float32 sum's error (n - 1) u32 of the sum of n >= 0 terms.
    A complex mask is a dtype error naming mask, a wrong shape a shape error."""
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.backend import lowp
    from gpu_lstm.losses import mse_loss
    d = lowp.dtype_of(dtype)
    be = gl.LSTM(2, 3, device="gpu", dtype=dtype)._be
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((4, 2, 3)).astype(d)
    tgt = rng.standard_normal((4, 2, 3)).astype(d)
    mask = np.ones((4, 2, 1), d)
    mask[2:, 1] = 0
    lc, gc = mse_loss(pred, tgt, mask=mask)
    lg, gg = mse_loss(be.asarray("pred", pred), tgt, mask=mask if mask_on == "host" else be.asarray("mask", mask))
    assert np.array_equal(_bits(be.to_numpy(gg)), _bits(gc))
    assert abs(float(lg) - float(lc)) <= pred.size * 2.0 ** -24 * float(lc)
    with pytest.raises(TypeError, match="mask: expected bool, integer or real floating values.*complex"):
        mse_loss(be.asarray("pred", pred), tgt, mask=np.ones((4, 2, 1), np.complex64))
    with pytest.raises(ValueError, match=r"mask: expected 3 axes like pred \(4, 2, 3\).*got shape \(4, 3\)"):
        mse_loss(be.asarray("pred", pred), tgt, mask=np.ones((4, 3), d))
    with pytest.raises(ValueError, match=r"mask: expected an array broadcastable to \(4, 2, 3\).*\(4, 3, 1\)"):
        mse_loss(be.asarray("pred", pred), tgt, mask=np.ones((4, 3, 1), d))


def test_uint16_device_integers_are_integers():
    """A CuPy uint16 array is integers unless the model that made it says otherwise: uint16 lengths
    on the device run like int64 ones, gl.to_numpy returns uint16 values as they are, and only a
    bfloat16 model's to_numpy reads its own uint16 arrays as bfloat16."""
    import cupy
    m = gl.LSTM(2, 3, device="gpu", dtype="float32", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 2)).astype(np.float32)
    want = gl.to_numpy(m(x, lengths=np.array([4, 2]))[0])
    got = gl.to_numpy(m(x, lengths=cupy.asarray(np.array([4, 2], np.uint16)))[0])
    assert np.array_equal(got, want)
    ids = gl.to_numpy(cupy.asarray(np.array([1, 2, 300], np.uint16)))
    assert ids.dtype == np.uint16 and ids.tolist() == [1, 2, 300]
    pytest.importorskip("ml_dtypes")
    b = gl.LSTM(2, 3, device="gpu", dtype="bfloat16", seed=0)
    y, _ = b(x.astype(b.dtype))
    assert b.to_numpy(y).dtype == b.dtype and gl.to_numpy(y).dtype == np.uint16
    assert np.array_equal(b.to_numpy(y).view(np.uint16), gl.to_numpy(y))
    assert b.to_numpy({"y": [y]})["y"][0].dtype == b.dtype


@pytest.mark.parametrize("dtype, v, once", [
    ("float16", 1 + 2.0 ** -11 + 2.0 ** -30, 1 + 2.0 ** -10),
    ("bfloat16", 1 + 2.0 ** -8 + 2.0 ** -7, 1 + 2.0 ** -6)])
def test_16_bit_set_params_rounds_host_values_once_like_the_cpu(dtype, v, once):
    """float64 host values are rounded to the model dtype on the host, then uploaded: the GPU holds
    the CPU's bits. 1 + 2^-11 + 2^-30 is just above a float16 tie, so one rounding gives 1 + 2^-10;
    through float32 first it would become the tie 1 + 2^-11 and round to even, 1."""
    pytest.importorskip("ml_dtypes")
    out = {}
    for device in ("cpu", "gpu"):
        m = gl.LSTM(1, 1, dtype=dtype, device=device, seed=0)
        m.set_params({"l0.b": np.full(4, v)})
        out[device] = _bits(gl.to_numpy(m.params["l0.b"])).view(m.dtype)
    assert np.array_equal(_bits(out["gpu"]), _bits(out["cpu"]))
    assert np.array_equal(_bits(out["gpu"]), _bits(np.full(4, v).astype(out["cpu"].dtype)))
    assert np.all(out["gpu"].astype(np.float64) == once)


def test_bfloat16_torch_state_dict_of_a_gpu_model():
    """torch_state_dict of a GPU bfloat16 model gives torch.bfloat16 tensors of its values (not of its
    uint16 bits), and load_torch_state_dict of them restores the same bits."""
    pytest.importorskip("ml_dtypes")
    torch = pytest.importorskip("torch")
    m = gl.LSTM(3, 4, dtype="bfloat16", device="gpu", seed=0)
    sd = m.torch_state_dict()
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    w = _bits(gl.to_numpy(m.params["l0.W"]))
    assert torch.equal(sd["weight_ih_l0"].view(torch.int16), torch.from_numpy(w.view(np.int16)))
    m2 = gl.LSTM(3, 4, dtype="bfloat16", device="gpu", seed=1)
    m2.load_torch_state_dict(sd)
    for k in m.params:
        assert np.array_equal(_bits(gl.to_numpy(m2.params[k])), _bits(gl.to_numpy(m.params[k]))), k
