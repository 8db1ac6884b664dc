"""Where the time of one training step goes: GEMMs, fused cell kernels, reductions, and the rest,
on either device, with the host's time and the device's time reported SEPARATELY.

Why two columns: on a GPU, an op's host time is what Python and CuPy spend issuing it (argument
checks, the launch call); its device time is how long the GPU runs it. In the host-bound regime
(small shapes, per-step launches) events recorded around each op while the GPU is idle would measure
the op's own dispatch, not its execution. So on the GPU each profiled step starts with a short
busy-wait kernel (``gl_profile_spin``) that keeps the stream occupied while Python issues the whole
step: every later launch is already queued when the GPU gets to it, and the events around an op
measure its device execution only. The spin length is set from the step's measured host time (and
doubled if the host ever outran it, which the profile reports). On the CPU everything is synchronous
and there is one column, the host time.

Host time: perf_counter around each seam call. Device time: CUDA events around the same call.
"other" is the step's total minus the timed operations: small CuPy elementwise ops and copies, and
(host column) the Python between seam calls.
"""

import collections
import time

import numpy as np

from .lstm import LSTM

CATEGORIES = {"gemm": "cuBLAS/BLAS GEMMs", "cell_forward": "fused cell forward",
              "cell_backward": "fused cell backward", "sum_rows": "db reduction"}

# Busy-wait on the device for a number of clock cycles: only to keep the stream busy while the host
# issues a step (see the module docstring). clock64 counts SM cycles; the exact duration does not matter.
_SPIN_SOURCE = r'''
extern "C" __global__ void gl_profile_spin(const long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
'''


class _Timed:
    def __init__(self, inner, gpu):
        self._inner, self._gpu = inner, gpu
        self.records = []   # (category, host seconds, start event, end event) (events None on the CPU)

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in CATEGORIES:
            return attr

        def timed(*args, **kwargs):
            s = e = None
            if self._gpu:
                import cupy as cp
                s, e = cp.cuda.Event(), cp.cuda.Event()
                s.record()
            t = time.perf_counter()
            out = attr(*args, **kwargs)
            host = time.perf_counter() - t
            if self._gpu:
                e.record()
            self.records.append((name, host, s, e))
            return out
        return timed

    def totals_ms(self):
        """({category: host ms}, {category: device ms} or None on the CPU, number of timed ops)."""
        host, dev = collections.defaultdict(float), collections.defaultdict(float)
        for name, h, s, e in self.records:
            host[name] += 1e3 * h
            if self._gpu:
                import cupy as cp
                dev[name] += cp.cuda.get_elapsed_time(s, e)
        return dict(host), (dict(dev) if self._gpu else None), len(self.records)


def _spin_kernel():
    import cupy as cp
    return cp.RawKernel(_SPIN_SOURCE, "gl_profile_spin")


def profile_training_step(device, H, B, T, reps=5, seed=0):
    """Median over ``reps`` of the per-category time of one forward + backward.

    Returns ``(rows, step, n_ops)``: rows of (category, host ms, device ms or None), including an
    "other" row; ``step`` = {"host_ms": ..., "device_ms": ... or None, "host_outran_spin": int}.
    """
    # The per-operation breakdown is of the eager loop (a plan or graph replays the same operations).
    m = LSTM(H, H, 1, dtype="float32", device=device, seed=seed, algo="eager")
    gpu = m.device == "gpu"
    xp = m._be.xp
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
    dy = xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
    for _ in range(3):          # warm-up: compilation, handles, workspaces
        m(x)
        m.backward(dy)
    inner = m._be
    host_per, dev_per = collections.defaultdict(list), collections.defaultdict(list)
    host_steps, dev_steps, n_ops, outran = [], [], 0, 0
    if gpu:
        import cupy as cp
        spin = _spin_kernel()
        khz = cp.cuda.Device(inner.device_id).attributes.get("ClockRate", 1_500_000)
        spin_s = 0.05
    for _ in range(reps):
        timed = _Timed(inner, gpu)
        m._be = timed
        if gpu:
            cp.cuda.get_current_stream().synchronize()
            spin((1,), (1,), (np.int64(int(spin_s * khz * 1e3)),))
            s = cp.cuda.Event()
            s.record()                       # the device reaches this when the spin ends
        t = time.perf_counter()
        m(x)
        m.backward(dy)
        host_step = time.perf_counter() - t
        host_steps.append(1e3 * host_step)
        m._be = inner
        if gpu:
            e = cp.cuda.Event()
            e.record()
            e.synchronize()
            dev_steps.append(cp.cuda.get_elapsed_time(s, e))
            if host_step > 0.8 * spin_s:     # the host may have outrun the spin: device times could
                outran += 1                  # include dispatch; lengthen it for the next rep
                spin_s = 2 * host_step
        host_tot, dev_tot, n_ops = timed.totals_ms()
        for k in CATEGORIES:
            host_per[k].append(host_tot.get(k, 0.0))
            if gpu:
                dev_per[k].append(dev_tot.get(k, 0.0))
    step = {"host_ms": float(np.median(host_steps)),
            "device_ms": float(np.median(dev_steps)) if gpu else None, "host_outran_spin": outran}
    rows = [(CATEGORIES[k], float(np.median(host_per[k])),
             float(np.median(dev_per[k])) if gpu else None) for k in CATEGORIES]
    rows.append(("other (small ops, copies, Python between ops)",
                 step["host_ms"] - sum(r[1] for r in rows),
                 step["device_ms"] - sum(r[2] for r in rows) if gpu else None))
    return rows, step, n_ops


def print_profile(device, H, B, T, reps=5):
    rows, step, n_ops = profile_training_step(device, H, B, T, reps)
    gpu = step["device_ms"] is not None
    print(f"training step (forward + backward), H={H}, B={B}, T={T}, float32, on {device}: "
          f"median of {reps}, {n_ops} timed operations")
    if gpu:
        print(f"  host (issuing the step) {step['host_ms']:.3f} ms, device (executing it) "
              f"{step['device_ms']:.3f} ms; the larger one bounds the step when run back to back")
        print(f"  {'':<50} {'host ms':>9} {'device ms':>10}")
        for name, h, d in rows:
            # a step too small for the event timer's resolution can read 0 ms: no share to show then
            share = f"({100 * d / step['device_ms']:5.1f} % of device)" if step["device_ms"] > 0 else ""
            print(f"  {name:<50} {h:9.3f} {d:10.3f}  {share}".rstrip())
        if step["host_outran_spin"]:
            print(f"  note: in {step['host_outran_spin']} rep(s) the host took longer than the stream-blocking "
                  "spin; those device times may include dispatch")
    else:
        print(f"  {step['host_ms']:.3f} ms (CPU: host time is the compute time)")
        for name, h, _ in rows:
            share = f"{100 * h / step['host_ms']:5.1f} %" if step["host_ms"] > 0 else ""
            print(f"  {name:<50} {h:9.3f} ms  {share}".rstrip())
    return rows, step
