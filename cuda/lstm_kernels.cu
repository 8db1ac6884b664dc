// Thin grid-stride kernels over lstm_math.cuh. Grid-stride loops make the result independent of the
// launch shape, which is what lets host_shim.h run each kernel on the CPU as a single "thread".
// No shared memory, no barriers, no atomics: every output element is written by exactly one thread in
// a fixed order, so repeated runs are bitwise identical.
//
// Layout (row-major, time-major, see gpu_lstm/lstm.py):
//   gates : (B, 4H) slice of step t; gate k occupies columns [k H, (k+1) H), k from GL_GATE_*
//   c, h  : (B, H)
#include "lstm_math.cuh"

// One time step of eqs. (1)-(6). `gates` holds W x(t) + R h(t-1) on entry (bias not yet added) and
// the activated gates i, f, g, o on exit: they are what the backward needs. `bias` may be null.
template <typename T>
__global__ void lstm_cell_forward(const long long B, const long long H, T* __restrict__ gates,
                                  const T* __restrict__ bias, const T* __restrict__ c_prev,
                                  T* __restrict__ c, T* __restrict__ h) {
    typedef typename gl_acc<T>::type A;
    const long long n = B * H;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const long long b = k / H;
        const long long j = k - b * H;
        T* gb = gates + b * 4 * H;
        const long long ki = GL_GATE_I * H + j, kf = GL_GATE_F * H + j;
        const long long kg = GL_GATE_G * H + j, ko = GL_GATE_O * H + j;
        A zi = gl_load(gb[ki]), zf = gl_load(gb[kf]), zg = gl_load(gb[kg]), zo = gl_load(gb[ko]);
        if (bias != 0) {
            zi += gl_load(bias[ki]); zf += gl_load(bias[kf]);
            zg += gl_load(bias[kg]); zo += gl_load(bias[ko]);
        }
        A i, f, g, o, cc, hh;
        gl_cell_forward(zi, zf, zg, zo, gl_load(c_prev[k]), &i, &f, &g, &o, &cc, &hh);
        gb[ki] = gl_store<T>(i); gb[kf] = gl_store<T>(f); gb[kg] = gl_store<T>(g); gb[ko] = gl_store<T>(o);
        c[k] = gl_store<T>(cc);
        h[k] = gl_store<T>(hh);
    }
}

// One time step of eqs. (16)-(20) times the activation derivatives.
//   gates    : activated gates of step t (from lstm_cell_forward), (B, 4H)
//   c, c_prev: c(t), c(t-1), (B, H)
//   dh       : delta-h(t), (B, H)
//   dc_carry : in: delta-c(t+1) f(t+1); out: delta-c(t) f(t), (B, H), updated in place
//   dgates   : out: pre-activation gradients, (B, 4H)
template <typename T>
__global__ void lstm_cell_backward(const long long B, const long long H, const T* __restrict__ gates,
                                   const T* __restrict__ c, const T* __restrict__ c_prev,
                                   const T* __restrict__ dh, T* __restrict__ dc_carry,
                                   T* __restrict__ dgates) {
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
        A dzi, dzf, dzg, dzo, carry;
        gl_cell_backward(gl_load(gb[ki]), gl_load(gb[kf]), gl_load(gb[kg]), gl_load(gb[ko]),
                         gl_load(c[k]), gl_load(c_prev[k]), gl_load(dh[k]), gl_load(dc_carry[k]),
                         &dzi, &dzf, &dzg, &dzo, &carry);
        db[ki] = gl_store<T>(dzi); db[kf] = gl_store<T>(dzf);
        db[kg] = gl_store<T>(dzg); db[ko] = gl_store<T>(dzo);
        dc_carry[k] = gl_store<T>(carry);
    }
}

// out[j] += sum_r x[r, j] for a (rows, cols) row-major x: eq. (25), db = sum over t and samples.
// One thread per column summing rows in a fixed order: deterministic (no atomics), and adjacent
// threads read adjacent addresses. A tree reduction would be faster for huge T*B; see docs.
template <typename T>
__global__ void sum_rows(const long long rows, const long long cols, const T* __restrict__ x,
                         T* __restrict__ out) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += stride) {
        A s = A(0);
        for (long long r = 0; r < rows; ++r) {
            s += gl_load(x[r * cols + j]);
        }
        out[j] = gl_store<T>(gl_load(out[j]) + s);
    }
}

// Softmax cross-entropy from logits, one thread per row (rows = time steps x samples), fused:
// row max, log-sum-exp, the row's loss and its gradient (softmax - onehot) * inv_count in one pass
// over the V logits. Stable for any logit magnitude: exp is only taken of (z - max) <= 0.
//   logits   : (rows, V);  targets : (rows,) int64, rows equal to ignore_index contribute nothing
//   inv_count: device scalar 1 / (number of counted rows), so no host round trip is needed
//   loss_rows: (rows,) out, unscaled loss of each row (0 for ignored rows)
//   grad     : (rows, V) out
template <typename T>
__global__ void softmax_xent(const long long rows, const long long V, const T* __restrict__ logits,
                             const long long* __restrict__ targets, const long long ignore_index,
                             const T* __restrict__ inv_count, T* __restrict__ loss_rows,
                             T* __restrict__ grad) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    const A scale = gl_load(inv_count[0]);
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const T* z = logits + r * V;
        T* gr = grad + r * V;
        const long long t = targets[r];
        if (t == ignore_index) {
            for (long long j = 0; j < V; ++j) gr[j] = gl_store<T>(A(0));
            loss_rows[r] = gl_store<T>(A(0));
            continue;
        }
        A m = gl_load(z[0]);
        for (long long j = 1; j < V; ++j) { const A v = gl_load(z[j]); m = v > m ? v : m; }
        A s = A(0);
        for (long long j = 0; j < V; ++j) s += gl_exp(gl_load(z[j]) - m);
        const A inv_s = A(1) / s;
        for (long long j = 0; j < V; ++j) {
            const A p = gl_exp(gl_load(z[j]) - m) * inv_s;
            gr[j] = gl_store<T>((p - (j == t ? A(1) : A(0))) * scale);
        }
        // -log softmax(z)[t], with (z_t - max) formed first: adding max to log(s) before
        // subtracting z_t would cancel catastrophically for large logits.
        loss_rows[r] = gl_store<T>(gl_log(s) - (gl_load(z[t]) - m));
    }
}
