// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3" (SC'11; the Random123 library), the one cuRAND, cuDNN and PyTorch use
// for dropout. A random word is a pure function of (key, counter): no state, no mask memory, and the
// same numbers in any launch shape, inside a CUDA graph, on the host build, and in NumPy
// (gpu_lstm/philox.py implements the same function; tests/test_philox.py checks both against the
// published known-answer vectors and against each other, bitwise).
//
// How gpu_lstm maps its masks onto it (the one definition; gpu_lstm/philox.py documents it too):
//   key     = (seed, stream)            stream = (layer, direction, purpose), see gpu_lstm/philox.py
//   counter = (e / 4 as 64 bits, call as 64 bits)   e = element index within the stream's array,
//                                                   call = the model's mask-drawing forward count
//   word    = output word e % 4 of that block (so 4 consecutive elements share one Philox call)
//   event   = (word >> 8) < thr         the top 24 bits as an integer in [0, 2^24): an event has
//                                       probability exactly thr / 2^24; all in integers, so the host,
//                                       the GPU and NumPy agree bitwise with no float rounding
#pragma once

#define GL_PHILOX_M0 0xD2511F53u
#define GL_PHILOX_M1 0xCD9E8D57u
#define GL_PHILOX_W0 0x9E3779B9u   // golden ratio
#define GL_PHILOX_W1 0xBB67AE85u   // sqrt(3) - 1

__host__ __device__ __forceinline__ void gl_mulhilo32(const unsigned int a, const unsigned int b,
                                                      unsigned int* hi, unsigned int* lo) {
    const unsigned long long p = (unsigned long long)a * (unsigned long long)b;
    *hi = (unsigned int)(p >> 32);
    *lo = (unsigned int)p;
}

// out = Philox4x32-10(ctr, key): ten rounds, the key bumped by the Weyl constants between rounds.
__host__ __device__ __forceinline__ void gl_philox4x32_10(const unsigned int ctr[4], const unsigned int key[2],
                                                          unsigned int out[4]) {
    unsigned int c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    unsigned int k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += GL_PHILOX_W0;
            k1 += GL_PHILOX_W1;
        }
        unsigned int hi0, lo0, hi1, lo1;
        gl_mulhilo32(GL_PHILOX_M0, c0, &hi0, &lo0);
        gl_mulhilo32(GL_PHILOX_M1, c2, &hi1, &lo1);
        const unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// The random word of element e of the stream `key` (seed in the low 32 bits, stream id in the high
// 32) in mask-drawing call `call`. e and call are non-negative.
__host__ __device__ __forceinline__ unsigned int gl_rand_word(const long long key, const long long call,
                                                              const long long e) {
    const unsigned long long blk = (unsigned long long)e >> 2, cl = (unsigned long long)call;
    const unsigned long long ky = (unsigned long long)key;
    const unsigned int ctr[4] = {(unsigned int)blk, (unsigned int)(blk >> 32), (unsigned int)cl,
                                 (unsigned int)(cl >> 32)};
    const unsigned int k[2] = {(unsigned int)ky, (unsigned int)(ky >> 32)};
    unsigned int out[4];
    gl_philox4x32_10(ctr, k, out);
    return out[e & 3];
}

// Bernoulli(thr / 2^24) for element e: true with probability exactly thr * 2^-24.
__host__ __device__ __forceinline__ bool gl_rand_event(const long long key, const long long call,
                                                       const long long e, const long long thr) {
    return (long long)(gl_rand_word(key, call, e) >> 8) < thr;
}
