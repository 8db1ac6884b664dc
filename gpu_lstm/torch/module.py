"""``gpu_lstm.torch.LSTM``: a drop-in replacement for ``torch.nn.LSTM`` backed by gpu_lstm."""

import itertools
import json
import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..gates import GATE_INDEX
from . import _ops

_UIDS = itertools.count(1)
# How each checked option is stored: plain Python values (the config is JSON); seed is checked apart.
_KINDS = {**dict.fromkeys(("input_size", "hidden_size", "num_layers", "proj_size"), int),
          **dict.fromkeys(("bias", "batch_first", "bidirectional", "peephole", "learn_initial_state",
                           "check_finite"), bool),
          **dict.fromkeys(("dropout", "zoneout_h", "zoneout_c"), float)}
# The options the core is built from (its config), and those the Parameters' names and shapes follow:
# the latter cannot change after construction, the others (batch_first, dropout, ...) can, as in torch.
_CONFIG = (*_KINDS, "seed")
_STRUCTURE = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size", "peephole",
              "learn_initial_state")


def _peek_seed():
    """A mask seed from torch's CPU generator, which is then restored: drawing it would shift the
    weights' initialisation (and every layer built afterwards) away from torch.nn.LSTM's under the same
    torch.manual_seed."""
    state = torch.get_rng_state()
    try:
        return int(torch.randint(0, 2 ** 62, (1,)).item())
    finally:
        torch.set_rng_state(state)


def _lengths_tensor(lengths):
    """``lengths=`` as an int64 CPU tensor: integers only (a float tensor would be truncated)."""
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, (torch.Tensor, list, tuple, range)) \
            and not hasattr(lengths, "__array__"):
        raise TypeError(f"lengths: expected a 1-D sequence of integers (Tensor, array or list), got "
                        f"{lengths!r} ({type(lengths).__name__})")
    try:
        t = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"lengths: expected a 1-D sequence of integers, got {type(lengths).__name__} that "
                        f"torch cannot convert ({exc})") from None
    # [] has no integer dtype to check (torch makes it float32); its count is checked against B
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        shown = t.flatten()[:6].tolist()
        raise TypeError(f"lengths: expected integers, got dtype {t.dtype} (values {shown!r}"
                        f"{', ...' if t.numel() > 6 else ''}), which would be truncated")
    return t.to("cpu", torch.int64)


