#!/usr/bin/env bash
# Run the GPU verification on a CUDA machine and record everything it printed.
#   bash benchmarks/gpu_verify.sh OUTDIR
# Needs python3 with numpy, pytest and cupy; installs nothing (GPU machines often have no network access),
# and runs the package from this checkout. Writes OUTDIR/gpu_verify.log with device, driver, CUDA and
# CuPy versions, date, the commands and their output.
set -uo pipefail
OUT=${1:?usage: gpu_verify.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_verify.log"
{
  echo "# gpu_lstm GPU verification"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "host: $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 - <<'PY'
import numpy, cupy
from gpu_lstm.backend.cupy_backend import device_description
print("numpy", numpy.__version__, "| cupy", cupy.__version__)
print(device_description())
PY
  echo
  echo "$ python3 -m pytest -m gpu tests/test_gpu.py -v"
  python3 -m pytest -m gpu tests/test_gpu.py -v -p no:cacheprovider 2>&1
  echo "pytest exit: $?"
  echo
  echo "$ python3 -m gpu_lstm check --device gpu"
  python3 -m gpu_lstm check --device gpu 2>&1
  echo "check exit: $?"
} 2>&1 | tee "$LOG"
