"""bfloat16 / float16 storage with float32 arithmetic (docs/precision.md), on the CPU.

Three levels:
1. the 16-bit conversions of cuda/lowp_types.cuh (host build) equal ml_dtypes / numpy.float16
   bitwise, exhaustively for 16 -> 32 and on every rounding boundary for 32 -> 16;
2. every host-built 16-bit kernel equals the NumPy rounding reference (gpu_lstm/backend/lowp.py) to
   at most ONE ulp of the storage type, and bitwise on the vast majority of elements. Why not always
   bitwise: both compute in float32 from the same stored inputs, but not with the same float32
   functions (the kernel calls glibc's expf/tanhf, the reference NumPy's exp and tanh as
   2 sigma(2x) - 1), so their float32 results differ by a few float32 ulps; rounding to 16 bits then
   gives the same value unless the two float32 values straddle a rounding boundary (a midpoint
   between two 16-bit neighbours), and then they differ by exactly one 16-bit ulp. The float32
   outputs (c, the delta-c carry, column sums) agree to a few float32 ulps of their terms;
3. a whole 16-bit model against a float64 model with the same (rounded) weights and inputs, with the
   tolerances derived in docs/precision.md ("Expected error").
"""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.backend import lowp

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = ("bfloat16", "float16")
U32 = 2.0 ** -24


def _dt(name):
    return lowp.dtype_of(name)


def _ulps(a, b):
    """Distance in units of the last place between two 16-bit arrays of the same type."""
    def key(x):
        u = np.ascontiguousarray(x).view(np.uint16).astype(np.int64)
        return np.where(u & 0x8000, -(u & 0x7FFF), u)
    return np.abs(key(a) - key(b))


def _assert_one_ulp(name, ref, got, max_fraction=0.01):
    d = _ulps(ref, got)
    assert d.max() <= 1, f"{name}: {d.max()} ulps apart"
    assert (d > 0).mean() <= max_fraction, f"{name}: {(d > 0).mean():.4f} of the elements differ"


@pytest.fixture(scope="module")
def lib():
    from cpu_kernel_support import unavailable
    from gpu_lstm.backend import host_backend
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    return host_backend.load_library()


@pytest.mark.parametrize("name", DTYPES)
def test_conversions_are_bit_exact(lib, name):
    dt = _dt(name)
    short = "bf16" if name == "bfloat16" else "half"
    bits = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    getattr(lib, f"gl_host_from_{short}")(65536, bits.ctypes.data, out.ctypes.data)
    ref = bits.view(dt).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    # float32 -> 16 bit: every representable value, its float32 neighbours, every midpoint (the ties
    # that round to even), plus random bit patterns (subnormals, overflow, NaN, inf included).
    fin = ref[np.isfinite(ref)]
    with np.errstate(all="ignore"):
        mids = ((fin[:-1].astype(np.float64) + fin[1:]) / 2).astype(np.float32)
        x = np.concatenate([fin, np.nextafter(fin, np.float32(np.inf)), np.nextafter(fin, np.float32(-np.inf)),
                            mids, np.nextafter(mids, np.float32(0)),
                            np.random.default_rng(0).integers(0, 2 ** 32, 300_000, dtype=np.uint64)
                            .astype(np.uint32).view(np.float32),
                            np.array([np.inf, -np.inf, np.nan, 65504, 65520, 65519.996, 3.4e38], np.float32)])
        want = x.astype(dt).view(np.uint16)
    got = np.empty(x.size, np.uint16)
    getattr(lib, f"gl_host_to_{short}")(x.size, x.ctypes.data, got.ctypes.data)
    isnan = np.isnan(x)
    assert np.array_equal(got[~isnan], want[~isnan])
    assert np.isnan(got[isnan].view(dt).astype(np.float32)).all()


def _backends(name):
    from gpu_lstm.backend.host_backend import LowPrecisionHostBackend
    from gpu_lstm.backend.lowp import LowPrecisionNumpyBackend
    return LowPrecisionNumpyBackend(_dt(name)), LowPrecisionHostBackend(_dt(name))


