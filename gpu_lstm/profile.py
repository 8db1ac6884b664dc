"""Where the time of one training step goes: GEMMs, fused cell kernels, reductions, and the rest
(Python dispatch and launch gaps), on either device.

A wrapper backend times every seam operation: CUDA events around each call on the GPU (no extra
synchronisation; elapsed times are read after the step), perf_counter on the CPU. The whole step is
timed the same way; "other" is the step time minus the timed operations: on the GPU that is the time
the device sat idle waiting for Python to issue the next launch, plus small CuPy elementwise ops.
"""

import collections
import time

import numpy as np

from .lstm import LSTM

CATEGORIES = {"gemm": "cuBLAS/BLAS GEMMs", "cell_forward": "fused cell forward",
              "cell_backward": "fused cell backward", "sum_rows": "db reduction"}


class _Timed:
    def __init__(self, inner, gpu):
        self._inner, self._gpu = inner, gpu
        self.records = []   # (category, start, end) events or seconds

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in CATEGORIES:
            return attr

        def timed(*args, **kwargs):
            if self._gpu:
                import cupy as cp
                s, e = cp.cuda.Event(), cp.cuda.Event()
                s.record()
                out = attr(*args, **kwargs)
                e.record()
                self.records.append((name, s, e))
            else:
                t = time.perf_counter()
                out = attr(*args, **kwargs)
                self.records.append((name, t, time.perf_counter()))
            return out
        return timed

    def totals_ms(self):
        tot = collections.defaultdict(float)
        for name, s, e in self.records:
            if self._gpu:
                import cupy as cp
                tot[name] += cp.cuda.get_elapsed_time(s, e)
            else:
                tot[name] += 1e3 * (e - s)
        return dict(tot), len(self.records)


def profile_training_step(device, H, B, T, reps=5, seed=0):
    """Median over ``reps`` of the per-category time of one forward + backward; returns rows of
    (category, ms, share) plus the step time and the number of timed operations."""
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
    per = collections.defaultdict(list)
    steps, n_ops = [], 0
    for _ in range(reps):
        timed = _Timed(inner, gpu)
        m._be = timed
        if gpu:
            import cupy as cp
            s, e = cp.cuda.Event(), cp.cuda.Event()
            s.record()
            m(x)
            m.backward(dy)
            e.record()
            e.synchronize()
            steps.append(cp.cuda.get_elapsed_time(s, e))
        else:
            t = time.perf_counter()
            m(x)
            m.backward(dy)
            steps.append(1e3 * (time.perf_counter() - t))
        m._be = inner
        tot, n_ops = timed.totals_ms()
        for k in CATEGORIES:
            per[k].append(tot.get(k, 0.0))
    step = float(np.median(steps))
    rows = [(CATEGORIES[k], float(np.median(v))) for k, v in per.items()]
    rows.append(("other (Python dispatch, launch gaps, small ops)", step - sum(ms for _, ms in rows)))
    return [(name, ms, ms / step) for name, ms in rows], step, n_ops


def print_profile(device, H, B, T, reps=5):
    rows, step, n_ops = profile_training_step(device, H, B, T, reps)
    print(f"training step (forward + backward), H={H}, B={B}, T={T}, float32, on {device}: "
          f"{step:.3f} ms median of {reps}, {n_ops} timed operations")
    for name, ms, share in rows:
        print(f"  {name:<50} {ms:9.3f} ms  {100 * share:5.1f} %")
    return rows, step
