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
