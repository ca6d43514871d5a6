//! One error type for every kernel; `lib.rs` maps it onto the Python `FtcError` family.

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot load tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, DataError>;
