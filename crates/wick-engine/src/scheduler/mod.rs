//! The token-budget scheduler, vLLM v1 style: no prefill or decode phases, only each
//! sequence's `num_computed_tokens` against its known tokens, filled into a per-step
//! budget of `max_num_batched_tokens`.
//!
//! Owns every unfinished [`Sequence`] and the [`KvCacheManager`]. A step is
//! [`Scheduler::schedule`] -> run the model on the [`SchedulerOutput`] -> sample ->
//! [`Scheduler::update_from_output`], which appends the sampled tokens and applies every
//! stop rule (eos, stop token ids, min_tokens, max_tokens, the context length; see
//! [`StopConfig`]) in one place. Only stop strings, which need text, end a sequence from
//! outside ([`Scheduler::finish`]).
//!
//! Policy: running sequences first, in arrival order, each getting the rest of its known
//! tokens (1 when decoding) up to the budget; then waiting ones in arrival order, with
//! prefix-cache hits skipped and a chunk of the prompt when the budget is short, while
//! budget, `max_num_seqs` and blocks last (no admission in a step that preempted). When a
//! running sequence finds no blocks, the latest-arrived running sequence is preempted by
//! recompute (blocks freed, `num_computed_tokens = 0`, output kept, back to waiting ahead
//! of newer ones), possibly itself.
//!
//! Invariants (checked by [`Scheduler::check_invariants`]): `running` and `waiting` are
//! ordered by arrival and hold every unfinished sequence once; a running sequence's
//! block table covers its computed tokens and it has at least one token left to compute;
//! a waiting one holds no blocks. Admission guarantees a lone sequence fits the cache, so
//! the earliest running sequence always progresses: no deadlock, and since waiting ones
//! are admitted strictly in arrival order, no starvation.

mod lora_slots;
mod output;
mod sequence;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lora;
#[cfg(test)]
mod tests_prop;

pub use lora_slots::{LoraId, LoraSlots};
pub use output::check_context;
pub use output::{ScheduledSeq, SchedulerConfig, SchedulerOutput, SchedulerStats, SeqUpdate};
pub use sequence::{SeqStatus, Sequence, StopConfig};

pub use crate::kv::SeqId;

use std::collections::{HashMap, VecDeque};

use wick_core::{ErrorKind, FinishReason, RequestId, WickError};

use crate::kv::{KvCacheManager, PrefixHit};

/// The scheduler. See the module docs for its policy and invariants.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    seqs: HashMap<SeqId, Sequence>,
    /// By arrival; preempted sequences come back in order, ahead of newer ones.
    waiting: VecDeque<SeqId>,
    /// By arrival.
    running: Vec<SeqId>,
    next_arrival: u64,
    num_preemptions: u64,
    lora_slots: LoraSlots,
}

