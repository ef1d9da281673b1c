//! Checkout: one git repository per test repository as a cache (filled under a per-cache lock, by a bundle
//! the coordinator ships or, where allowed, a fetch from the repository itself), and a detached worktree of
//! the assigned commit per suite attempt. Without git on the host, a tar of the tree per commit instead.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::Duration;

use polarizer_shared::run::Assignment;
use polarizer_shared::shipping::{
    bundle_ref, is_full_commit_id, ShipFormat, ShipRequest, MAX_HAVES,
};
use polarizer_transport::git;
use tracing::{info, warn};

use super::cache::{self, cache_dir, cache_lock};
use super::shipping::{self, Courier};
use super::RunnerConfig;

const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Gets the commit into the repository cache (already there; fetched directly where allowed; or shipped
/// by the coordinator) and adds `workdir` as a detached worktree of it. Without `git` on this host, the
/// tree comes as a tar instead. On failure, returns the reason (git's last line of complaint, or the
/// coordinator's).
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
    let checked_out = if config.git_available {
        checkout_with_git(assignment, config, workdir).await
    } else {
        checkout_from_tar(assignment, config, workdir).await
    };
    if checked_out.is_ok() {
        let config = config.clone();
        let keep = commit.to_string();
        let _ = tokio::task::spawn_blocking(move || cache::evict(&config, &keep)).await;
    }
    checked_out
}

async fn checkout_with_git(
    assignment: &Assignment,
    config: &RunnerConfig,
    workdir: &Path,
) -> Result<(), String> {
    let commit = assignment.commit.as_str();
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
        match &config.courier {
            // The runner's own tests, and agents started without a coordinator link: fetch it.
            None => fetch_directly(&cache, assignment).await?,
            Some(courier) => {
                // A path on the coordinator's host is never this host's to read.
                let direct =
                    config.fetch_tests_directly && !Path::new(&assignment.repo).is_absolute();
                if direct {
                    if let Err(error) = fetch_directly(&cache, assignment).await {
                        info!(
                            error,
                            "fetching the tests directly failed; asking the coordinator for them"
                        );
                    }
                }
                if !has_commit(&cache, commit).await {
                    receive_bundle(&cache, assignment, config, courier).await?;
                }
            }
        }
    }
    // Named, so the cache keeps it (and can evict it) and later bundles can be thin against it.
    let name = format!("refs/polarizer/{commit}");
    run_git(&cache, ["update-ref", name.as_str(), commit]).await?;
    cache::mark_used(&cache, commit);

    tokio::fs::create_dir_all(&config.work_root)
        .await
        .map_err(|error| format!("cannot create {}: {error}", config.work_root.display()))?;
    remove_leftover(workdir).await?;
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

async fn remove_leftover(workdir: &Path) -> Result<(), String> {
    match tokio::fs::remove_dir_all(workdir).await {
        Ok(()) => {
            info!(dir = %workdir.display(), "removed a leftover suite worktree");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("cannot remove {}: {error}", workdir.display())),
    }
}

/// Fetches the commit from the test repository itself; servers may refuse a bare commit id as a want, and
/// the ref it came from then brings it along.
async fn fetch_directly(cache: &Path, assignment: &Assignment) -> Result<(), String> {
    let commit = assignment.commit.as_str();
    if let Err(by_commit) = fetch(cache, &assignment.repo, commit).await {
        let by_ref = match assignment.git_ref.as_str() {
            "" => Ok(()),
            git_ref => fetch(cache, &assignment.repo, git_ref).await,
        };
        if !has_commit(cache, commit).await {
            return Err(by_ref.err().unwrap_or(by_commit));
        }
    }
    Ok(())
}

