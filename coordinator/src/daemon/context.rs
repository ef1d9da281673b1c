//! What the daemon's tasks share, in parts: the settings it started with, the metrics, the scheduler's
//! handle, and [`Context`], which bundles them with the store, the sessions and the fan-out for the
//! connection tasks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tracing::warn;

use crate::daemon::config::RunsConfig;
use crate::daemon::fanout::FanOut;
use crate::daemon::sessions::Sessions;
use crate::store::StoreHandle;

/// What the daemon was started with and does not change while it runs.
pub struct Settings {
    pub heartbeat_interval: Duration,
    /// Whether a newly enrolled agent works at once or waits for approval.
    pub enroll: crate::core::admission::EnrollMode,
    /// Digests of the tokens; the files are read at start. The enrollment token can be rotated while
    /// the daemon runs (`polarizer tokens rotate`).
    pub enrollment_token_digest: std::sync::RwLock<String>,
    pub operator_token_digest: String,
    /// For caches (git checkouts of imported test repositories).
    pub data_dir: PathBuf,
    pub runs: RunsConfig,
    /// Until then, agents that have not reconnected since this process started keep their leases.
    pub restart_grace_until_ms: i64,
}

/// The parts a connection task uses; every other task gets only the parts it needs.
#[derive(Clone)]
pub struct Context {
    pub store: StoreHandle,
    pub settings: Arc<Settings>,
    pub sessions: Arc<Sessions>,
    pub fanout: Arc<FanOut>,
    pub metrics: Arc<Metrics>,
    pub scheduler: Arc<SchedulerHandle>,
    /// The tests shipped to agents: built once per commit, format and base.
    pub shipping: Arc<crate::daemon::shipping::Shipping>,
    /// Pools of platforms made on demand, and their platforms.
    pub pools: Arc<crate::daemon::pools::Pools>,
    /// `[polarion]`: importer files, uploads and their jobs.
    pub polarion: Option<Arc<crate::daemon::polarion::Polarion>>,
    /// Failure clustering and quarantine, used by the store's writer at ingest.
    pub analysis: crate::store::analysis::SharedAnalysis,
    /// The web view's login links and browser sessions.
    pub web: Arc<crate::daemon::web::logins::Logins>,
}

impl Context {
    /// `[analysis]` as configured.
    pub fn analysis_settings(&self) -> crate::core::analysis::AnalysisSettings {
        self.analysis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .settings
            .clone()
    }

    /// Publishes what a committed write changed, wakes the scheduler when it may have work, and tells
    /// `agent` to stop attempts it no longer holds.
    pub fn publish(&self, agent: Option<&str>, effects: Vec<crate::store::runs::Effect>) {
        let (stale, wake) = self.fanout.publish(effects);
        if wake {
            self.scheduler.wake();
        }
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

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub refusals: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Test transfers started (a resumed one counts again) and the bytes of tests sent to agents.
    pub transfers: AtomicU64,
    pub shipped_bytes: AtomicU64,
}

impl Metrics {
    /// Counts and closes a connection that broke the protocol (an oversize or undecodable frame, a
    /// frame out of place).
    pub fn protocol_error(&self, connection: &quinn::Connection, reason: &str) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        warn!(reason, "closing connection after a protocol error");
        connection.close(
            polarizer_shared::protocol::close_code::PROTOCOL_ERROR.into(),
            reason.as_bytes(),
        );
    }
}

/// How others reach the scheduler: wake it, and read why suites wait.
#[derive(Default)]
pub struct SchedulerHandle {
    pub(super) wake: Notify,
    /// Why each queued suite waits, as the scheduler last saw it.
    pub(super) waiting: Mutex<HashMap<u64, String>>,
}

impl SchedulerHandle {
    /// Something changed that may let a suite run (a trigger, an agent came or went, a suite ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn waiting(&self) -> HashMap<u64, String> {
        self.waiting.lock().expect("waiting lock").clone()
    }
}