@pytest.mark.parametrize("name", DTYPES)
def test_cell_kernels_match_the_rounding_reference(lib, name):
    ref, host = _backends(name)
    D = ref.dtype
    rng = np.random.default_rng(1)
    B, H = 32, 128
    gates = (3 * rng.standard_normal((B, 4 * H))).astype(D)
    bias, peep = rng.standard_normal(4 * H).astype(D), (0.5 * rng.standard_normal((3, H))).astype(D)
    c_prev = (2 * rng.standard_normal((B, H))).astype(np.float32)
    outs = []
    for be in (ref, host):
        g, c, h = gates.copy(), np.empty((B, H), np.float32), np.empty((B, H), D)
        be.cell_forward(g, bias, peep, c_prev, c, h)
        outs.append((g, c, h))
    (g0, c0, h0), (g1, c1, h1) = outs
    assert g1.dtype == D and h1.dtype == D and c1.dtype == np.float32
    _assert_one_ulp("gates", g0, g1)
    _assert_one_ulp("h", h0, h1)
    # c = g i + c_prev f in float32 from float32 gates that differ by a few float32 ulps
    assert np.all(np.abs(c0 - c1) <= 16 * U32 * (1 + np.abs(c_prev)))

    dh = rng.standard_normal((B, H)).astype(D)
    carry = rng.standard_normal((B, H)).astype(np.float32)
    lengths = rng.integers(1, 5, B).astype(np.int64)
    outs = []
    for be in (ref, host):
        dc, dg, dco = carry.copy(), np.empty((B, 4 * H), D), np.empty((B, H), np.float32)
        be.cell_backward(g0, peep, c0, c_prev, dh, dc, dg, dco, lengths, 2)
        outs.append((dc, dg, dco))
    (a0, b0, e0), (a1, b1, e1) = outs
    _assert_one_ulp("dgates", b0, b1)
    scale = (1 + np.abs(dh.astype(np.float32)) + np.abs(carry)) * (1 + np.abs(peep.astype(np.float32)).max()) ** 2
    assert np.all(np.abs(a0 - a1) <= 16 * U32 * scale)
    assert np.all(np.abs(e0 - e1) <= 16 * U32 * scale)
    pad = lengths <= 2
    assert pad.any() and np.all(b1[pad].astype(np.float32) == 0) and np.array_equal(a1[pad], carry[pad])


