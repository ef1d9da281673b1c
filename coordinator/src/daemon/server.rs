//! The coordinator's QUIC side: accepts connections, authenticates each hello, keeps one session per
//! online agent and answers operator requests. A bad peer gets a reason and a closed connection; it never
//! disturbs anyone else.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use polarizer_shared::facts::validate_agent_name;
use polarizer_shared::frame::{self, FrameError};
use polarizer_shared::protocol::*;
use polarizer_shared::run::RunUpdate;
use polarizer_shared::AgentFacts;
use polarizer_transport::state_files::secret_digest;
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::{broadcast, mpsc, watch, Notify};

use crate::daemon::config::RunsConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::core::admission::{self, Admission};
use crate::store::{StoreError, StoreHandle};

const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Records of one agent held while its previous batch commits.
const MAX_WAITING_RECORDS: usize = 65_536;

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub refusals: AtomicU64,
    pub protocol_errors: AtomicU64,
}

struct LiveSession {
    connection: quinn::Connection,
    last_frame: Instant,
    incarnation: u64,
    facts: AgentFacts,
    outbox: mpsc::UnboundedSender<CoordinatorMessage>,
}

type IngestFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, StoreError>> + Send>>;

/// An online agent as the scheduler sees it.
#[derive(Clone)]
pub struct OnlineAgent {
    pub name: String,
    pub incarnation: u64,
    pub facts: AgentFacts,
    pub outbox: mpsc::UnboundedSender<CoordinatorMessage>,
}

