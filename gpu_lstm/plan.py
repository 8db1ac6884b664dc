"""Plans: a forward and backward computed once per shape, then replayed (issue 9, sections 1 and 2).

A :class:`Plan` is built once per (model configuration, T, B, options in use) and owns every buffer
of one forward and its backward: the saved state (a :class:`~gpu_lstm.lstm.Tape`), static input
buffers (x, h0/c0, lengths and the index arrays derived from them, dy, dh_n/dc_n) and static output
buffers (h_n/c_n, cells, dh0/dc0). Building it walks the same time loop as the eager path
(:mod:`gpu_lstm._direction` and :class:`~gpu_lstm.lstm.LSTM`), in the same order, but instead of
running each operation it asks the backend to *prepare* it: a zero-argument callable with every
pointer, leading dimension, m/n/k and kernel argument tuple fixed (only the step index differs from
step to step, and it is baked into that step's callable). Replaying is then a flat loop over
callables: no slicing, no shape arithmetic, no argument conversion per step.

* NumPy backend: the callables are the backend's own methods bound to precomputed views, so the CPU
  path computes exactly what the eager loop computes, bitwise.
* GPU, ``algo="plan"``: cuBLAS through the capture-capable binding (cublas_capture.py), kernels with
  prebuilt argument tuples, replayed from Python.
* GPU, ``algo="graph"``: the first call runs the plan and then captures it into a CUDA graph on a
  private stream (cupy.cuda.Stream.begin_capture/end_capture); later calls do one input copy and one
  graph launch on the current stream, whatever T is.
* GPU, bidirectional layers: the reverse direction's operations are lane 1, between a fork and a join
  (:class:`Sync`): a second stream, forked and joined by events, also inside a capture, with its own
  cuBLAS handle and backward scratch, so the two directions run concurrently. NumPy replays the list
  in order.
* GPU, stacked unidirectional layers: lane 1 runs each layer's weight gradients while the layer
  below runs its backward loop on lane 0 (``Plan.grad_lane``).

Training with dropout or zoneout: the mask kernels read the Philox call counter from a one-element
device array the plan owns (``call_at``, cuda/lstm_kernels.cu), written before each forward replay
(``backend.set_counter``: in place on NumPy, an async copy from pinned memory on the GPU, no host
sync); the backward reads the same array, so it recomputes its own forward's masks.

What a plan does not cover falls back to the eager loop for that call: T == 0 or B == 0, and
``track_gradient_flow`` (docs/gpu-engine.md).

Bindings: a plan's forward is bound to the model's parameter arrays, its backward also to the
gradient arrays, by memory: (address, shape, strides, dtype) of each. Every replay compares them; if
one now lies elsewhere, the operations that read it are built again and their graphs dropped, so a
graph never reads memory the model no longer uses (the plan also holds a reference to every array it
is bound to, so none is freed, and its address reused, under it). Fresh views of the same memory
rebuild nothing: ``gpu_lstm.torch`` hands the core new views of the same Parameters every call.
:meth:`LSTM.set_params`, checkpoint loading and ``load_torch_state_dict`` copy in place and need no
rebuild.

Detached tapes: a plan's tape is handed out by ``detach_tape()`` and the plan returns to the model's
pool when the caller drops the tape; the next forward of that shape takes a free plan or builds one.
Chosen over copying the saved buffers out and back (two device-to-device copies of the whole tape per
training step: gates, h, c of every layer) and over recapturing per forward (milliseconds of host
time per call): in steady state an autograd engine with N forwards in flight uses N plans and no
copies or rebuilds at all.
"""

import copy
import functools
import os
import weakref

import numpy as np

from . import _direction as dirn
from . import philox

ALGOS = ("auto", "graph", "plan", "eager", "persistent")
ALGO_ENV = "GPU_LSTM_ALGO"
MAX_FREE_PLANS = 4      # free (not handed out) plans kept per model, beyond the one in use


class Sync:
    """A fork or join marker in a list of prepared operations: where the second lane (a second CUDA
    stream) starts after everything before it on the first, and where the first waits for the second.
    A no-op when called: a backend without lanes (NumPy) replays the list in order."""

    def __init__(self, kind):
        self.kind = self.label = kind
        self.lane = 0

    def __call__(self):
        pass


