"""Saved activations per training step by dtype, counted exactly from a CPU model's tape (the buffers a
forward keeps for its backward). CPU byte counts; GPU memory-pool measurements are not yet run on a GPU.
Usage: python benchmarks/lowp_memory.py [out.json]"""

import json
import sys

import numpy as np

import gpu_lstm as gl


def tape_bytes(model, T, B, I):
    x = np.zeros((T, B, I), model.dtype)
    model(x)
    tape = model._saved
    arrays = [tape.x, *tape.out]
    for layer in tape.dirs:
        for d in layer:
            arrays += [a for a in (d.gates, d.h, d.c, d.m, d.ct, d.x) if a is not None]
    return int(sum(a.nbytes for a in arrays))


def main():
    H, B, T, I = 256, 16, 100, 32
    rows = []
    for dt in ("float32", "bfloat16", "float16"):
        m = gl.LSTM(I, H, dtype=dt, device="cpu", seed=0)
        n = tape_bytes(m, T, B, I)
        rows.append({"dtype": dt, "H": H, "B": B, "T": T, "I": I, "saved_bytes": n})
    base = rows[0]["saved_bytes"]
    for r in rows:
        r["vs_float32"] = round(r["saved_bytes"] / base, 4)
    out = {"what": "bytes of the tensors one LSTM forward saves for its backward (tape), CPU path, counted "
                   "from the arrays' sizes; 16-bit models keep c in float32", "rows": rows}
    text = json.dumps(out, indent=1)
    print(text)
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(text + "\n")


if __name__ == "__main__":
    main()