/// What every connection task shares.
pub struct Shared {
    pub store: StoreHandle,
    pub counters: Counters,
    pub heartbeat_interval: Duration,
    /// Digests of the tokens; the files are read once at start.
    pub enrollment_token_digest: String,
    pub operator_token_digest: String,
    /// Agent names gossip currently sees alive (a hint, never trusted for identity).
    pub gossip_live: watch::Receiver<BTreeSet<String>>,
    /// For caches (git checkouts of imported test repositories).
    pub data_dir: std::path::PathBuf,
    pub runs: RunsConfig,
    /// Run progress, after it is committed, for `runs watch` (each watcher has its own bounded buffer).
    pub updates: broadcast::Sender<RunUpdate>,
    /// Every stored event, after it is committed, for `tail` followers (each has its own bounded buffer:
    /// a slow one is told it lagged and never slows ingest).
    pub events: broadcast::Sender<Arc<polarizer_shared::events::EventRow>>,
    /// Wakes the scheduler: a run was triggered, an agent came or went, a suite finished.
    pub schedule: Notify,
    /// Why each queued suite waits, as the scheduler last saw it.
    pub waiting: Mutex<HashMap<u64, String>>,
    pub started: Instant,
    /// Agents that have had a session with this coordinator process (the lease grace after a restart is
    /// for the others).
    pub seen: Mutex<std::collections::HashSet<String>>,
    sessions: Mutex<HashMap<String, LiveSession>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    pub fn new(
        store: StoreHandle,
        heartbeat_interval: Duration,
        enrollment_token_digest: String,
        operator_token_digest: String,
        gossip_live: watch::Receiver<BTreeSet<String>>,
        data_dir: std::path::PathBuf,
        runs: RunsConfig,
    ) -> Shared {
        Shared {
            runs,
            updates: broadcast::channel(4096).0,
            events: broadcast::channel(65536).0,
            schedule: Notify::new(),
            waiting: Mutex::new(HashMap::new()),
            started: Instant::now(),
            seen: Mutex::new(std::collections::HashSet::new()),
            store,
            counters: Counters::default(),
            heartbeat_interval,
            enrollment_token_digest,
            operator_token_digest,
            gossip_live,
            data_dir,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The inventory as operators see it: stored rows, with live sessions' last frame time and gossip's view.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut agents = self.store.read(|reader| reader.agents()).await?;
        let gossip_live = self.gossip_live.borrow().clone();
        let now = Instant::now();
        let wall_now = now_ms();
        let sessions = self.sessions.lock().expect("sessions lock");
        for agent in &mut agents {
            agent.gossip_live = gossip_live.contains(&agent.name);
            if let Some(session) = sessions.get(&agent.name) {
                agent.state = AgentState::Online;
                agent.last_seen_ms =
                    wall_now - now.duration_since(session.last_frame).as_millis() as i64;
            } else if agent.state == AgentState::Online {
                // Committed as online, but its session has already ended: the offline write is in flight.
                agent.state = AgentState::Offline;
            }
        }
        Ok(agents)
    }

    /// Every agent with a live session.
    pub fn online_agents(&self) -> Vec<OnlineAgent> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(name, session)| OnlineAgent {
                name: name.clone(),
                incarnation: session.incarnation,
                facts: session.facts.clone(),
                outbox: session.outbox.clone(),
            })
            .collect()
    }

    /// Sends to an agent's session, if it has one.
    pub fn send_to_agent(&self, name: &str, message: CoordinatorMessage) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(name)
            .is_some_and(|session| session.outbox.send(message).is_ok())
    }

    /// Publishes what a committed write changed; tells agents holding stale attempts to stop.
    pub fn publish(&self, agent: Option<&str>, effects: Vec<crate::store::runs::Effect>) {
        let mut wake = false;
        let mut stale = std::collections::BTreeSet::new();
        for effect in effects {
            match effect {
                crate::store::runs::Effect::Update(update) => {
                    wake |= !matches!(
                        update,
                        RunUpdate::Output { .. } | RunUpdate::TestStarted { .. }
                    );
                    let _ = self.updates.send(update);
                }
                // Already published by the store's writer, in commit order.
                crate::store::runs::Effect::Event(_) => {}
                crate::store::runs::Effect::Stale(suite) => {
                    if let (Some(agent), true) = (agent, stale.insert(suite)) {
                        self.send_to_agent(
                            agent,
                            CoordinatorMessage::Cancel {
                                suite,
                                reason: "this attempt's lease was revoked".into(),
                            },
                        );
                    }
                }
            }
        }
        if wake {
            self.schedule.notify_one();
        }
    }

    fn touch(&self, name: &str, connection_id: usize) {
        if let Some(session) = self.sessions.lock().expect("sessions lock").get_mut(name) {
            if session.connection.stable_id() == connection_id {
                session.last_frame = Instant::now();
            }
        }
    }

    fn silent_for(&self, name: &str) -> Option<Duration> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(name)
            .map(|session| session.last_frame.elapsed())
    }

    /// Reads and checks the tree off the async runtime, then stores it in one step.
    async fn import(
        &self,
        location: String,
        git_ref: String,
        context: Vec<(String, String)>,
    ) -> OperatorResponse {
        let data_dir = self.data_dir.clone();
        let started = std::time::Instant::now();
        let prepared = tokio::task::spawn_blocking(move || {
            crate::daemon::import::prepare(&location, &git_ref, &context, &data_dir, now_ms())
        })
        .await;
        let prepare_ms = started.elapsed().as_millis() as u64;
        let import = match prepared {
            Ok(Ok(import)) => import,
            Ok(Err(err)) => {
                return OperatorResponse::Error {
                    message: format!("import failed, nothing stored: {err}"),
                }
            }
            Err(err) => {
                return OperatorResponse::Error {
                    message: format!("import failed: {err}"),
                }
            }
        };
        let source = import.source.clone();
        let storing = std::time::Instant::now();
        match self
            .store
            .import_checked(import, crate::daemon::import::check)
            .await
        {
            Ok(summary) => {
                let store_ms = storing.elapsed().as_millis() as u64;
                info!(source = %source.location, tests = summary.tests, added = summary.added, changed = summary.changed, removed = summary.removed, prepare_ms, store_ms, "catalog imported");
                OperatorResponse::Imported { source, summary }
            }
            Err(err) => OperatorResponse::Error {
                message: format!("import failed, nothing stored: {err}"),
            },
        }
    }

    /// Plans a run off the async runtime (git, fmf, selection, partition), then stores it in one step.
    async fn trigger(&self, request: polarizer_shared::run::TriggerRequest) -> OperatorResponse {
        let error = |message: String| OperatorResponse::Error { message };
        let agents = match self.store.read(|reader| reader.agents()).await {
            Ok(agents) => agents
                .into_iter()
                .filter(|agent| agent.state != AgentState::Revoked)
                .map(|agent| agent.facts)
                .collect::<Vec<_>>(),
            Err(err) => return error(err.to_string()),
        };
        let store = self.store.clone();
        let config = self.runs.clone();
        let data_dir = self.data_dir.clone();
        let planned = tokio::task::spawn_blocking(move || {
            let reader = store.reader().map_err(|err| err.to_string())?;
            crate::daemon::trigger::plan(
                request,
                &config,
                &data_dir,
                &agents,
                &|ids| reader.duration_history(ids).unwrap_or_default(),
                now_ms(),
            )
            .map_err(|err| err.to_string())
        })
        .await;
        let planned = match planned {
            Ok(Ok(planned)) => planned,
            Ok(Err(message)) => return error(format!("trigger failed, no run created: {message}")),
            Err(err) => return error(format!("trigger failed: {err}")),
        };
        if let Err(err) = self.store.import_catalog(planned.import).await {
            return error(format!("trigger failed, no run created: {err}"));
        }
        let run = planned.run;
        let tests: usize = run.suites.iter().map(|(_, _, tests)| tests.len()).sum();
        let serial = run
            .suites
            .iter()
            .filter(|(kind, _, _)| kind == "serial")
            .count();
        let parallel = run.suites.len() - serial;
        let commit = run.commit.clone();
        let created = self
            .store
            .write(move |savepoint, path| crate::store::runs::create_run(savepoint, path, &run))
            .await;
        match created {
            Ok(id) => {
                info!(run = id, tests, serial, parallel, commit = %commit, "run triggered");
                self.schedule.notify_one();
                OperatorResponse::Triggered(polarizer_shared::run::TriggerSummary {
                    run: id,
                    tests: tests as u64,
                    touched_features: planned.touched_features,
                    dependent_features: planned.dependent_features,
                    fail_open: planned.fail_open,
                    parallel_suites: parallel as u64,
                    serial_suites: serial as u64,
                    commit,
                })
            }
            Err(err) => error(format!("trigger failed, no run created: {err}")),
        }
    }

    /// A run with the scheduler's reason for every suite still waiting.
    async fn run_detail(
        &self,
        run: u64,
    ) -> Result<Option<polarizer_shared::run::RunDetail>, String> {
        let detail = self
            .store
            .read(move |reader| reader.run(run))
            .await
            .map_err(|err| err.to_string())?;
        Ok(detail.map(|mut detail| {
            let waiting = self.waiting.lock().expect("waiting lock");
            for suite in &mut detail.suites {
                if suite.state == "queued" {
                    suite.waiting_for = waiting
                        .get(&suite.id)
                        .cloned()
                        .unwrap_or_else(|| "waiting for the scheduler".into());
                }
            }
            detail
        }))
    }

    async fn revoke(&self, name: &str) -> OperatorResponse {
        match self.store.revoke(name, now_ms()).await {
            Ok(false) => OperatorResponse::Error {
                message: format!("no agent named {name:?} in the inventory"),
            },
            Ok(true) => {
                let session = self.sessions.lock().expect("sessions lock").remove(name);
                let was_online = session.is_some();
                if let Some(session) = session {
                    session
                        .connection
                        .close(close_code::REVOKED.into(), b"revoked by an operator");
                }
                info!(agent = %name, was_online, "agent revoked");
                OperatorResponse::Revoked {
                    name: name.to_string(),
                    was_online,
                }
            }
            Err(err) => OperatorResponse::Error {
                message: err.to_string(),
            },
        }
    }
}

