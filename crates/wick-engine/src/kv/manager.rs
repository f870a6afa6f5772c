//! `KvCacheManager`: each sequence's block table over the [`BlockPool`].
//!
//! Owns the per-sequence block tables and the prefix-hash chain of each sequence's full
//! blocks. A sequence's block `i` holds its tokens `i*block_size .. (i+1)*block_size`.
//!
//! Invariants (checked by [`KvCacheManager::check_invariants`]):
//! - every block's reference count equals the number of block tables holding it, so a
//!   block is free exactly when no sequence holds it, and freeing every sequence frees
//!   every block;
//! - a table only grows through [`KvCacheManager::allocate_slots`], which changes
//!   nothing when the free blocks do not suffice, and is dropped whole by
//!   [`KvCacheManager::free`] (in reverse, so a sequence's tail blocks are evicted
//!   before its head, which other prompts are likelier to share);
//! - with prefix caching on, a block is registered by hash as soon as a step's tokens
//!   fill it: the model writes every token's K/V of a step before attention in each
//!   layer, so another sequence of the same step may already hit it.

use std::collections::HashMap;

use super::block_pool::{BlockHash, BlockId, BlockPool};
use super::SeqId;

/// Full blocks found in the prefix cache for a sequence's tokens, from
/// [`KvCacheManager::get_computed_blocks`], to hand to
/// [`KvCacheManager::allocate_slots`] in the same scheduling pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    blocks: Vec<BlockId>,
    hashes: Vec<BlockHash>,
    block_size: usize,
    queried_tokens: usize,
}

impl PrefixHit {
    /// No hit and no query (for a sequence already holding blocks).
    pub fn none() -> Self {
        Self::default()
    }

    /// The hit blocks, in sequence order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Tokens covered by the hit blocks (already computed).
    pub fn num_tokens(&self) -> usize {
        self.blocks.len() * self.block_size
    }

    /// Tokens the query asked about (0 for [`PrefixHit::none`]).
    pub fn queried_tokens(&self) -> usize {
        self.queried_tokens
    }
}

#[derive(Debug, Clone, Default)]
struct SeqBlocks {
    blocks: Vec<BlockId>,
    /// Prefix hashes of the sequence's first `hashes.len()` (full) blocks.
    hashes: Vec<BlockHash>,
}

/// Per-sequence block tables over one [`BlockPool`]. See the module docs.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    enable_prefix_caching: bool,
    seqs: HashMap<SeqId, SeqBlocks>,
}

impl KvCacheManager {
    /// A cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(num_blocks: u32, block_size: usize, enable_prefix_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_blocks, block_size),
            enable_prefix_caching,
            seqs: HashMap::new(),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// The pool, for its counters.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Blocks no sequence holds (some may still be prefix-cache hits).
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Fraction of blocks held by sequences, in [0, 1].
    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    /// Sequences holding blocks.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// The cached full blocks that start `tokens` (a sequence's known tokens: prompt,
    /// then output so far), following the hash chain until the first miss. Never covers
    /// the last token, which must be computed to get logits: at most
    /// `(tokens.len() - 1) / block_size` blocks. Changes nothing; the hit is only taken
    /// by [`KvCacheManager::allocate_slots`].
    pub fn get_computed_blocks(&self, tokens: &[u32], extra_key: Option<u64>) -> PrefixHit {
        let bs = self.pool.block_size();
        if !self.enable_prefix_caching || bs == 0 {
            return PrefixHit::none();
        }
        let mut hit = PrefixHit {
            block_size: bs,
            queried_tokens: tokens.len(),
            ..PrefixHit::default()
        };
        let max_blocks = tokens.len().saturating_sub(1) / bs;
        let mut parent = None;
        for chunk in tokens.chunks_exact(bs).take(max_blocks) {
            let hash = BlockHash::of(hit.hashes.last().copied(), chunk, extra_key);
            let Some((block, content)) = self.pool.lookup(hash, parent, chunk, extra_key) else {
                break;
            };
            hit.blocks.push(block);
            hit.hashes.push(hash);
            parent = Some(content);
        }
        hit
    }

