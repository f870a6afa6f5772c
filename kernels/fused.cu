// The fused small ops of a decoder layer: the CUDA twins of kernels/src/fused.rs, with the
// same numerics (f32 arithmetic; the residual sum and the normalised value rounded to T as
// transformers holds them, every other result rounded once). Every row is computed by its
// own block or warp from its own data only (batch invariance); the sums of squares are
// reduced in a different order than the CPU's sequential sum, so results agree with the
// CPU twin to rounding, not bit for bit.
//
//   - wick_add_rms_norm_*: one block per token: sum = x + residual written to out[0], then
//     its RMSNorm times the weight to out[1] (out is [2, tokens, hidden]).
//   - wick_silu_mul_*: one thread per output element of [tokens, inner] from [gate | up].
//   - wick_qkv_rotary_*: one warp per (token, head) of the fused q/k/v row: query and key
//     heads optionally RMS-normalised per head, then rotated (rotate-half form); value heads
//     copied; each head written to its place in the flat [q | k | v] output.
#include "common.cuh"

namespace wick {

constexpr int FUSED_THREADS = 256;

/// Sum of `x` over the block (FUSED_THREADS threads); every thread gets the total.
__device__ __forceinline__ float block_sum_all(float x) {
    __shared__ float partial[FUSED_THREADS / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    x = warp_sum(x);
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < FUSED_THREADS / 32; ++w) total += partial[w];
    return total;
}

template <typename T>
__device__ void add_rms_norm(T* __restrict__ out, const T* __restrict__ x,
                             const T* __restrict__ r, const T* __restrict__ w,
                             uint32_t tokens, uint32_t hidden, float eps) {
    const uint32_t t = blockIdx.x;
    if (t >= tokens) return;
    const uint64_t row = static_cast<uint64_t>(t) * hidden;
    T* sum = out + row;
    T* normed = out + static_cast<uint64_t>(tokens) * hidden + row;
    float ss = 0.f;
    for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x) {
        const T s = from_f32<T>(to_f32(x[row + i]) + to_f32(r[row + i]));
        sum[i] = s;
        const float v = to_f32(s);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum_all(ss) / static_cast<float>(hidden) + eps);
    // Each thread reads back only the elements it wrote.
    for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float n = to_f32(from_f32<T>(to_f32(sum[i]) * inv));
        normed[i] = from_f32<T>(n * to_f32(w[i]));
    }
}

template <typename T>
__device__ void silu_mul(T* __restrict__ out, const T* __restrict__ gu, uint32_t tokens,
                         uint32_t inner) {
    const uint32_t t = blockIdx.x;
    const uint32_t j = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= tokens || j >= inner) return;
    const uint64_t row = static_cast<uint64_t>(t) * 2 * inner;
    const float g = to_f32(gu[row + j]);
    const float u = to_f32(gu[row + inner + j]);
    out[static_cast<uint64_t>(t) * inner + j] = from_f32<T>(g / (1.f + expf(-g)) * u);
}

/// Shapes of a q/k/v row; matches `QkvGeometry` in kernels/src/cuda/fused.rs.
struct QkvGeometry {
    uint32_t tokens;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    float eps;
    /// 1 when query and key heads are normalised (the weights are valid), else 0.
    uint32_t norm;
};

constexpr int QKV_WARPS = 4;

template <typename T>
__device__ void qkv_rotary(T* __restrict__ out, const T* __restrict__ qkv,
                           const T* __restrict__ cos, const T* __restrict__ sin,
                           const T* __restrict__ q_w, const T* __restrict__ k_w,
                           QkvGeometry g) {
    const uint32_t t = blockIdx.x;
    const uint32_t h = blockIdx.y * QKV_WARPS + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    const uint32_t nh = g.num_heads, nkv = g.num_kv_heads, d = g.head_dim, half = d / 2;
    const uint32_t total = nh + 2 * nkv;
    if (t >= g.tokens || h >= total) return;
    const uint64_t n = g.tokens;
    const T* src = qkv + (static_cast<uint64_t>(t) * total + h) * d;
    uint64_t at;
    if (h < nh) {
        at = (static_cast<uint64_t>(t) * nh + h) * d;
    } else if (h < nh + nkv) {
        at = n * nh * d + (static_cast<uint64_t>(t) * nkv + (h - nh)) * d;
    } else {
        at = n * (nh + nkv) * d + (static_cast<uint64_t>(t) * nkv + (h - nh - nkv)) * d;
    }
    T* dst = out + at;
    if (h >= nh + nkv) {
        for (uint32_t i = lane; i < d; i += 32) dst[i] = src[i];
        return;
    }
    // Uniform across the warp: h is per warp, so warp_sum sees all lanes.
    float inv = 1.f;
    const T* w = h < nh ? q_w : k_w;
    if (g.norm) {
        float ss = 0.f;
        for (uint32_t i = lane; i < d; i += 32) {
            const float v = to_f32(src[i]);
            ss += v * v;
        }
        inv = rsqrtf(warp_sum(ss) / static_cast<float>(d) + g.eps);
    }
    const T* c = cos + static_cast<uint64_t>(t) * half;
    const T* s = sin + static_cast<uint64_t>(t) * half;
    for (uint32_t i = lane; i < half; i += 32) {
        float x1 = to_f32(src[i]), x2 = to_f32(src[i + half]);
        if (g.norm) {
            x1 = to_f32(from_f32<T>(to_f32(from_f32<T>(x1 * inv)) * to_f32(w[i])));
            x2 = to_f32(from_f32<T>(to_f32(from_f32<T>(x2 * inv)) * to_f32(w[i + half])));
        }
        const float ci = to_f32(c[i]), si = to_f32(s[i]);
        dst[i] = from_f32<T>(x1 * ci - x2 * si);
        dst[i + half] = from_f32<T>(x1 * si + x2 * ci);
    }
}

}  // namespace wick

#define WICK_FUSED_KERNELS(NAME, T)                                                            \
    extern "C" __global__ void __launch_bounds__(wick::FUSED_THREADS)                          \
        wick_add_rms_norm_##NAME(T* out, const T* x, const T* r, const T* w, uint32_t tokens,  \
                                 uint32_t hidden, float eps) {                                 \
        wick::add_rms_norm<T>(out, x, r, w, tokens, hidden, eps);                              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(wick::FUSED_THREADS)                          \
        wick_silu_mul_##NAME(T* out, const T* gu, uint32_t tokens, uint32_t inner) {           \
        wick::silu_mul<T>(out, gu, tokens, inner);                                             \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(wick::QKV_WARPS * 32)                         \
        wick_qkv_rotary_##NAME(T* out, const T* qkv, const T* cos, const T* sin,               \
                               const T* q_w, const T* k_w, wick::QkvGeometry g) {              \
        wick::qkv_rotary<T>(out, qkv, cos, sin, q_w, k_w, g);                                  \
    }

WICK_FUSED_KERNELS(f32, float)
WICK_FUSED_KERNELS(f16, __half)
WICK_FUSED_KERNELS(bf16, __nv_bfloat16)