/// Accepts connections until `shutdown`, each on its own task.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let peer = incoming.remote_address();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(
            async move {
                match incoming.await {
                    Ok(connection) => {
                        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                        handle_connection(connection, shared, shutdown).await;
                    }
                    Err(err) => debug!(error = %err, "handshake failed"),
                }
            }
            .instrument(tracing::info_span!("connection", %peer)),
        );
    }
    // Tell every peer why we are going away; agents reconnect to the next coordinator incarnation.
    endpoint.close(
        close_code::SHUTTING_DOWN.into(),
        b"coordinator shutting down",
    );
}

async fn handle_connection(
    connection: quinn::Connection,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let peer = connection.remote_address();
    let hello = tokio::time::timeout(HELLO_DEADLINE, async {
        let mut stream = FramedStream::accept(&connection).await?;
        let bytes = stream.recv_bytes().await?.ok_or(StreamError::Closed)?;
        Ok::<_, StreamError>((stream, bytes))
    })
    .await;
    let (mut stream, hello_bytes) = match hello {
        Ok(Ok(received)) => received,
        Ok(Err(err)) => return protocol_error(&connection, &shared, &err.to_string()),
        Err(_) => return protocol_error(&connection, &shared, "no hello within 5 s"),
    };
    let peer_version = polarizer_shared::protocol::peek_hello_version(&hello_bytes);
    if let Some(version) = peer_version.filter(|version| *version != PROTOCOL_VERSION) {
        return refuse(
            &connection,
            &shared,
            stream,
            Refusal::VersionMismatch {
                coordinator: PROTOCOL_VERSION,
                peer: version,
            },
        )
        .await;
    }
    let hello = match frame::decode::<ClientFrame>(&hello_bytes) {
        Ok(ClientFrame::Hello(hello)) => hello,
        Ok(_) => {
            return refuse(
                &connection,
                &shared,
                stream,
                Refusal::InvalidHello {
                    reason: "the first frame must be a hello".into(),
                },
            )
            .await;
        }
        Err(err) => {
            return refuse(
                &connection,
                &shared,
                stream,
                Refusal::InvalidHello {
                    reason: err.to_string(),
                },
            )
            .await
        }
    };
    match hello.peer {
        Peer::Operator { token } => {
            if secret_digest(&token) != shared.operator_token_digest {
                return refuse(&connection, &shared, stream, Refusal::BadOperatorToken).await;
            }
            if stream.send(&welcome(false, &shared)).await.is_err() {
                return;
            }
            operator_session(connection, stream, shared).await;
        }
        Peer::Agent {
            credential,
            facts,
            incarnation,
        } => {
            let facts = *facts;
            if let Err(reason) = validate_agent_name(&facts.name) {
                return refuse(
                    &connection,
                    &shared,
                    stream,
                    Refusal::InvalidHello { reason },
                )
                .await;
            }
            let name = facts.name.clone();
            let stored = {
                let name = name.clone();
                shared.store.read(move |reader| reader.agent(&name)).await
            };
            let stored = match stored {
                Ok(stored) => stored,
                Err(err) => {
                    warn!(agent = %name, error = %err, "cannot read the inventory");
                    connection.close(
                        close_code::SHUTTING_DOWN.into(),
                        b"coordinator store unavailable",
                    );
                    return;
                }
            };
            let enrolled = match admission::admit_agent(
                &name,
                &credential,
                stored.as_ref(),
                &shared.enrollment_token_digest,
                secret_digest,
            ) {
                Admission::Refuse(refusal) => {
                    return refuse(&connection, &shared, stream, refusal).await
                }
                Admission::Known => {
                    if shared
                        .store
                        .agent_connected(&name, facts.clone(), peer.to_string(), now_ms())
                        .is_err()
                    {
                        return;
                    }
                    false
                }
                Admission::Enroll { credential_sha256 } => {
                    match shared
                        .store
                        .enroll(
                            &name,
                            credential_sha256,
                            facts.clone(),
                            peer.to_string(),
                            now_ms(),
                        )
                        .await
                    {
                        Ok(()) => true,
                        Err(StoreError::NameTaken { name }) => {
                            return refuse(
                                &connection,
                                &shared,
                                stream,
                                Refusal::NameTaken { name },
                            )
                            .await;
                        }
                        Err(err) => {
                            warn!(agent = %name, error = %err, "cannot enroll agent");
                            return;
                        }
                    }
                }
            };
            let records_committed = {
                let name = name.clone();
                shared
                    .store
                    .read(move |reader| reader.records_committed(&name))
                    .await
                    .unwrap_or(0)
            };
            let mut hello = welcome(enrolled, &shared);
            if let ServerFrame::Welcome(welcome) = &mut hello {
                welcome.records_committed = records_committed;
            }
            if stream.send(&hello).await.is_err() {
                return;
            }
            agent_session(
                connection,
                stream,
                shared,
                facts,
                incarnation,
                enrolled,
                shutdown,
            )
            .instrument(tracing::info_span!("agent", agent = %name))
            .await;
        }
    }
}

