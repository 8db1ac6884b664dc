"""The LSTM layer stack: time loop, buffer layout and GEMM order, written once for every backend.

Equation numbers refer to the derivation in ``shared/seeds`` (mapped in docs/math.md).

Buffer layout of one layer for a forward over T steps and B samples (time-major, row-major):

* ``gates`` (T, B, 4H): W x(t) for all steps from one GEMM, then R h(t-1) added per step; the cell
  kernel turns step t's slice into the activated gates i, f, g, o that the backward reads.
* ``h`` (T+1, B, H) and ``c`` (T+1, B, H): slot 0 holds h0/c0, slot t+1 holds h(t)/c(t). So
  R h(t-1) reads ``h[t]``, the layer's output is the contiguous view ``h[1:]``, and dR is one GEMM
  against ``h[:T]`` (eq. 24).

The backward reuses one (T, B, H) buffer ``dh`` for delta-h of every layer: it starts as dy (top
layer) or as the dx of the layer above (stacked-layer seed), and the per-step GEMM adds
R^T delta into ``dh[t-1]`` (eq. 14) after the fused cell kernel has produced step t's pre-activation
gradients.
"""

import numpy as np

from . import _checks as ck
from ._nvtx import annotate
from .backend import get_backend
from .gates import gate_slice


class BackwardBeforeForwardError(RuntimeError, ValueError):
    """backward() was called before any forward()."""


class _Workspace:
    """Every buffer a forward and backward of shape (T, B) needs, allocated once per shape."""

    def __init__(self, be, T, B, input_size, H, num_layers):
        self.T, self.B = T, B
        self.x = be.empty((T, B, input_size))                              # copy of the input
        self.gates = [be.empty((T, B, 4 * H)) for _ in range(num_layers)]  # activated gates
        self.h = [be.empty((T + 1, B, H)) for _ in range(num_layers)]      # h0, h(1..T)
        self.c = [be.empty((T + 1, B, H)) for _ in range(num_layers)]      # c0, c(1..T)
        self.dgates = be.empty((T, B, 4 * H))   # pre-activation gradients, shared by layers
        self.dh = be.empty((T, B, H))           # delta-h, shared by layers (see module doc)
        self.dc = be.empty((B, H))              # delta-c carry between steps


