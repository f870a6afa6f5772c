//! The runner: a step's scheduled sequences (plain data) become one flattened model input, one
//! forward pass over the paged cache, and the logits rows of the sequences to sample, which
//! the sampling op turns into tokens where they are. The three are separate calls so that
//! the engine can time each phase of a step: [`ModelRunner::prepare`],
//! [`ModelRunner::forward`], [`ModelRunner::sample`].
//!
//! With graphs on ([`ModelRunner::enable_graphs`], `wick serve --cuda-graphs`), a decode
//! step is padded to a [`GraphShape`] and laid out in that shape's own input memory; the
//! first step of a shape is captured as a [`StepGraph`], later ones replay it (on CUDA one
//! graph launch; on the CPU, the twin the tests run, the same step rerun into the same
//! output memory). Decode steps with adapters are shapes of their own, whose graphs are
//! dropped whenever an adapter is loaded or unloaded (the adapters' device memory may move);
//! steps with prefills or more than 256 sequences run as they are.

use crate::kv::SeqId;
use crate::scheduler::ScheduledSeq;
use candle_core::Tensor;
use std::collections::HashMap;
use wick_kernels::{SampledToken, SamplingBatch, StepGraph};
use wick_models::{GraphShape, InputBuffer, KvCache, Model, ModelInput, SequenceChunk};

/// Owns the model, its KV cache storage and the device memory steps' inputs are written to.
pub struct ModelRunner {
    model: Model,
    cache: KvCache,
    inputs: InputBuffer,
    /// Captured decode steps by shape; `None`: graphs off.
    graphs: Option<HashMap<GraphShape, ShapeGraph>>,
    /// The logits memory graphs of each batch size share (one step runs at a time).
    graph_outputs: HashMap<usize, Tensor>,
    /// Steps run through a graph (captures and replays).
    graph_steps: u64,
}

/// One padded decode shape: its input memory and the step captured over it.
#[derive(Default)]
struct ShapeGraph {
    inputs: InputBuffer,
    /// The graph, and the buffer's allocation count when it was captured: if the buffer
    /// has allocated since (a step was built while an earlier input lived), the graph reads
    /// memory that is no longer the inputs' and is captured again.
    captured: Option<(StepGraph, usize)>,
}

/// A step's logits where the model left them: `[rows, vocab]` f32, one row per
/// scheduled sequence with `sample` set, in batch order.
pub struct StepLogits {
    logits: Tensor,
    rows: Vec<SeqId>,
}

impl StepLogits {
    /// The sequence of each logits row.
    pub fn rows(&self) -> &[SeqId] {
        &self.rows
    }

    /// The vocabulary size (the rows' length).
    pub fn vocab(&self) -> usize {
        self.logits.dims().last().copied().unwrap_or(0)
    }
}

impl ModelRunner {
    /// A runner over `model` and its `cache`.
    pub fn new(model: Model, cache: KvCache) -> Self {
        Self {
            model,
            cache,
            inputs: InputBuffer::new(),
            graphs: None,
            graph_outputs: HashMap::new(),
            graph_steps: 0,
        }
    }

    /// Allocates the input memory of the largest step the scheduler can make now: up to
    /// `max_tokens` tokens in `max_seqs` sequences of up to `max_model_len` tokens.
    pub fn reserve_inputs(
        &self,
        max_tokens: usize,
        max_seqs: usize,
        max_model_len: usize,
    ) -> wick_models::Result<()> {
        let width = max_model_len.div_ceil(self.cache.block_size);
        let len = ModelInput::packed_len(max_tokens, max_seqs.min(max_tokens), width);
        self.inputs.reserve(len, self.model.device())
    }

    /// Turns on captured decode steps (see the module docs).
    pub fn enable_graphs(&mut self) {
        self.graphs.get_or_insert_with(HashMap::new);
    }

    /// Steps run through a graph so far (captures and replays).
    pub fn graph_steps(&self) -> u64 {
        self.graph_steps
    }

    /// Shapes captured so far, smallest first.
    pub fn graph_shapes(&self) -> Vec<GraphShape> {
        let mut shapes: Vec<GraphShape> = (self.graphs.iter().flat_map(|g| g.iter()))
            .filter(|(_, g)| g.captured.is_some())
            .map(|(&shape, _)| shape)
            .collect();
        shapes.sort();
        shapes
    }

    /// Lays `seqs` out as one model input on the model's device, written by one copy into
    /// the runner's persistent input memory. Only sequences with `sample` set get a logits
    /// row; a prompt chunk mid-way never reaches `lm_head`. With graphs on, a decode step
    /// is padded to its shape, in that shape's memory. Its logits (from [`Self::forward`])
    /// then live in memory the next step through a graph rewrites: sample them first.
    pub fn prepare(&mut self, seqs: &[&ScheduledSeq]) -> wick_models::Result<ModelInput> {
        self.prepare_as(seqs, self.graphs.is_some())
    }

