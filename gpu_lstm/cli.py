"""The ``gpu-lstm`` command line: ``check`` (the main job until training exists) and ``info``."""

import argparse
import platform
import sys
import time

import numpy as np

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


def build_parser():
    p = argparse.ArgumentParser(prog="gpu-lstm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="gradient-check a small multi-layer LSTM on the best device")
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu", "host"))
    c.add_argument("--layers", type=int, default=2)
    c.add_argument("--hidden", type=int, default=5)
    c.add_argument("--input-size", type=int, default=3)
    c.add_argument("--steps", type=int, default=6)
    c.add_argument("--batch", type=int, default=3)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_check)
    i = sub.add_parser("info", help="versions, backends found and the device")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
