"""gpu-lstm: LSTM training with exact BPTT on NVIDIA GPUs (CuPy) or the CPU (NumPy).

Subcommands: check (gradient check, the first thing to run), train, sample, bench, profile, info.
Results go to stdout; progress and errors to stderr. A user mistake or a missing GPU ends with one
line on stderr and exit status 2 (GPU_LSTM_DEBUG=1 shows the traceback instead).
"""

import argparse
import contextlib
import os
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
        try:
            from gpu_lstm.backend.cupy_backend import device_description
            print(f"device     gpu: {device_description()}")
        except Exception as exc:   # a GPU that answers the probe but fails later: report, not crash
            print(f"device     gpu, but it cannot be described ({type(exc).__name__}: {exc})")
    else:
        print(f"device     {device}: {platform.processor() or platform.machine()}")
    return 0


_SIZE_OPTIONS = "-H/--hidden, -B/--batch, -T/--seq-len"


def _check_sizes_fit(device, args, input_size, layers, itemsize):
    """`gpu-lstm train`'s training-memory preflight for check and profile, naming their options:
    otherwise too large a -H ends in NumPy's 'Unable to allocate ... TiB'. Host memory, so only where
    the resolved ``device`` is the CPU."""
    from gpu_lstm._preflight import check_fits_in_memory, training_bytes
    if device == "cpu":
        check_fits_in_memory(training_bytes(input_size, args.hidden, 0, layers, args.seq_len, args.batch,
                                            itemsize), _SIZE_OPTIONS)


def cmd_check(args):
    from gpu_lstm import LSTM
    from gpu_lstm.backend import resolve_device
    from gpu_lstm.gradcheck import lstm_gradient_check
    device = resolve_device(args.device)      # once: 'auto' probes CuPy, cuBLAS and NVRTC
    _check_sizes_fit(device, args, args.input_size, args.layers, 8)
    t0 = time.perf_counter()
    lstm = LSTM(args.input_size, args.hidden, args.layers, dtype="float64", device=device,
                seed=args.seed)
    print(f"gpu-lstm check: {lstm!r}")
    print(f"device: {lstm._be.describe()}")
    print(f"float64 central differences, T={args.seq_len}, B={args.batch}, tolerance {GRADCHECK_TOL:g}")
    rows = lstm_gradient_check(lstm, T=args.seq_len, B=args.batch, seed=args.seed)
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
        rows = compare_paths(args.input_size, args.hidden, args.layers, T=args.seq_len, B=args.batch,
                             dtype=dtype, seed=args.seed, device="gpu")
        print(f"\nGPU vs NumPy path, {dtype} (relative to each array's max norm, tolerance {tol:g})")
        _print_table(("array", "max rel. difference", "result"),
                     [(n, f"{e:.2e}", "pass" if e < tol else "FAIL") for n, e in rows])
        failed += [f"{n} ({dtype} gpu vs cpu)" for n, e in rows if not e < tol]
    return failed


def cmd_train(args):
    from gpu_lstm import training
    if args.text is not None and args.task != "charlm":
        raise ValueError(f"--text: expected only with the charlm task, got it with {args.task!r}")
    common = dict(steps=args.steps, hidden=args.hidden, layers=args.layers, lr=args.lr, clip=args.clip,
                  optimizer=args.optimizer, device=args.device, dtype=args.dtype, seed=args.seed,
                  log_every=args.log_every, out_dir=f"runs/{args.task}" if args.out is None else args.out)
    if not common["out_dir"]:          # '' would otherwise fall back to runs/TASK, another run's folder
        raise ValueError("--out: expected a folder name, got ''")
    if args.batch:
        common["B"] = args.batch
    if args.seq_len:
        common["T"] = args.seq_len
    defaults = training.task_defaults(args.task)
    for k in ("hidden", "lr"):           # shown in the run's settings line, so filled in here
        if common[k] is None:
            common[k] = defaults[k]
    if args.task == "charlm" and args.text is not None:
        common["text"] = args.text
    from gpu_lstm.distributed import under_torchrun
    torchrun = under_torchrun()
    if args.nproc is not None and torchrun:
        raise ValueError(f"--nproc: expected only when not under torchrun (its --nproc_per_node starts the "
                         f"processes), got --nproc {args.nproc}")
    with _in_option_terms():
        return _train(args, common, torchrun)


