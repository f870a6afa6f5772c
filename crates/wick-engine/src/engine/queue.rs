//! The waiting queue's accounting as a permit, like TGI's semaphore permit: a
//! [`QueuePermit`] is taken in submit (refused when `max_waiting` are out) and travels
//! with the request until it starts running, and dropping it gives the place back. So a
//! request that starts, finishes, fails, is abandoned or never reaches the loop returns
//! its place without any counter being adjusted by hand.
//!
//! Invariant: the count equals the live permits, and never exceeds the limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Hands out at most `limit` [`QueuePermit`]s at once.
#[derive(Debug, Clone)]
pub(crate) struct WaitingQueue {
    count: Arc<AtomicUsize>,
    limit: usize,
}

impl WaitingQueue {
    /// A queue of at most `limit` places.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Its size limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Places taken now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// A place, or `None` when all are taken.
    pub(crate) fn try_acquire(&self) -> Option<QueuePermit> {
        self.count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(QueuePermit {
            count: self.count.clone(),
        })
    }
}

/// One place in the waiting queue, given back when dropped.
#[derive(Debug)]
pub(crate) struct QueuePermit {
    count: Arc<AtomicUsize>,
}

impl Drop for QueuePermit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_limited_and_given_back_on_drop() {
        let q = WaitingQueue::new(2);
        let a = q.try_acquire().unwrap();
        let b = q.try_acquire().unwrap();
        assert!(q.try_acquire().is_none());
        assert_eq!(q.len(), 2);
        drop(a);
        assert_eq!(q.len(), 1);
        let c = q.try_acquire().unwrap();
        drop((b, c));
        assert_eq!(q.len(), 0);
        assert!(WaitingQueue::new(0).try_acquire().is_none());
    }
}
