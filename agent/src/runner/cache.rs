//! The agent's cache of tests, `<state dir>/repos`: one git repository per test repository (each commit it
//! holds named `refs/polarizer/<commit>`, its last use the mtime of `.git/polarizer-used/<commit>`), tars of
//! trees by commit under `tars/` for hosts without git, and transfers in progress under `incoming/`. Kept
//! under `test_cache_max_mb`: past it, the least recently used commits go first (never the one about to
//! run; a worktree in use keeps its own objects, git never prunes what a worktree's HEAD reaches). A
//! commit's objects go once no kept commit reaches them: in a line of history, the newer commits keep
//! the older ones' objects, and eviction goes on to the next entry until the cache fits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use polarizer_transport::git;
use polarizer_transport::state_files::secret_digest;
use tracing::{info, warn};

use super::RunnerConfig;

const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Transfers not finished in this long are given up: their partial files go.
const INCOMING_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The repository cache of one test repository: `repo_cache/<16 hex of sha256(repo)>`.
pub(super) fn cache_dir(config: &RunnerConfig, repo: &str) -> PathBuf {
    let digest = secret_digest(repo);
    config.repo_cache.join(digest.get(..16).unwrap_or(&digest))
}

/// Serialises work on one cache entry (a repository, a tar) within this process: concurrent fetches and
/// worktree changes in the same repository race on its lock files.
pub(super) fn cache_lock(entry: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(entry.to_path_buf()).or_default().clone()
}

fn markers(repository: &Path) -> PathBuf {
    repository.join(".git/polarizer-used")
}

/// Records that `commit` of this repository was just used.
pub(super) fn mark_used(repository: &Path, commit: &str) {
    let markers = markers(repository);
    let marker = markers.join(commit);
    if let Err(err) =
        std::fs::create_dir_all(&markers).and_then(|()| std::fs::File::create(&marker).map(|_| ()))
    {
        warn!(path = %marker.display(), error = %err, "cannot record a commit's use");
    }
}

/// Records that a file (a tar) was just used.
pub(super) fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// The bytes under `path`, symlinks not followed.
fn size_of(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|entry| size_of(&entry.path())).sum())
        .unwrap_or(0)
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

enum Entry {
    Commit { repository: PathBuf, commit: String },
    Tar(PathBuf),
}

/// What the cache holds, least recently used first.
fn entries(repo_cache: &Path) -> Vec<(SystemTime, Entry)> {
    let mut entries = Vec::new();
    for dir in std::fs::read_dir(repo_cache)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = dir.path();
        match dir.file_name().to_str() {
            Some("incoming") => {}
            Some("tars") => {
                for tar in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    entries.push((modified(&tar.path()), Entry::Tar(tar.path())));
                }
            }
            _ => {
                for marker in std::fs::read_dir(markers(&path))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Some(commit) = marker.file_name().to_str() {
                        entries.push((
                            modified(&marker.path()),
                            Entry::Commit {
                                repository: path.clone(),
                                commit: commit.to_string(),
                            },
                        ));
                    }
                }
            }
        }
    }
    entries.sort_by_key(|(used, _)| *used);
    entries
}

