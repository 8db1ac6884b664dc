"""The time loop of ONE direction of ONE layer, forward and backward, over the backend seam.

Buffer layout (time-major, row-major), for T steps, B samples, H cells, P = projection size (or H):

* ``gates`` (T, B, 4H): x W^T for all steps from one GEMM, then R h(t-1) added per step; the fused
  cell step turns slice t into the activated gates i, f, g, o that the backward reads.
* ``h`` (T+1, B, P), ``c`` (T+1, B, H): slot 0 holds h0/c0, slot t+1 holds h(t)/c(t). R h(t-1) reads
  ``h[t]`` and dR is one GEMM against ``h[:T]`` (eq. 24).
* ``m`` (T, B, H), projection only: o * tanh(c), the input of h(t) = m(t) W_hr^T.
* ``ct`` (T, B, H), zoneout only: the new cell c~(t) before zoneout mixes it with c(t-1); the
  backward's tanh and output peephole read it, while ``c`` holds the zoned states.

Zoneout (Krueger et al., 2016): c(t) = d_c c(t-1) + (1 - d_c) c~(t), h(t) = d_h h(t-1) + (1 - d_h) h~(t)
with c~, h~ the ordinary LSTM update from (h(t-1), c(t-1)) and d_* per-element Bernoulli(z_*) masks
in training (their expectation z_* in evaluation). ``zoneout`` is None or (d_h (T, B, P) or a scalar,
d_c (T, B, H) or a scalar).

Variable lengths: padded steps (t >= length of the sample) carry h and c unchanged (``seq_carry``),
their gate gradients are zero, and delta-h passes straight through them to the last valid step.
Equation numbers: shared/seeds/lstm-forward-backward-derivation.md (docs/math.md).
"""

import numpy as np

from .gates import PEEPHOLE_ORDER, gate_slice


def length_indices(host_lengths, T):
    """For per-sample lengths (B,): ``valid`` (T, B), True at a sample's real steps, and ``rev``
    (T, B), the time index the reverse direction reads at each step: each sample reversed within its
    own length, padding left in place (an involution, so it also maps back)."""
    t = np.arange(T)[:, None]
    valid = t < host_lengths[None, :]
    return valid, np.where(valid, host_lengths[None, :] - 1 - t, t)


class DirectionParams:
    """The arrays of one direction of one layer (None where the option is off)."""

    def __init__(self, params, prefix, bias, peephole, proj):
        self.W = params[f"{prefix}.W"]                            # (4H, I_k)
        self.R = params[f"{prefix}.R"]                            # (4H, P)
        self.b = params[f"{prefix}.b"] if bias else None          # (4H,)
        self.peep = params[f"{prefix}.P"] if peephole else None   # (3, H): i, f, o
        self.Whr = params[f"{prefix}.Whr"] if proj else None      # (P, H)


class DirectionWorkspace:
    def __init__(self, be, T, B, I, H, P, proj, reverse, zoneout):
        self.gates = be.empty((T, B, 4 * H))
        self.h = be.empty((T + 1, B, P))
        self.c = be.empty((T + 1, B, H), be.wide)   # float32 in a 16-bit model (docs/precision.md)
        self.m = be.empty((T, B, H)) if proj else None
        self.ct = be.empty((T, B, H), be.wide) if zoneout else None
        self.x = be.empty((T, B, I)) if reverse else None   # the time-reversed input
        self.zoneout = None                                  # (d_h, d_c) of the last forward


def _masks(zoneout, t):
    """(mask_h, z_h, mask_c, z_c) for step t: masks in training, constants in evaluation."""
    d_h, d_c = zoneout
    mh, zh = (None, float(d_h)) if isinstance(d_h, float) else (d_h[t], 0.0)
    mc, zc = (None, float(d_c)) if isinstance(d_c, float) else (d_c[t], 0.0)
    return mh, zh, mc, zc


