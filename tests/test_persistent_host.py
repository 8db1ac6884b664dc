"""The persistent engine's phases (cuda/persistent_lstm.cuh) run on the CPU by the host runner, against
the per-step engine (_direction.forward/backward with the host-built kernels), BITWISE.

What makes bitwise possible: the cell maths are the same source lines (the phase functions mirror
lstm_cell_forward/backward and seq_carry statement for statement, compiled by the same compiler with
-ffp-contract=off), and the one operation whose order is free, the recurrent dot product, is computed
by the reference in the persistent kernels' documented order (persistent.recurrent_reference: split-K
lanes summed sequentially, then a butterfly). Everything else (x W^T, dW, dR, db, dx) is the same NumPy
call on both sides. Against the plain NumPy path (matmul's own order) the agreement is to a tolerance
derived from the dot length. What the CPU cannot show (barriers, shared-memory races, co-residency) is
listed in cuda/persistent_lstm.cuh and checked on a GPU machine (tests/test_persistent_gpu.py).
"""

import pathlib

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm import _direction as dirn
from gpu_lstm.backend import persistent as pers
from cpu_kernel_support import unavailable
from persistent_problem import problem, run

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def host_cls():
    from gpu_lstm.backend import host_backend
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    host_backend.load_library()
    pers.load_host_library()

    class OrderedHostBackend(host_backend.HostKernelBackend):
        """The per-step engine with the recurrent GEMM summed in the persistent kernels' order."""
        recurrent = None

        def gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
            if b is not self.recurrent:
                return super().gemm(a, b, out, trans_a, trans_b, beta)
            assert not trans_a and beta in (0.0, 1.0)
            if trans_b:   # forward: gates[t] += h[t] R^T, dot length P = H
                acc = pers.recurrent_reference(a, b.T, pers.split_lanes(b.shape[1]))
            else:         # backward, eq. (14): dh[t-1] (+)= dgates[t] R, dot length 4H
                acc = pers.recurrent_reference(a, b, pers.split_lanes(b.shape[0]))
            if beta == 1.0:
                out += acc
            else:
                out[...] = acc

    return OrderedHostBackend


def _problem(rng, T, B, I, H, dtype, bias, peep, lengths):
    params, data = problem(rng, T, B, I, H, dtype, lengths)
    return params, dirn.DirectionParams(params, "d", bias, peep, False), data


def _persistent(units):
    def fwd(be, prm, ws, x, h0, c0, lengths):
        pers.run_forward(be, prm, ws, x, h0, c0, lengths, runner=pers.HostRunner(be.dtype, units=units))

    def bwd(be, prm, grads, prefix, ws, shared, x, dh, dh_n, dc_n, dh0, dc0, dx, lengths):
        pers.run_backward(be, prm, grads, prefix, ws, shared, x, dh, dh_n, dc_n, dh0, dc0, dx, lengths,
                          runner=pers.HostRunner(be.dtype, units=units))
    return fwd, bwd


