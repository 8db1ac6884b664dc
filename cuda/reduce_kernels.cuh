// Column sums for the bias, peephole and Dense-bias gradients, as a deterministic two-level
// reduction (included by lstm_kernels.cu).
//
// sum_rows (lstm_kernels.cu) alone runs one thread per column: for 4H = 2048 columns that is 8
// blocks, a few percent of a large GPU, each thread walking all T*B rows. Here the rows are cut into
// nchunks chunks of `chunk` rows; sum_rows_partial gives one thread to every (chunk, column) pair
// (nchunks * cols threads, adjacent threads on adjacent columns: coalesced), each summing its chunk
// in row order into partial[c, j]; then sum_rows adds the nchunks partial rows, in chunk order, into
// out. Every addition happens in an order fixed by (rows, cols, chunk) alone, never by the launch
// shape or the GPU, so results are bitwise reproducible, and the host build (one thread) computes
// exactly what the GPU computes. chunk is chosen on the host from the shape only
// (gpu_lstm/backend/reduce.py).
//
// With y non-null each term is x * y (the peephole gradients: sum over t and b of a gate's
// pre-activation gradient times the cell it looks at), so no product array is ever formed.
//   x       : rows of length ldx; the summed columns are x[r, x_off + j], j < cols
//   y       : null, or (rows, cols) contiguous, of the arithmetic type (y is a cell state, kept wide)
//   partial : of the arithmetic type too (the second pass is sum_rows<A>)
//   partial : (nchunks, cols), nchunks = ceil(rows / chunk)
template <typename T>
__global__ void sum_rows_partial(const long long rows, const long long cols, const long long chunk,
                                 const T* __restrict__ x, const long long ldx, const long long x_off,
                                 const gl_acc_t<T>* __restrict__ y,
                                 gl_acc_t<T>* __restrict__ partial) {
    typedef typename gl_acc<T>::type A;
    const long long nchunks = (rows + chunk - 1) / chunk;
    const long long n = nchunks * cols;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const long long c = k / cols;
        const long long j = k - c * cols;
        const long long r1 = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
        A s = A(0);
        if (y == 0) {
            for (long long r = c * chunk; r < r1; ++r) s += gl_load(x[r * ldx + x_off + j]);
        } else {
            for (long long r = c * chunk; r < r1; ++r) s += gl_load(x[r * ldx + x_off + j]) * gl_load(y[r * cols + j]);
        }
        partial[k] = s;
    }
}
