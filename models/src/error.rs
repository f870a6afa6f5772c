//! The one error type of model loading and running. Every message names what is wrong
//! (the file, the tensor, the shapes) so that a user can act on it.

use std::path::PathBuf;

/// Errors from resolving, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model needs does not exist or cannot be read.
    #[error("{what}: cannot read {path}: {source}")]
    Io {
        /// What the file is (e.g. "config.json").
        what: String,
        /// Where we looked.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something the model needs is missing.
    #[error("missing {0}")]
    Missing(String),
    /// A file is present but malformed.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was being read.
        what: String,
        /// Why it is invalid.
        message: String,
    },
    /// A tensor does not have the shape the config implies.
    #[error(
        "tensor {name}: shape {actual:?} in the checkpoint, {expected:?} expected from the config"
    )]
    ShapeMismatch {
        /// Tensor name as stored in the checkpoint.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape found in the checkpoint.
        actual: Vec<usize>,
    },
    /// The checkpoint's architecture is not one we implement.
    #[error("unsupported architecture {found:?}; supported: {}", supported.join(", "))]
    UnsupportedArchitecture {
        /// What the checkpoint declares.
        found: String,
        /// What we support.
        supported: Vec<&'static str>,
    },
    /// Fetching from the Hugging Face hub (or its local cache) failed.
    #[error("hub: {0}")]
    Hub(String),
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Shorthand for [`ModelError::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
