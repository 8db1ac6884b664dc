"""Benchmark harness: gpu_lstm against torch.nn.LSTM (cuDNN on the GPU, ATen on the CPU), side by side
in one process, following shared/guide/benchmarks.md.

* GPU: CUDA events around the timed region, warm-up first (compilation, cuBLAS handles, workspaces),
  median of ``reps`` (>= 20 by default), inputs rotated over several random sets.
* CPU: the NumPy path against torch's CPU LSTM, perf_counter, small default shapes.
* Precisions (``precision`` column, PRECISIONS per device), the same math on both sides: 'fp32'
  (float32, TF32 off on both sides), 'tf32' (GPU only: float32 tensors, gpu_lstm ``math='tf32'``,
  torch's ``allow_tf32`` flags on), 'bf16' and 'fp16' (16-bit tensors on both sides; gpu_lstm's
  16-bit models keep c and the gradients in float32, docs/precision.md). torch's two ``allow_tf32``
  flags are set for each torch measurement and restored afterwards. Where torch's LSTM refuses a
  16-bit dtype on this build (a tiny probe, once per run), its columns stay empty and the note says so.
  The persistent kernels run fp32 only, so the other precisions have no persistent row.
* Memory per training step (training rows, ``ours_mem_bytes`` / ``opponent_mem_bytes``, measured, see
  MEMORY): on the GPU the peak of the memory one training step adds (CuPy's memory pool for
  gpu_lstm, ``torch.cuda.max_memory_allocated`` for torch); on the CPU the bytes of the activations a
  forward saves for its backward (gpu_lstm's tape; the tensors torch's autograd saves, through
  ``saved_tensors_hooks``), parameters excluded.
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
# The precisions per device: (storage dtype, TF32 on). TF32 is a GPU tensor-core mode (torch's CPU
# LSTM has none; gpu_lstm's CPU path only emulates its rounding), so it is not a CPU row.
PRECISION_DTYPES = {"fp32": ("float32", False), "tf32": ("float32", True), "bf16": ("bfloat16", False),
                    "fp16": ("float16", False)}
PRECISIONS = {"gpu": ("fp32", "tf32", "bf16", "fp16"), "cpu": ("fp32", "bf16", "fp16")}
# What the memory columns measure, per device (recorded in the environment).
MEMORY = {"gpu": "peak bytes one training step adds on the device: gpu_lstm: CuPy memory pool "
                 "(total_bytes after free_all_blocks, a fresh model, its first step); torch: "
                 "torch.cuda.max_memory_allocated - memory_allocated before the step (after the timed runs)",
          "cpu": "bytes of the activations one forward saves for the backward, parameters excluded: "
                 "gpu_lstm: its tape (input copy, layer outputs, gates, h, c, ...); torch: the distinct "
                 "storages autograd saves (saved_tensors_hooks)"}


def engines_for(precision, engines):
    """The engines that run ``precision``: the persistent kernels are float32/float64 without TF32
    (docs/persistent.md); every precision runs the eager loop, plans and graphs."""
    return tuple(engines) if precision == "fp32" else tuple(a for a in engines if a != "persistent")


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


def _ours_setup(device, H, B, T, mode, sets, seed, algo, precision):
    """A model for ``precision`` with engine ``algo``, ``sets`` input sets and dy, on its device."""
    dtype, tf32 = PRECISION_DTYPES[precision]
    m = LSTM(H, H, 1, dtype=dtype, device=device, seed=seed, algo=algo, math="tf32" if tf32 else "default")
    if algo == "persistent":
        from .backend.persistent import persistent_supported
        ok, why = persistent_supported(m, T, B)
        if not ok:
            raise EngineNotRun(why)
    be = m._be
    rng = np.random.default_rng(seed)
    # In the model's dtype on the host, then through the backend (a GPU bfloat16 model takes the bits).
    new = lambda *shape: be.asarray("x", rng.standard_normal(shape).astype(np.float32).astype(m.dtype))  # noqa: E731
    xs = [new(T, B, H) for _ in range(sets)]
    states = [(new(1, B, H), new(1, B, H)) for _ in range(sets)]
    dy = new(T, B, H)

    def run(i):
        m(xs[i % sets], states[i % sets])
        if mode == "training":
            m.backward(dy)
    return m, run


def time_ours(device, H, B, T, mode, reps, warmup, sets=3, seed=0, algo="auto", info=None, precision="fp32"):
    """Median ms of our forward (inference) or forward + backward (training) with engine ``algo`` in
    ``precision`` (PRECISION_DTYPES); ``info``, a dict if given, receives 'ran' (engine_ran after the
    timed calls) and 'reason'."""
    m, run = _ours_setup(device, H, B, T, mode, sets, seed, algo, precision)
    ms = _median_ms(run, reps, warmup, _cupy_timer if device == "gpu" else _cpu_timer)
    if info is not None:
        info.update(ran=engine_ran(m), reason=getattr(m, "algo_reason", None))
    return ms


def _owner(a):
    """The array that owns ``a``'s memory (views count once, as the whole buffer they keep alive)."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def tape_bytes(tape):
    """Bytes of the buffers a forward's tape keeps for the backward: the input copy, the layer
    outputs (and dropout outputs), and per direction gates, h, c (and m, zoneout c, reversed x).
    Each buffer counts once, whole."""
    arrays = [tape.x, *tape.out, *tape.dropped]
    for layer in tape.dirs:
        for d in layer:
            arrays += [d.gates, d.h, d.c, d.m, d.ct, d.x]
    owners = {id(o): o for o in (_owner(a) for a in arrays if a is not None)}
    return int(sum(o.nbytes for o in owners.values()))