class _Ops(list):
    """Prepared operations: zero-argument callables, each with a ``label`` for error messages and a
    ``lane``: 0, or 1 between a fork and a join (the reverse direction of a bidirectional layer, or a
    layer's weight gradients: work a GPU backend runs on a second stream)."""

    lane = 0
    grads_forked = False   # a weight-gradient fork is outstanding (Plan.grad_lane)

    def add(self, op, label):
        if op is None:
            return
        try:
            op.label = label
        except AttributeError:
            op = functools.partial(op)
            op.label = label
        op.lane = self.lane
        self.append(op)

    def gemm(self, be, *args, **kw):
        """be.prepare_gemm on this lane (a GPU backend binds each lane's GEMMs to its own cuBLAS handle)."""
        return be.prepare_gemm(*args, lane=self.lane, **kw)

    def fork(self):
        self.append(Sync("fork"))

    def join(self):
        self.append(Sync("join"))


class _Recorder:
    """Stands in for a backend inside code written for the eager loop (``_direction``): each call of
    ``gemm``, ``sum_rows``, ... is prepared and appended to ``ops`` instead of run."""

    def __init__(self, be, ops, tag):
        self._be, self._ops, self._tag = be, ops, tag

    def gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
        self._ops.add(self._ops.gemm(self._be, a, b, out, trans_a=trans_a, trans_b=trans_b, beta=beta),
                      f"{self._tag} gemm -> {out.shape}")

    def __getattr__(self, name):
        def record(*args):
            self._ops.add(self._be.prepare(name, *args), f"{self._tag} {name}")
        return record


def replay(ops):
    op = None
    try:
        for op in ops:
            op()
    except Exception as exc:
        label = getattr(op, "label", "?")
        raise RuntimeError(f"plan step {label} failed: {type(exc).__name__}: {exc}") from exc


def _memory(a):
    """Where an array's elements are: (address, shape, strides, dtype). Two arrays with the same key
    are the same elements (a plan holds the arrays it was built for, so their memory cannot be freed
    and handed to another array while it is bound)."""
    ptr = a.__array_interface__["data"][0] if type(a) is np.ndarray else a.data.ptr   # NumPy / CuPy
    return ptr, a.shape, a.strides, a.dtype.str


def _binding(arrays):
    """(memory keys, the arrays themselves) of a name -> array dict, in name order."""
    names = sorted(arrays)
    return tuple((n, _memory(arrays[n])) for n in names), tuple(arrays[n] for n in names)


