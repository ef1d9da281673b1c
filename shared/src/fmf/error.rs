//! Errors from reading, merging and adjusting an fmf tree; each names the file, and the node where one applies.

use std::io;
use std::path::PathBuf;

use super::condition::ConditionError;
use super::quote::{bounded, snippet};

#[derive(Debug, thiserror::Error)]
pub enum FmfError {
    #[error("{path} is not an fmf tree root: it has no .fmf/version")]
    MissingRoot { path: PathBuf },

    /// `snippet` is the start of the file, cut short and escaped by [`snippet`]: never the whole file.
    #[error("{path}: invalid fmf format version {snippet}")]
    InvalidVersion { path: PathBuf, snippet: String },

    /// A symlink (file or directory) whose target lies outside the tree root. Only the link's own path is
    /// named: its target may be anyone's file.
    #[error("{path} is a symlink leading out of the fmf tree; it is not followed")]
    SymlinkOutsideTree { path: PathBuf },

    /// YAML aliases that would expand to far more values than the file is long (an "alias bomb").
    #[error("{path}: YAML aliases expand to more than {limit} values; the file is refused")]
    AliasExpansion { path: PathBuf, limit: usize },

    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}:{line}:{column}: invalid YAML: {}", bounded(.message))]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    /// Data fmf refuses to build a node from: a non-mapping file, a bad directive, a non-string key.
    #[error("{path}: node {}: {}", bounded(.node), bounded(.message))]
    Format {
        path: PathBuf,
        node: String,
        message: String,
    },

    #[error("{path}: node {}: cannot merge key '{}': {}", bounded(.node), bounded(.key), bounded(.reason))]
    Merge {
        path: PathBuf,
        node: String,
        key: String,
        reason: String,
    },

    #[error("{path}: node {}: invalid adjust rule: {}", bounded(.node), bounded(.message))]
    Adjust {
        path: PathBuf,
        node: String,
        message: String,
    },

    #[error("{path}: node {}: adjust rule", bounded(.node))]
    Condition {
        path: PathBuf,
        node: String,
        #[source]
        source: ConditionError,
    },

    /// Only with `AdjustOptions::fail_on_undecided`: a rule's condition needs a dimension the context lacks.
    #[error("{path}: node {}: cannot decide adjust rule {} with the given context", bounded(.node), snippet(.condition))]
    Undecided {
        path: PathBuf,
        node: String,
        condition: String,
    },
}
