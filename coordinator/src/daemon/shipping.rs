//! Shipping a run's tests to the agents that run its suites (see `polarizer_shared::shipping` for the
//! exchange). The coordinator fetched the run's commit into its git cache to read the fmf tree; from there
//! it builds a git bundle (thin against the commits the agent holds) or a tar of the tree, once per commit,
//! format and base, kept under `<data dir>/shipping` so that the agents running a run's suites at once share
//! it and a transfer cut by a reconnect or a coordinator restart resumes on the same file.
//! `daemon::transfers` sends them a chunk at a time over the agent's connection; QUIC's flow control is
//! the backpressure, and at most `ship_rate_kb_per_s` paces each transfer when set.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polarizer_shared::shipping::{bundle_ref, ShipFormat, ShipOffer, CHUNK_BYTES};
use polarizer_transport::git::{self, RepoLocks};
use tokio::sync::OnceCell;
use tracing::info;

use crate::daemon::config::ShippingConfig;

const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Built files kept for reuse (each run's commit, per format and base); older unused ones are deleted.
const KEEP_ARTIFACTS: usize = 64;
const KEEP_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Files an earlier process built are reused (a transfer it began resumes on the same file) unless older.
const REUSE_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// One built file and what an agent is told of it.
pub struct Artifact {
    pub path: PathBuf,
    pub offer: ShipOffer,
}

/// The coordinator's built files, each built once however many agents ask for it at the same time.
pub struct Shipping {
    git_cache: PathBuf,
    dir: PathBuf,
    config: ShippingConfig,
    built: Mutex<Built>,
    /// Files built by this process (each once, however many agents asked at the same time).
    builds: AtomicU64,
}

#[derive(Default)]
struct Built {
    cells: HashMap<String, Arc<OnceCell<Arc<Artifact>>>>,
    /// Keys, oldest first: what goes when more than `KEEP_ARTIFACTS` are kept.
    order: VecDeque<String>,
}

impl Shipping {
    pub fn new(data_dir: &Path, config: ShippingConfig) -> Shipping {
        let dir = data_dir.join("shipping");
        // What an earlier process left: files half built, and files too old to be resumed.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let stale = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_none_or(|age| age > REUSE_FOR);
            if stale
                || path
                    .extension()
                    .is_some_and(|extension| extension == "building")
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        Shipping {
            git_cache: data_dir.join("git-cache"),
            dir,
            config,
            built: Mutex::default(),
            builds: AtomicU64::new(0),
        }
    }

    /// Each transfer is paced to this many bytes per second; 0 for no limit.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.config.rate_bytes_per_s
    }

    /// Files built by this process so far.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// The coordinator's cache of `repo`, where triggers fetched its commits.
    fn repository(&self, repo: &str) -> PathBuf {
        repository_in(&self.git_cache, repo)
    }

    /// The file for `commit` of `repo` in `format`, thin against those of `haves` this coordinator holds;
    /// built now unless it was built before (by this process or an earlier one).
    pub async fn artifact(
        &self,
        repo: &str,
        commit: &str,
        format: ShipFormat,
        haves: Vec<String>,
    ) -> Result<Arc<Artifact>, String> {
        let repository = self.repository(repo);
        let (base, base_key) = if format == ShipFormat::Bundle && !haves.is_empty() {
            let repository = repository.clone();
            let commit = commit.to_string();
            let base = tokio::task::spawn_blocking(move || held_bases(&repository, &commit, haves))
                .await
                .map_err(|err| err.to_string())?;
            let key = match base.is_empty() {
                true => "full".to_string(),
                false => polarizer_transport::state_files::secret_digest(&base.join(","))[..16]
                    .to_string(),
            };
            (base, key)
        } else {
            (Vec::new(), "full".to_string())
        };
        let key = format!("{commit}-{}-{base_key}", format.name());
        let cell = self.cell(&key);
        let artifact = cell
            .get_or_try_init(|| {
                let repository = repository.clone();
                let repo = repo.to_string();
                let commit = commit.to_string();
                let path = self.dir.join(format!("{key}.{}", format.name()));
                let config = self.config;
                self.builds.fetch_add(1, Ordering::Relaxed);
                async move {
                    tokio::task::spawn_blocking(move || {
                        build(&repository, &repo, &commit, format, &base, &path, config)
                    })
                    .await
                    .map_err(|err| err.to_string())?
                }
            })
            .await?
            .clone();
        self.trim();
        Ok(artifact)
    }

    /// The cell for `key`, made if new.
    fn cell(&self, key: &str) -> Arc<OnceCell<Arc<Artifact>>> {
        let mut built = self.built.lock().expect("shipping lock");
        if let Some(cell) = built.cells.get(key) {
            return cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        built.cells.insert(key.to_string(), cell.clone());
        built.order.push_back(key.to_string());
        cell
    }

    /// Forgets a file found damaged (and deletes it): the next request builds it again.
    pub fn forget(&self, damaged: &Arc<Artifact>) {
        let mut built = self.built.lock().expect("shipping lock");
        let key = built.cells.iter().find_map(|(key, cell)| {
            cell.get()
                .is_some_and(|artifact| Arc::ptr_eq(artifact, damaged))
                .then(|| key.clone())
        });
        if let Some(key) = key {
            built.cells.remove(&key);
            built.order.retain(|kept| *kept != key);
            let _ = std::fs::remove_file(&damaged.path);
        }
    }

    /// Forgets the oldest files no transfer uses (and deletes them) while more than `KEEP_ARTIFACTS` are
    /// kept or they hold more than `KEEP_BYTES` (at least two of the largest allowed).
    fn trim(&self) {
        let keep_bytes = KEEP_BYTES.max(2 * self.config.max_bytes);
        let mut built = self.built.lock().expect("shipping lock");
        let size =
            |cell: &OnceCell<Arc<Artifact>>| cell.get().map_or(0, |artifact| artifact.offer.size);
        let mut bytes: u64 = built.cells.values().map(|cell| size(cell)).sum();
        let mut scan = built.order.len();
        while (built.cells.len() > KEEP_ARTIFACTS || bytes > keep_bytes) && scan > 0 {
            scan -= 1;
            let Some(oldest) = built.order.pop_front() else {
                break;
            };
            // In use: someone waits for it to be built, or a transfer holds it.
            let in_use = built.cells.get(&oldest).is_some_and(|cell| {
                Arc::strong_count(cell) > 1
                    || cell
                        .get()
                        .is_none_or(|artifact| Arc::strong_count(artifact) > 1)
            });
            if in_use {
                built.order.push_back(oldest);
                continue;
            }
            if let Some(artifact) = built
                .cells
                .remove(&oldest)
                .and_then(|cell| cell.get().cloned())
            {
                bytes -= artifact.offer.size;
                let _ = std::fs::remove_file(&artifact.path);
            }
        }
    }
}

/// Those of `haves` (checked to be commit ids) this repository holds, other than `commit` itself.
fn repository_in(git_cache: &Path, repo: &str) -> PathBuf {
    let key = polarizer_transport::state_files::secret_digest(repo);
    git_cache.join(&key[..16])
}

/// The coordinator's cache of `repo` under `data_dir`, where triggers fetched its commits.
pub fn cached_repository(data_dir: &Path, repo: &str) -> PathBuf {
    repository_in(&data_dir.join("git-cache"), repo)
}

fn held_bases(repository: &Path, commit: &str, haves: Vec<String>) -> Vec<String> {
    let _guard = RepoLocks::global().lock(repository);
    let mut held: Vec<String> = haves
        .into_iter()
        .filter(|have| have != commit)
        .filter(|have| {
            let object = format!("{have}^{{commit}}");
            git::run_blocking(repository, ["cat-file", "-e", object.as_str()], GIT_TIMEOUT).is_ok()
        })
        .collect();
    held.sort();
    held.dedup();
    held
}

/// Builds (or finds, from an earlier process) the file at `path` and reads its digests.
/// Makes sure the cache `repository` holds `commit` of `repo`: gone from it (a force-pushed branch, a
/// pruned object), it is fetched again by id. The caller holds the repository's lock.
pub fn ensure_commit(repository: &Path, repo: &str, commit: &str) -> Result<(), String> {
    let object = format!("{commit}^{{commit}}");
    if git::run_blocking(repository, ["cat-file", "-e", object.as_str()], GIT_TIMEOUT).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(repository).map_err(|err| err.to_string())?;
    if !repository.join(".git").exists() {
        git::run_blocking(repository, ["init", "--quiet"], GIT_TIMEOUT)
            .map_err(|err| err.to_string())?;
    }
    git::check_url(repo).map_err(|err| err.to_string())?;
    git::run_blocking(
        repository,
        ["fetch", "--quiet", "--", repo, commit],
        GIT_TIMEOUT,
    )
    .map(drop)
    .map_err(|err| {
        format!("{commit} is not in the coordinator's cache of {repo} and cannot be fetched: {err}")
    })
}

fn build(
    repository: &Path,
    repo: &str,
    commit: &str,
    format: ShipFormat,
    base: &[String],
    path: &Path,
    config: ShippingConfig,
) -> Result<Arc<Artifact>, String> {
    if !path.exists() {
        let _guard = RepoLocks::global().lock(repository);
        ensure_commit(repository, repo, commit)?;
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
        let partial = path.with_extension("building");
        let partial_arg = partial.as_os_str().to_owned();
        let built = match format {
            ShipFormat::Bundle => {
                let name = bundle_ref(commit);
                git::run_blocking(
                    repository,
                    ["update-ref", name.as_str(), commit],
                    GIT_TIMEOUT,
                )
                .map_err(|err| err.to_string())?;
                let mut args = vec![
                    "bundle".into(),
                    "create".into(),
                    partial_arg,
                    name.clone().into(),
                ];
                args.extend(base.iter().map(|have| format!("^{have}").into()));
                let bundled = git::run_blocking(repository, &args, GIT_TIMEOUT);
                // The name was only for the bundle: kept, it would pin the commit in the cache forever.
                let _ =
                    git::run_blocking(repository, ["update-ref", "-d", name.as_str()], GIT_TIMEOUT);
                bundled
            }
            ShipFormat::Tar => {
                let mut output = std::ffi::OsString::from("--output=");
                output.push(&partial);
                git::run_blocking(
                    repository,
                    [
                        "archive".into(),
                        "--format=tar".into(),
                        output,
                        std::ffi::OsString::from(commit),
                    ],
                    GIT_TIMEOUT,
                )
            }
        };
        if let Err(err) = built {
            let _ = std::fs::remove_file(&partial);
            return Err(format!(
                "cannot make a {} of {commit}: {err}",
                format.name()
            ));
        }
        std::fs::rename(&partial, path).map_err(|err| format!("{}: {err}", path.display()))?;
        info!(commit, format = format.name(), thin_against = base.len(), file = %path.display(), "built the tests to ship");
    }
    let size = std::fs::metadata(path)
        .map_err(|err| format!("{}: {err}", path.display()))?
        .len();
    if size > config.max_bytes {
        let _ = std::fs::remove_file(path);
        return Err(format!(
            "the tests at {commit} make a {} of {} MiB, over the limit of {} MiB (ship_max_mb)",
            format.name(),
            size.div_ceil(1024 * 1024),
            config.max_bytes / (1024 * 1024)
        ));
    }
    let chunk_digests = chunk_digests(path)?;
    let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
    for digest in &chunk_digests {
        whole.update(digest);
    }
    let id = whole
        .finish()
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(Arc::new(Artifact {
        path: path.to_path_buf(),
        offer: ShipOffer {
            id,
            commit: commit.to_string(),
            format,
            size,
            chunk_bytes: CHUNK_BYTES,
            chunk_digests,
            thin_against: base.to_vec(),
        },
    }))
}

fn chunk_digests(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let mut file = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut buffer = vec![0; CHUNK_BYTES as usize];
    let mut digests = Vec::new();
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) => return Err(format!("{}: {err}", path.display())),
            }
        }
        if filled == 0 {
            return Ok(digests);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &buffer[..filled]);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        digests.push(bytes);
        if filled < buffer.len() {
            return Ok(digests);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_in(directory: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(directory)
            .args([
                "-c",
                "user.name=Polarizer Test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Agents that ask for the same commit at the same time share one build; one that holds the parent
    /// gets a thin bundle of its own, far smaller; a tar holds the commit id `git archive` writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_build_and_a_held_parent_makes_it_thin() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git_in(&repo, &["init", "--quiet"]);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(repo.join("blob"), noise).unwrap();
        std::fs::write(repo.join("small"), "one\n").unwrap();
        git_in(&repo, &["add", "."]);
        git_in(&repo, &["commit", "--quiet", "-m", "one"]);
        let parent = git_in(&repo, &["rev-parse", "HEAD"]);
        std::fs::write(repo.join("small"), "two\n").unwrap();
        git_in(&repo, &["commit", "--quiet", "-am", "two"]);
        let child = git_in(&repo, &["rev-parse", "HEAD"]);
        let url: &'static str = repo.to_str().unwrap().to_string().leak();
        let data_dir = dir.path().join("data");
        drop(crate::daemon::import::checkout(url, "HEAD", &data_dir.join("git-cache")).unwrap());

        let shipping = Arc::new(Shipping::new(&data_dir, ShippingConfig::default()));
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let shipping = shipping.clone();
                let child = child.clone();
                tokio::spawn(async move {
                    shipping
                        .artifact(url, &child, ShipFormat::Bundle, Vec::new())
                        .await
                        .map(|artifact| artifact.offer.clone())
                })
            })
            .collect();
        let mut offers = Vec::new();
        for ask in asks {
            offers.push(ask.await.unwrap().unwrap());
        }
        assert_eq!(shipping.builds(), 1);
        assert!(offers.iter().all(|offer| *offer == offers[0]));
        let whole = offers[0].size;
        assert!(whole > 300_000, "{whole}");

        let thin = shipping
            .artifact(
                url,
                &child,
                ShipFormat::Bundle,
                vec![parent.clone(), "f".repeat(40)],
            )
            .await
            .unwrap();
        assert_eq!(thin.offer.thin_against, vec![parent.clone()]);
        assert!(
            thin.offer.size * 10 < whole,
            "{} of {whole}",
            thin.offer.size
        );
        assert_eq!(shipping.builds(), 2);

        let tar = shipping
            .artifact(url, &child, ShipFormat::Tar, Vec::new())
            .await
            .unwrap();
        let bytes = std::fs::read(&tar.path).unwrap();
        let text = String::from_utf8_lossy(&bytes[..1024]);
        assert!(text.contains(&format!("comment={child}")), "{text}");

        let limited = Shipping::new(
            &data_dir,
            ShippingConfig {
                max_bytes: 1000,
                rate_bytes_per_s: 0,
            },
        );
        let refused = limited
            .artifact(url, &parent, ShipFormat::Bundle, Vec::new())
            .await
            .err()
            .unwrap();
        assert!(
            refused.contains("over the limit of 0 MiB (ship_max_mb)"),
            "{refused}"
        );
    }
}
