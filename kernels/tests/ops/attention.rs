//! `paged_attention` against the naive dense reference: decode, prefill, chunked prefill
//! and their mixes; GQA ratios 1, 3 and 8; head_dim 64 and 128; several block sizes;
//! sliding windows; f32, f16 and bf16; padding rows; batch invariance; long contexts (split
//! into partitions on CUDA), multi-tile prefills, head_dim 256 and wide GQA groups.

use crate::support::{device_tests, rng, seq, Batch, Case};
use candle_core::{DType, Device, Result, Tensor};

/// A ragged mix: decode, full prefill, chunked prefill, on and off block boundaries.
fn mixed() -> Vec<crate::support::SeqSpec> {
    vec![
        seq(1, 1),   // first token of a prompt
        seq(37, 1),  // decode, last block partly filled
        seq(23, 23), // full prefill
        seq(48, 13), // chunked prefill ending on a block boundary
        seq(30, 1),  // decode
        seq(41, 9),  // chunked prefill starting mid-block
    ]
}

fn decode_batch(dev: &Device) -> Result<()> {
    let case = Case::new(
        4,
        4,
        64,
        &[seq(1, 1), seq(5, 1), seq(16, 1), seq(17, 1), seq(40, 1)],
    );
    Batch::new(&case, &mut rng(1), dev)?.check()
}

fn prefill_batch(dev: &Device) -> Result<()> {
    let case = Case::new(6, 2, 128, &[seq(1, 1), seq(7, 7), seq(33, 33), seq(16, 16)]);
    Batch::new(&case, &mut rng(2), dev)?.check()
}

fn mixed_batch_gqa_1_3_8(dev: &Device) -> Result<()> {
    for (i, (heads, kv_heads)) in [(2, 2), (6, 2), (8, 1)].into_iter().enumerate() {
        for head_dim in [64, 128] {
            let case = Case::new(heads, kv_heads, head_dim, &mixed());
            Batch::new(&case, &mut rng(10 + i as u64), dev)?.check()?;
        }
    }
    Ok(())
}

fn block_sizes(dev: &Device) -> Result<()> {
    for (i, block_size) in [1, 5, 8, 16, 32].into_iter().enumerate() {
        let mut case = Case::new(6, 2, 64, &mixed());
        case.block_size = block_size;
        Batch::new(&case, &mut rng(20 + i as u64), dev)?.check()?;
    }
    Ok(())
}

fn long_prefill_many_tiles(dev: &Device) -> Result<()> {
    // Tiles of query rows (32 / group) split this prompt several times over.
    let mut case = Case::new(3, 1, 64, &[seq(150, 150), seq(90, 70), seq(12, 1)]);
    case.block_size = 16;
    Batch::new(&case, &mut rng(30), dev)?.check()
}

fn sliding_window(dev: &Device) -> Result<()> {
    for (i, window) in [1, 3, 16, 20, 1000].into_iter().enumerate() {
        for block_size in [5, 16] {
            let mut case = Case::new(4, 2, 64, &mixed());
            case.sliding_window = Some(window);
            case.block_size = block_size;
            Batch::new(&case, &mut rng(40 + i as u64), dev)?.check()?;
        }
    }
    Ok(())
}

fn half_dtypes(dev: &Device) -> Result<()> {
    for (i, dtype) in [DType::F16, DType::BF16].into_iter().enumerate() {
        for (heads, kv_heads, head_dim) in [(6, 2, 128), (8, 1, 64)] {
            let mut case = Case::new(heads, kv_heads, head_dim, &mixed());
            case.dtype = dtype;
            Batch::new(&case, &mut rng(50 + i as u64), dev)?.check()?;
            case.sliding_window = Some(7);
            Batch::new(&case, &mut rng(52 + i as u64), dev)?.check()?;
        }
    }
    Ok(())
}

fn sharp_softmax_is_stable(dev: &Device) -> Result<()> {
    // Scores in the hundreds: exp without subtracting the max would overflow. Score
    // rounding is amplified that much too, hence the looser tolerance.
    let mut case = Case::new(4, 2, 64, &mixed());
    case.scale_mul = 100.0;
    Batch::new(&case, &mut rng(60), dev)?.check_with((1e-3, 1e-3))
}

