//! Test platforms made on demand by pools: their states and how an operator sees them
//! (`polarizer platforms`).

use serde::{Deserialize, Serialize};

use crate::ids::SuiteRef;

/// Where a platform is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlatformState {
    /// Its provisioner is making it, or its agent has not joined yet.
    Creating,
    /// Its agent is online and holds no suite.
    Ready,
    /// Its agent holds a suite (or held one, until it is released).
    Leased,
    /// The pool's clean command runs before it goes back to the pool.
    Cleaning,
    /// Its provisioner is destroying it.
    Destroying,
    /// It could not be made: kept for the listing, with the error, until destroyed by name.
    Failed,
}

impl PlatformState {
    pub const ALL: [PlatformState; 6] = [
        PlatformState::Creating,
        PlatformState::Ready,
        PlatformState::Leased,
        PlatformState::Cleaning,
        PlatformState::Destroying,
        PlatformState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlatformState::Creating => "creating",
            PlatformState::Ready => "ready",
            PlatformState::Leased => "leased",
            PlatformState::Cleaning => "cleaning",
            PlatformState::Destroying => "destroying",
            PlatformState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<PlatformState> {
        PlatformState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// Whether its agent may be given a suite: only once made and joined (an agent may join before
    /// its provisioner is done, mid-install).
    pub fn takes_suites(self) -> bool {
        self == PlatformState::Ready
    }

    /// Whether it counts against its pool's `max`.
    pub fn counts(self) -> bool {
        self != PlatformState::Failed
    }
}

impl std::fmt::Display for PlatformState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One platform. Its agent has the platform's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub name: String,
    pub pool: String,
    pub state: PlatformState,
    /// What its provisioner calls it (a container id, a server id); empty until made.
    pub provider_id: String,
    /// Where it is reached (for `command` pools), else empty.
    pub address: String,
    /// While creating: the suite it is made for; while leased: the suite it runs.
    pub suite: Option<SuiteRef>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// When it entered its state.
    pub state_ms: i64,
    /// Tries at making it so far.
    pub tries: u32,
    /// The last try's error (or the destroy's), empty when none.
    pub error: String,
    /// Made from its suite's Containerfile (this path in the tree): that suite's alone. Empty: the
    /// pool's image.
    pub image: String,
}

/// A pool as configured, with its platforms counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    /// `local`, `podman` or `command`.
    pub provisioner: String,
    pub max: u32,
    pub min_ready: u32,
    /// `never` or `clean`.
    pub reuse: String,
}