class Plan:
    def __init__(self, m, key):
        from .lstm import Tape
        T, B, has_len, has_hc, learned, cells, mask_seed = key
        be, xp = m._be, m._be.xp
        L, D, H, P = m.num_layers, m.num_directions, m.hidden_size, m.output_size
        self.key, self.T, self.B = key, T, B
        self.has_len, self.has_hc, self.learned, self.want_cells = has_len, has_hc, learned, cells
        # Training with dropout or zoneout: every mask launch reads the call counter from this device
        # scalar (cuda/lstm_kernels.cu, call_at), written before each forward replay; the backward
        # reads the same scalar, so it recomputes its own forward's masks (the plan, handed out with its
        # tape, runs no other forward in between).
        self.counter = be.counter() if mask_seed is not None else None
        LD, TB = L * D, T * B
        self.template = t = Tape(m, T, B)
        # Static inputs: copied into before each replay.
        self.h0 = be.empty((LD, B, P)) if has_hc else None
        self.c0 = be.empty((LD, B, H)) if has_hc else None
        if has_len:
            self.lengths = xp.zeros((B,), dtype=np.int64)
            self.valid = be.empty((T, B, 1))
            # the same 0/1 in the wide type, for the float32 cells of a 16-bit model
            self.valid_wide = self.valid if be.wide == m.dtype else be.empty((T, B, 1), be.wide)
            self.rev_t = xp.zeros((T, B), dtype=np.int64)     # reversed time index per sample
            self.rev = xp.zeros((TB,), dtype=np.int64)        # the same as rows of a (T*B, n) view
            t.lengths, t.valid = self.lengths, self.valid
            t.rev_index = (self.rev_t, xp.arange(B)[None, :])  # what the eager backward indexes with
            self.host_lengths = None                          # the lengths now in self.lengths
        else:
            self.lengths = self.valid = self.rev = self.rev_t = None
            t.lengths, t.valid, t.rev_index = None, None, (slice(None, None, -1),)
        t.learned_state = learned
        t.masks = [None] * L
        t.inputs = [t.x if k == 0 else t.out[k - 1] for k in range(L)]
        train = self.counter is not None
        for k in range(L):
            if train and k > 0 and m.dropout:     # as LSTM._forward: dropout on the layer's input
                # the scale in the wide type, as the eager loop (a 16-bit model's 1/(1-p) is not rounded)
                t.masks[k] = philox.DropoutMask(mask_seed, k, 0, m.dropout, (T, B, m._layer_input_size(k)),
                                                m._be.wide, counter=self.counter)
                t.inputs[k] = t.dropped[k]
            for d in range(D):
                if not m.zoneout:
                    zo = None
                elif not train:                  # evaluation: the constants
                    zo = (m.zoneout_h, m.zoneout_c)
                else:                            # as LSTM._zoneout_masks, bound to the counter
                    zo = (philox.ZoneoutMask(mask_seed, k, d, philox.ZONEOUT_H, 0, m.zoneout_h, (T, B, P),
                                             counter=self.counter),
                          philox.ZoneoutMask(mask_seed, k, d, philox.ZONEOUT_C, 0, m.zoneout_c, (T, B, H),
                                             counter=self.counter))
                t.dirs[k][d].zoneout = zo
        # Static outputs.
        self.hn, self.cn = be.empty((LD, B, P)), be.empty((LD, B, H))
        # cells are the float32 cell states of a 16-bit model (as the eager path returns them)
        self.cells = be.empty((T, B, D * H), be.wide) if cells else None
        self.gH = be.empty((T, B, H), be.wide) if (has_len and D == 2 and cells) else None   # reversed gathers
        # Backward buffers (their own per plan; a plan's backward graph is bound to them).
        self.dy = be.empty((T, B, D * P))
        self.dhn, self.dcn = be.empty((LD, B, P)), be.empty((LD, B, H))
        self.dh0, self.dc0 = be.empty((LD, B, P)), be.empty((LD, B, H))
        self.scratch = None
        # GPU: the two directions of a bidirectional layer run concurrently on two streams (lanes).
        self.lanes = D == 2 and getattr(be, "lanes", 1) == 2
        # GPU, a stack of unidirectional layers: each layer's weight gradients (dW, dR, db, ...) run
        # on the second stream while the layer below runs its backward loop on the first. Adjacent
        # layers then use alternate loop scratch (dgates, dh, ...): the weight gradients of layer k
        # read layer k's dgates while layer k-1's loop writes its own.
        self.grad_lane = D == 1 and L >= 2 and getattr(be, "lanes", 1) == 2
        self.part = be.empty((T, B, P)) if has_len else None
        self.itmp = [be.empty((T, B, m._layer_input_size(k))) for k in range(L)] if D == 2 else None
        self.rebind(m)

    # ---- building ----------------------------------------------------------------------------
    def rebind(self, m):
        """(Re)build the forward's prepared operations for the model's current parameter arrays; the
        backward's are built again on first use."""
        from .lstm import _Scratch
        if self.scratch is None:
            self.scratch = _Scratch(m, self.T, self.B)
            # Two lanes: the reverse direction's backward gets its own scratch (dh, dc, dgates, dx, ...),
            # so the two directions never share a buffer while they run concurrently.
            self.rscratch = _Scratch(m, self.T, self.B) if self.lanes else None
            self.alt = None      # grad_lane: made by the first backward build (inference never pays)
        self.params_key, self.params_held = _binding(m.params)
        self.fwd = self._build_forward(m)
        self.grads_key = self.grads_held = None
        self.bwd = {}            # (dy given, dhc given) -> _Ops, built on first use
        self.graphs = {}         # "fwd" / ("bwd", dy given, dhc given) -> captured graph
        return self

    def bind(self, m, backward):
        """Before a replay: rebuild what reads an array whose memory changed (compared by address,
        shape, strides and dtype, so fresh views of the same memory, as gpu_lstm.torch makes every
        call, rebuild nothing). The forward reads the parameters; the backward also the gradients."""
        key, held = _binding(m.params)
        if key != self.params_key:
            self.rebind(m)                       # a parameter array was replaced
        if backward:
            key, held = _binding(m.grads)
            if key != self.grads_key:            # a gradient array was replaced: backward ops only
                self.grads_key, self.grads_held = key, held
                self.bwd = {}
                self.graphs = {k: g for k, g in self.graphs.items() if k == "fwd"}

    def _build_forward(self, m):
        be, xp = m._be, m._be.xp
        t, T, B = self.template, self.T, self.B
        L, D, H, P = m.num_layers, m.num_directions, m.hidden_size, m.output_size
        TB = T * B
        ops = _Ops()
        for k in range(L):
            layer_in = t.inputs[k]
            I = layer_in.shape[-1]
            if t.masks[k] is not None:
                ops.add(be.prepare("dropout", t.masks[k], t.out[k - 1], layer_in), f"l{k} dropout")
            if self.lanes:
                ops.fork()
            for d in range(D):
                i = k * D + d
                dws = t.dirs[k][d]
                prm = m._direction_params(k, d)
                tag = f"l{k}{'r' if d else ''}"
                ops.lane = d if self.lanes else 0
                if d == 1:
                    if self.has_len:
                        ops.add(functools.partial(xp.take, layer_in.reshape(TB, I), self.rev, axis=0,
                                                  out=dws.x.reshape(TB, I)), f"{tag} reverse x")
                    else:
                        ops.add(functools.partial(xp.copyto, dws.x, layer_in[::-1]), f"{tag} reverse x")
                    x = dws.x
                else:
                    x = layer_in
                # Initial state, as LSTM._initial_state.
                if self.has_hc:
                    ops.add(functools.partial(xp.copyto, dws.h[0], self.h0[i]), f"{tag} h0")
                    ops.add(_widen(be, xp, dws.c[0], self.c0[i]), f"{tag} c0")
                elif self.learned:
                    p = m._prefix(k, d)
                    ops.add(functools.partial(xp.copyto, dws.h[0], xp.broadcast_to(m.params[f"{p}.h0"], (B, P))),
                            f"{tag} h0")
                    ops.add(_widen(be, xp, dws.c[0], m.params[f"{p}.c0"], broadcast=True), f"{tag} c0")
                else:
                    ops.add(functools.partial(dws.h[0].fill, 0), f"{tag} h0")
                    ops.add(functools.partial(dws.c[0].fill, 0), f"{tag} c0")
                self._direction_forward(be, ops, tag, prm, dws, x)
                if d == 0:
                    ops.add(functools.partial(xp.copyto, t.out[k][:, :, :P], dws.h[1:]), f"{tag} out")
                    if self.want_cells and k == L - 1:
                        ops.add(functools.partial(xp.copyto, self.cells[:, :, :H], dws.c[1:]), f"{tag} cells")
                else:
                    last = self.want_cells and k == L - 1
                    for src, dst, gather in ((dws.h, t.out[k][:, :, P:], self.part),
                                             (dws.c, self.cells[:, :, H:] if last else None, self.gH)):
                        if dst is None:
                            continue
                        if self.has_len:   # gather the reversed rows into a contiguous buffer, then place
                            n = src.shape[-1]
                            ops.add(functools.partial(xp.take, src[1:].reshape(TB, n), self.rev, axis=0,
                                                      out=gather.reshape(TB, n)), f"{tag} reverse back")
                            ops.add(functools.partial(xp.copyto, dst, gather), f"{tag} out")
                        else:
                            ops.add(functools.partial(xp.copyto, dst, src[1:][::-1]), f"{tag} out")
            if self.lanes:
                ops.lane = 0
                ops.join()
            if self.has_len:
                ops.add(functools.partial(xp.multiply, t.out[k], self.valid, out=t.out[k]), f"l{k} mask out")
        for k in range(L):
            for d in range(D):
                i = k * D + d
                ops.add(functools.partial(xp.copyto, self.hn[i], t.dirs[k][d].h[T]), f"h_n[{i}]")
                ops.add(_narrow(be, xp, self.cn[i], t.dirs[k][d].c[T]), f"c_n[{i}]")
        if self.want_cells and self.has_len:
            ops.add(functools.partial(xp.multiply, self.cells, self.valid_wide, out=self.cells), "mask cells")
        return ops

    def _direction_forward(self, be, ops, tag, prm, ws, x):
        """_direction.forward, prepared (same operations, same order)."""
        T, B = self.T, self.B
        H = ws.c.shape[-1]
        gates, h, c, m, ct, zo = ws.gates, ws.h, ws.c, ws.m, ws.ct, ws.zoneout
        lengths = self.lengths
        ops.add(ops.gemm(be, x.reshape(T * B, x.shape[-1]), prm.W, gates.reshape(T * B, 4 * H), trans_b=True),
                f"{tag} gemm x W^T")
        for t in range(T):
            ops.add(ops.gemm(be, h[t], prm.R, gates[t], trans_b=True, beta=1.0), f"{tag} t={t} gemm h R^T")
            c_new = c[t + 1] if zo is None else ct[t]
            if m is None:
                ops.add(be.prepare("cell_forward", gates[t], prm.b, prm.peep, c[t], c_new, h[t + 1]),
                        f"{tag} t={t} cell_forward")
            else:
                ops.add(be.prepare("cell_forward", gates[t], prm.b, prm.peep, c[t], c_new, m[t]),
                        f"{tag} t={t} cell_forward")
                ops.add(ops.gemm(be, m[t], prm.Whr, h[t + 1], trans_b=True), f"{tag} t={t} gemm m Whr^T")
            if zo is not None:
                mh, zh, mc, zc = dirn._masks(zo, t)
                ops.add(be.prepare("zoneout_mix", mc, zc, c[t], ct[t], c[t + 1]), f"{tag} t={t} zoneout c")
                ops.add(be.prepare("zoneout_mix", mh, zh, h[t], h[t + 1], h[t + 1]), f"{tag} t={t} zoneout h")
            if lengths is not None:
                ops.add(be.prepare("seq_carry", lengths, t, c[t], c[t + 1], False), f"{tag} t={t} carry c")
                ops.add(be.prepare("seq_carry", lengths, t, h[t], h[t + 1], False), f"{tag} t={t} carry h")

    def backward_ops(self, m, dy_given, dhc_given):
        key = (dy_given, dhc_given)
        if key not in self.bwd:
            self.bwd[key] = self._build_backward(m, dy_given, dhc_given)
        return self.bwd[key]

    def _build_backward(self, m, dy_given, dhc_given):
        be, xp = m._be, m._be.xp
        t, s, T, B = self.template, self.scratch, self.T, self.B
        L, D, P = m.num_layers, m.num_directions, m.output_size
        TB = T * B
        ops = _Ops()
        dout = self.dy if dy_given else None
        if self.grad_lane and self.alt is None:
            self.alt = s.alternate(m)
        for k in reversed(range(L)):
            din = s.din[k]
            I = din.shape[-1]
            if self.lanes:
                ops.fork()
            for d in range(D):
                i = k * D + d
                dws = t.dirs[k][d]
                prm = m._direction_params(k, d)
                prefix = m._prefix(k, d)
                tag = f"l{k}{'r' if d else ''}"
                ops.lane = d if self.lanes else 0
                sd = self.rscratch if self.lanes and d == 1 else s   # the reverse lane's own scratch
                if self.grad_lane and k % 2:
                    sd = self.alt                                     # (see grad_lane)
                dh = sd.dh
                if dout is None:
                    ops.add(functools.partial(dh.fill, 0), f"{tag} dh")
                else:
                    part = dout[:, :, d * P:(d + 1) * P]
                    if self.has_len:
                        ops.add(functools.partial(xp.multiply, part, self.valid, out=dh if d == 0 else self.part),
                                f"{tag} dh")
                        if d == 1:
                            ops.add(functools.partial(xp.take, self.part.reshape(TB, P), self.rev, axis=0,
                                                      out=dh.reshape(TB, P)), f"{tag} reverse dh")
                    else:
                        ops.add(functools.partial(xp.copyto, dh, part if d == 0 else part[::-1]), f"{tag} dh")
                x = t.inputs[k] if d == 0 else dws.x
                self._direction_backward(be, xp, ops, tag, prm, m.grads, prefix, dws, sd, x, dh,
                                         self.dhn[i] if dhc_given else None, self.dcn[i] if dhc_given else None,
                                         self.dh0[i], self.dc0[i], sd.dx[k])
                if self.learned:
                    ops.add(be.prepare("sum_rows", self.dh0[i], m.grads[f"{prefix}.h0"]), f"{tag} d h0")
                    ops.add(be.prepare("sum_rows", self.dc0[i], m.grads[f"{prefix}.c0"]), f"{tag} d c0")
                if d == 0:
                    ops.add(functools.partial(xp.copyto, din, sd.dx[k]), f"{tag} din")
                    continue
                if self.lanes:                   # din needs both directions: back on the first lane
                    ops.lane = 0
                    ops.join()
                if self.has_len:
                    ops.add(functools.partial(xp.take, sd.dx[k].reshape(TB, I), self.rev, axis=0,
                                              out=self.itmp[k].reshape(TB, I)), f"{tag} reverse dx")
                    ops.add(_add(be, xp, din, self.itmp[k]), f"{tag} din")
                else:
                    ops.add(_add(be, xp, din, sd.dx[k], reverse=True), f"{tag} din")
            if t.masks[k] is not None:           # dropout on this layer's input, the forward's mask
                ops.add(be.prepare("dropout", t.masks[k], din, din), f"l{k} dropout")
            dout = din
        if ops.grads_forked:
            ops.join()                           # the backward ends when every weight gradient is done
        return ops

    def _direction_backward(self, be, xp, ops, tag, prm, grads, prefix, ws, shared, x, dh, dh_n, dc_n, dh0, dc0, dx):
        """_direction.backward, prepared (same operations, same order); T > 0 here."""
        T = self.T
        gates, h, c, m, ct, zo = ws.gates, ws.h, ws.c, ws.m, ws.ct, ws.zoneout
        dgates, dc, dm = shared.dgates, shared.dc, shared.dm
        lengths = self.lengths
        if dc_n is None:
            ops.add(functools.partial(dc.fill, 0), f"{tag} dc")
        else:
            ops.add(_widen(be, xp, dc, dc_n), f"{tag} dc")
        if dh_n is not None:
            ops.add(_add(be, xp, dh[T - 1], dh_n), f"{tag} dh_n")
        for t in reversed(range(T)):
            if lengths is not None and t > 0:
                ops.add(be.prepare("seq_carry", lengths, t, dh[t], dh[t - 1], True), f"{tag} t={t} carry dh")
            if zo is not None:
                mh, zh, mc, zc = dirn._masks(zo, t)
                ops.add(be.prepare("zoneout_split", mh, zh, dh[t], dh[t - 1] if t > 0 else dh0, t > 0),
                        f"{tag} t={t} zoneout dh")
                ops.add(be.prepare("zoneout_split", mc, zc, dc, shared.keep, False), f"{tag} t={t} zoneout dc")
            if m is None:
                dht = dh[t]
            else:
                ops.add(ops.gemm(be, dh[t], prm.Whr, dm), f"{tag} t={t} gemm dh Whr")
                dht = dm
            ops.add(be.prepare("cell_backward", gates[t], prm.peep, c[t + 1] if ct is None else ct[t], c[t], dht,
                               dc, dgates[t], None, lengths, t), f"{tag} t={t} cell_backward")
            if zo is not None:
                ops.add(functools.partial(xp.add, dc, shared.keep, out=dc), f"{tag} t={t} dc keep")
            first = t == 0 and zo is None
            ops.add(ops.gemm(be, dgates[t], prm.R, dh[t - 1] if t > 0 else dh0, beta=0.0 if first else 1.0),
                    f"{tag} t={t} gemm dgates R")
        ops.add(_narrow(be, xp, dc0, dc), f"{tag} dc0")
        # After the loop, the very calls of every engine (dx, then eqs. 23-25, peepholes, projection),
        # recorded as prepared operations instead of run.
        rec = _Recorder(be, ops, tag)
        dirn.input_gradient(rec, prm, dgates, dx)
        if not self.grad_lane:
            dirn.weight_gradients(rec, prm, grads, prefix, x, h, c, ct, m, dh, dgates)
            return
        if ops.grads_forked:
            ops.join()      # the layer above's weight gradients are done: its scratch is free again
        ops.fork()          # after this layer's loop: its dgates and dh are final
        ops.grads_forked, ops.lane = True, 1
        dirn.weight_gradients(rec, prm, grads, prefix, x, h, c, ct, m, dh, dgates)
        ops.lane = 0


    # ---- running -------------------------------------------------------------------------------
    def shell(self):
        """A Tape object over this plan's buffers (the tape the model keeps or lends out)."""
        tape = copy.copy(self.template)
        tape.plan = self
        return tape

    def run(self, be, graph_key, ops, use_graph):
        if not use_graph:
            be.run_prepared(ops)
            return
        graph = self.graphs.get(graph_key)
        if graph is None:
            be.run_prepared(ops)                  # this call's result; it also warms every kernel
            self.graphs[graph_key] = be.capture(ops)
        else:
            be.launch_graph(graph)