@pytest.mark.parametrize("name", DTYPES)
def test_elementwise_and_reduction_kernels_match_the_rounding_reference(lib, name):
    from gpu_lstm import philox
    ref, host = _backends(name)
    D = ref.dtype
    rng = np.random.default_rng(2)
    n = (16, 64)
    prev, cur = rng.standard_normal(n).astype(D), rng.standard_normal(n).astype(D)
    mask = philox.ZoneoutMask(7, 0, 0, philox.ZONEOUT_H, 3, 0.3, (2,) + n)[1]
    for m, z in ((None, 0.3), (mask, 0.0)):
        outs = []
        for be in (ref, host):
            out = np.empty(n, D)
            be.zoneout_mix(m, z, prev, cur, out)
            g, into = cur.copy(), prev.copy()
            be.zoneout_split(m, z, g, into, True)
            outs.append((out, g, into))
        for k, what in enumerate(("mix", "split grad", "split into")):
            _assert_one_ulp(f"zoneout {what}", outs[0][k], outs[1][k])
    dmask = philox.DropoutMask(5, 1, 0, 0.3, n, np.float32)
    o0, o1 = np.empty(n, D), np.empty(n, D)
    ref.dropout(dmask, prev, o0)
    host.dropout(dmask, prev, o1)
    _assert_one_ulp("dropout", o0, o1)
    # padded-row carries: a copy, or one rounded addition; exact on both
    lengths = np.array([1, 3] * 8, np.int64)
    s0, d0, s1, d1 = prev.copy(), cur.copy(), prev.copy(), cur.copy()
    ref.seq_carry(lengths, 2, s0, d0, True)
    host.seq_carry(lengths, 2, s1, d1, True)
    assert np.array_equal(d0.view(np.uint16), d1.view(np.uint16)) and np.array_equal(s0.view(np.uint16), s1.view(np.uint16))
    # column sums into float32 (the bias / peephole gradients): float32 sums in different orders
    x = rng.standard_normal((700, 96)).astype(D)
    y = rng.standard_normal((700, 32)).astype(np.float32)
    bound = 700 * 2 * U32 * (np.abs(x.astype(np.float32)).sum(axis=0))
    r0, r1 = np.ones(96, np.float32), np.ones(96, np.float32)
    ref.sum_rows(x, r0)
    host.sum_rows(x, r1)
    assert np.all(np.abs(r0 - r1) <= bound)
    p0, p1 = np.zeros(32, np.float32), np.zeros(32, np.float32)
    ref.sum_rows_prod(x, 64, y, p0)
    host.sum_rows_prod(x, 64, y, p1)
    assert np.all(np.abs(p0 - p1) <= 700 * 2 * U32 * np.abs(x[:, 64:].astype(np.float32) * y).sum(axis=0))
    # softmax cross-entropy: float32 loss rows, 16-bit gradient
    logits = (4 * rng.standard_normal((40, 50))).astype(D)
    t = rng.integers(0, 50, 40).astype(np.int64)
    t[3] = -100
    outs = []
    for be in (ref, host):
        lr, g = np.empty(40, np.float32), np.empty((40, 50), D)
        be.softmax_xent(logits, t, -100, 1 / 39, lr, g)
        outs.append((lr, g))
    _assert_one_ulp("xent grad", outs[0][1], outs[1][1], max_fraction=0.02)
    assert np.allclose(outs[0][0], outs[1][0], rtol=0, atol=64 * U32 * (1 + np.abs(outs[0][0])))
    # the master -> storage copy: exact rounding on both
    src = rng.standard_normal(1000).astype(np.float32)
    n0, n1 = np.empty(1000, D), np.empty(1000, D)
    ref.narrow_copy(src, n0)
    host.narrow_copy(src, n1)
    assert np.array_equal(n0.view(np.uint16), n1.view(np.uint16))
    assert np.array_equal(n0.view(np.uint16), src.astype(D).view(np.uint16))


@pytest.mark.parametrize("name", DTYPES)
def test_plan_conversion_kernels_are_exact(lib, name):
    """widen_copy and add_rows (what a GPU bfloat16 plan converts and sums with, cuda/lstm_kernels.cu)
    built for the host: widening is exact (plain and one row broadcast over rows); add_rows is the
    float32 sum rounded once, as ml_dtypes/NumPy round it (and with the source rows reversed)."""
    D = _dt(name)
    sfx = {"bfloat16": "bf16", "float16": "f16"}[name]
    rng = np.random.default_rng(4)
    src = (3 * rng.standard_normal((5, 3, 7))).astype(np.float32).astype(D)
    out = np.full(src.shape, np.nan, np.float32)
    getattr(lib, f"gl_widen_copy_{sfx}")(src.size, 7, 7, src.ctypes.data, out.ctypes.data)
    assert np.array_equal(out, src.astype(np.float32))
    row = src[0, 0].copy()
    out2 = np.full((3, 7), np.nan, np.float32)
    getattr(lib, f"gl_widen_copy_{sfx}")(out2.size, 7, 0, row.ctypes.data, out2.ctypes.data)
    assert np.array_equal(out2, np.broadcast_to(row.astype(np.float32), (3, 7)))
    other = (3 * rng.standard_normal((5, 3, 7))).astype(np.float32).astype(D)
    for rev in (0, 1):
        dst = src.copy()
        getattr(lib, f"gl_add_rows_{sfx}")(dst.size, 3 * 7, rev, dst.ctypes.data, other.ctypes.data)
        want = (src.astype(np.float32) + (other[::-1] if rev else other).astype(np.float32)).astype(D)
        assert np.array_equal(dst.view(np.uint16), want.view(np.uint16)), rev


