//! Live events: what the system under test did while tests ran (D-Bus signals, file changes, package
//! changes, test output, custom events), as agents record them and operators read them.
//! Field order is the wire format: append, never reorder.

use serde::{Deserialize, Serialize};

use crate::ids::SuiteRef;

/// The kinds agents produce; custom events from `polarizer-agent emit` choose their own.
pub mod kind {
    pub const DBUS: &str = "dbus";
    pub const FILE: &str = "file";
    pub const PACKAGE: &str = "package";
    pub const OUTPUT: &str = "output";
    pub const RESULT: &str = "result";
    pub const DROPPED: &str = "dropped";
    pub const AGENT: &str = "agent";
}

/// The longest custom event `emit` accepts, in bytes of JSON.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// One event as the agent records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: String,
    /// One line for humans.
    pub summary: String,
    /// JSON object text with everything else.
    pub data: String,
}

/// What was running on the agent when the event happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    pub suite: SuiteRef,
    /// Empty between tests (suite hooks, checkout).
    pub test: String,
}

/// One stored event as `polarizer tail` and `polarizer replay` show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// The coordinator's sequence over all agents: `tail --since N` resumes after it.
    pub id: u64,
    pub agent: String,
    /// The agent's own sequence number for the record.
    pub seq: u64,
    /// When it happened, by the agent's clock (Unix ms).
    pub agent_ms: i64,
    /// When the coordinator received it (Unix ms).
    pub received_ms: i64,
    pub kind: String,
    pub run: Option<u64>,
    pub suite: Option<u64>,
    pub test: String,
    pub summary: String,
    pub data: String,
}

impl EventRow {
    /// About what the row takes in memory and on the wire: its text and a fixed part for the rest.
    /// What pages, frames and the live buffer are measured in.
    pub fn approximate_bytes(&self) -> usize {
        64 + self.agent.len()
            + self.kind.len()
            + self.test.len()
            + self.summary.len()
            + self.data.len()
    }
}

/// The filters of `polarizer tail`; every one given must hold.
/// `--since` (and the API's `since`): a duration back from `now_ms` (`10m`, `1h 30m`) as a time, or an
/// event id (digits only) to resume after. Returns (since_ms, after_id); the reason when it is neither.
pub fn parse_since(text: &str, now_ms: i64) -> Result<(Option<i64>, Option<u64>), String> {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        let id = text
            .parse::<u64>()
            .map_err(|err| format!("not an event id: {err}"))?;
        return Ok((None, Some(id)));
    }
    match crate::metadata::parse_duration_seconds(text) {
        Some(seconds) => Ok((Some(now_ms - seconds as i64 * 1000), None)),
        None => Err("give a duration (10m, 30s, 2h) or an event id (digits)".into()),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailQuery {
    pub agents: Vec<String>,
    pub kinds: Vec<String>,
    pub run: Option<u64>,
    pub test: Option<String>,
    /// Events received at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Events after this id.
    pub after_id: Option<u64>,
    /// A regular expression matched against the summary and the data.
    pub grep: Option<String>,
    /// Keep streaming new events after the stored ones.
    pub follow: bool,
    /// At most this many stored events (the newest); `None` for all.
    pub limit: Option<u32>,
}
