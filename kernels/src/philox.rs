//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
//! the counter-based generator the sampling op draws from. Counter-based means a draw is a
//! pure function of (key, counter): the CPU twin and the CUDA kernel (kernels/sampling.cu,
//! `wick::philox`) compute the same numbers with no state to carry, whatever the batch.
//!
//! The sampling op keys it by the request's seed and counts by the completion's index
//! among `n` and the token's position, see [`sampling_uniform`].

/// Round multipliers and Weyl key increments of Philox4x32.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The four 32-bit outputs of Philox4x32 with 10 rounds for `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The uniform number in [0, 1) that the sampling op draws for the token at `position` of
/// completion `index` of a request seeded with `seed`: the top 24 bits of Philox's first
/// output word, so that it is exact in f32 on every device.
pub fn sampling_uniform(seed: u64, index: u32, position: u64) -> f32 {
    let counter = [position as u32, (position >> 32) as u32, index, 0];
    let key = [seed as u32, (seed >> 32) as u32];
    (philox4x32_10(counter, key)[0] >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
    #[test]
    fn matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn uniforms_are_in_range_and_differ_by_seed_index_and_position() {
        let u = sampling_uniform(7, 0, 100);
        assert!((0.0..1.0).contains(&u));
        assert_eq!(u, sampling_uniform(7, 0, 100));
        assert_ne!(u, sampling_uniform(8, 0, 100));
        assert_ne!(u, sampling_uniform(7, 1, 100));
        assert_ne!(u, sampling_uniform(7, 0, 101));
        assert_ne!(u, sampling_uniform(7, 0, 100 + (1 << 32)));
    }
}