/// Evicts the least recently used commits and tars until the cache is under its limit, keeping `keep`;
/// forgets transfers left unfinished for a day.
pub(super) fn evict(config: &RunnerConfig, keep: &str) {
    let incoming = config.repo_cache.join("incoming");
    for part in std::fs::read_dir(&incoming).into_iter().flatten().flatten() {
        let age = SystemTime::now()
            .duration_since(modified(&part.path()))
            .unwrap_or_default();
        if age > INCOMING_KEPT {
            let _ = std::fs::remove_file(part.path());
        }
    }
    let max = config.test_cache_max_bytes;
    let mut total = size_of(&config.repo_cache);
    if total <= max {
        return;
    }
    let before = total;
    let mut evicted = 0;
    for (_, entry) in entries(&config.repo_cache) {
        if total <= max {
            break;
        }
        match entry {
            Entry::Tar(tar) => {
                if tar.file_stem().and_then(|stem| stem.to_str()) == Some(keep) {
                    continue;
                }
                let lock = cache_lock(&tar);
                let _guard = lock.blocking_lock();
                let _ = std::fs::remove_file(&tar);
            }
            Entry::Commit { repository, commit } => {
                if commit == keep {
                    continue;
                }
                let lock = cache_lock(&repository);
                let _guard = lock.blocking_lock();
                forget_commit(&repository, &commit);
            }
        }
        evicted += 1;
        total = size_of(&config.repo_cache);
    }
    info!(
        evicted,
        before,
        after = total,
        limit = max,
        "evicted least recently used tests from the cache"
    );
}

/// Drops a commit's name and whatever only it reached; a repository left with no commit and no worktree goes.
fn forget_commit(repository: &Path, commit: &str) {
    let name = format!("refs/polarizer/{commit}");
    let _ = git::run_blocking(repository, ["update-ref", "-d", name.as_str()], GIT_TIMEOUT);
    let _ = std::fs::remove_file(markers(repository).join(commit));
    let names_left = std::fs::read_dir(markers(repository))
        .map(|entries| entries.count())
        .unwrap_or(0);
    let worktrees = std::fs::read_dir(repository.join(".git/worktrees"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    if names_left == 0 && worktrees == 0 {
        let _ = std::fs::remove_dir_all(repository);
        return;
    }
    if let Err(err) = git::run_blocking(
        repository,
        ["-c", "gc.reflogExpire=now", "gc", "--quiet", "--prune=now"],
        GIT_TIMEOUT,
    ) {
        warn!(repository = %repository.display(), error = %err, "git gc failed while evicting");
    }
}

/// The commit a tar made by `git archive` says it holds (its pax global header's comment).
pub(super) fn tar_commit(tar: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(tar).ok()?;
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries().ok()?;
    let mut first = entries.next()?.ok()?;
    if !first.header().entry_type().is_pax_global_extensions() {
        return None;
    }
    let mut text = String::new();
    first.by_ref().take(4096).read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        line.split_once(" comment=")
            .map(|(_, id)| id.trim().to_string())
    })
}

