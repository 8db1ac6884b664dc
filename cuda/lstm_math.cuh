// Per-element LSTM maths shared by the GPU kernels and the host (CPU) test build.
//
// Everything here is __host__ __device__ so that g++ (through host_shim.h) and NVRTC compile the very
// same lines. Equation numbers refer to ../shared/seeds/lstm-forward-backward-derivation.md
// (see docs/math.md). Gate offsets along the 4H axis come from the compile options
// (-DGL_GATE_I=... , generated from gpu_lstm.gates.GATE_ORDER) so the order is defined in one place.
#pragma once

#if !defined(GL_GATE_I) || !defined(GL_GATE_F) || !defined(GL_GATE_G) || !defined(GL_GATE_O)
#error "gate offsets must come from gpu_lstm.gates (compile with gpu_lstm.backend.kernels.compile_options())"
#endif

// Arithmetic type for a storage type: float and double compute in themselves; the 16-bit storage
// types gl_bf16 and gl_half (lowp_types.cuh) map to float, and load/store convert (store rounds to
// nearest even, once), without touching the maths below. gl_acc<T>::type is also the type of the
// buffers a low-precision model keeps wide: the cell state c and its carry, and the parameter
// gradients (docs/precision.md).
template <typename T> struct gl_acc { typedef T type; };
template <typename T> using gl_acc_t = typename gl_acc<T>::type;   // the same, for parameter lists

template <typename T> __host__ __device__ __forceinline__ typename gl_acc<T>::type gl_load(const T v) { return v; }
template <typename T> __host__ __device__ __forceinline__ T gl_store(const typename gl_acc<T>::type v) { return v; }

#include "lowp_types.cuh"

__host__ __device__ __forceinline__ float gl_exp(const float x) { return expf(x); }
__host__ __device__ __forceinline__ double gl_exp(const double x) { return exp(x); }
__host__ __device__ __forceinline__ float gl_log(const float x) { return logf(x); }
__host__ __device__ __forceinline__ double gl_log(const double x) { return log(x); }
__host__ __device__ __forceinline__ float gl_sqrt(const float x) { return sqrtf(x); }
__host__ __device__ __forceinline__ double gl_sqrt(const double x) { return sqrt(x); }
__host__ __device__ __forceinline__ float gl_tanh(const float x) { return tanhf(x); }
__host__ __device__ __forceinline__ double gl_tanh(const double x) { return tanh(x); }

// Logistic sigmoid that never evaluates exp of a large positive number, so no inf/inf = NaN and
// no overflow for |x| in the thousands: sigma(x) = 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise.
template <typename A> __host__ __device__ __forceinline__ A gl_sigmoid(const A x) {
    if (x >= A(0)) {
        return A(1) / (A(1) + gl_exp(-x));
    }
    const A e = gl_exp(x);
    return e / (A(1) + e);
}

// Forward for one (sample, unit) element. z* are pre-activations (W x + R h(t-1) + b). p* are the
// optional peephole weights (zero without peepholes): c(t-1) feeds the input and forget gates, c(t)
// the output gate (the variant in the chain-rules seed; docs/math.md).
template <typename A>
__host__ __device__ __forceinline__ void gl_cell_forward(const A zi, const A zf, const A zg, const A zo,
                                                        const A c_prev, const A pi, const A pf,
                                                        const A po, A* i, A* f, A* g, A* o, A* c,
                                                        A* h) {
    *i = gl_sigmoid(zi + pi * c_prev);   // eq. (2) (+ peephole)
    *f = gl_sigmoid(zf + pf * c_prev);   // eq. (1) (+ peephole)
    *g = gl_tanh(zg);                    // eq. (4)
    *c = (*g) * (*i) + c_prev * (*f);    // eq. (5)
    *o = gl_sigmoid(zo + po * (*c));     // eq. (3) (+ peephole on the new cell)
    *h = (*o) * gl_tanh(*c);             // eq. (6)
}

