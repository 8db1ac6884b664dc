// Persistent fused recurrent LSTM kernels (issue 13): ONE launch runs the whole time loop of one
// direction of one layer, forward or backward, with the block's slice of R kept in shared memory for
// the whole sequence and one grid-wide barrier per step. The per-step work is the phase functions of
// persistent_lstm.cuh (shared with the host runner, cuda/persistent_host_entry.cpp); this file adds only
// what is GPU-specific: thread mapping, the warp-shuffle reduction and the grid barrier.
//
// Buffers are exactly those of gpu_lstm/_direction.py for one direction (P = H, no projection):
//   gates (T, B, 4H)  in: x W^T; out: activated i, f, g, o      h (T+1, B, H), c (T+1, B, H), slot 0 = h0/c0
//   backward: dh (T, B, H) in: dy (+ dh_n at T-1); used as the delta-h workspace; dc (B, H) the carry
//   (in: dc_n or 0; out: dc0); dgates (T, B, 4H) out; dh0 (B, H) out.
//
// Launch contract (gpu_lstm/backend/persistent.py: launch_config): grid = ceil(H / U) blocks, all
// co-resident, launched with cuLaunchCooperativeKernel (which refuses a grid that cannot be
// co-resident; through CuPy's Function(..., enable_cooperative_groups=True)); blockDim.x a multiple of
// 32 and of KS; KS a power of two <= 32; dynamic shared memory 4 * U * H * sizeof(T); `sync` three
// zeroed words (arrival counter, error flag, generation).
// If the grid does not cover H the kernel writes 1 to sync[1] and returns (every block returns before
// any barrier, so it cannot hang).
//
// The grid barrier is hand-written (an arrival counter and a generation word in global memory) because
// NVRTC as shipped in the nvidia-cuda-nvrtc wheel has no cooperative_groups.h; it is the scheme of
// cooperative_groups' grid.sync(): block barrier, one thread per block fences and arrives, the last
// arrival resets the counter and bumps the generation, the others spin on the generation. It is only
// deadlock-free when all blocks are co-resident, which the cooperative launch guarantees.
#include "persistent_lstm.cuh"

#ifndef GL_PERS_MAX_THREADS
#define GL_PERS_MAX_THREADS 512
#endif

__device__ __forceinline__ void gl_pers_grid_barrier(unsigned int* sync) {
    __threadfence();          // this thread's writes (h, c, gates, dgates, dh) before the arrival
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* gen = sync + 2;
        const unsigned int g = *gen;
        __threadfence();
        if (atomicAdd(sync, 1u) == gridDim.x - 1) {
            atomicExch(sync, 0u);
            __threadfence();
            atomicAdd(sync + 2, 1u);
        } else {
            while (*gen == g) __nanosleep(20);
        }
        __threadfence();
    }
    __syncthreads();
}

