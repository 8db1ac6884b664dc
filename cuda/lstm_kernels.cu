// Thin grid-stride kernels over lstm_math.cuh. Grid-stride loops make the result independent of the
// launch shape, which is what lets host_shim.h run each kernel on the CPU as a single "thread".
// No atomics: every output element is written by exactly one thread in a fixed order, so repeated
// runs are bitwise identical. Only softmax_xent uses shared memory and barriers (see there).
//
// Layout (row-major, time-major, see gpu_lstm/lstm.py):
//   gates : (B, 4H) slice of step t; gate k occupies columns [k H, (k+1) H), k from GL_GATE_*
//   c, h  : (B, H)
// Types: T is the storage type (float, double, or the 16-bit gl_bf16 / gl_half of lowp_types.cuh),
// A = gl_acc<T>::type the arithmetic type (float for the 16-bit types). The cell state c, its
// backward carry and delta-c, column sums' outputs and the scalars are A: a low-precision model keeps
// its long-memory path (c) and its parameter gradients in float32 (docs/precision.md). For float
// and double A = T and nothing changes.
#include "lstm_math.cuh"
#include "philox.cuh"
#include "reduce_kernels.cuh"
#include "optim_kernels.cuh"
#include "clip_kernels.cuh"

// One time step of eqs. (1)-(6). `gates` holds W x(t) + R h(t-1) on entry (bias not yet added) and
// the activated gates i, f, g, o on exit: they are what the backward needs. `bias` and `peep`
// (peephole weights, (3, H) rows i, f, o) may be null. `h` receives o * tanh(c): the hidden state,
// or the input of the projection GEMM when the layer has one.
template <typename T>
__global__ void lstm_cell_forward(const long long B, const long long H, T* __restrict__ gates,
                                  const T* __restrict__ bias, const T* __restrict__ peep,
                                  const gl_acc_t<T>* __restrict__ c_prev,
                                  gl_acc_t<T>* __restrict__ c, T* __restrict__ h) {
    typedef typename gl_acc<T>::type A;
    const long long n = B * H;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const long long b = k / H;
        const long long j = k - b * H;
        A cc, hh;
        gl_cell_forward_row(gates + b * 4 * H, bias, peep, H, j, gl_load(c_prev[k]), &cc, &hh);
        c[k] = cc;
        h[k] = gl_store<T>(hh);
    }
}

// One time step of eqs. (16)-(20) times the activation derivatives.
//   gates    : activated gates of step t (from lstm_cell_forward), (B, 4H)
//   peep     : peephole weights (3, H) or null
//   c, c_prev: c(t), c(t-1), (B, H)
//   dh       : delta-h(t) (of o * tanh(c) when the layer has a projection), (B, H)
//   dc_carry : in: the carry from step t+1; out: the carry for step t-1, (B, H), in place
//   dgates   : out: pre-activation gradients, (B, 4H)
//   dc_out   : out, may be null: delta-c(t) itself (eq. 16), for gradient-flow diagnostics
//   lengths  : per-sample sequence lengths (B,) or null. Rows with t >= lengths[b] are padding: their
//              gradients are zero and their carry passes through unchanged (their state was carried).
template <typename T>
__global__ void lstm_cell_backward(const long long B, const long long H, const T* __restrict__ gates,
                                   const T* __restrict__ peep, const gl_acc_t<T>* __restrict__ c,
                                   const gl_acc_t<T>* __restrict__ c_prev, const T* __restrict__ dh,
                                   gl_acc_t<T>* __restrict__ dc_carry, T* __restrict__ dgates,
                                   gl_acc_t<T>* __restrict__ dc_out,
                                   const long long* __restrict__ lengths, const long long t) {
    typedef typename gl_acc<T>::type A;
    const long long n = B * H;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const long long b = k / H;
        const long long j = k - b * H;
        const T* gb = gates + b * 4 * H;
        T* db = dgates + b * 4 * H;
        const long long ki = GL_GATE_I * H + j, kf = GL_GATE_F * H + j;
        const long long kg = GL_GATE_G * H + j, ko = GL_GATE_O * H + j;
        if (lengths != 0 && t >= lengths[b]) {
            db[ki] = gl_store<T>(A(0)); db[kf] = gl_store<T>(A(0));
            db[kg] = gl_store<T>(A(0)); db[ko] = gl_store<T>(A(0));
            if (dc_out != 0) dc_out[k] = A(0);
            continue;
        }
        A carry, dc;
        gl_cell_backward_row(gb, db, peep, H, j, gl_load(c[k]), gl_load(c_prev[k]), gl_load(dh[k]),
                             gl_load(dc_carry[k]), &carry, &dc);
        if (dc_out != 0) dc_out[k] = dc;
        dc_carry[k] = carry;
    }
}

