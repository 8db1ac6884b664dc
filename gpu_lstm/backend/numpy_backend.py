"""The reference backend: explicit NumPy, one line per equation."""

import contextlib

import numpy as np

from ..gates import GATE_INDEX


def _sigmoid(z):
    """Stable logistic: 0.5 tanh(z/2) + 0.5 never overflows, and costs one transcendental."""
    return 0.5 * np.tanh(0.5 * z) + 0.5


class NumpyBackend:
    name = "cpu"
    xp = np

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._affine = {}   # H -> (scale, shift) over the 4H gate axis, see cell_forward

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
        A, B = (a.T if trans_a else a), (b.T if trans_b else b)
        if beta == 0.0:
            np.matmul(A, B, out=out)   # straight into out: no temporary
            return
        if beta != 1.0:
            out *= beta
        out += A @ B

    def _split(self, gates):
        H = gates.shape[-1] // 4
        return [gates[..., GATE_INDEX[n] * H:(GATE_INDEX[n] + 1) * H] for n in "ifgo"]

    def _gate_affine(self, H):
        """Per-column (scale, shift) with act = shift + scale * tanh(scale * z) for all four gates:
        scale 1/2, shift 1/2 gives sigma(z) = 1/2 + 1/2 tanh(z/2) for i, f, o; scale 1, shift 0
        gives tanh(z) for g. One tanh over the whole (B, 4H) slice instead of four passes."""
        if H not in self._affine:
            scale = np.full(4 * H, 0.5, dtype=self.dtype)
            shift = np.full(4 * H, 0.5, dtype=self.dtype)
            g = slice(GATE_INDEX["g"] * H, (GATE_INDEX["g"] + 1) * H)
            scale[g], shift[g] = 1.0, 0.0
            self._affine[H] = (scale, shift)
        return self._affine[H]

    def cell_forward(self, gates, bias, c_prev, c, h):
        # gates: (B, 4H) pre-activations without bias in, activated i, f, g, o out (in place)
        scale, shift = self._gate_affine(c.shape[-1])
        if bias is not None:
            gates += bias
        gates *= scale
        np.tanh(gates, out=gates)
        gates *= scale
        gates += shift                       # eqs. (1)-(4): i, f, o = sigma(z), g = tanh(z)
        i, f, g, o = self._split(gates)
        np.multiply(g, i, out=c)
        c += c_prev * f                      # eq. (5)
        np.tanh(c, out=h)
        h *= o                               # eq. (6)

    def cell_backward(self, gates, c, c_prev, dh, dc_carry, dgates):
        i, f, g, o = self._split(gates)
        dzi, dzf, dzg, dzo = self._split(dgates)
        tc = np.tanh(c)
        np.multiply(dh, tc, out=dzo)
        dzo *= o * (1 - o)                   # eq. (17) times sigma'
        tc *= tc
        np.subtract(1, tc, out=tc)
        tc *= o
        tc *= dh
        dc = tc
        dc += dc_carry                       # eq. (16); dc_carry = delta-c(t+1) f(t+1)
        np.multiply(dc, c_prev, out=dzf)
        dzf *= f * (1 - f)                   # eq. (18)
        np.multiply(dc, g, out=dzi)
        dzi *= i * (1 - i)                   # eq. (19)
        np.multiply(dc, i, out=dzg)
        dzg *= 1 - g * g                     # eq. (20) times tanh'
        np.multiply(dc, f, out=dc_carry)     # second term of eq. (16) for step t-1

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
