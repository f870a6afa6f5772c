//! One step's batch as the model sees it: every scheduled sequence's new tokens flattened
//! into one ragged batch, with the positions, cache slots and block tables the attention op
//! needs. Built from plain per-sequence data, so the engine's runner and the tests share
//! one way of laying a batch out.
//!
//! Everything the device reads of it (token ids, positions, cache slots, block tables,
//! logits rows, adapter slots) is packed on the host into one u32 vector and written by one
//! copy into an [`InputBuffer`]: persistent device memory that a server reuses step after
//! step (grown when a step needs more), so a step allocates no device memory for its
//! metadata and makes one host-to-device copy of it. The pieces are views into that memory,
//! the attention op's work lists included (made once for every layer). The adapters' ranks
//! are the model's, kept on the device between steps.
//!
//! A decode step can also be laid out in a fixed [`GraphShape`] ([`ModelInput::build_padded`]):
//! padded with dummy sequences to a bucket's number of rows, block tables of a fixed width
//! and a fixed number of attention partitions, so that every step of one shape has the same
//! sizes, the same launch shapes and its pieces at the same places: what a CUDA graph
//! captured from one step needs to replay another.

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

    /// Allocates memory on `device` for steps of up to `len` packed values now (see
    /// [`ModelInput::packed_len`]), so that no step of a server allocates for its metadata;
    /// nothing when the buffer already has that much there.
    pub fn reserve(&self, len: usize, device: &Device) -> Result<()> {
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fits = (current.as_ref())
            .is_some_and(|l| l.tensor.elem_count() >= len && l.tensor.device().same_device(device));
        if !fits {
            self.allocations.fetch_add(1, Ordering::Relaxed);
            *current = Some(Lent {
                tensor: Tensor::zeros(len.max(1), DType::U32, device)?,
                lease: Arc::new(()),
            });
        }
        Ok(())
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
                // Room for growth: the next steps of a growing batch fit (a server reserves its
                // largest step at start instead).
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

/// The fixed shape of a padded decode step ([`ModelInput::build_padded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GraphShape {
    /// Rows (sequences, one token each), real and dummy.
    pub seqs: usize,
    /// Partitions of the attention row kernel's grid (see
    /// [`PagedAttentionMetadata::partitions`]): a power of two.
    pub partitions: usize,
    /// Entries of every block table row: the blocks of the context those partitions span.
    pub table_width: usize,
    /// Whether a sequence uses an adapter: the step carries a slot per token (dummies on
    /// none) and runs the LoRA kernels; steps with and without are different shapes.
    pub lora: bool,
}

/// Batch sizes a padded decode step is rounded up to (vLLM's capture sizes up to 256).
pub const GRAPH_BATCH_SIZES: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

