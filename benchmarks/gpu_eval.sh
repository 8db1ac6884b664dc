#!/usr/bin/env bash
# The whole GPU evaluation in one go, on a CUDA machine, in well under 20 minutes:
# GPU tests and `gpu-lstm check` (gpu_verify.sh), the full benchmark against cuDNN (JSON + table),
# the plot, and a profile of one training step at (512, 64, 100).
#   bash benchmarks/gpu_eval.sh OUTDIR
# Installs nothing: needs python3 with numpy, pytest, cupy (and torch for the cuDNN columns,
# matplotlib for the plot). Runs the package from this checkout.
# Every step runs even if an earlier one failed (to record as much as possible); the exit status is
# non-zero if ANY step failed, and the failed steps are listed as the last line of bench.log.
set -uo pipefail
OUT=${1:?usage: gpu_eval.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
STATUS="$OUT/.gpu_eval.status"
: > "$STATUS"
bash benchmarks/gpu_verify.sh "$OUT"
echo "verify $?" >> "$STATUS"
# Persistent kernels (docs/persistent.md): their GPU tests under compute-sanitizer (memcheck, racecheck,
# synccheck) on the small shapes, before any timing (gpu_verify.sh ran the full GPU test files).
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
{
  for tool in memcheck racecheck synccheck; do
    echo "$ compute-sanitizer --tool $tool python3 -m pytest -m gpu tests/test_persistent_gpu.py -k small"
    if [ -x "$SAN" ]; then
      "$SAN" --tool "$tool" --error-exitcode 99 \
        python3 -m pytest -m gpu tests/test_persistent_gpu.py -k small -q -p no:cacheprovider 2>&1
      rc=$?
      echo "$tool exit: $rc"
    else
      echo "compute-sanitizer not found: $tool NOT run"
      rc=127
    fi
    echo "sanitize-$tool $rc" >> "$STATUS"
  done
} 2>&1 | tee "$OUT/persistent_verify.log"
{
  echo "# gpu-lstm bench --device gpu ($(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null))"
  python3 -m gpu_lstm bench --device gpu --json "$OUT/bench_gpu.json" 2>&1
  echo "bench-gpu $?" >> "$STATUS"
  echo
  echo "# benchmarks/persistent_bench.py (persistent vs per-step engine; per-step time against the 2 us goal)"
  python3 benchmarks/persistent_bench.py --json "$OUT/persistent_bench.json" 2>&1
  echo "persistent-bench $?" >> "$STATUS"
  echo
  echo "# benchmarks/torch_module_gpu.py (gpu_lstm.torch.LSTM vs torch.nn.LSTM on CUDA tensors)"
  python3 benchmarks/torch_module_gpu.py 2>&1
  echo "torch-module-bench $?" >> "$STATUS"
  echo
  echo "# gpu-lstm profile --device gpu -H 512 -B 64 -T 100"
  python3 -m gpu_lstm profile --device gpu -H 512 -B 64 -T 100 2>&1
  echo "profile-gpu $?" >> "$STATUS"
  echo
  echo "# gpu-lstm bench --device cpu --quick"
  python3 -m gpu_lstm bench --device cpu --quick --json "$OUT/bench_cpu.json" 2>&1
  echo "bench-cpu $?" >> "$STATUS"
} 2>&1 | tee "$OUT/bench.log"
python3 benchmarks/plot_results.py "$OUT/bench_gpu.json" "$OUT/bench_gpu.png" 2>&1 | tee -a "$OUT/bench.log"
echo "plot ${PIPESTATUS[0]}" >> "$STATUS"
echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT/bench.log"
FAILED=$(awk '$2 != 0 {print $1}' "$STATUS" | tr '\n' ' ')
rm -f "$STATUS"
if [ -n "$FAILED" ]; then
  echo "GPU EVALUATION FAILED STEPS: $FAILED" | tee -a "$OUT/bench.log"
  exit 1
fi
echo "GPU evaluation: every step passed" | tee -a "$OUT/bench.log"
