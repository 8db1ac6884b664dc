"""gpu-lstm: LSTM training with exact BPTT on NVIDIA GPUs (CuPy) or the CPU (NumPy).

Subcommands: check (gradient check, the first thing to run), train, sample, bench, profile, info.
"""

import argparse
import platform
import sys
import time

import numpy as np

from gpu_lstm import _checks as ck

GRADCHECK_TOL = 1e-6


def _print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def cmd_info(args):
    import gpu_lstm
    from gpu_lstm.backend import gpu_available, resolve_device
    print(f"gpu_lstm   {gpu_lstm.__version__}")
    print(f"python     {platform.python_version()} ({sys.executable})")
    print(f"numpy      {np.__version__}")
    try:
        import cupy
        print(f"cupy       {cupy.__version__}")
    except Exception as exc:
        print(f"cupy       not available ({type(exc).__name__})")
    try:
        import nvtx
        print(f"nvtx       {getattr(nvtx, '__version__', 'available')}")
    except Exception:
        print("nvtx       not installed (NVTX ranges are no-ops)")
    ok, why = gpu_available()
    print(f"gpu        {'yes' if ok else 'no'}: {why}")
    device = resolve_device("auto")
    if device == "gpu":
        from gpu_lstm.backend.cupy_backend import device_description
        print(f"device     gpu: {device_description()}")
    else:
        print(f"device     {device}: {platform.processor() or platform.machine()}")
    return 0


def cmd_check(args):
    from gpu_lstm import LSTM
    from gpu_lstm.gradcheck import lstm_gradient_check
    t0 = time.perf_counter()
    lstm = LSTM(args.input_size, args.hidden, args.layers, dtype="float64", device=args.device,
                seed=args.seed)
    print(f"gpu-lstm check: {lstm!r}")
    print(f"device: {lstm._be.describe()}")
    print(f"float64 central differences, T={args.steps}, B={args.batch}, tolerance {GRADCHECK_TOL:g}")
    rows = lstm_gradient_check(lstm, T=args.steps, B=args.batch, seed=args.seed)
    table = [(name, f"{err:.2e}", "pass" if err < GRADCHECK_TOL else "FAIL") for name, err in rows]
    _print_table(("gradient", "max rel. error", "result"), table)
    failed = [name for name, err in rows if not err < GRADCHECK_TOL]
    if lstm.device == "gpu":
        failed += _compare_with_numpy(args)
    dt = time.perf_counter() - t0
    if failed:
        print(f"FAILED: {', '.join(failed)} ({dt:.1f} s)")
        return 1
    print(f"all {len(rows)} gradients pass on {lstm.device} ({dt:.1f} s)")
    return 0


def _compare_with_numpy(args):
    """On a GPU, run the same model on both paths and print the largest differences."""
    from gpu_lstm.compare import compare_paths
    failed = []
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        rows = compare_paths(args.input_size, args.hidden, args.layers, T=args.steps, B=args.batch,
                             dtype=dtype, seed=args.seed, device="gpu")
        print(f"\nGPU vs NumPy path, {dtype} (relative to each array's max norm, tolerance {tol:g})")
        _print_table(("array", "max rel. difference", "result"),
                     [(n, f"{e:.2e}", "pass" if e < tol else "FAIL") for n, e in rows])
        failed += [f"{n} ({dtype} gpu vs cpu)" for n, e in rows if not e < tol]
    return failed