def start(be, prm, ws, x, h0, c0):
    """What every engine does before the time loop: h(0), c(0) into slot 0, and the input part of
    eqs. (1)-(4) for every step at once, gates = x W^T (T*B, 4H). False when T or B is 0."""
    T, B = x.shape[0], x.shape[1]
    ws.h[0] = 0 if h0 is None else h0
    ws.c[0] = 0 if c0 is None else be.astype(c0, ws.c.dtype)   # c is float32 in a 16-bit model
    if T == 0 or B == 0:
        return False
    be.gemm(x.reshape(T * B, x.shape[-1]), prm.W, ws.gates.reshape(T * B, 4 * ws.c.shape[-1]), trans_b=True)
    return True


def forward(be, prm, ws, x, h0, c0, lengths, zoneout=None):
    """Eqs. (1)-(6) over the sequence x (T, B, I). h0 (B, P) and c0 (B, H) may be None (zeros)."""
    T = x.shape[0]
    gates, h, c, m, ct = ws.gates, ws.h, ws.c, ws.m, ws.ct
    ws.zoneout = zoneout
    if not start(be, prm, ws, x, h0, c0):
        return
    for t in range(T):
        # Recurrent part of eqs. (1)-(4): gates[t] += h(t-1) R^T, (B, 4H).
        be.gemm(h[t], prm.R, gates[t], trans_b=True, beta=1.0)
        # Bias, peepholes, nonlinearities, eqs. (5)-(6): one fused step; gates[t] becomes i, f, g, o.
        c_new = c[t + 1] if zoneout is None else ct[t]
        if m is None:
            be.cell_forward(gates[t], prm.b, prm.peep, c[t], c_new, h[t + 1])
        else:
            be.cell_forward(gates[t], prm.b, prm.peep, c[t], c_new, m[t])
            be.gemm(m[t], prm.Whr, h[t + 1], trans_b=True)      # projection: h = m W_hr^T, (B, P)
        if zoneout is not None:
            mh, zh, mc, zc = _masks(zoneout, t)
            be.zoneout_mix(mc, zc, c[t], ct[t], c[t + 1])
            be.zoneout_mix(mh, zh, h[t], h[t + 1], h[t + 1])
        if lengths is not None:
            be.seq_carry(lengths, t, c[t], c[t + 1], False)     # padded samples keep their state
            be.seq_carry(lengths, t, h[t], h[t + 1], False)


def backward(be, prm, grads, prefix, ws, shared, x, dh, dh_n, dc_n, dh0, dc0, dx, lengths, dc_all=None):
    """BPTT through the last forward of this direction; gradients ADD into ``grads``.

    dh (T, B, P): in: the error reaching each h(t) from above (dy, or the layer above's dx), zero at
    padded steps; used as the delta-h workspace (eq. 14). dh_n/dc_n (B, P)/(B, H) or None.
    Outputs dh0, dc0 (B, P)/(B, H) and dx (T, B, I). ``dc_all`` (T, B, H), if given, receives
    delta-c(t) (eq. 16) for diagnostics.
    """
    T = x.shape[0]
    gates, h, c, m, ct, zoneout = ws.gates, ws.h, ws.c, ws.m, ws.ct, ws.zoneout
    dgates, dc, dm = shared.dgates, shared.dc, shared.dm
    dc[...] = 0 if dc_n is None else be.astype(dc_n, dc.dtype)   # nothing flows back from past the last step
    if T == 0:
        dh0[...] = 0 if dh_n is None else dh_n
        dc0[...] = be.astype(dc, be.dtype_of(dc0))
        return
    if dh_n is not None:
        be.add_into(dh[T - 1], dh_n)              # the loss through h_n adds to delta-h(T-1)
    for t in reversed(range(T)):
        if lengths is not None and t > 0:
            be.seq_carry(lengths, t, dh[t], dh[t - 1], True)   # padded: delta-h flows to t-1
        if zoneout is not None:
            # h(t) = d h(t-1) + (1-d) h~(t): split delta-h(t) between the two; dh[t] becomes
            # delta-h~(t) (what the cell and dW_hr see). Same for c; the kept part rejoins the carry.
            mh, zh, mc, zc = _masks(zoneout, t)
            be.zoneout_split(mh, zh, dh[t], dh[t - 1] if t > 0 else dh0, t > 0)
            be.zoneout_split(mc, zc, dc, shared.keep, False)
        if m is None:
            dht = dh[t]
        else:
            be.gemm(dh[t], prm.Whr, dm)           # delta-m(t) = delta-h(t) W_hr, (B, H)
            dht = dm
        # eqs. (16)-(20) times the activation derivatives; dc carries delta-c f between steps.
        be.cell_backward(gates[t], prm.peep, c[t + 1] if ct is None else ct[t], c[t], dht, dc, dgates[t],
                         None if dc_all is None else dc_all[t], lengths, t)
        if zoneout is not None:
            dc += shared.keep
        # eq. (14): delta-h(t-1) += R^T delta(t), i.e. (B, 4H) @ (4H, P).
        first = t == 0 and zoneout is None
        be.gemm(dgates[t], prm.R, dh[t - 1] if t > 0 else dh0, beta=0.0 if first else 1.0)
    dc0[...] = be.astype(dc, be.dtype_of(dc0))   # float32 carry -> the model's dtype (one rounding)
    parameter_gradients(be, prm, grads, prefix, x, h, c, ct, m, dh, dgates, dx)


