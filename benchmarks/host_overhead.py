"""Host overhead of the GPU path: Python/host microseconds per call and per time step, eager vs plan
vs graph, with every device entry point stubbed (issue 9).

What runs and what is stubbed (printed with the table):
* REAL: gpu_lstm's LSTM, plan building/replay and CupyBackend (argument preparation, launch tuples,
  the ctypes-style cuBLAS calls, graph capture/launch logic), NumPy for the host-side array objects.
* STUBBED: CuPy itself is tests/fake_cupy.py (host-memory arrays), NOT real CuPy 14: real CuPy's
  device calls are Cython `cdef` functions into libcudart/libcuda that cannot be replaced from Python
  on a machine without a GPU, so its own per-call host cost (about 1-2 us per view, launch or copy in
  CuPy's Cython) is not in these numbers. Kernel bodies, GEMM arithmetic and graph replay are no-ops.
  Array operations that the fake runs in NumPy (input copy, output copies, copyto/multiply/take in
  the plans) do real memory work, so the table uses small H and B (host dispatch does not depend on
  H or B: the same launches with the same argument counts) and the T of each target shape.

Run from a checkout: python benchmarks/host_overhead.py  (or: gpu-lstm bench --host-overhead).
"""

import datetime
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import fake_cupy  # noqa: E402

fake_cupy.install()

import gpu_lstm as gl  # noqa: E402

TARGETS = [(512, 64, 100), (256, 1, 1000)]   # (H, B, T) of the issue
SMALL_H, SMALL_B = 8, 2


def _stub_device(be):
    for k in be._k.values():
        k.fn = lambda *args: None                       # kernel body
    fake_cupy._gemm_values = lambda *args: None         # binding GEMM arithmetic
    fake_cupy._gemm = lambda *args: None                # CuPy wrapper GEMM arithmetic (eager)
    fake_cupy.Graph.launch = lambda self, stream=None: None   # graph replay


def measure(algo, T, reps):
    m = gl.LSTM(SMALL_H, SMALL_H, 1, dtype="float32", device="gpu", seed=0, algo=algo)
    _stub_device(m._be)
    x = np.random.default_rng(0).standard_normal((T, SMALL_B, SMALL_H)).astype(np.float32)
    xd = fake_cupy.asarray(x)
    dy = fake_cupy.asarray(np.ones((T, SMALL_B, SMALL_H), np.float32))
    for _ in range(3):                                  # build the plan, capture the graphs
        m(xd)
        m.backward(dy)
    fwd, train = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        m(xd)
        t1 = time.perf_counter()
        m.backward(dy)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        train.append(t2 - t0)
    return 1e6 * statistics.median(fwd), 1e6 * statistics.median(train)


def main(reps=None):
    lines = [f"# Host overhead per call, {datetime.date.today().isoformat()}",
             f"# machine: CPU-only development machine, device calls stubbed ({platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}, NumPy {np.__version__})",
             "# command: python benchmarks/host_overhead.py",
             "# REAL: gpu_lstm (LSTM, plans, CupyBackend launch/GEMM preparation, graph capture logic).",
             "# STUBBED: CuPy = tests/fake_cupy.py, not real CuPy 14 (its Cython device calls cannot be stubbed",
             "#   from Python without a GPU): CuPy's own per-call host cost is NOT included. Kernel bodies, GEMM",
             f"#   arithmetic, graph replay: no-ops. H, B reduced to ({SMALL_H}, {SMALL_B}); T as in the shape.",
             f"{'shape (H,B,T)':>16} {'algo':>6} {'fwd us/call':>12} {'train us/call':>14} {'train us/step':>14}"]
    for H, B, T in TARGETS:
        n = reps or (20 if T >= 1000 else 50)
        for algo in ("eager", "plan", "graph"):
            f, t = measure(algo, T, n)
            lines.append(f"{str((H, B, T)):>16} {algo:>6} {f:12.1f} {t:14.1f} {t / T:14.2f}")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="host overhead per call, device calls stubbed")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per row (default: 50, 20 for T >= 1000)")
    main(ap.parse_args().reps)