# The API's argument names as this command's options, so an error names what the user typed.
_TRAIN_OPTIONS = {"out_dir": "--out", "text": "--text", "T": "-T/--seq-len", "B": "-B/--batch",
                  "hidden": "-H/--hidden", "layers": "-L/--layers", "lr": "--lr", "steps": "--steps",
                  "clip": "--clip", "seed": "--seed", "log_every": "--log-every", "dtype": "--dtype",
                  "optimizer": "--optimizer", "hidden, layers, B, T": "-H/--hidden, -L/--layers, -B/--batch, "
                                                                      "-T/--seq-len"}


@contextlib.contextmanager
def _in_option_terms(options=_TRAIN_OPTIONS):
    """Re-raise a user error whose message starts with an API argument ("out_dir: ...") under the
    command-line option's name in ``options`` ("--out: ..."); anything else passes unchanged."""
    try:
        yield
    except (OSError, ValueError, TypeError, MemoryError) as exc:
        msg = str(exc.args[0]) if len(exc.args) == 1 else None
        head, sep, rest = (msg or "").partition(": ")
        if not sep or head not in options:
            raise
        raise type(exc)(f"{options[head]}: {rest}") from None


def _train(args, common, torchrun):
    from gpu_lstm import training
    if args.ddp or torchrun:
        return _train_ddp(args, common)
    if args.nproc is not None:
        raise ValueError(f"--nproc: expected only with --ddp (processes to start), got --nproc {args.nproc} "
                         "without --ddp")
    # The run's settings are progress, not results: stderr, so stdout holds only the outcome.
    print(f"gpu-lstm train {args.task}: " + ", ".join(f"{k}={v}" for k, v in common.items()),
          file=sys.stderr)
    if args.task == "adding":
        s = training.train_adding(**common)
        print(f"adding problem (T={s['T']}) on {s['device']}: held-out MSE {s['test_mse']:.4f} "
              f"(predicting the mean: {s['baseline_mse']:.4f}; target < 0.01: "
              f"{'reached' if s['test_mse'] < 0.01 else 'not reached'})")
    else:
        s = training.train_charlm(**common)
        print(f"char LM ({s['text']}) on {s['device']}: held-out {s['test_bpc']:.3f} bits/char "
              f"(uniform over the vocabulary: {s['uniform_bpc']:.3f})")
        print("sample:\n" + s["sample"])
    print(f"trained {s['steps']} steps in {s['train_seconds']:.1f} s "
          f"({s['tokens_per_second']:,.0f} tokens/s)")
    print(f"checkpoint: {s['checkpoint']}")
    print(f"summary:    {s['summary'] or 'not written'}")
    print(f"loss plot:  {s['plot'] or s.get('plot_error') or 'not written (pip install matplotlib, or the [plot] extra)'}")
    if s.get("save_error"):
        print(f"gpu-lstm train: error: {s['save_error']}", file=sys.stderr)
        return 1
    return 0


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
    from gpu_lstm.sampling import model_from_checkpoint, sample_text
    from gpu_lstm.tasks import CharVocab
    if not args.prime:
        raise ValueError("--prime: expected at least one character, got ''")
    model, meta = model_from_checkpoint(args.checkpoint, device=args.device)
    vocab = meta.get("extra", {}).get("vocab")
    if not vocab:
        raise ValueError(f"checkpoint: expected a char-model checkpoint (with a vocabulary), got "
                         f"{args.checkpoint}, which has none")
    with _in_option_terms({"prime": "--prime"}):
        text = sample_text(model, CharVocab(vocab), args.length, seed=args.seed, prime=args.prime,
                           temperature=args.temperature)
    print(text)
    return 0


def _require_gpu_if_asked(device):
    """Before any work: a GPU that was asked for must be usable (one line saying why not, else)."""
    from gpu_lstm.backend import gpu_available, resolve_device
    device = resolve_device(device)
    if device == "gpu":
        ok, why = gpu_available()
        if not ok:
            raise RuntimeError(f"--device: expected a usable GPU for 'gpu', got none: {why}")
    return device


def _check_writable_file(option, path):
    """Fail now, not after the work, when the output file named by ``option`` cannot be written."""
    if path is None:
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option}: expected a file name, got the folder {path!r}")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise type(exc)(f"{option}: expected a writable file, got {path!r} ({exc.strerror or exc})") from None
    if not existed:
        os.unlink(path)


