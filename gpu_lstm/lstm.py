"""The LSTM layer stack: layers, directions, options and checks, on top of the per-direction time loop
in :mod:`gpu_lstm._direction` (written once for every backend).

Between layers, each layer writes its output to ``out[k]`` (T, B, D*P): the forward direction in the
first P columns, the reverse direction (already put back in forward time order) in the next P, zero at
padded steps. That buffer, after dropout when it is on, is the next layer's input.

This file is the public class (a third of it the documentation of every option) and its orchestration;
the per-step maths is in _direction.py and cuda/, the torch name mapping in torch_state.py.
"""

import contextlib
import copy
import numbers
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from . import _checks as ck
from . import _direction as dirn
from . import philox
from . import plan as _plan
from ._arrays import to_numpy  # noqa: F401  (re-exported: gpu_lstm.lstm.to_numpy)
from ._arrays import to_numpy_as as _to_numpy_as
from ._nvtx import annotate
from .backend import get_backend
from .gates import GATE_INDEX


class BackwardBeforeForwardError(RuntimeError, ValueError):
    """backward() was called before any forward()."""


class Tape:
    """What one forward saves for its backward: the input copy, every layer's output, the activated
    gates and the h/c (and m, c~) sequences of every direction, dropout masks and the lengths.

    A model keeps the tape of its last forward and reuses its buffers for the next forward of the same
    shape. :meth:`LSTM.detach_tape` hands the last tape to the caller instead: the next forward then
    allocates fresh buffers, and ``backward(..., tape=t)`` can run through that forward at any later
    time (several forwards in flight, as an autograd engine needs). Backward-only scratch buffers are
    not part of a tape; the model keeps one set per shape (:class:`_Scratch`).
    """

    def __init__(self, m, T, B):
        be, H, P, D, L = m._be, m.hidden_size, m.output_size, m.num_directions, m.num_layers
        self.T, self.B = T, B
        self.owner = m                    # backward(tape=...) checks the tape is this model's
        self.plan = None                  # the gpu_lstm.plan.Plan whose buffers these are, if any
        self.x = be.empty((T, B, m.input_size))                               # copy of the input
        self.out = [be.empty((T, B, D * P)) for _ in range(L)]               # layer outputs
        self.dropped = [be.empty((T, B, D * P)) if k > 0 and m.dropout else None for k in range(L)]
        self.dirs = [[dirn.DirectionWorkspace(be, T, B, m._layer_input_size(k), H, P, m.proj_size > 0,
                                              reverse=d == 1, zoneout=m.zoneout)
                      for d in range(D)] for k in range(L)]
        # Per forward: lengths, the reverse-time index, the valid-step mask, dropout masks, inputs.
        self.lengths = self.rev_index = self.valid = None
        self.masks = [None] * L      # per layer: a philox.DropoutMask (recomputed, never stored)
        self.mask_call = 0           # the Philox call counter of this forward's masks
        self.inputs = [None] * L
        self.learned_state = False
        self.persistent = False      # run by the persistent kernels (algo='persistent')


class _Scratch:
    """Buffers only a backward uses (nothing in them outlives the call), one set per (T, B)."""

    def __init__(self, m, T, B):
        be, H, P, L = m._be, m.hidden_size, m.output_size, m.num_layers
        self.T, self.B = T, B
        self.dx = [be.empty((T, B, m._layer_input_size(k))) for k in range(L)]  # per direction
        self.din = [be.empty((T, B, m._layer_input_size(k))) for k in range(L)]  # summed over directions
        self.dgates = be.empty((T, B, 4 * H))   # shared by all layers and directions
        self.dh = be.empty((T, B, P))
        self.dc = be.empty((B, H), be.wide)     # the delta-c carry: float32 in a 16-bit model
        self.dm = be.empty((B, H)) if m.proj_size else None
        self.keep = be.empty((B, H), be.wide) if m.zoneout else None   # zoneout: the kept share of delta-c

    def alternate(self, m):
        """This scratch with its own dgates and dh (what a layer's weight gradients read), the rest
        shared: for a plan whose layers' weight gradients overlap the loop of the layer below
        (gpu_lstm/plan.py, grad_lane)."""
        be, H, P, T, B = m._be, m.hidden_size, m.output_size, self.T, self.B
        alt = copy.copy(self)
        alt.dgates, alt.dh = be.empty((T, B, 4 * H)), be.empty((T, B, P))
        return alt


# The one-layer dropout warning's text; internal constructions of a core filter on it.
ONE_LAYER_DROPOUT = "has no effect with num_layers=1"


def warn_one_layer_dropout(dropout: float, stacklevel: int) -> None:
    """Warn that dropout does nothing with one layer (it applies to the input of every layer but the
    first), as torch.nn.LSTM does; ``stacklevel`` points the warning at the user's line."""
    warnings.warn(f"dropout={dropout} {ONE_LAYER_DROPOUT}: it applies to the input of every layer but the "
                  f"first", UserWarning, stacklevel=stacklevel)


