//! placeholder

pub mod kv;
pub mod scheduler;
