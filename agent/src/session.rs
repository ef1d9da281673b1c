//! The agent's connection to the coordinator: find it through gossip (the last address that worked
//! first, then a few of gossip's candidates per round, each with a short timeout), dial it through pinned
//! TLS, hello with the credential (or enroll with the token), then heartbeat and report facts until the
//! connection ends, and start over with jittered, capped exponential backoff.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use polarizer_shared::protocol::*;
use polarizer_shared::record_codec::RECORDS_FRAME_BUDGET_BYTES;
use polarizer_shared::run::{Assignment, SuiteRef};
use polarizer_shared::AgentFacts;
use polarizer_transport::client::{self, ConnectError};
use polarizer_transport::state_files::{random_secret, read_private};
use polarizer_transport::Gossip;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::credential::{self, Credential};
use crate::spool::SharedSpool;
use crate::AgentError;

/// How long one address gets for the QUIC handshake and the answer to the hello. Loopback and LAN
/// handshakes take about a millisecond and a known agent's hello a few more; an address nobody answers
/// at costs exactly this, so it stays short.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many addresses learned from gossip are dialled per round, after the last good one:
/// gossip is unauthenticated, and a node advertising many dead addresses must not cost a round more
/// than this many timeouts. Rounds rotate through the rest, so a coordinator behind them is still found.
const GOSSIP_CANDIDATES_PER_ROUND: usize = 4;
const FACTS_REFRESH: Duration = Duration::from_secs(30);
/// Records per frame at most: large enough to amortise a frame. Frames are bounded in bytes too
/// (`RECORDS_FRAME_BUDGET_BYTES`), which keeps them far below the frame limit whatever the records hold.
const SEND_BATCH: usize = 512;
/// Frames taken from the spool's thread at once (at least one, more while they fit in this): one round
/// trip to that thread for many frames under a backlog, while each turn of the loop still sends one.
const READY_BYTES: usize = 1024 * 1024;

