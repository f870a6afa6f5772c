//! How the CUDA attention kernels split a checked batch into work items: plain host code,
//! compiled on every build so its invariants are tested on machines without a GPU.
//!
//! Invariants ([`WorkList::new`]): every query row of every sequence is covered exactly
//! once, by a row item or by one row of a tile item; a row item's key range is exactly the
//! keys its query sees (causal, sliding window); tiles hold at most [`TILE_Q`] consecutive
//! rows of one sequence; `max_splits` is the most [`PARTITION`]-key partitions any row
//! item needs.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use crate::attention_cpu::{Params, Seq};

/// Keys per split of the row kernel (`PARTITION` in kernels/paged_attention.cu).
pub(crate) const PARTITION: usize = 256;
/// Query rows per tile-kernel block (`TILE_Q` in kernels/paged_attention.cu).
pub(crate) const TILE_Q: usize = 64;
/// Sequences with at most this many queries use the row kernel even when tiles could serve.
pub(crate) const ROWS_MAX_Q: usize = 8;

/// One step's work items, four values each (the kernels read them as `uint4`).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct WorkList {
    /// `[token, seq, key_start, key_end]` per query row for the row kernel.
    pub rows: Vec<[usize; 4]>,
    /// `[q_row0, seq, rows, pos0]` per tile for the tile kernel.
    pub tiles: Vec<[usize; 4]>,
    /// Most partitions any row item needs (at least 1).
    pub max_splits: usize,
}

