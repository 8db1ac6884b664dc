"""The real CuPy 14 with its CUDA libraries stubbed (tests/real_cupy_smoke.py) accepts every call of
every engine mode, and graph mode does no per-step host work. Runs in the interpreter that has CuPy:
$GL_REAL_CUPY_PYTHON, else the host-bench venv that `make test` sets up (.venv-host); skipped when
neither exists (CuPy is never installed into the test venv: without a GPU it would change what
device='auto' reports)."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python():
    given = os.environ.get("GL_REAL_CUPY_PYTHON")
    if given:
        return given
    venv = ROOT / ".venv-host" / "bin" / "python"
    return str(venv) if venv.exists() else None


def test_every_mode_through_the_real_cupy_with_stubbed_cuda_libraries():
    py = _python()
    if py is None:
        pytest.skip("no interpreter with CuPy (make test sets up .venv-host; or set GL_REAL_CUPY_PYTHON)")
    probe = subprocess.run([py, "-c", "import cupy_backends"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"{py} has no CuPy: {probe.stderr.strip().splitlines()[-1:]}")
    for tool in ("cc", "nm"):   # what benchmarks/stub_cuda.py builds the stubs with
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on PATH: the CUDA library stubs cannot be built")
    res = subprocess.run([py, str(ROOT / "tests" / "real_cupy_smoke.py")], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "GPU_LSTM_ALGO": ""})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    last = res.stdout.strip().splitlines()[-1]
    passed = int(last.split()[0])
    assert last.endswith(" 0 failed") and passed >= 95, out[-6000:]
