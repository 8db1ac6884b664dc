"""Derived error bounds between the device's global gradient norm (cuda/clip_kernels.cuh, a fixed-order
two-level sum) and optim.global_grad_norm's NumPy expressions (NumPy's pairwise sum), shared by the
host-kernel tests and the GPU module.

Both sum the same float64 squares (x * x rounded once; for float32 gradients exact), all nonnegative.
A sum of nonnegative terms where every term passes through at most d roundings is within
gamma_d = d u / (1 - d u) of the exact sum (u = 2^-53; Higham, Accuracy and Stability, 4.2), whatever
the tree. So the two sums differ by at most (gamma_{d_dev} + gamma_{d_np}) of the sum; the square
root halves that and adds one rounding to each side.
"""

import math

import numpy as np

U64 = 2.0 ** -53


def _gamma(d):
    return d * U64 / (1 - d * U64)


def depth_device(sizes, fma=False):
    """Most roundings any square goes through in the device order: its lane's sequential sum, the
    group's sequential sum, the 8-level tree, the parameter-order total; +1 where a GPU fuses
    s + x * x (float64 gradients: the square is then not rounded on its own)."""
    from gpu_lstm.backend import reduce
    d = 0
    for n in sizes:
        lanes = reduce.norm_lanes(n)
        if lanes:
            d = max(d, -(-n // lanes) + -(-lanes // reduce.NORM_LANES) + int(math.log2(reduce.NORM_LANES)))
    return d + len(sizes) + (1 if fma else 0)


def depth_numpy(sizes):
    """Most roundings in NumPy's pairwise sum (blocks of 128 with 8 accumulators: 16 + 3; one more per
    halving above 128) plus the parameter-order total."""
    d = 0
    for n in sizes:
        d = max(d, 16 + 3 + max(0, math.ceil(math.log2(max(n, 1) / 128))))
    return d + len(sizes)


def norm_rtol(sizes, fma=False):
    """Relative bound between the device norm and the NumPy norm."""
    return (_gamma(depth_device(sizes, fma)) + _gamma(depth_numpy(sizes))) / 2 + 2 * U64


def clipped_rtol(sizes, dtype, fma=False):
    """Relative bound between the clipped gradients: the coefficient max_norm / (norm + eps) adds two
    roundings in double to the norm's bound; rounded to the gradient's dtype the two coefficients may
    land on adjacent values (one ulp, 2 u of that dtype); the product adds one rounding on each side."""
    u = float(np.finfo(dtype).eps) / 2
    return norm_rtol(sizes, fma) + 4 * U64 + 2 * u + 2 * u
