"""Benchmark harness: gpu_lstm against torch.nn.LSTM (cuDNN on the GPU, ATen on the CPU), side by side
in one process, following shared/guide/benchmarks.md.

* GPU: CUDA events around the timed region, warm-up first (compilation, cuBLAS handles, workspaces),
  median of ``reps`` (>= 20 by default), inputs rotated over several random sets. FP32 with TF32 off on
  both sides; TF32 and bf16 rows where torch supports them (gpu_lstm: "not yet supported").
* CPU: the NumPy path against torch's CPU LSTM, perf_counter, small default shapes.
* "inference" = forward; "training" = forward + backward giving dx, dh0, dc0, dW, dR, db.
* Each row: shape, dtype, mode, engine (``algo``), our time, opponent's time, ratio (ours / opponent:
  < 1 means we are faster), achieved TFLOP/s (forward 16 H^2 B T, training 48 H^2 B T, I = H) and a
  floor estimate.
* One row per engine, side by side in the same run against the same torch measurement: on the GPU
  algo = eager (the per-step loop), graph (plans captured into CUDA graphs) and persistent (one
  cooperative launch per direction; only where ``persistent_supported`` says yes, otherwise the row
  says why and has no time); on the CPU eager and plan. ``ran`` records what the last timed call ran
  (a graph request can fall back to eager).

Runs where torch is missing (opponent columns empty). Nothing here is imported by ``import gpu_lstm``.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import gpu_lstm
from .lstm import LSTM

# (H, B, T), one layer, input size H: the guide's shape set.
GPU_SHAPES = [(512, 64, 100), (1024, 64, 100), (2048, 32, 50), (256, 1, 1000), (128, 32, 500),
              (1024, 256, 50), (4096, 64, 25), (1536, 8, 50)]
GPU_QUICK = [(512, 64, 100), (256, 1, 1000), (1024, 256, 50)]
CPU_SHAPES = [(256, 32, 50), (128, 16, 100), (512, 16, 25)]
CPU_QUICK = [(128, 8, 20)]
MODES = ("inference", "training")
# The engines timed side by side (gl.LSTM's ``algo``), per device.
ENGINES = {"gpu": ("eager", "graph", "persistent"), "cpu": ("eager", "plan")}


class EngineNotRun(Exception):
    """This engine cannot run this shape (e.g. R does not fit on chip for the persistent kernels): the
    row records why, and it is not a failure."""

# Peak FP32 (non-tensor-core) FLOP/s and HBM bytes/s for the floor estimate, by device-name substring.
GPU_SPECS = {"H200": (67e12, 4.8e12), "H100": (67e12, 3.35e12), "A100": (19.5e12, 2.0e12),
             "L40": (90e12, 0.86e12), "A10": (31e12, 0.6e12)}
LAUNCH_S = 2.5e-6   # one dependent kernel launch, order of magnitude (guide: "a few microseconds")


def flops(H, B, T, mode):
    return (16 if mode == "inference" else 48) * H * H * B * T


def floor_ms(H, B, T, mode, device_name):
    """Lower bound: the larger of the compute time at peak and T dependent steps, each at least two
    launches and one read of R (16 H^2 bytes in FP32) from memory; the backward has T more steps."""
    spec = next((v for k, v in GPU_SPECS.items() if k in (device_name or "")), None)
    if spec is None:
        return None
    peak, bw = spec
    steps = T * (1 if mode == "inference" else 2)
    step = max(2 * LAUNCH_S, 16 * H * H / bw)
    return 1e3 * max(flops(H, B, T, mode) / peak, steps * step)


# ---- timers --------------------------------------------------------------------------------------------
def _median_ms(run, reps, warmup, timer):
    for i in range(warmup):
        run(i)
    times = [timer(run, i) for i in range(reps)]
    return statistics.median(times)


def _cpu_timer(run, i):
    t = time.perf_counter()
    run(i)
    return 1e3 * (time.perf_counter() - t)


def _cupy_timer(run, i):
    import cupy as cp
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    run(i)
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end)


def _torch_cuda_timer(run, i):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run(i)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


# ---- the two sides --------------------------------------------------------------------------------------
def engine_ran(m):
    """What the model's last forward ran: 'persistent', 'graph', 'plan' or 'eager'."""
    saved = getattr(m, "_saved", None)
    if saved is None:
        return None
    if getattr(saved, "persistent", False):
        return "persistent"
    plan = getattr(saved, "plan", None)
    if plan is not None:
        return "graph" if getattr(plan, "graphs", None) else "plan"
    return "eager"


