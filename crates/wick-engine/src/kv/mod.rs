//! The paged KV cache's bookkeeping, as plain logic: which block holds which tokens, who
//! references it, and which full blocks can be reused by prefix hash. No tensors live
//! here; the model's cache tensors are indexed by the block ids handed out.
//!
//! - [`block_pool`]: the blocks themselves (ref counts, LRU free queue, prefix hashes).
//! - [`manager`]: per-sequence block tables on top of the pool (prefix hits, slot
//!   allocation, freeing).

pub mod block_pool;
pub mod manager;

pub use block_pool::{BlockHash, BlockId, BlockPool, ContentId};
pub use manager::{KvCacheManager, PrefixHit};

use wick_core::RequestId;

/// One sequence of the engine: each of a request's `n` completions is its own sequence,
/// with its own block table (they share the prompt's full blocks by prefix hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId {
    /// The request it belongs to.
    pub request: RequestId,
    /// Which of the request's `n` completions (0-based).
    pub index: u32,
}

impl SeqId {
    /// Completion `index` of `request`.
    pub fn new(request: RequestId, index: u32) -> Self {
        Self { request, index }
    }
}

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.request, self.index)
    }
}
