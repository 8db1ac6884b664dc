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


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_16bit_instantiations_compile_without_spills(have_nvrtc, arch):
    """Every gl_bf16 / gl_half instantiation (cuda/lowp_types.cuh, float arithmetic) compiles with
    NVRTC for the target, with ptxas's figures: no spills, no stack frame."""
    from gpu_lstm.backend.persistent import ptxas_report
    exprs = kernels.name_expressions(tuple(kernels.LOWP_CTYPES))
    assert len(exprs) == 2 * len(kernels.LOWP_KERNEL_NAMES)
    lowered, log, _ = nvrtc.compile_kernels(arch, options=kernels.compile_options() + ("--ptxas-options=-v",),
                                            expressions=exprs)
    figures = ptxas_report(log)
    for expr, mangled in lowered.items():
        fig = figures[mangled]
        print(f"NVRTC {arch} {expr}: {fig}")
        assert fig.get("spill_stores", 0) == 0 and fig.get("spill_loads", 0) == 0, (expr, fig)
    assert "warning" not in log.lower().replace("ptxas info", ""), log


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_16bit_instantiations_nvcc(tmp_path, arch):
    """The same with nvcc (where installed; CI relies on the NVRTC test above)."""
    import shutil
    import subprocess
    from gpu_lstm.backend.persistent import ptxas_report
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "k.cu"
    src.write_text(kernels.kernel_source() + "\n" + "\n".join(
        f"template __global__ void narrow_copy<{ct}>(long long, const float*, {ct}*);"
        for ct in kernels.LOWP_CTYPES.values()) + "\n")
    # explicit instantiation of every 16-bit kernel through the runtime's name expressions
    names = "\n".join(f"auto* gl_inst_{i} = &{e};" for i, e in enumerate(kernels.name_expressions(tuple(kernels.LOWP_CTYPES))))
    src.write_text(src.read_text() + names + "\n")
    res = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *kernels.compile_options(), str(src),
                          "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = ptxas_report(res.stdout + res.stderr)
    low = {k: v for k, v in report.items() if "gl_bf16" in k or "gl_half" in k or "7gl_bf16" in k or "7gl_half" in k}
    assert len(low) >= 2 * len(kernels.LOWP_KERNEL_NAMES)
    for name, fig in low.items():
        assert fig.get("spill_stores", 0) == 0 and fig.get("spill_loads", 0) == 0, (name, fig)
