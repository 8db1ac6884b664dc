"""The custom ops behind :class:`gpu_lstm.torch.LSTM`: ``gpu_lstm::lstm`` and ``gpu_lstm::lstm_backward``.

Why custom ops (``torch.library.custom_op``) and not a ``torch.autograd.Function``: a custom op with a
registered fake implementation and autograd formula is ONE node for Dynamo, AOTAutograd and Inductor,
so ``torch.compile(model, fullgraph=True)`` traces through a model that contains it (Dynamo refuses
``torch.nn.LSTM`` itself).

Saved state: the forward keeps its :class:`gpu_lstm.lstm.Tape` (``LSTM.detach_tape()``, so any number
of forwards can be in flight) in a registry under an integer id, and returns that id in a small int64
CPU tensor, the *handle*, which autograd saves for the backward like any other tensor. The handle's
memory is a NumPy array with a finalizer: when the last tensor sharing it dies (autograd freed the
graph, or nobody needed a backward), the registry entry and with it the tape are dropped. So a tape
lives exactly as long as torch's own saved tensors would, ``retain_graph=True`` and ``gradcheck``
(several backwards through one forward) work, and nothing is recomputed. Under ``no_grad`` (or when
nothing requires a gradient) no tape is kept and the core reuses its buffers.

Parameters: the core ``gpu_lstm.LSTM`` runs inside ``use_arrays`` with zero-copy views of the torch
Parameters (NumPy views of CPU tensors, CuPy views through DLPack of CUDA tensors); its one bias is
b = bias_ih + bias_hh, a (4H,) add per call (torch's two biases only ever appear summed) written into
a bias buffer the core keeps. The backward rebuilds the same views from the saved Parameters
(autograd's version counters reject an in-place change in between, as for any torch op), zeroes the
core's gradient buffers, runs into them and returns copies (clones), so each call returns its own
gradients; db goes to both bias_ih and bias_hh (torch's semantics).

Why buffers the core keeps (the bias, the gradients): the core's plans (and on a GPU their CUDA
graphs) are bound to the memory of the arrays they read and write (gpu_lstm/plan.py). The views of
the Parameters are new objects every call but the same memory, so they rebuild nothing; a bias or a
gradient tensor allocated per call would be new memory every call, and the plan would be rebuilt
(the graph recaptured) on every call. The price is one copy of the gradients per backward (the
returned tensors are autograd's to keep and accumulate into, so they cannot be the buffers).

bfloat16/float16 (16-bit Parameters and inputs): the core is a 16-bit gpu_lstm model (plans and graphs
as in float32), fed zero-copy views (bfloat16 through an int16 view: ml_dtypes.bfloat16 NumPy arrays
on the CPU, uint16 bit patterns on the GPU, ``gpu_lstm.interop``). The one bias is the 16-bit rounding
of bias_ih + bias_hh (torch's add: float32 sum, one rounding). The core's gradients are float32 and
its gradient buffers float32; each is narrowed to its Parameter's dtype on return, once.

GPU path (CUDA tensors): CuPy views through DLPack and the work queued on torch's current CUDA stream
(a ``cupy.cuda.ExternalStream``). Not yet run on a GPU machine.
"""

import contextlib
import functools
import itertools
import json
import warnings
import weakref
from typing import List, Optional, Tuple

import numpy as np
import torch

_TAPES = {}                                  # handle id -> (core LSTM, Tape)
_NEXT_ID = itertools.count(1)
_ENGINES = weakref.WeakValueDictionary()     # module uid -> _Engine (the module holds it)


@contextlib.contextmanager
def quiet_core():
    """Build cores without their one-layer dropout warning: the module gives it once, pointing at the
    user's line, rather than once per core built inside."""
    from ..lstm import ONE_LAYER_DROPOUT
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f".*{ONE_LAYER_DROPOUT}", category=UserWarning)
        yield


@functools.lru_cache(maxsize=None)
def parse_config(config):
    return json.loads(config)


def flat_names(cfg):
    """[(torch name, core name, kind)] in the module's parameter order. kind: 'w' (used as is),
    'b_ih'/'b_hh' (summed into the core's b)."""
    names = []
    for k in range(cfg["num_layers"]):
        for d in range(2 if cfg["bidirectional"] else 1):
            sfx, p = ("_reverse", f"l{k}_reverse") if d else ("", f"l{k}")
            names += [(f"weight_ih_l{k}{sfx}", f"{p}.W", "w"), (f"weight_hh_l{k}{sfx}", f"{p}.R", "w")]
            if cfg["bias"]:
                names += [(f"bias_ih_l{k}{sfx}", f"{p}.b", "b_ih"), (f"bias_hh_l{k}{sfx}", f"{p}.b", "b_hh")]
            if cfg["proj_size"]:
                names.append((f"weight_hr_l{k}{sfx}", f"{p}.Whr", "w"))
            if cfg["peephole"]:
                names.append((f"weight_peep_l{k}{sfx}", f"{p}.P", "w"))
            if cfg["learn_initial_state"]:
                names += [(f"initial_h_l{k}{sfx}", f"{p}.h0", "w"), (f"initial_c_l{k}{sfx}", f"{p}.c0", "w")]
    return names


