#!/usr/bin/env bash
# Run the GPU verification on a CUDA machine and record everything it printed.
#   bash benchmarks/gpu_verify.sh OUTDIR
# Needs python3 with numpy, pytest and cupy; installs nothing (GPU machines often have no network access), and
# runs the package from this checkout. Writes OUTDIR/gpu_verify.log with device, driver, CUDA and CuPy
# versions, date, the commands and their output.
# Exit status: 0 only if a GPU was usable, every GPU test ran and passed (none skipped) and
# `gpu-lstm check --device gpu` passed; non-zero otherwise, with the reason as the last log line.
set -uo pipefail
OUT=${1:?usage: gpu_verify.sh OUTDIR}
# Absolute before the cd below: a relative OUTDIR means the caller's folder, not the checkout's.
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_verify.sh: cannot create OUTDIR $1" >&2; exit 2; }
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# test_gpu.py fails at collection instead of skipping when no GPU is usable
export GPU_LSTM_REQUIRE_GPU=1
LOG="$OUT/gpu_verify.log"
STATUS="$OUT/.gpu_verify.status"
: > "$STATUS"
{
  echo "# gpu_lstm GPU verification"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "host: $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 - <<'PY'
import sys
import numpy
from gpu_lstm.backend import gpu_available
ok, why = gpu_available()
print("gpu_available:", ok, "-", why)
if not ok:
    sys.exit(1)
import cupy
from gpu_lstm.backend.cupy_backend import device_description
print("numpy", numpy.__version__, "| cupy", cupy.__version__)
print(device_description())
PY
  echo "probe $?" >> "$STATUS"
  echo
  # Every GPU module: the engine in every mode (test_gpu.py), the persistent kernels, the torch module.
  echo "$ python3 -m pytest -m gpu tests/test_gpu.py tests/test_persistent_gpu.py tests/test_torch_gpu.py -v -rs"
  python3 -m pytest -m gpu tests/test_gpu.py tests/test_persistent_gpu.py tests/test_torch_gpu.py -v -rs \
    -p no:cacheprovider 2>&1 | tee "$OUT/.pytest.out"
  echo "pytest ${PIPESTATUS[0]}" >> "$STATUS"
  # all tests skipped exits 0 in pytest: count it as a failure here
  if tail -n 1 "$OUT/.pytest.out" | grep -q "skipped" || ! tail -n 1 "$OUT/.pytest.out" | grep -q " passed"; then
    echo "skipped-or-none 1" >> "$STATUS"
  fi
  echo
  echo "$ python3 -m gpu_lstm check --device gpu"
  python3 -m gpu_lstm check --device gpu 2>&1
  echo "check $?" >> "$STATUS"
} 2>&1 | tee "$LOG"
FAILED=$(awk '$2 != 0 {print $1}' "$STATUS" | tr '\n' ' ')
# A step with no recorded status did not run to the end: a failure, never a pass.
for step in probe pytest check; do
  grep -q "^$step " "$STATUS" 2>/dev/null || FAILED="$FAILED$step(no-status) "
done
rm -f "$STATUS" "$OUT/.pytest.out"
if [ -n "$FAILED" ]; then
  echo "GPU VERIFICATION FAILED: $FAILED(see $LOG)" | tee -a "$LOG"
  exit 1
fi
echo "GPU verification passed" | tee -a "$LOG"
