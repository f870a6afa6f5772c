//! `BlockPool`: the KV cache's `num_blocks` blocks of `block_size` token slots each.
//!
//! Owns every block's reference count, the LRU queue of free blocks, and the prefix-hash
//! map of full blocks whose K/V can be reused.
//!
//! Invariants (checked by [`BlockPool::check_invariants`]):
//! - a block is in the free queue exactly when its reference count is 0; the queue is
//!   ordered by the time the block was freed, and [`BlockPool::allocate`] takes the least
//!   recently freed blocks first;
//! - a free block keeps its prefix hash, so a prefix hit can revive it, until it is
//!   allocated for something else, which drops the hash;
//! - the hash map points at most one block per hash, and that block carries that hash;
//! - a cached block stores its full key (parent's [`ContentId`], token ids, extra key),
//!   which lookups compare, so a 64-bit hash collision never returns a wrong block.
//!   A `ContentId` is never reused: it names one exact token prefix (checked at every
//!   level of the chain), so even colliding parent hashes cannot mix two prefixes.
//! - freeing a block whose count is already 0 is refused with an error, never a
//!   silent double free.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use wick_core::WickError;

/// Index of a block in the KV cache tensors.
pub type BlockId = u32;

/// Prefix hash of a full block: hash of (parent block's hash, its token ids, extra key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u64);

impl BlockHash {
    /// Hash of a full block with token ids `tokens` following the block hashed `parent`
    /// (`None` for a sequence's first block). `extra` separates caches that must not
    /// share K/V for the same tokens (e.g. a LoRA adapter id).
    pub fn of(parent: Option<BlockHash>, tokens: &[u32], extra: Option<u64>) -> Self {
        let mut h = DefaultHasher::new();
        parent.map(|p| p.0).hash(&mut h);
        tokens.hash(&mut h);
        extra.hash(&mut h);
        Self(h.finish())
    }
}

/// Identity of one exact cached token prefix, handed out once and never reused. Used as
/// a cached block's parent link so lookups verify the whole chain, not just hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(u64);

/// What a cached full block holds, compared on every lookup.
#[derive(Debug, Clone)]
struct Cached {
    hash: BlockHash,
    content: ContentId,
    parent: Option<ContentId>,
    tokens: Box<[u32]>,
    extra: Option<u64>,
    /// Whether the hash map points at this block (false for a duplicate of an already
    /// cached block: it shares the content id but lookups find the other one).
    in_map: bool,
}

#[derive(Debug, Clone, Default)]
struct Block {
    ref_count: u32,
    /// Key in the free queue while free.
    free_stamp: Option<u64>,
    cached: Option<Cached>,
}

/// The pool of KV cache blocks. See the module docs for its invariants.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks by the stamp of their freeing: first entry = least recently freed.
    free: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    map: HashMap<BlockHash, BlockId>,
    next_content: u64,
    num_used: usize,
    prefix_queries: u64,
    prefix_hits: u64,
}

impl BlockPool {
    /// `num_blocks` free blocks of `block_size` tokens each (block ids `0..num_blocks`).
    pub fn new(num_blocks: u32, block_size: usize) -> Self {
        let blocks = (0..num_blocks)
            .map(|i| Block {
                free_stamp: Some(u64::from(i)),
                ..Block::default()
            })
            .collect();
        Self {
            block_size,
            blocks,
            free: (0..num_blocks).map(|i| (u64::from(i), i)).collect(),
            next_stamp: u64::from(num_blocks),
            map: HashMap::new(),
            next_content: 0,
            num_used: 0,
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with reference count 0 (including those still holding a prefix hash).
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn num_used_blocks(&self) -> usize {
        self.num_used
    }

    /// Fraction of blocks in use, in [0, 1].
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            0.0
        } else {
            self.num_used as f64 / self.blocks.len() as f64
        }
    }

    /// Blocks currently findable by prefix hash.
    pub fn num_cached_blocks(&self) -> usize {
        self.map.len()
    }