def memory_ours(device, H, B, T, precision="fp32", algo="auto", seed=0):
    """Measured memory of one training step (MEMORY): on the GPU the growth of CuPy's memory pool over
    the first training step of a fresh model (its parameters, inputs and dy allocated before), on the
    CPU the bytes of the tape that step's forward saved."""
    m, run = _ours_setup(device, H, B, T, "training", 1, seed, algo, precision)
    if device == "gpu":
        import cupy as cp
        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        base = pool.total_bytes()
        run(0)
        cp.cuda.Device().synchronize()
        return int(pool.total_bytes() - base)
    run(0)
    return tape_bytes(m.detach_tape())


class torch_math:
    """Context: torch's ``allow_tf32`` flags (cuBLAS matmul and cuDNN) set for one precision (on only
    for 'tf32') and restored on exit, whatever happens inside."""

    def __init__(self, precision):
        self.tf32 = PRECISION_DTYPES[precision][1]

    def __enter__(self):
        import torch
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc):
        import torch
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


def _torch_setup(device, H, B, T, mode, sets, seed, precision):
    import torch
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    tdtype = getattr(torch, PRECISION_DTYPES[precision][0])
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

    def forward(i):
        return lstm(xs[i % sets], states[i % sets])

    def run(i):
        if train:
            y, _ = forward(i)
            y.backward(dy)   # dx, dh0, dc0 and every weight gradient
        else:
            with torch.no_grad():
                forward(i)
    return lstm, dev, forward, run, dy


def time_torch(device, H, B, T, mode, reps, warmup, precision="fp32", sets=3, seed=0):
    """Median ms of torch.nn.LSTM in ``precision``, its allow_tf32 flags set for it (torch_math)."""
    with torch_math(precision):
        _, dev, _, run, _ = _torch_setup(device, H, B, T, mode, sets, seed, precision)
        timer = _torch_cuda_timer if dev.type == "cuda" else _cpu_timer
        return _median_ms(run, reps, warmup, timer)


def memory_torch(device, H, B, T, precision="fp32", seed=0):
    """Measured memory of one torch training step (MEMORY): on the GPU the peak allocation it adds
    (after a warm-up step), on the CPU the distinct storages autograd saves in the forward, the
    parameters excluded."""
    import torch
    with torch_math(precision):
        lstm, dev, forward, run, dy = _torch_setup(device, H, B, T, "training", 1, seed, precision)
        if dev.type == "cuda":
            run(0)                                   # warm-up: cuDNN plans, workspaces
            lstm.zero_grad(set_to_none=False)
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            run(0)
            torch.cuda.synchronize(dev)
            return int(torch.cuda.max_memory_allocated(dev) - base)
        params = {p.untyped_storage().data_ptr() for p in lstm.parameters()}
        saved = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                saved[st.data_ptr()] = st.nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, _ = forward(0)
        y.backward(dy)
        return int(sum(saved.values()))


_TORCH_PROBES = {}


def torch_supports(device, precision):
    """(True, '') when torch's LSTM runs a forward and backward in ``precision`` on this device, else
    (False, why): a tiny probe, once per process, so a build without a bf16 LSTM is a note, not a
    failure."""
    key = (device, precision)
    if key not in _TORCH_PROBES:
        try:
            with torch_math(precision):
                _, _, _, run, _ = _torch_setup(device, 8, 2, 3, "training", 1, 0, precision)
                run(0)
            _TORCH_PROBES[key] = (True, "")
        except Exception as exc:   # noqa: BLE001 - the reason goes to the rows' note
            _TORCH_PROBES[key] = (False, _describe(exc))
    return _TORCH_PROBES[key]


