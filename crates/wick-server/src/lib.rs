//! wick-server: the OpenAI-compatible HTTP frontend. Owns request parsing and
//! validation, chat templates, incremental detokenization and the mapping of every error
//! to an HTTP response; talks to the engine only through `wick_engine`.
//!
//! Where a request goes: [`routes`] (router, auth, body limits) -> `routes::generate`
//! (validate, template, tokenize, submit) -> [`generation::PromptRun`] (engine events to
//! text, stop strings, usage, metrics, log line) -> [`response`] (OpenAI JSON or SSE).

pub mod chat_template;
pub mod detokenizer;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod prompt;
pub mod protocol;
pub mod response;
pub mod routes;
pub mod serve;
pub mod state;

pub use error::ApiError;
pub use serve::{run, LogFormat, ServeArgs, ServeError};