class _Engine:
    """One core ``gpu_lstm.LSTM`` per (device, dtype) for one module; the core's own parameter arrays
    are dropped (the module's Parameters are used through ``use_arrays``)."""

    def __init__(self, config):
        self.config = config
        self.cores = {}

    def core(self, device, dtype):
        key = (device.type, device.index, dtype)
        core = self.cores.get(key)
        if core is None:
            from ..lstm import LSTM
            cfg = dict(parse_config(self.config))
            seed = cfg.pop("seed")
            kw = dict(dtype=str(dtype).replace("torch.", ""), seed=seed)
            with quiet_core():
                if device.type == "cpu":
                    core = LSTM(**cfg, device="cpu", **kw)
                elif device.type == "cuda":
                    import cupy
                    with cupy.cuda.Device(device.index if device.index is not None else 0):
                        core = LSTM(**cfg, device="gpu", **kw)
                else:
                    raise ValueError(f"input: expected a CPU or CUDA tensor, got device {device}")
            core.params, core.grads = {}, {}
            core.torch_buffers = {}          # "b" / "grads" -> {core name: torch tensor}, see above
            self.cores[key] = core
        return core


def engine(uid, config):
    eng = _ENGINES.get(uid)
    if eng is None or eng.config != config:
        eng = _Engine(config)    # not registered: lives as long as its tapes
    return eng


def register_engine(uid, config):
    eng = _Engine(config)
    _ENGINES[uid] = eng
    return eng


_LOW = (torch.bfloat16, torch.float16)


def _view(t):
    """Zero-copy backend view of a tensor: NumPy for CPU tensors, CuPy (DLPack) for CUDA tensors;
    bfloat16 through an int16 view (ml_dtypes.bfloat16 on the CPU, uint16 bits on the GPU), as
    ``gpu_lstm.interop`` does."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        from ..interop import _to_gl
        return _to_gl(t)
    if t.device.type == "cpu":
        return t.numpy()
    import cupy
    return cupy.from_dlpack(t)


def _tensor(a):
    """A backend array as a tensor without a copy (bfloat16 back through an int16 view)."""
    from ..interop import _to_torch
    return _to_torch(a)


def _grad_dtype(dtype):
    """The dtype of the core's gradients: float32 for a 16-bit model (docs/precision.md)."""
    return torch.float32 if dtype in _LOW else dtype


@contextlib.contextmanager
def _on_stream(device):
    """CUDA: run the core on torch's current stream of that device (no-op on the CPU)."""
    if device.type != "cuda":
        yield
        return
    import cupy
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index):
        yield


def _buffers(core, kind, shapes, like, dtype=None):
    """The core's persistent torch buffers of one kind (made on first use, on ``like``'s device, in
    ``dtype`` or ``like``'s); one set per core, i.e. per (device, dtype)."""
    bufs = core.torch_buffers.get(kind)
    if bufs is None:
        bufs = core.torch_buffers[kind] = {n: torch.zeros(shape, dtype=dtype or like.dtype, device=like.device)
                                           for n, shape in shapes.items()}
    return bufs


def _core_params(core, names, weights):
    params, b = {}, {}
    for (_, ours, kind), w in zip(names, weights):
        if kind == "w":
            params[ours] = _view(w)
        else:
            b.setdefault(ours, []).append(w)
    if b:
        shapes = core.param_shapes()
        bias = _buffers(core, "b", {n: shapes[n] for n in b}, weights[0])
        for ours, (b_ih, b_hh) in b.items():   # (4H,): b = bias_ih + bias_hh, into the same memory
            torch.add(b_ih.detach(), b_hh.detach(), out=bias[ours])
            params[ours] = _view(bias[ours])
    return params


def _check_weights(names, weights):
    if len(weights) != len(names):
        raise ValueError(f"weights: expected {len(names)} tensors ({', '.join(n for n, _, _ in names)}), "
                         f"got {len(weights)}")


def _new_handle(core, tape):
    tid = next(_NEXT_ID)
    _TAPES[tid] = (core, tape)
    arr = np.array([tid], dtype=np.int64)
    weakref.finalize(arr, _TAPES.pop, tid, None)    # the tape dies with the last tensor sharing arr
    return torch.from_numpy(arr)


