//! Shipping a run's tests to the agents that run its suites (see `polarizer_shared::shipping` for the
//! exchange). The coordinator fetched the run's commit into its git cache to read the fmf tree; from there
//! it builds a git bundle (thin against the commits the agent holds) or a tar of the tree, once per commit,
//! format and base, kept under `<data dir>/shipping` so that the agents running a run's suites at once share
//! it and a transfer cut by a reconnect or a coordinator restart resumes on the same file. It reads
//! the file a chunk at a time and sends it over the agent's connection; QUIC's flow control is the
//! backpressure, and at most `ship_rate_kb_per_s` paces each transfer when set.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polarizer_shared::frame::MAX_FRAME_BYTES;
use polarizer_shared::shipping::{
    bundle_ref, is_full_commit_id, AgentShipFrame, CoordinatorShipFrame, ShipFormat, ShipOffer,
    ShipRequest, CHUNK_BYTES, MAX_HAVES, MAX_REQUEST_BYTES,
};
use polarizer_transport::git::{self, RepoLocks};
use polarizer_transport::FramedStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::daemon::context::Context;

const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an agent has to say what it wants, and where to start, once it opened a stream.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// Built files kept for reuse (each run's commit, per format and base); older unused ones are deleted.
const KEEP_ARTIFACTS: usize = 64;

/// Limits, from `ship_max_mb` and `ship_rate_kb_per_s`.
#[derive(Clone, Copy, Debug)]
pub struct ShippingConfig {
    /// A bundle or tar larger than this is refused, and the suite ends with that error.
    pub max_bytes: u64,
    /// Per transfer; 0 for no limit.
    pub rate_bytes_per_s: u64,
}

impl Default for ShippingConfig {
    fn default() -> Self {
        ShippingConfig {
            max_bytes: 1024 * 1024 * 1024,
            rate_bytes_per_s: 0,
        }
    }
}

/// One built file and what an agent is told of it.
pub struct Artifact {
    path: PathBuf,
    offer: ShipOffer,
}

/// The coordinator's built files, each built once however many agents ask for it at the same time.
pub struct Shipping {
    git_cache: PathBuf,
    dir: PathBuf,
    config: ShippingConfig,
    built: Mutex<Built>,
}

#[derive(Default)]
struct Built {
    cells: HashMap<String, Arc<OnceCell<Arc<Artifact>>>>,
    /// Keys, oldest first: what goes when more than `KEEP_ARTIFACTS` are kept.
    order: VecDeque<String>,
}

impl Shipping {
    pub fn new(data_dir: &Path, config: ShippingConfig) -> Shipping {
        Shipping {
            git_cache: data_dir.join("git-cache"),
            dir: data_dir.join("shipping"),
            config,
            built: Mutex::default(),
        }
    }

    /// The coordinator's cache of `repo`, where triggers fetched its commits.
    fn repository(&self, repo: &str) -> PathBuf {
        let key = polarizer_transport::state_files::secret_digest(repo);
        self.git_cache.join(&key[..16])
    }

    /// The file for `commit` of `repo` in `format`, thin against those of `haves` this coordinator holds;
    /// built now unless it was built before (by this process or an earlier one).
    async fn artifact(
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
        Ok(artifact)
    }

