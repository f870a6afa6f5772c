//! The CUDA path of [`crate::sample`]: uploads the [`SamplingBatch`] (one host-to-device
//! copy per array), launches kernels/sampling.cu's `wick_sample` with one block per row,
//! and reads back only the tokens and the logprobs asked for.
//!
//! The public function has checked the logits' shape and dtype against the batch, and the
//! batch checked every entry's token against the vocabulary when it was built.

use super::{as_u32, view};
use crate::sampling::{SampledToken, SamplingBatch, MAX_TOP_LOGPROBS};
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

/// Threads per block; matches `wick::SAMPLE_THREADS`.
const THREADS: u32 = 1024;

/// One row's parameters as the kernel reads them; laid out as `wick::SampleRow`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RowGpu {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    seed_lo: u32,
    seed_hi: u32,
    index: u32,
    position_lo: u32,
    position_hi: u32,
    logprob: u32,
    top_logprobs: u32,
}

/// `(token, value)` / `(token, count)` entries; laid out as `wick::BiasEntry` and
/// `wick::PenaltyEntry`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Pair<T> {
    token: u32,
    value: T,
}

// SAFETY: plain `#[repr(C)]` data of 4-byte fields, laid out as the kernel's structs.
unsafe impl DeviceRepr for RowGpu {}
// SAFETY: as above; T is f32 or u32.
unsafe impl<T: Copy + DeviceRepr> DeviceRepr for Pair<T> {}

/// A copy of `v` that is never empty (cudarc allocates no empty buffers): `pad` appended
/// if needed; the kernel never reads it, as the starts say.
fn nonempty<T: Copy>(v: &[T], pad: T) -> Vec<T> {
    let mut v = v.to_vec();
    if v.is_empty() {
        v.push(pad);
    }
    v
}

/// `sample` on the GPU.
pub(crate) fn sample(
    logits: &CudaStorage,
    layout: &Layout,
    batch: &SamplingBatch,
) -> Result<Vec<SampledToken>> {
    let dev = logits.device.clone();
    let num_rows = as_u32(batch.len(), "rows")?;
    let vocab = as_u32(batch.vocab, "vocab")?;
    let lv = view::<f32>(logits, layout, "logits")?;
    let rows: Vec<RowGpu> = (batch.rows.iter())
        .map(|p| RowGpu {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            index: p.index,
            position_lo: p.position as u32,
            position_hi: (p.position >> 32) as u32,
            logprob: u32::from(p.logprob),
            top_logprobs: p.top_logprobs,
        })
        .collect();
    let bias: Vec<Pair<f32>> = (batch.bias.iter())
        .map(|&(token, value)| Pair { token, value })
        .collect();
    let penalty: Vec<Pair<u32>> = (batch.penalty.iter())
        .map(|&(token, value)| Pair { token, value })
        .collect();
    let rows_d = dev.clone_htod(&rows)?;
    let bias_start_d = dev.clone_htod(&batch.bias_start)?;
    let bias_d = dev.clone_htod(&nonempty(
        &bias,
        Pair {
            token: 0,
            value: 0.0,
        },
    ))?;
    let penalty_start_d = dev.clone_htod(&batch.penalty_start)?;
    let penalty_d = dev.clone_htod(&nonempty(&penalty, Pair { token: 0, value: 0 }))?;
    let mask_of_d = dev.clone_htod(&batch.mask_of)?;
    let masks_d = dev.clone_htod(&nonempty(&batch.masks, 0))?;
    let mask_words = as_u32(batch.mask_words, "mask words")?;

    let n = batch.len();
    // SAFETY (all four): every element is written by the kernel before it is read (the
    // work row by its first pass; the outputs of each row by its block, the top entries
    // only up to the row's `top_logprobs`, which is all the host reads).
    let mut work = unsafe { dev.alloc::<f32>(n * batch.vocab)? };
    let mut out_token = unsafe { dev.alloc::<u32>(n)? };
    let mut out_logprob = unsafe { dev.alloc::<f32>(n)? };
    let mut out_top_id = unsafe { dev.alloc::<u32>(n * MAX_TOP_LOGPROBS)? };
    let mut out_top_lp = unsafe { dev.alloc::<f32>(n * MAX_TOP_LOGPROBS)? };

    let func = super::kernel(&dev, &super::SAMPLING, "wick_sample")?;
    let cfg = LaunchConfig {
        grid_dim: (num_rows, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&lv);
    builder.arg(&mut work);
    builder.arg(&rows_d);
    builder.arg(&bias_start_d);
    builder.arg(&bias_d);
    builder.arg(&penalty_start_d);
    builder.arg(&penalty_d);
    builder.arg(&mask_of_d);
    builder.arg(&masks_d);
    builder.arg(&mask_words);
    builder.arg(&vocab);
    builder.arg(&mut out_token);
    builder.arg(&mut out_logprob);
    builder.arg(&mut out_top_id);
    builder.arg(&mut out_top_lp);
    // SAFETY: the arguments match `wick_sample`'s signature; logits and work hold rows *
    // vocab f32, the starts rows + 1 entries each, entries' tokens are below vocab (checked
    // by `SamplingBatch::push`), every mask index points at a whole bitset of mask_words,
    // and the outputs hold rows (* MAX_TOP_LOGPROBS) elements.
    unsafe { builder.launch(cfg) }.w()?;

    // The only device-to-host copies of the step: tokens, and logprobs where asked for.
    let tokens = dev.clone_dtoh(&out_token)?;
    let wants = |p: &crate::RowParams| p.logprob || p.top_logprobs > 0;
    let any_logprobs = batch.rows.iter().any(wants);
    let (logprob, top_id, top_lp) = if any_logprobs {
        (
            dev.clone_dtoh(&out_logprob)?,
            dev.clone_dtoh(&out_top_id)?,
            dev.clone_dtoh(&out_top_lp)?,
        )
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    Ok((batch.rows.iter().enumerate())
        .map(|(r, p)| {
            let top = (0..p.top_logprobs as usize)
                .map(|j| {
                    let at = r * MAX_TOP_LOGPROBS + j;
                    (top_id[at], top_lp[at])
                })
                .collect();
            SampledToken {
                token: tokens[r],
                logprob: wants(p).then(|| logprob[r]),
                top,
            }
        })
        .collect())
}