fn padding_rows_are_zero_and_empty_seqs_skipped(dev: &Device) -> Result<()> {
    let mut case = Case::new(4, 1, 64, &[seq(9, 3), seq(20, 0), seq(5, 1)]);
    case.pad_rows = 3;
    Batch::new(&case, &mut rng(70), dev)?.check()
}

fn non_contiguous_q(dev: &Device) -> Result<()> {
    let case = Case::new(4, 2, 64, &mixed());
    let mut batch = Batch::new(&case, &mut rng(80), dev)?;
    let want = batch.run()?;
    // Same values, laid out [heads, tokens, d] and viewed back as [tokens, heads, d].
    batch.q = batch.q.transpose(0, 1)?.contiguous()?.transpose(0, 1)?;
    assert!(!batch.q.is_contiguous());
    let got = batch.run()?;
    assert_eq!(to_vec(&got)?, to_vec(&want)?);
    Ok(())
}

fn batch_invariance(dev: &Device) -> Result<()> {
    // Each sequence's output alone equals its rows of the batched output, bit for bit.
    let case = Case::new(6, 2, 64, &mixed());
    let batch = Batch::new(&case, &mut rng(90), dev)?;
    let all = batch.run()?;
    let mut row = 0;
    for (s, spec) in case.seqs.iter().enumerate() {
        let table = batch.meta.block_table(s).to_vec();
        let alone = wick_kernels::PagedAttentionMetadata::new(
            table.clone(),
            table.len(),
            vec![0, spec.q_len as u32],
            vec![spec.seq_len as u32],
            dev,
        )?;
        let q = batch.q.narrow(0, row, spec.q_len)?;
        let out = wick_kernels::paged_attention(
            &q,
            &batch.key_cache,
            &batch.value_cache,
            &alone,
            case.softmax_scale(),
            None,
        )?;
        assert_eq!(
            to_vec(&out)?,
            to_vec(&all.narrow(0, row, spec.q_len)?)?,
            "seq {s}"
        );
        row += spec.q_len;
    }
    Ok(())
}

fn cache_views_with_offsets(dev: &Device) -> Result<()> {
    // K and V caches as two halves of one allocation (non-zero start offset for V).
    let case = Case::new(4, 2, 64, &mixed());
    let mut batch = Batch::new(&case, &mut rng(100), dev)?;
    let both = Tensor::stack(&[&batch.key_cache, &batch.value_cache], 0)?;
    batch.key_cache = both.get(0)?;
    batch.value_cache = both.get(1)?;
    batch.check()
}

