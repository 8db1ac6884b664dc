"""Ring 3 for the persistent kernels: the cooperative forward/backward on a real GPU against the NumPy
per-step path. Marked `gpu`; skipped without cupy or a CUDA device.

What this adds over the CPU rings (tests/test_persistent_host.py): the grid barrier (many steps, every
block), shared-memory staging, the shuffle reduction, co-residency at the largest H that fits, and the
launch itself. The GPU fuses multiply-adds, so the comparison is a tolerance, not bitwise.

`-k small` selects the small shapes that benchmarks/gpu_eval.sh runs under compute-sanitizer
(memcheck, racecheck, synccheck) before timing anything:
    python -m pytest -m gpu tests/test_persistent_gpu.py -k small -v
"""

import numpy as np
import pytest

from gpu_lstm import _direction as dirn
from gpu_lstm.backend import get_backend, gpu_available
from gpu_lstm.backend import persistent as pers
from gpu_lstm.backend.numpy_backend import NumpyBackend
from persistent_problem import problem, run

_ok, _why = gpu_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _ok, reason=f"no GPU: {_why}")]

# relative to max(1, |reference|): sums of 4H terms along T steps
TOL = {"float64": 1e-10, "float32": 2e-5}


def _run(be, params, data, bias, peep, forward, backward, T, B, I, H):
    P = {k: be.asarray(k, v) for k, v in params.items()}
    D = {k: (None if v is None else be.xp.asarray(v)) for k, v in data.items()}
    prm = dirn.DirectionParams(P, "d", bias, peep, False)
    return {k: be.to_numpy(v) for k, v in run(be, prm, P, D, forward, backward, T, B, I, H).items()}


def _compare(dtype, T, B, I, H, bias=True, peep=False, lengths=False, seed=0):
    rng = np.random.default_rng(seed)
    params, data = problem(rng, T, B, I, H, dtype, lengths)
    with np.errstate(under="ignore", over="ignore"):
        ref = _run(NumpyBackend(dtype), params, data, bias, peep, dirn.forward, dirn.backward, T, B, I, H)
    got = _run(get_backend("gpu", dtype), params, data, bias, peep, pers.run_forward, pers.run_backward, T, B, I, H)
    for name in ref:
        if not bias and name == "grad d.b" or not peep and name == "grad d.P":
            continue
        assert np.isfinite(got[name]).all(), name
        err = float(np.abs(got[name] - ref[name]).max()) / max(1.0, float(np.abs(ref[name]).max()))
        assert err < TOL[dtype], f"{name}: {err:.2e} ({dtype}, T={T}, B={B}, H={H})"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, B, I, H", [(3, 2, 3, 5), (4, 3, 4, 33)], ids=["small-H5", "small-H33"])
@pytest.mark.parametrize("bias, peep, lengths", [(True, False, False), (True, True, True)], ids=["plain", "peep-len"])
def test_small_persistent_matches_numpy(dtype, T, B, I, H, bias, peep, lengths):
    _compare(dtype, T, B, I, H, bias, peep, lengths, seed=H)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
# H = 700 fits on chip in float64 on sm_80 and sm_90 (docs/persistent.md: 745 and 924); the capacity
# limit of the device at hand is test_largest_hidden_size_that_fits.
@pytest.mark.parametrize("T, B, I, H", [(200, 4, 16, 256), (50, 64, 64, 512), (30, 32, 128, 131), (20, 3, 8, 700)])
def test_persistent_matches_numpy(dtype, T, B, I, H):
    """Many steps (every step crosses the grid barrier), several blocks per unit count, odd H."""
    _compare(dtype, T, B, I, H, seed=T + H)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_largest_hidden_size_that_fits(dtype):
    """Co-residency and the opt-in shared memory at the capacity limit of THIS device."""
    be = get_backend("gpu", dtype)
    runner = pers.runner_for(be)
    H = 1
    while pers.launch_config(H + 1, 1, be.dtype.itemsize, runner.sms, runner.smem_block)[0] is not None:
        H += 1
    _compare(dtype, 3, 2, 4, H, seed=1)


def test_too_large_is_refused_with_the_reason():
    be = get_backend("gpu", "float32")
    runner = pers.runner_for(be)
    H = 1
    while pers.launch_config(H, 1, 4, runner.sms, runner.smem_block)[0] is not None:
        H += 1
    with pytest.raises(ValueError, match="does not fit on chip"):
        runner.config(H, 1)
