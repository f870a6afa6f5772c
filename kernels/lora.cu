// Grouped multi-adapter LoRA (BGMV style): the CUDA twin of kernels/src/lora_cpu.rs.
//
// x is [num_tokens, in_dim], y and out [num_tokens, out_dim], the adapter stacks
// a [num_slots, max_rank, in_dim] and b [num_slots, out_dim, max_rank], all of one element
// type T (f32, f16, bf16), arithmetic in f32. `slots` is u32 [num_tokens]: token t uses
// slot slots[t] (u32 max: none, as is any slot past num_slots); `ranks` is u32 [num_slots]:
// the rank of each slot's adapter (0: empty), of which min(rank, max_rank) rows are read
// (a projection whose stacks hold less than an adapter's rank is one it does not target).
// The host (kernels/src/lora.rs) checked the tables' sizes; no entry, however bad, can make
// the kernels read or write out of bounds.
//
// Two kernels, one after the other on the stream:
//   - wick_lora_shrink_*: h[t, k] = x[t, :] . a[slot, k, :] for k < rank, one warp per
//     (token, k), grid (num_tokens, ceil(max_rank / 4)). h is f32 [num_tokens, max_rank];
//     entries at k >= rank are neither written nor read.
//   - wick_lora_expand_*: out[t, o] = y[t, o] + h[t, :rank] . b[slot, o, :rank], one thread
//     per (token, o), grid (num_tokens, ceil(out_dim / 128)); every element of out is
//     written, a token without adapter gets its row of y copied bit for bit.
// Each token's result depends only on that token's row and its adapter (batch invariance).
#include "common.cuh"

namespace wick {

constexpr int LORA_THREADS = 128;
constexpr int LORA_WARPS = LORA_THREADS / 32;

/// Shapes of one application; matches `Geometry` in kernels/src/cuda/lora.rs.
struct LoraGeometry {
    uint32_t num_tokens;
    uint32_t in_dim;
    uint32_t out_dim;
    uint32_t num_slots;
    uint32_t max_rank;
};

/// Token t's adapter as (slot, rows to read); rank 0 when it has none.
__device__ __forceinline__ uint2 adapter_of(const uint32_t* slots, const uint32_t* ranks,
                                            uint32_t t, const LoraGeometry& g) {
    const uint32_t slot = slots[t];
    if (slot >= g.num_slots) return make_uint2(0, 0);
    return make_uint2(slot, min(ranks[slot], g.max_rank));
}

template <typename T>
__device__ void lora_shrink(float* __restrict__ h, const T* __restrict__ x,
                            const T* __restrict__ a, const uint32_t* __restrict__ slots,
                            const uint32_t* __restrict__ ranks, LoraGeometry g) {
    const uint32_t t = blockIdx.x;
    const uint32_t k = blockIdx.y * LORA_WARPS + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (t >= g.num_tokens) return;
    const uint2 ad = adapter_of(slots, ranks, t, g);
    // Uniform across the warp (t per block, k per warp), so warp_sum below sees all lanes.
    if (k >= ad.y) return;
    const T* xr = x + static_cast<uint64_t>(t) * g.in_dim;
    const T* ar = a + (static_cast<uint64_t>(ad.x) * g.max_rank + k) * g.in_dim;
    float acc = 0.f;
    for (uint32_t i = lane; i < g.in_dim; i += 32) acc = fmaf(to_f32(xr[i]), to_f32(ar[i]), acc);
    acc = warp_sum(acc);
    if (lane == 0) h[static_cast<uint64_t>(t) * g.max_rank + k] = acc;
}

template <typename T>
__device__ void lora_expand(T* __restrict__ out, const T* __restrict__ y,
                            const float* __restrict__ h, const T* __restrict__ b,
                            const uint32_t* __restrict__ slots,
                            const uint32_t* __restrict__ ranks, LoraGeometry g) {
    const uint32_t t = blockIdx.x;
    const uint32_t o = blockIdx.y * LORA_THREADS + threadIdx.x;
    if (t >= g.num_tokens || o >= g.out_dim) return;
    const uint64_t at = static_cast<uint64_t>(t) * g.out_dim + o;
    const uint2 ad = adapter_of(slots, ranks, t, g);
    if (ad.y == 0) {
        out[at] = y[at];
        return;
    }
    const float* ht = h + static_cast<uint64_t>(t) * g.max_rank;
    const T* br = b + (static_cast<uint64_t>(ad.x) * g.out_dim + o) * g.max_rank;
    float acc = 0.f;
    for (uint32_t k = 0; k < ad.y; ++k) acc = fmaf(ht[k], to_f32(br[k]), acc);
    out[at] = from_f32<T>(to_f32(y[at]) + acc);
}

}  // namespace wick

#define WICK_LORA_KERNELS(NAME, T)                                                            \
    extern "C" __global__ void __launch_bounds__(wick::LORA_THREADS)                          \
        wick_lora_shrink_##NAME(float* h, const T* x, const T* a, const uint32_t* slots,      \
                                const uint32_t* ranks, wick::LoraGeometry g) {                \
        wick::lora_shrink<T>(h, x, a, slots, ranks, g);                                       \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(wick::LORA_THREADS)                          \
        wick_lora_expand_##NAME(T* out, const T* y, const float* h, const T* b,               \
                                const uint32_t* slots, const uint32_t* ranks,                 \
                                wick::LoraGeometry g) {                                       \
        wick::lora_expand<T>(out, y, h, b, slots, ranks, g);                                  \
    }

WICK_LORA_KERNELS(f32, float)
WICK_LORA_KERNELS(f16, __half)
WICK_LORA_KERNELS(bf16, __nv_bfloat16)
