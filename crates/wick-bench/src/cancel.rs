//! A cancellation token: cheap to clone, set once (Ctrl-C, or a test), awaited by every
//! in-flight request and by the load generator.
//!
//! Invariant: once cancelled it stays cancelled; `cancelled()` resolves immediately for
//! every clone from then on.

use std::sync::Arc;

use tokio::sync::watch;

/// Shared cancellation flag.
#[derive(Debug, Clone)]
pub struct CancelToken {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Cancels every clone.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.rx.clone();
        // The sender lives as long as any clone of the token, so this cannot fail while
        // `self` exists; treat a failure as cancellation all the same.
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_reaches_every_clone_and_sticks() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(!b.is_cancelled());
        let waiter = tokio::spawn(async move { b.cancelled().await });
        a.cancel();
        waiter.await.unwrap();
        assert!(a.is_cancelled());
        a.clone().cancelled().await;
    }
}
