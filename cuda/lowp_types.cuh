// 16-bit storage types for the low-precision models (included by lstm_math.cuh).
//
// gl_bf16 (bfloat16: 1 sign, 8 exponent, 7 mantissa bits) and gl_half (IEEE binary16: 1, 5, 10) are
// STORAGE types only: every kernel loads them into float (gl_acc<T>::type = float), does all of its
// maths in float, and rounds once when it stores (gl_store). The conversions below are written with
// integer operations only, so they are bit-exact and identical on the GPU (NVRTC, nvcc) and in the
// host build (g++ through host_shim.h), with no dependence on FTZ, FMA contraction or rounding mode:
//   float -> 16 bit: round to nearest, ties to even (what ml_dtypes.bfloat16 and numpy.float16 do,
//                    and what __float2bfloat16_rn / __float2half_rn do on the GPU); overflow gives
//                    +-inf, NaN stays NaN (quiet);
//   16 bit -> float: exact.
// They are our own, not cuda_bf16.h / cuda_fp16.h: NVRTC from the nvidia-cuda-nvrtc wheel ships
// neither header, and the host build could not use them. The layout (one 16-bit word) is that of
// __nv_bfloat16 / __half, ml_dtypes.bfloat16 and numpy.float16, so buffers are interchangeable.
#pragma once

struct gl_bf16 { unsigned short bits; };
struct gl_half { unsigned short bits; };

__host__ __device__ __forceinline__ unsigned int gl_float_bits(const float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    unsigned int u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
#endif
}

__host__ __device__ __forceinline__ float gl_bits_float(const unsigned int u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
#endif
}

__host__ __device__ __forceinline__ float gl_bf16_to_float(const gl_bf16 v) {
    return gl_bits_float((unsigned int)v.bits << 16);
}

__host__ __device__ __forceinline__ gl_bf16 gl_float_to_bf16(const float f) {
    const unsigned int u = gl_float_bits(f);
    gl_bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {           // NaN: keep the sign, make it quiet
        r.bits = (unsigned short)((u >> 16) | 0x0040u);
        return r;
    }
    // ties to even: add 0x7fff plus the lowest kept bit, then truncate (a carry into the exponent is
    // the correct rounding, and rounds the largest finite values up to inf)
    r.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return r;
}

__host__ __device__ __forceinline__ float gl_half_to_float(const gl_half v) {
    const unsigned int h = v.bits;
    const unsigned int sign = (h & 0x8000u) << 16;
    const unsigned int e = (h >> 10) & 0x1fu;
    const unsigned int m = h & 0x3ffu;
    if (e == 0x1fu) return gl_bits_float(sign | 0x7f800000u | (m << 13));           // inf, NaN
    if (e == 0) {                                                                    // zero, subnormal
        const float mag = (float)m * 5.9604644775390625e-8f;                       // m 2^-24, exact
        return sign ? -mag : mag;
    }
    return gl_bits_float(sign | ((e + 112u) << 23) | (m << 13));                    // normal
}

__host__ __device__ __forceinline__ gl_half gl_float_to_half(const float f) {
    const unsigned int u = gl_float_bits(f);
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int a = u & 0x7fffffffu;
    unsigned int h;
    if (a >= 0x7f800000u) {
        h = a > 0x7f800000u ? 0x7e00u : 0x7c00u;                   // NaN (quiet) or inf
    } else if (a >= 0x477ff000u) {
        h = 0x7c00u;                                                // >= 65520 rounds to inf
    } else if (a >= 0x38800000u) {                                  // normal half, >= 2^-14
        const unsigned int mant = a & 0x7fffffu;
        h = ((((a >> 23) - 112u) << 10) | (mant >> 13));
        const unsigned int rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1u;   // carry into the exponent is right
    } else if (a <= 0x33000000u) {
        h = 0;                                                      // <= 2^-25 (the tie goes to even 0)
    } else {                                                        // subnormal half: units of 2^-24
        const unsigned int shift = 126u - (a >> 23);                // 14..24
        const unsigned int mant = (a & 0x7fffffu) | 0x800000u;
        h = mant >> shift;
        const unsigned int rem = mant & ((1u << shift) - 1u);
        const unsigned int halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u))) h += 1u;
    }
    gl_half r;
    r.bits = (unsigned short)(sign | h);
    return r;
}

// Storage -> arithmetic type and back (see gl_acc / gl_load / gl_store in lstm_math.cuh).
template <> struct gl_acc<gl_bf16> { typedef float type; };
template <> struct gl_acc<gl_half> { typedef float type; };
__host__ __device__ __forceinline__ float gl_load(const gl_bf16 v) { return gl_bf16_to_float(v); }
__host__ __device__ __forceinline__ float gl_load(const gl_half v) { return gl_half_to_float(v); }
template <> __host__ __device__ __forceinline__ gl_bf16 gl_store<gl_bf16>(const float v) { return gl_float_to_bf16(v); }
template <> __host__ __device__ __forceinline__ gl_half gl_store<gl_half>(const float v) { return gl_float_to_half(v); }
