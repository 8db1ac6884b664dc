"""Ring 2: the CUDA kernel source compiled by the host C++ compiler and run on the CPU, compared with
the NumPy reference elementwise and inside the real time loop (device='host')."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.backend.numpy_backend import NumpyBackend
from gpu_lstm.gradcheck import lstm_gradient_check

# float32: a few ulp of unit-sized values (the NumPy path builds tanh from exp, the kernel uses tanhf)
TOL = {"float32": dict(rtol=2e-6, atol=1e-6), "float64": dict(rtol=1e-14, atol=1e-15)}
SHAPES = [(1, 1), (1, 7), (3, 33), (5, 67), (2, 128)]   # B = 1, H = 1, H not a multiple of 32



def _case(rng, B, H, dtype, scale):
    gates = (scale * rng.standard_normal((B, 4 * H))).astype(dtype)
    bias = rng.standard_normal(4 * H).astype(dtype)
    c_prev = rng.standard_normal((B, H)).astype(dtype)
    return gates, bias, c_prev


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B, H", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])   # 1e4: naive exp overflows in float32 and float64
@pytest.mark.parametrize("with_bias, with_peep", [(True, False), (False, False), (True, True)])
def test_cell_forward_matches_numpy(host_cls, dtype, B, H, scale, with_bias, with_peep):
    rng = np.random.default_rng(B * 1000 + H)
    gates, bias, c_prev = _case(rng, B, H, dtype, scale)
    bias = bias if with_bias else None
    peep = rng.standard_normal((3, H)).astype(dtype) if with_peep else None
    outs = {}
    for be in (NumpyBackend(dtype), host_cls(dtype)):
        g, c, h = gates.copy(), np.empty((B, H), dtype), np.empty((B, H), dtype)
        with np.errstate(under="ignore"):
            be.cell_forward(g, bias, peep, c_prev, c, h)
        outs[be.name] = (g, c, h)
    for ref, got in zip(outs["cpu"], outs["host"]):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B, H", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("with_peep, with_lengths", [(False, False), (True, False), (False, True), (True, True)])
def test_cell_backward_matches_numpy(host_cls, dtype, B, H, scale, with_peep, with_lengths):
    rng = np.random.default_rng(B * 7 + H)
    gates, bias, c_prev = _case(rng, B, H, dtype, scale)
    peep = rng.standard_normal((3, H)).astype(dtype) if with_peep else None
    ref_be = NumpyBackend(dtype)
    c, h = np.empty((B, H), dtype), np.empty((B, H), dtype)
    with np.errstate(under="ignore"):
        ref_be.cell_forward(gates, bias, peep, c_prev, c, h)   # activated gates, as the backward sees them
    dh = rng.standard_normal((B, H)).astype(dtype)
    carry = rng.standard_normal((B, H)).astype(dtype)
    lengths = rng.integers(1, 4, B).astype(np.int64) if with_lengths else None
    outs = {}
    for be in (ref_be, host_cls(dtype)):
        dgates, dc, dc_out = np.full((B, 4 * H), np.nan, dtype), carry.copy(), np.full((B, H), np.nan, dtype)
        be.cell_backward(gates, peep, c, c_prev, dh, dc, dgates, dc_out, lengths, 2)
        outs[be.name] = (dgates, dc, dc_out)
    for ref, got in zip(outs["cpu"], outs["host"]):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, **TOL[dtype])
    if with_lengths:   # padded rows (t = 2 >= length): no gradient, carry unchanged
        pad = lengths <= 2
        assert not outs["host"][0][pad].any()
        np.testing.assert_array_equal(outs["host"][1][pad], carry[pad])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("move", [False, True])
def test_seq_carry_matches_numpy(host_cls, dtype, move):
    rng = np.random.default_rng(11)
    lengths = np.array([1, 3, 2, 5, 3], dtype=np.int64)
    src, dst = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((5, 7)).astype(dtype)
    outs = []
    for be in (NumpyBackend(dtype), host_cls(dtype)):
        s, d = src.copy(), dst.copy()
        be.seq_carry(lengths, 3, s, d, move)
        outs.append((s, d))
    for ref, got in zip(*outs):
        np.testing.assert_array_equal(got, ref)
    pad = lengths <= 3
    np.testing.assert_array_equal(outs[1][1][~pad], dst[~pad])   # valid rows untouched
    if move:
        assert not outs[1][0][pad].any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, cols", [(1, 1), (0, 4), (37, 12), (300, 4)])
def test_sum_rows_accumulates_like_numpy(host_cls, dtype, rows, cols):
    rng = np.random.default_rng(rows + cols)
    x = rng.standard_normal((rows, cols)).astype(dtype)
    start = rng.standard_normal(cols).astype(dtype)
    ref, got = start.copy(), start.copy()
    NumpyBackend(dtype).sum_rows(x, ref)
    host_cls(dtype).sum_rows(x, got)
    np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == "float32" else 1e-13, atol=1e-6)


def test_wrong_layout_is_refused(host_cls):
    be = host_cls("float64")
    g = np.zeros((2, 8))
    with pytest.raises(ValueError, match="C-contiguous float64"):
        be.cell_forward(g, None, None, np.zeros((4, 2)).T, np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="C-contiguous float64"):
        be.cell_forward(g.astype(np.float32), None, None, np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-6)])
@pytest.mark.parametrize("L, batch_first", [(1, False), (3, False), (2, True)])
def test_time_loop_with_host_kernels_matches_numpy(host_cls, dtype, tol, L, batch_first):
    from gpu_lstm.compare import compare_paths
    rows = compare_paths(3, 5, L, T=6, B=3, dtype=dtype, seed=L, device="host", reference="cpu",
                         batch_first=batch_first, backward_calls=2)
    assert len(rows) == 6 + 3 * L
    for name, err in rows:
        assert err < tol, f"{name}: {err:.2e}"


def test_gradient_check_through_host_kernels(host_cls):
    lstm = gl.LSTM(3, 4, 2, dtype="float64", device="host", seed=2)
    for name, err in lstm_gradient_check(lstm, T=5, B=2):
        assert err < 1e-6, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("accumulate", [True, False])
def test_zoneout_kernels_match_numpy(host_cls, dtype, training, accumulate):
    from gpu_lstm import philox
    rng = np.random.default_rng(5)
    shape = (3, 33)
    zm = philox.ZoneoutMask(123, 1, 1, philox.ZONEOUT_C, 7, 0.3, (4,) + shape)
    mask = zm[2] if training else None      # step 2: elements from offset 2 * 99, not a multiple of 4
    prev, cur, grad, into = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    outs = []
    for be in (NumpyBackend(dtype), host_cls(dtype)):
        out, g, i = np.empty(shape, dtype), grad.copy(), into.copy()
        be.zoneout_mix(mask, 0.3, prev, cur, out)
        be.zoneout_split(mask, 0.3, g, i, accumulate)
        outs.append((out, g, i))
    for ref, got in zip(*outs):
        np.testing.assert_array_equal(got, ref)           # same expression, d in {0, 1}: bitwise
    d = zm.array(dtype)[2] if training else dtype_type(dtype)(0.3)
    if training:
        assert 0 < d.mean() < 1
    np.testing.assert_allclose(outs[1][0], d * prev + (1 - d) * cur, **TOL[dtype])
    np.testing.assert_allclose(outs[1][2], (into if accumulate else 0) + d * grad, **TOL[dtype])


def dtype_type(dtype):
    return np.dtype(dtype).type


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.93])
def test_dropout_kernel_matches_numpy_bitwise(host_cls, dtype, p):
    from gpu_lstm import philox
    shape = (5, 3, 37)
    mask = philox.DropoutMask(99, 2, 3, p, shape, dtype)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    ref, got = np.empty_like(x), np.empty_like(x)
    NumpyBackend(dtype).dropout(mask, x, ref)
    host_cls(dtype).dropout(mask, x, got)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, x * mask.array())          # the materialised mask is the one used
    inplace = x.copy()
    host_cls(dtype).dropout(mask, inplace, inplace)               # the backward works in place
    np.testing.assert_array_equal(inplace, ref)


def _fixed_order_sum(x, y, chunk, start):
    """The documented order of cuda/reduce_kernels.cuh, in NumPy: each chunk summed row by row, then
    the chunk sums added in chunk order onto ``start``."""
    terms = x if y is None else x * y
    partials = []
    for r0 in range(0, len(terms), chunk):
        s = np.zeros(terms.shape[1], terms.dtype)
        for row in terms[r0:r0 + chunk]:
            s = s + row
        partials.append(s)
    total = np.zeros(terms.shape[1], terms.dtype)
    for p in partials:
        total = total + p
    return start + total


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, cols", [(1, 1), (5, 3), (640, 2048), (6400, 37), (1000, 1)])
def test_two_level_sum_rows_is_the_documented_fixed_order(host_cls, dtype, rows, cols):
    from gpu_lstm.backend import reduce
    rng = np.random.default_rng(rows * 3 + cols)
    x = rng.standard_normal((rows, cols)).astype(dtype)
    start = rng.standard_normal(cols).astype(dtype)
    got = start.copy()
    host_cls(dtype).sum_rows(x, got)
    chunk = reduce.row_chunk(rows, cols)
    assert 1 <= chunk <= max(rows, 1) and reduce.num_chunks(rows, chunk) * cols <= max(reduce.TARGET_THREADS, cols)
    np.testing.assert_array_equal(got, _fixed_order_sum(x, None, chunk, start))   # bitwise
    ref = start.copy()
    NumpyBackend(dtype).sum_rows(x, ref)
    # both are sums of `rows` terms of size ~1: error bound ~ rows * eps * sqrt(rows)-ish; generous
    np.testing.assert_allclose(got, ref, rtol=0, atol=(2e-4 if dtype == "float32" else 1e-11) * np.sqrt(rows))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_peephole_sum_matches_numpy(host_cls, dtype):
    from gpu_lstm.backend import reduce
    rng = np.random.default_rng(8)
    TB, H = 777, 13
    dg = rng.standard_normal((TB, 4 * H)).astype(dtype)
    cells = rng.standard_normal((TB, H)).astype(dtype)
    for col0 in (0, H, 3 * H):
        start = rng.standard_normal(H).astype(dtype)
        got, ref = start.copy(), start.copy()
        host_cls(dtype).sum_rows_prod(dg, col0, cells, got)
        NumpyBackend(dtype).sum_rows_prod(dg, col0, cells, ref)
        np.testing.assert_allclose(got, ref, rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-4 if dtype == "float32" else 1e-12)
        exact = _fixed_order_sum(dg[:, col0:col0 + H], cells, reduce.row_chunk(TB, H), start)
        np.testing.assert_array_equal(got, exact)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, V, scale", [(7, 65, 1.0), (5, 65, 300.0), (3, 50000, 1.0), (2, 50000, 40.0), (4, 1, 1.0)])
def test_softmax_xent_kernel_matches_numpy(host_cls, dtype, rows, V, scale):
    """The block-per-row kernel run with one thread (the online max/sum pass in order) against the
    NumPy reference, at a char-model V and a word-model V, with large logits."""
    rng = np.random.default_rng(V + rows)
    logits = (scale * rng.standard_normal((rows, V))).astype(dtype)
    targets = rng.integers(0, V, rows).astype(np.int64)
    targets[0] = -100
    inv = np.array(1.0 / (rows - 1), dtype=dtype)
    outs = []
    for be in (NumpyBackend(dtype), host_cls(dtype)):
        loss, grad = np.full(rows, np.nan, dtype), np.full((rows, V), np.nan, dtype)
        with np.errstate(under="ignore"):
            be.softmax_xent(logits, targets, -100, inv, loss, grad)
        outs.append((loss, grad))
    (l_ref, g_ref), (l_got, g_got) = outs
    assert np.isfinite(l_got).all() and np.isfinite(g_got).all()
    assert l_got[0] == 0 and not g_got[0].any()                       # ignored row
    # float32: the online sum over V terms rounds differently from NumPy's pairwise sum
    rtol = {"float32": 1e-5 if V < 1000 else 5e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(l_got, l_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(g_got, g_ref, rtol=rtol, atol=rtol * float(inv) / V + 1e-30)
    np.testing.assert_allclose(g_got[1:].sum(axis=1), 0, atol=(1e-5 if dtype == "float32" else 1e-12))