# ---- whole models against float64 -----------------------------------------------------------------
# Tolerances (docs/precision.md, "Expected error"): relative Frobenius norms. Each stored value carries
# a relative rounding error of at most u (u = 2^-8 bfloat16, 2^-11 float16). Along the forward path
# of y(t) a step rounds three times (x W^T stored, + h R^T stored, h stored); the cell state is float32
# and the float32 GEMM accumulation adds at most K u32 (K <= T B = 1600 here: 1e-4, below u/4 even for
# float16). The recurrence of these models is contractive (checked: the error at the last steps is
# no larger than 2x the error over the first steps), so per-step errors do not compound with T:
# first order, ||dy|| / ||y|| <= 3 u + K u32. The gradients add the backward's roundings (delta-h
# stored, the pre-activation gradients stored, and they read the stored gates and h: 5 in all):
# ||dG|| / ||G|| <= 5 u + K u32.
def _pair(name, H, B, T, I, seed=3, **kw):
    lo = gl.LSTM(I, H, dtype=name, device="cpu", seed=seed, **kw)
    hi = gl.LSTM(I, H, dtype="float64", device="cpu", seed=seed, **kw)
    hi.set_params({k: v.astype(np.float64) for k, v in lo.params.items()})   # the same, rounded weights
    return lo, hi


def _relf(a, b):
    a = np.asarray(a, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,kw", [((256, 16, 100, 32), {}),
                                      ((64, 4, 30, 8), dict(bidirectional=True, peephole=True, proj_size=32,
                                                            num_layers=2))])
def test_forward_and_gradients_against_float64(name, shape, kw):
    H, B, T, I = shape
    u = lowp.unit_roundoff(name)
    K = T * B
    lo, hi = _pair(name, H, B, T, I, **kw)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(lo.dtype)
    lengths = None if not kw else rng.integers(T // 2, T + 1, B)
    y, (hn, cn) = lo(x, lengths=lengths)
    y64, (hn64, cn64) = hi(x.astype(np.float64), lengths=lengths)
    assert y.dtype == lo.dtype and cn.dtype == lo.dtype
    dy = rng.standard_normal(y.shape).astype(lo.dtype)
    dx, _ = lo.backward(dy)
    dx64, _ = hi.backward(dy.astype(np.float64))
    tol_fwd, tol_bwd = 3 * u + K * U32, 5 * u + K * U32
    assert _relf(y, y64) <= tol_fwd, (_relf(y, y64), tol_fwd)
    assert _relf(hn, hn64) <= tol_fwd and _relf(cn, cn64) <= tol_fwd
    err_t = np.abs(y.astype(np.float64) - y64).max(axis=(1, 2))
    assert err_t[-5:].max() <= 2 * err_t[:10].max() + u, "error grows with T: the recurrence is not contractive"
    assert _relf(dx, dx64) <= tol_bwd
    for k in lo.grads:
        assert lo.grads[k].dtype == np.float32
        assert _relf(lo.grads[k], hi.grads[k]) <= tol_bwd, (k, _relf(lo.grads[k], hi.grads[k]), tol_bwd)
    # and the errors are those of the 16-bit type, not accidentally tiny (the rounding happens)
    assert _relf(y, y64) > u / 64


@pytest.mark.parametrize("name", DTYPES)
def test_host_kernels_model_matches_the_reference_model(lib, name):
    """The same model through the host-built 16-bit kernels and through the NumPy rounding
    reference: the 1-ulp kernel differences propagate, so this is a tolerance, of u (not 3 u)."""
    kw = dict(peephole=True, bidirectional=True)
    a = gl.LSTM(6, 32, dtype=name, device="cpu", seed=4, **kw)
    b = gl.LSTM(6, 32, dtype=name, device="host", seed=4, **kw)
    x = np.random.default_rng(0).standard_normal((20, 3, 6)).astype(a.dtype)
    ya, _ = a(x, lengths=[20, 13, 7])
    yb, _ = b(x, lengths=[20, 13, 7])
    a.backward(np.ones_like(ya))
    b.backward(np.ones_like(yb))
    u = lowp.unit_roundoff(name)
    assert _relf(yb, ya.astype(np.float64)) <= u
    for k in a.grads:
        assert _relf(b.grads[k], a.grads[k].astype(np.float64)) <= 2 * u, k


def test_bfloat16_needs_ml_dtypes_with_a_clear_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *args, **kw):
        if name == "ml_dtypes":
            raise ImportError("no ml_dtypes")
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="ml_dtypes"):
        gl.LSTM(3, 4, dtype="bfloat16", device="cpu")
    gl.LSTM(3, 4, dtype="float16", device="cpu")   # float16 is NumPy's own