impl GraphShape {
    /// The shape a decode step of `chunks` over `block_size`-token blocks is padded to:
    /// the smallest batch size of [`GRAPH_BATCH_SIZES`] that holds them, and the
    /// partitions of the longest context rounded up to a power of two, with block tables
    /// as wide as that context needs, and whether adapters are used. So a server meets at
    /// most 9 batch sizes times one partition count per doubling of its context (times two
    /// with adapters). `None` when the step is not a decode step a graph can serve: empty, a
    /// sequence with other than one token or without a sampled row, or more sequences than
    /// the largest size.
    pub fn for_decode(chunks: &[SequenceChunk<'_>], block_size: usize) -> Option<Self> {
        let seqs = *GRAPH_BATCH_SIZES.iter().find(|&&b| b >= chunks.len())?;
        let mut longest = 0;
        for c in chunks {
            if c.tokens.len() != 1 || !c.sample {
                return None;
            }
            longest = longest.max(c.num_computed_tokens + 1);
        }
        if chunks.is_empty() || block_size == 0 {
            return None;
        }
        let partitions = PagedAttentionMetadata::partitions(longest).next_power_of_two();
        let keys = partitions * PagedAttentionMetadata::PARTITION_KEYS;
        Some(Self {
            seqs,
            partitions,
            table_width: keys.div_ceil(block_size),
            lora: chunks.iter().any(|c| c.lora_slot.is_some()),
        })
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
    /// adapter (and no [`GraphShape::lora`] asks for them).
    pub lora_slots: Vec<i32>,
    /// u32 `[num_tokens]`: the same slots as the LoRA kernels read them
    /// ([`wick_kernels::LoraBatch::device_slots`]); `None` when `lora_slots` is empty.
    pub lora_slots_device: Option<Tensor>,
    /// The padded decode shape it was laid out in ([`ModelInput::build_padded`]); `None`
    /// for a step laid out as it is.
    pub graph_shape: Option<GraphShape>,
    /// Held while the input lives: the buffer does not rewrite its memory meanwhile.
    _lease: Arc<()>,
}

impl ModelInput {
    /// The most u32 values a step of up to `max_tokens` tokens in `max_seqs` sequences
    /// whose block tables have up to `max_table_width` entries packs into its upload (the
    /// size to [`InputBuffer::reserve`]).
    pub fn packed_len(max_tokens: usize, max_seqs: usize, max_table_width: usize) -> usize {
        // ids, positions, slots, adapter slots, row items (4 per token), tiles (4 per tile of
        // up to 64 rows of a sequence: at most one per 9 tokens); block tables; logits rows.
        8 * max_tokens + 4 * max_tokens.div_ceil(9) + max_seqs * max_table_width.max(1) + max_seqs
    }

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
        Self::build_with(buffer, chunks, block_size, device, None)
    }

    /// Lays out the decode step `chunks` in `shape` (see [`GraphShape::for_decode`]),
    /// written by one copy into `buffer`: after the real sequences come dummy ones (token
    /// 0 at position 0, block table all block 0, no cache write) up to `shape.seqs`, each
    /// with a logits row (ignored by the caller: the real sequences' rows come first and
    /// are the same as unpadded, rows being independent). Steps of one shape built in one
    /// buffer put every piece at the same offset of the same memory (while no earlier
    /// input is alive: see [`InputBuffer`]). Errors if `chunks` do not fit `shape`
    /// (adapters included: used exactly when `shape.lora`).
    pub fn build_padded(
        buffer: &InputBuffer,
        chunks: &[SequenceChunk<'_>],
        block_size: usize,
        device: &Device,
        shape: GraphShape,
    ) -> Result<Self> {
        if GraphShape::for_decode(chunks, block_size).is_none_or(|s| {
            s.seqs > shape.seqs || s.partitions > shape.partitions || s.lora != shape.lora
        }) {
            return Err(ModelError::invalid(
                "batch",
                format!("this step does not fit the padded decode shape {shape:?}"),
            ));
        }
        let dummy = SequenceChunk {
            tokens: &[0],
            num_computed_tokens: 0,
            block_table: &[0],
            lora_slot: None,
            sample: true,
        };
        let mut padded = chunks.to_vec();
        padded.resize(shape.seqs, dummy);
        Self::build_with(
            buffer,
            &padded,
            block_size,
            device,
            Some((shape, chunks.len())),
        )
    }

    /// [`Self::build_in`], or with `padded = Some((shape, real))` the layout of
    /// [`Self::build_padded`] where `chunks[real..]` are the dummy sequences.
    fn build_with(
        buffer: &InputBuffer,
        chunks: &[SequenceChunk<'_>],
        block_size: usize,
        device: &Device,
        padded: Option<(GraphShape, usize)>,
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
        let any_lora = match padded {
            Some((shape, _)) => shape.lora,
            None => chunks.iter().any(|c| c.lora_slot.is_some()),
        };
        let mut lora_slots = Vec::with_capacity(if any_lora { num_tokens } else { 0 });
        let max_blocks = match padded {
            Some((shape, _)) => shape.table_width,
            None => (chunks.iter().map(|c| c.block_table.len()).max())
                .unwrap_or(0)
                .max(1),
        };
        let real = padded.map_or(chunks.len(), |(_, real)| real);
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
                slot_mapping.push(match s < real {
                    true => block * block_size as i64 + (pos % block_size) as i64,
                    false => -1, // a dummy sequence writes nothing
                });
            }
            if any_lora {
                let slot = c.lora_slot.map_or(-1, |s| s as i32);
                lora_slots.extend(std::iter::repeat_n(slot, c.tokens.len()));
            }
            // A padded row keeps the blocks its context needs (later ones are never read).
            let used = c.block_table.len().min(max_blocks);
            if used < seq_len.div_ceil(block_size) {
                return Err(ModelError::invalid(
                    "batch",
                    format!(
                        "sequence {s}: {seq_len} tokens exceed the padded table of {used} blocks"
                    ),
                ));
            }
            block_tables[s * max_blocks..s * max_blocks + used]
                .copy_from_slice(&c.block_table[..used]);
            let end = input_ids.len() as u32;
            cu_seqlens_q.push(end);
            seq_lens.push(seq_len as u32);
            if c.sample {
                logits_indices.push(end - 1);
            }
        }
        let num_seqs = chunks.len();
        let num_sampled = logits_indices.len();
        // The attention op's work lists, made once for every layer.
        let lists = PagedAttentionMetadata::work_lists(&cu_seqlens_q, &seq_lens);
        // One upload: [ids | positions | slots | block tables | logits rows | row items |
        // tiles | adapter slots].
        let device_slots = SlotMapping::device_slots(&slot_mapping)?;
        let device_lora_slots = wick_kernels::LoraBatch::device_slots(&lora_slots);
        let lens = [
            num_tokens,
            num_tokens,
            num_tokens,
            block_tables.len(),
            num_sampled,
            lists.rows.len(),
            lists.tiles.len(),
            device_lora_slots.len(),
        ];
        let mut packed = Vec::with_capacity(lens.iter().sum());
        for piece in [
            &input_ids,
            &positions,
            &device_slots,
            &block_tables,
            &logits_indices,
            &lists.rows,
            &lists.tiles,
            &device_lora_slots,
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
        let [ids_t, positions_t, slots_t, tables_t, logits_t, rows_t, tiles_t, lora_t] =
            <[Tensor; 8]>::try_from(pieces).map_err(|_| ModelError::invalid("batch", "pieces"))?;
        let attention = PagedAttentionMetadata::from_parts(
            block_tables,
            max_blocks,
            cu_seqlens_q,
            seq_lens,
            tables_t.reshape((num_seqs, max_blocks))?,
        )?;
        let partitions = match padded {
            Some((shape, _)) => shape.partitions,
            None => PagedAttentionMetadata::partitions(attention.max_seq_len()),
        };
        let attention = attention.with_work_lists(rows_t, tiles_t, partitions)?;
        Ok(Self {
            input_ids: ids_t,
            positions: positions_t,
            slot_mapping: SlotMapping::from_parts(slot_mapping, slots_t)?,
            attention,
            logits_indices: logits_t,
            num_sampled,
            num_seqs,
            num_tokens,
            lora_slots_device: (!lora_slots.is_empty()).then_some(lora_t),
            lora_slots,
            graph_shape: padded.map(|(shape, _)| shape),
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

    #[test]
    fn memory_reserved_for_the_largest_step_serves_every_step() {
        let dev = Device::Cpu;
        let buffer = InputBuffer::new();
        // Up to 300 tokens in up to 4 sequences of up to 75 blocks.
        buffer
            .reserve(ModelInput::packed_len(300, 4, 75), &dev)
            .unwrap();
        buffer.reserve(10, &dev).unwrap(); // already there: nothing allocated
        assert_eq!(buffer.allocations(), 1);
        let long: Vec<u32> = (0..297).collect();
        let table: Vec<u32> = (0..75).collect();
        let (one, short) = ([5], [6, 7]);
        let chunks = [
            chunk(&long, &table, true),
            chunk(&one, &[75], true),
            chunk(&short, &[76], false),
        ];
        for step in [&chunks[..], &chunks[1..2]] {
            let input = ModelInput::build_in(&buffer, step, 4, &dev).unwrap();
            assert_eq!(input.num_seqs, step.len());
        }
        assert_eq!(buffer.allocations(), 1);
    }

    #[test]
    fn a_padded_decode_step_has_dummy_rows_after_the_real_ones() {
        let dev = Device::Cpu;
        let (a, b): (&'static [u32], &'static [u32]) = (&[11], &[12]);
        let decode = |tokens: &'static [u32], computed, table: &'static [u32]| SequenceChunk {
            tokens,
            num_computed_tokens: computed,
            block_table: table,
            lora_slot: None,
            sample: true,
        };
        let chunks = [decode(a, 5, &[3, 4]), decode(b, 0, &[9])];
        // Shapes: batch sizes round up; partitions and table width follow the longest context.
        let shape = GraphShape::for_decode(&chunks, 4).unwrap();
        let want = GraphShape {
            seqs: 2,
            partitions: 1,
            table_width: 64,
            lora: false,
        };
        assert_eq!(shape, want);
        let three = [chunks[0].clone(), chunks[1].clone(), chunks[1].clone()];
        assert_eq!(GraphShape::for_decode(&three, 4).map(|s| s.seqs), Some(4));
        let deep = [decode(a, 600, &[0; 151])];
        let deep = GraphShape::for_decode(&deep, 4).unwrap();
        assert_eq!((deep.partitions, deep.table_width), (4, 256));
        let not_decode = [chunk(&[1, 2], &[0], true), chunk(&[1], &[0], false)];
        for c in not_decode {
            assert_eq!(GraphShape::for_decode(&[c], 4), None);
        }
        let many = vec![chunks[1].clone(); 257];
        assert_eq!(GraphShape::for_decode(&many, 4), None);

        let buffer = InputBuffer::new();
        let four = GraphShape { seqs: 4, ..shape };
        let input = ModelInput::build_padded(&buffer, &chunks, 4, &dev, four).unwrap();
        assert_eq!(
            (input.num_seqs, input.num_tokens, input.num_sampled),
            (4, 4, 4)
        );
        assert_eq!(ids(&input), [11, 12, 0, 0]);
        assert_eq!(input.positions.to_vec1::<u32>().unwrap(), [5, 0, 0, 0]);
        let slots = input.slot_mapping.tensor().to_vec1::<u32>().unwrap();
        assert_eq!(slots, [4 * 4 + 1, 9 * 4, u32::MAX, u32::MAX]);
        assert_eq!(input.attention.block_table(0)[..3], [3, 4, 0]);
        assert_eq!(input.attention.block_table(3), &[0; 64][..]);
        assert_eq!(input.attention.seq_lens(), [6, 1, 1, 1]);
        assert_eq!(input.logits_indices.to_vec1::<u32>().unwrap(), [0, 1, 2, 3]);
        assert_eq!(input.graph_shape, Some(four));
        // A step built while the previous input lives gets other memory (a graph
        // captured over the first would read stale values: the runner recaptures).
        assert_eq!(buffer.allocations(), 1);
        let next = ModelInput::build_padded(&buffer, &chunks[..1], 4, &dev, four).unwrap();
        assert_eq!(buffer.allocations(), 2);
        drop((input, next));
        for step in [&chunks[..1], &chunks[..]] {
            ModelInput::build_padded(&buffer, step, 4, &dev, four).unwrap();
        }
        assert_eq!(buffer.allocations(), 2);
        // Refused: a step the shape cannot hold.
        let one = GraphShape { seqs: 1, ..shape };
        assert!(ModelInput::build_padded(&buffer, &chunks, 4, &dev, one).is_err());
    }
}