# bench options that --host-overhead has no use for: it always stubs the device (the real CuPy with C
# stubs for the CUDA libraries when CuPy is installed, else the test stand-in: no device to choose), over fixed shapes (nothing to make quicker), and prints its table (no JSON writer). Refused
# rather than ignored, so a command line never looks as if it did what it did not.
_NOT_WITH_HOST_OVERHEAD = (
    ("device", lambda v: v is not None, "--device", "it always runs with the device calls stubbed"),
    ("quick", bool, "--quick", "its shapes are fixed (--reps sets the repetitions)"),
    ("json", lambda v: v is not None, "--json", "it prints its table only"),
)


def _host_overhead(args):
    """gpu-lstm bench --host-overhead: benchmarks/host_overhead.py in its own process (it stubs the CUDA
    libraries before CuPy is imported, or installs the test stand-in tests/fake_cupy.py; both live in
    a source checkout). --reps applies."""
    import pathlib
    import subprocess
    for attr, given, option, why in _NOT_WITH_HOST_OVERHEAD:
        value = getattr(args, attr)
        if given(value):
            raise ValueError(f"{option}: expected no {option} with --host-overhead ({why}), got "
                             f"{option} {value if value is not True else ''}".rstrip())
    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "host_overhead.py"
    if not script.is_file():
        raise FileNotFoundError(f"--host-overhead: expected {script.name} of a source checkout at {script}, "
                                "got no such file (installed packages do not ship benchmarks/)")
    return subprocess.call([sys.executable, str(script)]
                           + (["--reps", str(args.reps)] if args.reps is not None else []))


def cmd_bench(args):
    if getattr(args, "host_overhead", False):
        return _host_overhead(args)
    args.device = args.device or "auto"       # None: not given (so --host-overhead can refuse a given one)
    from gpu_lstm import bench
    _require_gpu_if_asked(args.device)
    _check_writable_file("--json", args.json)
    return bench.main(args)


def cmd_profile(args):
    from gpu_lstm.profile import print_profile
    device = _require_gpu_if_asked(args.device)
    _check_sizes_fit(device, args, args.hidden, 1, 4)
    print_profile(device, args.hidden, args.batch, args.seq_len, args.reps)
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
_positive_float = _argument(ck.positive_float, _float)
_seed = _argument(ck.seed, _int)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the text already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.default is None or action.default is False:
            return text + " (default: off)" if action.nargs == 0 else text + " (default: none)"
        return text + " (default: %(default)s)"


