// C entry points for the host build of lstm_kernels.cu, loaded by gpu_lstm/backend/host_backend.py
// with ctypes. Compiled with -include host_shim.h and the same -DGL_GATE_* as the GPU build.
#include "lstm_kernels.cu"

#define GL_HOST_ENTRIES(T, SUFFIX)                                                                   \
    extern "C" void gl_cell_forward_##SUFFIX(long long B, long long H, T* gates, const T* bias,     \
                                             const T* peep, const gl_acc<T>::type* c_prev,          \
                                             gl_acc<T>::type* c, T* h) {                            \
        lstm_cell_forward<T>(B, H, gates, bias, peep, c_prev, c, h);                                 \
    }                                                                                                \
    extern "C" void gl_cell_backward_##SUFFIX(long long B, long long H, const T* gates,             \
                                              const T* peep, const gl_acc<T>::type* c,              \
                                              const gl_acc<T>::type* c_prev, const T* dh,           \
                                              gl_acc<T>::type* dc_carry, T* dgates,                 \
                                              gl_acc<T>::type* dc_out,                              \
                                              const long long* lengths, long long t) {               \
        lstm_cell_backward<T>(B, H, gates, peep, c, c_prev, dh, dc_carry, dgates, dc_out, lengths, t);\
    }                                                                                                \
    extern "C" void gl_seq_carry_##SUFFIX(long long B, long long N, const long long* lengths,        \
                                          long long t, T* src, T* dst, int move) {                   \
        seq_carry<T>(B, N, lengths, t, src, dst, move);                                              \
    }                                                                                                \
    extern "C" void gl_sum_rows_##SUFFIX(long long rows, long long cols, const T* x,                 \
                                         gl_acc<T>::type* out) {                                     \
        sum_rows<T>(rows, cols, x, out);                                                             \
    }                                                                                                \
    extern "C" void gl_sum_rows_partial_##SUFFIX(long long rows, long long cols, long long chunk,      \
                                                 const T* x, long long ldx, long long x_off,          \
                                                 const gl_acc<T>::type* y,                            \
                                                 gl_acc<T>::type* partial) {                          \
        sum_rows_partial<T>(rows, cols, chunk, x, ldx, x_off, y, partial);                           \
    }                                                                                                \
    extern "C" void gl_softmax_xent_##SUFFIX(long long rows, long long V, const T* logits,          \
                                             const long long* targets, long long ignore_index,      \
                                             const gl_acc<T>::type* inv_count,                    \
                                             gl_acc<T>::type* loss_rows, T* grad) {                  \
        softmax_xent<T>(rows, V, logits, targets, ignore_index, inv_count, loss_rows, grad);         \
    }                                                                                                \
    extern "C" void gl_narrow_copy_##SUFFIX(long long n, const gl_acc<T>::type* src, T* dst) {      \
        narrow_copy<T>(n, src, dst);                                                                 \
    }                                                                                                \
    extern "C" void gl_widen_copy_##SUFFIX(long long n, long long cols, long long src_ld, const T* src, \
                                           gl_acc<T>::type* dst) {                                  \
        widen_copy<T>(n, cols, src_ld, src, dst);                                                    \
    }                                                                                                \
    extern "C" void gl_add_rows_##SUFFIX(long long n, long long cols, long long rev, T* dst, const T* src) { \
        add_rows<T>(n, cols, rev, dst, src);                                                         \
    }

#define GL_HOST_ZONEOUT(T, SUFFIX)                                                                  \
    extern "C" void gl_zoneout_mix_##SUFFIX(long long n, long long key, long long call,               \
                                            const long long* call_at, long long offset, long long thr, \
                                            gl_acc<T>::type z, const T* prev, const T* cur, T* out) { \
        zoneout_mix<T>(n, key, call, call_at, offset, thr, z, prev, cur, out);                        \
    }                                                                                                 \
    extern "C" void gl_zoneout_split_##SUFFIX(long long n, long long key, long long call,             \
                                              const long long* call_at, long long offset,             \
                                              long long thr, gl_acc<T>::type z, T* grad, T* into,     \
                                              int accumulate) {                                       \
        zoneout_split<T>(n, key, call, call_at, offset, thr, z, grad, into, accumulate);              \
    }                                                                                                 \
    extern "C" void gl_dropout_apply_##SUFFIX(long long n, long long key, long long call,             \
                                              const long long* call_at, long long thr,                \
                                              gl_acc<T>::type scale, const T* x, T* out) {            \
        dropout_apply<T>(n, key, call, call_at, thr, scale, x, out);                                  \
    }

