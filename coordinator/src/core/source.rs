//! What a user names as a test source: a git URL or a local directory, and `key=value` adjust context.
//! Plain parsing, shared by the operator's client and the daemon.

/// A context item that is not `key=value`.
#[derive(Debug, thiserror::Error)]
#[error("context {text:?} must be key=value")]
pub struct BadContext {
    pub text: String,
}

/// Is `location` a git URL (fetched into the coordinator's cache) rather than a local directory?
pub fn is_git_url(location: &str) -> bool {
    location.contains("://") || location.starts_with("git@") || location.ends_with(".git")
}

/// `key=value` context dimensions from the command line.
pub fn parse_context(items: &[String]) -> Result<Vec<(String, String)>, BadContext> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(BadContext { text: item.clone() }),
        })
        .collect()
}