fn long_contexts_split_and_tiled(dev: &Device) -> Result<()> {
    // Decode over more than four 256-key partitions (CUDA's split-K), a 150-row prefill
    // (two full 64-row tiles and a partial one), chunks deep into long contexts; GQA 4.
    let seqs = [seq(1100, 1), seq(150, 150), seq(700, 40), seq(520, 3)];
    for (i, dtype) in [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .enumerate()
    {
        for head_dim in [64, 128] {
            let mut case = Case::new(8, 2, head_dim, &seqs);
            case.dtype = dtype;
            Batch::new(&case, &mut rng(110 + i as u64), dev)?.check()?;
            case.sliding_window = Some(300);
            case.block_size = 32;
            Batch::new(&case, &mut rng(120 + i as u64), dev)?.check()?;
        }
    }
    Ok(())
}

fn head_dim_256_and_wide_groups(dev: &Device) -> Result<()> {
    // head_dim 256 (Gemma-sized) and a group of 12 query heads per kv head (more heads
    // than one CUDA block serves), in bf16 and f32.
    for (i, dtype) in [DType::BF16, DType::F32].into_iter().enumerate() {
        let mut case = Case::new(4, 2, 256, &mixed());
        case.dtype = dtype;
        Batch::new(&case, &mut rng(130 + i as u64), dev)?.check()?;
        let mut case = Case::new(12, 1, 64, &mixed());
        case.dtype = dtype;
        Batch::new(&case, &mut rng(132 + i as u64), dev)?.check()?;
    }
    Ok(())
}

fn many_decode_rows(dev: &Device) -> Result<()> {
    // A decode batch of 48 sequences of assorted lengths, bf16, Llama-3.2-1B's head layout.
    let seqs: Vec<_> = (0..48).map(|i| seq(1 + (i * 37) % 300, 1)).collect();
    let mut case = Case::new(32, 8, 64, &seqs);
    case.dtype = DType::BF16;
    Batch::new(&case, &mut rng(140), dev)?.check()
}

fn work_lists_uploaded_with_the_step(dev: &Device) -> Result<()> {
    // Decode, short chunks, prefills of one and several tiles, with the work lists made
    // once per step (windows applied by the kernels; a layer with tiles taking the short
    // rows and the tiles, one without every row) and a grid of more partitions than
    // needed: bit-identical to the op's own plan, for every window, in f32 (no tiles) and
    // bf16 (tiles). One context spans five partitions; padding rows stay zero.
    let seqs = [
        seq(1, 1),
        seq(1100, 1),
        seq(37, 8),
        seq(150, 150),
        seq(300, 3),
        seq(700, 40),
    ];
    for (i, dtype) in [DType::F32, DType::BF16].into_iter().enumerate() {
        for window in [None, Some(1), Some(16), Some(300)] {
            let mut case = Case::new(8, 2, 64, &seqs);
            case.dtype = dtype;
            case.sliding_window = window;
            case.pad_rows = 2;
            let mut batch = Batch::new(&case, &mut rng(150 + i as u64), dev)?;
            let want = batch.run()?;
            batch.check()?;
            let lists = work_lists(&batch.meta);
            assert_eq!(lists.rows.len(), 4 * (1 + 1 + 8 + 150 + 3 + 40));
            assert_eq!((lists.short_rows, lists.tiles.len()), (13, 4 * (3 + 1)));
            let needed = wick_kernels::PagedAttentionMetadata::partitions(1100);
            assert_eq!(needed, 5);
            for splits in [needed, 16] {
                let (rows, tiles) = upload(&lists, dev)?;
                batch.meta = batch.meta.clone().with_work_lists(rows, tiles, splits)?;
                let got = batch.run()?;
                assert_eq!(
                    to_vec(&got)?,
                    to_vec(&want)?,
                    "{dtype:?} {window:?} {splits}"
                );
            }
        }
    }
    // Refused: fewer partitions than the longest context needs, and lists of other lengths.
    let batch = Batch::new(&Case::new(4, 2, 64, &seqs), &mut rng(160), dev)?;
    let (rows, tiles) = upload(&work_lists(&batch.meta), dev)?;
    let few = batch
        .meta
        .clone()
        .with_work_lists(rows.clone(), tiles.clone(), 4);
    crate::support::expect_err(few, "partitions");
    let short = rows.narrow(0, 0, 4)?;
    let bad = batch.meta.clone().with_work_lists(short, tiles.clone(), 8);
    crate::support::expect_err(bad, "row items");
    crate::support::expect_err(batch.meta.with_work_lists(tiles, rows, 8), "must be u32");
    Ok(())
}

fn work_lists(meta: &wick_kernels::PagedAttentionMetadata) -> wick_kernels::WorkLists {
    wick_kernels::PagedAttentionMetadata::work_lists(meta.cu_seqlens_q(), meta.seq_lens())
}

fn upload(lists: &wick_kernels::WorkLists, dev: &Device) -> Result<(Tensor, Tensor)> {
    Ok((
        Tensor::from_slice(&lists.rows, lists.rows.len(), dev)?,
        Tensor::from_slice(&lists.tiles, lists.tiles.len(), dev)?,
    ))
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

device_tests!(
    decode_batch,
    prefill_batch,
    mixed_batch_gqa_1_3_8,
    block_sizes,
    long_prefill_many_tiles,
    sliding_window,
    half_dtypes,
    sharp_softmax_is_stable,
    padding_rows_are_zero_and_empty_seqs_skipped,
    non_contiguous_q,
    batch_invariance,
    cache_views_with_offsets,
    long_contexts_split_and_tiled,
    head_dim_256_and_wide_groups,
    many_decode_rows,
    work_lists_uploaded_with_the_step,
);