def test_low_precision_options():
    m = gl.LSTM(3, 4, dtype="bfloat16", device="cpu")
    assert m.low_precision and m._algo == "plan"     # plans take every dtype (tests/test_plan_masks.py)
    assert gl.LSTM(3, 4, dtype="float16", device="cpu", algo="eager")._algo == "eager"
    for dtype, math in (("bfloat16", "default"), ("float16", "default"), ("float32", "tf32")):
        with pytest.raises(ValueError, match=r"algo='persistent': the persistent kernels run float32/float64"):
            gl.LSTM(3, 4, dtype=dtype, device="cpu", algo="persistent", math=math)
    with pytest.raises(ValueError, match="math='tf32'"):
        gl.LSTM(3, 4, dtype="bfloat16", device="cpu", math="tf32")
    with pytest.raises(TypeError, match="expected dtype bfloat16"):
        m(np.zeros((2, 1, 3), np.float32))


# ---- mixed-precision training ----------------------------------------------------------------------
def test_master_weights_keep_updates_below_a_bfloat16_ulp():
    from gpu_lstm.optim import SGD, MixedPrecision
    m = gl.LSTM(2, 4, dtype="bfloat16", device="cpu", seed=0)
    opt = MixedPrecision(SGD, m.params, m.grads, lr=1e-4)
    w0 = m.params["l0.W"].astype(np.float32)
    for g in m.grads.values():
        g[...] = 1.0
    for _ in range(200):      # each update 1e-4, far below half an ulp of |w| ~ 0.3 (2^-10 = 1e-3)
        assert opt.step()
    assert np.allclose(opt.master["l0.W"], w0 - 0.02, atol=1e-5)
    assert m.params["l0.W"].dtype == m.dtype
    assert np.array_equal(m.params["l0.W"].view(np.uint16), opt.master["l0.W"].astype(m.dtype).view(np.uint16))
    plain = gl.LSTM(2, 4, dtype="bfloat16", device="cpu", seed=0)
    p = plain.params["l0.W"]
    for _ in range(200):      # the same updates applied to the bfloat16 weights directly are lost
        p[...] = (p.astype(np.float32) - np.float32(1e-4)).astype(p.dtype)
    assert np.array_equal(p, w0.astype(p.dtype))


@pytest.mark.parametrize("device", ["cpu", "host"])
def test_bfloat16_training_loss_falls(device, lib):
    from gpu_lstm import tasks, training
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.losses import mse_loss
    model = SequenceModel(2, 16, 1, head="last", dtype="bfloat16", device=device, seed=0)
    opt = training.make_optimizer(model, "adam", 1e-2)
    rng = np.random.default_rng(0)
    x, y = tasks.adding_batch(np.random.default_rng(1), 20, 256, model.dtype)
    before = float(mse_loss(model(x)[0], y)[0])
    hist, _, _ = training.fit(model, opt, lambda s: (*tasks.adding_batch(rng, 20, 32, model.dtype), None),
                           mse_loss, 60, log_every=1000, stream=open("/dev/null", "w"))
    after = float(mse_loss(model(x)[0], y)[0])
    assert after < 0.5 * before, (before, after)
    assert all(v.dtype == np.float32 for v in opt.master.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the forced overflow is the point
def test_float16_loss_scaling_survives_a_forced_overflow():
    from gpu_lstm import tasks, training
    from gpu_lstm.losses import mse_loss
    from gpu_lstm.model import SequenceModel
    from gpu_lstm.optim import Adam, LossScaler, MixedPrecision
    model = SequenceModel(2, 16, 1, head="last", dtype="float16", device="cpu", seed=0)
    scaler = LossScaler(init_scale=2.0 ** 40, growth_interval=3)   # dpred * 2^40 overflows float16
    opt = MixedPrecision(Adam, model.params, model.grads, scaler, lr=1e-2)
    rng = np.random.default_rng(0)
    before = {k: v.copy() for k, v in model.params.items()}
    hist, _, _ = training.fit(model, opt, lambda s: (*tasks.adding_batch(rng, 20, 32, model.dtype), None),
                           mse_loss, 1, log_every=1000, stream=open("/dev/null", "w"))
    assert scaler.skipped_steps == 1 and scaler.scale == 2.0 ** 39          # skipped, shrunk
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())   # nothing applied
    assert opt.step_count == 0
    training.fit(model, opt, lambda s: (*tasks.adding_batch(rng, 20, 32, model.dtype), None),
              mse_loss, 40, log_every=1000, stream=open("/dev/null", "w"))
    assert scaler.scale < 2.0 ** 39 and scaler.skipped_steps > 1 and opt.step_count > 10
    for k, v in model.params.items():
        assert np.isfinite(v.astype(np.float32)).all() and np.isfinite(opt.master[k]).all(), k
    # clean steps grow the scale again
    n = scaler.clean_steps
    scaler.update(True)
    assert scaler.clean_steps == (n + 1) % 3