// Eqs. (1)-(6) for hidden unit j of one sample, on that sample's gate row gb (4H pre-activations W x
// + R h(t-1) on entry, the activated i, f, g, o on exit: what the backward reads). bias and peep
// (3, H: rows i, f, o) may be null. Shared by lstm_cell_forward and the persistent kernels' cell phase,
// so the two compute the same bits from the same pre-activations.
template <typename T, typename A>
__host__ __device__ __forceinline__ void gl_cell_forward_row(T* __restrict__ gb, const T* __restrict__ bias,
                                                            const T* __restrict__ peep, const long long H,
                                                            const long long j, const A c_prev, A* c, A* h) {
    const long long ki = GL_GATE_I * H + j, kf = GL_GATE_F * H + j;
    const long long kg = GL_GATE_G * H + j, ko = GL_GATE_O * H + j;
    A zi = gl_load(gb[ki]), zf = gl_load(gb[kf]), zg = gl_load(gb[kg]), zo = gl_load(gb[ko]);
    if (bias != 0) {
        zi += gl_load(bias[ki]); zf += gl_load(bias[kf]);
        zg += gl_load(bias[kg]); zo += gl_load(bias[ko]);
    }
    A pi = A(0), pf = A(0), po = A(0);
    if (peep != 0) {
        pi = gl_load(peep[j]); pf = gl_load(peep[H + j]); po = gl_load(peep[2 * H + j]);
    }
    A i, f, g, o;
    gl_cell_forward(zi, zf, zg, zo, c_prev, pi, pf, po, &i, &f, &g, &o, c, h);
    gb[ki] = gl_store<T>(i); gb[kf] = gl_store<T>(f); gb[kg] = gl_store<T>(g); gb[ko] = gl_store<T>(o);
}

// Backward for one element at step t.
//   dh        : delta-h(t), eq. (14): dy(t) plus R^T times next step's pre-activation gradients
//   dc_next   : the carry from step t+1: delta-c(t+1) f(t+1) (plus, with peepholes, the
//               pre-activation gradients of i(t+1), f(t+1) times their peephole weights)
// Outputs the pre-activation gradients (delta-theta times the activation's derivative, which the
// dW/dR/db GEMMs consume), the carry for step t-1, and delta-c(t) itself (for diagnostics).
template <typename A>
__host__ __device__ __forceinline__ void gl_cell_backward(const A i, const A f, const A g, const A o,
                                                         const A c, const A c_prev, const A pi,
                                                         const A pf, const A po, const A dh,
                                                         const A dc_next, A* dzi, A* dzf, A* dzg,
                                                         A* dzo, A* dc_carry, A* dc_t) {
    const A tc = gl_tanh(c);
    const A d_o = dh * tc;                            // eq. (17)
    *dzo = d_o * o * (A(1) - o);                      // sigma' = sigma (1 - sigma)
    // eq. (16), plus the path c(t) -> z_o(t) when the output gate has a peephole
    const A dc = dh * o * (A(1) - tc * tc) + dc_next + (*dzo) * po;
    *dc_t = dc;
    const A d_f = dc * c_prev;                        // eq. (18)
    const A d_i = dc * g;                             // eq. (19)
    const A d_g = dc * i;                             // eq. (20)
    *dzf = d_f * f * (A(1) - f);
    *dzi = d_i * i * (A(1) - i);
    *dzg = d_g * (A(1) - g * g);                      // tanh' = 1 - tanh^2
    // feeds eq. (16) at step t-1: through f(t), and through the i/f peepholes on c(t-1)
    *dc_carry = dc * f + (*dzi) * pi + (*dzf) * pf;
}

// Eqs. (16)-(20) for hidden unit j of one sample: reads the activated gates from the sample's gate row
// gb, writes the pre-activation gradients into its row db, returns the carry for step t-1 and
// delta-c(t) (for diagnostics). A row of padding (a sample already past its length) is the caller's
// business. Shared by lstm_cell_backward and the persistent kernels' backward phase.
template <typename T, typename A>
__host__ __device__ __forceinline__ void gl_cell_backward_row(const T* __restrict__ gb, T* __restrict__ db,
                                                             const T* __restrict__ peep, const long long H,
                                                             const long long j, const A c, const A c_prev,
                                                             const A dh, const A dc_next, A* carry, A* dc_t) {
    const long long ki = GL_GATE_I * H + j, kf = GL_GATE_F * H + j;
    const long long kg = GL_GATE_G * H + j, ko = GL_GATE_O * H + j;
    A pi = A(0), pf = A(0), po = A(0);
    if (peep != 0) {
        pi = gl_load(peep[j]); pf = gl_load(peep[H + j]); po = gl_load(peep[2 * H + j]);
    }
    A dzi, dzf, dzg, dzo;
    gl_cell_backward(gl_load(gb[ki]), gl_load(gb[kf]), gl_load(gb[kg]), gl_load(gb[ko]), c, c_prev, pi, pf,
                     po, dh, dc_next, &dzi, &dzf, &dzg, &dzo, carry, dc_t);
    db[ki] = gl_store<T>(dzi); db[kf] = gl_store<T>(dzf);
    db[kg] = gl_store<T>(dzg); db[ko] = gl_store<T>(dzo);
}