impl Scheduler {
    /// A scheduler over an empty cache; fails when a limit of `config` is unusable.
    pub fn new(config: SchedulerConfig) -> Result<Self, WickError> {
        config.validate()?;
        let num_blocks = u32::try_from(config.num_blocks)
            .map_err(|_| WickError::invalid_param("num_blocks", "too large"))?;
        Ok(Self {
            kv: KvCacheManager::new(num_blocks, config.block_size, config.enable_prefix_caching),
            lora_slots: LoraSlots::new(config.max_loras),
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_arrival: 0,
            num_preemptions: 0,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The KV cache bookkeeping (block tables, counters).
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Queues `seq` behind every earlier one. Refuses, before queuing, an empty prompt or
    /// `max_tokens == 0` (`InvalidRequest`), prompt + max_tokens beyond `max_model_len` or
    /// beyond the whole cache (`TooLong` from [`check_context`], which no waiting can
    /// cure), or an id already queued (`Internal`).
    pub fn add_request(&mut self, mut seq: Sequence) -> Result<(), WickError> {
        let prompt = seq.num_tokens();
        if prompt == 0 {
            return Err(WickError::new(
                ErrorKind::InvalidRequest,
                "the prompt is empty",
            ));
        }
        if seq.max_tokens == 0 {
            return Err(WickError::invalid_param("max_tokens", "must be at least 1"));
        }
        if seq.lora.is_some() && self.lora_slots.is_empty() {
            return Err(WickError::invalid_param(
                "model",
                "LoRA adapters are not enabled on this server",
            ));
        }
        self.config.check_context(prompt, seq.max_tokens)?;
        if self.seqs.contains_key(&seq.id) {
            return Err(WickError::internal(format!("{} is already queued", seq.id)));
        }
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        seq.status = SeqStatus::Waiting;
        seq.num_computed_tokens = 0;
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
        Ok(())
    }

    /// Plans one step (see the module docs for the policy). Empty when nothing is
    /// unfinished. Blocks for the step are allocated, and filled blocks registered for
    /// prefix hits, before this returns.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        self.lora_slots.tick();
        self.schedule_running(&mut budget, &mut out);
        if out.preempted.is_empty() {
            self.schedule_waiting(&mut budget, &mut out);
        }
        out.total_num_scheduled_tokens = self.config.max_num_batched_tokens - budget;
        out
    }

    /// Running sequences, by arrival, while the budget lasts; preempts the newest when
    /// blocks run out.
    fn schedule_running(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            match self.try_schedule_running(self.running[i], *budget) {
                Ok(entry) => {
                    if let Some(entry) = entry {
                        *budget -= entry.token_ids.len();
                        out.scheduled.push(entry);
                    }
                    i += 1;
                }
                // Out of blocks: preempt the newest (maybe this one: then `i` is past
                // the end) and retry.
                Err(()) => {
                    let Some(victim) = self.running.pop() else {
                        break;
                    };
                    self.preempt(victim);
                    out.preempted.push(victim);
                }
            }
        }
    }

    /// Allocates running `id`'s next tokens within `budget`: `Ok(None)` when it has none
    /// to compute, `Err(())` when the free blocks do not suffice.
    fn try_schedule_running(
        &mut self,
        id: SeqId,
        budget: usize,
    ) -> Result<Option<ScheduledSeq>, ()> {
        let Some(seq) = self.seqs.get(&id) else {
            return Ok(None); // unreachable: finish() removes it from both
        };
        let done = seq.num_computed_tokens;
        let n = chunk(&self.config, seq.num_tokens() - done, budget);
        if n == 0 {
            return Ok(None);
        }
        let hit = PrefixHit::none();
        // A running sequence's adapter is resident: nothing evicts an adapter in use.
        let slot = seq.lora.and_then(|l| self.lora_slots.lookup(l));
        match (self.kv).allocate_slots(id, &seq.token_ids, seq.extra_key, done, n, &hit) {
            Some(table) => Ok(Some(scheduled(seq, n, table, slot))),
            None => Err(()),
        }
    }

    /// Waiting sequences, by arrival, while budget, `max_num_seqs` and blocks last. A
    /// sequence whose LoRA adapter can get no slot (every slot busy) is passed over, and
    /// later ones may start meanwhile; anything else stops admission for this step.
    fn schedule_waiting(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        let mut i = 0;
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&id) = self.waiting.get(i) else {
                break;
            };
            let Some(seq) = self.seqs.get(&id) else {
                self.waiting.remove(i); // unreachable: finish() removes it from both
                continue;
            };
            let (tokens, extra) = (&seq.token_ids, seq.extra_key);
            let hit = self.kv.get_computed_blocks(tokens, extra);
            let n = chunk(&self.config, tokens.len() - hit.num_tokens(), *budget);
            let slot = match seq.lora {
                None => None,
                Some(lora) => {
                    let (seqs, running) = (&self.seqs, &self.running);
                    let in_use = |l| {
                        running
                            .iter()
                            .any(|r| seqs.get(r).is_some_and(|s| s.lora == Some(l)))
                    };
                    let Some(planned) = self.lora_slots.plan(lora, in_use) else {
                        i += 1;
                        continue;
                    };
                    Some((planned, lora))
                }
            };
            let Some(table) = self.kv.allocate_slots(id, tokens, extra, 0, n, &hit) else {
                break;
            };
            let table = table.to_vec();
            let slot = slot.map(|((slot, load), lora)| {
                self.lora_slots.commit(slot, lora);
                if load {
                    out.lora_loads.push((slot, lora));
                }
                slot
            });
            self.kv.record_prefix_query(&hit);
            self.waiting.remove(i);
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.num_computed_tokens = hit.num_tokens();
            seq.status = SeqStatus::Running;
            out.scheduled.push(scheduled(seq, n, &table, slot));
            *budget -= n;
            let arrival = seq.arrival;
            let seqs = &self.seqs;
            let at = (self.running)
                .partition_point(|r| seqs.get(r).is_some_and(|s| s.arrival < arrival));
            self.running.insert(at, id);
        }
    }

    /// Applies a step's results: every scheduled sequence's `num_computed_tokens`
    /// advances by its tokens, and each sampled one gets its token from `sampled` (the
    /// runner's `(seq, token)` for the entries of `output` with `sample`), and every stop
    /// rule is applied here: a stop id of its [`StopConfig`] (eos unless ignore_eos, the
    /// request's stop token ids; not before min_tokens) finishes it with `Stop`, else
    /// reaching max_tokens or `max_model_len` with `Length`; a finished sequence is freed
    /// at once. Returns the appended tokens in `output` order, each with its finish
    /// reason, for the caller to forward. Sequences finished or aborted since `output`
    /// are skipped. A sampled entry missing from `sampled` keeps its last token
    /// uncomputed, so it is recomputed and sampled next step.
    pub fn update_from_output(
        &mut self,
        output: &SchedulerOutput,
        sampled: &[(SeqId, u32)],
    ) -> Vec<SeqUpdate> {
        let sampled: HashMap<SeqId, u32> = sampled.iter().copied().collect();
        let mut updates = Vec::new();
        for s in &output.scheduled {
            let Some(seq) = self.seqs.get_mut(&s.seq) else {
                continue;
            };
            let fresh = seq.status == SeqStatus::Running
                && seq.num_computed_tokens == s.num_computed_tokens
                && s.seq_len() <= seq.num_tokens();
            if !fresh {
                continue;
            }
            seq.num_computed_tokens = s.seq_len();
            if !s.sample {
                continue;
            }
            let Some(&token) = sampled.get(&s.seq) else {
                tracing::warn!(seq = %s.seq, "no sampled token; recomputing its last token");
                seq.num_computed_tokens -= 1;
                continue;
            };
            seq.token_ids.push(token);
            let finish = stop_reason(seq, token, self.config.max_model_len);
            updates.push(SeqUpdate {
                seq: s.seq,
                token,
                finish,
            });
            if let Some(reason) = finish {
                self.finish(s.seq, reason);
            }
        }
        updates
    }

    /// Appends `tokens` decided without sampling (forced by a grammar) to running `seq`
    /// after the token it sampled this step; their KV is computed with its next chunk.
    /// Stop rules apply to each in turn: the first that finishes the sequence is the
    /// last appended. Returns one update per appended token.
    pub fn append_output(&mut self, seq: SeqId, tokens: &[u32]) -> Vec<SeqUpdate> {
        let mut updates = Vec::new();
        for &token in tokens {
            let Some(s) = self.seqs.get_mut(&seq) else {
                break; // finished
            };
            s.token_ids.push(token);
            let finish = stop_reason(s, token, self.config.max_model_len);
            updates.push(SeqUpdate { seq, token, finish });
            if let Some(reason) = finish {
                self.finish(seq, reason);
            }
        }
        updates
    }

    /// Finishes `seq` now (eos, stop token, abort...): frees its blocks and returns it
    /// with status `Finished(reason)`; `None` if it is not here (already finished).
    pub fn finish(&mut self, seq: SeqId, reason: FinishReason) -> Option<Sequence> {
        let mut s = self.seqs.remove(&seq)?;
        match s.status {
            SeqStatus::Running => self.running.retain(|&r| r != seq),
            _ => self.waiting.retain(|&w| w != seq),
        }
        self.kv.free(seq);
        s.status = SeqStatus::Finished(reason);
        Some(s)
    }

    /// Finishes `seq` with `Abort` (the client went away).
    pub fn abort(&mut self, seq: SeqId) -> Option<Sequence> {
        self.finish(seq, FinishReason::Abort)
    }

    /// Aborts every sequence of `request`; returns them.
    pub fn abort_request(&mut self, request: RequestId) -> Vec<Sequence> {
        let mut ids: Vec<SeqId> = self
            .seqs
            .keys()
            .filter(|s| s.request == request)
            .copied()
            .collect();
        ids.sort();
        ids.into_iter().filter_map(|s| self.abort(s)).collect()
    }

    /// After a failed step: forgets the prefix hashes of every block of `output`'s
    /// sequences (their K/V may be garbage) and puts each back to waiting with nothing
    /// computed, so scheduling again recomputes them from scratch. The caller may instead
    /// (or then) abort them. Not counted as preemptions.
    pub fn fail_step(&mut self, output: &SchedulerOutput) {
        for s in &output.scheduled {
            self.kv.reset_prefix_hashes_of(s.seq);
        }
        for s in &output.scheduled {
            if self
                .seqs
                .get(&s.seq)
                .is_some_and(|q| q.status == SeqStatus::Running)
            {
                self.running.retain(|&r| r != s.seq);
                self.requeue(s.seq, SeqStatus::Waiting);
            }
        }
    }

    /// A sequence not yet finished.
    pub fn get(&self, seq: SeqId) -> Option<&Sequence> {
        self.seqs.get(&seq)
    }

    /// Sequences running.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Sequences waiting (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether any sequence is unfinished.
    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            num_preemptions: self.num_preemptions,
            prefix_cache_queries: self.kv.pool().prefix_queries(),
            prefix_cache_hits: self.kv.pool().prefix_hits(),
            kv_usage: self.kv.usage(),
            num_free_blocks: self.kv.num_free_blocks(),
        }
    }

    /// Checks the module's invariants and the KV cache's; `Err` names the first broken
    /// one. Linear in sequences and blocks: for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check_invariants()?;
        let bs = self.config.block_size;
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return Err("running + waiting != unfinished sequences".into());
        }
        let mut last = None;
        for id in &self.running {
            let s = self.seqs.get(id).ok_or(format!("running {id} unknown"))?;
            let covered = self.kv.block_table(*id).len() * bs;
            if s.status != SeqStatus::Running || covered < s.num_computed_tokens {
                return Err(format!("running {id}: {:?}, {covered} slots", s.status));
            }
            if s.num_computed_tokens >= s.num_tokens() || last >= Some(s.arrival) {
                return Err(format!(
                    "running {id} has nothing to compute or is out of order"
                ));
            }
            last = Some(s.arrival);
        }
        let mut last = None;
        for id in &self.waiting {
            let s = self.seqs.get(id).ok_or(format!("waiting {id} unknown"))?;
            let queued = matches!(s.status, SeqStatus::Waiting | SeqStatus::Preempted);
            if !queued || s.num_computed_tokens != 0 || !self.kv.block_table(*id).is_empty() {
                return Err(format!(
                    "waiting {id}: {:?} holds blocks or tokens",
                    s.status
                ));
            }
            if last >= Some(s.arrival) {
                return Err(format!("waiting {id} is out of arrival order"));
            }
            last = Some(s.arrival);
        }
        Ok(())
    }

    /// Preempts `id` by recompute. The caller has taken it out of `running`.
    fn preempt(&mut self, id: SeqId) {
        self.num_preemptions += 1;
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_preemptions += 1;
        }
        self.requeue(id, SeqStatus::Preempted);
        tracing::debug!(seq = %id, "preempted");
    }

    /// Frees `id`'s blocks, forgets its computed tokens (its output is kept), and queues
    /// it again by arrival, ahead of newer ones. The caller has taken it out of `running`.
    fn requeue(&mut self, id: SeqId, status: SeqStatus) {
        self.kv.free(id);
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        seq.num_computed_tokens = 0;
        seq.status = status;
        let arrival = seq.arrival;
        let seqs = &self.seqs;
        let at = self
            .waiting
            .partition_point(|w| seqs.get(w).is_some_and(|s| s.arrival < arrival));
        self.waiting.insert(at, id);
    }
}

