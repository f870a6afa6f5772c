// The sampling op (src/sampling.rs documents its semantics; src/sampling_cpu.rs is the
// reference this kernel is tested against): one block per logits row applies biases, the
// allowed-token bitset and penalties, then takes the greedy token or draws one with Philox
// from the kept set of top-k / top-p / min-p, and writes the token and the logprobs asked
// for. Only those outputs are read back by the host.
//
// Thresholds without sorting: the k-th largest y and the top-p threshold are found by a
// 32-step bisection over the order-preserving u32 keys of the floats (each step one
// counting pass over the row), which gives exactly the value the CPU finds by sorting its
// candidates. The draw scans the kept set in id order, as the CPU does.
#include "common.cuh"

namespace wick {

constexpr int SAMPLE_THREADS = 1024;
constexpr int SAMPLE_WARPS = SAMPLE_THREADS / 32;
constexpr int MAX_TOP_LOGPROBS = 20;

/// One row's parameters; laid out as `RowGpu` in src/cuda/sampling.rs.
struct SampleRow {
    float temperature;
    uint32_t top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    uint32_t seed_lo, seed_hi;
    uint32_t index;
    uint32_t position_lo, position_hi;
    uint32_t logprob;
    uint32_t top_logprobs;
};

struct BiasEntry {
    uint32_t token;
    float value;
};

struct PenaltyEntry {
    uint32_t token;
    uint32_t count;
};

/// Philox4x32-10; src/philox.rs is its twin.
__device__ __forceinline__ uint32_t philox_first(uint32_t c0, uint32_t c1, uint32_t c2,
                                                 uint32_t c3, uint32_t k0, uint32_t k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    return c0;
}

/// Order-preserving map of floats to u32 (-inf lowest); NaN is treated as -inf.
__device__ __forceinline__ uint32_t float_key(float f) {
    if (isnan(f)) f = -INFINITY;
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

struct Add {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/// `op` over the warp, in every lane.
template <typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// `op` over the block (its identity is `identity`), in every thread; `shared` holds one
/// T per warp.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, T identity, Op op) {
    v = warp_reduce(v, op);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < SAMPLE_WARPS ? shared[lane] : identity;
    return warp_reduce(v, op);
}

__device__ float block_sum(float v, float* shared) { return block_reduce(v, shared, 0.f, Add{}); }
__device__ float block_max(float v, float* shared) {
    return block_reduce(v, shared, -INFINITY, Max{});
}
__device__ uint32_t block_count(uint32_t v, uint32_t* shared) {
    return block_reduce(v, shared, 0u, Add{});
}

/// (value, id) with the larger value first, then the lower id.
__device__ __forceinline__ bool before(float v, uint32_t i, float bv, uint32_t bi) {
    return v > bv || (v == bv && i < bi);
}

/// The warp's first (value desc, id asc) pair, in every lane.
__device__ __forceinline__ void warp_best(float& v, uint32_t& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const uint32_t oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (before(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

/// The block's first (value desc, id asc) pair; id UINT32_MAX if no thread had one.
__device__ void block_best(float& v, uint32_t& i, float* sv, uint32_t* si) {
    warp_best(v, i);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    v = lane < SAMPLE_WARPS ? sv[lane] : -INFINITY;
    i = lane < SAMPLE_WARPS ? si[lane] : 0xFFFFFFFFu;
    warp_best(v, i);
}

/// y of token t at inverse temperature inv_t (NaN as -inf).
__device__ __forceinline__ float scaled(const float* x, uint32_t t, float inv_t) {
    const float v = x[t];
    return isnan(v) ? -INFINITY : v * inv_t;
}

}  // namespace wick

extern "C" __global__ void __launch_bounds__(wick::SAMPLE_THREADS)
    wick_sample(const float* __restrict__ logits, float* __restrict__ work,
                const wick::SampleRow* __restrict__ rows, const uint32_t* __restrict__ bias_start,
                const wick::BiasEntry* __restrict__ bias,
                const uint32_t* __restrict__ penalty_start,
                const wick::PenaltyEntry* __restrict__ penalty,
                const uint32_t* __restrict__ mask_of, const uint32_t* __restrict__ masks,
                uint32_t mask_words, uint32_t vocab, uint32_t* __restrict__ out_token,
                float* __restrict__ out_logprob, uint32_t* __restrict__ out_top_id,
                float* __restrict__ out_top_lp) {
    using namespace wick;
    __shared__ float sf[SAMPLE_WARPS];
    __shared__ uint32_t su[SAMPLE_WARPS];
    __shared__ float partial[SAMPLE_THREADS];
    __shared__ uint32_t chosen;
    const uint32_t r = blockIdx.x, tid = threadIdx.x;
    const SampleRow p = rows[r];
    const float* raw = logits + (size_t)r * vocab;
    float* x = work + (size_t)r * vocab;

    // 1-3: mask, biases (in order, one thread), penalties (distinct tokens, in parallel).
    const uint32_t* mask = mask_of[r] == 0xFFFFFFFFu ? nullptr
                                                      : masks + (size_t)mask_of[r] * mask_words;
    for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) {
        const bool allowed = mask == nullptr || (mask[t / 32] >> (t % 32)) & 1u;
        x[t] = allowed ? raw[t] : -INFINITY;
    }
    __syncthreads();
    if (tid == 0) {
        for (uint32_t e = bias_start[r]; e < bias_start[r + 1]; ++e) x[bias[e].token] += bias[e].value;
    }
    __syncthreads();
    for (uint32_t e = penalty_start[r] + tid; e < penalty_start[r + 1]; e += SAMPLE_THREADS) {
        const PenaltyEntry pe = penalty[e];
        float l = x[pe.token];
        l = l > 0.f ? l / p.repetition_penalty : l * p.repetition_penalty;
        if (pe.count > 0) l -= p.frequency_penalty * (float)pe.count + p.presence_penalty;
        x[pe.token] = l;
    }
    __syncthreads();

    // 4: greedy, or a draw from the kept set.
    float bv = -INFINITY;
    uint32_t bi = 0xFFFFFFFFu;
    for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) {
        const float v = x[t];
        if (before(v, t, bv, bi)) {
            bv = v;
            bi = t;
        }
    }
    block_best(bv, bi, sf, su);
    const uint32_t greedy = bi == 0xFFFFFFFFu ? 0u : bi;
    uint32_t token = greedy;
    const float m = bv * (1.f / fmaxf(p.temperature, 1e-30f));
    if (p.temperature > 0.f && isfinite(m)) {
        const float inv_t = 1.f / p.temperature;
        float z = 0.f;
        for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) z += __expf(scaled(x, t, inv_t) - m);
        z = block_sum(z, sf);
        float theta = p.min_p > 0.f ? m + logf(p.min_p) : -INFINITY;
        if (p.top_k > 0 && p.top_k < vocab) {
            uint32_t key = 0;
            for (int bit = 31; bit >= 0; --bit) {
                const uint32_t probe = key | (1u << bit);
                uint32_t n = 0;
                for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS)
                    n += float_key(scaled(x, t, inv_t)) >= probe;
                if (block_count(n, su) >= p.top_k) key = probe;
            }
            theta = fmaxf(theta, key_float(key));
        }
        if (p.top_p < 1.f) {
            const float want = p.top_p * z;
            uint32_t key = 0;
            for (int bit = 31; bit >= 0; --bit) {
                const uint32_t probe = key | (1u << bit);
                float s = 0.f;
                for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) {
                    const float y = scaled(x, t, inv_t);
                    if (float_key(y) >= probe) s += __expf(y - m);
                }
                if (block_sum(s, sf) >= want) key = probe;
            }
            theta = fmaxf(theta, key_float(key));
        }
        // Each thread owns a contiguous chunk, so chunks in thread order are id order.
        const uint32_t chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
        const uint32_t lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);
        float own = 0.f;
        uint32_t last = 0xFFFFFFFFu;
        for (uint32_t t = lo; t < hi; ++t) {
            const float y = scaled(x, t, inv_t);
            if (y >= theta && y > -INFINITY) {
                own += __expf(y - m);
                last = t;
            }
        }
        partial[tid] = own;
        if (tid == 0) chosen = 0xFFFFFFFFu;
        __syncthreads();
        if (tid == 0) {
            float acc = 0.f;
            for (int i = 0; i < SAMPLE_THREADS; ++i) {
                const float v = partial[i];
                partial[i] = acc;
                acc += v;
            }
            sf[0] = acc;
        }
        __syncthreads();
        const float total = sf[0];
        const uint64_t position = ((uint64_t)p.position_hi << 32) | p.position_lo;
        const uint32_t bits = philox_first((uint32_t)position, (uint32_t)(position >> 32),
                                           p.index, 0u, p.seed_lo, p.seed_hi);
        const float target = (float)(bits >> 8) * (1.f / 16777216.f) * total;
        float cum = partial[tid];
        for (uint32_t t = lo; t < hi; ++t) {
            const float y = scaled(x, t, inv_t);
            if (y >= theta && y > -INFINITY) {
                cum += __expf(y - m);
                if (cum > target) {
                    atomicMin(&chosen, t);
                    break;
                }
            }
        }
        // The last kept token, if rounding left the target past the total.
        float lv = last == 0xFFFFFFFFu ? -INFINITY : (float)last;
        lv = block_max(lv, sf);
        if (chosen != 0xFFFFFFFFu) {
            token = chosen;
        } else if (lv > -INFINITY) {
            token = (uint32_t)lv;
        }
    }

    // 5: logprobs of the raw row.
    if (p.logprob || p.top_logprobs > 0) {
        float mx = -INFINITY;
        for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) mx = fmaxf(mx, raw[t]);
        mx = block_max(mx, sf);
        float lse = mx;
        if (isfinite(mx)) {
            float s = 0.f;
            for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) s += expf(raw[t] - mx);
            lse = mx + logf(block_sum(s, sf));
        }
        if (tid == 0) out_logprob[r] = raw[token] - lse;
        float pv = INFINITY;
        uint32_t pi = 0;
        for (uint32_t n = 0; n < p.top_logprobs && n < MAX_TOP_LOGPROBS; ++n) {
            float v = -INFINITY;
            uint32_t i = 0xFFFFFFFFu;
            for (uint32_t t = tid; t < vocab; t += SAMPLE_THREADS) {
                const float c = raw[t];
                const bool after_prev = n == 0 || c < pv || (c == pv && t > pi);
                if (!isnan(c) && after_prev && before(c, t, v, i)) {
                    v = c;
                    i = t;
                }
            }
            block_best(v, i, sf, su);
            if (tid == 0) {
                out_top_id[(size_t)r * MAX_TOP_LOGPROBS + n] = i;
                out_top_lp[(size_t)r * MAX_TOP_LOGPROBS + n] = v - lse;
            }
            pv = v;
            pi = i;
        }
    }
    if (tid == 0) out_token[r] = token;
}