# ---- TF32 ------------------------------------------------------------------------------------------
def test_tf32_against_float64():
    """math='tf32' rounds every GEMM operand to 10 mantissa bits (u_tf32 = 2^-11 rounding, 2^-10 if
    the hardware truncates: we take 2^-10). A product of two rounded operands is off by <= 2 u_tf32
    relatively, and y's path runs two GEMMs per step (x W^T, h R^T) into a contractive recurrence:
    ||dy|| / ||y|| <= 4 u_tf32 + K u32; the gradients add the backward's two GEMMs per step (delta-h
    and dW/dR): 8 u_tf32 + K u32. Activations are float32."""
    H, B, T, I = 128, 8, 50, 16
    u, K = 2.0 ** -10, T * B
    m = gl.LSTM(I, H, dtype="float32", device="cpu", seed=5, math="tf32")
    plain = gl.LSTM(I, H, dtype="float32", device="cpu", seed=5)
    hi = gl.LSTM(I, H, dtype="float64", device="cpu", seed=5)
    hi.set_params({k: v.astype(np.float64) for k, v in m.params.items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    y, _ = m(x)
    y32, _ = plain(x)
    y64, _ = hi(x.astype(np.float64))
    m.backward(dy)
    hi.backward(dy.astype(np.float64))
    assert m.math == "tf32" and m._algo == "plan"
    assert _relf(y, y64) <= 4 * u + K * U32
    assert _relf(y, y64) > 10 * _relf(y32, y64)      # the TF32 rounding does happen
    for k in m.grads:
        assert _relf(m.grads[k], hi.grads[k]) <= 8 * u + K * U32, k


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_checkpoint_round_trip_is_bitwise(dtype, tmp_path):
    """.npz cannot hold bfloat16: its bits travel as uint16 and come back as bfloat16, so training
    resumes from exactly the saved weights and master weights."""
    from gpu_lstm import training
    from gpu_lstm.checkpoint import load_checkpoint, save_checkpoint
    from gpu_lstm.model import SequenceModel
    a = SequenceModel(2, 8, 1, head="last", dtype=dtype, device="cpu", seed=0)
    opt_a = training.make_optimizer(a, "adam", 1e-2)
    path = save_checkpoint(tmp_path / "c.npz", a, opt_a)
    b = SequenceModel(2, 8, 1, head="last", dtype=dtype, device="cpu", seed=1)
    opt_b = training.make_optimizer(b, "adam", 1e-2)
    load_checkpoint(path, b, opt_b)
    for k in a.params:
        assert b.params[k].dtype == a.params[k].dtype
        np.testing.assert_array_equal(b.params[k].view(np.uint16), a.params[k].view(np.uint16))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_plain_optimizers_refuse_16_bit_parameters_with_float32_gradients(dtype):
    """Adam/SGD straight on 16-bit parameters would keep 16-bit moments (float16's second moment
    underflows, eps = 1e-8 rounds to 0) and lose small updates: refused, pointing to MixedPrecision."""
    from gpu_lstm.optim import SGD, Adam
    m = gl.LSTM(3, 4, dtype=dtype, device="cpu", seed=0)
    for cls in (Adam, SGD):
        with pytest.raises(TypeError, match=r"params\['l0.W'\]: expected the dtype of its gradient \(float32\), "
                                            rf"got {dtype}; .*MixedPrecision"):
            cls(m.params, m.grads, lr=1e-3)


def test_loss_scaler_default_scale_is_not_a_float16_overflow():
    """2^16 is beyond float16's range (65504): scaling in float16 turned every dpred into Inf and
    skipped the first step after every start and every growth. The product is formed in float32 and
    rounded once."""
    from gpu_lstm.optim import LossScaler
    s = LossScaler()
    d = np.full((2, 3), 1e-3, np.float16)
    out = s.scale_grad(d)
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert out[0, 0] == np.float16(np.float32(np.float16(1e-3)) * np.float32(2 ** 16))
    assert s.unscale_({"a": np.ones(3, np.float32)}) is True
    assert s.unscale_({"a": np.ones(3, np.float32), "b": np.array([1.0, np.inf], np.float32)}) is False


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(init_scale=0.0), ValueError, r"init_scale: expected a finite number > 0, got 0.0"),
    (dict(init_scale=float("inf")), ValueError, r"init_scale: expected a finite number > 0, got inf"),
    (dict(growth_factor=1.0), ValueError, r"growth_factor: expected a finite number > 1, got 1.0"),
    (dict(growth_factor=float("nan")), ValueError, r"growth_factor: expected a finite number > 1, got nan"),
    (dict(growth_factor="2"), TypeError, r"growth_factor: expected a real number"),
    (dict(backoff_factor=1.0), ValueError, r"backoff_factor: expected a number in \(0, 1\), got 1.0"),
    (dict(backoff_factor=0.0), ValueError, r"backoff_factor: expected a number in \(0, 1\), got 0.0"),
    (dict(min_scale=0.0), ValueError, r"min_scale: expected a finite number > 0, got 0.0"),
    (dict(init_scale=1.0, min_scale=2.0), ValueError,
     r"min_scale: expected at most init_scale \(1.0\), got 2.0"),
    (dict(growth_interval=0), ValueError, r"growth_interval: expected a positive integer, got 0"),
])
def test_loss_scaler_options_are_checked(kwargs, error, match):
    """Only init_scale and growth_interval were checked (and init_scale=0 passed): a growth factor <= 1
    or NaN, a backoff factor >= 1 (the scale never shrinks on overflow, every step is skipped) or a
    min_scale above the scale (a backoff that grows it) were accepted silently."""
    from gpu_lstm.optim import LossScaler
    with pytest.raises(error, match=match):
        LossScaler(**kwargs)