def _sizes(p, hidden, batch, seq_len, seq_help, layers=None):
    """-H/--hidden, -B/--batch, -T/--seq-len (and -L/--layers): one spelling in every subcommand."""
    p.add_argument("-H", "--hidden", type=_positive_int, default=hidden[0], help=hidden[1])
    p.add_argument("-B", "--batch", type=_positive_int, default=batch[0], help=batch[1])
    p.add_argument("-T", "--seq-len", type=_positive_int, default=seq_len, help=seq_help)
    if layers is not None:
        p.add_argument("-L", "--layers", type=_positive_int, default=layers, help="stacked LSTM layers")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: the usage block it prints first would bury the line
    that says what was wrong (--help shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    import gpu_lstm
    p = _Parser(prog="gpu-lstm", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"gpu-lstm {gpu_lstm.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_):
        return sub.add_parser(name, help=help_, description=help_, formatter_class=_HelpFormatter)

    devices = ("auto", "cpu", "gpu")
    device_help = "auto: the GPU if usable, else the CPU"
    c = add("check", "gradient-check a small multi-layer LSTM on the best device")
    c.add_argument("--device", default="auto", choices=devices + ("host",),
                   help=device_help + "; host: the CUDA kernels built for the CPU")
    _sizes(c, (5, "hidden size H"), (3, "batch size B"), 6, "sequence length T", layers=2)
    c.add_argument("--input-size", type=_positive_int, default=3, help="input size I")
    c.add_argument("--seed", type=_seed, default=0, help="seeds the model and the data")
    c.set_defaults(func=cmd_check)

    t = add("train", "train on a shipped task (the adding problem, a char LM) or on your own text")
    t.add_argument("task", choices=("adding", "charlm"),
                   help="adding: the adding problem; charlm: a character LM (shipped KJV text or --text)")
    t.add_argument("--device", default="auto", choices=devices, help=device_help)
    t.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps")
    _sizes(t, (None, "hidden size H (default: adding 64, charlm 256)"),
           (None, "batch size B (default: adding 64, charlm 32)"), None,
           "sequence length T: the adding problem's (default 100) or the charlm BPTT chunk (default 64)",
           layers=1)
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: adding 1e-2, charlm 3e-3)")
    t.add_argument("--clip", type=_nonnegative_float, default=1.0, help="clip gradients to this global norm (0: off)")
    t.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"), help="update rule")
    t.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"),
                   help="parameter and data type; bfloat16/float16: 16-bit storage, float32 maths and "
                        "master weights (docs/precision.md)")
    t.add_argument("--seed", type=_seed, default=0, help="seeds the model and the data")
    t.add_argument("--log-every", type=_positive_int, default=100,
                   help="progress line (on stderr) every N steps when stderr is not a terminal")
    t.add_argument("--out", default=None, help="output folder (default: runs/TASK)")
    t.add_argument("--text", default=None, metavar="FILE",
                   help="charlm only: train on this UTF-8 text file (.gz accepted) instead of the shipped "
                        "one (default: the shipped KJV Genesis-Exodus)")
    t.add_argument("--ddp", action="store_true",
                   help="data-parallel with torch.distributed (needs torch): one process per GPU, or --nproc "
                        "CPU processes; implied under torchrun (default: off)")
    t.add_argument("--nproc", type=_positive_int, default=None,
                   help="--ddp without torchrun: processes to start (default: visible GPUs, or 2 on the CPU)")
    t.set_defaults(func=cmd_train)

    s = add("sample", "sample text from a char-model checkpoint")
    s.add_argument("checkpoint", help="a checkpoint.npz written by 'gpu-lstm train charlm'")
    s.add_argument("--length", type=_positive_int, default=500, help="characters to generate")
    s.add_argument("--prime", default="And ", help="text the model reads first (characters of its vocabulary)")
    s.add_argument("--temperature", type=_positive_float, default=0.8, help="> 0; below 1: more conservative")
    s.add_argument("--seed", type=_seed, default=0, help="seeds the sampling")
    s.add_argument("--device", default="auto", choices=devices, help=device_help)
    s.set_defaults(func=cmd_sample)

    b = add("bench", "time gpu_lstm against torch.nn.LSTM (cuDNN on a GPU) side by side")
    b.add_argument("--device", default=None, choices=devices, help=device_help + " (default: auto)")
    b.add_argument("--quick", action="store_true", help="a few shapes only")
    b.add_argument("--reps", type=_positive_int, default=None,
                   help="timed repetitions per row, median reported (default: 20; 5 with --quick on a CPU; "
                        "50, or 20 at T >= 1000, with --host-overhead)")
    b.add_argument("--json", default=None, metavar="FILE",
                   help="write raw results with the environment to this file (default: none)")
    b.add_argument("--host-overhead", action="store_true",
                   help="host microseconds per call and per step, eager vs plan vs graph, device calls "
                        "stubbed; takes --reps, refuses --device, --quick and --json (default: off)")
    b.set_defaults(func=cmd_bench)

    pr = add("profile", "where one training step's time goes (GEMMs, kernels, gaps)")
    pr.add_argument("--device", default="auto", choices=devices, help=device_help)
    _sizes(pr, (512, "hidden size H"), (64, "batch size B"), 100, "sequence length T")
    pr.add_argument("--reps", type=_positive_int, default=5, help="timed steps, median reported")
    pr.set_defaults(func=cmd_profile)

    i = add("info", "versions, backends found and the device")
    i.set_defaults(func=cmd_info)
    return p


# Errors a user can cause or meet (bad input, missing files or GPU, full disks, too little memory):
# one line each. Anything else is a bug: one line too, asking for the traceback.
_USER_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, MemoryError)


def main(argv=None):
    """Run a subcommand.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    int
        The exit status: 0 on success, 1 when the run finished but its outputs could not all be
        written where asked, 2 on a user error (one line on stderr; ``GPU_LSTM_DEBUG=1`` shows the
        traceback instead), 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    debug = os.environ.get("GPU_LSTM_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"gpu-lstm {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if debug:
            raise
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"gpu-lstm {args.command}: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except Exception as exc:   # e.g. a CUDA library error type that derives from Exception only
        if debug:
            raise
        msg = " ".join(str(exc).split())
        print(f"gpu-lstm {args.command}: error: {type(exc).__name__}: {msg} "
              "(set GPU_LSTM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