def time_ours(device, H, B, T, mode, reps, warmup, sets=3, seed=0, algo="auto", info=None):
    """Median ms of our forward (inference) or forward + backward (training) with engine ``algo``;
    ``info``, a dict if given, receives 'ran' (engine_ran after the timed calls) and 'reason'."""
    m = LSTM(H, H, 1, dtype="float32", device=device, seed=seed, algo=algo)
    if algo == "persistent":
        from .backend.persistent import persistent_supported
        ok, why = persistent_supported(m, T, B)
        if not ok:
            raise EngineNotRun(why)
    xp = m._be.xp
    rng = np.random.default_rng(seed)
    xs = [xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32)) for _ in range(sets)]
    states = [(xp.asarray(rng.standard_normal((1, B, H)).astype(np.float32)),
               xp.asarray(rng.standard_normal((1, B, H)).astype(np.float32))) for _ in range(sets)]
    dy = xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))

    def run(i):
        m(xs[i % sets], states[i % sets])
        if mode == "training":
            m.backward(dy)

    ms = _median_ms(run, reps, warmup, _cupy_timer if device == "gpu" else _cpu_timer)
    if info is not None:
        info.update(ran=engine_ran(m), reason=getattr(m, "algo_reason", None))
    return ms


def time_torch(device, H, B, T, mode, reps, warmup, dtype="float32", tf32=False, sets=3, seed=0):
    import torch
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(H, H, 1).to(dev, tdtype)
    if dev.type == "cuda":
        lstm.flatten_parameters()
    train = mode == "training"
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dev, tdtype).requires_grad_(train)  # noqa: E731
    xs = [mk(T, B, H) for _ in range(sets)]
    states = [(mk(1, B, H), mk(1, B, H)) for _ in range(sets)]
    dy = torch.randn(T, B, H, generator=g).to(dev, tdtype)

    def run(i):
        if train:
            y, _ = lstm(xs[i % sets], states[i % sets])
            y.backward(dy)   # dx, dh0, dc0 and every weight gradient
        else:
            with torch.no_grad():
                lstm(xs[i % sets], states[i % sets])

    timer = _torch_cuda_timer if dev.type == "cuda" else _cpu_timer
    return _median_ms(run, reps, warmup, timer)


# ---- the run --------------------------------------------------------------------------------------------
def environment(device):
    env = {"gpu_lstm": gpu_lstm.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "host": platform.node(), "cpu": platform.processor() or platform.machine(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv), "device": device, "device_name": None}
    try:
        import torch
        env["torch"] = torch.__version__
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        env["torch_threads"] = torch.get_num_threads()
    except Exception:
        env["torch"] = None
    if device == "gpu":
        import cupy as cp
        from .backend.cupy_backend import device_description
        env["cupy"] = cp.__version__
        env["device_name"] = device_description()
        drv = cp.cuda.runtime.driverGetVersion()
        env["cuda_driver_api"] = f"{drv // 1000}.{drv % 1000 // 10}"
        env["cupy_tf32"] = os.environ.get("CUPY_TF32", "0")   # "1": CuPy's GEMMs may use TF32
    else:
        env["device_name"] = f"CPU: {env['cpu']}"
    return env


