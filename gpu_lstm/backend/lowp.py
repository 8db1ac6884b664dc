"""Low precision (bfloat16, float16): dtype helpers and the NumPy rounding reference.

A low-precision model stores its activations, saved gates, parameters (the GEMM operands) and their
gradients' GEMM inputs in a 16-bit type, and computes everything in float32 (docs/precision.md):

* GEMM: operands in the storage type, products accumulated in float32, ``alpha op(A) op(B) + beta C``
  formed in float32 and rounded ONCE to the output's type (cuBLAS ``cublasGemmEx`` with compute type
  ``CUBLAS_COMPUTE_32F``). The reference upcasts the operands (exactly) and uses float32 matmul; the
  order of the float32 additions differs from cuBLAS's, so GPU-vs-CPU comparisons are tolerances.
* Elementwise kernels: load (exact widening) -> float32 maths -> one rounding per stored value.
  The reference runs the float32 NumPy backend on widened copies and rounds its outputs once.
* Kept in float32 ("wide", the kernels' ``gl_acc_t<T>``): the cell state c(t) and its backward carry
  delta-c, the parameter gradients, the loss rows, and the optimizer's master weights.

bfloat16 arrays on the CPU are ``ml_dtypes.bfloat16`` (NumPy has no bfloat16; JAX uses ml_dtypes);
float16 is NumPy's own. ``import gpu_lstm`` and float32/float64 models never import ml_dtypes.
"""

import numpy as np

from .numpy_backend import NumpyBackend

LOW_DTYPES = ("bfloat16", "float16")
F32 = np.dtype(np.float32)


def ml_dtypes_module():
    """ml_dtypes, or ImportError naming the package to install."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("dtype='bfloat16' needs the ml_dtypes package (NumPy has no bfloat16): "
                          "pip install 'gpu_lstm[lowp]' or pip install ml_dtypes") from None
    return ml_dtypes


def dtype_of(name):
    """NumPy dtype for 'bfloat16' (ml_dtypes) or 'float16'."""
    if name == "bfloat16":
        return np.dtype(ml_dtypes_module().bfloat16)
    return np.dtype(name)


def is_low(dtype):
    return np.dtype(dtype).name in LOW_DTYPES


def wide(dtype):
    """The arithmetic/accumulation dtype of a storage dtype: float32 for the 16-bit types."""
    return F32 if is_low(dtype) else np.dtype(dtype)


def unit_roundoff(dtype):
    """u = 2^-(p) for a p+1-bit significand: bfloat16 2^-8, float16 2^-11, float32 2^-24."""
    return {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 2.0 ** -24,
            "float64": 2.0 ** -53}[np.dtype(dtype).name]


def _w(a):
    """A float32 copy (exact for 16-bit inputs) or the array itself when already float32; None stays."""
    if a is None:
        return None
    return a if a.dtype == F32 else a.astype(F32)


def _store(dst, src32):
    """dst[...] = src32 rounded to dst's type (nearest even), or a plain copy into a float32 dst."""
    if dst is not src32:
        dst[...] = src32 if dst.dtype == F32 else src32.astype(dst.dtype)


class LowPrecisionNumpyBackend(NumpyBackend):
    """The CPU reference for bfloat16/float16 models: every operation widens its inputs to float32,
    computes exactly what the float32 reference computes, and rounds each stored output once."""

    def __init__(self, dtype):
        super().__init__(dtype)
        if not is_low(self.dtype):
            raise TypeError(f"LowPrecisionNumpyBackend: expected bfloat16 or float16, got {self.dtype.name}")
        self.wide = F32
        self._f = NumpyBackend(F32)   # the float32 maths

    def describe(self):
        return f"CPU (NumPy {np.__version__}, {self.dtype.name} storage, float32 arithmetic)"

    def gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
        """out = op(a) @ op(b) + beta out in float32 (operands widened exactly), rounded once to out's type."""
        A, B = _w(a), _w(b)
        A, B = (A.T if trans_a else A), (B.T if trans_b else B)
        r = A @ B
        if beta != 0.0:
            r += np.float32(beta) * _w(out)
        _store(out, r)

    def cell_forward(self, gates, bias, peep, c_prev, c, h):
        g, h32 = _w(gates).copy() if gates.dtype == F32 else _w(gates), np.empty(h.shape, F32)
        self._f.cell_forward(g, _w(bias), _w(peep), c_prev, c, h32)   # c, c_prev are float32
        _store(gates, g)
        _store(h, h32)

    def cell_backward(self, gates, peep, c, c_prev, dh, dc_carry, dgates, dc_out=None, lengths=None, t=0):
        dg = np.empty(dgates.shape, F32)
        self._f.cell_backward(_w(gates), _w(peep), c, c_prev, _w(dh), dc_carry, dg, dc_out, lengths, t)
        _store(dgates, dg)

    def zoneout_mix(self, mask, z, prev, cur, out):
        o = np.empty(out.shape, F32)
        self._f.zoneout_mix(mask, z, _w(prev), _w(cur), o)
        _store(out, o)

    def zoneout_split(self, mask, z, grad, into, accumulate):
        g, i = _w(grad).copy(), _w(into).copy()
        self._f.zoneout_split(mask, z, g, i, accumulate)
        _store(grad, g)
        _store(into, i)

    def dropout(self, mask, x, out):
        o = np.empty(out.shape, F32)
        self._f.dropout(mask, _w(x), o)
        _store(out, o)

    def sum_rows(self, x, out):
        o = _w(out).copy()
        self._f.sum_rows(_w(x), o)
        _store(out, o)

    def sum_rows_prod(self, x, x_col0, y, out):
        o = _w(out).copy()
        self._f.sum_rows_prod(_w(x), x_col0, _w(y), o)
        _store(out, o)

    def softmax_xent(self, logits, targets, ignore_index, inv_count, loss_rows, grad):
        g, lr = np.empty(grad.shape, F32), np.empty(loss_rows.shape, F32)
        self._f.softmax_xent(_w(logits), targets, ignore_index, np.float32(inv_count), lr, g)
        _store(grad, g)
        _store(loss_rows, lr)

    def narrow_copy(self, src, dst):
        """dst = src (float32) rounded to dst's storage type: the low-precision parameter copies."""
        _store(dst, src)
