"""Ring 1: every kernel compiles with NVRTC for sm_80 and sm_90, no GPU needed, with the exact
options and name expressions the runtime (CuPy RawModule) uses."""

import pytest

from gpu_lstm.backend import kernels, nvrtc
from gpu_lstm.gates import GATE_ORDER
from cpu_kernel_support import unavailable


@pytest.fixture(scope="module")
def have_nvrtc():
    if nvrtc.find_libnvrtc() is None:
        unavailable("libnvrtc not found (pip install nvidia-cuda-nvrtc)")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles(have_nvrtc, arch):
    lowered, log, cubin = nvrtc.compile_kernels(arch)
    assert set(lowered) == set(kernels.name_expressions())
    assert len(lowered) == len(kernels.KERNEL_NAMES) * len(kernels.CTYPES)
    for expr, mangled in lowered.items():
        assert mangled.startswith("_Z") and expr.split("<")[0] in mangled
    assert cubin > 1000
    assert "warning" not in log.lower(), log


def test_gate_order_reaches_the_kernels_only_through_options(have_nvrtc):
    assert kernels.gate_defines() == tuple(f"-DGL_GATE_{g.upper()}={k}" for k, g in enumerate(GATE_ORDER))
    with pytest.raises(nvrtc.NvrtcError, match="gate offsets must come from gpu_lstm.gates"):
        nvrtc.compile_kernels("sm_90", options=())


def test_a_broken_kernel_fails_with_the_log(have_nvrtc):
    with pytest.raises(nvrtc.NvrtcError, match="undefined"):
        nvrtc.compile_kernels("sm_90", source="__global__ void k() { undefined_fn(); }", expressions=())


def test_source_is_self_contained():
    src = kernels.kernel_source()
    assert '#include "' not in src
    assert "gl_cell_forward" in src and "lstm_cell_backward" in src
    assert src.count("struct gl_acc {") == 1   # one primary template (the 16-bit types specialise it)