impl WorkList {
    /// Splits `seqs` (checked by `PagedAttention::sequences`): with `tiled`, sequences of
    /// more than [`ROWS_MAX_Q`] queries go to tiles, everything else to rows.
    pub(crate) fn new(seqs: &[Seq<'_>], params: &Params, tiled: bool) -> Self {
        let mut list = WorkList {
            max_splits: 1,
            ..Default::default()
        };
        for (s, seq) in seqs.iter().enumerate() {
            let first_pos = seq.seq_len - seq.q_len;
            if tiled && seq.q_len > ROWS_MAX_Q {
                for row0 in (0..seq.q_len).step_by(TILE_Q) {
                    let n = TILE_Q.min(seq.q_len - row0);
                    list.tiles
                        .push([seq.q_start + row0, s, n, first_pos + row0]);
                }
            } else {
                for j in 0..seq.q_len {
                    let pos = first_pos + j;
                    let start = params.first_key(pos);
                    list.rows.push([seq.q_start + j, s, start, pos + 1]);
                    let splits = (pos + 1 - start).div_ceil(PARTITION);
                    list.max_splits = list.max_splits.max(splits);
                }
            }
        }
        list
    }
}

/// A step's work lists made once, for every layer whatever its sliding window and dtype
/// (the kernels apply the window: [`item_key_start`], and the tile kernel's own masks):
/// every query row as a row item `[token, seq, 0, pos + 1]`, those of sequences with at
/// most [`ROWS_MAX_Q`] queries first (`short` of them), then every row of the longer ones;
/// and the longer ones' rows as tiles too. A layer that uses tiles takes the first `short`
/// row items and the tiles; one that does not takes every row item. `None` when the
/// lengths are inconsistent (`cu_seqlens_q` shorter than `seq_lens` + 1, decreasing, or a
/// sequence with more queries than its context), which the op refuses anyway.
pub(crate) type StepLists = (Vec<[usize; 4]>, usize, Vec<[usize; 4]>);

pub(crate) fn step_lists(cu_seqlens_q: &[u32], seq_lens: &[u32]) -> Option<StepLists> {
    if cu_seqlens_q.len() != seq_lens.len() + 1 {
        return None;
    }
    let (mut short, mut long, mut tiles) = (vec![], vec![], vec![]);
    for (s, (w, &seq_len)) in cu_seqlens_q.windows(2).zip(seq_lens).enumerate() {
        let (start, end, seq_len) = (w[0] as usize, w[1] as usize, seq_len as usize);
        let q_len = end.checked_sub(start)?;
        let first_pos = seq_len.checked_sub(q_len)?;
        let rows = if q_len > ROWS_MAX_Q {
            for row0 in (0..q_len).step_by(TILE_Q) {
                tiles.push([start + row0, s, TILE_Q.min(q_len - row0), first_pos + row0]);
            }
            &mut long
        } else {
            &mut short
        };
        rows.extend((0..q_len).map(|j| [start + j, s, 0, first_pos + j + 1]));
    }
    let num_short = short.len();
    short.extend(long);
    Some((short, num_short, tiles))
}

/// Partitions of [`PARTITION`] keys that a context of `keys` keys spans (at least 1).
pub(crate) fn partitions(keys: usize) -> usize {
    keys.div_ceil(PARTITION).max(1)
}

/// The first key a row item attends to under `params`' window: the kernel's
/// `item_key_start` (kernels/paged_attention.cu), mirrored for the tests.
#[cfg(test)]
pub(crate) fn item_key_start(item: &[usize; 4], params: &Params) -> usize {
    item[2].max(params.first_key(item[3] - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(specs: &[(usize, usize)]) -> Vec<Seq<'static>> {
        let mut q_start = 0;
        specs
            .iter()
            .map(|&(seq_len, q_len)| {
                let s = Seq {
                    q_start,
                    q_len,
                    seq_len,
                    blocks: &[],
                };
                q_start += q_len;
                s
            })
            .collect()
    }

    /// Each query row once, with the keys it sees.
    fn check(specs: &[(usize, usize)], window: Option<usize>, tiled: bool) -> WorkList {
        let seqs = seqs(specs);
        let params = Params {
            softmax_scale: 1.0,
            sliding_window: window,
        };
        let list = WorkList::new(&seqs, &params, tiled);
        let num_tokens: usize = specs.iter().map(|s| s.1).sum();
        let mut seen = vec![0; num_tokens];
        let mut most = 1;
        for &[token, s, start, end] in &list.rows {
            seen[token] += 1;
            let seq = &seqs[s];
            let pos = seq.seq_len - seq.q_len + token - seq.q_start;
            assert_eq!((start, end), (params.first_key(pos), pos + 1));
            most = most.max((end - start).div_ceil(PARTITION));
        }
        for &[row0, s, n, pos0] in &list.tiles {
            let seq = &seqs[s];
            assert!((1..=TILE_Q).contains(&n) && seq.q_len > ROWS_MAX_Q);
            assert!(row0 >= seq.q_start && row0 + n <= seq.q_start + seq.q_len);
            assert_eq!(pos0, seq.seq_len - seq.q_len + row0 - seq.q_start);
            for count in &mut seen[row0..row0 + n] {
                *count += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{seen:?}");
        assert_eq!(list.max_splits, most);
        list
    }

    #[test]
    fn every_row_once_with_its_keys() {
        let mixed = [
            (1, 1),
            (37, 1),
            (23, 23),
            (48, 13),
            (41, 9),
            (20, 0),
            (1100, 1),
        ];
        for window in [None, Some(1), Some(16), Some(300)] {
            for tiled in [false, true] {
                check(&mixed, window, tiled);
            }
        }
    }

    #[test]
    fn step_lists_with_the_window_applied_by_the_kernels_equal_each_layers_lists() {
        let specs = [
            (1, 1),
            (37, 1),
            (300, 8),
            (150, 150),
            (1100, 1),
            (700, 40),
            (5, 3),
        ];
        let seqs = seqs(&specs);
        let cu: Vec<u32> = std::iter::once(0)
            .chain(seqs.iter().map(|s| (s.q_start + s.q_len) as u32))
            .collect();
        let lens: Vec<u32> = specs.iter().map(|s| s.0 as u32).collect();
        let (rows, short, tiles) = step_lists(&cu, &lens).unwrap();
        assert_eq!(short, 1 + 1 + 8 + 1 + 3);
        for window in [None, Some(1), Some(16), Some(300)] {
            let params = Params {
                softmax_scale: 1.0,
                sliding_window: window,
            };
            let applied = |items: &[[usize; 4]]| -> Vec<[usize; 4]> {
                (items.iter())
                    .map(|i| [i[0], i[1], item_key_start(i, &params), i[3]])
                    .collect()
            };
            let sorted = |mut v: Vec<[usize; 4]>| {
                v.sort();
                v
            };
            // A layer with tiles: the short rows and the tiles.
            let tiled = check(&specs, window, true);
            assert_eq!(sorted(applied(&rows[..short])), sorted(tiled.rows.clone()));
            assert_eq!(tiles, tiled.tiles, "window {window:?}");
            // A layer without: every row.
            let untiled = check(&specs, window, false);
            assert_eq!(sorted(applied(&rows)), sorted(untiled.rows.clone()));
            // The step's partitions bound every layer's.
            assert!(partitions(1100) >= untiled.max_splits.max(tiled.max_splits));
        }
        // Inconsistent lengths make no lists (the op refuses them).
        assert_eq!(step_lists(&[0, 2], &[1]), None);
        assert_eq!(step_lists(&[0, 1], &[1, 1]), None);
        assert_eq!(step_lists(&[3, 1], &[5]), None);
    }

    #[test]
    fn tiles_and_splits() {
        let list = check(&[(150, 150), (1100, 1), (600, 8)], None, true);
        // 150 rows: tiles of 64, 64 and 22; 8 queries stay rows.
        let sizes: Vec<usize> = list.tiles.iter().map(|t| t[2]).collect();
        assert_eq!(sizes, [64, 64, 22]);
        assert_eq!(list.rows.len(), 9);
        assert_eq!(list.max_splits, 1100usize.div_ceil(PARTITION));
        // A window bounds the partitions a row needs.
        assert_eq!(check(&[(5000, 1)], Some(300), false).max_splits, 2);
        // Untiled, every row is a row item.
        assert!(check(&[(150, 150)], None, false).tiles.is_empty());
    }
}