// Variable-length batches, step t: for every padded row (t >= lengths[b]) of a (B, N) slice,
// move = 0: dst[b, :] = src[b, :]                    (forward: carry h and c through padding)
// move = 1: dst[b, :] += src[b, :]; src[b, :] = 0    (backward: delta-h of a carried state flows
//           to the previous step, and the padded step itself keeps no gradient)
template <typename T>
__global__ void seq_carry(const long long B, const long long N, const long long* __restrict__ lengths,
                          const long long t, T* __restrict__ src, T* __restrict__ dst, const int move) {
    const long long n = B * N;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const long long b = k / N;
        if (t >= lengths[b]) {
            if (move) {
                dst[k] = gl_store<T>(gl_load(dst[k]) + gl_load(src[k]));
                src[k] = gl_store<T>(typename gl_acc<T>::type(0));
            } else {
                dst[k] = src[k];
            }
        }
    }
}

// Zoneout (Krueger et al., 2016), forward, the n elements of step t:
//   out = d prev + (1 - d) cur,  d = the mask (training) or the constant z (evaluation, thr < 0).
// The training mask is computed here, not read: d[k] = gl_rand_event(key, call, offset + k, thr)
// (cuda/philox.cuh; offset = t n), and the backward recomputes the same bits. out may alias cur.
// The call counter comes by value (`call`, eager launches) or, when `call_at` is not null, from the
// device scalar *call_at (plans and CUDA graphs: a captured launch's arguments are frozen, so the
// host writes each forward's counter into that scalar before the replay; gpu_lstm/plan.py).
template <typename T>
__global__ void zoneout_mix(const long long n, const long long key, const long long call,
                            const long long* __restrict__ call_at,
                            const long long offset, const long long thr, const gl_acc_t<T> z,
                            const T* __restrict__ prev, const T* cur, T* out) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    const long long cl = call_at != 0 ? call_at[0] : call;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const A d = thr >= 0 ? (gl_rand_event(key, cl, offset + k, thr) ? A(1) : A(0)) : z;
        out[k] = gl_store<T>(d * gl_load(prev[k]) + (A(1) - d) * gl_load(cur[k]));
    }
}

// Zoneout, backward: the gradient of a zoned state splits between its two sources:
//   into = (accumulate ? into : 0) + d grad   (the kept previous state)
//   grad = (1 - d) grad                        (the fresh LSTM update)
// with d recomputed exactly as in zoneout_mix.
template <typename T>
__global__ void zoneout_split(const long long n, const long long key, const long long call,
                              const long long* __restrict__ call_at,
                              const long long offset, const long long thr, const gl_acc_t<T> z,
                              T* __restrict__ grad, T* __restrict__ into, const int accumulate) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    const long long cl = call_at != 0 ? call_at[0] : call;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const A d = thr >= 0 ? (gl_rand_event(key, cl, offset + k, thr) ? A(1) : A(0)) : z;
        const A g = gl_load(grad[k]);
        into[k] = gl_store<T>((accumulate ? gl_load(into[k]) : A(0)) + d * g);
        grad[k] = gl_store<T>((A(1) - d) * g);
    }
}

