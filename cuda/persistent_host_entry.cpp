// Host runner of the persistent kernels' phases (cuda/persistent_lstm.cuh), loaded with ctypes by
// gpu_lstm/backend/persistent.py. Built by the host C++ compiler with -include host_shim.h,
// -ffp-contract=off and the same -DGL_GATE_* as the GPU build, into its own library.
//
// It executes what one cooperative launch executes, with the grid barriers turned into the boundaries
// between sweeps: within a sweep it visits every block, and in each block every (b, jj) pair, calling
// the same phase functions in the same order the GPU threads do; each pair's KS split-K lanes are
// computed one after the other and combined with gl_pers_tree_sum (the GPU's butterfly, same additions).
// R is staged per block into a separate "shared memory" buffer by the same staging function, so the
// on-chip layout and the slice ownership are exercised too. It cannot show barrier or shared-memory
// races: those need a GPU (see the header).
#include <vector>

#include "persistent_lstm.cuh"

namespace {

const long long kStageThreads = 37;   // an odd "block size" for the staging loops: any size must work

template <typename T>
void host_forward(long long Tn, long long B, long long H, long long U, int KS, T* gates, const T* bias,
                  const T* peep, const T* R, T* h, T* c, const long long* lengths) {
    typedef typename gl_acc<T>::type A;
    const long long P = H, grid = (H + U - 1) / U;
    std::vector<std::vector<T> > smem(grid, std::vector<T>(4 * P * U));
    for (long long blk = 0; blk < grid; ++blk)
        for (long long tid = 0; tid < kStageThreads; ++tid)
            gl_pers_stage_forward<T>(R, H, P, blk * U, gl_pers_slice_len(H, U, blk), U, smem[blk].data(), tid,
                                     kStageThreads);
    std::vector<A> part(4 * KS);
    for (long long t = 0; t < Tn; ++t) {          // one sweep = one interval between grid barriers
        T* gt = gates + t * B * 4 * H;
        for (long long blk = 0; blk < grid; ++blk) {
            const long long u0 = blk * U, n = gl_pers_slice_len(H, U, blk);
            for (long long q = 0; q < B * n; ++q) {
                const long long b = q / n, jj = q - b * n;
                for (int s = 0; s < KS; ++s) {
                    A acc[4];
                    gl_pers_forward_partial<T>(h + t * B * P + b * P, smem[blk].data(), P, U, jj, s, KS, acc);
                    for (int g = 0; g < 4; ++g) part[g * KS + s] = acc[g];
                }
                A sum[4];
                for (int g = 0; g < 4; ++g) sum[g] = gl_pers_tree_sum(&part[g * KS], KS);
                gl_pers_forward_cell<T>(H, b, u0 + jj, sum, gt, bias, peep, c + t * B * H, c + (t + 1) * B * H,
                                        h + t * B * P, h + (t + 1) * B * P, lengths, t);
            }
        }
    }
}

template <typename T>
void host_backward(long long Tn, long long B, long long H, long long U, int KS, const T* gates, const T* peep,
                   const T* R, const T* c, T* dh, T* dc, T* dgates, T* dh0, const long long* lengths) {
    typedef typename gl_acc<T>::type A;
    const long long P = H, grid = (H + U - 1) / U, BH = B * H, G = 4 * H;
    if (Tn <= 0) return;
    std::vector<std::vector<T> > smem(grid, std::vector<T>(4 * H * U));
    for (long long blk = 0; blk < grid; ++blk)
        for (long long tid = 0; tid < kStageThreads; ++tid)
            gl_pers_stage_backward<T>(R, H, P, blk * U, gl_pers_slice_len(H, U, blk), U, smem[blk].data(), tid,
                                      kStageThreads);
    // sweep 0: the cell backward of the last step
    for (long long blk = 0; blk < grid; ++blk) {
        const long long u0 = blk * U, n = gl_pers_slice_len(H, U, blk);
        for (long long q = 0; q < B * n; ++q) {
            const long long b = q / n, j = u0 + q - b * n, t = Tn - 1;
            gl_pers_backward_cell<T>(H, b, j, t, gates + t * B * G, peep, c + (t + 1) * BH, c + t * BH,
                                     dh + t * BH, t > 0 ? dh + (t - 1) * BH : (T*)0, dc, dgates + t * B * G,
                                     lengths);
        }
    }
    std::vector<A> part(KS);
    for (long long t = Tn - 1; t >= 0; --t) {     // sweep: delta-h(t-1) from delta(t), then step t-1's cell
        for (long long blk = 0; blk < grid; ++blk) {
            const long long u0 = blk * U, n = gl_pers_slice_len(H, U, blk);
            for (long long q = 0; q < B * n; ++q) {
                const long long b = q / n, pp = q - b * n, j = u0 + pp;
                for (int s = 0; s < KS; ++s)
                    part[s] = gl_pers_backward_partial<T>(dgates + t * B * G + b * G, smem[blk].data(), H, U, pp, s, KS);
                const A sum = gl_pers_tree_sum(part.data(), KS);
                if (t == 0) {
                    gl_pers_backward_dh<T>(sum, dh0 + b * P + j, 0);
                    continue;
                }
                gl_pers_backward_dh<T>(sum, dh + (t - 1) * BH + b * P + j, 1);
                const long long s1 = t - 1;
                gl_pers_backward_cell<T>(H, b, j, s1, gates + s1 * B * G, peep, c + (s1 + 1) * BH, c + s1 * BH,
                                         dh + s1 * BH, s1 > 0 ? dh + (s1 - 1) * BH : (T*)0, dc,
                                         dgates + s1 * B * G, lengths);
            }
        }
    }
}

}  // namespace

#define GL_PERS_HOST_ENTRIES(T, SUFFIX)                                                                  \
    extern "C" void gl_persistent_forward_##SUFFIX(long long Tn, long long B, long long H, long long U,  \
                                                   int KS, T* gates, const T* bias, const T* peep,       \
                                                   const T* R, T* h, T* c, const long long* lengths) {   \
        host_forward<T>(Tn, B, H, U, KS, gates, bias, peep, R, h, c, lengths);                           \
    }                                                                                                    \
    extern "C" void gl_persistent_backward_##SUFFIX(long long Tn, long long B, long long H, long long U, \
                                                    int KS, const T* gates, const T* peep, const T* R,   \
                                                    const T* c, T* dh, T* dc, T* dgates, T* dh0,         \
                                                    const long long* lengths) {                          \
        host_backward<T>(Tn, B, H, U, KS, gates, peep, R, c, dh, dc, dgates, dh0, lengths);              \
    }                                                                                                    \
    extern "C" long long gl_persistent_slice_len_##SUFFIX(long long H, long long U, long long blk) {     \
        return gl_pers_slice_len(H, U, blk);                                                             \
    }

GL_PERS_HOST_ENTRIES(float, f32)
GL_PERS_HOST_ENTRIES(double, f64)