@torch.library.custom_op("gpu_lstm::lstm", mutates_args=())
def lstm(x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor], weights: List[torch.Tensor],
         lengths: Optional[torch.Tensor], mask_call: Optional[torch.Tensor], uid: int, config: str,
         training: bool, need_tape: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward of the whole stack: returns (y, h_n, c_n, handle). ``weights`` in :func:`flat_names`
    order; ``lengths`` an int64 CPU tensor (B,) or None; ``mask_call`` an int64 CPU tensor (1,), the
    Philox call number of this forward's dropout/zoneout masks (drawn from torch's generator by the
    module, so torch.manual_seed and torch.utils.checkpoint's recompute give the same masks), or None;
    ``config`` the module's JSON options."""
    names = flat_names(parse_config(config))
    _check_weights(names, weights)
    core = engine(uid, config).core(x.device, x.dtype)
    core.training = training
    if mask_call is not None:
        core.set_rng_state({"seed": core.rng_state()["seed"], "calls": int(mask_call[0])})
    lens = None if lengths is None else lengths.detach().cpu().numpy()
    # Views in, results out, all inside the stream context: DLPack exchanges on CUDA are then
    # ordered on torch's current stream, the one the kernels ran on.
    with _on_stream(x.device), core.use_arrays(_core_params(core, names, weights)):
        hc = None if h0 is None else (_view(h0), _view(c0))
        y, (h_n, c_n) = core(_view(x), hc, lengths=lens)
        handle = _new_handle(core, core.detach_tape()) if need_tape else torch.zeros(1, dtype=torch.int64)
        return _tensor(y), _tensor(h_n), _tensor(c_n), handle


@lstm.register_fake
def _lstm_fake(x, h0, c0, weights, lengths, mask_call, uid, config, training, need_tape):
    cfg = parse_config(config)
    D = 2 if cfg["bidirectional"] else 1
    H = cfg["hidden_size"]
    P = cfg["proj_size"] or H
    LD = cfg["num_layers"] * D
    B = x.shape[0] if cfg["batch_first"] else x.shape[1]
    y = x.new_empty((x.shape[0], x.shape[1], D * P))
    return y, x.new_empty((LD, B, P)), x.new_empty((LD, B, H)), torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("gpu_lstm::lstm_backward", mutates_args=())
def lstm_backward(handle: torch.Tensor, dy: torch.Tensor, dh_n: torch.Tensor, dc_n: torch.Tensor,
                  weights: List[torch.Tensor], config: str) -> List[torch.Tensor]:
    """BPTT through the forward that returned ``handle``: [dx, dh0, dc0, *dweights] (weights order)."""
    names = flat_names(parse_config(config))
    _check_weights(names, weights)
    entry = _TAPES.get(int(handle[0]))
    if entry is None:
        raise RuntimeError("gpu_lstm::lstm_backward: the forward's saved state is gone (the forward ran "
                           "without a tape: under no_grad, or with nothing requiring a gradient)")
    core, tape = entry
    with _on_stream(dy.device):
        # The core's gradient buffers, zeroed (the core ADDS into its grads), handed over as views;
        # the results are copies: autograd keeps (and may accumulate into) what we return.
        # A 16-bit model's gradients are float32 (the core's); they are narrowed to the parameters'
        # dtype on return, once (that conversion is the copy).
        grads = _buffers(core, "grads", core.param_shapes(), dy, _grad_dtype(dy.dtype))
        for g in grads.values():
            g.zero_()
        with core.use_arrays(_core_params(core, names, weights), {k: _view(g) for k, g in grads.items()}):
            dx, (dh0, dc0) = core.backward(_view(dy), (_view(dh_n), _view(dc_n)), tape=tape)
        out = [_tensor(dx), _tensor(dh0), _tensor(dc0)]
        for (_, ours, kind), w in zip(names, weights):
            g = grads[ours]   # db to both biases: two copies
            out.append(g.clone() if g.dtype == w.dtype else g.to(w.dtype))
        return out


@lstm_backward.register_fake
def _lstm_backward_fake(handle, dy, dh_n, dc_n, weights, config):
    I = weights[0].shape[1]    # weight_ih_l0: (4H, I)
    dx = dy.new_empty((dy.shape[0], dy.shape[1], I))
    return [dx, torch.empty_like(dh_n), torch.empty_like(dc_n)] + [torch.empty_like(w) for w in weights]


def _setup_context(ctx, inputs, output):
    x, h0, c0, weights, lengths, mask_call, uid, config, training, need_tape = inputs
    ctx.save_for_backward(output[3], *weights)
    ctx.has_state = h0 is not None
    ctx.config = config


def _backward(ctx, dy, dh_n, dc_n, _dhandle):
    handle, *weights = ctx.saved_tensors
    out = lstm_backward(handle, dy, dh_n, dc_n, weights, ctx.config)
    dh0, dc0 = (out[1], out[2]) if ctx.has_state else (None, None)
    return out[0], dh0, dc0, list(out[3:]), None, None, None, None, None, None


lstm.register_autograd(_backward, setup_context=_setup_context)