/// Exponential backoff with full jitter, capped: a fleet restarting at once does not reconnect in step.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            next: initial,
            initial,
            max,
        }
    }

    /// The delay before the next attempt: uniform in [delay/2, delay], the delay doubling up to the cap.
    pub fn next_delay(&mut self, random_unit: f64) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(0.5 + 0.5 * random_unit.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Which coordinator addresses to dial, round after round: the last address that worked first (a
/// restarted coordinator usually comes back there, whatever gossip says), then a bounded window of
/// gossip's candidates, newest incarnation first, moving on each round. Pure: fed gossip's candidates.
#[derive(Debug, Default)]
pub struct DialPlan {
    last_good: Option<SocketAddr>,
    /// Where the next round's window starts among the gossip candidates other than the last good one.
    rotation: usize,
}

impl DialPlan {
    /// The addresses to dial this round, in order; empty when there is nothing to dial yet.
    pub fn next_round(&mut self, gossip_candidates: &[SocketAddr]) -> Vec<SocketAddr> {
        let others: Vec<SocketAddr> = gossip_candidates
            .iter()
            .copied()
            .filter(|addr| Some(*addr) != self.last_good)
            .collect();
        let mut order: Vec<SocketAddr> = self.last_good.into_iter().collect();
        if !others.is_empty() {
            let window = GOSSIP_CANDIDATES_PER_ROUND.min(others.len());
            let start = self.rotation % others.len();
            order.extend(others.iter().cycle().skip(start).take(window));
            self.rotation = start + window;
        }
        debug_assert!(order.len() <= GOSSIP_CANDIDATES_PER_ROUND + 1);
        order
    }

    /// `addr` answered: it goes first from now on, and the next search starts at the newest candidate.
    pub fn connected(&mut self, addr: SocketAddr) {
        self.last_good = Some(addr);
        self.rotation = 0;
    }
}

enum SessionEnd {
    Lost(String),
    Revoked(String),
    Shutdown,
}

pub struct Connector {
    pub config: AgentConfig,
    pub endpoint: quinn::Endpoint,
    pub gossip: Gossip,
    pub ca_fingerprint: String,
    pub facts: AgentFacts,
    /// Set when the coordinator did not know the stored credential: the next hello enrolls with it.
    pub must_enroll: std::cell::Cell<bool>,
    /// Set once the coordinator said this agent waits for approval (said once in the log, not every try).
    pub waiting_for_approval: std::cell::Cell<bool>,
    /// Random per process: tells the coordinator whether this is the agent that holds its leases.
    pub incarnation: u64,
    pub spool: SharedSpool,
    pub suites: SuiteQueue,
    /// Cancelled when the agent starts to stop: each session tells the coordinator, which then assigns it
    /// nothing new. The session itself goes on until `run`'s shutdown, so the last records get through.
    pub draining: CancellationToken,
    /// The live connection for the runner, which asks for tests over it; `None` between connections.
    pub link: tokio::sync::watch::Sender<Option<quinn::Connection>>,
}

/// Assignments waiting for (or being run by) the runner task, each with the token that cancels it.
#[derive(Clone)]
pub struct SuiteQueue {
    pub assign: tokio::sync::mpsc::UnboundedSender<Assignment>,
    pub cancels: Arc<Mutex<HashMap<SuiteRef, CancellationToken>>>,
}

impl SuiteQueue {
    fn assign(&self, assignment: Assignment) {
        let suite = assignment.suite;
        let fresh = {
            let mut cancels = self.cancels.lock().expect("cancels lock");
            // A coordinator that restarted may assign again what this agent already runs: keep one.
            let fresh = !cancels.contains_key(&suite);
            cancels.entry(suite).or_default();
            fresh
        };
        if fresh {
            info!(%suite, tests = assignment.tests.len(), "suite assigned");
            let _ = self.assign.send(assignment);
        }
    }

    fn cancel(&self, suite: SuiteRef, reason: &str) {
        let mut cancels = self.cancels.lock().expect("cancels lock");
        if let Some(token) = cancels.get(&suite) {
            info!(%suite, reason, "suite cancelled by the coordinator");
            token.cancel();
        } else {
            // Not assigned (yet): a late assignment of it starts cancelled.
            let token = CancellationToken::new();
            token.cancel();
            cancels.insert(suite, token);
        }
    }
}

impl Connector {
    /// Runs until shutdown, or until the coordinator refuses this agent for good. Whatever was spooled
    /// is on disk when it returns (and sent at the next start, if not acknowledged by then).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let spool = self.spool.clone();
        let outcome = self.connect_and_serve(shutdown).await;
        spool.sync().await;
        outcome
    }

    async fn connect_and_serve(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.config.reconnect_max);
        let mut dial_plan = DialPlan::default();
        let mut waiting_logged = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let candidates = self.gossip.coordinator_candidates().await;
            let dial_order = dial_plan.next_round(&candidates);
            if dial_order.is_empty() {
                if !waiting_logged {
                    info!(seeds = ?self.config.join, "waiting for gossip to name a coordinator");
                    waiting_logged = true;
                }
                if sleep_or_shutdown(Duration::from_millis(50), &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            waiting_logged = false;
            for addr in dial_order {
                match self.connect(addr).await {
                    Ok(session) => {
                        backoff.reset();
                        dial_plan.connected(addr);
                        self.link.send_replace(Some(session.connection.clone()));
                        let end = self.run_session(addr, session, &shutdown).await;
                        self.link.send_replace(None);
                        match end {
                            SessionEnd::Shutdown => return Ok(()),
                            SessionEnd::Revoked(reason) => {
                                return Err(AgentError::Revoked { reason })
                            }
                            SessionEnd::Lost(reason) => {
                                warn!(coordinator = %addr, reason, "connection to the coordinator lost; reconnecting")
                            }
                        }
                        break;
                    }
                    Err(err) => self.handle_connect_error(addr, err)?,
                }
            }
            let delay = backoff.next_delay(rand::rng().random::<f64>());
            if sleep_or_shutdown(delay, &shutdown).await {
                return Ok(());
            }
        }
    }

    /// The hello for the next attempt. A new agent generates its secret and stores it *before* sending
    /// it, so whatever crashes when, the agent holds the credential the coordinator may have recorded.
    fn hello(&self) -> Result<Hello, AgentError> {
        let stored = credential::load(&self.config.state_dir, &self.config.name)?
            .filter(|stored| stored.ca_fingerprint == self.ca_fingerprint);
        let credential = match stored {
            Some(stored) if !self.must_enroll.get() => AgentCredential::Issued {
                secret: stored.secret,
            },
            Some(stored) => AgentCredential::Enroll {
                token: self.enrollment_token()?,
                secret: stored.secret,
            },
            None => {
                let token = self.enrollment_token()?;
                let fresh = Credential {
                    version: 1,
                    name: self.config.name.clone(),
                    secret: random_secret(),
                    ca_fingerprint: self.ca_fingerprint.clone(),
                };
                credential::store(&self.config.state_dir, &fresh)?;
                AgentCredential::Enroll {
                    token,
                    secret: fresh.secret,
                }
            }
        };
        Ok(Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Agent {
                credential,
                facts: Box::new(self.facts.clone()),
                incarnation: self.incarnation,
            },
        })
    }

    fn enrollment_token(&self) -> Result<String, AgentError> {
        let token_file =
            self.config
                .token_file
                .as_ref()
                .ok_or_else(|| AgentError::NoCredential {
                    state_dir: self.config.state_dir.clone(),
                })?;
        Ok(read_private(token_file)?)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<client::Session, ConnectError> {
        let hello = match self.hello() {
            Ok(hello) => hello,
            // A local problem (no token, unwritable state dir) is as final as a refusal.
            Err(err) => {
                return Err(ConnectError::Refused {
                    addr,
                    refusal: Refusal::InvalidHello {
                        reason: err.to_string(),
                    },
                })
            }
        };
        let session = client::connect(&self.endpoint, addr, hello, CONNECT_TIMEOUT).await?;
        self.must_enroll.set(false);
        // systemd readiness means "connected": a unit that starts is an agent that is in the inventory.
        polarizer_transport::daemon::notify_ready(&format!(
            "connected to the coordinator at {addr}"
        ));
        if session.welcome.enrolled {
            info!(state_dir = %self.config.state_dir.display(), "enrolled");
        }
        Ok(session)
    }

    /// Decides what a failed attempt means: keep looking, or stop for good.
    fn handle_connect_error(&self, addr: SocketAddr, err: ConnectError) -> Result<(), AgentError> {
        match err {
            ConnectError::Refused {
                refusal: Refusal::UnknownCredential { .. },
                ..
            } if self.config.token_file.is_some() => {
                // The coordinator lost its store, or this agent crashed before its enrollment committed:
                // enroll again, with the same secret.
                warn!(coordinator = %addr, "coordinator does not know this agent's credential; enrolling again");
                self.must_enroll.set(true);
                Ok(())
            }
            // Enrolled, not yet approved: ask again (with backoff) until an operator approves it.
            ConnectError::Refused {
                refusal: Refusal::Pending { name },
                ..
            } => {
                if !self.waiting_for_approval.replace(true) {
                    info!(coordinator = %addr, "enrolled; waiting for an operator to run `polarizer agents approve {name}`");
                }
                Ok(())
            }
            ConnectError::Refused { refusal, .. } => Err(AgentError::Refused {
                refusal: refusal.to_string(),
            }),
            err if err.is_untrusted_peer() => {
                warn!(coordinator = %addr, error = %err, "refusing coordinator: its certificate does not chain to the pinned CA; still looking");
                Ok(())
            }
            err => {
                warn!(coordinator = %addr, error = %err, "cannot connect to coordinator");
                Ok(())
            }
        }
    }

    async fn run_session(
        &mut self,
        addr: SocketAddr,
        session: client::Session,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let client::Session {
            connection,
            mut stream,
            welcome,
        } = session;
        info!(coordinator = %addr, coordinator_version = %welcome.coordinator_version, "connected to coordinator");
        let heartbeat_every =
            Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(50)));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let mut facts_refresh = tokio::time::interval(FACTS_REFRESH);
        facts_refresh.tick().await;
        // Whatever the coordinator already committed leaves the spool; the rest is sent again.
        self.spool.acknowledge(welcome.records_committed);
        let mut sent_up_to = welcome.records_committed;
        // Frames taken from the spool, not sent yet; a new session starts from the coordinator's count.
        let mut ready = std::collections::VecDeque::new();
        let mut last_heard = std::time::Instant::now();
        let silence_allowed = (heartbeat_every * 6).max(Duration::from_secs(2));
        let mut told_draining = false;
        loop {
            // Before the records: the coordinator must not give back to this agent what they hand back.
            if self.draining.is_cancelled() && !told_draining {
                if let Err(err) = stream
                    .send(&ClientFrame::Agent(AgentMessage::Draining))
                    .await
                {
                    return ended(&connection, err.to_string());
                }
                told_draining = true;
            }
            // One bounded batch per turn: acknowledgements, heartbeats and shutdown are served between
            // batches, however large the backlog.
            let more_to_send = match self
                .send_next_batch(&mut stream, &mut sent_up_to, &mut ready)
                .await
            {
                Ok(more_to_send) => more_to_send,
                Err(err) => return ended(&connection, err),
            };
            tokio::select! {
                // In this order: frames that came during a long write are read before a heartbeat tick
                // judges the coordinator's silence; the next batch goes when nothing else is ready.
                biased;
                () = shutdown.cancelled() => {
                    stream.finish().await;
                    connection.close(close_code::NORMAL.into(), b"agent shutting down");
                    return SessionEnd::Shutdown;
                }
                frame = stream.recv::<ServerFrame>() => match frame {
                    Ok(Some(ServerFrame::Agent(message))) => {
                        last_heard = std::time::Instant::now();
                        self.handle(message)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return ended(&connection, "coordinator closed the stream".into()),
                    Err(err) => return ended(&connection, err.to_string()),
                },
                _ = heartbeat.tick() => {
                    // A coordinator killed outright never closes the connection: notice its silence
                    // long before QUIC's idle timeout, so a restarted one sees this agent back at once.
                    if last_heard.elapsed() > silence_allowed {
                        connection.close(close_code::NORMAL.into(), b"coordinator silent");
                        return SessionEnd::Lost(format!("no answer from the coordinator for {silence_allowed:?}"));
                    }
                    if let Err(err) = stream.send(&ClientFrame::Agent(AgentMessage::Heartbeat)).await {
                        return ended(&connection, err.to_string());
                    }
                }
                _ = facts_refresh.tick() => {
                    let current = crate::facts::collect(&self.config.name, &self.config.labels, self.config.platform);
                    if current != self.facts {
                        self.facts = current.clone();
                        if let Err(err) = stream.send(&ClientFrame::Agent(AgentMessage::FactsChanged(Box::new(current)))).await {
                            return ended(&connection, err.to_string());
                        }
                    }
                }
                () = self.draining.cancelled(), if !told_draining => {}
                () = self.spool.published() => {}
                () = std::future::ready(()), if more_to_send => {}
            }
        }
    }
}

