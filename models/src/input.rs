//! One step's batch as the model sees it: every scheduled sequence's new tokens flattened
//! into one ragged batch, with the positions, cache slots and block tables the attention op
//! needs. Built from plain per-sequence data, so the engine's runner and the tests share
//! one way of laying a batch out.
//!
//! Everything the device reads of it (token ids, positions, cache slots, block tables,
//! logits rows) is packed on the host into one u32 vector and written by one copy into an
//! [`InputBuffer`]: persistent device memory that a server reuses step after step (grown
//! when a step needs more), so a step allocates no device memory for its metadata and
//! makes one host-to-device copy of it. The pieces are views into that memory.
//! (Still uploaded on their own: a step's LoRA slot table, built with the model's adapter
//! ranks, and the attention op's work lists, made from the host copies on first use.)

use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wick_kernels::{PagedAttentionMetadata, SlotMapping};

/// Persistent device memory for steps' metadata (see the module docs): one u32 tensor,
/// kept between steps and grown to fit. A step whose predecessor's [`ModelInput`] is still
/// alive gets fresh memory instead, so the views of a live input never change.
#[derive(Debug, Default)]
pub struct InputBuffer {
    current: Mutex<Option<Lent>>,
    allocations: AtomicUsize,
}

/// The buffer's tensor and the lease every input built in it holds.
#[derive(Debug)]
struct Lent {
    tensor: Tensor,
    lease: Arc<()>,
}

impl InputBuffer {
    /// An empty buffer; the first step allocates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device allocations made so far (steps that found the buffer too small, on another
    /// device, or still in use by a live input).
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Writes `data` (one copy) into memory on `device` of at least its length; returns
    /// the tensor, whose first `data.len()` elements hold it, and the lease to keep.
    fn write(&self, data: &[u32], device: &Device) -> Result<(Tensor, Arc<()>)> {
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let reusable = current.as_ref().filter(|l| {
            Arc::strong_count(&l.lease) == 1
                && l.tensor.elem_count() >= data.len()
                && l.tensor.device().same_device(device)
        });
        let lent = match reusable {
            Some(l) => Lent {
                tensor: l.tensor.clone(),
                lease: l.lease.clone(),
            },
            None => {
                // Room for growth: the next steps of a growing batch fit.
                let len = data.len().next_power_of_two().max(256);
                self.allocations.fetch_add(1, Ordering::Relaxed);
                Lent {
                    tensor: Tensor::zeros(len, DType::U32, device)?,
                    lease: Arc::new(()),
                }
            }
        };
        wick_kernels::write_u32(&lent.tensor, data)?;
        let out = (lent.tensor.clone(), lent.lease.clone());
        *current = Some(lent);
        Ok(out)
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone)]
pub struct SequenceChunk<'a> {
    /// Tokens to compute this step (a whole prompt, a chunk of it, or one decode token).
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache (they precede `tokens`).
    pub num_computed_tokens: usize,
    /// The sequence's blocks, in order; must cover `num_computed_tokens + tokens.len()`.
    pub block_table: &'a [u32],
    /// The model's adapter slot its tokens use (see `Model::set_lora`); `None`: the
    /// base model.
    pub lora_slot: Option<u32>,
    /// Whether the logits of its last token are wanted (a token is sampled after it);
    /// false for a chunk in the middle of a prompt, which never reaches `lm_head`.
    pub sample: bool,
}

/// The flattened batch for one forward pass.
#[derive(Debug)]
pub struct ModelInput {
    /// u32 `[num_tokens]`
    pub input_ids: Tensor,
    /// u32 `[num_tokens]`: each token's position in its sequence.
    pub positions: Tensor,
    /// The cache slot each token's K/V is written to (host copy and device tensor).
    pub slot_mapping: SlotMapping,
    /// Ragged-batch description for paged attention.
    pub attention: PagedAttentionMetadata,
    /// u32 `[num_sampled]`: row of the last token of each sequence with
    /// [`SequenceChunk::sample`], in batch order: the rows whose logits are returned.
    pub logits_indices: Tensor,
    /// Number of sequences with [`SequenceChunk::sample`] (rows of the logits).
    pub num_sampled: usize,
    /// Number of sequences in the batch.
    pub num_seqs: usize,
    /// Number of tokens in the batch.
    pub num_tokens: usize,
    /// Each token's adapter slot (-1: none), on the host; empty when no sequence uses an
    /// adapter.
    pub lora_slots: Vec<i32>,
    /// Held while the input lives: its device pieces are views into an [`InputBuffer`].
    _lease: Arc<()>,
}

