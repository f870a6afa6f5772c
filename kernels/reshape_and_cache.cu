// reshape_and_cache: for half h (0: keys, 1: values), row t of rows[h]
// ([num_tokens, num_kv_heads * head_dim]) is copied to slot slot_mapping[t] of cache[h]
// ([num_slots, num_kv_heads * head_dim] viewed flat). One launch writes both halves: one
// thread block per (token, half). The element type does not matter for a copy, so there is
// one kernel per element width. Slot u32::MAX (-1 on the host: padding) is skipped; the host
// has rejected every other slot outside 0..num_slots, and the kernel skips those too rather
// than write out of bounds. Rows are copied 16 bytes at a time when sizes and addresses allow.
#include <cstdint>

template <typename T>
__device__ void copy_rows(T* __restrict__ cache, const T* __restrict__ rows,
                          const uint32_t* __restrict__ slot_mapping, uint32_t num_tokens,
                          uint32_t row_len, uint64_t num_slots) {
    const uint32_t t = blockIdx.x;
    const uint64_t half = blockIdx.y;
    if (t >= num_tokens || half > 1) return;
    const uint32_t slot = slot_mapping[t];
    if (static_cast<uint64_t>(slot) >= num_slots) return;
    T* dst = cache + (half * num_slots + static_cast<uint64_t>(slot)) * row_len;
    const T* src = rows + (half * num_tokens + t) * static_cast<uint64_t>(row_len);
    const uint64_t bytes = static_cast<uint64_t>(row_len) * sizeof(T);
    const bool wide = bytes % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(src) % 16 == 0;
    if (wide) {
        uint4* d = reinterpret_cast<uint4*>(dst);
        const uint4* s = reinterpret_cast<const uint4*>(src);
        for (uint64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) d[i] = s[i];
    } else {
        for (uint32_t i = threadIdx.x; i < row_len; i += blockDim.x) dst[i] = src[i];
    }
}

// f16 and bf16 caches.
extern "C" __global__ void wick_reshape_and_cache_b16(uint16_t* cache, const uint16_t* rows,
                                                      const uint32_t* slot_mapping,
                                                      uint32_t num_tokens, uint32_t row_len,
                                                      uint64_t num_slots) {
    copy_rows(cache, rows, slot_mapping, num_tokens, row_len, num_slots);
}

// f32 caches.
extern "C" __global__ void wick_reshape_and_cache_b32(uint32_t* cache, const uint32_t* rows,
                                                      const uint32_t* slot_mapping,
                                                      uint32_t num_tokens, uint32_t row_len,
                                                      uint64_t num_slots) {
    copy_rows(cache, rows, slot_mapping, num_tokens, row_len, num_slots);
}
