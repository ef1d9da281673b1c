//! Checkout: one git repository per test repository as a cache (fetched into under a per-cache lock), and a
//! detached worktree of the assigned commit per suite attempt.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use polarizer_shared::run::Assignment;
use polarizer_transport::git;
use polarizer_transport::state_files::secret_digest;
use tracing::{info, warn};

use super::RunnerConfig;

const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The repository cache of one test repository: `repo_cache/<16 hex of sha256(repo)>`.
fn cache_dir(config: &RunnerConfig, repo: &str) -> PathBuf {
    let digest = secret_digest(repo);
    config.repo_cache.join(digest.get(..16).unwrap_or(&digest))
}

/// Serialises git operations on one cache within this process: concurrent fetches and worktree changes in
/// the same repository race on its lock files.
fn cache_lock(cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(cache.to_path_buf()).or_default().clone()
}

/// Fetches the commit into the repository cache and adds `workdir` as a detached worktree of it. On failure,
/// returns git's last line of complaint.
pub(super) async fn checkout(
    assignment: &Assignment,
    config: &RunnerConfig,
    workdir: &Path,
) -> Result<(), String> {
    let commit = assignment.commit.as_str();
    let is_object_id =
        (4..=64).contains(&commit.len()) && commit.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !is_object_id {
        return Err(format!("`{commit}` is not a commit id"));
    }
    git::check_url(&assignment.repo).map_err(|error| error.to_string())?;
    if !assignment.git_ref.is_empty() {
        git::check_ref(&assignment.git_ref).map_err(|error| error.to_string())?;
    }
    let cache = cache_dir(config, &assignment.repo);
    let lock = cache_lock(&cache);
    let _guard = lock.lock().await;

    tokio::fs::create_dir_all(&cache)
        .await
        .map_err(|error| format!("cannot create {}: {error}", cache.display()))?;
    if tokio::fs::metadata(cache.join(".git")).await.is_err() {
        run_git(&cache, ["init", "--quiet"]).await?;
    }
    if !has_commit(&cache, commit).await {
        // Servers may refuse a bare commit id as a want; the ref it came from then brings it along.
        if let Err(by_commit) = fetch(&cache, &assignment.repo, commit).await {
            let by_ref = match assignment.git_ref.as_str() {
                "" => Ok(()),
                git_ref => fetch(&cache, &assignment.repo, git_ref).await,
            };
            if !has_commit(&cache, commit).await {
                return Err(by_ref.err().unwrap_or(by_commit));
            }
        }
    }

    tokio::fs::create_dir_all(&config.work_root)
        .await
        .map_err(|error| format!("cannot create {}: {error}", config.work_root.display()))?;
    match tokio::fs::remove_dir_all(workdir).await {
        Ok(()) => info!(dir = %workdir.display(), "removed a leftover suite worktree"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot remove {}: {error}", workdir.display())),
    }
    run_git(&cache, ["worktree", "prune"]).await?;
    run_git(
        &cache,
        [
            OsStr::new("worktree"),
            OsStr::new("add"),
            OsStr::new("--quiet"),
            OsStr::new("--detach"),
            OsStr::new("--force"),
            workdir.as_os_str(),
            OsStr::new(commit),
        ],
    )
    .await
}

/// Removes a suite worktree and forgets it in the repository cache; a failure is only logged.
pub(super) async fn remove_worktree(
    assignment: &Assignment,
    config: &RunnerConfig,
    workdir: &Path,
) {
    let cache = cache_dir(config, &assignment.repo);
    let lock = cache_lock(&cache);
    let _guard = lock.lock().await;
    let removed = run_git(
        &cache,
        [
            OsStr::new("worktree"),
            OsStr::new("remove"),
            OsStr::new("--force"),
            OsStr::new("--force"),
            workdir.as_os_str(),
        ],
    )
    .await;
    if removed.is_ok() {
        return;
    }
    // Not a registered worktree (any more), or git refused: remove the directory and forget it.
    match tokio::fs::remove_dir_all(workdir).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            warn!(dir = %workdir.display(), error = %error, "cannot remove a suite worktree")
        }
    }
    let _ = run_git(&cache, ["worktree", "prune"]).await;
}

async fn fetch(cache: &Path, repo: &str, what: &str) -> Result<(), String> {
    run_git(cache, ["fetch", "--quiet", "--", repo, what]).await
}

async fn has_commit(cache: &Path, commit: &str) -> bool {
    let object = format!("{commit}^{{commit}}");
    run_git(cache, ["cat-file", "-e", object.as_str()])
        .await
        .is_ok()
}

/// Runs `git -C cache args…` through the locked-down runner; `Err` holds git's last stderr line.
async fn run_git<I, S>(cache: &Path, args: I) -> Result<(), String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    git::run(cache, args, GIT_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use polarizer_shared::run::{Assignment, OutputStream, RecordBody};

    use crate::runner::fixture::{event_tags, fixture, output_lines, test};

    #[tokio::test]
    async fn a_failed_checkout_finishes_the_suite_with_an_error_and_no_tests() {
        let fixture = fixture();
        let assignment = Assignment {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            ..fixture.assignment(vec![test("/t/never", "true")])
        };
        let records = fixture.run(assignment).await;

        let tags = event_tags(&records);
        assert_eq!(tags.len(), 2, "{records:#?}");
        let RecordBody::SuiteFinished {
            error: Some(error), ..
        } = &records[records.len() - 1]
        else {
            panic!("{records:#?}");
        };
        let expected_start = format!(
            "checkout of {} at 0123456789abcdef0123456789abcdef01234567 failed: ",
            fixture.repo.display()
        );
        assert!(error.starts_with(&expected_start), "{error}");
        assert_eq!(output_lines(&records, "", OutputStream::Agent).len(), 1);
    }
}