impl Connector {
    /// Sends the next batch of durable spooled records after `sent_up_to`, if there is one, bounded in
    /// records and bytes; `ready` holds the frames already taken from the spool. Returns whether more are
    /// waiting.
    async fn send_next_batch(
        &self,
        stream: &mut polarizer_transport::FramedStream,
        sent_up_to: &mut u64,
        ready: &mut std::collections::VecDeque<(Vec<u8>, u64)>,
    ) -> Result<bool, String> {
        if ready.is_empty() {
            if self.spool.published_up_to() <= *sent_up_to {
                return Ok(false);
            }
            ready.extend(
                self.spool
                    .unsent_frames(
                        *sent_up_to,
                        SEND_BATCH,
                        RECORDS_FRAME_BUDGET_BYTES,
                        READY_BYTES,
                    )
                    .await,
            );
        }
        let Some((frame, last)) = ready.pop_front() else {
            return Ok(false);
        };
        stream
            .send_encoded(&frame)
            .await
            .map_err(|err| err.to_string())?;
        *sent_up_to = last;
        Ok(!ready.is_empty() || self.spool.published_up_to() > last)
    }

    fn handle(&self, message: CoordinatorMessage) {
        match message {
            CoordinatorMessage::HeartbeatAck => {}
            CoordinatorMessage::Assign(assignment) => self.suites.assign(*assignment),
            CoordinatorMessage::Ack { up_to } => self.spool.acknowledge(up_to),
            CoordinatorMessage::Cancel { suite, reason } => self.suites.cancel(suite, &reason),
        }
    }
}