// The butterfly over KS consecutive lanes: lanes s and s^o add for o = KS/2, ..., 1. Every lane ends
// with the same bits (addition commutes), and lane 0's additions are gl_pers_tree_sum's.
template <typename A> __device__ __forceinline__ A gl_pers_lane_sum(A v, const int KS) {
    for (int o = KS >> 1; o > 0; o >>= 1) v = v + __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern __shared__ __align__(16) unsigned char gl_pers_smem[];

template <typename T>
__global__ void __launch_bounds__(GL_PERS_MAX_THREADS)
persistent_lstm_forward(const long long Tn, const long long B, const long long H, const long long U, const int KS,
                        T* __restrict__ gates, const T* __restrict__ bias, const T* __restrict__ peep,
                        const T* __restrict__ R, T* __restrict__ h, T* __restrict__ c,
                        const long long* __restrict__ lengths, unsigned int* __restrict__ sync) {
    typedef typename gl_acc<T>::type A;
    if ((long long)gridDim.x * U < H) {
        if (blockIdx.x == 0 && threadIdx.x == 0) sync[1] = 1u;
        return;
    }
    const long long P = H, u0 = (long long)blockIdx.x * U, n = gl_pers_slice_len(H, U, blockIdx.x);
    T* Rs = reinterpret_cast<T*>(gl_pers_smem);
    gl_pers_stage_forward<T>(R, H, P, u0, n, U, Rs, threadIdx.x, blockDim.x);
    __syncthreads();
    const int s = (int)(threadIdx.x % KS);
    const long long per_pass = blockDim.x / KS, pairs = B * n;
    for (long long t = 0; t < Tn; ++t) {
        T* gt = gates + t * B * 4 * H;
        // Every thread runs the same number of passes, so all lanes of a warp reach the shuffles.
        for (long long base = 0; base < pairs; base += per_pass) {
            const long long q = base + threadIdx.x / KS;
            const bool active = q < pairs;
            const long long b = active ? q / n : 0, jj = active ? q - b * n : 0;
            A acc[4] = {A(0), A(0), A(0), A(0)};
            if (active) gl_pers_forward_partial<T>(h + t * B * P + b * P, Rs, P, U, jj, s, KS, acc);
            for (int g = 0; g < 4; ++g) acc[g] = gl_pers_lane_sum(acc[g], KS);
            if (active && s == 0)
                gl_pers_forward_cell<T>(H, b, u0 + jj, acc, gt, bias, peep, c + t * B * H, c + (t + 1) * B * H,
                                        h + t * B * P, h + (t + 1) * B * P, lengths, t);
        }
        if (t + 1 < Tn) gl_pers_grid_barrier(sync);   // h(t) complete everywhere before step t+1 reads it
    }
}

template <typename T>
__global__ void __launch_bounds__(GL_PERS_MAX_THREADS)
persistent_lstm_backward(const long long Tn, const long long B, const long long H, const long long U, const int KS,
                         const T* __restrict__ gates, const T* __restrict__ peep, const T* __restrict__ R,
                         const T* __restrict__ c, T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ dgates,
                         T* __restrict__ dh0, const long long* __restrict__ lengths, unsigned int* __restrict__ sync) {
    typedef typename gl_acc<T>::type A;
    if ((long long)gridDim.x * U < H) {
        if (blockIdx.x == 0 && threadIdx.x == 0) sync[1] = 1u;
        return;
    }
    if (Tn <= 0) return;
    const long long P = H, G = 4 * H, BH = B * H, u0 = (long long)blockIdx.x * U;
    const long long n = gl_pers_slice_len(H, U, blockIdx.x);
    T* Rts = reinterpret_cast<T*>(gl_pers_smem);
    gl_pers_stage_backward<T>(R, H, P, u0, n, U, Rts, threadIdx.x, blockDim.x);
    __syncthreads();
    const int s = (int)(threadIdx.x % KS);
    const long long per_pass = blockDim.x / KS, pairs = B * n;
    {   // the cell backward of the last step (its delta-h is complete: dy + dh_n)
        const long long t = Tn - 1;
        for (long long q = threadIdx.x / KS; q < pairs; q += per_pass) {
            if (s != 0) continue;
            const long long b = q / n, j = u0 + q - b * n;
            gl_pers_backward_cell<T>(H, b, j, t, gates + t * B * G, peep, c + (t + 1) * BH, c + t * BH, dh + t * BH,
                                     t > 0 ? dh + (t - 1) * BH : (T*)0, dc, dgates + t * B * G, lengths);
        }
    }
    for (long long t = Tn - 1; t >= 0; --t) {
        gl_pers_grid_barrier(sync);                   // delta(t) complete everywhere
        const T* dgt = dgates + t * B * G;
        for (long long base = 0; base < pairs; base += per_pass) {
            const long long q = base + threadIdx.x / KS;
            const bool active = q < pairs;
            const long long b = active ? q / n : 0, pp = active ? q - b * n : 0, j = u0 + pp;
            A acc = active ? gl_pers_backward_partial<T>(dgt + b * G, Rts, H, U, pp, s, KS) : A(0);
            acc = gl_pers_lane_sum(acc, KS);
            if (!active || s != 0) continue;
            if (t == 0) {
                gl_pers_backward_dh<T>(acc, dh0 + b * P + j, 0);
                continue;
            }
            gl_pers_backward_dh<T>(acc, dh + (t - 1) * BH + b * P + j, 1);
            const long long s1 = t - 1;   // the same thread owns (b, j) at step t-1: no barrier needed here
            gl_pers_backward_cell<T>(H, b, j, s1, gates + s1 * B * G, peep, c + (s1 + 1) * BH, c + s1 * BH,
                                     dh + s1 * BH, s1 > 0 ? dh + (s1 - 1) * BH : (T*)0, dc, dgates + s1 * B * G,
                                     lengths);
        }
    }
}
