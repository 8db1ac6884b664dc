#!/usr/bin/env bash
# The whole GPU evaluation in one go, on a CUDA machine:
# GPU tests and `gpu-lstm check` (gpu_verify.sh), the full benchmark against cuDNN (JSON + table) and
# its plot, a profile of one training step at (512, 64, 100), compute-sanitizer over every option and
# the persistent kernels, a short char-model training on the GPU and on the CPU, then the persistent
# kernels' and the torch module's benchmarks and a quick CPU table.
#   bash benchmarks/gpu_eval.sh OUTDIR
# Installs nothing: needs python3 with numpy, pytest, cupy (and torch for the cuDNN columns,
# matplotlib for the plot). Runs the package from this checkout.
# Steps run in the order of their value and append to their logs as they go, so a run stopped by a time
# limit keeps everything before it. Every step runs even if an earlier one failed; the exit status is
# non-zero if ANY step failed or did not finish, and the failed steps are the last line of bench.log.
set -uo pipefail
OUT=${1:?usage: gpu_eval.sh OUTDIR}
# Absolute before the cd below: a relative OUTDIR means the caller's folder, not the checkout's.
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_eval.sh: cannot create OUTDIR $1" >&2; exit 2; }
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
STATUS="$OUT/.gpu_eval.status"
: > "$STATUS"
STEPS="verify bench-gpu plot profile-gpu sanitize-memcheck-options sanitize-memcheck sanitize-racecheck
       sanitize-synccheck charlm-gpu charlm-cpu persistent-bench torch-module-bench bench-cpu"

bash benchmarks/gpu_verify.sh "$OUT"
echo "verify $?" >> "$STATUS"
{
  echo "# gpu-lstm bench --device gpu ($(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null))"
  python3 -m gpu_lstm bench --device gpu --json "$OUT/bench_gpu.json" 2>&1
  echo "bench-gpu $?" >> "$STATUS"
  python3 benchmarks/plot_results.py "$OUT/bench_gpu.json" "$OUT/bench_gpu.png" 2>&1
  echo "plot $?" >> "$STATUS"
  echo
  echo "# gpu-lstm profile --device gpu -H 512 -B 64 -T 100"
  python3 -m gpu_lstm profile --device gpu -H 512 -B 64 -T 100 2>&1
  echo "profile-gpu $?" >> "$STATUS"
} 2>&1 | tee "$OUT/bench.log"

# compute-sanitizer: memcheck over a small forward + backward of every option (both dtypes' kernels,
# the 16-bit kernels, plans and graphs), then the persistent kernels (shared memory and grid barriers)
# under memcheck, racecheck and synccheck.
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
sanitize() {  # sanitize STEP TOOL PYTEST-ARGS...
  local step=$1 tool=$2 rc
  shift 2
  echo "$ compute-sanitizer --tool $tool python3 -m pytest -m gpu $*"
  if [ -x "$SAN" ]; then
    timeout 300 "$SAN" --tool "$tool" --error-exitcode 99 python3 -m pytest -m gpu "$@" -q -p no:cacheprovider 2>&1
    rc=$?
    echo "$tool exit: $rc$([ "$rc" = 124 ] && echo ' (timed out after 300 s)')"
  else
    echo "compute-sanitizer not found: $tool NOT run"
    rc=127
  fi
  echo "$step $rc" >> "$STATUS"
}
{
  sanitize sanitize-memcheck-options memcheck tests/test_gpu.py \
    -k "with_options or 16_bit_models_match or replays_with_new_inputs"
} 2>&1 | tee "$OUT/sanitize.log"
{
  for tool in memcheck racecheck synccheck; do
    sanitize "sanitize-$tool" "$tool" tests/test_persistent_gpu.py -k small
  done
} 2>&1 | tee "$OUT/persistent_verify.log"

{
  # The same run on both devices (seed, steps, sizes): throughput, and the held-out bits per character,
  # which should agree to float32 rounding of the training trajectory, not bitwise.
  for dev in gpu cpu; do
    echo "$ python3 -m gpu_lstm train charlm --device $dev --steps 300 --log-every 100 --out $OUT/charlm_$dev"
    timeout 300 python3 -m gpu_lstm train charlm --device "$dev" --steps 300 --log-every 100 \
      --out "$OUT/charlm_$dev" 2>&1
    echo "charlm-$dev $?" >> "$STATUS"
  done
  python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
runs = {}
for dev in ("gpu", "cpu"):
    try:
        with open(os.path.join(out, f"charlm_{dev}", "summary.json")) as f:
            runs[dev] = json.load(f)
    except OSError as exc:
        print(f"charlm {dev}: no summary ({exc.strerror})")
for dev, s in runs.items():
    print(f"charlm {dev}: {s['tokens_per_second']:,.0f} tokens/s, held-out {s['test_bpc']:.4f} bits/char")
if len(runs) == 2:
    g, c = runs["gpu"], runs["cpu"]
    print(f"charlm gpu/cpu: {g['tokens_per_second'] / c['tokens_per_second']:.1f}x the tokens/s; "
          f"bits/char differ by {abs(g['test_bpc'] - c['test_bpc']):.4f}")
PY
} 2>&1 | tee "$OUT/charlm.log"

{
  echo "# benchmarks/persistent_bench.py (persistent vs per-step engine; per-step time against the 2 us goal)"
  python3 benchmarks/persistent_bench.py --json "$OUT/persistent_bench.json" 2>&1
  echo "persistent-bench $?" >> "$STATUS"
  echo
  echo "# benchmarks/torch_module_gpu.py (gpu_lstm.torch.LSTM vs torch.nn.LSTM on CUDA tensors)"
  python3 benchmarks/torch_module_gpu.py 2>&1
  echo "torch-module-bench $?" >> "$STATUS"
  echo
  echo "# gpu-lstm bench --device cpu --quick"
  python3 -m gpu_lstm bench --device cpu --quick --json "$OUT/bench_cpu.json" 2>&1
  echo "bench-cpu $?" >> "$STATUS"
} 2>&1 | tee -a "$OUT/bench.log"

echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT/bench.log"
FAILED=$(awk '$2 != 0 {print $1}' "$STATUS" | tr '\n' ' ')
# A step with no recorded status did not run to the end: a failure, never a pass.
for step in $STEPS; do
  grep -q "^$step " "$STATUS" 2>/dev/null || FAILED="$FAILED$step(no-status) "
done
rm -f "$STATUS"
if [ -n "$FAILED" ]; then
  echo "GPU EVALUATION FAILED STEPS: $FAILED" | tee -a "$OUT/bench.log"
  exit 1
fi
echo "GPU evaluation: every step passed" | tee -a "$OUT/bench.log"
