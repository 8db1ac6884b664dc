// Persistent fused recurrent LSTM (issue 13): the per-step PHASES, written once as __host__ __device__
// functions. cuda/persistent_lstm.cu runs them inside one cooperative kernel per direction (grid-wide
// barriers between steps); cuda/persistent_host_entry.cpp runs the very same functions on the CPU in
// the order the barriers impose (one sweep over all blocks per barrier interval), which is what the CPU
// tests compare bitwise with the per-step engine (tests/test_persistent_host.py).
//
// Tiling (the same on host and GPU; docs/persistent.md):
//   * block `blk` owns hidden units [blk*U, blk*U + n), n = gl_pers_slice_len(H, U, blk): a contiguous
//     slice, so for grid = ceil(H / U) every unit has exactly one owner.
//   * forward: the block keeps the four gate rows of R for its units on chip, in shared memory,
//     k-major: Rs[(g*P + k)*U + jj] = R[g*H + u0 + jj, k] (g = storage index along 4H). Consecutive
//     units are consecutive words, so the threads of a warp that share k read distinct banks.
//   * backward: the same units' COLUMNS of R (R^T rows, eq. 14): Rts[r*U + pp] = R[r, u0 + pp].
//   * a work item is a pair (b, jj), b < B, jj < n; KS consecutive lanes of a warp split its dot
//     product (split-K): lane s sums k = s, s+KS, s+2KS, ... sequentially from zero, then the KS
//     partial sums are combined by a butterfly (lanes s and s^o add for o = KS/2, ..., 1).
//
// THE SUMMATION ORDER (what makes bitwise tests possible): the recurrent dot product of a pair is
//   partial[s] = (((0 + a[s] b[s]) + a[s+KS] b[s+KS]) + ...)       for s = 0..KS-1, in the storage type
//   tree: for o = KS/2, KS/4, ..., 1: partial[s] = partial[s] + partial[s+o] for s < o; result partial[0]
// and then gates = gates + result (the GEMM's beta = 1 accumulate), backward dh = dh + result (or
// dh0 = result at t = 0). The host build is compiled with -ffp-contract=off, so every product and sum
// is rounded separately; gpu_lstm.backend.persistent.recurrent_reference reproduces this order in NumPy.
// The GPU build lets the compiler fuse a*b + c into FMA (the default), so GPU results agree with the
// host to rounding, not bitwise: that comparison is a tolerance test (tests/test_persistent_gpu.py).
//
// What only a GPU can check (the host run executes these phases one at a time, so it cannot see them):
//   * the grid barrier's correctness (memory ordering across SMs, no early release) and freedom from
//     deadlock, which needs every block co-resident: only the cooperative launch guarantees that;
//   * shared-memory races (staging vs. first use) and the warp-shuffle reduction itself;
//   * stale-L1 reads of h / dgates written by other blocks (loads of those go to L2: gl_pers_ld).
//   benchmarks/gpu_eval.sh runs the GPU tests under compute-sanitizer (memcheck, racecheck, synccheck).
#pragma once
#include "lstm_math.cuh"

// Number of hidden units block `blk` owns (0 for a block past the end).
__host__ __device__ __forceinline__ long long gl_pers_slice_len(const long long H, const long long U,
                                                                const long long blk) {
    const long long rest = H - blk * U;
    return rest <= 0 ? 0 : (rest < U ? rest : U);
}

// Load of a value another block wrote during this launch: through L2 only (L1 is not coherent
// across SMs). A plain load on the host.
template <typename T> __host__ __device__ __forceinline__ T gl_pers_ld(const T* p) {
#if defined(__CUDA_ARCH__)
    return __ldcg(p);
#else
    return *p;
#endif
}