    /// Gives `seq` slots for `num_new_tokens` more tokens after its `num_computed_tokens`
    /// computed ones and the `hit` blocks (a hit is only taken by a sequence holding no
    /// blocks, with `num_computed_tokens == 0`; pass [`PrefixHit::none`] otherwise).
    /// Takes a reference on each hit block, then allocates blocks until the table covers
    /// `num_computed_tokens + hit.num_tokens() + num_new_tokens` tokens, and registers the
    /// prefix hash of every block those tokens fill. `tokens` are the sequence's known
    /// tokens (prompt, then output) and must cover them. Returns the block table, or
    /// `None`, changing nothing, when the free blocks do not suffice.
    pub fn allocate_slots(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        extra_key: Option<u64>,
        num_computed_tokens: usize,
        num_new_tokens: usize,
        hit: &PrefixHit,
    ) -> Option<&[BlockId]> {
        let bs = self.pool.block_size().max(1);
        let held = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        if !hit.blocks.is_empty() && (held > 0 || num_computed_tokens > 0) {
            debug_assert!(false, "prefix hit for {seq}, which already has tokens");
            return None;
        }
        let total = num_computed_tokens + hit.num_tokens() + num_new_tokens;
        let have = held + hit.blocks.len();
        let num_new_blocks = total.div_ceil(bs).saturating_sub(have);
        let revived = hit.blocks.iter().filter(|&&b| self.pool.ref_count(b) == 0);
        if num_new_blocks + revived.count() > self.pool.num_free_blocks() {
            return None;
        }
        self.pool.touch(&hit.blocks).ok()?;
        let new_blocks = self.pool.allocate(num_new_blocks)?;
        let entry = self.seqs.entry(seq).or_default();
        entry.blocks.extend_from_slice(&hit.blocks);
        entry.hashes.extend_from_slice(&hit.hashes);
        entry.blocks.extend(new_blocks);
        if self.enable_prefix_caching {
            let num_full = (total.min(tokens.len()) / bs).min(entry.blocks.len());
            for i in entry.hashes.len()..num_full {
                let chunk = &tokens[i * bs..(i + 1) * bs];
                let hash = BlockHash::of(entry.hashes.last().copied(), chunk, extra_key);
                entry.hashes.push(hash);
                let parent = match i {
                    0 => None,
                    // A parent that could not be cached (collision, reset) cannot be
                    // reached by a lookup, so neither can its children: skip them.
                    _ => match self.pool.content_id(entry.blocks[i - 1]) {
                        Some(c) => Some(c),
                        None => continue,
                    },
                };
                self.pool
                    .register(entry.blocks[i], hash, parent, chunk, extra_key);
            }
        }
        Some(&entry.blocks)
    }

