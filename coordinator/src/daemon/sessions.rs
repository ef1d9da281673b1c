//! The live sessions: one per online agent (its connection, incarnation, facts, last frame and outbox),
//! the agents seen since this process started, and gossip's view of who is alive (a hint, never trusted
//! for identity).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polarizer_shared::protocol::{close_code, AgentRecord, AgentState, CoordinatorMessage};
use polarizer_shared::AgentFacts;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::daemon::clock::now_ms;
use crate::store::{StoreError, StoreHandle};

/// Messages waiting for one agent's session to send them. An agent gets a few at a time (its
/// assignments and cancels); an outbox this full means the session cannot write to its peer.
pub const OUTBOX_MESSAGES: usize = 256;

pub struct LiveSession {
    pub connection: quinn::Connection,
    pub last_frame: Instant,
    pub incarnation: u64,
    /// Shared with every scheduling step's view: a step over thousands of agents copies no facts.
    pub facts: Arc<AgentFacts>,
    /// Bounded by [`OUTBOX_MESSAGES`].
    pub outbox: mpsc::Sender<CoordinatorMessage>,
    /// The agent said it is stopping: it keeps what it holds and is given nothing new.
    pub draining: bool,
}

/// An online agent as the scheduler sees it: cheap to take for thousands of agents (the facts are
/// shared, the name is the facts' own).
#[derive(Clone)]
pub struct OnlineAgent {
    pub incarnation: u64,
    pub facts: Arc<AgentFacts>,
    pub draining: bool,
}

impl OnlineAgent {
    pub fn name(&self) -> &str {
        &self.facts.name
    }
}

/// The sessions and the names revoked while this process runs, under one lock: a session registers
/// and a name is revoked one after the other, never in between.
#[derive(Default)]
struct Live {
    sessions: HashMap<String, LiveSession>,
    revoked: HashSet<String>,
}

/// The agent was revoked while it connected.
#[derive(Debug)]
pub struct Revoked;

pub struct Sessions {
    live: Mutex<Live>,
    /// Agents that have had a session with this coordinator process (the lease grace after a restart is
    /// for the others).
    seen: Mutex<HashSet<String>>,
    /// Agent names gossip currently sees alive.
    gossip_live: watch::Receiver<BTreeSet<String>>,
}

impl Sessions {
    pub fn new(gossip_live: watch::Receiver<BTreeSet<String>>) -> Sessions {
        Sessions {
            live: Mutex::new(Live::default()),
            seen: Mutex::new(HashSet::new()),
            gossip_live,
        }
    }

    /// Makes `session` the agent's session; returns the one it replaces (an agent that restarted
    /// before its old connection timed out). An agent revoked since it was admitted is refused:
    /// admission read the store before the revocation, registration comes after.
    pub fn register(
        &self,
        name: &str,
        session: LiveSession,
    ) -> Result<Option<LiveSession>, Revoked> {
        let mut live = self.live.lock().expect("sessions lock");
        if live.revoked.contains(name) {
            return Err(Revoked);
        }
        self.seen
            .lock()
            .expect("seen lock")
            .insert(name.to_string());
        Ok(live.sessions.insert(name.to_string(), session))
    }

    /// After the store has the revocation: no session of `name` may register from now on, and the one
    /// it has (if any) is returned to be closed.
    pub fn revoke(&self, name: &str) -> Option<LiveSession> {
        let mut live = self.live.lock().expect("sessions lock");
        live.revoked.insert(name.to_string());
        live.sessions.remove(name)
    }

    /// Removes the agent's session if it is still the one on `connection_id`; false when a newer
    /// session owns the name (or none does).
    pub fn remove_if_owned(&self, name: &str, connection_id: usize) -> bool {
        let mut live = self.live.lock().expect("sessions lock");
        let owns = live
            .sessions
            .get(name)
            .is_some_and(|session| session.connection.stable_id() == connection_id);
        if owns {
            live.sessions.remove(name);
        }
        owns
    }

    /// Runs `change` on the agent's session if it is still the one on `connection_id`.
    fn with_own_session(
        &self,
        name: &str,
        connection_id: usize,
        change: impl FnOnce(&mut LiveSession),
    ) {
        let mut live = self.live.lock().expect("sessions lock");
        if let Some(session) = live.sessions.get_mut(name) {
            if session.connection.stable_id() == connection_id {
                change(session);
            }
        }
    }

    pub fn touch(&self, name: &str, connection_id: usize) {
        self.with_own_session(name, connection_id, |session| {
            session.last_frame = Instant::now()
        });
    }

    pub fn update_facts(&self, name: &str, connection_id: usize, facts: AgentFacts) {
        self.with_own_session(name, connection_id, |session| {
            session.facts = Arc::new(facts)
        });
    }

    /// The agent is stopping: from now on this session is given no new suite.
    pub fn set_draining(&self, name: &str, connection_id: usize) {
        self.with_own_session(name, connection_id, |session| session.draining = true);
    }

    pub fn silent_for(&self, name: &str) -> Option<Duration> {
        self.live
            .lock()
            .expect("sessions lock")
            .sessions
            .get(name)
            .map(|session| session.last_frame.elapsed())
    }

    pub fn gossip_sees_alive(&self, name: &str) -> bool {
        self.gossip_live.borrow().contains(name)
    }

