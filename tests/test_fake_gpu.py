"""Run the GPU test module (and a few extra checks) against tests/fake_cupy.py in a subprocess.

This does not test CUDA: it runs the real CupyBackend, kernel loader and time loop with "device"
arrays in host memory, kernels from the host build of the same .cu source (each launch's arguments
checked against the kernel's parameter list), and an emulation of cuBLAS's column-major GEMM on raw
pointers. What it proves is the host-side plumbing of the GPU path, which CI could not run otherwise.
"""

import os
import pathlib
import subprocess
import sys


from cpu_kernel_support import unavailable

HERE = pathlib.Path(__file__).parent


def test_gpu_suite_on_fake_cupy():
    from gpu_lstm.backend import host_backend
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    env = dict(os.environ, GPU_LSTM_FAKE_CUPY="1")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(HERE / "test_gpu.py"), str(HERE / "fake_gpu_only.py")],
                         cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and "skipped" not in res.stdout.splitlines()[-1], tail
