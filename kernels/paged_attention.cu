// Paged attention over a ragged batch: the CUDA twin of kernels/src/attention_cpu.rs.
//
// Caches are [num_blocks, block_size, num_kv_heads, head_dim]; a key at position `pos` of
// sequence `seq` lives in slot block_tables[seq * table_width + pos / block_size] *
// block_size + pos % block_size. q and out are [num_tokens, num_heads, head_dim]. Query head
// h reads kv head h / (num_heads / num_kv_heads).
//
// The host (kernels/src/cuda/attention.rs) validates the metadata and hands the kernels
// work lists, so no kernel reads outside what the host checked:
//   - RowItem {token, seq, key_start, key_end}: one query row attending to keys
//     [max(key_start, first_key(key_end - 1)), key_end): causal; the sliding window applied
//     by the host (per-op lists) or by the kernel (a step's lists made once for every layer,
//     key_start 0).
//   - TileItem {q_row0, seq, rows, pos0}: `rows` (<= TILE_Q) consecutive query rows of one
//     sequence, the first at position pos0; row r sees keys [first_key(pos0 + r), pos0 + r].
//
// Kernels:
//   - wick_pa_rows_*: one query row per block (decode, short chunks, every f32 row, head
//     dims the tile kernel lacks). Keys are split into partitions of PARTITION keys over
//     grid.z (split-K, for long contexts); each block scores its partition into shared
//     memory, takes the softmax there, and writes either the final row (one partition) or
//     a partial result with its max and sum for wick_pa_reduce_*. A block serves up to
//     HEADS_PER_BLOCK query heads of one kv head, so each key is loaded once per group.
//   - wick_pa_tile_*_hd*: FlashAttention-2 style prefill / chunked prefill for f16 and bf16:
//     a block is TILE_Q query rows of one head (16 per warp), keys stream through shared
//     memory TILE_K at a time, S = Q K^T and O += P V run on tensor cores (mma.sync
//     m16n8k16, f32 accumulation) and softmax is online, in registers.
// Softmax runs in the log2 domain (scores pre-multiplied by log2(e)) with exp2f.
#include "common.cuh"

#include <math_constants.h>