fn welcome(enrolled: bool, shared: &Shared) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
        enrolled,
        heartbeat_interval_ms: shared.heartbeat_interval.as_millis() as u32,
        records_committed: 0,
    })
}

/// Sends the refusal, waits (briefly) until the peer has it, then closes.
async fn refuse(
    connection: &quinn::Connection,
    shared: &Shared,
    mut stream: FramedStream,
    refusal: Refusal,
) {
    shared.counters.refusals.fetch_add(1, Ordering::Relaxed);
    warn!(reason = %refusal, "refused peer");
    let reason = refusal.to_string();
    if stream.send(&ServerFrame::Refused(refusal)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.finish()).await;
    }
    connection.close(close_code::REFUSED.into(), reason.as_bytes());
}

fn protocol_error(connection: &quinn::Connection, shared: &Shared, reason: &str) {
    shared
        .counters
        .protocol_errors
        .fetch_add(1, Ordering::Relaxed);
    warn!(reason, "closing connection after a protocol error");
    connection.close(close_code::PROTOCOL_ERROR.into(), reason.as_bytes());
}

async fn agent_session(
    connection: quinn::Connection,
    mut stream: FramedStream,
    shared: Arc<Shared>,
    facts: AgentFacts,
    incarnation: u64,
    enrolled: bool,
    shutdown: CancellationToken,
) {
    let name = facts.name.clone();
    let connection_id = connection.stable_id();
    let (outbox, mut outbox_rx) = mpsc::unbounded_channel();
    let replaced = shared.sessions.lock().expect("sessions lock").insert(
        name.clone(),
        LiveSession {
            connection: connection.clone(),
            last_frame: Instant::now(),
            incarnation,
            facts: facts.clone(),
            outbox,
        },
    );
    shared.seen.lock().expect("seen lock").insert(name.clone());
    shared.schedule.notify_one();
    if let Some(previous) = replaced {
        // The agent restarted before its old connection timed out: the new one is the truth.
        previous.connection.close(
            close_code::REPLACED.into(),
            b"replaced by a newer connection of the same agent",
        );
    }
    info!(enrolled, address = %connection.remote_address(), platform = %facts.platform, "agent online");
    let mut liveness_check = tokio::time::interval(shared.heartbeat_interval / 2);
    let mut in_flight: Option<IngestFuture> = None;
    let mut waiting: Vec<polarizer_shared::run::Record> = Vec::new();
    let end = loop {
        tokio::select! {
            // Backpressure: with this much waiting for the store, stop reading until the commit lands.
            frame = stream.recv::<ClientFrame>(), if waiting.len() < MAX_WAITING_RECORDS => match frame {
                Ok(Some(ClientFrame::Agent(AgentMessage::Heartbeat))) => {
                    shared.touch(&name, connection_id);
                    // The agent's proof that this coordinator is alive: it reconnects when acks stop.
                    if stream.send(&ServerFrame::Agent(CoordinatorMessage::HeartbeatAck)).await.is_err() {
                        break "connection lost";
                    }
                }
                Ok(Some(ClientFrame::Agent(AgentMessage::FactsChanged(new_facts)))) => {
                    shared.touch(&name, connection_id);
                    if new_facts.name != name {
                        protocol_error(&connection, &shared, "facts may not change the agent's name");
                        break "renamed";
                    }
                    if let Some(session) = shared.sessions.lock().expect("sessions lock").get_mut(&name) {
                        if session.connection.stable_id() == connection_id {
                            session.facts = (*new_facts).clone();
                        }
                    }
                    let _ = shared.store.facts_changed(&name, *new_facts);
                }
                Ok(Some(ClientFrame::Agent(AgentMessage::Records(records)))) => {
                    shared.touch(&name, connection_id);
                    // One batch commits while the next frames arrive: they wait here and go as one.
                    if in_flight.is_none() {
                        in_flight = Some(Box::pin(crate::daemon::scheduler::ingest_owned(shared.clone(), name.clone(), records)));
                    } else {
                        waiting.extend(records);
                    }
                }
                Ok(Some(_)) => {
                    protocol_error(&connection, &shared, "unexpected frame from an agent");
                    break "protocol error";
                }
                Ok(None) => break "agent closed its stream",
                Err(StreamError::Frame(err @ (FrameError::Oversize { .. } | FrameError::Decode { .. } | FrameError::Truncated { .. }))) => {
                    protocol_error(&connection, &shared, &err.to_string());
                    break "protocol error";
                }
                Err(_) => break "connection lost",
            },
            outcome = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                // Time spent waiting for our own store is not the agent's silence.
                shared.touch(&name, connection_id);
                match outcome {
                    // Committed before acknowledged: an ack is a promise the record is in SQLite.
                    Ok(committed) => {
                        let ack = ServerFrame::Agent(CoordinatorMessage::Ack { up_to: committed });
                        if stream.send(&ack).await.is_err() {
                            break "connection lost";
                        }
                    }
                    Err(err) => {
                        // Not acknowledged: the agent keeps the records and sends them again.
                        warn!(error = %err, "cannot store records; closing so the agent resends them");
                        connection.close(close_code::SHUTTING_DOWN.into(), b"coordinator store unavailable");
                        break "store unavailable";
                    }
                }
                if !waiting.is_empty() {
                    let records = std::mem::take(&mut waiting);
                    in_flight = Some(Box::pin(crate::daemon::scheduler::ingest_owned(shared.clone(), name.clone(), records)));
                }
            }
            message = outbox_rx.recv() => {
                // The sender lives in the sessions map: gone means a newer session replaced this one.
                let Some(message) = message else { break "replaced" };
                if stream.send(&ServerFrame::Agent(message)).await.is_err() {
                    break "connection lost";
                }
            }
            _ = liveness_check.tick() => {
                // While its records wait for our store, the agent is not silent: we are not listening.
                if in_flight.is_some() {
                    shared.touch(&name, connection_id);
                }
                let gossip_sees_alive = shared.gossip_live.borrow().contains(&name);
                let allowed = admission::silence_allowed(shared.heartbeat_interval, gossip_sees_alive);
                match shared.silent_for(&name) {
                    Some(silence) if silence > allowed => {
                        connection.close(close_code::NORMAL.into(), b"no heartbeat");
                        break "heartbeat lapsed";
                    }
                    Some(_) => {}
                    None => break "session removed",
                }
            }
            () = shutdown.cancelled() => {
                connection.close(close_code::SHUTTING_DOWN.into(), b"coordinator shutting down");
                break "coordinator shutting down";
            }
        }
    };
    // Only the session that still owns the name marks the agent offline; a replaced one leaves it be.
    let owned = {
        let mut sessions = shared.sessions.lock().expect("sessions lock");
        let owns = sessions
            .get(&name)
            .is_some_and(|session| session.connection.stable_id() == connection_id);
        if owns {
            sessions.remove(&name);
        }
        owns
    };
    if owned && end != "coordinator shutting down" {
        let _ = shared.store.agent_disconnected(&name, now_ms());
        info!(reason = end, "agent offline");
        shared.schedule.notify_one();
    }
}

