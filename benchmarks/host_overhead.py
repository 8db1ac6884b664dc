"""Host overhead of the GPU path: host microseconds per call and per time step, eager vs plan vs
graph, with every device entry point stubbed (issue 9).

Two ways to stub the device (``--cupy``):

* ``real`` (the default when CuPy is installed): the real CuPy, with its CUDA runtime, driver and
  cuBLAS entry points replaced by C no-ops (benchmarks/stub_cuda.py says how). Everything on the
  host runs for real: gpu_lstm's LSTM, plans and CupyBackend, CuPy's Cython (arrays, views, memory
  pool, kernel argument packing, streams, events, graphs), NVRTC (kernels really compiled once).
  Not included: the time the CUDA driver and cuBLAS spend on the host per call (a few us per kernel
  launch or GEMM on a real machine by common estimates, not measured here; one graph launch per call).
* ``stand-in``: tests/fake_cupy.py instead of CuPy (no CuPy needed); it adds its own checking cost
  and lacks CuPy's, so its per-step figures are a different quantity: for reference only.

Kernel bodies, GEMM arithmetic and graph replay are no-ops either way; host copies are real, so the
table uses small H and B (host dispatch does not depend on them: the same launches with the same
argument counts) and the T of each target shape.

Run from a checkout: python benchmarks/host_overhead.py  (or: gpu-lstm bench --host-overhead).
"""

import argparse
import datetime
import importlib.util
import pathlib
import platform
import shutil
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

TARGETS = [(512, 64, 100), (256, 1, 1000)]   # (H, B, T) of the issue
SMALL_H, SMALL_B = 8, 2


def real_cupy_usable():
    """(True, '') when the real CuPy can be stubbed here, else (False, why)."""
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed (pip install cupy-cuda13x nvidia-cuda-nvrtc)"
    for tool in ("cc", "nm"):
        if shutil.which(tool) is None:
            return False, f"no {tool} on PATH (needed to build the stubs)"
    return True, ""


def setup(which):
    """Install the chosen CuPy; returns (cupy module, stub-device hook for a model's backend)."""
    if which == "real":
        import stub_cuda
        stub_cuda.install()
        import cupy
        return cupy, lambda be: None          # every device entry point is already a C no-op
    import fake_cupy
    fake_cupy.install()

    def stub(be):
        for k in be._k.values():
            k.fn = lambda *args: None                       # kernel body
        fake_cupy._gemm_values = lambda *args: None         # binding GEMM arithmetic
        fake_cupy._gemm = lambda *args: None                # CuPy wrapper GEMM arithmetic (eager)
        fake_cupy.Graph.launch = lambda self, stream=None: None   # graph replay
    return fake_cupy, stub


def measure(gl, xp, stub, algo, T, reps):
    m = gl.LSTM(SMALL_H, SMALL_H, 1, dtype="float32", device="gpu", seed=0, algo=algo)
    stub(m._be)
    x = np.random.default_rng(0).standard_normal((T, SMALL_B, SMALL_H)).astype(np.float32)
    xd = xp.asarray(x)
    dy = xp.asarray(np.ones((T, SMALL_B, SMALL_H), np.float32))
    for _ in range(3):                                  # build the plan, compile, capture the graphs
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


HEADER = {
    "real": ["# REAL: gpu_lstm (LSTM, plans, CupyBackend) and CuPy {version} (Cython host paths, memory pool, NVRTC).",
             "# STUBBED: the CUDA runtime, driver and cuBLAS entry points CuPy and gpu_lstm call (C no-ops,",
             "#   benchmarks/stub_cuda.py): their own host time per launch/GEMM (a few us each on a real",
             "#   machine, an estimate) is NOT included. Kernel bodies, GEMM arithmetic, graph replay: no-ops."],
    "stand-in": ["# REAL: gpu_lstm (LSTM, plans, CupyBackend launch/GEMM preparation, graph capture logic).",
                 "# STUBBED: CuPy = tests/fake_cupy.py, not real CuPy: CuPy's own per-call host cost is NOT",
                 "#   included and the stand-in's checks are: per-step figures are for reference only.",
                 "#   Kernel bodies, GEMM arithmetic, graph replay: no-ops."],
}


def main(reps=None, which="auto"):
    if which == "auto":
        ok, why = real_cupy_usable()
        which = "real" if ok else "stand-in"
        if not ok:
            print(f"# --cupy auto: using the stand-in: {why}", file=sys.stderr)
    elif which == "real":
        ok, why = real_cupy_usable()
        if not ok:
            raise SystemExit(f"host_overhead.py: error: --cupy real: expected CuPy, cc and nm, got: {why}")
    xp, stub = setup(which)
    import gpu_lstm as gl
    version = getattr(xp, "__version__", "?")
    lines = [f"# Host overhead per call, {datetime.date.today().isoformat()}",
             f"# machine: CPU-only development machine, device calls stubbed ({platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}, NumPy {np.__version__})",
             f"# command: python benchmarks/host_overhead.py --cupy {which}" + (f" --reps {reps}" if reps else ""),
             *(h.format(version=version) for h in HEADER[which]),
             f"# H, B reduced to ({SMALL_H}, {SMALL_B}); T as in the shape. 'train' = forward + backward of one call.",
             f"{'shape (H,B,T)':>16} {'algo':>6} {'fwd us/call':>12} {'train us/call':>14} {'train us/step':>14}"]
    for H, B, T in TARGETS:
        n = reps or (20 if T >= 1000 else 50)
        for algo in ("eager", "plan", "graph"):
            f, t = measure(gl, xp, stub, algo, T, n)
            lines.append(f"{str((H, B, T)):>16} {algo:>6} {f:12.1f} {t:14.1f} {t / T:14.2f}")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    from gpu_lstm.cli import _positive_int    # the CLI's check (imports neither CuPy nor the stubs)
    ap = argparse.ArgumentParser(description="host overhead per call, device calls stubbed")
    ap.add_argument("--reps", type=_positive_int, default=None,
                    help="timed calls per row (default: 50, 20 for T >= 1000)")
    ap.add_argument("--cupy", choices=("auto", "real", "stand-in"), default="auto",
                    help="real CuPy with stubbed CUDA libraries, or the test stand-in (default: auto = real "
                         "when CuPy, cc and nm are present)")
    a = ap.parse_args()
    main(a.reps, a.cupy)
