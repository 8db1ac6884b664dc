// Fused optimizer steps, one launch per parameter (included by lstm_kernels.cu). Each replaces the
// dozen elementwise CuPy kernels of gpu_lstm/optim.py's array expressions with one pass, performing
// the SAME operations in the SAME order and precision as those expressions (every scalar arrives
// already rounded to T, as NumPy rounds a Python float against a T array), so the host build equals
// the NumPy optimizer bit for bit. On a GPU, FMA contraction may fuse a multiply-add: a difference of
// an ulp or so per step, which only a GPU run can show (tests/test_gpu.py bounds it).

// Adam / AdamW, elementwise:
//   l2 (flag)      : g' = g + wd * p                       (Adam with L2 weight decay)
//   decay != 1     : p  = p * decay, decay = 1 - lr wd     (AdamW, decoupled; before the moments)
//   m = m b1 + (1 - b1) g';  v = v b2 + (1 - b2) g'^2;  p = p - (lr / c1) m / (sqrt(v / c2) + eps)
template <typename T>
__global__ void adam_step(const long long n, T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                          T* __restrict__ v, const T lr_c1, const T b1, const T omb1, const T b2, const T omb2,
                          const T c2, const T eps, const T wd, const int l2, const T decay, const int decoupled) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        A pk = gl_load(p[k]);
        A gk = gl_load(g[k]);
        if (l2) gk = gk + gl_load(wd) * pk;
        if (decoupled) pk = pk * gl_load(decay);
        A mk = gl_load(m[k]) * gl_load(b1);
        mk = mk + gl_load(omb1) * gk;
        A vk = gl_load(v[k]) * gl_load(b2);
        vk = vk + gl_load(omb2) * (gk * gk);
        pk = pk - (gl_load(lr_c1) * mk) / (gl_sqrt(vk / gl_load(c2)) + gl_load(eps));
        m[k] = gl_store<T>(mk);
        v[k] = gl_store<T>(vk);
        p[k] = gl_store<T>(pk);
    }
}

// SGD (torch.optim.SGD, no dampening): g' = g (+ wd p); with momentum v = v mu + g', g' = v;
// p = p - lr g'. vel is null without momentum.
template <typename T>
__global__ void sgd_step(const long long n, T* __restrict__ p, const T* __restrict__ g, T* __restrict__ vel,
                         const T lr, const T mu, const T wd, const int l2) {
    typedef typename gl_acc<T>::type A;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        const A pk = gl_load(p[k]);
        A gk = gl_load(g[k]);
        if (l2) gk = gk + gl_load(wd) * pk;
        if (vel != 0) {
            A vk = gl_load(vel[k]) * gl_load(mu);
            vk = vk + gk;
            vel[k] = gl_store<T>(vk);
            gk = vk;
        }
        p[k] = gl_store<T>(pk - gl_load(lr) * gk);
    }
}