def cmd_train(args):
    from gpu_lstm import tasks
    common = dict(steps=args.steps, hidden=args.hidden, layers=args.layers, lr=args.lr, clip=args.clip,
                  optimizer=args.optimizer, device=args.device, dtype=args.dtype, seed=args.seed,
                  log_every=args.log_every, out_dir=args.out or f"runs/{args.task}")
    if args.batch:
        common["B"] = args.batch
    if args.seq_len:
        common["T"] = args.seq_len
    defaults = {"adding": dict(hidden=64, lr=1e-2), "charlm": dict(hidden=256, lr=3e-3)}[args.task]
    for k, v in defaults.items():
        if common[k] is None:
            common[k] = v
    if args.ddp or _under_torchrun():
        return _train_ddp(args, common)
    print(f"gpu-lstm train {args.task}: " + ", ".join(f"{k}={v}" for k, v in common.items()))
    if args.task == "adding":
        s = tasks.train_adding(**common)
        print(f"\nadding problem (T={s['T']}) on {s['device']}: held-out MSE {s['test_mse']:.4f} "
              f"(predicting the mean: {s['baseline_mse']:.4f}; target < 0.01: "
              f"{'reached' if s['test_mse'] < 0.01 else 'not reached'})")
    else:
        s = tasks.train_charlm(**common)
        print(f"\nchar LM on {s['device']}: held-out {s['test_bpc']:.3f} bits/char "
              f"(uniform over the vocabulary: {s['uniform_bpc']:.3f})")
        print("sample:\n" + s["sample"])
    print(f"trained {s['steps']} steps in {s['train_seconds']:.1f} s "
          f"({s['tokens_per_second']:,.0f} tokens/s)")
    print(f"checkpoint: {s['checkpoint']}")
    print(f"loss plot:  {s['plot'] or 'not written (pip install matplotlib, or the [plot] extra)'}")
    with open(s["checkpoint"].replace("checkpoint.npz", "summary.json"), "w") as f:
        f.write(tasks.summary_json(s))
    return 0


def _under_torchrun():
    import os
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def _train_ddp(args, common):
    """Data-parallel training through torch.distributed (gpu_lstm/distributed.py)."""
    from gpu_lstm import distributed
    s = distributed.run(nproc=args.nproc, task=args.task, **common)
    if s is None:      # not rank 0
        return 0
    print(f"\n{args.task} on {s['world_size']} process(es), {s['device']}: "
          + (f"held-out MSE {s['test_mse']:.4f} (mean predictor {s['baseline_mse']:.4f})" if args.task == "adding"
             else f"held-out {s['test_bpc']:.3f} bits/char (uniform {s['uniform_bpc']:.3f})"))
    print(f"trained {s['steps']} steps in {s['train_seconds']:.1f} s ({s['tokens_per_second']:,.0f} tokens/s)")
    print(f"checkpoint: {s.get('checkpoint')}")
    return 0


def cmd_sample(args):
    from gpu_lstm import tasks
    model, meta = tasks.model_from_checkpoint(args.checkpoint, device=args.device)
    vocab = meta.get("extra", {}).get("vocab")
    if not vocab:
        print(f"error: {args.checkpoint} is not a char-model checkpoint (no vocabulary)", file=sys.stderr)
        return 2
    print(tasks.sample_text(model, tasks.CharVocab(vocab), args.length, seed=args.seed, prime=args.prime,
                            temperature=args.temperature))
    return 0


def cmd_bench(args):
    if getattr(args, "host_overhead", False):
        # Needs the test-only CuPy stand-in from a source checkout (tests/fake_cupy.py), in its own process.
        import pathlib
        import subprocess
        script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "host_overhead.py"
        if not script.is_file():
            print(f"--host-overhead runs {script.name} from a source checkout; not found at {script}")
            return 2
        return subprocess.call([sys.executable, str(script)])
    from gpu_lstm import bench
    return bench.main(args)


def cmd_profile(args):
    from gpu_lstm.backend import resolve_device
    from gpu_lstm.profile import print_profile
    print_profile(resolve_device(args.device), args.H, args.B, args.T, args.reps)
    return 0


def _argument(check, convert):
    """An argparse type from a gpu_lstm._checks validator, so the CLI and the API agree."""
    def parse(text):
        try:
            return check("value", convert(text))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value: ", "")) from None
    return parse


def _int(text):
    try:
        return int(text)
    except ValueError:
        return text          # the validator reports it as "not an integer"


def _float(text):
    try:
        return float(text)
    except ValueError:
        return text


_positive_int = _argument(ck.positive_int, _int)
_nonnegative_float = _argument(ck.nonnegative_float, _float)