CASES = [  # T, B, I, H, units (None: what an H100 launch would use)
    (1, 1, 2, 1, None), (4, 3, 5, 7, None), (5, 2, 3, 33, 3), (3, 5, 4, 67, 5), (3, 2, 6, 140, None),
    (2, 3, 4, 9, 4), (6, 1, 3, 5, 2),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, B, I, H, units", CASES)
@pytest.mark.parametrize("bias, peep, lengths", [(True, False, False), (False, False, False), (True, True, True)])
def test_host_phases_match_per_step_engine_bitwise(host_cls, dtype, T, B, I, H, units, bias, peep, lengths):
    rng = np.random.default_rng(T * 100 + H)
    params, prm, data = _problem(rng, T, B, I, H, dtype, bias, peep, lengths)
    ref_be = host_cls(dtype)
    ref_be.recurrent = prm.R
    with np.errstate(under="ignore"):
        ref = run(ref_be, prm, params, data, dirn.forward, dirn.backward, T, B, I, H)
        got = run(host_cls(dtype), prm, params, data, *_persistent(units), T, B, I, H)
    for name in ref:
        if not bias and name == "grad d.b" or not peep and name == "grad d.P":
            continue
        assert np.isfinite(got[name]).all(), name
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, B, I, H, units", [(6, 3, 5, 33, None), (4, 2, 3, 130, 7)])
def test_host_phases_match_numpy_path(host_cls, dtype, T, B, I, H, units):
    """Against the NumPy per-step path (matmul's summation order, NumPy's exp-based nonlinearities).
    Two orders of a length-K dot product differ by at most ~K u sum|a_k b_k| (u the unit roundoff); the
    nonlinearities add a few ulp per step and the recurrence carries differences along the sequence,
    contracting (|f| < 1, sigma' <= 1/4). Tolerance: 8 (4H) u T on quantities of size ~1."""
    from gpu_lstm.backend.numpy_backend import NumpyBackend
    rng = np.random.default_rng(H)
    params, prm, data = _problem(rng, T, B, I, H, dtype, True, True, True)
    with np.errstate(under="ignore"):
        ref = run(NumpyBackend(dtype), prm, params, data, dirn.forward, dirn.backward, T, B, I, H)
        got = run(host_cls(dtype), prm, params, data, *_persistent(units), T, B, I, H)
    u = np.finfo(dtype).eps / 2
    tol = 8 * (4 * H) * u * T
    for name in ref:
        scale = max(1.0, float(np.abs(ref[name]).max()))
        err = float(np.abs(got[name] - ref[name]).max()) / scale
        assert err <= tol, f"{name}: {err:.2e} > {tol:.2e}"


@pytest.mark.parametrize("arch", sorted(pers.ARCHS))
@pytest.mark.parametrize("H", [1, 3, 7, 33, 131, 133, 255, 511, 999, 1043])
@pytest.mark.parametrize("B", [1, 17, 64])
def test_every_unit_has_exactly_one_owner(host_cls, arch, H, B):
    """For the grids the launcher chooses: the C slice function (the one the kernels use) covers every
    hidden unit exactly once, with no block left empty and no block over U units."""
    a = pers.ARCHS[arch]
    cfg, why = pers.launch_config(H, B, 4, a["sms"], a["smem_block"])
    assert cfg is not None, why
    assert cfg.grid <= a["sms"] and cfg.threads % 32 == 0 and cfg.threads <= pers.MAX_THREADS
    assert 32 % cfg.lanes_fwd == 0 and 32 % cfg.lanes_bwd == 0
    lib = pers.load_host_library()
    owner = np.full(H, -1)
    for blk in range(cfg.grid):
        n = lib.gl_persistent_slice_len_f32(H, cfg.units, blk)
        assert 1 <= n <= cfg.units
        units = np.arange(blk * cfg.units, blk * cfg.units + n)
        assert (owner[units] == -1).all()
        owner[units] = blk
    assert (owner >= 0).all()
    assert lib.gl_persistent_slice_len_f32(H, cfg.units, cfg.grid) == 0


def test_split_lanes_and_reference_order():
    assert [pers.split_lanes(k) for k in (1, 15, 16, 31, 32, 64, 255, 256, 4096)] == [1, 1, 2, 2, 4, 8, 16, 32, 32]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 37)), rng.standard_normal((37, 5))
    for lanes in (1, 2, 8, 32):
        np.testing.assert_allclose(pers.recurrent_reference(a, b, lanes), a @ b, rtol=1e-13, atol=1e-13)
    # lanes = 1 is the plain sequential sum
    seq = np.zeros((3, 5))
    for k in range(37):
        seq = seq + a[:, k:k + 1] * b[k:k + 1, :]
    np.testing.assert_array_equal(pers.recurrent_reference(a, b, 1), seq)


def test_capacity_is_the_largest_fitting_hidden_size():
    for arch, a in pers.ARCHS.items():
        for item in (8, 4, 2):
            H = pers.max_hidden(item, arch)
            assert pers.launch_config(H, 1, item, a["sms"], a["smem_block"])[0] is not None
            cfg, why = pers.launch_config(H + 1, 1, item, a["sms"], a["smem_block"])
            assert cfg is None and "does not fit on chip" in why
    assert pers.max_hidden(4, "sm_90") > pers.max_hidden(4, "sm_80") > pers.max_hidden(8, "sm_80")


def test_docs_capacity_table_is_the_computed_one():
    text = (ROOT / "docs" / "persistent.md").read_text()
    assert pers.capacity_markdown() in text, "docs/persistent.md: regenerate the table with capacity_markdown()"


def test_supported_option_set_and_reasons():
    ok = gl.LSTM(3, 8, device="host", dtype="float32", seed=0)
    assert pers.persistent_supported(ok, 5, 2) == (True, "")
    assert pers.persistent_supported(gl.LSTM(3, 8, device="host", peephole=True), 5, 2)[0]
    cases = [(gl.LSTM(3, 8, device="cpu"), "device 'cpu'"),
             (gl.LSTM(3, 8, device="host", proj_size=4), "projection"),
             (gl.LSTM(3, 8, device="host", zoneout_h=0.1), "zoneout")]
    for model, why in cases:
        supported, reason = pers.persistent_supported(model, 5, 2)
        assert not supported and why in reason
    assert "empty" in pers.persistent_supported(ok, 0, 2)[1]
    big = gl.LSTM(3, 1400, device="host", dtype="float32", seed=0)
    supported, reason = pers.persistent_supported(big, 5, 2, device_limits=(132, 227 * 1024))
    assert not supported and "does not fit on chip" in reason


def test_runner_only_for_gpu_and_host_backends():
    from gpu_lstm.backend.numpy_backend import NumpyBackend
    be = NumpyBackend("float64")
    assert not pers.has_persistent(be)
    with pytest.raises(ValueError, match="no runner for backend 'cpu'"):
        pers.runner_for(be)