def _upload(xp, dst, host):
    if xp is np:
        dst[...] = host
    else:
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype))


def _bits(be):
    """True where the model's 16-bit values live as uint16 bit patterns (a bfloat16 model on the GPU):
    there no CuPy copy or arithmetic may convert or add them, so the plan's conversions between a
    16-bit buffer and a float32 one, and its sums of 16-bit buffers, are kernels (the eager loop's
    be.astype and be.add_into do the same on the fly)."""
    storage = getattr(be, "storage", None)
    return storage is not None and np.dtype(storage) == np.uint16 and np.dtype(be.dtype) != np.uint16


def _widen(be, xp, dst, src, broadcast=False):
    """dst (wide) = src (model dtype) widened exactly; ``broadcast``: src is one row for every row."""
    if _bits(be):
        return be.prepare("widen_into", src, dst, broadcast)
    return functools.partial(xp.copyto, dst, xp.broadcast_to(src, dst.shape) if broadcast else src)


def _narrow(be, xp, dst, src):
    """dst (model dtype) = src (wide) rounded once to nearest even, as be.astype rounds."""
    if _bits(be):
        return be.prepare("narrow_copy", src, dst)
    return functools.partial(xp.copyto, dst, src)


def _add(be, xp, dst, src, reverse=False):
    """dst += src (src's rows, axis 0, in reverse order with ``reverse``), as be.add_into adds."""
    if _bits(be):
        return be.prepare("add_rows", dst, src, reverse)
    return functools.partial(xp.add, dst, src[::-1] if reverse else src, out=dst)


