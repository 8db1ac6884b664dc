#!/usr/bin/env python3
"""Turn a `gpu-lstm bench --json` results file into a PNG: time per shape (one bar per gpu_lstm engine,
and torch) and the ratio ours / torch per engine, one panel per mode.

    python benchmarks/plot_results.py RESULTS.json [OUT.png]
"""

import json
import os
import sys


def _shapes(rows):
    seen = []
    for r in rows:
        key = (r["H"], r["B"], r["T"])
        if key not in seen:
            seen.append(key)
    return seen


def plot(results, out):
    """Bars per shape: one per gpu_lstm engine (the row's ``algo``; files from before the per-engine
    rows have none and show as one "gpu_lstm" bar) and torch; the ratio panel has one bar per engine.
    An engine row without a time (not run, or failed) leaves its bar out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # the FP32 rows (files from before the precision column: dtype 'float32'; their TF32 rows said 'tf32')
    rows = [r for r in results["rows"] if r.get("precision", "fp32" if r["dtype"] == "float32" else None) == "fp32"]
    timed = [r for r in rows if r["ours_ms"] is not None]
    modes = [m for m in ("inference", "training") if any(r["mode"] == m for r in timed)]
    algos = []
    for r in rows:
        a = r.get("algo") or "gpu_lstm"
        if a not in algos:
            algos.append(a)
    nbar = len(algos) + 1
    width = 0.8 / nbar
    fig, axes = plt.subplots(2, max(1, len(modes)), figsize=(6 * max(1, len(modes)), 7), squeeze=False)
    for j, mode in enumerate(modes):
        rs = [r for r in rows if r["mode"] == mode]
        shapes = _shapes(rs)
        labels = [f"{H},{B},{T}" for H, B, T in shapes]
        x = list(range(len(shapes)))

        def pick(algo):
            by = {(r["H"], r["B"], r["T"]): r for r in rs if (r.get("algo") or "gpu_lstm") == algo}
            return [by.get(s) for s in shapes]

        ax, ax_r = axes[0][j], axes[1][j]
        opponent = {}
        for k, algo in enumerate(algos):
            sel = pick(algo)
            pos = [i - 0.4 + width * (k + 0.5) for i in x]
            ax.bar(pos, [r["ours_ms"] if r and r["ours_ms"] else 0 for r in sel], width, label=f"gpu_lstm {algo}")
            ratios = [r["ratio"] if r else None for r in sel]
            if any(v is not None for v in ratios):
                ax_r.bar(pos, [v or 0 for v in ratios], width, label=algo)
            for s, r in zip(shapes, sel):
                if r and r["opponent_ms"]:
                    opponent[s] = r["opponent_ms"]
        if opponent:
            ax.bar([i - 0.4 + width * (nbar - 0.5) for i in x], [opponent.get(s, 0) for s in shapes], width,
                   label="torch.nn.LSTM")
        floors = {(r["H"], r["B"], r["T"]): r.get("floor_ms") for r in rs}
        if any(floors.values()):
            ax.scatter(x, [floors.get(s) or 0 for s in shapes], marker="_", s=300, color="k", label="floor estimate")
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{mode}, float32")
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.legend(fontsize=8)
        ax_r.axhline(1.0, color="k", lw=0.8)
        ax_r.set_ylabel("time ratio gpu_lstm / torch (lower is better)")
        ax_r.set_xticks(x, labels, rotation=30, fontsize=8)
        ax_r.set_xlabel("H, B, T")
        if ax_r.get_legend_handles_labels()[0]:
            ax_r.legend(fontsize=8)
    env = results["environment"]
    fig.suptitle(f"{env.get('device_name')}  |  {env.get('date', '')[:10]}  |  torch {env.get('torch')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def default_png(src):
    """The PNG beside the JSON: its name with the extension replaced (only the file name's)."""
    return os.path.splitext(src)[0] + ".png"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else default_png(src)
    with open(src) as f:
        print(plot(json.load(f), dst))
