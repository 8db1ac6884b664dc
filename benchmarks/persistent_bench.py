"""Time the persistent kernels against the per-step engine on a GPU machine (issue 13).

    python3 benchmarks/persistent_bench.py [--json OUT.json] [--dtype float32]

For each shape (H, B, T) of the benchmark set that fits on chip (docs/persistent.md): the forward
recurrent loop alone (one persistent launch: microseconds per step, against the 2 us goal), and one
direction's forward + backward (persistent engine vs the per-step engine of gpu_lstm/_direction.py), timed
with CUDA events after warm-up, median of 20. The cuDNN column belongs to `gpu-lstm bench` once
algo="persistent" is wired into gl.LSTM. Results are only ever those of a real run.
"""

import argparse
import json
import sys
import types

import numpy as np

SHAPES = [(512, 64, 100), (256, 1, 1000), (128, 32, 500), (768, 16, 1024), (1024, 64, 100)]
GOAL_US = 2.0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    import cupy as cp
    from gpu_lstm import _direction as dirn
    from gpu_lstm.backend import get_backend
    from gpu_lstm.backend import persistent as pers
    from gpu_lstm.backend.cupy_backend import device_description

    be = get_backend("gpu", args.dtype)
    runner = pers.runner_for(be)
    runner.check_contract = False   # the default, unless GPU_LSTM_DEBUG=1: no host read-back while timing
    print(f"# persistent vs per-step engine, {args.dtype}, {device_description(be.device_id)}")
    print(f"{'H':>5} {'B':>4} {'T':>5} | {'fwd loop us/step':>16} {'goal':>5} | {'fwd+bwd persistent ms':>21} "
          f"{'fwd+bwd per-step ms':>19} {'ratio':>6}")
    rows = []
    rng = np.random.default_rng(0)

    def timed(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(args.repeats):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(cp.cuda.get_elapsed_time(a, b))
        return float(np.median(times))

    for H, B, T in SHAPES:
        cfg, why = pers.launch_config(H, B, be.dtype.itemsize, runner.sms, runner.smem_block)
        if cfg is None:
            print(f"{H:>5} {B:>4} {T:>5} | skipped: {why}")
            rows.append(dict(H=H, B=B, T=T, skipped=why))
            continue
        I = H
        P = {"d.W": be.asarray("W", (rng.standard_normal((4 * H, I)) / np.sqrt(I)).astype(args.dtype)),
             "d.R": be.asarray("R", (rng.standard_normal((4 * H, H)) / np.sqrt(H)).astype(args.dtype)),
             "d.b": be.asarray("b", rng.standard_normal(4 * H).astype(args.dtype))}
        prm = dirn.DirectionParams(P, "d", True, False, False)
        ws = dirn.DirectionWorkspace(be, T, B, I, H, H, False, False, None)
        x = be.asarray("x", rng.standard_normal((T, B, I)).astype(args.dtype))
        dy = be.asarray("dy", rng.standard_normal((T, B, H)).astype(args.dtype))
        grads = {k: be.zeros(v.shape) for k, v in P.items()}
        shared = types.SimpleNamespace(dgates=be.empty((T, B, 4 * H)), dc=be.empty((B, H)), dm=None, keep=None)
        dh, dh0, dc0, dx = be.empty((T, B, H)), be.empty((B, H)), be.empty((B, H)), be.empty((T, B, I))
        pers.run_forward(be, prm, ws, x, None, None, None)
        loop_ms = timed(lambda: runner.forward(ws.gates, prm.b, None, prm.R, ws.h, ws.c, None))

        def train(fwd, bwd):
            def step():
                fwd(be, prm, ws, x, None, None, None)
                dh[...] = dy
                bwd(be, prm, grads, "d", ws, shared, x, dh, None, None, dh0, dc0, dx, None)
            return step
        p_ms = timed(train(pers.run_forward, pers.run_backward))
        s_ms = timed(train(dirn.forward, dirn.backward))
        us = 1000 * loop_ms / T
        print(f"{H:>5} {B:>4} {T:>5} | {us:>16.2f} {GOAL_US:>5.1f} | {p_ms:>21.3f} {s_ms:>19.3f} {s_ms / p_ms:>6.2f}")
        rows.append(dict(H=H, B=B, T=T, config=cfg.__dict__, forward_loop_us_per_step=us, goal_us=GOAL_US,
                         train_persistent_ms=p_ms, train_per_step_ms=s_ms))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_description(be.device_id), dtype=args.dtype, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