    /// [`Self::prepare`], through graphs only if `graphs`.
    fn prepare_as(
        &mut self,
        seqs: &[&ScheduledSeq],
        graphs: bool,
    ) -> wick_models::Result<ModelInput> {
        let chunks: Vec<SequenceChunk<'_>> = seqs
            .iter()
            .map(|s| SequenceChunk {
                tokens: &s.token_ids,
                num_computed_tokens: s.num_computed_tokens,
                block_table: &s.block_table,
                lora_slot: s.lora_slot,
                sample: s.sample,
            })
            .collect();
        let (block_size, device) = (self.cache.block_size, self.model.device());
        if let Some(graphs) = self.graphs.as_mut().filter(|_| graphs) {
            if let Some(shape) = GraphShape::for_decode(&chunks, block_size) {
                let graph = graphs.entry(shape).or_default();
                return ModelInput::build_padded(&graph.inputs, &chunks, block_size, device, shape);
            }
        }
        ModelInput::build_in(&self.inputs, &chunks, block_size, device)
    }

    /// One forward pass over `input` (laid out from `seqs` by [`Self::prepare`]); waits
    /// for the device, so that the time of this call is the forward pass's.
    pub fn forward(
        &mut self,
        seqs: &[&ScheduledSeq],
        input: &ModelInput,
    ) -> wick_models::Result<StepLogits> {
        let logits = match input.graph_shape {
            Some(shape) => {
                let logits = self.forward_graph(shape, input)?;
                if self.graphs.is_some() {
                    self.graph_steps += 1;
                }
                logits
            }
            None => self.model.forward(input, &mut self.cache)?,
        };
        self.model.device().synchronize()?;
        let rows: Vec<SeqId> = seqs.iter().filter(|s| s.sample).map(|s| s.seq).collect();
        // A padded step's dummy rows come after the real ones.
        let logits = match logits.dim(0)? > rows.len() {
            true => logits.narrow(0, 0, rows.len())?,
            false => logits,
        };
        Ok(StepLogits { logits, rows })
    }

    /// A padded decode step: the replay of its shape's graph, captured now if there is
    /// none (or its memory moved). A capture that fails turns graphs off, with a warning,
    /// and the step runs as it is (padded: a valid batch).
    fn forward_graph(
        &mut self,
        shape: GraphShape,
        input: &ModelInput,
    ) -> wick_models::Result<Tensor> {
        let Self {
            model,
            cache,
            graphs,
            graph_outputs,
            ..
        } = self;
        let Some(graph) = graphs.as_mut().and_then(|g| g.get_mut(&shape)) else {
            return model.forward(input, cache);
        };
        let allocations = graph.inputs.allocations();
        let replay = graph.captured.as_ref().filter(|(_, at)| *at == allocations);
        if replay.is_some() {
            // The graph skips the forward pass's host checks: make them here.
            model.check_input(input, cache)?;
        }
        let mut step = || (model.forward(input, cache)).map_err(candle_core::Error::wrap);
        if let Some((captured, _)) = replay {
            return Ok(captured.replay(step)?);
        }
        let output = graph_outputs.get(&shape.seqs).cloned();
        match StepGraph::capture(model.device(), output, &mut step) {
            Ok((captured, logits)) => {
                tracing::debug!(?shape, "decode step captured");
                let output = captured.output().clone();
                graph_outputs.entry(shape.seqs).or_insert(output);
                graph.captured = Some((captured, allocations));
                Ok(logits)
            }
            Err(e) => {
                tracing::warn!(error = %e, ?shape, "cannot capture a decode step; graphs off");
                *graphs = None;
                model.forward(input, cache)
            }
        }
    }

    /// Draws one token per row of `step` as `batch` (one row each, in order) describes,
    /// where the logits are; only the tokens and requested logprobs reach the host.
    pub fn sample(
        step: &StepLogits,
        batch: &SamplingBatch,
    ) -> wick_models::Result<Vec<SampledToken>> {
        Ok(wick_kernels::sample(&step.logits, batch)?)
    }

    /// [`Self::prepare`] and [`Self::forward`] in one call, never through a graph: its
    /// caller may hold several results at once (the engine's one-by-one retry of a failed
    /// batch), which graphs' shared output memory would overwrite; and a step that failed
    /// in a graph is retried without one.
    pub fn run(&mut self, seqs: &[&ScheduledSeq]) -> wick_models::Result<StepLogits> {
        let input = self.prepare_as(seqs, false)?;
        self.forward(seqs, &input)
    }

    /// Copies `adapter` into the model's LoRA `slot` (`None` empties it). Graphs of steps
    /// with adapters are dropped (captured again when next needed): they read the adapters'
    /// weights and rank table where they were, which this may reallocate.
    pub fn load_lora(
        &mut self,
        slot: u32,
        adapter: Option<&wick_models::LoraAdapter>,
    ) -> wick_models::Result<()> {
        if let Some(graphs) = self.graphs.as_mut() {
            for graph in (graphs.iter_mut()).filter_map(|(s, g)| s.lora.then_some(g)) {
                graph.captured = None;
            }
        }
        self.model.set_lora(slot as usize, adapter)
    }
}