    /// Drops `seq`'s references, tail block first, and forgets its table. Blocks keep
    /// their prefix hashes while free. A sequence holding nothing is a no-op.
    pub fn free(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            if let Err(e) = self.pool.free(s.blocks.iter().rev().copied()) {
                // Unreachable by construction: each table holds one reference per entry.
                debug_assert!(false, "freeing {seq}: {e}");
                tracing::error!(%seq, error = %e, "kv cache bookkeeping");
            }
        }
    }

    /// `seq`'s block table (empty when it holds none).
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Forgets the prefix hashes of `seq`'s blocks, so their K/V is never hit (after a
    /// failed step wrote garbage; call it for every sequence of that step).
    pub fn reset_prefix_hashes_of(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.get(&seq) {
            for &b in &s.blocks {
                self.pool.reset_hash(b);
            }
        }
    }

    /// Forgets every prefix hash.
    pub fn reset_all_prefix_hashes(&mut self) {
        self.pool.reset_all_hashes();
    }

    /// Counts one prefix-cache query (see [`BlockPool::record_prefix_query`]).
    pub fn record_prefix_query(&mut self, hit: &PrefixHit) {
        self.pool
            .record_prefix_query(hit.queried_tokens(), hit.num_tokens());
    }

    /// Checks the pool's invariants and that every block's reference count equals the
    /// number of tables holding it. Linear in the cache size: for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs = vec![0u32; self.pool.num_blocks()];
        for s in self.seqs.values() {
            for &b in &s.blocks {
                match refs.get_mut(b as usize) {
                    Some(r) => *r += 1,
                    None => return Err(format!("table holds unknown block {b}")),
                }
            }
        }
        for (b, &r) in refs.iter().enumerate() {
            let got = self.pool.ref_count(b as BlockId);
            if got != r {
                return Err(format!("block {b} has ref count {got}, held by {r} tables"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::RequestId;

    fn sid(r: u64, i: u32) -> SeqId {
        SeqId::new(RequestId(r), i)
    }

    fn ok(m: &KvCacheManager) {
        m.check_invariants().unwrap();
    }

    #[test]
    fn allocate_grows_the_table_or_changes_nothing() {
        let mut m = KvCacheManager::new(4, 4, true);
        let toks: Vec<u32> = (0..20).collect();
        let a = sid(1, 0);
        assert_eq!(
            m.allocate_slots(a, &toks, None, 0, 9, &PrefixHit::none())
                .unwrap()
                .len(),
            3
        );
        assert!(m
            .allocate_slots(a, &toks, None, 9, 8, &PrefixHit::none())
            .is_none());
        assert_eq!(
            m.block_table(a).len(),
            3,
            "a refused allocation changes nothing"
        );
        assert_eq!(m.num_free_blocks(), 1);
        // Slots left in the last block need no new block.
        assert_eq!(
            m.allocate_slots(a, &toks, None, 9, 3, &PrefixHit::none())
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            m.allocate_slots(a, &toks, None, 12, 1, &PrefixHit::none())
                .unwrap()
                .len(),
            4
        );
        assert_eq!(m.usage(), 1.0);
        ok(&m);
        m.free(a);
        m.free(a);
        assert_eq!(m.num_free_blocks(), 4);
        ok(&m);
    }

    #[test]
    fn prefix_hit_shares_full_blocks_but_never_the_last_token() {
        let mut m = KvCacheManager::new(8, 4, true);
        let prompt: Vec<u32> = (100..108).collect(); // exactly two blocks
        let (a, b) = (sid(1, 0), sid(2, 0));
        let miss = m.get_computed_blocks(&prompt, None);
        assert_eq!((miss.num_tokens(), miss.queried_tokens()), (0, 8));
        m.allocate_slots(a, &prompt, None, 0, 8, &miss).unwrap();
        let hit = m.get_computed_blocks(&prompt, None);
        assert_eq!(hit.num_tokens(), 4, "the last token must be computed");
        assert_eq!(hit.blocks(), &m.block_table(a)[..1]);
        m.allocate_slots(b, &prompt, None, 0, 4, &hit).unwrap();
        assert_eq!(m.block_table(b)[0], m.block_table(a)[0]);
        assert_ne!(m.block_table(b)[1], m.block_table(a)[1]);
        assert_eq!(m.pool().ref_count(m.block_table(a)[0]), 2);
        m.record_prefix_query(&hit);
        assert_eq!((m.pool().prefix_queries(), m.pool().prefix_hits()), (8, 4));
        // A longer prompt with the same start hits both blocks.
        let longer: Vec<u32> = (100..110).collect();
        assert_eq!(m.get_computed_blocks(&longer, None).num_tokens(), 8);
        assert_eq!(
            m.get_computed_blocks(&longer, Some(3)).num_tokens(),
            0,
            "adapter"
        );
        ok(&m);
        m.free(a);
        m.free(b);
        assert_eq!(m.num_free_blocks(), 8);
        assert_eq!(
            m.get_computed_blocks(&longer, None).num_tokens(),
            8,
            "still cached"
        );
        ok(&m);
    }

    #[test]
    fn hit_on_free_blocks_counts_against_free_blocks() {
        let mut m = KvCacheManager::new(3, 2, true);
        let toks = [1, 2, 3, 4, 5];
        let a = sid(1, 0);
        m.allocate_slots(a, &toks, None, 0, 5, &PrefixHit::none())
            .unwrap();
        m.free(a);
        let hit = m.get_computed_blocks(&toks, None);
        assert_eq!(hit.num_tokens(), 4);
        // Two free hit blocks plus one new block: exactly the three free blocks.
        let b = sid(2, 0);
        assert_eq!(
            m.allocate_slots(b, &toks, None, 0, 1, &hit).unwrap().len(),
            3
        );
        ok(&m);
        m.free(b);
        // Freed tail first: the tail block is evicted first, the head stays cached.
        let c = sid(3, 0);
        m.allocate_slots(c, &[9, 9], None, 0, 2, &PrefixHit::none())
            .unwrap();
        assert_eq!(m.get_computed_blocks(&toks, None).num_tokens(), 4);
        ok(&m);
    }

    #[test]
    fn decode_fills_and_registers_blocks() {
        let mut m = KvCacheManager::new(4, 2, true);
        let a = sid(1, 0);
        let mut toks = vec![1, 2, 3];
        m.allocate_slots(a, &toks, None, 0, 3, &PrefixHit::none())
            .unwrap();
        toks.push(4); // sampled
        m.allocate_slots(a, &toks, None, 3, 1, &PrefixHit::none())
            .unwrap();
        let hit = m.get_computed_blocks(&[1, 2, 3, 4, 5], None);
        assert_eq!(hit.blocks(), m.block_table(a));
        ok(&m);
    }

    #[test]
    fn reset_and_disabled_caching_give_no_hits() {
        let mut m = KvCacheManager::new(4, 2, true);
        let a = sid(1, 0);
        m.allocate_slots(a, &[1, 2, 3], None, 0, 3, &PrefixHit::none())
            .unwrap();
        assert_eq!(m.get_computed_blocks(&[1, 2, 3], None).num_tokens(), 2);
        m.reset_prefix_hashes_of(a);
        assert_eq!(m.get_computed_blocks(&[1, 2, 3], None).num_tokens(), 0);
        let mut off = KvCacheManager::new(4, 2, false);
        off.allocate_slots(a, &[1, 2, 3], None, 0, 3, &PrefixHit::none())
            .unwrap();
        let hit = off.get_computed_blocks(&[1, 2, 3], None);
        assert_eq!((hit.num_tokens(), hit.queried_tokens()), (0, 0));
        assert_eq!(off.pool().num_cached_blocks(), 0);
    }
}
