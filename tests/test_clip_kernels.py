"""Gradient clipping by global norm through the kernels of cuda/clip_kernels.cuh, built for the host
(device='host' ring): bitwise against the documented order (gpu_lstm.backend.reduce.sumsq_reference)
and against NumPy where NumPy's order is the same (parameters of fewer than 8 elements: NumPy's pairwise
sum is then sequential); within the derived bound of tests/clip_bounds.py otherwise."""

import numpy as np
import pytest

from clip_bounds import clipped_rtol, norm_rtol
from gpu_lstm import optim
from gpu_lstm.backend import reduce

SIZES = [(1,), (7,), (15,), (16,), (17,), (0,), (256 * 16 + 1,), (33, 17), (1024, 1024), (70001,)]



def _grads(rng, dtype, shapes, scale=1.0):
    return [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]


def test_lanes_depend_on_the_size_only():
    assert reduce.norm_lanes(0) == 0 and reduce.norm_lanes(1) == 1 and reduce.norm_lanes(16) == 1
    assert reduce.norm_lanes(17) == 2 and reduce.norm_lanes(1 << 30) == reduce.TARGET_THREADS
    assert reduce.norm_offsets([5, 0, 40]) == [0, 1, 1, 4]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_norm_is_the_documented_fixed_order_bitwise(host_cls, dtype):
    rng = np.random.default_rng(3)
    grads = _grads(rng, dtype, SIZES)
    for k in range(1, len(grads) + 1):
        total = np.float64(0.0)
        for g in grads[:k]:
            total = total + reduce.sumsq_reference(g)
        got = host_cls(dtype).grad_norm(grads[:k])
        assert got.shape == () and got.dtype == np.float64
        assert got == np.sqrt(total), k          # bitwise: same additions in the same order


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
def test_clip_matches_numpy_within_the_derived_bound(host_cls, dtype, max_norm):
    rng = np.random.default_rng(4)
    ref = _grads(rng, dtype, SIZES, scale=3.0)
    got = [g.copy() for g in ref]
    sizes = [g.size for g in ref]
    n_ref = optim.clip_grad_norm(ref, max_norm)            # NumPy arrays: the array expressions
    n_got = host_cls(dtype).grad_norm(got, max_norm, 1e-6)
    np.testing.assert_allclose(n_got, n_ref, rtol=norm_rtol(sizes), atol=0)
    if max_norm == 1e9:      # no clipping: the coefficient is exactly 1 on both sides, grads untouched
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
        return
    rtol = clipped_rtol(sizes, dtype)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_parameters_equal_numpy_bitwise(host_cls, dtype):
    """Fewer than 8 elements each: NumPy's pairwise sum is sequential, as the device's is here."""
    rng = np.random.default_rng(5)
    ref = _grads(rng, dtype, [(2,), (1, 1), (7,), (3, 2)])
    got = [g.copy() for g in ref]
    assert host_cls(dtype).grad_norm(got) == optim.global_grad_norm(ref)
    n_ref = optim.clip_grad_norm(ref, 0.3)
    n_got = host_cls(dtype).grad_norm(got, 0.3, 1e-6)
    assert n_got == n_ref
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradients_behave_like_numpy(host_cls, bad):
    ref = [np.array([1.0, bad, 2.0]), np.array([3.0])]
    got = [g.copy() for g in ref]
    n_ref = optim.clip_grad_norm(ref, 1.0)
    n_got = host_cls("float64").grad_norm(got, 1.0, 1e-6)
    np.testing.assert_array_equal(n_got, n_ref)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)    # NaN where NumPy has NaN (inf * 0), 0 where it has 0


def test_bound_is_tight_enough_to_mean_something():
    # A wrong order or a float32 accumulation would be off by ~1e-7 relative or more.
    assert norm_rtol([1024 * 1024, 4096]) < 5e-14
    assert clipped_rtol([1024 * 1024], "float32") < 2.5e-7