class LSTM:
    """A stack of LSTM layers trained with exact backpropagation through time.

    Parameters
    ----------
    input_size, hidden_size : int
        I and H.
    num_layers : int
        The number of stacked layers L. Layer k > 0 takes layer k-1's output as its input.
    bias : bool
        Whether the layers have a bias b (4H,).
    batch_first : bool
        If True, x and y are (B, T, features) instead of (T, B, features).
    dtype : 'float32', 'float64', 'bfloat16' or 'float16'
        The 16-bit types store activations, saved gates and parameters in 16 bits and compute in
        float32: the cell state c inside a call and the gradients (``grads``) are float32, GEMMs
        accumulate in float32 (docs/precision.md). At the boundary c takes the model's dtype:
        ``c_n``/``dc0`` are returned and ``c0``/``dc_n`` accepted in 16 bits (rounded once per call). 'bfloat16' arrays are ``ml_dtypes.bfloat16`` on the CPU (the
        ml_dtypes package is needed). Train them with float32 master weights
        (``gpu_lstm.optim.MixedPrecision``). They run eager, plans and graphs; no persistent kernels.
    math : 'default' or 'tf32'
        'tf32' lets a float32 model's GEMMs use TF32 tensor cores on the GPU
        (``CUBLAS_COMPUTE_32F_FAST_TF32``: operands rounded to 10 mantissa bits, float32
        accumulation); off by default, never switched on silently. On the CPU the NumPy reference
        emulates it (operands rounded to TF32, float32 matmul). Only for float32 models.
    device : 'auto', 'cpu' or 'gpu'
        'auto' picks the GPU when cupy and a CUDA device are usable, else the CPU; the environment
        variable ``GPU_LSTM_DEVICE`` ('cpu' or 'gpu') overrides 'auto'. ('host' runs the CUDA kernel
        source compiled for the CPU; it exists for tests.)
    seed : int or None
        Seed of the initialisation (uniform in +-1/sqrt(H) like ``torch.nn.LSTM``; the same seed gives
        the same parameters on every device) and of the dropout masks.
    check_finite : bool
        If True, forward raises ValueError when x, h0 or c0 hold NaN or Inf. If False (default), such
        values simply propagate into the outputs.
    bidirectional : bool
        Add a reverse-time direction to every layer (parameters "l{k}_reverse.*"); outputs are
        concatenated to 2P features and states are (num_layers * 2, B, P) in PyTorch's order.
    proj_size : int
        If > 0 (and < hidden_size), LSTMP: h(t) = W_hr (o * tanh c(t)) with W_hr "l{k}.Whr" (P, H);
        R becomes (4H, P) and outputs and h states have P features.
    peephole : bool
        Diagonal peephole weights "l{k}.P" (3, H), rows (i, f, o): c(t-1) into the input and forget
        gates, c(t) into the output gate (the variant of the chain-rules seed; docs/math.md).
    dropout : float
        Dropout probability on the input of every layer but the first, as in torch.nn.LSTM (so with
        one layer it has no effect, and a UserWarning says so), in training mode only (see :meth:`train` / :meth:`eval`); masks come from the model's seeded
        counter-based generator (Philox4x32-10, :mod:`gpu_lstm.philox`), so the same seed gives
        bitwise the same masks on every device; checkpoints save the generator's counter.
    forget_bias : float or None
        If given, the forget-gate bias starts at this value (e.g. 1.0, Jozefowicz et al., 2015).
    learn_initial_state : bool
        Learnable initial states "l{k}.h0" (P,) and "l{k}.c0" (H,), zero at first, used (broadcast over
        the batch) when forward gets no (h0, c0); their gradients are summed over the batch.
    zoneout_h, zoneout_c : float
        Zoneout probabilities (Krueger et al., 2016): in training each unit of h(t) (resp. c(t)) keeps
        its previous value with this probability, c(t) = d c(t-1) + (1 - d) c~(t) with d ~ Bernoulli(z)
        per unit and step, c~ and h~ being the ordinary LSTM update; in evaluation d = z, the
        expectation. Masks come from the same seeded generator as dropout.
    algo : 'auto', 'graph', 'plan', 'eager' or 'persistent'
        How forward and backward are run (:mod:`gpu_lstm.plan`). 'eager' is the per-step Python loop
        (the GPU reference); 'plan' replays operations prepared once per shape (every pointer and
        argument computed once); 'graph' (GPU only) captures each plan into CUDA graphs, so a call
        is one input copy and one graph launch whatever T is. 'auto' picks 'graph' on the GPU and
        'plan' elsewhere. Calls a plan does not cover run eagerly: T = 0 or B = 0 and
        ``track_gradient_flow`` (training with dropout or zoneout runs through plans and graphs: the
        mask kernels read the call counter from a device scalar of the plan; docs/gpu-engine.md).
        'persistent' (GPU, or
        'host' for tests) runs each direction's whole time loop as one cooperative kernel launch with
        R held on chip (docs/persistent.md); calls it cannot run (projection, zoneout, a hidden size
        beyond the chip's capacity) use what 'auto' picks, and ``algo_reason`` says why. 'auto'
        never picks 'persistent' until a GPU run has shown it correct and faster. Every dtype and
        math mode runs 'eager', 'plan' and 'graph'; 'persistent' is for float32/float64 models with
        the default math (anything else raises ValueError).

    Attributes
    ----------
    params, grads : dict
        ``"l{k}.W"`` (4H, I_k), ``"l{k}.R"`` (4H, P), ``"l{k}.b"`` (4H,), plus the optional arrays
        above, with the gates ordered (i, f, g, o) along 4H (:mod:`gpu_lstm.gates`); the reverse
        direction's use the prefix ``"l{k}_reverse"``. ``backward`` adds into ``grads``;
        ``zero_grad`` clears them.

    Variable lengths: ``forward(x, lengths=...)`` with one length per sample (1..T, any order). Outputs
    past a sample's length are zero, h_n and c_n are taken at its last valid step, the reverse direction
    starts at each sample's own end, and padding contributes nothing to any gradient (matches
    ``pack_padded_sequence(..., enforce_sorted=False)``). A length of 0 is an error.

    Gradient-flow diagnostics: with ``track_gradient_flow = True``, each backward fills
    ``gradient_flow["l{k}"]`` (and ``"l{k}_reverse"``) with ``{"dh": (T,), "dc": (T,)}``, the L2 norms
    over the batch of delta-h(t) (eq. 14) and delta-c(t) (eq. 16) per time step (written by the fused
    backward kernel itself), so vanishing or exploding gradients can be seen. For a reverse direction
    the index is that direction's own step (its step 0 is each sample's last element).

    Empty inputs: T = 0 gives y of shape (0, B, D*P) and h_n = h0, c_n = c0 (zeros if not given);
    its backward returns dh0 = dh_n, dc0 = dc_n and leaves the gradients unchanged. B = 0 gives empty
    outputs and leaves the gradients unchanged.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, dtype: str = "float32", device: str = "auto",
                 seed: Optional[int] = None, check_finite: bool = False, bidirectional: bool = False,
                 proj_size: int = 0, peephole: bool = False, dropout: float = 0.0,
                 forget_bias: Optional[float] = None, learn_initial_state: bool = False,
                 zoneout_h: float = 0.0, zoneout_c: float = 0.0, algo: str = "auto",
                 math: str = "default") -> None:
        self.input_size = ck.positive_int("input_size", input_size)
        self.hidden_size = ck.positive_int("hidden_size", hidden_size)
        self.num_layers = ck.positive_int("num_layers", num_layers)
        for name, value in (("bias", bias), ("batch_first", batch_first), ("check_finite", check_finite),
                            ("bidirectional", bidirectional), ("peephole", peephole),
                            ("learn_initial_state", learn_initial_state)):
            ck.flag(name, value)
        self.bias, self.batch_first, self.check_finite = bool(bias), bool(batch_first), bool(check_finite)
        self.bidirectional, self.peephole = bool(bidirectional), bool(peephole)
        self.learn_initial_state = bool(learn_initial_state)
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) or proj_size < 0:
            raise ValueError(f"proj_size: expected an integer >= 0, got {proj_size!r}")
        if proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: expected less than hidden_size = {self.hidden_size}, got {proj_size}")
        self.proj_size = int(proj_size)
        for name, value in (("dropout", dropout), ("zoneout_h", zoneout_h), ("zoneout_c", zoneout_c)):
            if ck.nonnegative_float(name, value) >= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {value}")
        self.dropout = float(dropout)
        if self.dropout and self.num_layers == 1:     # as torch.nn.LSTM says, not silently nothing
            warn_one_layer_dropout(self.dropout, stacklevel=3)
        self.zoneout_h, self.zoneout_c = float(zoneout_h), float(zoneout_c)
        if forget_bias is not None:
            if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real) \
                    or not np.isfinite(forget_bias):
                raise TypeError(f"forget_bias: expected a finite real number or None, got {forget_bias!r}")
            if not self.bias:
                raise ValueError(f"forget_bias: expected None when bias=False (there is no bias to set), "
                                 f"got {forget_bias!r}")
            forget_bias = float(forget_bias)
        self.forget_bias = forget_bias
        self.dtype = ck.float_dtype(dtype)
        seed = ck.seed("seed", seed)
        if math not in ("default", "tf32"):
            raise ValueError(f"math: expected 'default' or 'tf32', got {math!r}")
        if math == "tf32" and self.dtype.name != "float32":
            raise ValueError(f"math='tf32': TF32 GEMMs are for float32 models, this one is {self.dtype.name}")
        self.math = math
        self._be = get_backend(device, self.dtype)   # a new backend per model: the math mode is per model
        if math == "tf32":
            self._be.set_math(math)
        self.device = self._be.name
        self.algo = algo
        self.low_precision = self._be.wide != self.dtype
        # The persistent kernels are float32/float64 with FP32/FP64 FMA loops (a bf16 tensor-core
        # variant is future work); plans and graphs take every dtype and math mode.
        not_persistent = (self.dtype.name if self.low_precision else "math='tf32'" if math == "tf32" else None)
        if not_persistent and algo == "persistent":
            raise ValueError(f"algo='persistent': the persistent kernels run float32/float64 models with "
                             f"the default math; {not_persistent} models run algo='auto', 'graph', 'plan' or 'eager'")
        self._algo, self.algo_reason = _plan.resolve_algo(algo, self._be)
        if self._algo == "persistent" and not_persistent:
            # only GPU_LSTM_ALGO gets here (an explicit algo was refused above): what plain 'auto' runs
            fallback, why = _plan.resolve_algo("auto", self._be, use_env=False)
            self._algo, self.algo_reason = fallback, (f"{_plan.ALGO_ENV}=persistent does not apply to "
                                                      f"{not_persistent} models (float32/float64 kernels); {why}")
        # Where the persistent kernels cannot run a call (options, capacity), what 'auto' would run.
        self._persistent_fallback = (_plan.resolve_algo("auto", self._be, use_env=False)[0]
                                     if self._algo == "persistent" else None)
        self._plans = _plan.PlanCache()
        self.params = {}
        self._init_params(seed)
        # Gradients are wide: float32 for a 16-bit model (the dW GEMMs write float32, and repeated
        # backwards accumulate without 16-bit rounding).
        self.grads = {k: self._be.zeros(v.shape, self._be.wide) for k, v in self.params.items()}
        # Dropout and zoneout masks: Philox4x32-10 of (seed, stream, call, element), computed where
        # they are used (gpu_lstm/philox.py): the same seed gives bitwise the same masks on every
        # device. _mask_calls counts the forwards that drew masks; checkpoints save it (rng_state).
        self._dropout_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._mask_calls = 0
        self.training = True
        self._saved = None        # the Tape of the last forward (None once detached)
        self._scratch = None
        self.track_gradient_flow = False
        self.gradient_flow = {}

    # ---- sizes and names --------------------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Features per direction of the outputs and h states: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def zoneout(self):
        return bool(self.zoneout_h or self.zoneout_c)

    @property
    def stochastic(self):
        """True when training draws random masks (dropout or zoneout)."""
        return bool(self.dropout or self.zoneout)

    def _direction_params(self, k, d):
        return dirn.DirectionParams(self.params, self._prefix(k, d), self.bias, self.peephole, self.proj_size > 0)

    def _layer_input_size(self, k):
        return self.input_size if k == 0 else self.num_directions * self.output_size

    def _prefix(self, k, d):
        return f"l{k}" + ("_reverse" if d == 1 else "")

    def param_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Expected shape of every parameter.

        Returns
        -------
        dict of str to tuple of int
            Parameter name -> shape, in the order of :attr:`params`.
        """
        H, P, shapes = self.hidden_size, self.output_size, {}
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                p = self._prefix(k, d)
                shapes[f"{p}.W"] = (4 * H, self._layer_input_size(k))
                shapes[f"{p}.R"] = (4 * H, P)
                if self.bias:
                    shapes[f"{p}.b"] = (4 * H,)
                if self.peephole:
                    shapes[f"{p}.P"] = (3, H)
                if self.proj_size:
                    shapes[f"{p}.Whr"] = (P, H)
                if self.learn_initial_state:
                    shapes[f"{p}.h0"] = (P,)
                    shapes[f"{p}.c0"] = (H,)
        return shapes

    def _init_params(self, seed):
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.hidden_size)
        H = self.hidden_size
        for name, shape in self.param_shapes().items():
            if name.endswith((".h0", ".c0")):
                value = np.zeros(shape)
            else:
                value = rng.uniform(-bound, bound, size=shape)
            if name.endswith(".b") and self.forget_bias is not None:
                f = GATE_INDEX["f"]
                value[f * H:(f + 1) * H] = self.forget_bias
            self.params[name] = self._be.astype(self._be.asarray(name, value.astype(self.dtype)), self.dtype)

    def set_params(self, values: Dict[str, Any]) -> None:
        """Copy parameter values in place, all or nothing.

        Parameters
        ----------
        values : dict of str to array
            A subset of :attr:`params`' names, each with an array (NumPy or device) of that parameter's
            shape holding real numbers (cast to the model's dtype).

        Raises
        ------
        KeyError, ValueError, TypeError
            For an unknown name, a wrong shape or a non-real dtype. Every array is checked and
            converted before the first one is written, so an error leaves every parameter as it was.
        """
        if not isinstance(values, dict):
            raise TypeError(f"values: expected a dict of parameter name -> array, got {type(values).__name__}")
        shapes = self.param_shapes()
        unknown = sorted(set(values) - set(shapes))
        if unknown:
            raise KeyError(f"values: expected a subset of the parameter names {sorted(shapes)}, got unknown "
                           f"name(s) {unknown}")
        be, arrays = self._be, {}
        for name, value in values.items():
            if be.is_device_array(value):
                arr = ck.as_array(be, name, value)
                ck.check_shape(name, arr, shapes[name])
                ck.real_array(name, arr)
                arrays[name] = be.astype(arr, self.dtype)
            else:   # host data: rounded once to the model dtype on the host, then uploaded (as _init_params)
                arr = ck.host_array(name, value)
                ck.check_shape(name, arr, shapes[name])
                ck.real_array(name, arr)
                arrays[name] = be.asarray(name, arr.astype(self.dtype, copy=False))
        for name, arr in arrays.items():   # everything checked and converted: now write
            self.params[name][...] = arr

    @contextlib.contextmanager
    def use_arrays(self, params: Dict[str, Any], grads: Optional[Dict[str, Any]] = None) -> Iterator["LSTM"]:
        """Run forwards and backwards with externally owned arrays in place of ``params`` (and
        ``grads``), e.g. zero-copy views of another framework's parameters (``gpu_lstm.torch``).

        Inside the ``with`` block ``self.params``/``self.grads`` are these dicts; the previous ones
        come back on exit. Nothing is copied: the arrays must already be on this model's device (a
        host array for a GPU model is refused, not copied) and C-contiguous. A detached tape's backward must run with the same
        parameter values as its forward (it reads them at backward time).

        Parameters
        ----------
        params : dict of str to array
            Every name of :meth:`param_shapes`, with that shape, this model's dtype, on its device.
        grads : dict of str to array, optional
            The same names; backward ADDS into them.

        Returns
        -------
        context manager
            Yields this model.
        """
        checked = []
        for what, arrays in (("params", params), ("grads", grads)):
            if arrays is None:
                checked.append(None)
                continue
            shapes = self.param_shapes()
            if not isinstance(arrays, dict) or set(arrays) != set(shapes):
                got = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
                raise KeyError(f"{what}: expected exactly the names {sorted(shapes)}, got {got}")
            out = {}
            for name, value in arrays.items():
                label = f"{what}[{name!r}]"
                arr = self._be.asarray(label, value, copy=False)   # the caller's memory, never a copy
                ck.check_dtype(label, arr, self.dtype if what == "params" else self._be.wide, self._be)
                ck.check_shape(label, arr, shapes[name])
                if not arr.flags.c_contiguous:   # kernels and plans address parameters as dense rows
                    raise ValueError(f"{label}: expected a C-contiguous array, got strides {arr.strides}")
                out[name] = arr
            checked.append(out)
        saved = self.params, self.grads
        if checked[0] is not None:
            self.params = checked[0]
        if checked[1] is not None:
            self.grads = checked[1]
        try:
            yield self
        finally:
            self.params, self.grads = saved

    def zero_grad(self) -> None:
        """Set every gradient to zero (backward accumulates)."""
        for g in self.grads.values():
            g[...] = 0

    def to_numpy(self, value: Any) -> Any:
        """Bring this model's arrays back to host NumPy arrays in their logical dtypes.

        A GPU bfloat16 model's uint16 device arrays (bfloat16 bit patterns) come back as
        ``ml_dtypes.bfloat16``, which :func:`gpu_lstm.to_numpy`, not knowing where an array came
        from, does not guess (it returns the uint16 bits).

        Parameters
        ----------
        value : array, or tuple, list or dict of arrays
            This model's outputs, parameters or gradients (or host arrays), nested in containers.

        Returns
        -------
        same structure as ``value``
            Every array a ``numpy.ndarray`` on the host.
        """
        return _to_numpy_as(self._be, value)

    def train(self) -> "LSTM":
        """Training mode: dropout and zoneout draw random masks (the default).

        Returns
        -------
        LSTM
            ``self``.
        """
        self.training = True
        return self

    def eval(self) -> "LSTM":
        """Evaluation mode: no dropout; zoneout uses its expectation (d = z).

        Returns
        -------
        LSTM
            ``self``.
        """
        self.training = False
        return self

    def reseed_dropout(self, seed: Optional[int]) -> None:
        """Restart the generator of the dropout and zoneout masks.

        Parameters
        ----------
        seed : int or None
            The next forwards draw the same masks as after a model built with this ``seed``.
        """
        seed = ck.seed("seed", seed)
        self._dropout_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._mask_calls = 0

    def rng_state(self) -> Dict[str, int]:
        """The dropout/zoneout mask generator's whole state.

        Returns
        -------
        dict
            ``{'seed': int, 'calls': int}`` (JSON-able): the masks of the next forward are a function
            of it alone, on every device.
        """
        return {"seed": int(self._dropout_seed), "calls": int(self._mask_calls)}

    def set_rng_state(self, state: Dict[str, int]) -> None:
        """Restore :meth:`rng_state`: training resumes with bitwise the masks it would have drawn.

        Parameters
        ----------
        state : dict
            ``{'seed': 0..2^32-1, 'calls': >= 0}`` as :meth:`rng_state` returned it.

        Raises
        ------
        TypeError, KeyError, ValueError
            When ``state`` is not such a dict (ints only, bool excluded); nothing is changed then.
        """
        seed, calls = ck.rng_state("state", state)      # everything checked before either is set
        self._dropout_seed, self._mask_calls = seed, calls

    @property
    def num_parameters(self):
        return int(sum(int(np.prod(s)) for s in self.param_shapes().values()))

    # ---- torch interop (gpu_lstm/torch_state.py) -------------------------------------------------
    def load_torch_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load ``torch.nn.LSTM(...).state_dict()`` (tensors or arrays).

        torch's gate order is ours (i, f, g, o); the two torch biases are summed into b, which is what
        the forward uses. Every key and shape is checked before anything is written, so a bad dict
        never leaves a half-loaded model.

        Parameters
        ----------
        state_dict : dict of str to tensor or array
            The keys of a ``torch.nn.LSTM`` with this model's sizes and options.
        """
        from .torch_state import load_torch_state_dict
        load_torch_state_dict(self, state_dict)

    def torch_state_dict(self, as_tensors: Optional[bool] = None) -> Dict[str, Any]:
        """Parameters under torch.nn.LSTM's names, so ``torch_lstm.load_state_dict(lstm.torch_state_dict())``
        works.

        Parameters
        ----------
        as_tensors : bool, optional
            None: torch CPU tensors when torch imports, else NumPy arrays; False: NumPy arrays;
            True: tensors (torch must import).

        Returns
        -------
        dict of str to tensor or numpy.ndarray
            ``weight_ih_l0``, ...; ``bias_ih`` is b and ``bias_hh`` is zero.
        """
        from .torch_state import torch_state_dict
        return torch_state_dict(self, ck.flag("as_tensors", as_tensors, allow_none=True))

    def _torch_names(self):
        from .torch_state import torch_names
        return torch_names(self)

    # ---- input checks -----------------------------------------------------------------------------
    def _seq_axes(self):
        return "(B, T, I)" if self.batch_first else "(T, B, I)"

    def _out_axes(self):
        """How this model's y is shaped, in words: (T, B, H), (B, T, 2*P), ..."""
        feat = ("2*" if self.bidirectional else "") + ("P" if self.proj_size else "H")
        return f"(B, T, {feat})" if self.batch_first else f"(T, B, {feat})"

    def _state_axes(self, feat):
        return f"(num_layers{' * 2' if self.bidirectional else ''}, B, {feat})"

    def _array(self, name, value):
        arr = ck.as_array(self._be, name, value)
        ck.check_dtype(name, arr, self.dtype, self._be)
        return arr

    def _state_pair(self, name, pair, B):
        """Check an (h, c) pair: (num_layers * D, B, P) and (num_layers * D, B, H); None means zeros."""
        if pair is None:
            return None, None
        ck.pair(name, pair)
        LD = self.num_layers * self.num_directions
        out = []
        for idx, (part, feat) in enumerate((("h", self.output_size), ("c", self.hidden_size))):
            full = f"{name}[{idx}] ({part})"
            axes = self._state_axes("P" if part == "h" and self.proj_size else "H")
            arr = self._array(full, pair[idx])
            ck.check_ndim(full, arr, 3, axes)
            ck.check_shape(full, arr, (LD, B, feat), axes)
            out.append(arr)
        return out[0], out[1]

    def _lengths(self, lengths, T, B):
        """Validate per-sample lengths; returns (device int64 array or None, host array or None)."""
        if lengths is None:
            return None, None
        host = np.asarray(to_numpy(lengths))
        if host.ndim != 1 or host.shape[0] != B:
            raise ValueError(f"lengths: expected one length per sample, shape ({B},), got shape {ck.shape_str(host.shape)}")
        if host.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected integers, got dtype {host.dtype.name}")
        if B and (host.min() < 1 or host.max() > T):
            raise ValueError(f"lengths: expected values in [1, T={T}], got min {host.min()} and max {host.max()}")
        host = host.astype(np.int64)
        if B == 0 or host.min() == T:
            return None, None       # no padding: the plain path computes exactly the same thing
        return self._be.xp.asarray(host), host

    def _new_tape(self, T, B):
        """The last forward's tape when this model still owns it and the shape matches, else a new one."""
        tape = self._saved
        self._saved = None         # until this forward has run (as in plan.forward): no stale tape
        if tape is not None and tape.plan is not None:   # a plan's tape: the plan goes back to its pool
            self._plans.give_back(tape.plan)
            tape = None
        if tape is None or tape.T != T or tape.B != B:
            tape = Tape(self, T, B)
        return tape

    def _scratch_for(self, T, B):
        s = self._scratch
        if s is None or s.T != T or s.B != B:
            s = self._scratch = _Scratch(self, T, B)
        return s

    def detach_tape(self) -> "Tape":
        """Take the last forward's saved state out of the model and return it.

        The model forgets it: the next forward allocates new buffers instead of overwriting these, so
        ``backward(dy, tape=tape)`` may run after any number of later forwards. This is how an autograd
        engine (``gpu_lstm.torch``) keeps several forwards of one model alive. The gradient is taken
        at the parameters' values at backward time: change them in between (an optimizer step) and
        the result is not the gradient of that forward.

        Returns
        -------
        Tape
            The last forward's saved state, for ``backward(..., tape=...)``.
        """
        tape = self._saved
        if tape is None:
            raise BackwardBeforeForwardError("detach_tape: no forward to detach; run lstm(x) first")
        self._saved = None
        if tape.plan is not None:
            self._plans.lend(tape, tape.plan)
        return tape

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x: Any, hc: Optional[Tuple[Any, Any]] = None, *, lengths: Any = None,
                check_finite: Optional[bool] = None, return_cells: bool = False) -> Tuple[Any, ...]:
        """Run the stack over a sequence.

        Inputs given as NumPy arrays to a GPU model are copied to the device; outputs stay there.

        Parameters
        ----------
        x : array
            (T, B, I), or (B, T, I) with ``batch_first``; the model's dtype.
        hc : (h0, c0), optional
            Initial states, (num_layers * num_directions, B, P) and (..., B, H); zeros (or the learned
            initial state) when None.
        lengths : array of int, optional
            (B,) valid steps per sample, in [1, T].
        check_finite : bool, optional
            Overrides the constructor's ``check_finite`` for this call.
        return_cells : bool
            Also return every step's cell state.

        Returns
        -------
        y : array
            (T, B, num_directions * P), or batch-first.
        (h_n, c_n) : tuple of arrays
            Final states, shaped like (h0, c0).
        cells : array
            Only with ``return_cells=True``: (T, B, num_directions * H) (or batch-first), an output
            for inspection (backward takes no gradient for it). Of dtype float32 in a bfloat16 or
            float16 model (on every device): the cell state the model computes with, unrounded.
        """
        check_finite = ck.flag("check_finite", check_finite, allow_none=True)
        return_cells = ck.flag("return_cells", return_cells)
        with self._be.activate():
            return self._forward(x, hc, lengths, check_finite, return_cells)

    __call__ = forward

    def _forward(self, x, hc, lengths, check_finite, return_cells):
        be, L, D, H = self._be, self.num_layers, self.num_directions, self.hidden_size
        xp = be.xp
        x = self._array("x", x)
        ck.check_ndim("x", x, 3, self._seq_axes())
        if x.shape[2] != self.input_size:
            raise ValueError(f"x: expected input size I = {self.input_size} on the last axis of "
                             f"{self._seq_axes()}, got shape {ck.shape_str(x.shape)}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B = int(x.shape[0]), int(x.shape[1])
        h0, c0 = self._state_pair("hc", hc, B)
        lengths, host_lengths = self._lengths(lengths, T, B)
        if self.check_finite if check_finite is None else check_finite:
            for name, arr in (("x", x), ("h0", h0), ("c0", c0)):
                if arr is not None:
                    ck.check_finite(name, arr, xp, be)
        engine = _plan.engine(self, T, B)
        if engine in ("graph", "plan"):
            return _plan.forward(self, x, h0, c0, host_lengths, return_cells, engine)

        ws = self._new_tape(T, B)
        ws.persistent = engine == "persistent"
        ws.lengths = lengths
        ws.mask_call = self._mask_calls
        if self.training and self.stochastic:
            self._mask_calls += 1        # every training forward draws fresh masks
        if lengths is not None:
            valid, rev = dirn.length_indices(host_lengths, T)                     # (T, B) each
            # 0/1 per (t, b). A GPU bfloat16 model's arrays are uint16 bit patterns: there the mask is
            # uint16 0/1, and multiplying a bit pattern by it keeps the value or gives +0 exactly.
            vdt = np.uint16 if be.storage != self.dtype else self.dtype
            ws.valid = xp.asarray(valid.astype(vdt))[:, :, None]                 # (T, B, 1)
            ws.rev_index = (xp.asarray(rev), xp.arange(B)[None, :])
        else:
            ws.valid = None
            ws.rev_index = (slice(None, None, -1),)
        ws.learned_state = hc is None and self.learn_initial_state
        # float32 in a 16-bit model: the cell state as the model carries it, not rounded to 16 bits
        cells = be.empty((T, B, D * H), be.wide) if return_cells else None
        with annotate("lstm.forward"):
            ws.x[...] = x   # own copy: the backward needs x even if the caller changes theirs
            layer_in = ws.x
            for k in range(L):
                if k > 0 and self.dropout and self.training:
                    mask = philox.DropoutMask(self._dropout_seed, k, ws.mask_call, self.dropout,
                                              layer_in.shape, be.wide)
                    be.dropout(mask, layer_in, ws.dropped[k])
                    ws.masks[k], layer_in = mask, ws.dropped[k]
                else:
                    ws.masks[k] = None
                ws.inputs[k] = layer_in
                with annotate(f"lstm.forward.l{k}"):
                    for d in range(D):
                        self._forward_direction(k, d, ws, layer_in, h0, c0, cells)
                if ws.valid is not None:
                    ws.out[k] *= ws.valid          # outputs past each sample's length are zero
                layer_in = ws.out[k]
        self._saved = ws
        y = ws.out[L - 1]
        # Copies, so the next forward (which reuses the workspace) cannot change what we returned.
        y = (y.transpose(1, 0, 2) if self.batch_first else y).copy()
        h_n = xp.stack([ws.dirs[k][d].h[T] for k in range(L) for d in range(D)])   # (L*D, B, P)
        c_n = xp.stack([ws.dirs[k][d].c[T] for k in range(L) for d in range(D)])   # (L*D, B, H)
        c_n = be.astype(c_n, self.dtype)   # c is float32 inside a 16-bit model
        if not return_cells:
            return y, (h_n, c_n)
        if ws.valid is not None:   # float32 0/1 (ws.valid is uint16 0/1 in a GPU bfloat16 model)
            cells *= xp.asarray(valid.astype(cells.dtype))[:, :, None]
        return y, (h_n, c_n), (cells.transpose(1, 0, 2).copy() if self.batch_first else cells)

    def _initial_state(self, k, d, ws, h0, c0, B):
        i = k * self.num_directions + d
        if h0 is not None:
            return h0[i], c0[i]
        if ws.learned_state:
            p = self._prefix(k, d)
            xp = self._be.xp
            return (xp.broadcast_to(self.params[f"{p}.h0"], (B, self.output_size)),
                    xp.broadcast_to(self.params[f"{p}.c0"], (B, self.hidden_size)))
        return None, None

    def _zoneout_masks(self, k, d, ws):
        """(d_h, d_c) for direction d of layer k: Bernoulli(z) masks per step and element in
        training (philox.ZoneoutMask, recomputed by the kernels from their counter), the constants z
        in evaluation; None without zoneout."""
        if not self.zoneout:
            return None
        if not self.training:
            return self.zoneout_h, self.zoneout_c
        T, B, seed, call = ws.T, ws.B, self._dropout_seed, ws.mask_call
        return (philox.ZoneoutMask(seed, k, d, philox.ZONEOUT_H, call, self.zoneout_h, (T, B, self.output_size)),
                philox.ZoneoutMask(seed, k, d, philox.ZONEOUT_C, call, self.zoneout_c, (T, B, self.hidden_size)))

    def _forward_direction(self, k, d, ws, layer_in, h0, c0, cells):
        P, H = self.output_size, self.hidden_size
        dws = ws.dirs[k][d]
        prm = self._direction_params(k, d)
        if d == 1:   # reverse time, each sample from its own end
            dws.x[...] = layer_in[ws.rev_index]
            x = dws.x
        else:
            x = layer_in
        hd, cd = self._initial_state(k, d, ws, h0, c0, ws.B)
        run = dirn.forward
        if ws.persistent:   # the whole time loop of this direction in one persistent launch
            from .backend.persistent import run_forward as run
        run(self._be, prm, dws, x, hd, cd, ws.lengths, self._zoneout_masks(k, d, ws))
        if d == 0:
            ws.out[k][:, :, :P] = dws.h[1:]
            if cells is not None and k == self.num_layers - 1:
                cells[:, :, :H] = dws.c[1:]
        else:
            ws.out[k][:, :, P:] = dws.h[1:][ws.rev_index]
            if cells is not None and k == self.num_layers - 1:
                cells[:, :, H:] = dws.c[1:][ws.rev_index]

    # ---- backward ---------------------------------------------------------------------------------
    def backward(self, dy: Any = None, dhc: Optional[Tuple[Any, Any]] = None, *,
                 tape: Optional["Tape"] = None) -> Tuple[Any, Tuple[Any, Any]]:
        """Backpropagation through time through the last forward; gradients ADD into ``grads``.

        May be called more than once after one forward; each call adds its gradients again.

        Parameters
        ----------
        dy : array, optional
            Gradient of the loss with respect to y, same shape as y (None means zero).
        dhc : (dh_n, dc_n), optional
            Gradients with respect to the final states, shaped like (h_n, c_n).
        tape : Tape, optional
            A tape from :meth:`detach_tape`, to go back through that forward instead of the last one.

        Returns
        -------
        dx : array
            Shaped like x.
        (dh0, dc0) : tuple of arrays
            Shaped like (h0, c0).
        """
        if tape is not None and (not isinstance(tape, Tape) or tape.owner is not self):
            raise ValueError(f"tape: expected a Tape from this model's detach_tape(), got "
                             f"{'a tape of another model' if isinstance(tape, Tape) else type(tape).__name__}")
        with self._be.activate():
            return self._backward(dy, dhc, tape)

    def _backward(self, dy, dhc, tape=None):
        ws = self._saved if tape is None else tape
        if ws is None:
            raise BackwardBeforeForwardError("backward: called before forward (or its tape was detached); "
                                             "run lstm(x) first, or pass tape=")
        be, T, B, L, D = self._be, ws.T, ws.B, self.num_layers, self.num_directions
        P, H = self.output_size, self.hidden_size
        y_shape = (B, T, D * P) if self.batch_first else (T, B, D * P)
        if dy is not None:
            dy = self._array("dy", dy)
            ck.check_shape("dy", dy, y_shape, self._out_axes())
            dy = dy.transpose(1, 0, 2) if self.batch_first else dy
        dh_n, dc_n = self._state_pair("dhc", dhc, B)
        if ws.plan is not None and not self.track_gradient_flow:
            return _plan.backward(self, ws, dy, dh_n, dc_n)
        scratch = self._scratch_for(T, B)    # the eager loop's only (a plan has its own)
        dh0 = be.empty((L * D, B, P))
        dc0 = be.empty((L * D, B, H))
        if self.track_gradient_flow:
            self.gradient_flow = {}
        with annotate("lstm.backward"):
            dout = dy                                     # (T, B, D*P) error on layer k's output
            for k in reversed(range(L)):
                with annotate(f"lstm.backward.l{k}"):
                    din = self._backward_layer(k, ws, scratch, dout, dh_n, dc_n, dh0, dc0)
                if ws.masks[k] is not None:
                    be.dropout(ws.masks[k], din, din)     # dropout on this layer's input, same mask
                dout = din
        dx = scratch.din[0].copy()
        if self.batch_first:
            dx = be.xp.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, (dh0, dc0)

    def _backward_layer(self, k, ws, scratch, dout, dh_n, dc_n, dh0, dc0):
        be, D, P = self._be, self.num_directions, self.output_size
        xp = be.xp
        din = scratch.din[k]
        for d in range(D):
            i = k * D + d
            dws = ws.dirs[k][d]
            prefix = self._prefix(k, d)
            prm = self._direction_params(k, d)
            dh = scratch.dh
            if dout is None:
                dh[...] = 0
            else:
                part = dout[:, :, d * P:(d + 1) * P]
                if ws.valid is not None:
                    part = part * ws.valid                # outputs at padded steps were constants
                dh[...] = part if d == 0 else part[ws.rev_index]
            x = ws.inputs[k] if d == 0 else dws.x
            dc_all = be.empty((ws.T, ws.B, self.hidden_size), be.wide) if self.track_gradient_flow else None
            run = dirn.backward
            if ws.persistent and dc_all is None:   # diagnostics need the per-step loop's delta-c
                from .backend.persistent import run_backward as run
            run(be, prm, self.grads, prefix, dws, scratch, x, dh,
                None if dh_n is None else dh_n[i], None if dc_n is None else dc_n[i],
                dh0[i], dc0[i], scratch.dx[k], ws.lengths, dc_all)
            if self.track_gradient_flow:
                # In the wide type: a 16-bit model's delta-h is 16-bit (on a GPU bfloat16 bit patterns,
                # which CuPy must not multiply), and its squares summed in 16 bits would lose the norm.
                dh_w = be.astype(dh, be.wide)
                dh_flow = xp.sqrt((dh_w * dh_w).sum(axis=(1, 2)))
                dc_flow = xp.sqrt((dc_all * dc_all).sum(axis=(1, 2)))
                self.gradient_flow[prefix] = {"dh": be.to_numpy(dh_flow), "dc": be.to_numpy(dc_flow)}
            if ws.learned_state:
                be.sum_rows(dh0[i], self.grads[f"{prefix}.h0"])
                be.sum_rows(dc0[i], self.grads[f"{prefix}.c0"])
            if d == 0:
                din[...] = scratch.dx[k]
            else:
                be.add_into(din, scratch.dx[k][ws.rev_index])  # back to forward time order
        return din

    def __repr__(self):
        extra = "".join(f", {n}={getattr(self, n)!r}" for n, default in (
            ("bidirectional", False), ("proj_size", 0), ("peephole", False), ("dropout", 0.0),
            ("forget_bias", None), ("learn_initial_state", False), ("zoneout_h", 0.0), ("zoneout_c", 0.0),
            ("algo", "auto"))
            if getattr(self, n) != default)
        return (f"LSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, dtype='{self.dtype.name}', "
                f"device='{self.device}'{extra})")

