"""Skip-or-fail policy for the CPU-side kernel checks: they skip on a machine without NVRTC or a C++
compiler, but fail on CI (.ci/run sets GPU_LSTM_REQUIRE_CPU_KERNEL_CHECKS=1), so CI can never pass
with the kernel verification silently skipped."""

import os

import pytest

REQUIRED = os.environ.get("GPU_LSTM_REQUIRE_CPU_KERNEL_CHECKS") == "1"


def unavailable(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (GPU_LSTM_REQUIRE_CPU_KERNEL_CHECKS=1)")
    pytest.skip(reason)
