//! wick-core: plain types shared by every wick crate: request ids, sampling parameters,
//! finish reasons, token events, errors. No candle, no tokio.

pub mod bytes;
pub mod error;
pub mod request;

pub use bytes::parse_bytes;
pub use error::{ErrorKind, WickError};
pub use request::{
    FinishReason, RequestId, RequestMetrics, SamplingParams, TokenEvent, TokenLogprobs,
    MAX_TOP_LOGPROBS,
};
