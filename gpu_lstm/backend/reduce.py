"""Host-side choices for the deterministic reductions of cuda/reduce_kernels.cuh, shared by the GPU
backend and the host-kernel backend so both run the very same summation order."""

# Enough (chunk, column) threads to fill a large GPU (132 SMs x 2048 threads is 270k; 64k already
# hides latency for a streaming sum), but chunks of at least MIN_CHUNK rows so the second pass stays
# small. Depends on the shape only, never on the device: results are bitwise the same on every GPU.
TARGET_THREADS = 1 << 16
MIN_CHUNK = 16


def row_chunk(rows, cols):
    """Rows per chunk for sum_rows_partial over a (rows, cols) sum."""
    if rows <= 0 or cols <= 0:
        return 1
    nchunks = max(1, min(-(-TARGET_THREADS // cols), -(-rows // MIN_CHUNK)))
    return -(-rows // nchunks)


def num_chunks(rows, chunk):
    return -(-rows // chunk) if rows > 0 else 0


# ---- the global gradient norm (cuda/clip_kernels.cuh) -------------------------------------------
NORM_LANES = 256   # = GL_NORM_LANES: the second level's interleaved groups (a constant, never the block size)


def norm_lanes(n):
    """Lanes of grad_sumsq_partial for a parameter of n elements: lane c sums elements c, c + lanes, ...
    Enough lanes to fill a large GPU, each with at least MIN_CHUNK elements; from n alone."""
    if n <= 0:
        return 0
    return max(1, min(TARGET_THREADS, -(-n // MIN_CHUNK)))


def norm_offsets(sizes):
    """Start of each parameter's lanes in the partial buffer, and the total (len(sizes) + 1 entries)."""
    offs = [0]
    for n in sizes:
        offs.append(offs[-1] + norm_lanes(n))
    return offs


def sumsq_reference(g):
    """The sum of squares of one gradient in grad_sumsq_partial + grad_norm_finish's order, in NumPy
    (float64, every addition rounded separately): the bitwise reference of the host build."""
    import numpy as np
    x = np.asarray(g, dtype=np.float64).ravel()
    n = x.size
    lanes = norm_lanes(n)
    if lanes == 0:
        return np.float64(0.0)
    sq = x * x
    partial = np.zeros(lanes)
    for k in range(0, n, lanes):          # lane c adds k = c, c + lanes, ... one round at a time
        seg = sq[k:k + lanes]
        partial[:seg.size] = partial[:seg.size] + seg
    groups = np.zeros(NORM_LANES)
    for c in range(0, lanes, NORM_LANES):
        seg = partial[c:c + NORM_LANES]
        groups[:seg.size] = groups[:seg.size] + seg
    o = NORM_LANES // 2
    while o:
        groups[:o] = groups[:o] + groups[o:2 * o]
        o //= 2
    return groups[0]
