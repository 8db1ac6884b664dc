"""The row-major -> column-major cuBLAS mapping, checked against an emulation of cuBLAS semantics."""

import itertools

import numpy as np
import pytest

from gpu_lstm.backend import blas


def colmajor_view(flat, rows, cols, ld):
    """The (rows, cols) column-major matrix with leading dimension ld stored in ``flat``."""
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols),
                                           strides=(flat.itemsize, ld * flat.itemsize), writeable=False)


def emulate_cublas_gemm(transa, transb, m, n, k, A, lda, B, ldb, beta, C, ldc):
    """C := op(A) op(B) + beta C with cuBLAS's column-major conventions on flat buffers."""
    opA = colmajor_view(A, k, m, lda).T if transa == blas.OP_T else colmajor_view(A, m, k, lda)
    opB = colmajor_view(B, n, k, ldb).T if transb == blas.OP_T else colmajor_view(B, k, n, ldb)
    Cm = np.lib.stride_tricks.as_strided(C, shape=(m, n), strides=(C.itemsize, ldc * C.itemsize))
    Cm[...] = opA @ opB + beta * Cm


@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (3, 5, 2), (7, 4, 9), (1, 8, 3)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_mapping_matches_row_major_product(trans_a, trans_b, M, N, K, beta):
    rng = np.random.default_rng(M * 100 + N * 10 + K)
    a = rng.standard_normal((K, M) if trans_a else (M, K))
    b = rng.standard_normal((N, K) if trans_b else (K, N))
    out = rng.standard_normal((M, N))
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + beta * out
    assert blas.gemm_shapes(a.shape, b.shape, trans_a, trans_b) == (M, N, K)
    item = a.itemsize
    lda = blas.leading_dim("a", a.shape, a.strides, item)
    ldb = blas.leading_dim("b", b.shape, b.strides, item)
    ldc = blas.leading_dim("out", out.shape, out.strides, item)
    ta, tb, m, n, k, first, ld1, second, ld2, ldc = blas.colmajor_args(M, N, K, lda, ldb, ldc, trans_a, trans_b)
    ops = {"a": a, "b": b}
    emulate_cublas_gemm(ta, tb, m, n, k, ops[first].reshape(-1), ld1, ops[second].reshape(-1), ld2,
                        beta, out.reshape(-1), ldc)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


def test_time_slices_have_the_right_leading_dimension():
    gates = np.zeros((5, 3, 8))      # (T, B, 4H): gates[t] is a (B, 4H) block with ld = 4H
    assert blas.leading_dim("g", gates[2].shape, gates[2].strides, 8) == 8
    with pytest.raises(ValueError, match="unit stride"):
        blas.leading_dim("g", gates.T[0].shape, gates.T[0].strides, 8)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        blas.gemm_shapes((3, 4), (5, 6), False, False)