namespace wick {

constexpr int ROWS_THREADS = 128;
constexpr int ROWS_WARPS = ROWS_THREADS / 32;
constexpr uint32_t PARTITION = 256;
constexpr uint32_t HEADS_PER_BLOCK = 8;
constexpr uint32_t MAX_HEAD_DIM = 256;
constexpr int TILE_Q = 64;
constexpr int TILE_K = 64;
constexpr int TILE_THREADS = 128;
constexpr float LOG2E = 1.4426950408889634f;
static_assert(TILE_Q == TILE_THREADS / 32 * 16, "a tile is 16 query rows per warp");

/// Shapes and scalars every attention kernel takes.
struct Geometry {
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t block_size;
    uint32_t table_width;
    float scale;      // softmax scale (natural domain)
    uint32_t window;  // sliding window, 0 = none
};

__device__ __forceinline__ uint64_t slot_of(const uint32_t* table, uint32_t pos,
                                            uint32_t block_size) {
    return static_cast<uint64_t>(table[pos / block_size]) * block_size + pos % block_size;
}

/// First key visible from position `pos`.
__device__ __forceinline__ uint32_t first_key(uint32_t pos, uint32_t window) {
    return (window == 0 || pos + 1 <= window) ? 0 : pos + 1 - window;
}

/// The first key a row item attends to: its own start, or later where the window says so
/// (items made once per step for every layer carry start 0 and leave the window to here).
__device__ __forceinline__ uint32_t item_key_start(uint4 item, uint32_t window) {
    return max(item.z, first_key(item.w - 1, window));
}

template <typename T>
__device__ void rows_attention(T* __restrict__ out, float* __restrict__ part_out,
                               float* __restrict__ part_ml, const T* __restrict__ q,
                               const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                               const uint32_t* __restrict__ block_tables,
                               const uint4* __restrict__ items, uint32_t max_splits,
                               Geometry geo) {
    __shared__ float q_s[HEADS_PER_BLOCK][MAX_HEAD_DIM];
    __shared__ float p_s[HEADS_PER_BLOCK][PARTITION];
    __shared__ uint64_t slot_s[PARTITION];
    __shared__ float m_s[HEADS_PER_BLOCK];
    __shared__ float l_s[HEADS_PER_BLOCK];

    const uint4 item = items[blockIdx.x];
    const uint32_t token = item.x, key_end = item.w;
    const uint32_t key_start = item_key_start(item, geo.window);
    const uint32_t splits = (key_end - key_start + PARTITION - 1) / PARTITION;
    const uint32_t chunk = key_start + blockIdx.z * PARTITION;
    if (chunk >= key_end) return;  // this row has fewer partitions than the grid
    const uint32_t n = min(PARTITION, key_end - chunk);

    const uint32_t hd = geo.head_dim;
    const uint32_t group = geo.num_heads / geo.num_kv_heads;
    const uint32_t subgroups = (group + HEADS_PER_BLOCK - 1) / HEADS_PER_BLOCK;
    const uint32_t kv_head = blockIdx.y / subgroups;
    const uint32_t head0 = kv_head * group + (blockIdx.y % subgroups) * HEADS_PER_BLOCK;
    const uint32_t nh = min(HEADS_PER_BLOCK, kv_head * group + group - head0);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const float scale = geo.scale * LOG2E;

    for (uint32_t i = threadIdx.x; i < nh * hd; i += ROWS_THREADS) {
        const uint32_t h = i / hd, d = i % hd;
        q_s[h][d] = to_f32(q[(static_cast<uint64_t>(token) * geo.num_heads + head0 + h) * hd + d]) * scale;
    }
    const uint32_t* table = block_tables + static_cast<uint64_t>(item.y) * geo.table_width;
    const uint64_t row_stride = static_cast<uint64_t>(geo.num_kv_heads) * hd;
    const uint64_t head_off = static_cast<uint64_t>(kv_head) * hd;
    for (uint32_t j = threadIdx.x; j < n; j += ROWS_THREADS) {
        slot_s[j] = slot_of(table, chunk + j, geo.block_size) * row_stride + head_off;
    }
    __syncthreads();

    // Scores: a warp per key, lanes across head_dim, every head of the group.
    for (uint32_t j = warp; j < n; j += ROWS_WARPS) {
        const T* key = k_cache + slot_s[j];
        float kr[MAX_HEAD_DIM / 32];
#pragma unroll
        for (uint32_t c = 0; c < MAX_HEAD_DIM / 32; ++c) {
            const uint32_t d = lane + 32 * c;
            kr[c] = d < hd ? to_f32(key[d]) : 0.f;
        }
        for (uint32_t h = 0; h < nh; ++h) {
            float dot = 0.f;
#pragma unroll
            for (uint32_t c = 0; c < MAX_HEAD_DIM / 32; ++c) {
                const uint32_t d = lane + 32 * c;
                if (d < hd) dot = fmaf(q_s[h][d], kr[c], dot);
            }
            dot = warp_sum(dot);
            if (lane == 0) p_s[h][j] = dot;
        }
    }
    __syncthreads();

    // Softmax of the partition, per head (every key here is visible: n >= 1).
    for (uint32_t h = warp; h < nh; h += ROWS_WARPS) {
        float m = -CUDART_INF_F;
        for (uint32_t j = lane; j < n; j += 32) m = fmaxf(m, p_s[h][j]);
        m = warp_max(m);
        float l = 0.f;
        for (uint32_t j = lane; j < n; j += 32) {
            const float p = exp2f(p_s[h][j] - m);
            p_s[h][j] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            m_s[h] = m;
            l_s[h] = l;
        }
    }
    __syncthreads();

    // P V: a thread per (head, dim); consecutive threads read consecutive dims of a value.
    for (uint32_t i = threadIdx.x; i < nh * hd; i += ROWS_THREADS) {
        const uint32_t h = i / hd, d = i % hd;
        float acc = 0.f;
        for (uint32_t j = 0; j < n; ++j) acc = fmaf(p_s[h][j], to_f32(v_cache[slot_s[j] + d]), acc);
        acc /= l_s[h];
        const uint64_t head = head0 + h;
        if (splits == 1) {
            out[(static_cast<uint64_t>(token) * geo.num_heads + head) * hd + d] = from_f32<T>(acc);
        } else {
            const uint64_t at = (static_cast<uint64_t>(blockIdx.x) * geo.num_heads + head) * max_splits + blockIdx.z;
            part_out[at * hd + d] = acc;
            if (d == 0) {
                part_ml[2 * at] = m_s[h];
                part_ml[2 * at + 1] = l_s[h];
            }
        }
    }
}

/// Combines the partitions of rows that had more than one: grid (items, heads).
template <typename T>
__device__ void reduce_partitions(T* __restrict__ out, const float* __restrict__ part_out,
                                  const float* __restrict__ part_ml,
                                  const uint4* __restrict__ items, uint32_t max_splits,
                                  uint32_t num_heads, uint32_t head_dim, uint32_t window) {
    const uint4 item = items[blockIdx.x];
    const uint32_t splits = (item.w - item_key_start(item, window) + PARTITION - 1) / PARTITION;
    if (splits <= 1) return;
    const uint64_t base = (static_cast<uint64_t>(blockIdx.x) * num_heads + blockIdx.y) * max_splits;
    float m = -CUDART_INF_F;
    for (uint32_t z = 0; z < splits; ++z) m = fmaxf(m, part_ml[2 * (base + z)]);
    float denom = 0.f;
    for (uint32_t z = 0; z < splits; ++z) denom += part_ml[2 * (base + z) + 1] * exp2f(part_ml[2 * (base + z)] - m);
    for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (uint32_t z = 0; z < splits; ++z) {
            const float w = part_ml[2 * (base + z) + 1] * exp2f(part_ml[2 * (base + z)] - m);
            acc = fmaf(w, part_out[(base + z) * head_dim + d], acc);
        }
        out[(static_cast<uint64_t>(item.x) * num_heads + blockIdx.y) * head_dim + d] = from_f32<T>(acc / denom);
    }
}

