//! wick-server: the OpenAI-compatible HTTP frontend. Owns request parsing and
//! validation, chat templates, incremental detokenization and the mapping of every error
//! to an HTTP response; handlers reach the engine only through [`backend::Backend`].
//!
//! Where a request goes: [`routes`] (router, request ids, spans, auth, body limits) ->
//! `routes::generate` (validate, template, tokenize, submit to the [`backend::Backend`])
//! -> [`generation::PromptRun`] (backend events to text, stop strings, usage, metrics,
//! log line) -> [`response`] (OpenAI JSON or SSE, shaped by [`response_types`]).
//! [`stack`] builds the model and engine (for `wick serve` and `wick generate`);
//! [`serve`] runs the server's life (load, serve, watch the engine, drain).

// `cargo test` turns fault injection on through wick's dev-dependencies, and cargo does
// so for ANY build that also builds a test or example target of the wick package: a
// release binary must never carry `--fault-inject`, so such a build fails here instead.
#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!(
    "the fault-injection feature is for test builds only: build release binaries in a \
     cargo invocation of their own (`cargo build --release -p wick --bin wick`), without \
     test or example targets"
);

pub mod backend;
pub mod build_info;
pub mod chat_template;
pub mod compat;
pub mod detokenizer;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod prompt;
pub mod protocol;
pub mod response;
pub mod response_types;
pub mod routes;
pub mod serve;
pub mod stack;
pub mod state;
pub mod structured;
pub mod tls;
pub mod tool_parser;

pub use build_info::BuildInfo;
pub use error::ApiError;
pub use serve::{run, LogFormat, ServeArgs, ServeError};

/// Whether this build has the test-only `fault-injection` feature (`wick serve
/// --fault-inject`); the binary lists it among its build features.
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");