def _describe(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


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
        engines=None, precisions=None):
    """Benchmark every (shape, mode, precision, engine); returns {'environment': ..., 'rows': [...]}.
    ``engines`` defaults to ENGINES[device] (precisions other than 'fp32' run every engine but
    'persistent', see engines_for), ``precisions`` to PRECISIONS[device]; torch is measured once per (shape, mode,
    precision) and every engine's ratio is to that measurement. Training rows also get the measured
    memory of one training step on each side (MEMORY).

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
    precisions = tuple(precisions or PRECISIONS[device])
    for prec in precisions:
        if prec not in PRECISION_DTYPES or (prec == "tf32" and not gpu):
            raise ValueError(f"precisions: expected some of {PRECISIONS[device]} on {device!r}, got {prec!r}")
    env = environment(device)
    env["memory"] = MEMORY[device]
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
        """(value, None) or (None, 'ExcType: message'): one failing measurement (an out-of-memory
        shape) is recorded on its row and the run goes on."""
        try:
            return fn(*args, **kwargs), None
        except Exception as exc:   # noqa: BLE001 - reported in the row, never swallowed silently
            return None, _describe(exc)

    for (H, B, T) in shapes:
        for mode in modes:
            train = mode == "training"
            for prec in precisions:
                dtype, tf32 = PRECISION_DTYPES[prec]
                theirs = err_theirs = their_mem = err_their_mem = None
                torch_note = ""
                if have_torch:
                    ok, why = torch_supports(device, prec)
                    if ok:
                        theirs, err_theirs = attempt(time_torch, device, H, B, T, mode, reps, warmup, precision=prec)
                        if train:
                            their_mem, err_their_mem = attempt(memory_torch, device, H, B, T, precision=prec)
                    else:
                        torch_note = f"torch not run: its LSTM refuses {dtype} on {device} in this build ({why})"
                for algo in engines_for(prec, engines):
                    info = {}
                    ours = err_ours = skipped = mem = err_mem = None
                    try:
                        ours = time_ours(device, H, B, T, mode, reps, warmup, algo=algo, info=info, precision=prec)
                    except EngineNotRun as exc:
                        skipped = f"{algo} not run: {exc}"
                    except Exception as exc:   # noqa: BLE001 - reported in the row
                        err_ours = _describe(exc)
                    if train and skipped is None:
                        mem, err_mem = attempt(memory_ours, device, H, B, T, precision=prec, algo=algo)
                    notes = [n for n in (skipped, fp32_note if prec == "fp32" else "", torch_note) if n]
                    if info.get("ran") not in (None, algo):
                        notes.append(f"ran {info['ran']} ({info.get('reason')})")
                    notes += [f"{who} failed: {e}" for who, e in (
                        ("gpu_lstm", err_ours), ("gpu_lstm", err_mem and f"memory: {err_mem}"),
                        ("torch", err_theirs), ("torch", err_their_mem and f"memory: {err_their_mem}")) if e]
                    row = {"H": H, "B": B, "T": T, "precision": prec, "dtype": dtype, "tf32": tf32, "mode": mode,
                           "algo": algo, "ran": info.get("ran"),
                           "ours_ms": ours, "opponent_ms": theirs,
                           "ratio": ours / theirs if ours and theirs else None,
                           "ours_tflops": flops(H, B, T, mode) / (ours * 1e-3) / 1e12 if ours else None,
                           "opponent_tflops": flops(H, B, T, mode) / (theirs * 1e-3) / 1e12 if theirs else None,
                           "floor_ms": floor_ms(H, B, T, mode, env["device_name"]) if gpu and prec == "fp32" else None,
                           "ours_mem_bytes": mem, "opponent_mem_bytes": their_mem,
                           "note": "; ".join(notes)}
                    add(row)
    return {"environment": env, "rows": rows}


def _f(v, fmt):
    """v in fmt, or '-' padded to fmt's width: an empty cell must not shift the columns after it."""
    return format("-", ">" + fmt.split(".")[0]) if v is None else format(v, fmt)


HEADER = (f"{'H':>5} {'B':>4} {'T':>5} {'prec':>4} {'mode':>9} {'algo':>10} {'ours ms':>9} {'torch ms':>9} "
          f"{'ratio':>6} {'TFLOP/s':>8} {'floor ms':>9} {'ours MiB':>9} {'torch MiB':>9}  note")


def _mib(v):
    return None if v is None else v / 2 ** 20


def format_row(r):
    return (f"{r['H']:>5} {r['B']:>4} {r['T']:>5} {r.get('precision') or r['dtype']:>4} {r['mode']:>9} "
            f"{r.get('algo') or '-':>10} {_f(r['ours_ms'], '9.3f')} "
            f"{_f(r['opponent_ms'], '9.3f')} {_f(r['ratio'], '6.2f')} {_f(r['ours_tflops'], '8.3f')} "
            f"{_f(r['floor_ms'], '9.3f')} {_f(_mib(r.get('ours_mem_bytes')), '9.2f')} "
            f"{_f(_mib(r.get('opponent_mem_bytes')), '9.2f')}  {r['note']}")


def write_json(path, result):
    """Write ``result`` to ``path`` atomically, as checkpoints are written (a symlink is written
    through: its target replaced, not the link)."""
    from .checkpoint import write_atomically
    write_atomically(path, lambda f: f.write(json.dumps(result, indent=2).encode()))


def main(args):
    print("ratio = ours / torch (below 1: gpu_lstm faster); TFLOP/s are gpu_lstm's; MiB: memory of one "
          "training step (see the JSON's environment.memory)")
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