def build_parser():
    p = argparse.ArgumentParser(prog="gpu-lstm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="gradient-check a small multi-layer LSTM on the best device")
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu", "host"),
                   help="auto: GPU if usable, else CPU; host: the CUDA kernels built for the CPU")
    c.add_argument("--layers", type=_positive_int, default=2, help="stacked layers (default 2)")
    c.add_argument("--hidden", type=_positive_int, default=5, help="hidden size H (default 5)")
    c.add_argument("--input-size", type=_positive_int, default=3, help="input size I (default 3)")
    c.add_argument("--steps", type=_positive_int, default=6, help="sequence length T (default 6)")
    c.add_argument("--batch", type=_positive_int, default=3, help="batch size B (default 3)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_check)
    t = sub.add_parser("train", help="train on a shipped task: the adding problem or a char LM")
    t.add_argument("task", choices=("adding", "charlm"),
                   help="adding: the adding problem (T=100); charlm: char LM on the shipped KJV text")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    t.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps (default 1000)")
    t.add_argument("--hidden", type=_positive_int, default=None, help="H (default: adding 64, charlm 256)")
    t.add_argument("--layers", type=_positive_int, default=1, help="stacked LSTM layers (default 1)")
    t.add_argument("--batch", type=_positive_int, default=None, help="B (default: adding 64, charlm 32)")
    t.add_argument("--seq-len", type=_positive_int, default=None,
                   help="T: adding sequence length (default 100) or charlm BPTT chunk (default 64)")
    t.add_argument("--lr", type=_nonnegative_float, default=None, help="learning rate (default: adding 1e-2, charlm 3e-3)")
    t.add_argument("--clip", type=_nonnegative_float, default=1.0, help="clip gradients to this global norm (0: off)")
    t.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
    t.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"),
                   help="bfloat16/float16: 16-bit storage, float32 maths and master weights (docs/precision.md)")
    t.add_argument("--seed", type=int, default=0, help="seeds the model and the data")
    t.add_argument("--log-every", type=_positive_int, default=100, help="progress line every N steps off a terminal")
    t.add_argument("--out", default=None, help="output folder (default runs/TASK)")
    t.add_argument("--ddp", action="store_true",
                   help="data-parallel with torch.distributed (needs torch): one process per GPU, or --nproc "
                        "CPU processes; implied under torchrun")
    t.add_argument("--nproc", type=_positive_int, default=None,
                   help="--ddp without torchrun: processes to start (default: visible GPUs, or 2 on the CPU)")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="sample text from a char-model checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--length", type=_positive_int, default=500, help="characters to generate")
    s.add_argument("--prime", default="And ")
    s.add_argument("--temperature", type=_nonnegative_float, default=0.8, help="below 1: more conservative")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    s.set_defaults(func=cmd_sample)
    b = sub.add_parser("bench", help="time gpu_lstm against torch.nn.LSTM (cuDNN on a GPU) side by side")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    b.add_argument("--quick", action="store_true", help="a few shapes only")
    b.add_argument("--reps", type=_positive_int, default=None, help="timed repetitions per row (median reported)")
    b.add_argument("--json", default=None, help="write raw results with the environment to this file")
    b.add_argument("--host-overhead", action="store_true",
                   help="host microseconds per call and per step, eager vs plan vs graph, device calls stubbed")
    b.set_defaults(func=cmd_bench)
    p_ = sub.add_parser("profile", help="where one training step's time goes (GEMMs, kernels, gaps)")
    p_.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p_.add_argument("-H", type=_positive_int, default=512, help="hidden size (default 512)")
    p_.add_argument("-B", type=_positive_int, default=64, help="batch size (default 64)")
    p_.add_argument("-T", type=_positive_int, default=100, help="sequence length (default 100)")
    p_.add_argument("--reps", type=_positive_int, default=5)
    p_.set_defaults(func=cmd_profile)
    i = sub.add_parser("info", help="versions, backends found and the device")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    """Run a subcommand. User errors (a missing or wrong checkpoint, --device gpu without a GPU, bad
    sizes) print one line and exit 2; GPU_LSTM_DEBUG=1 shows the traceback instead."""
    import os
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        if os.environ.get("GPU_LSTM_DEBUG") == "1":
            raise
        print(f"gpu-lstm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