def forward(m, x, h0, c0, host_lengths, return_cells, algo):
    """LSTM._forward through a plan (arguments already checked; x time-major); ``algo`` is 'plan' or
    'graph' (what :func:`engine` chose for this call)."""
    be, xp = m._be, m._be.xp
    T, B = int(x.shape[0]), int(x.shape[1])
    train = m.training and m.stochastic
    key = (T, B, host_lengths is not None, h0 is not None, h0 is None and m.learn_initial_state,
           bool(return_cells), m._dropout_seed if train else None)
    ws = m._saved
    plan = ws.plan if ws is not None else None
    # Until this forward has run, the model holds no tape: a forward that fails (a plan that cannot be
    # built, a replay that raises) leaves no half-written tape for backward, and a plan given back to
    # the pool is never also the model's (two later tapes would share its buffers).
    m._saved = None
    if plan is None or plan.key != key:
        m._plans.give_back(plan)
        plan = m._plans.take(m, key)
        ws = plan.shell()
    plan.bind(m, backward=False)              # rebuilt only if a parameter's memory changed
    t = plan.template
    t.x[...] = x                              # own copy, as in the eager path
    if h0 is not None:
        plan.h0[...] = h0
        plan.c0[...] = c0
    if host_lengths is not None and (plan.host_lengths is None
                                     or not np.array_equal(plan.host_lengths, host_lengths)):
        valid, rev = dirn.length_indices(host_lengths, T)                        # (T, B) each
        _upload(xp, plan.lengths, host_lengths)
        _upload(xp, plan.valid, valid.astype(m.dtype)[:, :, None])
        if plan.valid_wide is not plan.valid:
            _upload(xp, plan.valid_wide, valid.astype(be.wide)[:, :, None])
        _upload(xp, plan.rev_t, rev)
        _upload(xp, plan.rev, (rev * B + np.arange(B)[None, :]).reshape(-1))
        plan.host_lengths = host_lengths.copy()
    ws.mask_call = m._mask_calls
    if train:                                 # as the eager path: every training forward draws fresh masks
        m._mask_calls += 1
        be.set_counter(plan.counter, ws.mask_call)   # ordered before the replay, no host sync
    plan.use_graph = algo == "graph"          # the backward of this forward replays the same way
    plan.run(be, "fwd", plan.fwd, plan.use_graph)
    m._saved = ws
    y = t.out[m.num_layers - 1]
    y = (y.transpose(1, 0, 2) if m.batch_first else y).copy()
    out = (y, (plan.hn.copy(), plan.cn.copy()))
    if return_cells:
        out += ((plan.cells.transpose(1, 0, 2) if m.batch_first else plan.cells).copy(),)
    return out