/// Prefill tile: grid (tiles, num_heads), TILE_THREADS threads. Needs 16-byte aligned q,
/// caches and head_dim * sizeof(T) a multiple of 16 (the host checks).
template <typename T, int HD>
__device__ void tile_attention(T* __restrict__ out, const T* __restrict__ q,
                               const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                               const uint32_t* __restrict__ block_tables,
                               const uint4* __restrict__ items, Geometry geo) {
    constexpr int STRIDE = HD + 8;  // padded shared-memory row (elements), 16-byte multiple
    constexpr int CHUNKS = HD / 8;  // 16-byte chunks per row
    __shared__ __align__(16) T k_s[TILE_K * STRIDE];
    __shared__ __align__(16) T v_s[TILE_K * STRIDE];

    const uint4 item = items[blockIdx.x];
    const uint32_t q_row0 = item.x, rows = item.z, pos0 = item.w;
    const uint32_t head = blockIdx.y;
    const uint32_t kv_head = head / (geo.num_heads / geo.num_kv_heads);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const uint32_t r_lo = warp * 16 + g, r_hi = r_lo + 8;  // this lane's two rows
    const float scale = geo.scale * LOG2E;

    // This warp's 16 query rows as MMA A fragments (rows past the tile are zero).
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int kc = 0; kc < HD / 16; ++kc) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const uint32_t row = (r & 1) ? r_hi : r_lo;
            const int col = kc * 16 + t * 2 + ((r & 2) ? 8 : 0);
            qa[kc][r] = row < rows
                ? *reinterpret_cast<const uint32_t*>(q + (static_cast<uint64_t>(q_row0 + row) * geo.num_heads + head) * HD + col)
                : 0u;
        }
    }

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F};
    float l[2] = {0.f, 0.f};

    const uint32_t* table = block_tables + static_cast<uint64_t>(item.y) * geo.table_width;
    const uint64_t row_stride = static_cast<uint64_t>(geo.num_kv_heads) * HD;
    const uint32_t key_lo = first_key(pos0, geo.window);
    const uint32_t key_hi = pos0 + rows;  // exclusive
    const uint32_t warp_first = pos0 + warp * 16;
    const uint32_t warp_last = warp_first + 15;
    const uint16_t* v16 = reinterpret_cast<const uint16_t*>(v_s);

    for (uint32_t k0 = key_lo; k0 < key_hi; k0 += TILE_K) {
        __syncthreads();  // the previous tile is consumed
        for (int c = threadIdx.x; c < TILE_K * CHUNKS; c += TILE_THREADS) {
            const int r = c / CHUNKS, cc = c % CHUNKS;
            const uint32_t pos = k0 + r;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (pos < key_hi) {
                const uint64_t at = slot_of(table, pos, geo.block_size) * row_stride +
                                    static_cast<uint64_t>(kv_head) * HD + cc * 8;
                kv = *reinterpret_cast<const uint4*>(k_cache + at);
                vv = *reinterpret_cast<const uint4*>(v_cache + at);
            }
            *reinterpret_cast<uint4*>(&k_s[r * STRIDE + cc * 8]) = kv;
            *reinterpret_cast<uint4*>(&v_s[r * STRIDE + cc * 8]) = vv;
        }
        __syncthreads();
        // Warp-uniform skips: every key of the tile is after this warp's last query, or
        // before the window of its first.
        if (warp * 16 >= static_cast<int>(rows) || k0 > warp_last ||
            k0 + TILE_K <= first_key(warp_first, geo.window)) {
            continue;
        }

        float s[TILE_K / 8][4];
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < HD / 16; ++kc) {
#pragma unroll
            for (int nt = 0; nt < TILE_K / 8; ++nt) {
                const T* kr = &k_s[(nt * 8 + g) * STRIDE + kc * 16 + t * 2];
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + 8);
                Mma<T>::run(s[nt], qa[kc], b0, b1);
            }
        }

        // Mask, scale, row maxima (a row's 4 lanes are t = 0..3 of one g).
        float mx[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const uint32_t row = i < 2 ? r_lo : r_hi;
                const uint32_t key = k0 + nt * 8 + t * 2 + (i & 1);
                const uint32_t pos = pos0 + row;
                const bool visible = row < rows && key <= pos && key >= first_key(pos, geo.window);
                s[nt][i] = visible ? s[nt][i] * scale : -CUDART_INF_F;
                mx[i / 2] = fmaxf(mx[i / 2], s[nt][i]);
            }
        }
        float alpha[2], base[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_new = fmaxf(m[i], mx[i]);
            base[i] = m_new == -CUDART_INF_F ? 0.f : m_new;  // a row with nothing visible yet
            alpha[i] = exp2f(m[i] - base[i]);
            m[i] = m_new;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd) {
            o[nd][0] *= alpha[0];
            o[nd][1] *= alpha[0];
            o[nd][2] *= alpha[1];
            o[nd][3] *= alpha[1];
        }
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[nt][i] = exp2f(s[nt][i] - base[i / 2]);
                l[i / 2] += s[nt][i];
            }
        }

        // O += P V: two S tiles of 8 keys form one A fragment of 16 keys.
