// Gradient clipping by global norm on the device (included by lstm_kernels.cu), replacing the half a
// dozen CuPy kernels per parameter of gpu_lstm/optim.py's array expressions:
//
//   grad_sumsq_partial  one launch per parameter: lane c (c < lanes) sums g[k]^2 for k = c, c + lanes,
//                       c + 2 lanes, ... sequentially from 0, in double (adjacent lanes read adjacent
//                       elements: coalesced), into partial[c]
//   grad_norm_finish    one launch for all parameters: parameter i's lanes partial[off[i] .. off[i+1])
//                       are cut into GL_NORM_LANES interleaved groups (group l sums partials l,
//                       l + GL_NORM_LANES, ... sequentially from 0), then the groups are added by a fixed
//                       tree (s[l] += s[l + o] for o = GL_NORM_LANES/2, ..., 1) into slots[i]
//   grad_clip_coef      one thread: total = ((0 + slots[0]) + slots[1]) + ... in parameter order (what
//                       optim.global_grad_norm does), out[0] = sqrt(total) (the norm),
//                       out[1] = minimum(1, max_norm / (norm + eps)) with NumPy's NaN propagation
//   grad_scale          one launch per parameter: g = g * T(out[1]), the coefficient read from device
//                       memory (no host synchronisation anywhere)
//
// Every addition happens in an order fixed by the parameter sizes alone (lanes comes from
// gpu_lstm/backend/reduce.py: norm_lanes(n); GL_NORM_LANES is a constant, not the block size), so the
// norm is bitwise reproducible, and the host build (one thread, blockDim = 1) computes exactly what a
// GPU computes, save FMA contraction of s + x * x for float64 gradients (for float32 gradients x * x
// is exact in double, so a fused multiply-add rounds the same). The sums of squares are in double for
// every storage type, as optim.global_grad_norm sums in float64; NumPy's own sum is pairwise, so it
// agrees with this order to rounding, not bitwise (tests/test_host_kernels.py derives the bound).
#ifndef GL_NORM_LANES
#define GL_NORM_LANES 256
#endif

template <typename T>
__global__ void grad_sumsq_partial(const long long n, const long long lanes, const T* __restrict__ g,
                                   double* __restrict__ partial) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < lanes; c += stride) {
        double s = 0.0;
        for (long long k = c; k < n; k += lanes) {
            const double x = (double)gl_load(g[k]);
            s = s + x * x;
        }
        partial[c] = s;
    }
}

// Blocks stride over parameters (the loop bound is uniform per block, so the barriers are safe); the
// threads of a block stride over the GL_NORM_LANES groups. T is unused (the partials are double): the
// kernel is a template only so that every kernel of the module is instantiated the same way.
template <typename T>
__global__ void grad_norm_finish(const long long nparams, const long long* __restrict__ offsets,
                                 const double* __restrict__ partial, double* __restrict__ slots) {
    __shared__ double sm[GL_NORM_LANES];
    const long long tid = threadIdx.x, nt = blockDim.x;
    for (long long i = blockIdx.x; i < nparams; i += gridDim.x) {
        const long long a = offsets[i], b = offsets[i + 1];
        for (long long l = tid; l < GL_NORM_LANES; l += nt) {
            double s = 0.0;
            for (long long c = a + l; c < b; c += GL_NORM_LANES) s = s + partial[c];
            sm[l] = s;
        }
        __syncthreads();
        for (long long o = GL_NORM_LANES / 2; o > 0; o /= 2) {
            for (long long l = tid; l < o; l += nt) sm[l] = sm[l] + sm[l + o];
            __syncthreads();
        }
        if (tid == 0) slots[i] = sm[0];
        __syncthreads();   // sm is reused for the next parameter
    }
}

template <typename T>
__global__ void grad_clip_coef(const long long nparams, const double* __restrict__ slots, const double max_norm,
                               const double eps, double* __restrict__ out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double total = 0.0;
    for (long long i = 0; i < nparams; ++i) total = total + slots[i];
    const double norm = sqrt(total);
    const double r = max_norm / (norm + eps);
    out[0] = norm;
    out[1] = (r != r) ? r : (r < 1.0 ? r : 1.0);   // numpy.minimum(1.0, r): NaN propagates
}

template <typename T>
__global__ void grad_scale(const long long n, T* __restrict__ g, const double* __restrict__ coef) {
    typedef typename gl_acc<T>::type A;
    const A s = gl_load(gl_store<T>((A)coef[0]));   // scale.astype(g.dtype): rounded once, to T
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride)
        g[k] = gl_store<T>(gl_load(g[k]) * gl_load(s));
}

// Not done here: a multi-tensor Adam/SGD (every parameter in one launch through a device table of
// pointers). The table would have to be uploaded (a host-to-device copy, outside any graph capture)
// whenever the parameter or state arrays change (load_state_dict, replaced parameters), and the
// kernel would need a block-to-tensor map; an LSTM has 3-5 parameters per layer, so the per-parameter
// fused steps of optim_kernels.cuh cost a few launches per layer per step.