// The generator itself, for the known-answer test of cuda/philox.cuh (tests/test_philox.py).
extern "C" void gl_host_philox4x32_10(const unsigned int* ctr, const unsigned int* key, unsigned int* out) {
    gl_philox4x32_10(ctr, key, out);
}

#define GL_HOST_OPTIM(T, SUFFIX)                                                                    \
    extern "C" void gl_adam_step_##SUFFIX(long long n, T* p, const T* g, T* m, T* v, T lr_c1, T b1,  \
                                          T omb1, T b2, T omb2, T c2, T eps, T wd, int l2, T decay,   \
                                          int decoupled) {                                            \
        adam_step<T>(n, p, g, m, v, lr_c1, b1, omb1, b2, omb2, c2, eps, wd, l2, decay, decoupled);    \
    }                                                                                                 \
    extern "C" void gl_sgd_step_##SUFFIX(long long n, T* p, const T* g, T* vel, T lr, T mu, T wd, int l2) { \
        sgd_step<T>(n, p, g, vel, lr, mu, wd, l2);                                                    \
    }                                                                                                 \
    extern "C" void gl_grad_sumsq_partial_##SUFFIX(long long n, long long lanes, const T* g, double* partial) { \
        grad_sumsq_partial<T>(n, lanes, g, partial);                                                  \
    }                                                                                                 \
    extern "C" void gl_grad_norm_finish_##SUFFIX(long long nparams, const long long* offsets,         \
                                                 const double* partial, double* slots) {              \
        grad_norm_finish<T>(nparams, offsets, partial, slots);                                        \
    }                                                                                                 \
    extern "C" void gl_grad_clip_coef_##SUFFIX(long long nparams, const double* slots, double max_norm, \
                                               double eps, double* out) {                             \
        grad_clip_coef<T>(nparams, slots, max_norm, eps, out);                                        \
    }                                                                                                 \
    extern "C" void gl_grad_scale_##SUFFIX(long long n, T* g, const double* coef) {                   \
        grad_scale<T>(n, g, coef);                                                                    \
    }

GL_HOST_OPTIM(float, f32)
GL_HOST_OPTIM(double, f64)
GL_HOST_ZONEOUT(float, f32)
GL_HOST_ZONEOUT(double, f64)
GL_HOST_ENTRIES(float, f32)
GL_HOST_ENTRIES(double, f64)
// 16-bit storage with float arithmetic (cuda/lowp_types.cuh); no optimizer kernels: low-precision
// models keep float32 master weights, updated by the f32 kernels.
GL_HOST_ZONEOUT(gl_bf16, bf16)
GL_HOST_ZONEOUT(gl_half, f16)
GL_HOST_ENTRIES(gl_bf16, bf16)
GL_HOST_ENTRIES(gl_half, f16)

// The conversions themselves, for the exhaustive tests against ml_dtypes / numpy.float16.
extern "C" void gl_host_to_bf16(long long n, const float* x, unsigned short* out) {
    for (long long k = 0; k < n; ++k) out[k] = gl_float_to_bf16(x[k]).bits;
}
extern "C" void gl_host_to_half(long long n, const float* x, unsigned short* out) {
    for (long long k = 0; k < n; ++k) out[k] = gl_float_to_half(x[k]).bits;
}
extern "C" void gl_host_from_bf16(long long n, const unsigned short* x, float* out) {
    for (long long k = 0; k < n; ++k) { gl_bf16 v; v.bits = x[k]; out[k] = gl_bf16_to_float(v); }
}
extern "C" void gl_host_from_half(long long n, const unsigned short* x, float* out) {
    for (long long k = 0; k < n; ++k) { gl_half v; v.bits = x[k]; out[k] = gl_half_to_float(v); }
}
