"""Ring 1 for the persistent kernels: NVRTC compiles cuda/persistent_lstm.cu for sm_80 and sm_90 with the
runtime's options and name expressions, and ptxas reports the registers per thread with NO spills (the
CI check; NVRTC >= 12 accepts --ptxas-options=-v). Where nvcc exists, the same source is also compiled
by nvcc with -Xptxas -v (skipped otherwise: CI need not have nvcc)."""

import shutil
import subprocess

import pytest

from gpu_lstm.backend import kernels, nvrtc, persistent as pers
from cpu_kernel_support import unavailable

# 64K registers per SM, and the kernels are built for blocks of up to MAX_THREADS threads
REG_LIMIT = 65536 // pers.MAX_THREADS


@pytest.fixture(scope="module")
def have_nvrtc():
    if nvrtc.find_libnvrtc() is None:
        unavailable("libnvrtc not found (pip install nvidia-cuda-nvrtc)")
    if nvrtc.version() < (12, 0):
        unavailable(f"NVRTC {nvrtc.version()} < 12 has no --ptxas-options")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_persistent_kernels_compile_without_spills(have_nvrtc, arch):
    report = pers.nvrtc_register_report(arch)
    assert set(report) == set(pers.name_expressions())
    for expr, fig in report.items():
        print(f"{arch} {expr}: {fig}")
        assert fig["spill_stores"] == 0 and fig["spill_loads"] == 0, (expr, fig)
        assert fig["stack"] == 0, (expr, fig)
        assert 0 < fig["registers"] <= REG_LIMIT, (expr, fig)


def test_no_warnings_and_self_contained_source(have_nvrtc):
    src = pers.kernel_source()
    assert '#include "' not in src and src.count("struct gl_acc {") == 1   # the 16-bit types specialise it
    _, log, cubin = nvrtc.compile_kernels("sm_90", source=src, options=pers.compile_options(),
                                          expressions=pers.name_expressions())
    assert "warning" not in log.lower(), log
    assert cubin > 1000


def test_ptxas_report_parser():
    log = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers"""
    assert pers.ptxas_report(log) == {"_Z3fooPf": dict(stack=8, spill_stores=4, spill_loads=4, registers=255)}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_ptxas_reports_no_spills(tmp_path, arch):
    nvcc = shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))
    if nvcc is None:
        pytest.skip("nvcc not found (the NVRTC test above is the one CI relies on)")
    inst = tmp_path / "inst.cu"
    lines = ['#include "persistent_lstm.cu"']
    for ct in kernels.CTYPES.values():
        lines += [f"template __global__ void persistent_lstm_forward<{ct}>(long long, long long, long long, long long, "
                  f"int, {ct}*, const {ct}*, const {ct}*, const {ct}*, {ct}*, {ct}*, const long long*, unsigned int*);",
                  f"template __global__ void persistent_lstm_backward<{ct}>(long long, long long, long long, long long, "
                  f"int, const {ct}*, const {ct}*, const {ct}*, const {ct}*, {ct}*, {ct}*, {ct}*, {ct}*, "
                  f"const long long*, unsigned int*);"]
    inst.write_text("\n".join(lines) + "\n")
    res = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", f"-I{kernels.cuda_dir()}",
                          *pers.compile_options(), str(inst), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = pers.ptxas_report(res.stdout + res.stderr)
    assert len(report) == len(pers.name_expressions())
    for name, fig in report.items():
        print(f"nvcc {arch} {name}: {fig}")
        assert fig["spill_stores"] == 0 and fig["spill_loads"] == 0 and fig["stack"] == 0, (name, fig)
        assert 0 < fig["registers"] <= REG_LIMIT
