"""The reference backend: explicit NumPy, one line per equation."""

import contextlib
import functools

import numpy as np

from ..gates import GATE_INDEX


def tf32_round(a):
    """float32 values rounded to TF32 (1 + 8 + 10 bits, kept in float32): to nearest, ties away from
    zero, as PTX cvt.rna.tf32.f32. Whether cuBLAS's TF32 path rounds this way or truncates is not
    documented (uncertain); the tolerances (docs/precision.md) use u = 2^-10, which covers both."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    finite = (u & 0x7F800000) != 0x7F800000
    r = np.where(finite, (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000), u)
    return r.astype(np.uint32).view(np.float32)


def _call(be, name, args):
    return getattr(be, name)(*args)


class NumpyBackend:
    name = "cpu"
    xp = np

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.wide = self.dtype   # cell state / gradient dtype; float32 for 16-bit storage (lowp.py)
        self._affine = {}   # H -> (scale, shift) over the 4H gate axis, see cell_forward

    # ---- arrays -------------------------------------------------------------------------------
    def describe(self):
        return f"CPU (NumPy {np.__version__})"

    def empty(self, shape, dtype=None):
        return np.empty(shape, dtype=self.dtype if dtype is None else dtype)

    def zeros(self, shape, dtype=None):
        return np.zeros(shape, dtype=self.dtype if dtype is None else dtype)

    # Device-array dtype helpers shared with the GPU backend, whose bfloat16 arrays are uint16 bit
    # patterns (cupy_backend.CupyBackend.storage); on the CPU every array holds its own dtype.
    @property
    def storage(self):
        return self.dtype

    def device_dtype(self, dtype=None):
        return self.dtype if dtype is None else np.dtype(dtype)

    def dtype_of(self, a):
        return a.dtype

    def astype(self, a, dtype):
        return a.astype(dtype, copy=False)

    def add_into(self, dst, src):
        dst += src

    def asarray(self, name, value, copy=True):
        """Accept NumPy arrays (or array-likes); a GPU array is an error on the CPU backend. With
        ``copy=False`` only a NumPy array is accepted (an array-like would be converted into new
        memory, not used in place)."""
        if hasattr(value, "__cuda_array_interface__"):
            raise TypeError(f"{name}: got a GPU array but the model is on the CPU; "
                            "use gpu_lstm.to_numpy(...) or build the model with device='gpu'")
        if not copy and not isinstance(value, np.ndarray):
            raise TypeError(f"{name}: expected a NumPy array, used in place; got {type(value).__name__}, "
                            "which would be converted into new memory")
        return np.asarray(value)

    def to_numpy(self, a):
        return np.asarray(a)

    def is_device_array(self, value):
        """Whether ``value`` is GPU memory (which this backend refuses); host data otherwise."""
        return hasattr(value, "__cuda_array_interface__")

    def activate(self):
        """Context in which this backend's arrays are made (the GPU backend selects its device)."""
        return contextlib.nullcontext()

    # ---- plans (gpu_lstm/plan.py): operations prepared once, replayed ----------------------------
    def prepare(self, name, *args):
        """``name(*args)`` as a zero-argument callable over the given (precomputed) views. The method
        is looked up when called, so the plan runs whatever the backend's method is then."""
        return functools.partial(_call, self, name, args)

    def prepare_gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0, lane=0):
        """(``lane`` is for backends that run a plan on two streams; here every lane runs in order.)"""
        return functools.partial(_call, self, "gemm", (a, b, out, trans_a, trans_b, beta))

    def run_prepared(self, ops):
        from ..plan import replay
        replay(ops)

    def counter(self):
        """A plan's mask call counter: one int64 that the prepared mask operations read when they run."""
        return np.zeros((1,), dtype=np.int64)

    def set_counter(self, counter, value):
        counter[0] = value

    # ---- math mode ------------------------------------------------------------------------------
    math = "default"

    def set_math(self, math):
        """'tf32' (float32 only): GEMM operands rounded to TF32 (10 explicit mantissa bits) before a
        float32 matmul, emulating cuBLAS's CUBLAS_COMPUTE_32F_FAST_TF32 (see tf32_round)."""
        if math == "tf32" and self.dtype != np.float32:
            raise ValueError(f"math='tf32' needs float32, got {self.dtype.name}")
        self.math = math

    # ---- the seam -----------------------------------------------------------------------------
    def gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
        """out = op(a) @ op(b) + beta * out, for 2-D arrays."""
        if self.math == "tf32":
            a, b = tf32_round(a), tf32_round(b)
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
        """Per-column constants that give all four nonlinearities from ONE exp over (B, 4H):
        sigma(z) = 1 / (1 + exp(-z)) for i, f, o and tanh(z) = 2 sigma(2z) - 1 for g. So the slice is
        multiplied by -k (k = 1, or 2 for g), exponentiated, turned into 1 / (1 + e), then scaled by
        k and shifted by (1 - k). exp is the one transcendental NumPy vectorises well everywhere
        (np.tanh is 2x slower than np.exp on some CPUs), and exp(-z) = inf for very negative z
        gives exactly 0, so no special cases are needed."""
        if H not in self._affine:
            k = np.ones(4 * H, dtype=self.dtype)
            k[GATE_INDEX["g"] * H:(GATE_INDEX["g"] + 1) * H] = 2.0
            self._affine[H] = (-k, k, 1 - k)
        return self._affine[H]

    @staticmethod
    def _logistic(x, out, scale=1.0):
        """out = 1 / (1 + exp(-scale x)), one exp; exp overflowing to inf gives exactly 0."""
        np.multiply(x, -scale, out=out)
        with np.errstate(over="ignore"):
            np.exp(out, out=out)
        out += 1
        np.reciprocal(out, out=out)
        return out

    @classmethod
    def _tanh(cls, x, out):
        """tanh via one exp, as in _gate_affine: 2 sigma(2x) - 1."""
        cls._logistic(x, out, 2.0)
        out *= 2
        out -= 1
        return out

    def cell_forward(self, gates, bias, peep, c_prev, c, h):
        # gates: (B, 4H) pre-activations without bias in, activated i, f, g, o out (in place).
        # peep: optional peephole weights (3, H), rows i, f, o.
        H = c.shape[-1]
        neg_k, k, shift = self._gate_affine(H)
        if bias is not None:
            gates += bias
        if peep is not None:
            zi, zf, _, zo = self._split(gates)
            zi += peep[0] * c_prev
            zf += peep[1] * c_prev
            zo = zo.copy()                   # o needs c(t) first: keep its pre-activation
        gates *= neg_k
        with np.errstate(over="ignore"):     # exp(+large) = inf is intended: 1 / (1 + inf) = 0
            np.exp(gates, out=gates)
        gates += 1
        np.reciprocal(gates, out=gates)
        gates *= k
        gates += shift                       # eqs. (1)-(4): i, f, o = sigma(z), g = tanh(z)
        i, f, g, o = self._split(gates)
        np.multiply(g, i, out=c)
        c += c_prev * f                      # eq. (5)
        if peep is not None:                 # eq. (3) with the peephole on the new cell
            zo += peep[2] * c
            self._logistic(zo, o)
        self._tanh(c, out=h)
        h *= o                               # eq. (6)

    def cell_backward(self, gates, peep, c, c_prev, dh, dc_carry, dgates, dc_out=None, lengths=None, t=0):
        i, f, g, o = self._split(gates)
        dzi, dzf, dzg, dzo = self._split(dgates)
        keep = None if lengths is None else dc_carry.copy()
        tc = self._tanh(c, out=np.empty_like(c))
        np.multiply(dh, tc, out=dzo)
        dzo *= o * (1 - o)                   # eq. (17) times sigma'
        tc *= tc
        np.subtract(1, tc, out=tc)
        tc *= o
        tc *= dh
        dc = tc
        dc += dc_carry                       # eq. (16); dc_carry = delta-c(t+1) f(t+1) (+ peepholes)
        if peep is not None:
            dc += dzo * peep[2]              # c(t) -> z_o(t) through the output-gate peephole
        if dc_out is not None:
            dc_out[...] = dc                 # delta-c(t), for diagnostics
        np.multiply(dc, c_prev, out=dzf)
        dzf *= f * (1 - f)                   # eq. (18)
        np.multiply(dc, g, out=dzi)
        dzi *= i * (1 - i)                   # eq. (19)
        np.multiply(dc, i, out=dzg)
        dzg *= 1 - g * g                     # eq. (20) times tanh'
        np.multiply(dc, f, out=dc_carry)     # second term of eq. (16) for step t-1
        if peep is not None:
            dc_carry += dzi * peep[0] + dzf * peep[1]   # c(t-1) -> z_i(t), z_f(t)
        if lengths is not None:              # padded rows: no gradient, carry passes through
            pad = lengths <= t
            dgates[pad] = 0
            dc_carry[pad] = keep[pad]
            if dc_out is not None:
                dc_out[pad] = 0

    def seq_carry(self, lengths, t, src, dst, move):
        """Padded rows (t >= lengths[b]): dst = src, or with ``move`` dst += src and src = 0."""
        pad = lengths <= t
        if move:
            dst[pad] += src[pad]
            src[pad] = 0
        else:
            dst[pad] = src[pad]

    def _zoneout_d(self, mask, z, n, shape):
        """d: the constant z (evaluation, ``mask`` None) or the 0/1 Philox mask of a
        gpu_lstm.philox.MaskSlice (training), recomputed from its counter."""
        if mask is None:
            return z
        return mask.events(n).reshape(shape).astype(self.dtype)

    def zoneout_mix(self, mask, z, prev, cur, out):
        """out = d prev + (1 - d) cur with d = the mask (training) or the constant z (evaluation)."""
        d = self._zoneout_d(mask, z, out.size, out.shape)
        np.add(d * prev, (1 - d) * cur, out=out)

    def zoneout_split(self, mask, z, grad, into, accumulate):
        """into (+)= d grad; grad *= 1 - d."""
        d = self._zoneout_d(mask, z, grad.size, grad.shape)
        if accumulate:
            into += d * grad
        else:
            np.multiply(d, grad, out=into)
        grad *= 1 - d

    def dropout(self, mask, x, out):
        """out = x * scale where the gpu_lstm.philox.DropoutMask keeps the element, else 0 (x and out
        may be the same array)."""
        keep = mask.slice.events(x.size).reshape(x.shape)
        np.multiply(x, mask.scale, out=out)
        out[~keep] = 0

    def sum_rows(self, x, out):
        out += x.sum(axis=0)

    def sum_rows_prod(self, x, x_col0, y, out):
        """out += sum over rows of x[:, x_col0:x_col0 + cols] * y, with y (rows, cols)."""
        out += (x[:, x_col0:x_col0 + y.shape[1]] * y).sum(axis=0)

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