// Inverted dropout over n elements: out[k] = x[k] * scale where element k is kept
// (gl_rand_event(key, call, k, thr), probability thr / 2^24), else 0. The forward applies it to a
// layer's input; the backward applies it again, from the same (key, call), to the gradient: the mask
// is never stored. x and out may alias (the backward works in place).
template <typename T>
__global__ void dropout_apply(const long long n, const long long key, const long long call,
                              const long long* __restrict__ call_at,
                              const long long thr, const gl_acc_t<T> scale, const T* x, T* out) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    const long long cl = call_at != 0 ? call_at[0] : call;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        out[k] = gl_store<T>(gl_rand_event(key, cl, k, thr) ? gl_load(x[k]) * scale : A(0));
    }
}

// out[j] += sum_r x[r, j] for a (rows, cols) row-major x: eq. (25), db = sum over t and samples.
// One thread per column summing rows in a fixed order: deterministic (no atomics), and adjacent
// threads read adjacent addresses. For many rows the backends run it as the second pass of
// sum_rows_partial (reduce_kernels.cuh), over the per-chunk partial sums.
template <typename T>
__global__ void sum_rows(const long long rows, const long long cols, const T* __restrict__ x,
                         gl_acc_t<T>* __restrict__ out) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += stride) {
        A s = A(0);
        for (long long r = 0; r < rows; ++r) {
            s += gl_load(x[r * cols + j]);
        }
        out[j] = out[j] + s;
    }
}

// Softmax cross-entropy from logits, ONE BLOCK PER ROW (rows = time steps x samples), fused: row max
// and sum of exp in one online pass, the row's loss, and its gradient (softmax - onehot) * inv_count.
// Thread k of the block reads columns k, k + blockDim, ... (adjacent threads, adjacent addresses:
// coalesced), keeping an online (max, sum of exp(z - max)) pair; the pairs are then combined by a
// shared-memory tree in a fixed pairing (thread k with k + w, w = blockDim/2, ..., 1). The order of
// every operation depends on blockDim only: the GPU launches GL_XENT_BLOCK threads, so its results
// are bitwise reproducible. Stable for any logit magnitude: exp is only taken of non-positive numbers.
// The host build runs it with blockDim = 1, where the tree is empty and the online pass walks the
// row in order: the same code and maths (gl_lse_push / gl_lse_combine are tested there); the tree
// and the barriers themselves are only exercised on a GPU.
//   logits   : (rows, V);  targets : (rows,) int64, rows equal to ignore_index contribute nothing
//   inv_count: device scalar 1 / (number of counted rows), so no host round trip is needed
//   loss_rows: (rows,) out, unscaled loss of each row (0 for ignored rows)
//   grad     : (rows, V) out
// Launch: blockDim.x a power of two <= GL_XENT_BLOCK; any grid (blocks stride over rows).
#define GL_XENT_BLOCK 256

// (m, s) summarises a set of logits as its max m and sum of exp(z - m); s == 0 marks the empty set
// (a non-empty set has s >= 1: its max contributes exp(0)).
template <typename A> __host__ __device__ __forceinline__ void gl_lse_push(A* m, A* s, const A v) {
    if (*s == A(0)) { *m = v; *s = A(1); }
    else if (v > *m) { *s = *s * gl_exp(*m - v) + A(1); *m = v; }
    else { *s += gl_exp(v - *m); }
}

template <typename A> __host__ __device__ __forceinline__ void gl_lse_combine(A* m, A* s, const A m2, const A s2) {
    if (s2 == A(0)) return;
    if (*s == A(0)) { *m = m2; *s = s2; return; }
    if (m2 > *m) { *s = *s * gl_exp(*m - m2) + s2; *m = m2; }
    else { *s += s2 * gl_exp(m2 - *m); }
}