/// Unpacks a tar of a tree into `workdir` (entries that would land outside it are refused by the tar
/// reader).
pub(super) fn unpack(tar: &Path, workdir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(workdir).map_err(|err| format!("{}: {err}", workdir.display()))?;
    let file = std::fs::File::open(tar).map_err(|err| format!("{}: {err}", tar.display()))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_mtime(true);
    archive
        .unpack(workdir)
        .map_err(|err| format!("cannot unpack the tests into {}: {err}", workdir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_in(directory: &Path, args: &[&str]) -> String {
        git::run_blocking(
            directory,
            [
                &[
                    "-c",
                    "user.name=Polarizer Test",
                    "-c",
                    "user.email=test@example.invalid",
                ],
                args,
            ]
            .concat(),
            GIT_TIMEOUT,
        )
        .unwrap()
    }

    fn noise(bytes: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn used_at(path: &Path, seconds_ago: u64) {
        let file = std::fs::File::options().append(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds_ago))
            .unwrap();
    }

    /// Past the limit, the least recently used go first, a tar or a commit alike, until the cache fits;
    /// the commit about to run stays whatever its age, and a repository left with nothing goes whole.
    #[test]
    fn eviction_takes_the_least_recently_used_until_the_cache_fits() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RunnerConfig::new(dir.path());
        let source = dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        git_in(&source, &["init", "--quiet"]);
        // The cache as the agent fills it: fetched commits, each named, nothing else.
        let repository = cache_dir(&config, "https://example.invalid/tests.git");
        std::fs::create_dir_all(&repository).unwrap();
        git_in(&repository, &["init", "--quiet"]);
        let mut commits = Vec::new();
        for (index, seed) in [11, 21, 31].into_iter().enumerate() {
            // Unrelated commits (as of branches force-pushed over): each reaches only its own blob. In a
            // line of history an older commit frees nothing while a newer one is kept.
            git_in(
                &source,
                &["checkout", "--quiet", "--orphan", &format!("o{index}")],
            );
            std::fs::write(source.join("blob"), noise(400_000, seed)).unwrap();
            git_in(&source, &["add", "blob"]);
            git_in(&source, &["commit", "--quiet", "-m", &format!("c{index}")]);
            let commit = git_in(&source, &["rev-parse", "HEAD"]);
            git_in(
                &repository,
                &["fetch", "--quiet", "--", source.to_str().unwrap(), &commit],
            );
            git_in(
                &repository,
                &["update-ref", &format!("refs/polarizer/{commit}"), &commit],
            );
            mark_used(&repository, &commit);
            commits.push(commit);
        }
        std::fs::remove_file(repository.join(".git/FETCH_HEAD")).unwrap();
        git_in(&repository, &["gc", "--quiet", "--prune=now"]);

        let tars = config.repo_cache.join("tars");
        std::fs::create_dir_all(&tars).unwrap();
        let tar = tars.join(format!("{}.tar", "a".repeat(40)));
        std::fs::write(&tar, noise(400_000, 41)).unwrap();
        // Oldest to newest: commit 0 (but it is about to run), the tar, commit 1, commit 2.
        let marker = |commit: &str| markers(&repository).join(commit);
        used_at(&marker(&commits[0]), 400);
        used_at(&tar, 300);
        used_at(&marker(&commits[1]), 200);
        used_at(&marker(&commits[2]), 100);

        config.test_cache_max_bytes = size_of(&config.repo_cache) - 100_000;
        evict(&config, &commits[0]);
        assert!(!tar.exists(), "the least recently used entry that may go");
        assert!(
            marker(&commits[0]).exists(),
            "the commit about to run stays"
        );
        assert!(marker(&commits[1]).exists() && marker(&commits[2]).exists());

        config.test_cache_max_bytes = size_of(&config.repo_cache) - 100_000;
        evict(&config, &commits[0]);
        assert!(!marker(&commits[1]).exists(), "next oldest");
        let named = git_in(
            &repository,
            &["for-each-ref", "--format=%(objectname)", "refs/polarizer/"],
        );
        assert!(
            !named.contains(&commits[1]) && named.contains(&commits[2]),
            "{named}"
        );
        assert!(size_of(&config.repo_cache) <= config.test_cache_max_bytes);

        config.test_cache_max_bytes = 1;
        evict(&config, "none of them");
        assert!(
            !repository.exists(),
            "nothing left in it: the repository goes"
        );
    }

    /// The commit `git archive` wrote into a tar's header, and its tree unpacked.
    #[test]
    fn a_tar_from_git_archive_names_its_commit_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let repository = dir.path().join("repo");
        std::fs::create_dir_all(repository.join("tests")).unwrap();
        git_in(&repository, &["init", "--quiet"]);
        std::fs::write(repository.join("tests/run.sh"), "echo ok\n").unwrap();
        git_in(&repository, &["add", "."]);
        git_in(&repository, &["commit", "--quiet", "-m", "one"]);
        let commit = git_in(&repository, &["rev-parse", "HEAD"]);
        let tar = dir.path().join("tree.tar");
        let output = format!("--output={}", tar.display());
        git_in(&repository, &["archive", "--format=tar", &output, &commit]);

        assert_eq!(tar_commit(&tar), Some(commit));
        let workdir = dir.path().join("work");
        unpack(&tar, &workdir).unwrap();
        assert_eq!(read(&workdir.join("tests/run.sh")), "echo ok\n");
        assert_eq!(tar_commit(&workdir.join("tests/run.sh")), None);
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }
}