// ---- staging R on chip (once per launch) -------------------------------------------------------
// Threads tid = 0..nthreads-1 of one block copy the slice; source-order enumeration, so consecutive
// threads read consecutive addresses of R.
template <typename T>
__host__ __device__ void gl_pers_stage_forward(const T* __restrict__ R, const long long H, const long long P,
                                               const long long u0, const long long n, const long long U,
                                               T* __restrict__ Rs, const long long tid, const long long nthreads) {
    const long long total = 4 * n * P;
    for (long long e = tid; e < total; e += nthreads) {
        const long long row = e / P, k = e - row * P;   // row = g*n + jj
        const long long g = row / n, jj = row - g * n;
        Rs[(g * P + k) * U + jj] = R[(g * H + u0 + jj) * P + k];
    }
}

template <typename T>
__host__ __device__ void gl_pers_stage_backward(const T* __restrict__ R, const long long H, const long long P,
                                                const long long u0, const long long n, const long long U,
                                                T* __restrict__ Rts, const long long tid, const long long nthreads) {
    const long long total = 4 * H * n;
    for (long long e = tid; e < total; e += nthreads) {
        const long long r = e / n, pp = e - r * n;
        Rts[r * U + pp] = R[r * P + u0 + pp];
    }
}

// ---- forward, step t -----------------------------------------------------------------------------
// Lane s's partial sums of the four gates' recurrent products for pair (b, jj): hrow = h(t-1)[b, :].
template <typename T>
__host__ __device__ __forceinline__ void gl_pers_forward_partial(const T* __restrict__ hrow, const T* __restrict__ Rs,
                                                                 const long long P, const long long U,
                                                                 const long long jj, const int s, const int KS,
                                                                 typename gl_acc<T>::type acc[4]) {
    typedef typename gl_acc<T>::type A;
    A a0 = A(0), a1 = A(0), a2 = A(0), a3 = A(0);
    const long long gstride = P * U;
    for (long long k = s; k < P; k += KS) {
        const A hk = gl_load(gl_pers_ld(hrow + k));
        const T* r = Rs + k * U + jj;
        a0 = a0 + hk * gl_load(r[0]);
        a1 = a1 + hk * gl_load(r[gstride]);
        a2 = a2 + hk * gl_load(r[2 * gstride]);
        a3 = a3 + hk * gl_load(r[3 * gstride]);
    }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
}

// The butterfly's result as lane 0 computes it, from all KS partials (host order; the GPU computes the
// same additions with __shfl_xor_sync, see gl_pers_lane_sum in persistent_lstm.cu).
template <typename A>
__host__ __device__ __forceinline__ A gl_pers_tree_sum(A* p, const int KS) {
    for (int o = KS >> 1; o > 0; o >>= 1)
        for (int s = 0; s < o; ++s) p[s] = p[s] + p[s + o];
    return p[0];
}

// Eqs. (1)-(6) for pair (b, j) of step t, given the reduced recurrent products acc (storage order
// along 4H). The cell maths is lstm_cell_forward's (gl_cell_forward_row, lstm_math.cuh), preceded by the
// GEMM's accumulate (gates += acc, rounded to T as the GEMM writes it) and followed by seq_carry for a
// padded row (t >= lengths[b]: h(t) = h(t-1), c(t) = c(t-1); P = H, no projection).
//   gates_t (B, 4H); c_prev, c_new (B, H) = c[t], c[t+1]; h_prev, h_new (B, H) = h[t], h[t+1]
template <typename T>
__host__ __device__ __forceinline__ void gl_pers_forward_cell(
    const long long H, const long long b, const long long j, const typename gl_acc<T>::type acc[4],
    T* __restrict__ gates_t, const T* __restrict__ bias, const T* __restrict__ peep,
    const T* __restrict__ c_prev, T* __restrict__ c_new, const T* __restrict__ h_prev, T* __restrict__ h_new,
    const long long* __restrict__ lengths, const long long t) {
    typedef typename gl_acc<T>::type A;
    const long long k = b * H + j;
    T* gb = gates_t + b * 4 * H;
    for (int g = 0; g < 4; ++g) gb[g * H + j] = gl_store<T>(gl_load(gb[g * H + j]) + acc[g]);
    A cc, hh;
    gl_cell_forward_row(gb, bias, peep, H, j, gl_load(c_prev[k]), &cc, &hh);   // lstm_cell_forward's maths
    c_new[k] = gl_store<T>(cc);
    h_new[k] = gl_store<T>(hh);
    if (lengths != 0 && t >= lengths[b]) {   // seq_carry(move = 0) of c, then of h
        c_new[k] = c_prev[k];
        h_new[k] = h_prev[k];
    }
}

