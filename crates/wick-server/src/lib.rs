//! wick-server: the OpenAI-compatible HTTP frontend. Owns request parsing and
//! validation, chat templates, incremental detokenization and the mapping of every error
//! to an HTTP response; talks to the engine only through `wick_engine`.

pub mod chat_template;