class LSTM:
    """A stack of LSTM layers trained with exact backpropagation through time.

    Parameters
    ----------
    input_size, hidden_size, num_layers : int
        I, H and the number of stacked layers L. Layer k > 0 takes layer k-1's h as its input.
    bias : bool
        Whether the layers have a bias b (4H,).
    batch_first : bool
        If True, x and y are (B, T, features) instead of (T, B, features).
    dtype : 'float32' or 'float64'
    device : 'auto', 'cpu' or 'gpu'
        'auto' picks the GPU when cupy and a CUDA device are usable, else the CPU; the environment
        variable ``GPU_LSTM_DEVICE`` ('cpu' or 'gpu') overrides 'auto'. ('host' runs the CUDA kernel
        source compiled for the CPU; it exists for tests.)
    seed : int or None
        Seed of the initialisation: uniform in +-1/sqrt(H) like ``torch.nn.LSTM``. The same seed gives
        the same parameters on every device (they are drawn on the host in float64).
    check_finite : bool
        If True, forward raises ValueError when x, h0 or c0 hold NaN or Inf. If False (default), such
        values simply propagate into the outputs.

    Attributes
    ----------
    params : dict
        ``"l{k}.W"`` (4H, I_k), ``"l{k}.R"`` (4H, H), ``"l{k}.b"`` (4H,) with gates ordered
        (i, f, g, o) along the 4H axis (:mod:`gpu_lstm.gates`). Arrays live on the model's device.
    grads : dict
        Same keys and shapes; :meth:`backward` adds into them, :meth:`zero_grad` clears them.

    Gradient-flow diagnostics: with ``track_gradient_flow = True``, each backward fills
    ``gradient_flow["l{k}"] = {"dh": (T,), "dc": (T,)}``, the L2 norms over the batch of delta-h(t)
    (eq. 14) and delta-c(t) (eq. 16) per time step, so vanishing or exploding gradients can be seen.
    This costs an extra pass over the saved activations; it is off by default.

    Empty inputs: T = 0 gives y of shape (0, B, H) and h_n = h0, c_n = c0 (zeros if not given);
    its backward returns dh0 = dh_n, dc0 = dc_n and leaves the gradients unchanged. B = 0 gives empty
    outputs and leaves the gradients unchanged.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 dtype="float32", device="auto", seed=None, check_finite=False):
        self.input_size = ck.positive_int("input_size", input_size)
        self.hidden_size = ck.positive_int("hidden_size", hidden_size)
        self.num_layers = ck.positive_int("num_layers", num_layers)
        for name, flag in (("bias", bias), ("batch_first", batch_first), ("check_finite", check_finite)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.check_finite = bool(check_finite)
        self.dtype = ck.float_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed: expected an int or None, got {seed!r}")
        self._be = get_backend(device, self.dtype)
        self.device = self._be.name
        self.params = {}
        self._init_params(seed)
        self.grads = {k: self._be.zeros(v.shape) for k, v in self.params.items()}
        self._ws = None
        self._saved = None
        self.track_gradient_flow = False
        self.gradient_flow = {}

    # ---- parameters -------------------------------------------------------------------------------
    def _layer_input_size(self, k):
        return self.input_size if k == 0 else self.hidden_size

    def param_shapes(self):
        """Expected shape of every parameter, by name."""
        H, shapes = self.hidden_size, {}
        for k in range(self.num_layers):
            shapes[f"l{k}.W"] = (4 * H, self._layer_input_size(k))
            shapes[f"l{k}.R"] = (4 * H, H)
            if self.bias:
                shapes[f"l{k}.b"] = (4 * H,)
        return shapes

    def _init_params(self, seed):
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in self.param_shapes().items():
            value = rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            self.params[name] = self._be.asarray(name, value).astype(self.dtype, copy=False)

    def set_params(self, values):
        """Copy parameter values in place (NumPy or device arrays), checking names, shapes and dtypes."""
        shapes = self.param_shapes()
        unknown = sorted(set(values) - set(shapes))
        if unknown:
            raise KeyError(f"values: unknown parameter name(s) {unknown}; expected a subset of {sorted(shapes)}")
        for name, value in values.items():
            arr = self._be.asarray(name, value)
            ck.check_shape(name, arr, shapes[name])
            self.params[name][...] = arr.astype(self.dtype, copy=False)

    def zero_grad(self):
        """Set every gradient to zero (backward accumulates)."""
        for g in self.grads.values():
            g[...] = 0

    @property
    def num_parameters(self):
        return int(sum(int(np.prod(s)) for s in self.param_shapes().values()))

    # ---- torch interop ----------------------------------------------------------------------------
    def load_torch_state_dict(self, state_dict):
        """Load ``torch.nn.LSTM(...).state_dict()`` (tensors or arrays).

        torch's gate order is ours (i, f, g, o); the two torch biases are summed into b, which is what
        the forward uses. Every key and shape is checked before anything is written, so a bad dict
        never leaves a half-loaded model.
        """
        expected = {}
        for k in range(self.num_layers):
            expected[f"weight_ih_l{k}"] = (f"l{k}.W", (4 * self.hidden_size, self._layer_input_size(k)))
            expected[f"weight_hh_l{k}"] = (f"l{k}.R", (4 * self.hidden_size, self.hidden_size))
            if self.bias:
                expected[f"bias_ih_l{k}"] = (f"l{k}.b", (4 * self.hidden_size,))
                expected[f"bias_hh_l{k}"] = (f"l{k}.b", (4 * self.hidden_size,))
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected} "
                           f"(expected those of torch.nn.LSTM({self.input_size}, {self.hidden_size}, "
                           f"num_layers={self.num_layers}, bias={self.bias}))")
        arrays = {}
        for key, (_, shape) in expected.items():
            value = state_dict[key]
            if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
                value = value.detach().cpu().numpy()
            arr = np.asarray(to_numpy(value), dtype=np.float64)
            ck.check_shape(f"state_dict[{key!r}]", arr, shape)
            arrays[key] = arr
        values = {}
        for k in range(self.num_layers):
            values[f"l{k}.W"] = arrays[f"weight_ih_l{k}"]
            values[f"l{k}.R"] = arrays[f"weight_hh_l{k}"]
            if self.bias:
                values[f"l{k}.b"] = arrays[f"bias_ih_l{k}"] + arrays[f"bias_hh_l{k}"]
        self.set_params(values)

    def torch_state_dict(self):
        """Parameters under torch.nn.LSTM's names, as NumPy arrays; bias_hh is zero, bias_ih is b."""
        sd = {}
        for k in range(self.num_layers):
            sd[f"weight_ih_l{k}"] = to_numpy(self.params[f"l{k}.W"]).copy()
            sd[f"weight_hh_l{k}"] = to_numpy(self.params[f"l{k}.R"]).copy()
            if self.bias:
                sd[f"bias_ih_l{k}"] = to_numpy(self.params[f"l{k}.b"]).copy()
                sd[f"bias_hh_l{k}"] = np.zeros_like(sd[f"bias_ih_l{k}"])
        return sd

    # ---- input checks -----------------------------------------------------------------------------
    def _seq_axes(self):
        return "(B, T, I)" if self.batch_first else "(T, B, I)"

    def _array(self, name, value):
        arr = self._be.asarray(name, value)
        ck.check_dtype(name, arr, self.dtype)
        return arr

    def _state_pair(self, name, pair, B):
        """Check an (h, c) pair of (num_layers, B, H) arrays; None means zeros."""
        if pair is None:
            return None, None
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays, got {type(pair).__name__}")
        shape = (self.num_layers, B, self.hidden_size)
        out = []
        for part, value in zip(("h", "c"), pair):
            full = f"{name}[{0 if part == 'h' else 1}] ({part})"
            arr = self._array(full, value)
            ck.check_ndim(full, arr, 3, "(num_layers, B, H)")
            ck.check_shape(full, arr, shape, "(num_layers, B, H)")
            out.append(arr)
        return out[0], out[1]

    def _workspace(self, T, B):
        ws = self._ws
        if ws is None or ws.T != T or ws.B != B:
            ws = _Workspace(self._be, T, B, self.input_size, self.hidden_size, self.num_layers)
            self._ws = ws
        return ws

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x, hc=None, *, check_finite=None):
        """Run the stack over a sequence.

        x : (T, B, I), or (B, T, I) with batch_first. hc : optional (h0, c0), each (num_layers, B, H).
        Returns ``y, (h_n, c_n)``: y is (T, B, H) (or batch-first), h_n and c_n are (num_layers, B, H).
        Inputs given as NumPy arrays to a GPU model are copied to the device; outputs stay there.
        """
        with self._be.activate():
            return self._forward(x, hc, check_finite)

    __call__ = forward

    def _forward(self, x, hc, check_finite):
        be, L = self._be, self.num_layers
        x = self._array("x", x)
        ck.check_ndim("x", x, 3, self._seq_axes())
        if x.shape[2] != self.input_size:
            raise ValueError(f"x: expected input size I = {self.input_size} on the last axis of "
                             f"{self._seq_axes()}, got shape {ck.shape_str(x.shape)}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B = int(x.shape[0]), int(x.shape[1])
        h0, c0 = self._state_pair("hc", hc, B)
        if self.check_finite if check_finite is None else check_finite:
            for name, arr in (("x", x), ("h0", h0), ("c0", c0)):
                if arr is not None:
                    ck.check_finite(name, arr, be.xp)

        ws = self._workspace(T, B)
        with annotate("lstm.forward"):
            ws.x[...] = x   # own copy: the backward needs x even if the caller changes theirs
            for k in range(L):
                with annotate(f"lstm.forward.l{k}"):
                    self._forward_layer(k, ws, h0, c0)
        self._saved = ws
        y = ws.h[L - 1][1:]                                    # (T, B, H) view of the workspace
        # A copy, so the next forward (which reuses the workspace) cannot change what we returned.
        y = (y.transpose(1, 0, 2) if self.batch_first else y).copy()
        h_n = be.xp.stack([ws.h[k][T] for k in range(L)])      # (L, B, H)
        c_n = be.xp.stack([ws.c[k][T] for k in range(L)])
        return y, (h_n, c_n)

    def _forward_layer(self, k, ws, h0, c0):
        be, T, B, H = self._be, ws.T, ws.B, self.hidden_size
        W, R = self.params[f"l{k}.W"], self.params[f"l{k}.R"]
        b = self.params[f"l{k}.b"] if self.bias else None
        x = ws.x if k == 0 else ws.h[k - 1][1:]       # (T, B, I_k)
        gates, h, c = ws.gates[k], ws.h[k], ws.c[k]   # (T, B, 4H), (T+1, B, H), (T+1, B, H)
        h[0] = 0 if h0 is None else h0[k]
        c[0] = 0 if c0 is None else c0[k]
        if T == 0 or B == 0:
            return
        # Input part of eqs. (1)-(4) for every step at once: gates = x W^T, (T*B, 4H).
        be.gemm(x.reshape(T * B, x.shape[-1]), W, gates.reshape(T * B, 4 * H), trans_b=True)
        for t in range(T):
            # Recurrent part of eqs. (1)-(4): gates[t] += h(t-1) R^T, (B, 4H).
            be.gemm(h[t], R, gates[t], trans_b=True, beta=1.0)
            # Bias, nonlinearities, eqs. (5)-(6) in one fused step; gates[t] becomes i, f, g, o.
            be.cell_forward(gates[t], b, c[t], c[t + 1], h[t + 1])

    # ---- backward ---------------------------------------------------------------------------------
    def backward(self, dy=None, dhc=None):
        """Backpropagation through time through the last forward; gradients ADD into ``grads``.

        dy : gradient of the loss with respect to y, same shape as y (None means zero).
        dhc : optional (dh_n, dc_n), each (num_layers, B, H): gradients with respect to h_n and c_n.
        Returns ``dx, (dh0, dc0)`` with the shapes of x, h0 and c0.
        May be called more than once after one forward; each call adds its gradients again.
        """
        with self._be.activate():
            return self._backward(dy, dhc)

    def _backward(self, dy, dhc):
        ws = self._saved
        if ws is None:
            raise BackwardBeforeForwardError("backward: called before forward; run lstm(x) first")
        be, T, B, H, L = self._be, ws.T, ws.B, self.hidden_size, self.num_layers
        y_shape = (B, T, H) if self.batch_first else (T, B, H)
        dh = ws.dh
        if dy is None:
            dh[...] = 0
        else:
            dy = self._array("dy", dy)
            ck.check_shape("dy", dy, y_shape, "(B, T, H)" if self.batch_first else "(T, B, H)")
            dh[...] = dy.transpose(1, 0, 2) if self.batch_first else dy
        dh_n, dc_n = self._state_pair("dhc", dhc, B)

        dx = be.empty((T, B, self.input_size))
        dh0 = be.empty((L, B, H))
        dc0 = be.empty((L, B, H))
        with annotate("lstm.backward"):
            for k in reversed(range(L)):
                with annotate(f"lstm.backward.l{k}"):
                    out = dx if k == 0 else dh   # this layer's dx is delta-h of the layer below
                    self._backward_layer(k, ws, dh_n, dc_n, dh0[k], dc0[k], out)
        if self.batch_first:
            dx = be.xp.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, (dh0, dc0)

    def _backward_layer(self, k, ws, dh_n, dc_n, dh0, dc0, dx_out):
        be, T, B, H = self._be, ws.T, ws.B, self.hidden_size
        W, R = self.params[f"l{k}.W"], self.params[f"l{k}.R"]
        gates, h, c = ws.gates[k], ws.h[k], ws.c[k]
        dh, dgates, dc = ws.dh, ws.dgates, ws.dc
        x = ws.x if k == 0 else ws.h[k - 1][1:]
        dc[...] = 0 if dc_n is None else dc_n[k]      # delta-c(T) f(T) term is zero past the end
        if T == 0:
            dh0[...] = 0 if dh_n is None else dh_n[k]
            dc0[...] = dc
            return
        if dh_n is not None:
            dh[T - 1] += dh_n[k]                      # loss through h_n adds to delta-h(T-1)
        for t in reversed(range(T)):
            # eqs. (16)-(20) times the activation derivatives; dc carries delta-c f between steps.
            be.cell_backward(gates[t], c[t + 1], c[t], dh[t], dc, dgates[t])
            # eq. (14): delta-h(t-1) += R^T delta(t), i.e. (B, 4H) @ (4H, H).
            be.gemm(dgates[t], R, dh[t - 1] if t > 0 else dh0, beta=1.0 if t > 0 else 0.0)
        dc0[...] = dc
        if self.track_gradient_flow:
            self.gradient_flow[f"l{k}"] = self._flow(ws, k, dc_n)
        TB = T * B
        dg = dgates.reshape(TB, 4 * H)
        g = self.grads
        be.gemm(dg, x.reshape(TB, x.shape[-1]), g[f"l{k}.W"], trans_a=True, beta=1.0)        # eq. (23)
        be.gemm(dg, h[:T].reshape(TB, H), g[f"l{k}.R"], trans_a=True, beta=1.0)     # eq. (24)
        if self.bias:
            be.sum_rows(dg, g[f"l{k}.b"])                                             # eq. (25)
        be.gemm(dg, W, dx_out.reshape(TB, dx_out.shape[-1]))   # gradient w.r.t. this layer's input x

    def _flow(self, ws, k, dc_n):
        """Per-step norms of delta-h(t) and delta-c(t) for layer k, after its backward loop.

        delta-h(t) is final in ``dh`` at this point. delta-c(t) never leaves the fused kernel, so it is
        rebuilt here from eq. (16) with the saved gates: only when diagnostics are on.
        """
        xp, T, H = self._be.xp, ws.T, self.hidden_size
        gates, c, dh = ws.gates[k], ws.c[k], ws.dh
        dh_norm = xp.sqrt((dh * dh).sum(axis=(1, 2)))
        dc_norm = xp.empty(T, dtype=self.dtype)
        carry = xp.zeros_like(c[0]) if dc_n is None else dc_n[k].copy()
        for t in reversed(range(T)):
            f, o = gates[t][:, gate_slice("f", H)], gates[t][:, gate_slice("o", H)]
            tc = xp.tanh(c[t + 1])
            dc_t = dh[t] * o * (1 - tc * tc) + carry           # eq. (16)
            dc_norm[t] = xp.sqrt((dc_t * dc_t).sum())
            carry = dc_t * f
        return {"dh": self._be.to_numpy(dh_norm), "dc": self._be.to_numpy(dc_norm)}

    def __repr__(self):
        return (f"LSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, dtype='{self.dtype.name}', "
                f"device='{self.device}')")


def to_numpy(value):
    """Bring a result (array, or tuple/list/dict of arrays) back to host NumPy arrays."""
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):
        return value.get()
    return np.asarray(value)