    /// Reference count of `block` (0 for an unknown id).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks.get(block as usize).map_or(0, |b| b.ref_count)
    }

    /// Takes `n` free blocks, least recently freed first, each with reference count 1 and
    /// no prefix hash (an evicted block's hash is dropped). `None`, and nothing changes,
    /// when fewer than `n` blocks are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some((_, id)) = self.free.pop_first() else {
                break;
            };
            self.drop_cached(id);
            let b = &mut self.blocks[id as usize];
            b.free_stamp = None;
            b.ref_count = 1;
            self.num_used += 1;
            out.push(id);
        }
        Some(out)
    }

    /// Takes one more reference on each block (a prefix hit). A free block leaves the
    /// free queue and keeps its hash. Unknown ids are refused before anything changes.
    pub fn touch(&mut self, blocks: &[BlockId]) -> Result<(), WickError> {
        if let Some(bad) = blocks.iter().find(|&&b| b as usize >= self.blocks.len()) {
            return Err(WickError::internal(format!("touch of unknown block {bad}")));
        }
        for &id in blocks {
            let b = &mut self.blocks[id as usize];
            if let Some(stamp) = b.free_stamp.take() {
                self.free.remove(&stamp);
                self.num_used += 1;
            }
            b.ref_count += 1;
        }
        Ok(())
    }

    /// Drops one reference on each block, in the given order; a block reaching 0 joins
    /// the free queue's tail (so the first freed here is evicted first). A block already
    /// at 0, or an unknown id, is refused with an error and left as is.
    pub fn free(&mut self, blocks: impl IntoIterator<Item = BlockId>) -> Result<(), WickError> {
        let mut first_err = None;
        for id in blocks {
            let Some(b) = self.blocks.get_mut(id as usize) else {
                first_err.get_or_insert_with(|| format!("free of unknown block {id}"));
                continue;
            };
            if b.ref_count == 0 {
                first_err.get_or_insert_with(|| format!("double free of block {id}"));
                continue;
            }
            b.ref_count -= 1;
            if b.ref_count == 0 {
                b.free_stamp = Some(self.next_stamp);
                self.free.insert(self.next_stamp, id);
                self.next_stamp += 1;
                self.num_used -= 1;
            }
        }
        match first_err {
            None => Ok(()),
            Some(msg) => Err(WickError::internal(msg)),
        }
    }

    /// The cached block for the full block `tokens` hashed `hash` whose parent prefix is
    /// `parent` (`None` for a first block), with its content id. Compares the stored key,
    /// so a hash collision yields `None`, never a wrong block.
    pub fn lookup(
        &self,
        hash: BlockHash,
        parent: Option<ContentId>,
        tokens: &[u32],
        extra: Option<u64>,
    ) -> Option<(BlockId, ContentId)> {
        let &id = self.map.get(&hash)?;
        let c = self.blocks.get(id as usize)?.cached.as_ref()?;
        (c.parent == parent && c.extra == extra && *c.tokens == *tokens).then_some((id, c.content))
    }

    /// Content id of `block`'s cached prefix, if it has one.
    pub fn content_id(&self, block: BlockId) -> Option<ContentId> {
        let b = self.blocks.get(block as usize)?;
        b.cached.as_ref().map(|c| c.content)
    }

    /// Makes the full, referenced `block` findable by `hash`, keyed by (`parent`, `tokens`,
    /// `extra`). Returns its content id; `None` when it cannot be cached (the hash is
    /// taken by a different prefix, the block is free or unknown, or `tokens` is not
    /// exactly one block). A block whose key equals the cached one's becomes a duplicate
    /// sharing its content id, so blocks after it can still be cached.
    pub fn register(
        &mut self,
        block: BlockId,
        hash: BlockHash,
        parent: Option<ContentId>,
        tokens: &[u32],
        extra: Option<u64>,
    ) -> Option<ContentId> {
        let b = self.blocks.get(block as usize)?;
        if b.ref_count == 0 || tokens.len() != self.block_size {
            return None;
        }
        if let Some(c) = &b.cached {
            let same = c.hash == hash && c.parent == parent && c.extra == extra;
            return (same && *c.tokens == *tokens).then_some(c.content);
        }
        let (content, in_map) = match self.map.get(&hash) {
            Some(_) => (self.lookup(hash, parent, tokens, extra)?.1, false),
            None => {
                self.next_content += 1;
                self.map.insert(hash, block);
                (ContentId(self.next_content), true)
            }
        };
        self.blocks[block as usize].cached = Some(Cached {
            hash,
            content,
            parent,
            tokens: tokens.into(),
            extra,
            in_map,
        });
        Some(content)
    }

    /// Forgets `block`'s prefix hash (its K/V must never be hit, e.g. after a failed
    /// step). Blocks cached after it become unreachable, since their parent link dies.
    pub fn reset_hash(&mut self, block: BlockId) {
        if (block as usize) < self.blocks.len() {
            self.drop_cached(block);
        }
    }

    /// Forgets every prefix hash.
    pub fn reset_all_hashes(&mut self) {
        for b in &mut self.blocks {
            b.cached = None;
        }
        self.map.clear();
    }

    /// Counts one prefix-cache query of `queried_tokens` of which `hit_tokens` were found.
    pub fn record_prefix_query(&mut self, queried_tokens: usize, hit_tokens: usize) {
        self.prefix_queries += queried_tokens as u64;
        self.prefix_hits += hit_tokens as u64;
    }

    /// Tokens asked of the prefix cache so far.
    pub fn prefix_queries(&self) -> u64 {
        self.prefix_queries
    }

    /// Tokens found in the prefix cache so far.
    pub fn prefix_hits(&self) -> u64 {
        self.prefix_hits
    }

    /// Checks every invariant of the module docs; `Err` names the first broken one.
    /// Linear in the pool size: for tests and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut used = 0;
        for (i, b) in self.blocks.iter().enumerate() {
            let id = i as BlockId;
            match (b.ref_count, b.free_stamp) {
                (0, Some(s)) if self.free.get(&s) == Some(&id) => {}
                (0, _) => return Err(format!("free block {id} is not in the free queue")),
                (_, None) => used += 1,
                (_, Some(_)) => return Err(format!("used block {id} is in the free queue")),
            }
            if let Some(c) = &b.cached {
                if c.in_map != (self.map.get(&c.hash) == Some(&id)) {
                    return Err(format!("block {id}'s hash map entry is inconsistent"));
                }
            }
        }
        if used != self.num_used || self.free.len() + used != self.blocks.len() {
            return Err(format!(
                "counted {used} used, {} free, recorded {} used of {}",
                self.free.len(),
                self.num_used,
                self.blocks.len()
            ));
        }
        for (h, &id) in &self.map {
            let ok = self.blocks.get(id as usize).and_then(|b| b.cached.as_ref());
            if !ok.is_some_and(|c| c.in_map && c.hash == *h) {
                return Err(format!("hash {h:?} points at block {id} not carrying it"));
            }
        }
        Ok(())
    }

    fn drop_cached(&mut self, id: BlockId) {
        if let Some(c) = self.blocks[id as usize].cached.take() {
            if c.in_map {
                self.map.remove(&c.hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &BlockPool) {
        p.check_invariants().unwrap();
    }

    #[test]
    fn alloc_free_and_ref_counts() {
        let mut p = BlockPool::new(4, 2);
        let a = p.allocate(3).unwrap();
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!((p.num_used_blocks(), p.num_free_blocks()), (3, 1));
        assert_eq!(p.usage(), 0.75);
        assert!(p.allocate(2).is_none(), "not enough free blocks");
        assert_eq!(
            p.num_free_blocks(),
            1,
            "a refused allocation changes nothing"
        );
        p.touch(&[1]).unwrap();
        assert_eq!(p.ref_count(1), 2);
        p.free([1]).unwrap();
        assert_eq!((p.ref_count(1), p.num_used_blocks()), (1, 3));
        p.free(a.iter().rev().copied()).unwrap();
        assert_eq!((p.num_used_blocks(), p.num_free_blocks()), (0, 4));
        ok(&p);
        assert!(p.free([0]).is_err(), "double free is refused");
        assert!(p.free([9]).is_err(), "unknown block is refused");
        assert!(p.touch(&[0, 9]).is_err());
        assert_eq!(p.ref_count(0), 0, "a refused touch changes nothing");
        ok(&p);
    }

    #[test]
    fn lru_evicts_least_recently_freed_first() {
        let mut p = BlockPool::new(4, 2);
        let all = p.allocate(4).unwrap();
        p.free([2, 0, 3, 1]).unwrap();
        assert_eq!(p.allocate(2).unwrap(), vec![2, 0]);
        p.free([0]).unwrap();
        assert_eq!(p.allocate(3).unwrap(), vec![3, 1, 0]);
        ok(&p);
        p.free(all).unwrap();
        ok(&p);
    }

    #[test]
    fn freed_block_keeps_hash_until_evicted() {
        let mut p = BlockPool::new(2, 2);
        let b = p.allocate(1).unwrap()[0];
        let h = BlockHash::of(None, &[7, 8], None);
        let cid = p.register(b, h, None, &[7, 8], None).unwrap();
        assert_eq!(p.lookup(h, None, &[7, 8], None), Some((b, cid)));
        p.free([b]).unwrap();
        assert_eq!(
            p.lookup(h, None, &[7, 8], None),
            Some((b, cid)),
            "free but cached"
        );
        p.touch(&[b]).unwrap();
        assert_eq!(
            (p.ref_count(b), p.num_free_blocks()),
            (1, 1),
            "revived by a hit"
        );
        p.free([b]).unwrap();
        ok(&p);
        // The other block was freed earlier (at start), so it goes first; then b.
        let first = p.allocate(1).unwrap();
        assert_ne!(first[0], b);
        assert!(p.lookup(h, None, &[7, 8], None).is_some());
        let second = p.allocate(1).unwrap();
        assert_eq!(second[0], b);
        assert_eq!(p.lookup(h, None, &[7, 8], None), None, "evicted");
        assert_eq!(p.content_id(b), None);
        ok(&p);
    }

    #[test]
    fn hash_collision_never_returns_wrong_block() {
        let mut p = BlockPool::new(4, 2);
        let [a, b, c, d] = p.allocate(4).unwrap()[..] else {
            panic!()
        };
        let h = BlockHash(42); // force every block onto one hash
        let ca = p.register(a, h, None, &[1, 2], None).unwrap();
        assert_eq!(p.lookup(h, None, &[1, 3], None), None, "other tokens");
        assert_eq!(p.lookup(h, None, &[1, 2], Some(5)), None, "other extra key");
        assert_eq!(p.lookup(h, Some(ca), &[1, 2], None), None, "other parent");
        assert_eq!(
            p.register(b, h, None, &[9, 9], None),
            None,
            "colliding prefix"
        );
        assert_eq!(p.lookup(h, None, &[9, 9], None), None);
        // A child of `a` under a colliding hash of its own.
        let h2 = BlockHash(43);
        p.register(c, h2, Some(ca), &[3, 4], None).unwrap();
        assert_eq!(p.lookup(h2, Some(ca), &[3, 4], None).map(|x| x.0), Some(c));
        // Evict `a`; a new block caches the same tokens under the same hash: new content
        // id, so `c` (child of the old one) can no longer be reached through it.
        p.free([a]).unwrap();
        let a2 = p.allocate(1).unwrap()[0];
        assert_eq!(a2, a);
        let ca2 = p.register(d, h, None, &[1, 2], None).unwrap();
        assert_ne!(ca, ca2);
        assert_eq!(p.lookup(h2, Some(ca2), &[3, 4], None), None);
        assert_eq!(
            p.register(d, h, None, &[1, 2], None),
            Some(ca2),
            "idempotent"
        );
        ok(&p);
    }

    #[test]
    fn duplicate_block_shares_content_id() {
        let mut p = BlockPool::new(3, 2);
        let [a, b, _] = p.allocate(3).unwrap()[..] else {
            panic!()
        };
        let h = BlockHash::of(None, &[1, 2], None);
        let ca = p.register(a, h, None, &[1, 2], None).unwrap();
        assert_eq!(p.register(b, h, None, &[1, 2], None), Some(ca));
        assert_eq!(p.lookup(h, None, &[1, 2], None).map(|x| x.0), Some(a));
        assert_eq!(p.num_cached_blocks(), 1);
        p.free([a]).unwrap();
        p.allocate(1).unwrap();
        assert_eq!(
            p.lookup(h, None, &[1, 2], None),
            None,
            "the mapped one is gone"
        );
        assert_eq!(p.content_id(b), Some(ca));
        ok(&p);
    }

    #[test]
    fn register_refuses_free_or_partial_blocks_and_reset_forgets() {
        let mut p = BlockPool::new(2, 2);
        let h = BlockHash::of(None, &[1, 2], None);
        assert_eq!(p.register(0, h, None, &[1, 2], None), None, "free block");
        let a = p.allocate(1).unwrap()[0];
        assert_eq!(p.register(a, h, None, &[1], None), None, "partial block");
        assert_eq!(p.register(7, h, None, &[1, 2], None), None, "unknown block");
        p.register(a, h, None, &[1, 2], None).unwrap();
        p.reset_hash(a);
        assert_eq!(p.lookup(h, None, &[1, 2], None), None);
        p.register(a, h, None, &[1, 2], None).unwrap();
        p.reset_all_hashes();
        assert_eq!(p.num_cached_blocks(), 0);
        ok(&p);
    }
}
