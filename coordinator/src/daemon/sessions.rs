//! The live sessions: one per online agent (its connection, incarnation, facts, last frame and outbox),
//! the agents seen since this process started, and gossip's view of who is alive (a hint, never trusted
//! for identity).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use polarizer_shared::protocol::{AgentRecord, AgentState, CoordinatorMessage};
use polarizer_shared::AgentFacts;
use tokio::sync::{mpsc, watch};

use crate::daemon::clock::now_ms;
use crate::store::{StoreError, StoreHandle};

pub struct LiveSession {
    pub connection: quinn::Connection,
    pub last_frame: Instant,
    pub incarnation: u64,
    pub facts: AgentFacts,
    pub outbox: mpsc::UnboundedSender<CoordinatorMessage>,
}

/// An online agent as the scheduler sees it.
#[derive(Clone)]
pub struct OnlineAgent {
    pub name: String,
    pub incarnation: u64,
    pub facts: AgentFacts,
    pub outbox: mpsc::UnboundedSender<CoordinatorMessage>,
}

pub struct Sessions {
    live: Mutex<HashMap<String, LiveSession>>,
    /// Agents that have had a session with this coordinator process (the lease grace after a restart is
    /// for the others).
    seen: Mutex<HashSet<String>>,
    /// Agent names gossip currently sees alive.
    gossip_live: watch::Receiver<BTreeSet<String>>,
}

impl Sessions {
    pub fn new(gossip_live: watch::Receiver<BTreeSet<String>>) -> Sessions {
        Sessions {
            live: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            gossip_live,
        }
    }

    /// Makes `session` the agent's session; returns the one it replaces (an agent that restarted
    /// before its old connection timed out).
    pub fn register(&self, name: &str, session: LiveSession) -> Option<LiveSession> {
        self.seen
            .lock()
            .expect("seen lock")
            .insert(name.to_string());
        self.live
            .lock()
            .expect("sessions lock")
            .insert(name.to_string(), session)
    }

    /// Removes the agent's session if it is still the one on `connection_id`; false when a newer
    /// session owns the name (or none does).
    pub fn remove_if_owned(&self, name: &str, connection_id: usize) -> bool {
        let mut live = self.live.lock().expect("sessions lock");
        let owns = live
            .get(name)
            .is_some_and(|session| session.connection.stable_id() == connection_id);
        if owns {
            live.remove(name);
        }
        owns
    }

    /// Removes the agent's session, whichever it is (revocation).
    pub fn remove(&self, name: &str) -> Option<LiveSession> {
        self.live.lock().expect("sessions lock").remove(name)
    }

    pub fn touch(&self, name: &str, connection_id: usize) {
        if let Some(session) = self.live.lock().expect("sessions lock").get_mut(name) {
            if session.connection.stable_id() == connection_id {
                session.last_frame = Instant::now();
            }
        }
    }

    pub fn update_facts(&self, name: &str, connection_id: usize, facts: AgentFacts) {
        if let Some(session) = self.live.lock().expect("sessions lock").get_mut(name) {
            if session.connection.stable_id() == connection_id {
                session.facts = facts;
            }
        }
    }

    pub fn silent_for(&self, name: &str) -> Option<Duration> {
        self.live
            .lock()
            .expect("sessions lock")
            .get(name)
            .map(|session| session.last_frame.elapsed())
    }

    pub fn gossip_sees_alive(&self, name: &str) -> bool {
        self.gossip_live.borrow().contains(name)
    }

    pub fn seen(&self) -> HashSet<String> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Every agent with a live session.
    pub fn online_agents(&self) -> Vec<OnlineAgent> {
        self.live
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
        self.live
            .lock()
            .expect("sessions lock")
            .get(name)
            .is_some_and(|session| session.outbox.send(message).is_ok())
    }

    /// The inventory as operators see it: stored rows, with live sessions' last frame time and gossip's
    /// view.
    pub async fn list_agents(&self, store: &StoreHandle) -> Result<Vec<AgentRecord>, StoreError> {
        let mut agents = store.read(|reader| reader.agents()).await?;
        let gossip_live = self.gossip_live.borrow().clone();
        let now = Instant::now();
        let wall_now = now_ms();
        let live = self.live.lock().expect("sessions lock");
        for agent in &mut agents {
            agent.gossip_live = gossip_live.contains(&agent.name);
            if let Some(session) = live.get(&agent.name) {
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