    /// The cell for `key`, made if new; forgets the oldest unused ones past `KEEP_ARTIFACTS` (and their files).
    fn cell(&self, key: &str) -> Arc<OnceCell<Arc<Artifact>>> {
        let mut built = self.built.lock().expect("shipping lock");
        if let Some(cell) = built.cells.get(key) {
            return cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        built.cells.insert(key.to_string(), cell.clone());
        built.order.push_back(key.to_string());
        let mut scan = built.order.len();
        while built.cells.len() > KEEP_ARTIFACTS && scan > 0 {
            scan -= 1;
            let Some(oldest) = built.order.pop_front() else {
                break;
            };
            let in_use = built
                .cells
                .get(&oldest)
                .is_some_and(|cell| Arc::strong_count(cell) > 1 || !cell.initialized());
            if in_use {
                built.order.push_back(oldest);
                continue;
            }
            if let Some(artifact) = built
                .cells
                .remove(&oldest)
                .and_then(|cell| cell.get().cloned())
            {
                let _ = std::fs::remove_file(&artifact.path);
            }
        }
        cell
    }
}

/// Those of `haves` (checked to be commit ids) this repository holds, other than `commit` itself.
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
        let object = format!("{commit}^{{commit}}");
        let present = |repository: &Path| {
            git::run_blocking(repository, ["cat-file", "-e", object.as_str()], GIT_TIMEOUT).is_ok()
        };
        if !present(repository) {
            // Gone from the cache (a force-pushed branch, a pruned object): fetch it again by id.
            std::fs::create_dir_all(repository).map_err(|err| err.to_string())?;
            if !repository.join(".git").exists() {
                git::run_blocking(repository, ["init", "--quiet"], GIT_TIMEOUT)
                    .map_err(|err| err.to_string())?;
            }
            git::check_url(repo).map_err(|err| err.to_string())?;
            git::run_blocking(repository, ["fetch", "--quiet", "--", repo, commit], GIT_TIMEOUT)
                .map_err(|err| format!("{commit} is not in the coordinator's cache of {repo} and cannot be fetched: {err}"))?;
        }
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
                let mut args = vec!["bundle".into(), "create".into(), partial_arg, name.into()];
                args.extend(base.iter().map(|have| format!("^{have}").into()));
                git::run_blocking(repository, &args, GIT_TIMEOUT)
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

/// Serves one stream an agent opened for tests: the request, the offer, the chunks. Whatever goes wrong
/// ends this stream only; the agent asks again.
pub async fn serve(
    context: Context,
    agent: String,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut stream = FramedStream::new(send, recv);
    stream.set_frame_limit(MAX_REQUEST_BYTES);
    let request =
        match tokio::time::timeout(REQUEST_DEADLINE, stream.expect::<AgentShipFrame>()).await {
            Ok(Ok(AgentShipFrame::Request(request))) => request,
            Ok(Ok(_)) => return warn!(agent, "a test transfer must start with a request"),
            Ok(Err(err)) => return warn!(agent, error = %err, "bad test transfer request"),
            Err(_) => {
                return warn!(
                    agent,
                    "no test transfer request within {REQUEST_DEADLINE:?}"
                )
            }
        };
    let suite = request.suite;
    let artifact = match prepare(&context, &agent, request).await {
        Ok(artifact) => artifact,
        Err(reason) => {
            warn!(agent, %suite, reason, "refused to ship tests");
            let _ = stream.send(&CoordinatorShipFrame::Refused { reason }).await;
            stream.finish().await;
            return;
        }
    };
    if stream
        .send(&CoordinatorShipFrame::Offer(artifact.offer.clone()))
        .await
        .is_err()
    {
        return;
    }
    let offset =
        match tokio::time::timeout(REQUEST_DEADLINE, stream.expect::<AgentShipFrame>()).await {
            Ok(Ok(AgentShipFrame::From { offset })) => offset,
            _ => return,
        };
    let chunk = u64::from(artifact.offer.chunk_bytes);
    if offset % chunk != 0 || offset > artifact.offer.size {
        return warn!(
            agent,
            offset, "a test transfer asked to start mid-chunk or past the end"
        );
    }
    context.metrics.transfers.fetch_add(1, Ordering::Relaxed);
    if offset > 0 {
        info!(agent, %suite, offset, size = artifact.offer.size, "resuming a test transfer");
    }
    match send_chunks(&context, &mut stream, &artifact, offset).await {
        Ok(()) => stream.finish().await,
        Err(err) => info!(agent, %suite, error = %err, "test transfer ended early"),
    }
}

/// Checks the request against the store (the suite must be this agent's, running) and finds its file.
async fn prepare(
    context: &Context,
    agent: &str,
    request: ShipRequest,
) -> Result<Arc<Artifact>, String> {
    if request.haves.len() > MAX_HAVES || !request.haves.iter().all(|have| is_full_commit_id(have))
    {
        return Err(format!(
            "at most {MAX_HAVES} full commit ids may be named as held"
        ));
    }
    let suite = request.suite;
    let owner = agent.to_string();
    let source = context
        .store
        .read(move |reader| reader.shipment(suite, &owner))
        .await
        .map_err(|err| err.to_string())?;
    let Some((repo, commit)) = source else {
        return Err(format!("{suite} is not running on {agent}"));
    };
    context
        .shipping
        .artifact(&repo, &commit, request.format, request.haves)
        .await
}

async fn send_chunks(
    context: &Context,
    stream: &mut FramedStream,
    artifact: &Artifact,
    offset: u64,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(&artifact.path)
        .await
        .map_err(|err| err.to_string())?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|err| err.to_string())?;
    let offer = &artifact.offer;
    let first = (offset / u64::from(offer.chunk_bytes)) as usize;
    let rate = context.shipping.config.rate_bytes_per_s;
    let started = Instant::now();
    let mut sent: u64 = 0;
    for index in first..offer.chunk_digests.len() {
        let mut bytes = vec![0; offer.chunk_len(index) as usize];
        file.read_exact(&mut bytes)
            .await
            .map_err(|err| err.to_string())?;
        let len = bytes.len() as u64;
        let frame = CoordinatorShipFrame::Chunk {
            index: index as u32,
            bytes,
        };
        stream.send(&frame).await.map_err(|err| err.to_string())?;
        sent += len;
        context
            .metrics
            .shipped_bytes
            .fetch_add(len, Ordering::Relaxed);
        if rate > 0 {
            // Paced: never ahead of `rate` bytes per second since this transfer started.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
    const _: () = assert!((CHUNK_BYTES as usize) < MAX_FRAME_BYTES / 2);
    Ok(())
}