    /// Those of `names` that have had a session with this process.
    pub fn seen_among<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
        let seen = self.seen.lock().expect("seen lock");
        names
            .into_iter()
            .filter(|name| seen.contains(*name))
            .map(str::to_string)
            .collect()
    }

    /// Every agent with a live session.
    pub fn online_agents(&self) -> Vec<OnlineAgent> {
        self.live
            .lock()
            .expect("sessions lock")
            .sessions
            .values()
            .map(|session| OnlineAgent {
                incarnation: session.incarnation,
                facts: session.facts.clone(),
                draining: session.draining,
            })
            .collect()
    }

    /// Sends to an agent's session, if it has one. An outbox that is full closes the connection
    /// instead of growing or dropping the message: the session ends, its leases go back to the queue
    /// and the agent reconnects. Never waits (it runs under the sessions lock).
    pub fn send_to_agent(&self, name: &str, message: CoordinatorMessage) -> bool {
        let live = self.live.lock().expect("sessions lock");
        let Some(session) = live.sessions.get(name) else {
            return false;
        };
        match session.outbox.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(agent = %name, "{OUTBOX_MESSAGES} messages wait for this agent's session; closing it");
                session.connection.close(
                    close_code::NORMAL.into(),
                    b"too many messages waiting: the agent does not read",
                );
                false
            }
        }
    }

    /// Agents with a live session.
    pub fn online_count(&self) -> usize {
        self.live.lock().expect("sessions lock").sessions.len()
    }

    /// The inventory as operators see it: stored rows, with live sessions' last frame time and gossip's
    /// view.
    pub async fn list_agents(&self, store: &StoreHandle) -> Result<Vec<AgentRecord>, StoreError> {
        self.list_agents_page(store, String::new(), None).await
    }

    /// One page of [`list_agents`](Self::list_agents): the agents named after `after`, at most `limit`.
    pub async fn list_agents_page(
        &self,
        store: &StoreHandle,
        after: String,
        limit: Option<u32>,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let mut agents = store
            .read(move |reader| reader.agents_page(&after, limit))
            .await?;
        let gossip_live = self.gossip_live.borrow().clone();
        let now = Instant::now();
        let wall_now = now_ms();
        let live = self.live.lock().expect("sessions lock");
        for agent in &mut agents {
            agent.gossip_live = gossip_live.contains(&agent.name);
            if let Some(session) = live.sessions.get(&agent.name) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::loopback;
    use crate::data_dir::DataDir;

    fn session(connection: &quinn::Connection) -> LiveSession {
        LiveSession {
            connection: connection.clone(),
            last_frame: Instant::now(),
            incarnation: 1,
            facts: Arc::new(AgentFacts::for_test("vm-1")),
            outbox: mpsc::channel(OUTBOX_MESSAGES).0,
            draining: false,
        }
    }

    #[tokio::test]
    async fn a_revocation_wins_over_a_session_registering_at_the_same_time() {
        let temp = tempfile::tempdir().unwrap();
        let loopback = loopback::connect(&DataDir::new(temp.path())).await;
        let connection = loopback.accepted.clone();
        let sessions = Sessions::new(watch::channel(BTreeSet::new()).1);
        // Registered first: the revocation takes the session, to be closed.
        assert!(matches!(
            sessions.register("vm-1", session(&connection)),
            Ok(None)
        ));
        assert!(sessions.revoke("vm-1").is_some());
        assert!(sessions.online_agents().is_empty());
        // Revoked first (admission had read the store just before): the registration is refused.
        assert!(sessions.register("vm-1", session(&connection)).is_err());
        assert!(sessions.online_agents().is_empty());
        // Nobody else is affected.
        assert!(matches!(
            sessions.register("vm-2", session(&connection)),
            Ok(None)
        ));
        assert_eq!(sessions.online_agents().len(), 1);
    }

    /// An agent whose session cannot send (its peer does not read) is disconnected once its outbox
    /// is full: with an unbounded outbox, messages would pile up for as long as the connection lasts.
    #[tokio::test]
    async fn a_full_outbox_closes_the_connection_instead_of_growing() {
        let temp = tempfile::tempdir().unwrap();
        let loopback = loopback::connect(&DataDir::new(temp.path())).await;
        let sessions = Sessions::new(watch::channel(BTreeSet::new()).1);
        // Nobody takes from it: the session is stuck writing to its peer.
        let (outbox, _outbox_rx) = mpsc::channel(OUTBOX_MESSAGES);
        let stuck = LiveSession {
            outbox,
            ..session(&loopback.accepted)
        };
        assert!(matches!(sessions.register("vm-1", stuck), Ok(None)));
        for _ in 0..OUTBOX_MESSAGES {
            assert!(sessions.send_to_agent("vm-1", CoordinatorMessage::HeartbeatAck));
        }
        assert!(loopback.accepted.close_reason().is_none());
        assert!(!sessions.send_to_agent("vm-1", CoordinatorMessage::HeartbeatAck));
        assert!(
            loopback.accepted.close_reason().is_some(),
            "the session is closed, so it ends and its leases go back to the queue"
        );
        // The agent is told, and reconnects.
        assert!(matches!(
            loopback.connected.closed().await,
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == close_code::NORMAL.into()
        ));
    }
}