/// Asks the coordinator for a bundle of the commit, thin against the commits this cache holds, and fetches
/// it into the cache. When git refuses a thin bundle (the commits it needs are gone), asks once more for a
/// whole one.
async fn receive_bundle(
    cache: &Path,
    assignment: &Assignment,
    config: &RunnerConfig,
    courier: &Courier,
) -> Result<(), String> {
    let commit = assignment.commit.as_str();
    let mut haves = held_commits(cache).await;
    loop {
        let request = ShipRequest {
            suite: assignment.suite,
            format: ShipFormat::Bundle,
            haves: haves.clone(),
        };
        let (bundle, offer) =
            shipping::receive(courier, &request, &config.repo_cache.join("incoming")).await?;
        let fetched = if offer.commit.starts_with(commit) {
            let refspec = format!(
                "+{}:refs/polarizer/{}",
                bundle_ref(&offer.commit),
                offer.commit
            );
            run_git(
                cache,
                [
                    OsStr::new("fetch"),
                    OsStr::new("--quiet"),
                    OsStr::new("--"),
                    bundle.as_os_str(),
                    OsStr::new(&refspec),
                ],
            )
            .await
        } else {
            Err(format!(
                "the coordinator shipped {} for {commit}",
                offer.commit
            ))
        };
        let _ = tokio::fs::remove_file(&bundle).await;
        match fetched {
            Ok(()) if has_commit(cache, commit).await => {
                info!(
                    commit,
                    bytes = offer.size,
                    thin_against = offer.thin_against.len(),
                    "tests received from the coordinator"
                );
                return Ok(());
            }
            Ok(()) => return Err(format!("the bundle shipped for {commit} does not hold it")),
            Err(error) if !haves.is_empty() => {
                warn!(error, "a thin bundle did not apply; asking for a whole one");
                haves.clear();
            }
            Err(error) => return Err(error),
        }
    }
}

/// The commits this cache holds by name, most recently committed first: what a bundle can be thin against.
async fn held_commits(cache: &Path) -> Vec<String> {
    let listed = git::run(
        cache,
        [
            "for-each-ref",
            "--sort=-committerdate",
            "--format=%(objectname)",
            "refs/polarizer/",
        ],
        GIT_TIMEOUT,
    )
    .await
    .unwrap_or_default();
    listed
        .lines()
        .filter(|line| is_full_commit_id(line))
        .take(MAX_HAVES)
        .map(str::to_string)
        .collect()
}

/// Without git: the tree at the commit as a tar from the coordinator (kept in the cache by commit), unpacked
/// into `workdir`.
async fn checkout_from_tar(
    assignment: &Assignment,
    config: &RunnerConfig,
    workdir: &Path,
) -> Result<(), String> {
    let commit = assignment.commit.as_str();
    let tars = config.repo_cache.join("tars");
    let tar = tars.join(format!("{commit}.tar"));
    let lock = cache_lock(&tar);
    let _guard = lock.lock().await;
    if tokio::fs::metadata(&tar).await.is_err() {
        let Some(courier) = &config.courier else {
            return Err(
                "git is not installed on this host, and no coordinator can ship a tar".into(),
            );
        };
        let request = ShipRequest {
            suite: assignment.suite,
            format: ShipFormat::Tar,
            haves: Vec::new(),
        };
        let (received, offer) =
            shipping::receive(courier, &request, &config.repo_cache.join("incoming")).await?;
        let checked = {
            let received = received.clone();
            tokio::task::spawn_blocking(move || cache::tar_commit(&received))
                .await
                .map_err(|error| error.to_string())?
        };
        match checked {
            Some(held) if held.starts_with(commit) && offer.commit.starts_with(commit) => {}
            held => {
                let _ = tokio::fs::remove_file(&received).await;
                return Err(format!(
                    "the tar shipped for {commit} holds {}",
                    held.unwrap_or_else(|| "no commit id".into())
                ));
            }
        }
        tokio::fs::create_dir_all(&tars)
            .await
            .map_err(|error| format!("cannot create {}: {error}", tars.display()))?;
        tokio::fs::rename(&received, &tar)
            .await
            .map_err(|error| format!("{}: {error}", tar.display()))?;
        info!(
            commit,
            bytes = offer.size,
            "tests received from the coordinator as a tar (no git here)"
        );
    }
    cache::touch(&tar);
    tokio::fs::create_dir_all(&config.work_root)
        .await
        .map_err(|error| format!("cannot create {}: {error}", config.work_root.display()))?;
    remove_leftover(workdir).await?;
    let (tar, workdir) = (tar.clone(), workdir.to_path_buf());
    tokio::task::spawn_blocking(move || cache::unpack(&tar, &workdir))
        .await
        .map_err(|error| error.to_string())?
}

/// Removes a suite worktree and forgets it in the repository cache; a failure is only logged.
pub(super) async fn remove_worktree(
    assignment: &Assignment,
    config: &RunnerConfig,
    workdir: &Path,
) {
    if !config.git_available {
        let _ = remove_leftover(workdir).await;
        return;
    }
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