#pragma unroll
        for (int kc = 0; kc < TILE_K / 16; ++kc) {
            const uint32_t pa[4] = {
                pack2<T>(s[2 * kc][0], s[2 * kc][1]),
                pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3]),
            };
            const int key = kc * 16 + t * 2;
#pragma unroll
            for (int nd = 0; nd < HD / 8; ++nd) {
                const int col = nd * 8 + g;
                const uint32_t b0 = v16[key * STRIDE + col] | (uint32_t(v16[(key + 1) * STRIDE + col]) << 16);
                const uint32_t b1 = v16[(key + 8) * STRIDE + col] | (uint32_t(v16[(key + 9) * STRIDE + col]) << 16);
                Mma<T>::run(o[nd], pa, b0, b1);
            }
        }
    }

    // Each row's sum is spread over its 4 lanes.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uint32_t row = i == 0 ? r_lo : r_hi;
        if (row >= rows) continue;
        const float inv = 1.f / l[i];
        T* dst = out + (static_cast<uint64_t>(q_row0 + row) * geo.num_heads + head) * HD + t * 2;
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd) {
            *reinterpret_cast<uint32_t*>(dst + nd * 8) = pack2<T>(o[nd][2 * i] * inv, o[nd][2 * i + 1] * inv);
        }
    }
}

}  // namespace wick

#define WICK_ROWS(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(wick::ROWS_THREADS)                           \
        wick_pa_rows_##NAME(T* out, float* part_out, float* part_ml, const T* q,               \
                            const T* k_cache, const T* v_cache, const uint32_t* block_tables,  \
                            const uint4* items, uint32_t max_splits, wick::Geometry geo) {     \
        wick::rows_attention<T>(out, part_out, part_ml, q, k_cache, v_cache, block_tables,     \
                                items, max_splits, geo);                                       \
    }                                                                                          \
    extern "C" __global__ void wick_pa_reduce_##NAME(T* out, const float* part_out,            \
                                                     const float* part_ml, const uint4* items, \
                                                     uint32_t max_splits, uint32_t num_heads,  \
                                                     uint32_t head_dim, uint32_t window) {     \
        wick::reduce_partitions<T>(out, part_out, part_ml, items, max_splits, num_heads,       \
                                   head_dim, window);                                          \
    }

WICK_ROWS(f32, float)
WICK_ROWS(f16, __half)
WICK_ROWS(bf16, __nv_bfloat16)

#define WICK_TILE(NAME, T, HD)                                                                 \
    extern "C" __global__ void __launch_bounds__(wick::TILE_THREADS)                           \
        wick_pa_tile_##NAME##_hd##HD(T* out, const T* q, const T* k_cache, const T* v_cache,   \
                                     const uint32_t* block_tables, const uint4* items,         \
                                     wick::Geometry geo) {                                     \
        wick::tile_attention<T, HD>(out, q, k_cache, v_cache, block_tables, items, geo);       \
    }

WICK_TILE(f16, __half, 64)
WICK_TILE(f16, __half, 128)
WICK_TILE(bf16, __nv_bfloat16, 64)
WICK_TILE(bf16, __nv_bfloat16, 128)