/// Why `seq` ends now that `token` was appended to it, if it does: a stop id (from
/// min_tokens on) before the length limits, so a stop token sampled last reads `Stop`.
fn stop_reason(seq: &Sequence, token: u32, max_model_len: usize) -> Option<FinishReason> {
    let num_output = seq.output_token_ids().len();
    if seq.stop.is_stop(token, num_output) {
        Some(FinishReason::Stop)
    } else if num_output >= seq.max_tokens || seq.num_tokens() >= max_model_len {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// Tokens to schedule of `remaining`, within the budget and the per-step threshold.
fn chunk(config: &SchedulerConfig, remaining: usize, budget: usize) -> usize {
    let cap = config.long_prefill_token_threshold.unwrap_or(usize::MAX);
    remaining.min(budget).min(cap)
}

/// `seq`'s entry in a step computing its next `n` tokens.
fn scheduled(seq: &Sequence, n: usize, table: &[u32], lora_slot: Option<u32>) -> ScheduledSeq {
    let start = seq.num_computed_tokens;
    ScheduledSeq {
        seq: seq.id,
        token_ids: seq.token_ids[start..start + n].to_vec(),
        num_computed_tokens: start,
        block_table: table.to_vec(),
        sample: start + n == seq.num_tokens(),
        lora_slot,
    }
}
