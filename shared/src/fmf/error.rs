//! Errors from reading, merging and adjusting an fmf tree; each names the file, and the node where one applies.

use std::io;
use std::path::PathBuf;

use super::condition::ConditionError;

#[derive(Debug, thiserror::Error)]
pub enum FmfError {
    #[error("{path} is not an fmf tree root: it has no .fmf/version")]
    MissingRoot { path: PathBuf },

    #[error("{path}: invalid fmf format version {content:?}")]
    InvalidVersion { path: PathBuf, content: String },

    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}:{line}:{column}: invalid YAML: {message}")]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    /// Data fmf refuses to build a node from: a non-mapping file, a bad directive, a non-string key.
    #[error("{path}: node {node}: {message}")]
    Format {
        path: PathBuf,
        node: String,
        message: String,
    },

    #[error("{path}: node {node}: cannot merge key '{key}': {reason}")]
    Merge {
        path: PathBuf,
        node: String,
        key: String,
        reason: String,
    },

    #[error("{path}: node {node}: invalid adjust rule: {message}")]
    Adjust {
        path: PathBuf,
        node: String,
        message: String,
    },

    #[error("{path}: node {node}: adjust rule")]
    Condition {
        path: PathBuf,
        node: String,
        #[source]
        source: ConditionError,
    },

    /// Only with `AdjustOptions::fail_on_undecided`: a rule's condition needs a dimension the context lacks.
    #[error("{path}: node {node}: cannot decide adjust rule {condition:?} with the given context")]
    Undecided {
        path: PathBuf,
        node: String,
        condition: String,
    },
}