def parameter_gradients(be, prm, grads, prefix, x, h, c, ct, m, dh, dgates, dx):
    """After the time loop (every engine): dx first (what the layer below waits for), then dW, dR,
    db, the peephole and projection gradients, ADDED into ``grads``. dgates (T, B, 4H) holds every
    step's pre-activation gradients. The two parts write disjoint outputs, so a GPU plan may run the
    second on another stream while the layer below runs its loop (gpu_lstm/plan.py)."""
    input_gradient(be, prm, dgates, dx)
    weight_gradients(be, prm, grads, prefix, x, h, c, ct, m, dh, dgates)


def input_gradient(be, prm, dgates, dx):
    """dx (T, B, I) = dgates W: the gradient with respect to this direction's input."""
    T, B = dgates.shape[0], dgates.shape[1]
    be.gemm(dgates.reshape(T * B, dgates.shape[-1]), prm.W, dx.reshape(T * B, dx.shape[-1]))


def weight_gradients(be, prm, grads, prefix, x, h, c, ct, m, dh, dgates):
    """dW, dR, db (eqs. 23-25), the peephole and projection gradients, ADDED into ``grads``."""
    T, B, H = dgates.shape[0], dgates.shape[1], c.shape[-1]
    TB = T * B
    dg = dgates.reshape(TB, 4 * H)
    be.gemm(dg, x.reshape(TB, x.shape[-1]), grads[f"{prefix}.W"], trans_a=True, beta=1.0)   # eq. (23)
    be.gemm(dg, h[:T].reshape(TB, h.shape[-1]), grads[f"{prefix}.R"], trans_a=True, beta=1.0)  # eq. (24)
    if prm.b is not None:
        be.sum_rows(dg, grads[f"{prefix}.b"])                                                   # eq. (25)
    if prm.peep is not None:
        # d/dp of p * c: sum over steps and samples of the gate's pre-activation gradient times the
        # cell it looks at: c(t-1) for i and f, c(t) for o.
        dP = grads[f"{prefix}.P"]
        looks_at = {"i": c[:T], "f": c[:T], "o": c[1:] if ct is None else ct}
        for row, gate in enumerate(PEEPHOLE_ORDER):
            cells = looks_at[gate]   # (T, B, H); product and sum fused, no temporary
            be.sum_rows_prod(dg, gate_slice(gate, H).start, cells.reshape(TB, H), dP[row])
    if m is not None:
        # dW_hr = sum_t delta-h(t)^T m(t), (P, H); padded rows of dh were cleared by seq_carry.
        be.gemm(dh.reshape(TB, dh.shape[-1]), m.reshape(TB, H), grads[f"{prefix}.Whr"], trans_a=True, beta=1.0)