def backward(m, ws, dy, dh_n, dc_n):
    """LSTM._backward through the plan of the tape ws (arguments checked; dy time-major or None)."""
    be, xp = m._be, m._be.xp
    plan = ws.plan
    plan.bind(m, backward=True)
    if dy is not None:
        plan.dy[...] = dy
    if dh_n is not None:
        plan.dhn[...] = dh_n
        plan.dcn[...] = dc_n
    dy_given, dhc_given = dy is not None, dh_n is not None
    ops = plan.backward_ops(m, dy_given, dhc_given)
    plan.run(be, ("bwd", dy_given, dhc_given), ops, plan.use_graph)
    dx = plan.scratch.din[0]
    dx = xp.ascontiguousarray(dx.transpose(1, 0, 2)) if m.batch_first else dx.copy()
    return dx, (plan.dh0.copy(), plan.dc0.copy())


def plan_ok(m, T, B):
    """Whether this forward can run from a plan (else the eager loop, see the module docstring)."""
    return T > 0 and B > 0 and not m.track_gradient_flow


def engine(m, T, B):
    """How this forward runs: 'graph' or 'plan' (through a plan), 'persistent' (the eager layer loop
    with each direction's time loop in one persistent kernel launch, gpu_lstm/backend/persistent.py)
    or 'eager'. ``algo='persistent'`` falls back to the engine 'auto' picks where the persistent
    kernels cannot run this call (the reason goes to ``m.algo_reason``)."""
    algo = m._algo
    if algo == "persistent":
        from .backend.persistent import persistent_supported
        ok, why = persistent_supported(m, T, B)
        if ok:
            m.algo_reason = "requested"
            return "persistent"
        algo = m._persistent_fallback
        m.algo_reason = f"persistent kernels not used for (T={T}, B={B}): {why}; ran {algo!r}"
    if algo in ("graph", "plan") and plan_ok(m, T, B):
        return algo
    return "eager"