@pytest.mark.parametrize("sd, error, match", [
    ({"clean_steps": 0}, ValueError, r"sd: expected the keys 'scale' and 'clean_steps'"),
    ([1.0, 0], TypeError, r"sd: expected a dict"),
    ({"scale": 0.0, "clean_steps": 0}, ValueError, r"sd\['scale'\]: expected a finite number > 0, got 0.0"),
    ({"scale": 2.0, "clean_steps": -1}, ValueError, r"sd\['clean_steps'\]: expected an int >= 0, got -1"),
    ({"scale": 2.0, "clean_steps": 1.5}, TypeError, r"sd\['clean_steps'\]: expected an int >= 0"),
    ({"scale": 2.0, "clean_steps": 0, "skipped_steps": -2}, ValueError,
     r"sd\['skipped_steps'\]: expected an int >= 0, got -2"),
])
def test_loss_scaler_load_state_dict_checks_everything_before_writing(sd, error, match):
    from gpu_lstm.optim import LossScaler
    s = LossScaler(init_scale=2.0 ** 10)
    before = s.state_dict()
    with pytest.raises(error, match=match):
        s.load_state_dict(sd)
    assert s.state_dict() == before
    s.load_state_dict({"scale": 8.0, "clean_steps": 3, "skipped_steps": 1})
    assert s.state_dict() == {"scale": 8.0, "clean_steps": 3, "skipped_steps": 1}