// ---- backward ------------------------------------------------------------------------------------
// Lane s's partial sum of eq. (14)'s R^T delta for pair (b, pp): dgrow = dgates(t)[b, :] (4H).
template <typename T>
__host__ __device__ __forceinline__ typename gl_acc<T>::type gl_pers_backward_partial(
    const T* __restrict__ dgrow, const T* __restrict__ Rts, const long long H, const long long U,
    const long long pp, const int s, const int KS) {
    typedef typename gl_acc<T>::type A;
    A a = A(0);
    for (long long r = s; r < 4 * H; r += KS) a = a + gl_load(gl_pers_ld(dgrow + r)) * gl_load(Rts[r * U + pp]);
    return a;
}

// delta-h(t-1) += R^T delta(t) (accumulate = 1), or dh0 = R^T delta(0) (accumulate = 0): the GEMM's beta.
template <typename T>
__host__ __device__ __forceinline__ void gl_pers_backward_dh(const typename gl_acc<T>::type acc, T* __restrict__ out,
                                                             const int accumulate) {
    *out = accumulate ? gl_store<T>(gl_load(*out) + acc) : gl_store<T>(acc);
}

// Step t of the cell backward for pair (b, j): seq_carry(move = 1) of delta-h for a padded row (t > 0),
// then eqs. (16)-(20); mirrors seq_carry and lstm_cell_backward (cuda/lstm_kernels.cu).
//   gates_t (B, 4H) activated; c_t, c_prev = c[t+1], c[t]; dh_t = delta-h(t) (B, H); dh_prev = delta-h(t-1)
//   (null at t = 0); dc (B, H) the carry, in place; dgates_t (B, 4H) out.
template <typename T>
__host__ __device__ __forceinline__ void gl_pers_backward_cell(
    const long long H, const long long b, const long long j, const long long t,
    const T* __restrict__ gates_t, const T* __restrict__ peep, const T* __restrict__ c_t,
    const T* __restrict__ c_prev, T* __restrict__ dh_t, T* __restrict__ dh_prev, T* __restrict__ dc,
    T* __restrict__ dgates_t, const long long* __restrict__ lengths) {
    typedef typename gl_acc<T>::type A;
    const long long k = b * H + j;
    const bool padded = lengths != 0 && t >= lengths[b];
    if (padded && t > 0) {   // the carried state IS h(t-1): its gradient moves there
        dh_prev[k] = gl_store<T>(gl_load(dh_prev[k]) + gl_load(dh_t[k]));
        dh_t[k] = gl_store<T>(A(0));
    }
    T* db = dgates_t + b * 4 * H;
    const long long ki = GL_GATE_I * H + j, kf = GL_GATE_F * H + j;
    const long long kg = GL_GATE_G * H + j, ko = GL_GATE_O * H + j;
    if (padded) {
        db[ki] = gl_store<T>(A(0)); db[kf] = gl_store<T>(A(0));
        db[kg] = gl_store<T>(A(0)); db[ko] = gl_store<T>(A(0));
        return;
    }
    A carry, dct;   // lstm_cell_backward's maths (gl_cell_backward_row, lstm_math.cuh)
    gl_cell_backward_row(gates_t + b * 4 * H, db, peep, H, j, gl_load(c_t[k]), gl_load(c_prev[k]),
                         gl_load(dh_t[k]), gl_load(dc[k]), &carry, &dct);
    dc[k] = gl_store<T>(carry);
}
