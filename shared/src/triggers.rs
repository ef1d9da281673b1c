//! Triggers that arrived from outside (GitHub webhooks), as `polarizer triggers` shows them: what came,
//! what became of it, and whether its report reached where it goes.

use serde::{Deserialize, Serialize};

/// What became of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerOutcome {
    /// Recorded and answered; its run is being planned.
    Received,
    /// A run was created (its id is in `run`).
    Run,
    /// Not something to test (a tag push, a branch deleted, a `ping`, a repository not configured):
    /// `reason` says which.
    Ignored,
    /// The same delivery again, or the same commit and event within the dedup window.
    Duplicate,
    /// Not accepted (bad signature, body too large, malformed JSON): nothing was created.
    Refused,
    /// Accepted, but no run could be made (a bad fmf tree, a ref that no longer exists): the report says why.
    Failed,
}

impl TriggerOutcome {
    pub const ALL: [TriggerOutcome; 6] = [
        TriggerOutcome::Received,
        TriggerOutcome::Run,
        TriggerOutcome::Ignored,
        TriggerOutcome::Duplicate,
        TriggerOutcome::Refused,
        TriggerOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerOutcome::Received => "received",
            TriggerOutcome::Run => "run",
            TriggerOutcome::Ignored => "ignored",
            TriggerOutcome::Duplicate => "duplicate",
            TriggerOutcome::Refused => "refused",
            TriggerOutcome::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<TriggerOutcome> {
        TriggerOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

impl std::fmt::Display for TriggerOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One arrival, newest first in `polarizer triggers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRecord {
    pub id: u64,
    /// Unix milliseconds.
    pub received_ms: i64,
    /// `github`.
    pub source: String,
    /// `X-GitHub-Delivery`; empty when absent.
    pub delivery: String,
    /// `owner/name`; empty when the body could not be read.
    pub repo: String,
    /// `push`, `pull_request`, `ping`, ...; with the action: `pull_request.opened`.
    pub event: String,
    /// The commit the run is pinned to (a push's `after`, a pull request's head).
    pub sha: String,
    /// A branch (`refs/heads/main`) or a pull request (`pull/7`).
    pub git_ref: String,
    pub outcome: TriggerOutcome,
    /// Why ignored, refused, a duplicate (of which) or failed; a fail-open note for a run.
    pub reason: String,
    pub run: Option<u64>,
    /// Its report back: `none`, or the last state posted and whether it reached GitHub
    /// (`success delivered`, `pending not delivered (3 tries): 502 Bad Gateway`).
    pub report: String,
    /// How long fetching the change took, and the whole of it until the run was stored (ms).
    pub fetch_ms: Option<u64>,
    pub planned_ms: Option<u64>,
}