/// Streams a run: a snapshot, then every committed change, until the run is finished. A watcher that
/// falls behind gets a fresh snapshot instead of slowing anyone down.
async fn watch_run(
    stream: &mut FramedStream,
    shared: &Shared,
    run: u64,
    output: bool,
) -> Result<(), StreamError> {
    let mut updates = shared.updates.subscribe();
    loop {
        let detail = match shared.run_detail(run).await {
            Ok(Some(detail)) => detail,
            Ok(None) => {
                let message = format!("no run {run}");
                return stream
                    .send(&ServerFrame::Operator(OperatorResponse::Error { message }))
                    .await;
            }
            Err(message) => {
                return stream
                    .send(&ServerFrame::Operator(OperatorResponse::Error { message }))
                    .await
            }
        };
        let finished = detail.run.state.is_final();
        stream
            .send(&ServerFrame::Operator(OperatorResponse::Run(Box::new(
                detail,
            ))))
            .await?;
        if finished {
            return Ok(());
        }
        loop {
            match updates.recv().await {
                Ok(update) if update.run() == run => {
                    if !output && matches!(update, RunUpdate::Output { .. }) {
                        continue;
                    }
                    let done = matches!(update, RunUpdate::RunFinished { .. });
                    stream
                        .send(&ServerFrame::Operator(OperatorResponse::Update(update)))
                        .await?;
                    if done {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

async fn operator_session(
    connection: quinn::Connection,
    mut stream: FramedStream,
    shared: Arc<Shared>,
) {
    loop {
        let request = match stream.recv::<ClientFrame>().await {
            Ok(Some(ClientFrame::Operator(request))) => request,
            Ok(None) => break,
            Ok(Some(_)) => {
                return protocol_error(&connection, &shared, "unexpected frame from an operator")
            }
            Err(StreamError::Frame(err)) => {
                return protocol_error(&connection, &shared, &err.to_string())
            }
            Err(_) => return,
        };
        let response = match request {
            OperatorRequest::ListAgents => match shared.list_agents().await {
                Ok(agents) => OperatorResponse::Agents(agents),
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            },
            OperatorRequest::RevokeAgent { name } => shared.revoke(&name).await,
            OperatorRequest::ImportTests {
                location,
                git_ref,
                context,
            } => shared.import(location, git_ref, context).await,
            OperatorRequest::ListTests(query) => {
                match shared.store.read(move |reader| reader.tests(&query)).await {
                    Ok(tests) => OperatorResponse::Tests(tests),
                    Err(err) => OperatorResponse::Error {
                        message: err.to_string(),
                    },
                }
            }
            OperatorRequest::ShowTest { id } => {
                let wanted = id.clone();
                match shared.store.read(move |reader| reader.test(&wanted)).await {
                    Ok(Some((metadata, source, removed))) => OperatorResponse::Test {
                        metadata: Box::new(metadata),
                        source,
                        removed,
                    },
                    Ok(None) => OperatorResponse::Error {
                        message: format!("no test {id:?} in the catalog"),
                    },
                    Err(err) => OperatorResponse::Error {
                        message: err.to_string(),
                    },
                }
            }
            OperatorRequest::Trigger(request) => shared.trigger(*request).await,
            OperatorRequest::ListRuns { limit } => {
                match shared.store.read(move |reader| reader.runs(limit)).await {
                    Ok(runs) => OperatorResponse::Runs(runs),
                    Err(err) => OperatorResponse::Error {
                        message: err.to_string(),
                    },
                }
            }
            OperatorRequest::ShowRun { run } => match shared.run_detail(run).await {
                Ok(Some(detail)) => OperatorResponse::Run(Box::new(detail)),
                Ok(None) => OperatorResponse::Error {
                    message: format!("no run {run}"),
                },
                Err(message) => OperatorResponse::Error { message },
            },
            OperatorRequest::CancelRun { run } => {
                match crate::daemon::scheduler::end_run(
                    &shared,
                    run,
                    polarizer_shared::run::TestStatus::Cancelled,
                    "cancelled by an operator".into(),
                )
                .await
                {
                    Ok(()) => match shared.run_detail(run).await {
                        Ok(Some(detail)) => OperatorResponse::Cancelled {
                            run,
                            state: detail.run.state,
                        },
                        Ok(None) => OperatorResponse::Error {
                            message: format!("no run {run}"),
                        },
                        Err(message) => OperatorResponse::Error { message },
                    },
                    Err(err) => OperatorResponse::Error {
                        message: err.to_string(),
                    },
                }
            }
            OperatorRequest::Tail(query) => {
                if crate::daemon::tail::tail(&mut stream, &shared, *query)
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            OperatorRequest::Replay { run } => {
                if crate::daemon::tail::replay(&mut stream, &shared, run)
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            OperatorRequest::WatchRun { run, output } => {
                if watch_run(&mut stream, &shared, run, output).await.is_err() {
                    return;
                }
                continue;
            }
            OperatorRequest::ListFeatures => {
                match shared.store.read(|reader| reader.features()).await {
                    Ok(features) => OperatorResponse::Features(features),
                    Err(err) => OperatorResponse::Error {
                        message: err.to_string(),
                    },
                }
            }
        };
        if stream.send(&ServerFrame::Operator(response)).await.is_err() {
            return;
        }
    }
    stream.finish().await;
}