@pytest.mark.parametrize("name", DTYPES)
def test_return_cells_of_a_16_bit_model_are_float32(name):
    """cells are the float32 cell states the model computes with, not rounded to 16 bits: bitwise the
    tape's c (zero past each sample's length), in both directions."""
    T, B, H = 5, 2, 4
    m = gl.LSTM(3, H, dtype=name, device="cpu", seed=0, bidirectional=True)
    x = (np.random.default_rng(0).standard_normal((T, B, 3)) * 3).astype(m.dtype)
    lengths = np.array([T, 3])
    cells = m(x, lengths=lengths, return_cells=True)[2]
    assert cells.dtype == np.float32 and cells.shape == (T, B, 2 * H)
    valid = (np.arange(T)[:, None] < lengths)[:, :, None]
    np.testing.assert_array_equal(cells[:, :, :H], m._saved.dirs[0][0].c[1:] * valid)
    rev = m._saved.dirs[0][1].c[1:][m._saved.rev_index]
    np.testing.assert_array_equal(cells[:, :, H:], rev * valid)


def test_bfloat16_torch_state_dict_round_trip():
    """bfloat16 models to and from torch.nn.LSTM state dicts (bfloat16 through int16 views): the
    tensors hold the model's values; a torch bfloat16 LSTM's weights load bitwise and its two biases
    are summed in float64 (exact) and rounded once."""
    torch = pytest.importorskip("torch")
    m = gl.LSTM(3, 4, dtype="bfloat16", device="cpu", seed=0)
    sd = m.torch_state_dict()
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert torch.equal(sd["weight_ih_l0"].view(torch.int16), torch.from_numpy(m.params["l0.W"].view(np.int16)))
    torch.manual_seed(0)
    t = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    t.load_state_dict(sd)                                   # torch takes ours
    m2 = gl.LSTM(3, 4, dtype="bfloat16", device="cpu", seed=1)
    m2.load_torch_state_dict(t.state_dict())                # and we take torch's
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k].view(np.uint16), m.params[k].view(np.uint16))
    t2 = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    m2.load_torch_state_dict(t2.state_dict())
    np.testing.assert_array_equal(m2.params["l0.W"].view(np.int16), t2.weight_ih_l0.detach().view(torch.int16).numpy())
    b64 = t2.bias_ih_l0.detach().double().numpy() + t2.bias_hh_l0.detach().double().numpy()
    np.testing.assert_array_equal(m2.params["l0.b"].view(np.uint16), b64.astype(m2.dtype).view(np.uint16))


@pytest.mark.parametrize("name", DTYPES)
def test_set_params_takes_16_bit_values(name):
    """Values already in the model's 16-bit dtype (ml_dtypes.bfloat16 is real, though not of NumPy kind
    'f') are copied as they are."""
    m = gl.LSTM(1, 1, dtype=name, device="cpu", seed=0)
    v = np.array([0.5, -1.25, 3.0, 2.0 ** -3], dtype=m.dtype)
    m.set_params({"l0.b": v})
    np.testing.assert_array_equal(m.params["l0.b"].view(np.uint16), v.view(np.uint16))


def test_mse_loss_mask_dtype_errors_name_the_mask():
    """A mask that is not real numbers is a TypeError saying so (not a shape error, and not a complex
    mask silently cast to its real part); bool masks count as 1/0."""
    from gpu_lstm.losses import mse_loss
    pred = np.ones((4, 2, 3), _dt("bfloat16"))
    tgt = np.zeros((4, 2, 3), _dt("bfloat16"))
    with pytest.raises(TypeError, match="mask: expected bool, integer or real floating values.*complex64"):
        mse_loss(pred, tgt, mask=np.ones((4, 2, 1), np.complex64))
    mask = np.ones((4, 2, 1), bool)
    mask[2:] = False
    loss, _ = mse_loss(pred, tgt, mask=mask)
    assert float(loss) == 1.0


def test_mixed_precision_refuses_16_bit_parameters_it_could_not_refresh():
    """A read-only 16-bit parameter passed, and step() failed after the master weights, the other
    parameters and the step count were updated."""
    from gpu_lstm.optim import Adam, MixedPrecision
    ro = np.ones(3, np.float16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['b'\]: expected a writable array"):
        MixedPrecision(Adam, {"a": np.ones(3, np.float16), "b": ro},
                       {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}, lr=0.1)