def _torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def run(device="auto", quick=False, reps=None, warmup=None, shapes=None, modes=MODES, log=print, on_row=None,
        engines=None):
    """Benchmark every (shape, mode, engine); returns {'environment': ..., 'rows': [...]}. ``engines``
    defaults to ENGINES[device]; torch is measured once per (shape, mode) and every engine's ratio is
    to that measurement.

    A measurement that raises is recorded as None with the error in the row's ``note``, and the run
    goes on. ``on_row(result)``, if given, is called after every row with the result so far (the
    CLI writes the JSON file there, so an interrupted run keeps every finished row)."""
    from .backend import resolve_device
    device = resolve_device(device)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device: benchmarks run on 'cpu' or 'gpu', got {device!r}")
    gpu = device == "gpu"
    shapes = shapes or ((GPU_QUICK if quick else GPU_SHAPES) if gpu else (CPU_QUICK if quick else CPU_SHAPES))
    reps = reps or (20 if gpu else (5 if quick else 20))
    warmup = warmup if warmup is not None else (5 if gpu else 2)
    engines = tuple(engines or ENGINES[device])
    env = environment(device)
    fp32_note = ("CUPY_TF32=1: gpu_lstm's GEMMs may use TF32, not a true FP32 row"
                 if gpu and env.get("cupy_tf32") == "1" else "")
    have_torch = _torch_available()
    if have_torch and gpu:
        import torch
        have_torch = torch.cuda.is_available()
    rows = []
    result = {"environment": env, "rows": rows}

    def add(row):
        rows.append(row)
        log(format_row(row))
        if on_row is not None:
            on_row(result)

    def attempt(fn, *args, **kwargs):
        """(ms, None) or (None, 'ExcType: message'): one failing measurement (a torch build without
        a bf16 LSTM, an out-of-memory shape) is recorded on its row and the run goes on."""
        try:
            return fn(*args, **kwargs), None
        except Exception as exc:   # noqa: BLE001 - reported in the row, never swallowed silently
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]

    for (H, B, T) in shapes:
        for mode in modes:
            theirs, err_theirs = attempt(time_torch, device, H, B, T, mode, reps, warmup) if have_torch \
                else (None, None)
            for algo in engines:
                info = {}
                try:
                    ours, err_ours, skipped = time_ours(device, H, B, T, mode, reps, warmup, algo=algo, info=info), \
                        None, None
                except EngineNotRun as exc:
                    ours, err_ours, skipped = None, None, f"{algo} not run: {exc}"
                except Exception as exc:   # noqa: BLE001 - reported in the row
                    ours, skipped = None, None
                    err_ours = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                notes = [n for n in (skipped, fp32_note) if n]
                if info.get("ran") not in (None, algo):
                    notes.append(f"ran {info['ran']} ({info.get('reason')})")
                notes += [f"{who} failed: {e}" for who, e in (("gpu_lstm", err_ours), ("torch", err_theirs)) if e]
                row = {"H": H, "B": B, "T": T, "dtype": "float32", "tf32": False, "mode": mode,
                       "algo": algo, "ran": info.get("ran"),
                       "ours_ms": ours, "opponent_ms": theirs,
                       "ratio": ours / theirs if ours and theirs else None,
                       "ours_tflops": flops(H, B, T, mode) / (ours * 1e-3) / 1e12 if ours else None,
                       "opponent_tflops": flops(H, B, T, mode) / (theirs * 1e-3) / 1e12 if theirs else None,
                       "floor_ms": floor_ms(H, B, T, mode, env["device_name"]) if gpu else None,
                       "note": "; ".join(notes)}
                add(row)
            if gpu and have_torch:   # each side allowed its fast math; ours has none yet
                for dt, tf32 in (("tf32", True), ("bfloat16", False)):
                    t, err = attempt(time_torch, device, H, B, T, mode, reps, warmup,
                                     dtype="bfloat16" if dt == "bfloat16" else "float32", tf32=tf32)
                    r = dict(row, dtype=dt, tf32=tf32, algo=None, ran=None, ours_ms=None, ratio=None,
                             ours_tflops=None, opponent_ms=t,
                             opponent_tflops=flops(H, B, T, mode) / (t * 1e-3) / 1e12 if t else None,
                             note="gpu_lstm: not yet supported" + (f"; torch failed: {err}" if err else ""))
                    add(r)
    return {"environment": env, "rows": rows}


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


HEADER = (f"{'H':>5} {'B':>4} {'T':>5} {'dtype':>8} {'mode':>9} {'algo':>10} {'ours ms':>9} {'torch ms':>9} "
          f"{'ratio':>6} {'TFLOP/s':>8} {'floor ms':>9}  note")


def format_row(r):
    return (f"{r['H']:>5} {r['B']:>4} {r['T']:>5} {r['dtype']:>8} {r['mode']:>9} {r.get('algo') or '-':>10} "
            f"{_f(r['ours_ms'], '9.3f')} "
            f"{_f(r['opponent_ms'], '9.3f')} {_f(r['ratio'], '6.2f')} {_f(r['ours_tflops'], '8.3f')} "
            f"{_f(r['floor_ms'], '9.3f')}  {r['note']}")


def write_json(path, result):
    """Write ``result`` to ``path`` atomically (a temporary file renamed over it)."""
    import os
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def main(args):
    print("ratio = ours / torch (below 1: gpu_lstm faster); TFLOP/s are gpu_lstm's")
    print(HEADER)
    on_row = (lambda result: write_json(args.json, result)) if args.json else None
    result = run(device=args.device, quick=args.quick, reps=args.reps, log=print, on_row=on_row)
    env = result["environment"]
    print(f"device: {env['device_name']}; date {env['date']}; torch {env.get('torch') or 'not installed'}")
    if args.json:
        write_json(args.json, result)
        print(f"raw results: {args.json}")
    failed = [r for r in result["rows"] if "failed:" in r["note"]]
    if failed:
        print(f"{len(failed)} measurement(s) failed; see the note column")
    # gpu_lstm's own rows failing is an error; a torch-only failure (an opponent configuration the
    # installed torch lacks) is reported but does not fail the run.
    return 1 if any("gpu_lstm failed:" in r["note"] for r in result["rows"]) else 0
