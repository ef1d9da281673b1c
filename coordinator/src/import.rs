//! Importing an fmf tree: from a directory, or from a git URL cloned into a cache under the data dir
//! (system `git`). Reads and checks everything before the store sees any of it, so a bad tree changes
//! nothing stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use polarizer_shared::catalog::Source;
use polarizer_shared::fmf::{Context, FmfValue, Tree};
use polarizer_shared::metadata::Catalog;

use crate::catalog::Import;

/// Distros probed to find tests whose metadata differs by distro (through `adjust`).
const PROBE_DISTROS: [&str; 6] = [
    "fedora-41",
    "centos-stream-9",
    "rhel-8.10",
    "rhel-9.6",
    "rhel-10.0",
    "debian-12",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{location}: no such directory")]
    NoSuchDirectory { location: String },
    #[error("{0}")]
    Fmf(#[from] polarizer_shared::fmf::FmfError),
    #[error("{0}")]
    Metadata(#[from] polarizer_shared::metadata::MetadataError),
    #[error("git {action} {location}: {message}")]
    Git {
        action: &'static str,
        location: String,
        message: String,
    },
    #[error("context {text:?} must be key=value")]
    BadContext { text: String },
}

pub fn is_git_url(location: &str) -> bool {
    location.contains("://") || location.starts_with("git@") || location.ends_with(".git")
}

/// Reads the tree at `location` (adjusted for `context`), ready for the store.
pub fn prepare(
    location: &str,
    git_ref: &str,
    context: &[(String, String)],
    data_dir: &Path,
    now_ms: i64,
) -> Result<Import, ImportError> {
    let (tree_path, git_commit) = if is_git_url(location) {
        let checkout = checkout(location, git_ref, &data_dir.join("git-cache"))?;
        let commit = git(&checkout, &["rev-parse", "HEAD"], "rev-parse", location)?;
        (checkout, commit)
    } else {
        let path = Path::new(location);
        if !path.is_dir() {
            return Err(ImportError::NoSuchDirectory {
                location: location.to_string(),
            });
        }
        // A directory inside a git work tree records its commit too; elsewhere none.
        let commit = git(path, &["rev-parse", "HEAD"], "rev-parse", location).unwrap_or_default();
        (path.to_path_buf(), commit)
    };
    let mut base = Tree::load(&tree_path)?;
    let unadjusted = probe_needed(&base).then(|| base.clone());
    let mut fmf_context = Context::new();
    for (key, value) in context {
        fmf_context = fmf_context.with_dimension(key, [value.as_str()]);
    }
    base.adjust(&fmf_context)?;
    let catalog = Catalog::from_tree(&base)?;

    let mut differs_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(unadjusted) = unadjusted {
        for distro in PROBE_DISTROS {
            let mut probed = unadjusted.clone();
            let mut probe_context = Context::new().with_dimension("distro", [distro]);
            for (key, value) in context.iter().filter(|(key, _)| key != "distro") {
                probe_context = probe_context.with_dimension(key, [value.as_str()]);
            }
            if probed.adjust(&probe_context).is_err() {
                continue;
            }
            for test in &catalog.tests {
                let differs = match (base.node(&test.name), probed.node(&test.name)) {
                    (Some(ours), Some(theirs)) => {
                        strip_adjust(ours.data()) != strip_adjust(theirs.data())
                    }
                    _ => true,
                };
                if differs {
                    differs_by
                        .entry(test.id.clone())
                        .or_default()
                        .push(distro.to_string());
                }
            }
        }
    }
    let source = Source {
        location: location.to_string(),
        git_ref: git_ref.to_string(),
        git_commit,
        tree_path: tree_path.display().to_string(),
    };
    Ok(Import {
        source,
        catalog,
        differs_by,
        now_ms,
    })
}

/// Probing costs a full adjust per distro: only worth it when some rule looks at the distro.
fn probe_needed(tree: &Tree) -> bool {
    tree.nodes().iter().any(|node| match node.get("adjust") {
        Some(value) => format!("{value:?}").contains("distro"),
        None => false,
    })
}

fn strip_adjust(data: &polarizer_shared::fmf::FmfMap) -> Vec<(&String, &FmfValue)> {
    data.iter()
        .filter(|(key, _)| key.as_str() != "adjust")
        .collect()
}

fn git(
    directory: &Path,
    args: &[&str],
    action: &'static str,
    location: &str,
) -> Result<String, ImportError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(directory)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|err| ImportError::Git {
            action,
            location: location.to_string(),
            message: format!("cannot run git: {err}"),
        })?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr)
            .lines()
            .rfind(|line| !line.trim().is_empty())
            .unwrap_or("failed")
            .to_string();
        return Err(ImportError::Git {
            action,
            location: location.to_string(),
            message,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Clones (once) and fetches `git_ref` into a cache directory named after the URL; checks it out detached.
fn checkout(url: &str, git_ref: &str, cache: &Path) -> Result<PathBuf, ImportError> {
    let key = polarizer_transport::state_files::secret_digest(url);
    let directory = cache.join(&key[..16]);
    std::fs::create_dir_all(cache).map_err(|err| ImportError::Git {
        action: "cache",
        location: url.into(),
        message: err.to_string(),
    })?;
    if !directory.join(".git").exists() {
        git(cache, &["init", "--quiet", &key[..16]], "init", url)?;
    }
    let wanted = if git_ref.is_empty() { "HEAD" } else { git_ref };
    git(
        &directory,
        &["fetch", "--quiet", "--depth", "1", url, wanted],
        "fetch",
        url,
    )?;
    git(
        &directory,
        &["checkout", "--quiet", "--detach", "--force", "FETCH_HEAD"],
        "checkout",
        url,
    )?;
    Ok(directory)
}

/// `key=value` context dimensions from the command line.
pub fn parse_context(items: &[String]) -> Result<Vec<(String, String)>, ImportError> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(ImportError::BadContext { text: item.clone() }),
        })
        .collect()
}
