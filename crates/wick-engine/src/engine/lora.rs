//! The adapters a server offers ([`LoraRegistry`]): name -> loaded adapter, shared by the
//! handle (submit resolves a request's adapter name here) and whoever loads and unloads
//! adapters at run time.
//!
//! Reference counting: a submitted request holds its [`LoraEntry`] (an `Arc`), so
//! unloading a name only stops new requests from finding it; requests in flight finish on
//! the weights they started with. Each registration gets a fresh [`LoraId`], so a name
//! loaded again from another path never reuses the old weights' slot or prefix-cache
//! blocks.

use crate::scheduler::LoraId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use wick_core::{ErrorKind, WickError};
use wick_models::LoraAdapter;

/// One registered adapter.
#[derive(Debug)]
pub struct LoraEntry {
    /// Unique per registration.
    pub id: LoraId,
    /// The name requests use (their `model` field).
    pub name: String,
    /// Where it was loaded from, as given.
    pub source: String,
    /// Its weights, on the host.
    pub adapter: LoraAdapter,
}

/// Name -> adapter, safe to share between threads.
#[derive(Debug, Default)]
pub struct LoraRegistry {
    entries: RwLock<BTreeMap<String, Arc<LoraEntry>>>,
    next_id: AtomicU64,
}

impl LoraRegistry {
    /// Adds `adapter` under `name`; refused (`InvalidRequest`) if the name is taken.
    pub fn add(
        &self,
        name: &str,
        source: &str,
        adapter: LoraAdapter,
    ) -> Result<Arc<LoraEntry>, WickError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        if entries.contains_key(name) {
            return Err(WickError::invalid_param(
                "lora_name",
                format!("an adapter named {name:?} is already loaded"),
            ));
        }
        let entry = Arc::new(LoraEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            name: name.to_string(),
            source: source.to_string(),
            adapter,
        });
        entries.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Removes `name`; `NotFound` if there is none. Requests in flight keep it.
    pub fn remove(&self, name: &str) -> Result<Arc<LoraEntry>, WickError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        entries.remove(name).ok_or_else(|| not_found(name))
    }

    /// The adapter named `name`; `NotFound` if there is none.
    pub fn get(&self, name: &str) -> Result<Arc<LoraEntry>, WickError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        entries.get(name).cloned().ok_or_else(|| not_found(name))
    }

    /// Every adapter, by name.
    pub fn list(&self) -> Vec<Arc<LoraEntry>> {
        (self.entries.read().map(|e| e.values().cloned().collect())).unwrap_or_default()
    }
}

fn not_found(name: &str) -> WickError {
    WickError {
        kind: ErrorKind::NotFound,
        message: format!("the model `{name}` does not exist"),
        param: Some("model".into()),
    }
}

fn poisoned() -> WickError {
    WickError::internal("the adapter registry is poisoned")
}