template <typename T>
__global__ void softmax_xent(const long long rows, const long long V, const T* __restrict__ logits,
                             const long long* __restrict__ targets, const long long ignore_index,
                             const gl_acc_t<T>* __restrict__ inv_count,
                             gl_acc_t<T>* __restrict__ loss_rows, T* __restrict__ grad) {
    typedef typename gl_acc<T>::type A;
    __shared__ A sm_m[GL_XENT_BLOCK];
    __shared__ A sm_s[GL_XENT_BLOCK];
    const A scale = inv_count[0];
    const long long tid = threadIdx.x, nt = blockDim.x;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform per block: barriers are safe
        const T* z = logits + r * V;
        T* gr = grad + r * V;
        const long long t = targets[r];
        if (t == ignore_index) {
            for (long long j = tid; j < V; j += nt) gr[j] = gl_store<T>(A(0));
            if (tid == 0) loss_rows[r] = A(0);
            continue;
        }
        A m = A(0), s = A(0);
        for (long long j = tid; j < V; j += nt) gl_lse_push(&m, &s, gl_load(z[j]));
        sm_m[tid] = m;
        sm_s[tid] = s;
        __syncthreads();
        for (long long w = nt / 2; w > 0; w /= 2) {
            if (tid < w) gl_lse_combine(&sm_m[tid], &sm_s[tid], sm_m[tid + w], sm_s[tid + w]);
            __syncthreads();
        }
        const A mx = sm_m[0], sum = sm_s[0];
        const A inv_s = A(1) / sum;
        for (long long j = tid; j < V; j += nt) {
            const A p = gl_exp(gl_load(z[j]) - mx) * inv_s;
            gr[j] = gl_store<T>((p - (j == t ? A(1) : A(0))) * scale);
        }
        // -log softmax(z)[t], with (z_t - max) formed first: adding max to log(sum) before
        // subtracting z_t would cancel catastrophically for large logits.
        if (tid == 0) loss_rows[r] = gl_log(sum) - (gl_load(z[t]) - mx);
        __syncthreads();   // sm_m/sm_s are reused by this block's next row
    }
}

// dst[k] = src[k] rounded to the storage type T (nearest even): the low-precision copy of a float32
// master parameter, refreshed on the device after each optimizer step (gpu_lstm/optim.py), and any
// other float32 -> storage conversion. For float/double it is a copy.
template <typename T>
__global__ void narrow_copy(const long long n, const gl_acc_t<T>* __restrict__ src,
                            T* __restrict__ dst) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        dst[k] = gl_store<T>(src[k]);
    }
}

// dst[k] = src[r * src_ld + c] widened to the arithmetic type (exact), k = r * cols + c: a storage
// array's float32 copy, or with src_ld = 0 one (cols,) row broadcast over every row (a learned initial
// cell state). What a plan uses where the eager loop calls be.astype: on the GPU a bfloat16 array is
// uint16 bit patterns, which no CuPy copy or cast may convert numerically.
template <typename T>
__global__ void widen_copy(const long long n, const long long cols, const long long src_ld,
                           const T* __restrict__ src, gl_acc_t<T>* __restrict__ dst) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        dst[k] = gl_load(src[(k / cols) * src_ld + k % cols]);
    }
}

// dst[k] += src[j] in the arithmetic type, rounded once to T, over n = rows * cols elements; j = k, or
// with rev != 0 the same column of row rows - 1 - r (time reversed: the reverse direction's dx added
// into a bidirectional layer's input gradient). dst and src do not overlap.
template <typename T>
__global__ void add_rows(const long long n, const long long cols, const long long rev,
                         T* __restrict__ dst, const T* __restrict__ src) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    const long long rows = n / cols;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const long long r = k / cols, j = (rev ? rows - 1 - r : r) * cols + k % cols;
        dst[k] = gl_store<T>(gl_load(dst[k]) + gl_load(src[j]));
    }
}