fn ended(connection: &quinn::Connection, fallback: String) -> SessionEnd {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == close_code::REVOKED.into() =>
        {
            SessionEnd::Revoked(String::from_utf8_lossy(&close.reason).into_owned())
        }
        Some(reason) => SessionEnd::Lost(reason.to_string()),
        None => SessionEnd::Lost(fallback),
    }
}

/// Sleeps, returning true if shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_jitters_caps_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(400));
        for _ in 0..10 {
            assert!(backoff.next_delay(1.0) <= Duration::from_millis(1000));
        }
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(500));
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(100));
    }

    fn addrs(ports: std::ops::Range<u16>) -> Vec<SocketAddr> {
        ports
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect()
    }

    #[test]
    fn dial_plan_bounds_each_round_and_rotates_through_every_candidate() {
        let candidates = addrs(1..11);
        let mut plan = DialPlan::default();
        let mut dialled = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let round = plan.next_round(&candidates);
            assert_eq!(round.len(), GOSSIP_CANDIDATES_PER_ROUND);
            dialled.extend(round);
        }
        assert_eq!(
            dialled.len(),
            candidates.len(),
            "three rounds reach all ten"
        );
        assert!(
            plan.next_round(&[]).is_empty(),
            "nothing known, nothing to dial"
        );
        // Fewer candidates than the window: each once per round, newest first.
        let mut plan = DialPlan::default();
        assert_eq!(plan.next_round(&addrs(1..3)), addrs(1..3));
        assert_eq!(plan.next_round(&addrs(1..3)), addrs(1..3));
    }

    #[test]
    fn dial_plan_tries_the_last_good_address_first_even_when_gossip_forgets_it() {
        let candidates = addrs(1..11);
        let last_good = candidates[7];
        let mut plan = DialPlan::default();
        plan.next_round(&candidates);
        plan.connected(last_good);
        let round = plan.next_round(&candidates);
        assert_eq!(round[0], last_good);
        assert_eq!(
            &round[1..],
            &addrs(1..5)[..],
            "then the newest others, from the start"
        );
        assert!(
            !round[1..].contains(&last_good),
            "never dialled twice in a round"
        );
        assert_eq!(plan.next_round(&[]), vec![last_good]);
    }
}
