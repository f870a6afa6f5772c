//! The library's one error type, [`BenchError`], and [`Result`].
//!
//! Failures carry their cause as [`std::error::Error::source`], so a caller using
//! `anyhow` (the `wick` binary) prints the whole chain: "building the workload: tokenizing
//! the corpus: POST http://...: connection refused". [`Context`] adds such a layer, as
//! anyhow's `context` did. Per-request failures during a run are not errors: they are
//! recorded in the report ([`crate::ErrorKind`]); a `BenchError` stops the benchmark.

use std::num::{ParseFloatError, ParseIntError};

/// Why a benchmark could not be set up, run or written out.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag, configuration value or input that cannot work, or a value expected and
    /// missing.
    #[error("{0}")]
    Invalid(String),
    /// The endpoint answered something unusable (an error status, a missing field).
    #[error("{0}")]
    Endpoint(String),
    /// The tokenizer failed to load, encode or decode.
    #[error("{0}")]
    Tokenizer(String),
    /// An HTTP exchange failed (connect, timeout, body).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// Reading or writing a file, or running a program.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON that does not parse or cannot be written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A number that does not parse.
    #[error(transparent)]
    Int(#[from] ParseIntError),
    /// A decimal number that does not parse.
    #[error(transparent)]
    Float(#[from] ParseFloatError),
    /// What was being done when `source` happened.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: Box<BenchError>,
    },
}

impl BenchError {
    /// A flag, configuration value or input that cannot work.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The error and its causes, outermost first, joined by ": " (as anyhow's `{:#}`).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cause = e.source();
        }
        out
    }
}

/// The library's result type.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Adds what was being done to an error (or turns a `None` into one), as anyhow's
/// `Context` does.
pub(crate) trait Context<T> {
    /// Wraps the error (or `None`) with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| context)
    }
    /// Like [`Context::context`], building the message only on failure.
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<BenchError>> Context<T> for std::result::Result<T, E> {
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| BenchError::Context {
            context: f().into(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| BenchError::Invalid(f().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_chain() {
        let e = "x"
            .parse::<usize>()
            .context("concurrency `x`")
            .context("--sweep")
            .unwrap_err();
        assert_eq!(e.to_string(), "--sweep");
        let mut chain = vec![];
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = cur {
            chain.push(err.to_string());
            cur = err.source();
        }
        assert_eq!(
            chain,
            [
                "--sweep",
                "concurrency `x`",
                "invalid digit found in string"
            ]
        );
        assert_eq!(
            e.chain(),
            "--sweep: concurrency `x`: invalid digit found in string"
        );
        assert_eq!(
            None::<u8>
                .context("no prompt built")
                .unwrap_err()
                .to_string(),
            "no prompt built"
        );
    }
}
