//! Bad input is a candle error naming the problem, never a panic or an out-of-bounds read.

use crate::support::{device_tests, expect_err, rand_tensor, rng, seq, Batch, Case};
use candle_core::{DType, Device, Result, Tensor};
use wick_kernels::{paged_attention, reshape_and_cache, PagedAttentionMetadata, SlotMapping};

fn bad_cache_writes(dev: &Device) -> Result<()> {
    let mut rng = rng(300);
    let cache = Tensor::zeros((2, 2, 4, 2, 8), DType::F32, dev)?;
    let kv = rand_tensor(&mut rng, &[2, 3, 2, 8], DType::F32, dev)?;
    let slots = |s: &[i64]| SlotMapping::new(s.to_vec(), dev);
    let ok = slots(&[0, 1, 2])?;

    expect_err(
        reshape_and_cache(&kv, &cache, &slots(&[0, 8, 1])?),
        "outside",
    );
    expect_err(slots(&[0, -5, 1]), "neither -1 nor a u32 slot");
    expect_err(
        reshape_and_cache(&kv, &cache, &slots(&[4, 1, 4])?),
        "two tokens",
    );
    expect_err(
        reshape_and_cache(&kv, &cache, &slots(&[0, 1])?),
        "slot_mapping",
    );
    let kv16 = kv.to_dtype(DType::F16)?;
    expect_err(reshape_and_cache(&kv16, &cache, &ok), "F16");
    let heads3 = rand_tensor(&mut rng, &[2, 3, 3, 8], DType::F32, dev)?;
    expect_err(reshape_and_cache(&heads3, &cache, &ok), "kv must be");
    // Keys only: the first dimension must be 2 (keys, values).
    expect_err(reshape_and_cache(&kv.get(0)?, &cache, &ok), "kv must be");
    let strided = Tensor::zeros((2, 2, 2, 4, 8), DType::F32, dev)?.transpose(2, 3)?;
    expect_err(reshape_and_cache(&kv, &strided, &ok), "contiguous");
    let one_half = Tensor::zeros((1, 2, 4, 2, 8), DType::F32, dev)?;
    expect_err(reshape_and_cache(&kv, &one_half, &ok), "kv_cache must be");
    let ints = Tensor::zeros((2, 2, 4, 2, 8), DType::U32, dev)?;
    let kint = Tensor::zeros((2, 3, 2, 8), DType::U32, dev)?;
    expect_err(reshape_and_cache(&kint, &ints, &ok), "f32, f16 or bf16");
    Ok(())
}

/// A small valid batch (block size 4) whose metadata the tests below break.
fn valid_batch(dev: &Device) -> Result<Batch> {
    let mut case = Case::new(4, 2, 16, &[seq(5, 2), seq(3, 1)]);
    case.block_size = 4;
    let batch = Batch::new(&case, &mut rng(301), dev)?;
    batch.check()?;
    Ok(batch)
}

/// Metadata from explicit values (block tables `[num_seqs, width]`).
fn meta(dev: &Device, table: &[u32], cu: &[u32], lens: &[u32]) -> Result<PagedAttentionMetadata> {
    let width = table.len() / lens.len().max(1);
    PagedAttentionMetadata::new(table.to_vec(), width, cu.to_vec(), lens.to_vec(), dev)
}

fn bad_attention_metadata(dev: &Device) -> Result<()> {
    let b = valid_batch(dev)?;
    let (b0, b1) = (&b.blocks[0], &b.blocks[1]);
    let run = |m: &PagedAttentionMetadata| {
        paged_attention(&b.q, &b.key_cache, &b.value_cache, m, 0.25, None)
    };
    let num_blocks = b.key_cache.dim(0)? as u32;

    // Sanity: the same metadata built here works.
    let good = meta(dev, &[b0[0], b0[1], b1[0], 0], &[0, 2, 3], &[5, 3])?;
    run(&good)?;

    let table = [b0[0], num_blocks, b1[0], 0];
    expect_err(run(&meta(dev, &table, &[0, 2, 3], &[5, 3])?), "block");
    let table = [b0[0], b0[1], b1[0], u32::MAX];
    run(&meta(dev, &table, &[0, 2, 3], &[5, 3])?)?; // unused entries are ignored
    let narrow = [b0[0], b1[0]];
    expect_err(run(&meta(dev, &narrow, &[0, 2, 3], &[5, 3])?), "table row");
    let table = [b0[0], b0[1], b1[0], 0];
    expect_err(run(&meta(dev, &table, &[0, 2, 3], &[1, 3])?), "context");
    expect_err(run(&meta(dev, &table, &[0, 2, 4], &[5, 3])?), "within");
    expect_err(run(&meta(dev, &table, &[0, 3, 2], &[5, 3])?), "within");
    expect_err(run(&meta(dev, &table, &[1, 2, 3], &[5, 3])?), "start at 0");
    // Lengths that disagree cannot make metadata at all.
    expect_err(meta(dev, &table, &[0, 2], &[5, 3]), "cu_seqlens_q");
    expect_err(meta(dev, &table[..3], &[0, 2, 3], &[5, 3]), "block");
    Ok(())
}

fn bad_attention_inputs(dev: &Device) -> Result<()> {
    let b = valid_batch(dev)?;
    let (kc, vc, m) = (&b.key_cache, &b.value_cache, &b.meta);
    let mut rng = rng(302);

    let q3 = rand_tensor(&mut rng, &[3, 3, 16], DType::F32, dev)?;
    expect_err(paged_attention(&q3, kc, vc, m, 0.25, None), "multiple");
    let q16 = b.q.to_dtype(DType::F16)?;
    expect_err(paged_attention(&q16, kc, vc, m, 0.25, None), "dtype");
    let q_dim = rand_tensor(&mut rng, &[3, 4, 8], DType::F32, dev)?;
    expect_err(paged_attention(&q_dim, kc, vc, m, 0.25, None), "head_dim");
    let q_rank = b.q.flatten_from(1)?;
    expect_err(paged_attention(&q_rank, kc, vc, m, 0.25, None), "q must be");
    expect_err(
        paged_attention(&b.q, kc, vc, m, 0.25, Some(0)),
        "sliding_window",
    );
    expect_err(
        paged_attention(&b.q, kc, vc, m, f32::NAN, None),
        "softmax_scale",
    );
    let vc16 = vc.to_dtype(DType::F16)?;
    expect_err(paged_attention(&b.q, kc, &vc16, m, 0.25, None), "dtype");
    let strided = kc.transpose(1, 2)?;
    expect_err(
        paged_attention(&b.q, &strided, &strided, m, 0.25, None),
        "contiguous",
    );
    let other = vc.narrow(3, 0, 8)?.contiguous()?;
    expect_err(paged_attention(&b.q, kc, &other, m, 0.25, None), "differs");
    Ok(())
}

device_tests!(
    bad_cache_writes,
    bad_attention_metadata,
    bad_attention_inputs
);