def resolve_algo(algo, be, use_env=True):
    """The algorithm a model runs: 'graph' and 'plan' as asked (graph needs the GPU), 'auto' picks
    graphs on the GPU (eager if the capture-capable cuBLAS binding cannot be loaded) and plans
    elsewhere. The environment variable GPU_LSTM_ALGO (one of ALGOS; 'auto' or unset: no override)
    sets what 'auto' means on the GPU (A/B runs, the GPU test module); it is checked on every device,
    and ignored with ``use_env=False`` (the persistent engine's fallback: what plain 'auto' runs).
    Returns (algo, reason)."""
    if not isinstance(algo, str) or algo not in ALGOS:
        raise ValueError(f"algo: expected one of {ALGOS}, got {algo!r}")
    graphs = getattr(be, "graph_support", None)
    forced = os.environ.get(ALGO_ENV, "").strip().lower() if use_env else ""
    if forced and forced not in ALGOS:
        raise ValueError(f"{ALGO_ENV}: expected one of {ALGOS} (or unset), got {forced!r}")
    if algo == "auto" and forced and graphs is not None:
        algo = forced
    if algo == "eager":
        return "eager", "requested"
    if algo == "persistent":
        from .backend.persistent import has_persistent
        if not has_persistent(be):
            raise ValueError(f"algo='persistent': the persistent kernels need device='gpu' (this model is on "
                             f"'{be.name}'); use algo='auto'")
        return "persistent", "requested"
    if algo == "graph" and graphs is None:
        raise ValueError(f"algo='graph': CUDA graphs need device='gpu' (this model is on '{be.name}'); "
                         "use algo='plan' or 'auto'")
    if graphs is None:
        return "plan", "requested" if algo == "plan" else "auto: plans on this device"
    ok, why = graphs()
    if not ok:
        if algo == "auto":
            return "eager", f"auto: {why}"
        raise RuntimeError(f"algo={algo!r}: {why}")
    return ("graph", "auto: CUDA graphs") if algo == "auto" else (algo, "requested")


class PlanCache:
    """A model's plans: the one in use, free ones by key, and handed-out ones (their tapes detached)."""

    def __init__(self):
        self.free = {}     # key -> [Plan]

    def take(self, m, key):
        plans = self.free.get(key)
        if plans:
            plan = plans.pop()
            if not plans:
                del self.free[key]
            return plan
        return Plan(m, key)

    def give_back(self, plan):
        if plan is None:
            return
        self.free.setdefault(plan.key, []).append(plan)
        total = sum(len(v) for v in self.free.values())
        while total > MAX_FREE_PLANS:             # drop the oldest free plans beyond the cap
            oldest = next(iter(self.free))
            self.free[oldest].pop(0)
            if not self.free[oldest]:
                del self.free[oldest]
            total -= 1

    def lend(self, tape, plan):
        """The tape leaves the model: its plan comes back here when the caller drops the tape."""
        weakref.finalize(tape, _return_plan, weakref.ref(self), plan)


def _return_plan(cache_ref, plan):
    cache = cache_ref()
    if cache is not None:
        cache.give_back(plan)
