"""Row-major GEMM expressed as a column-major cuBLAS call. Pure arithmetic on shapes and strides, so
it is tested on the CPU against an emulation of cuBLAS's column-major semantics (tests/test_blas_mapping.py).

cuBLAS is column-major. A row-major (r, c) matrix with leading dimension ld is, read column-major, its
transpose (c, r) with the same ld. So row-major C = op(A) op(B), (M, N), is column-major
C^T = op(B)^T op(A)^T, (N, M): call gemm with the operands swapped, m = N, n = M, and each operand's
op flag kept as given (B un-transposed row-major is already B^T column-major).
"""

OP_N, OP_T = 0, 1   # cublasOperation_t values CUBLAS_OP_N, CUBLAS_OP_T


def leading_dim(name, shape, strides, itemsize):
    """Row-major leading dimension of a 2-D array, or raise if its rows are not unit-stride."""
    rows, cols = shape
    if cols > 1 and strides[1] != itemsize:
        raise ValueError(f"{name}: GEMM operands need unit stride along the last axis, got strides {strides}")
    if rows <= 1:
        return max(cols, 1)
    if strides[0] % itemsize or strides[0] // itemsize < max(cols, 1):
        raise ValueError(f"{name}: unsupported row stride {strides[0]} for shape {shape}")
    return strides[0] // itemsize


def gemm_shapes(a_shape, b_shape, trans_a, trans_b):
    """(M, N, K) of op(a) @ op(b), or raise on mismatched inner dimensions."""
    M, K = (a_shape[1], a_shape[0]) if trans_a else a_shape
    K2, N = (b_shape[1], b_shape[0]) if trans_b else b_shape
    if K != K2:
        raise ValueError(f"gemm: inner dimensions differ: op(a) is ({M}, {K}), op(b) is ({K2}, {N})")
    return M, N, K


def colmajor_args(M, N, K, lda_row, ldb_row, ldc_row, trans_a, trans_b):
    """Arguments (transa, transb, m, n, k, first operand, lda, second operand, ldb, ldc) of the
    column-major call; 'first'/'second' are 'b'/'a', the swapped operands."""
    return (OP_T if trans_b else OP_N, OP_T if trans_a else OP_N, N, M, K, "b", ldb_row, "a", lda_row, ldc_row)
