#!/usr/bin/env python3
"""Turn a `gpu-lstm bench --json` results file into a PNG: time per shape (ours and torch) and the
ratio ours / torch, one panel per mode.

    python benchmarks/plot_results.py RESULTS.json [OUT.png]
"""

import json
import sys


def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["rows"] if r["dtype"] == "float32" and r["ours_ms"] is not None]
    modes = [m for m in ("inference", "training") if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(2, len(modes), figsize=(6 * len(modes), 7), squeeze=False)
    for j, mode in enumerate(modes):
        rs = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['H']},{r['B']},{r['T']}" for r in rs]
        x = range(len(rs))
        ax = axes[0][j]
        ax.bar([i - 0.2 for i in x], [r["ours_ms"] for r in rs], 0.4, label="gpu_lstm")
        if any(r["opponent_ms"] for r in rs):
            ax.bar([i + 0.2 for i in x], [r["opponent_ms"] or 0 for r in rs], 0.4, label="torch.nn.LSTM")
        floors = [r.get("floor_ms") for r in rs]
        if any(floors):
            ax.scatter(list(x), [f or 0 for f in floors], marker="_", s=300, color="k", label="floor estimate")
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{mode}, float32")
        ax.set_xticks(list(x), labels, rotation=30, fontsize=8)
        ax.legend(fontsize=8)
        ax = axes[1][j]
        ratios = [r["ratio"] for r in rs]
        if any(v is not None for v in ratios):
            ax.bar(list(x), [v or 0 for v in ratios], 0.6, color="tab:purple")
            ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("time ratio gpu_lstm / torch (lower is better)")
        ax.set_xticks(list(x), labels, rotation=30, fontsize=8)
        ax.set_xlabel("H, B, T")
    env = results["environment"]
    fig.suptitle(f"{env.get('device_name')}  |  {env.get('date', '')[:10]}  |  torch {env.get('torch')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"
    with open(src) as f:
        print(plot(json.load(f), dst))
