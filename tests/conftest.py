import os

import numpy as np
import pytest

if os.environ.get("GPU_LSTM_FAKE_CUPY") == "1":   # tests/test_fake_gpu.py: the GPU suite on host kernels
    import fake_cupy
    fake_cupy.install()

import gpu_lstm as gl  # noqa: E402


def make_inputs(rng, T, B, I, H, L, dtype="float64", batch_first=False):
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((L, B, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((L, B, H))).astype(dtype)
    return x, h0, c0


@pytest.fixture(autouse=True)
def _persistent_contract_checked(monkeypatch):
    """The GPU tests read the persistent kernels' error flag back after every launch (opt-in outside
    the tests and GPU_LSTM_DEBUG=1: a host synchronisation per launch)."""
    from gpu_lstm.backend import persistent
    monkeypatch.setattr(persistent.GpuRunner, "check_contract", True)


@pytest.fixture(scope="module")
def host_cls():
    """The host-built CUDA kernels' backend class: skips without a C++ compiler, fails on CI."""
    from cpu_kernel_support import unavailable
    from gpu_lstm.backend import host_backend
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    host_backend.load_library()
    return host_backend.HostKernelBackend


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def cpu_lstm():
    def build(I=3, H=4, L=1, **kw):
        kw.setdefault("dtype", "float64")
        kw.setdefault("seed", 0)
        return gl.LSTM(I, H, L, device="cpu", **kw)
    return build
