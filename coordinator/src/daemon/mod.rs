//! `polarizer serve`: the data directory and config, QUIC sessions with agents and operators, the
//! scheduler loop that carries out `core`'s decisions, imports and triggers, live fan-out to `tail` and
//! `runs watch`, and HTTP (`/healthz`, `/metrics`).
//!
//! The tasks share no catch-all state: each gets the parts it needs ([`Context`] bundles them for the
//! connection tasks, which need most): the store handle, [`Settings`], the live [`sessions::Sessions`],
//! the [`fanout::FanOut`] to watchers and followers, [`server::Metrics`] and the scheduler's handle.
//!
//! May import `store`, `core`, `data_dir`, `shared` and `transport`; never `cli`.

mod agent_session;
pub mod config;
pub mod fanout;
pub mod http;
pub mod identity;
pub mod import;
pub mod local_agents;
mod operator;
pub mod scheduler;
pub mod serve;
pub mod server;
pub mod sessions;
pub mod tail;
pub mod trigger;

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch: the `now` the daemon hands to `core` and `store`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::StoreHandle;

/// What the daemon was started with and does not change while it runs.
pub struct Settings {
    pub heartbeat_interval: Duration,
    /// Digests of the tokens; the files are read once at start.
    pub enrollment_token_digest: String,
    pub operator_token_digest: String,
    /// For caches (git checkouts of imported test repositories).
    pub data_dir: PathBuf,
    pub runs: config::RunsConfig,
    /// Until then, agents that have not reconnected since this process started keep their leases.
    pub restart_grace_until_ms: i64,
}

/// The parts a connection task uses; every other task gets only the parts it needs.
#[derive(Clone)]
pub struct Context {
    pub store: StoreHandle,
    pub settings: Arc<Settings>,
    pub sessions: Arc<sessions::Sessions>,
    pub fanout: Arc<fanout::FanOut>,
    pub metrics: Arc<server::Metrics>,
    pub scheduler: Arc<scheduler::SchedulerHandle>,
}

impl Context {
    /// Publishes what a committed write changed, wakes the scheduler when it may have work, and tells
    /// `agent` to stop attempts it no longer holds.
    pub fn publish(&self, agent: Option<&str>, effects: Vec<crate::store::runs::Effect>) {
        let stale = self.fanout.publish(effects, &self.scheduler);
        if let Some(agent) = agent {
            for suite in stale {
                self.sessions.send_to_agent(
                    agent,
                    polarizer_shared::protocol::CoordinatorMessage::Cancel {
                        suite,
                        reason: "this attempt's lease was revoked".into(),
                    },
                );
            }
        }
    }
}