impl ModelInput {
    /// Lays out `chunks` for a cache of `block_size`-token blocks on `device`, in device
    /// memory of its own (see [`ModelInput::build_in`] for a server's steps).
    pub fn build(chunks: &[SequenceChunk<'_>], block_size: usize, device: &Device) -> Result<Self> {
        Self::build_in(&InputBuffer::new(), chunks, block_size, device)
    }

    /// Lays out `chunks` for a cache of `block_size`-token blocks on `device`, its device
    /// pieces written by one copy into `buffer`.
    pub fn build_in(
        buffer: &InputBuffer,
        chunks: &[SequenceChunk<'_>],
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if chunks.is_empty() {
            return Err(ModelError::invalid("batch", "no sequences"));
        }
        if block_size == 0 {
            return Err(ModelError::invalid("batch", "block_size must be positive"));
        }
        let num_tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut input_ids = Vec::with_capacity(num_tokens);
        let mut positions = Vec::with_capacity(num_tokens);
        let mut slot_mapping = Vec::with_capacity(num_tokens);
        let mut cu_seqlens_q = Vec::with_capacity(chunks.len() + 1);
        let mut seq_lens = Vec::with_capacity(chunks.len());
        let mut logits_indices = Vec::with_capacity(chunks.len());
        let any_lora = chunks.iter().any(|c| c.lora_slot.is_some());
        let mut lora_slots = Vec::with_capacity(if any_lora { num_tokens } else { 0 });
        let max_blocks = chunks
            .iter()
            .map(|c| c.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut block_tables = vec![0u32; chunks.len() * max_blocks];
        cu_seqlens_q.push(0u32);
        for (s, c) in chunks.iter().enumerate() {
            if c.tokens.is_empty() {
                return Err(ModelError::invalid(
                    "batch",
                    format!("sequence {s} has no tokens"),
                ));
            }
            let seq_len = c.num_computed_tokens + c.tokens.len();
            if seq_len > c.block_table.len() * block_size {
                return Err(ModelError::invalid(
                    "batch",
                    format!(
                        "sequence {s}: {seq_len} tokens need {} blocks, block table has {}",
                        seq_len.div_ceil(block_size),
                        c.block_table.len()
                    ),
                ));
            }
            for (j, &tok) in c.tokens.iter().enumerate() {
                let pos = c.num_computed_tokens + j;
                input_ids.push(tok);
                positions.push(pos as u32);
                let block = c.block_table[pos / block_size] as i64;
                slot_mapping.push(block * block_size as i64 + (pos % block_size) as i64);
            }
            if any_lora {
                let slot = c.lora_slot.map_or(-1, |s| s as i32);
                lora_slots.extend(std::iter::repeat_n(slot, c.tokens.len()));
            }
            block_tables[s * max_blocks..s * max_blocks + c.block_table.len()]
                .copy_from_slice(c.block_table);
            let end = input_ids.len() as u32;
            cu_seqlens_q.push(end);
            seq_lens.push(seq_len as u32);
            if c.sample {
                logits_indices.push(end - 1);
            }
        }
        let num_seqs = chunks.len();
        let num_sampled = logits_indices.len();
        // One upload: [ids | positions | slots | block tables | logits rows].
        let device_slots = SlotMapping::device_slots(&slot_mapping)?;
        let lens = [
            num_tokens,
            num_tokens,
            num_tokens,
            block_tables.len(),
            num_sampled,
        ];
        let mut packed = Vec::with_capacity(lens.iter().sum());
        for piece in [
            &input_ids,
            &positions,
            &device_slots,
            &block_tables,
            &logits_indices,
        ] {
            packed.extend_from_slice(piece);
        }
        let (memory, lease) = buffer.write(&packed, device)?;
        let mut pieces = Vec::with_capacity(lens.len());
        let mut start = 0;
        for len in lens {
            pieces.push(memory.narrow(0, start, len)?);
            start += len;
        }
        let [ids_t, positions_t, slots_t, tables_t, logits_t] = <[Tensor; 5]>::try_from(pieces)
            .map_err(|_| ModelError::invalid("batch", "five pieces"))?;
        Ok(Self {
            input_ids: ids_t,
            positions: positions_t,
            slot_mapping: SlotMapping::from_parts(slot_mapping, slots_t)?,
            attention: PagedAttentionMetadata::from_parts(
                block_tables,
                max_blocks,
                cu_seqlens_q,
                seq_lens,
                tables_t.reshape((num_seqs, max_blocks))?,
            )?,
            logits_indices: logits_t,
            num_sampled,
            num_seqs,
            num_tokens,
            lora_slots,
            _lease: lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk<'a>(tokens: &'a [u32], table: &'a [u32], sample: bool) -> SequenceChunk<'a> {
        SequenceChunk {
            tokens,
            num_computed_tokens: 0,
            block_table: table,
            lora_slot: None,
            sample,
        }
    }

    #[test]
    fn only_sampled_sequences_get_a_logits_row() {
        let (a, b, c) = ([1, 2, 3], [4, 5], [6]);
        let chunks = [
            chunk(&a, &[0], true),
            chunk(&b, &[1], false), // a prompt chunk mid-way
            chunk(&c, &[2], true),
        ];
        let input = ModelInput::build(&chunks, 4, &Device::Cpu).unwrap();
        assert_eq!((input.num_seqs, input.num_sampled), (3, 2));
        assert_eq!(input.logits_indices.to_vec1::<u32>().unwrap(), [2, 5]);

        let none = ModelInput::build(&chunks[1..2], 4, &Device::Cpu).unwrap();
        assert_eq!(none.num_sampled, 0);
        assert_eq!(none.logits_indices.dims(), [0]);
    }

    fn ids(input: &ModelInput) -> Vec<u32> {
        input.input_ids.to_vec1::<u32>().unwrap()
    }

    #[test]
    fn one_buffer_serves_step_after_step_and_never_changes_a_live_input() {
        let dev = Device::Cpu;
        let buffer = InputBuffer::new();
        let (a, b) = ([1, 2, 3], [7]);
        let first = ModelInput::build_in(&buffer, &[chunk(&a, &[0], true)], 4, &dev).unwrap();
        assert_eq!(buffer.allocations(), 1);
        let want_slots = first.slot_mapping.tensor().to_vec1::<u32>().unwrap();
        assert_eq!(want_slots, [0, 1, 2]);
        drop(first);
        // The previous input is gone: the next step reuses the memory.
        let second = ModelInput::build_in(&buffer, &[chunk(&b, &[3], true)], 4, &dev).unwrap();
        assert_eq!(buffer.allocations(), 1);
        assert_eq!(ids(&second), [7]);
        assert_eq!(second.positions.to_vec1::<u32>().unwrap(), [0]);
        assert_eq!(second.slot_mapping.tensor().to_vec1::<u32>().unwrap(), [12]);
        assert_eq!(second.logits_indices.to_vec1::<u32>().unwrap(), [0]);
        // While it lives, a third step gets memory of its own and `second` keeps its values.
        let third = ModelInput::build_in(&buffer, &[chunk(&a, &[1], false)], 4, &dev).unwrap();
        assert_eq!(buffer.allocations(), 2);
        assert_eq!((ids(&second), ids(&third)), (vec![7], vec![1, 2, 3]));
        drop((second, third));
        // A step larger than the memory grows it; padding slots go to the device as MAX.
        let long: Vec<u32> = (0..300).collect();
        let table: Vec<u32> = (0..75).collect();
        let big = ModelInput::build_in(&buffer, &[chunk(&long, &table, true)], 4, &dev).unwrap();
        assert_eq!(buffer.allocations(), 3);
        assert_eq!(ids(&big), long);
        assert_eq!(big.attention.block_table(0), &table[..]);
        let mapping = SlotMapping::device_slots(&[5, -1]).unwrap();
        assert_eq!(mapping, [5, u32::MAX]);
        assert!(SlotMapping::device_slots(&[-2]).is_err());
    }
}