class LSTM(nn.Module):
    """``torch.nn.LSTM`` with gpu_lstm's exact BPTT underneath (NumPy on CPU tensors, CuPy + fused
    CUDA kernels on CUDA tensors).

    Same constructor (same positional order), same Parameters and ``state_dict`` names and shapes
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``,
    ``_reverse``), same initialisation (uniform in +-1/sqrt(hidden_size), in torch's order, from
    torch's generator), and ``forward(input, hx=None) -> output, (h_n, c_n)`` for Tensors (batched or
    not, batch_first or not) and PackedSequence (sorted or not), exactly as ``torch.nn.LSTM``.

    ``forward(input, hx=None, lengths=...)`` also takes per-sample lengths for a padded Tensor, the
    same as a ``PackedSequence`` with ``enforce_sorted=False``.

    Parameters
    ----------
    input_size : int
    hidden_size : int
    num_layers : int
    bias : bool
    batch_first : bool
    dropout : float
        Between layers, in training mode, as torch.nn.LSTM.
    bidirectional : bool
    proj_size : int
        Positive: an LSTM with projections (``weight_hr_l{k}``), as torch.nn.LSTM.
    device : torch.device, optional
        Where the Parameters are created; CPU tensors run the NumPy path, CUDA tensors the GPU path.
    dtype : torch.dtype, optional
        torch.float32, float64, bfloat16 or float16 (see below).
    peephole : bool
        gpu_lstm's own options start here (keywords only). Parameters ``weight_peep_l{k}`` (3, H),
        rows (i, f, o).
    zoneout_h : float
        Zoneout probability of h (training only; its expectation in eval).
    zoneout_c : float
        Zoneout probability of c.
    forget_bias : float, optional
        The forget-gate slice of ``bias_ih`` starts at this value, of ``bias_hh`` at 0; None keeps
        torch's initialisation.
    learn_initial_state : bool
        Parameters ``initial_h_l{k}`` (P,), ``initial_c_l{k}`` (H,), used when ``hx`` is None.
    check_finite : bool
        Reject NaN/Inf inputs.
    seed : int, optional
        Seed of the dropout/zoneout masks (drawn from torch's generator when None and masks are
        needed). Each training forward also draws its Philox call number from torch's (CPU)
        generator, so masks follow ``torch.manual_seed`` as torch.nn.LSTM's dropout does, and
        ``torch.utils.checkpoint`` (which restores torch's generator before recomputing) recomputes
        the forward with the same masks.

    Notes
    -----
    With ``peephole`` or ``learn_initial_state`` the ``state_dict`` has keys ``torch.nn.LSTM`` does
    not know; otherwise it is exactly torch.nn.LSTM's, and loads strictly both ways.

    Supported dtypes: float32, float64, bfloat16 and float16. The 16-bit ones run gpu_lstm's 16-bit
    models (docs/precision.md): activations and Parameters in 16 bits, arithmetic, GEMM accumulation and
    the cell state in float32, the gradients computed in float32 and returned in the Parameters' dtype
    (rounded once); the bias the core uses is the 16-bit sum bias_ih + bias_hh. bfloat16 on the CPU
    needs the ml_dtypes package. A torch optimizer then updates the 16-bit Parameters themselves
    (an update below half a 16-bit ulp of a weight is lost, as for any 16-bit torch module).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, peephole=False,
                 zoneout_h=0.0, zoneout_c=0.0, forget_bias=None, learn_initial_state=False,
                 check_finite=False, seed=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        cfg = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bias=bias,
                   batch_first=batch_first, bidirectional=bidirectional, proj_size=proj_size,
                   peephole=peephole, dropout=dropout, learn_initial_state=learn_initial_state,
                   zoneout_h=zoneout_h, zoneout_c=zoneout_c, check_finite=check_finite)
        from .. import _checks as ck
        self.seed = ck.seed("seed", seed)       # here, not at the first forward inside the op
        self._store_options(cfg, forget_bias)
        if self.dropout and self.num_layers == 1:
            from ..lstm import warn_one_layer_dropout
            warn_one_layer_dropout(self.dropout, stacklevel=3)       # the user's line, once
        self.forget_bias = forget_bias
        self._names = _ops.flat_names({**cfg, "seed": self.seed})
        H, P, D = self.hidden_size, self.proj_size or self.hidden_size, 2 if self.bidirectional else 1
        for torch_name, ours, _ in self._names:
            k = int(torch_name.rsplit("_l", 1)[1].split("_")[0])
            I = self.input_size if k == 0 else D * P
            shape = {"W": (4 * H, I), "R": (4 * H, P), "b": (4 * H,), "Whr": (P, H), "P": (3, H),
                     "h0": (P,), "c0": (H,)}[ours.split(".")[1]]
            self.register_parameter(torch_name, nn.Parameter(torch.empty(shape, **factory)))
        self._register()
        self.reset_parameters()

    # ---- identity of the core (not pickled: rebuilt on load) ----------------------------------------
    def _store_options(self, cfg, forget_bias=None):
        """Check the options ``cfg`` (every key of _KINDS) as gpu_lstm.LSTM's constructor checks them
        (same messages), then store them; a run with dropout or zoneout and no seed gets one from
        torch's generator, as torch.nn.LSTM's masks would."""
        from ..lstm import LSTM as CoreLSTM
        with _ops.quiet_core():
            CoreLSTM(**cfg, forget_bias=forget_bias, dtype="float64", device="cpu", seed=0)
        for k, v in cfg.items():
            setattr(self, k, _KINDS[k](v))
        if self.seed is None and (self.dropout or self.zoneout_h or self.zoneout_c):
            self.seed = _peek_seed()

    def _register(self):
        # the values kept beside their JSON: forward compares them, and torch.compile cannot trace json.loads
        self._config_values = {k: getattr(self, k) for k in _CONFIG}
        self._config = json.dumps(self._config_values, sort_keys=True)
        self._uid = next(_UIDS)
        self._engine = _ops.register_engine(self._uid, self._config)

    def _sync_config(self):
        """Options set after construction, as torch.nn.LSTM reads them at every forward: batch_first,
        dropout, zoneout and check_finite are checked as the constructor checks them and the core is
        rebuilt; a size or structure option cannot be honoured (the Parameters keep their shapes)."""
        now = {k: getattr(self, k) for k in _CONFIG}
        was = self._config_values
        if now == was:
            return
        fixed = [k for k in _STRUCTURE if now[k] != was[k]]
        if fixed:
            k = fixed[0]
            raise ValueError(f"{k}: changed from {was[k]!r} to {now[k]!r} after construction; the Parameters "
                             f"have the old shapes, so build a new module")
        self._store_options({k: v for k, v in now.items() if k != "seed"})
        self._register()

    def __getstate__(self):
        state = super().__getstate__().copy() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state.pop("_engine", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state) if hasattr(super(), "__setstate__") else self.__dict__.update(state)
        self._register()

    def reset_parameters(self):
        """torch.nn.LSTM's initialisation, in its order; then forget_bias, zero initial states."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("initial_"):
                    p.zero_()
                else:
                    p.uniform_(-stdv, stdv)
            if self.forget_bias is not None:
                H, f = self.hidden_size, GATE_INDEX["f"]
                for name, p in self.named_parameters():
                    if name.startswith(("bias_ih", "bias_hh")):
                        p[f * H:(f + 1) * H] = self.forget_bias if name.startswith("bias_ih") else 0.0

    def _flat_weights(self):
        """The Parameters in the core's order: one dtype and device (torch.nn.LSTM raises otherwise, and
        the core would compute in the first one's), C-contiguous (a transposed view is valid in torch;
        autograd carries the gradient back through .contiguous())."""
        weights = [getattr(self, n) for n, _, _ in self._names]
        first, w0 = self._names[0][0], weights[0]
        for (name, _, _), w in zip(self._names, weights):
            if w.dtype != w0.dtype or w.device != w0.device:
                raise TypeError(f"{name}: expected dtype {w0.dtype} on {w0.device} like {first}, got "
                                f"{w.dtype} on {w.device}")
        return [w if w.is_contiguous() else w.contiguous() for w in weights]

    def flatten_parameters(self):
        """torch.nn.LSTM's call to compact cuDNN's weight buffer. The Parameters are read where they
        are here, so there is nothing to do; kept so code written for torch.nn.LSTM runs unchanged."""

    @property
    def all_weights(self):
        """The Parameters per layer and direction, as torch.nn.LSTM's ``all_weights``."""
        groups = {}
        for name, ours, _ in self._names:
            groups.setdefault(ours.split(".")[0], []).append(getattr(self, name))    # "l0", "l0_reverse"
        return list(groups.values())

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0), ("peephole", False),
                              ("zoneout_h", 0.0), ("zoneout_c", 0.0), ("forget_bias", None),
                              ("learn_initial_state", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input, hx=None, *, lengths=None):
        self._sync_config()
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; got lengths= as well")
            x, lens = pad_packed_sequence(input, batch_first=self.batch_first)
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input: expected a Tensor or a PackedSequence, got {type(input).__name__}")
            x, lens = input, None
            if lengths is not None:
                lens = _lengths_tensor(lengths)
        weights = self._flat_weights()
        if x.dim() not in (2, 3):
            raise ValueError(f"input: expected a 2-D (unbatched) or 3-D Tensor, got {x.dim()}-D of shape "
                             f"{tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected {self.input_size} features on the last axis, got shape "
                             f"{tuple(x.shape)}")
        unbatched = x.dim() == 2
        if unbatched:
            if packed or lens is not None:
                raise ValueError("lengths: not supported with an unbatched (2-D) input")
            x = x.unsqueeze(1) if not self.batch_first else x.unsqueeze(0)
        B = x.shape[0] if self.batch_first else x.shape[1]
        if x.dtype != weights[0].dtype or x.device != weights[0].device:
            raise TypeError(f"input: expected dtype {weights[0].dtype} on {weights[0].device} (the "
                            f"parameters'), got {x.dtype} on {x.device}")
        if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise TypeError(f"input: gpu_lstm computes in float32, float64, bfloat16 or float16, got {x.dtype}")
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)):
                raise TypeError(f"hx: expected a tuple (h_0, c_0), got {type(hx).__name__}")
            if len(hx) != 2:
                raise ValueError(f"hx: expected a tuple (h_0, c_0) of 2 Tensors, got a {type(hx).__name__} "
                                 f"of length {len(hx)}")
            for i, (name, t) in enumerate((("h_0", hx[0]), ("c_0", hx[1]))):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"hx[{i}] ({name}): expected a Tensor, got {type(t).__name__}")
            h0, c0 = hx
            LD = self.num_layers * (2 if self.bidirectional else 1)
            for name, t, feat in (("hx[0] (h_0)", h0, self.proj_size or self.hidden_size),
                                  ("hx[1] (c_0)", c0, self.hidden_size)):
                # Checked as given (an unbatched state has no B axis), before any reshaping.
                want = (LD, feat) if unbatched else (LD, B, feat)
                if tuple(t.shape) != want:
                    raise ValueError(f"{name}: expected shape {want}" + (" (unbatched)" if unbatched else "")
                                     + f", got {tuple(t.shape)}")
                if t.dtype != x.dtype or t.device != x.device:
                    raise TypeError(f"{name}: expected dtype {x.dtype} on {x.device}, got {t.dtype} on {t.device}")
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if lens is not None and not packed and lens.numel() != B:
            raise ValueError(f"lengths: expected {B} lengths (one per sample), got {lens.numel()}")
        need_tape = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in weights)
            or (h0 is not None and (h0.requires_grad or c0.requires_grad)))
        mask_call = None
        if self.training and (self.dropout or self.zoneout_h or self.zoneout_c):
            # this forward's Philox call number, from torch's CPU generator (no device sync)
            mask_call = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64)
        y, h_n, c_n, _ = _ops.lstm(x, h0, c0, weights, lens, mask_call, self._uid, self._config,
                                   self.training, need_tape)
        if unbatched:
            y = y.squeeze(0 if self.batch_first else 1)
            return y, (h_n.squeeze(1), c_n.squeeze(1))
        if packed:
            yt = y.transpose(0, 1) if self.batch_first else y           # (T, B, F), original order
            if sorted_indices is not None:
                yt, lens = yt.index_select(1, sorted_indices), lens.index_select(0, sorted_indices.cpu())
            data = pack_padded_sequence(yt, lens, enforce_sorted=True).data
            y = PackedSequence(data, input.batch_sizes, sorted_indices, unsorted_indices)
        return y, (h_n, c_n)
