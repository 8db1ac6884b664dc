"""The reference backend: explicit NumPy, one line per equation."""

import contextlib

import numpy as np

from ..gates import GATE_INDEX


def _sigmoid(z):
    # Stable logistic: exp is only taken of non-positive numbers, so no overflow for large |z|.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


class NumpyBackend:
    name = "cpu"
    xp = np

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    # ---- arrays -------------------------------------------------------------------------------
    def describe(self):
        return f"CPU (NumPy {np.__version__})"

    def empty(self, shape):
        return np.empty(shape, dtype=self.dtype)

    def zeros(self, shape):
        return np.zeros(shape, dtype=self.dtype)

    def asarray(self, name, value):
        """Accept NumPy arrays (or array-likes); a GPU array is an error on the CPU backend."""
        if hasattr(value, "__cuda_array_interface__"):
            raise TypeError(f"{name}: got a GPU array but the model is on the CPU; "
                            "use gpu_lstm.to_numpy(...) or build the model with device='gpu'")
        return np.asarray(value)

    def to_numpy(self, a):
        return np.asarray(a)

    def synchronize(self):
        pass

    def activate(self):
        """Context in which this backend's arrays are made (the GPU backend selects its device)."""
        return contextlib.nullcontext()

    # ---- the seam -----------------------------------------------------------------------------
    def gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
        """out = op(a) @ op(b) + beta * out, for 2-D arrays."""
        prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if beta == 0.0:
            out[...] = prod
            return
        if beta != 1.0:
            out *= beta
        out += prod

    def _split(self, gates):
        H = gates.shape[-1] // 4
        return [gates[..., GATE_INDEX[n] * H:(GATE_INDEX[n] + 1) * H] for n in "ifgo"]

    def cell_forward(self, gates, bias, c_prev, c, h):
        # gates: (B, 4H) pre-activations without bias in, activated i, f, g, o out
        if bias is not None:
            gates += bias
        zi, zf, zg, zo = self._split(gates)
        i = _sigmoid(zi)          # eq. (2)
        f = _sigmoid(zf)          # eq. (1)
        g = np.tanh(zg)           # eq. (4)
        o = _sigmoid(zo)          # eq. (3)
        c[...] = g * i + c_prev * f   # eq. (5)
        h[...] = o * np.tanh(c)       # eq. (6)
        zi[...], zf[...], zg[...], zo[...] = i, f, g, o

    def cell_backward(self, gates, c, c_prev, dh, dc_carry, dgates):
        i, f, g, o = self._split(gates)
        dzi, dzf, dzg, dzo = self._split(dgates)
        tc = np.tanh(c)
        dc = dh * o * (1 - tc * tc) + dc_carry   # eq. (16); dc_carry = delta-c(t+1) f(t+1)
        dzo[...] = (dh * tc) * o * (1 - o)       # eq. (17) times sigma'
        dzf[...] = (dc * c_prev) * f * (1 - f)   # eq. (18)
        dzi[...] = (dc * g) * i * (1 - i)        # eq. (19)
        dzg[...] = (dc * i) * (1 - g * g)        # eq. (20) times tanh'
        dc_carry[...] = dc * f                   # second term of eq. (16) for step t-1

    def sum_rows(self, x, out):
        out += x.sum(axis=0)

    def softmax_xent(self, logits, targets, ignore_index, inv_count, loss_rows, grad):
        """Row-wise softmax cross-entropy (see cuda/lstm_kernels.cu): loss_rows and grad are outputs."""
        z = logits - logits.max(axis=1, keepdims=True)      # (rows, V), <= 0: exp cannot overflow
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        valid = targets != ignore_index                      # (rows,)
        safe_t = np.where(valid, targets, 0)
        rows = np.arange(len(targets))
        grad[...] = e / s
        grad[rows, safe_t] -= 1
        grad *= inv_count
        grad[~valid] = 0
        loss_rows[...] = np.where(valid, np.log(s[:, 0]) - z[rows, safe_t], 0)
