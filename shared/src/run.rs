//! Runs on the wire: what the coordinator assigns to an agent, the sequenced records an agent sends back,
//! and what operators see of a run. Field order is the wire format: append, never reorder.
//!
//! Every record an agent produces carries a per-agent sequence number. The agent keeps a record (memory,
//! then its disk spool) until the coordinator acknowledges that it is committed; after a reconnect it
//! resends everything unacknowledged and the coordinator drops what it already has by (agent, seq).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::facts::PlatformKind;
// `SuiteRef` lives below `events`, which `Record` carries; every `run::SuiteRef` path keeps working.
pub use crate::ids::SuiteRef;

/// A suite handed to an agent: where the tests are and how to run each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub suite: SuiteRef,
    /// A git URL, or a path on the agent's host (local agents).
    pub repo: String,
    pub git_ref: String,
    pub commit: String,
    /// The fmf tree's root inside the repository ("" for the top).
    pub tree_path: String,
    /// In order; for a serial suite this order is required.
    pub tests: Vec<AssignedTest>,
    /// Packages whose versions go into the suite's version chain.
    pub packages: Vec<String>,
    /// Shell commands run once before the first and after the last test (cleanup always runs).
    pub suite_setup: Vec<String>,
    pub suite_cleanup: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssignedTest {
    pub id: String,
    pub name: String,
    pub test: String,
    /// Working directory, relative to the tree root.
    pub path: String,
    pub environment: Vec<(String, String)>,
    pub duration_seconds: u64,
    /// fmf `result`: respect (default), xfail, pass, info, warn, error, fail.
    pub result: String,
    /// A JUnit report the test writes, relative to its working directory.
    pub junit: String,
    pub setup: Vec<String>,
    pub cleanup: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TestStatus {
    Queued,
    Running,
    Pass,
    Fail,
    Error,
    Timeout,
    Info,
    Warn,
    Skipped,
    Cancelled,
}

impl TestStatus {
    pub const FINAL: [TestStatus; 8] = [
        TestStatus::Pass,
        TestStatus::Fail,
        TestStatus::Error,
        TestStatus::Timeout,
        TestStatus::Info,
        TestStatus::Warn,
        TestStatus::Skipped,
        TestStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Queued => "queued",
            TestStatus::Running => "running",
            TestStatus::Pass => "pass",
            TestStatus::Fail => "fail",
            TestStatus::Error => "error",
            TestStatus::Timeout => "timeout",
            TestStatus::Info => "info",
            TestStatus::Warn => "warn",
            TestStatus::Skipped => "skipped",
            TestStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TestStatus> {
        [TestStatus::Queued, TestStatus::Running]
            .into_iter()
            .chain(TestStatus::FINAL)
            .find(|status| status.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, TestStatus::Queued | TestStatus::Running)
    }

    /// Whether this outcome makes its run fail.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            TestStatus::Fail | TestStatus::Error | TestStatus::Timeout | TestStatus::Warn
        )
    }
}

impl fmt::Display for TestStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How a test's process ended, before its `result` key is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
    /// It could not be started at all (or a hook or the checkout failed).
    NotStarted,
}

/// The outcome of a test's process, and fmf's `result` key, as a status. Exit 0 passes, 1 fails, any
/// other code or a signal is an error, a timeout is a timeout; then `result` may override.
pub fn test_status(exit: Exit, result_key: &str) -> TestStatus {
    let measured = match exit {
        Exit::Code(0) => TestStatus::Pass,
        Exit::Code(1) => TestStatus::Fail,
        Exit::Code(_) | Exit::Signal(_) | Exit::NotStarted => TestStatus::Error,
        Exit::TimedOut => TestStatus::Timeout,
    };
    match (result_key, measured) {
        ("xfail", TestStatus::Pass) => TestStatus::Fail,
        ("xfail", TestStatus::Fail) => TestStatus::Pass,
        // An error or a timeout is never overridden: the test did not produce an answer.
        (_, TestStatus::Error | TestStatus::Timeout) => measured,
        ("pass", _) => TestStatus::Pass,
        ("info", _) => TestStatus::Info,
        ("warn", _) => TestStatus::Warn,
        ("error", _) => TestStatus::Error,
        ("fail", _) => TestStatus::Fail,
        _ => measured,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
    /// Lines from setup and cleanup hooks, the checkout, and the agent's own notes.
    Agent,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
            OutputStream::Agent => "agent",
        }
    }
}

/// A case from the test's JUnit report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubResult {
    pub name: String,
    pub classname: String,
    pub status: TestStatus,
    pub duration_ms: u64,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub suite: SuiteRef,
    pub test: String,
    pub status: TestStatus,
    pub exit: Exit,
    pub started_ms: i64,
    pub duration_ms: u64,
    /// Why, in one line: "exit code 2", "killed after 5 s", "junit report is not XML: …".
    pub message: String,
    /// The last lines of output (capped), kept with the result.
    pub output_tail: String,
    pub subresults: Vec<SubResult>,
}

/// The version chain of one suite attempt: what exactly was tested with what.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionChain {
    pub commit: String,
    pub agent_version: String,
    /// (package, version) as rpm or dpkg report them; "not installed" when absent.
    pub packages: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    SuiteStarted {
        suite: SuiteRef,
        versions: VersionChain,
    },
    TestStarted {
        suite: SuiteRef,
        test: String,
    },
    Output {
        suite: SuiteRef,
        test: String,
        stream: OutputStream,
        line: String,
    },
    TestFinished(Box<TestOutcome>),
    /// `error` is set when the suite could not run (checkout failed, suite setup failed): an
    /// infrastructure problem, so its unfinished tests go to another attempt.
    SuiteFinished {
        suite: SuiteRef,
        error: Option<String>,
    },
    /// Something the system under test did (a collector saw it) or a test said (`emit`).
    Event {
        correlation: Option<crate::events::Correlation>,
        event: crate::events::Event,
    },
}

impl RecordBody {
    /// Results are never dropped from a full spool; events and output may be.
    pub fn is_result(&self) -> bool {
        !matches!(self, RecordBody::Output { .. } | RecordBody::Event { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// The agent's clock, Unix milliseconds.
    pub at_ms: i64,
    pub body: RecordBody,
}

/// Run states: queued → running → passed | failed | error | cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Queued,
    Running,
    Passed,
    Failed,
    Error,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Passed => "passed",
            RunState::Failed => "failed",
            RunState::Error => "error",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<RunState> {
        [
            RunState::Queued,
            RunState::Running,
            RunState::Passed,
            RunState::Failed,
            RunState::Error,
            RunState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerKind {
    Commit,
    Build,
    Manual,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Commit => "commit",
            TriggerKind::Build => "build",
            TriggerKind::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<TriggerKind> {
        [TriggerKind::Commit, TriggerKind::Build, TriggerKind::Manual]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// `polarizer trigger`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerRequest {
    /// A directory in a git work tree on the coordinator's host, or a git URL.
    pub repo: String,
    pub git_ref: String,
    pub kind: TriggerKind,
    pub changed: Vec<String>,
    pub features: Vec<String>,
    /// Empty: the kind's default types from the coordinator's config.
    pub test_types: Vec<String>,
    /// e.g. build NVRs; recorded in every suite's version chain.
    pub artifacts: Vec<String>,
    pub all: bool,
    /// fmf context for adjust rules.
    pub context: Vec<(String, String)>,
    /// A tmt plan of the tree (`/plans/smoke`): only the tests its fmf discover selects. Empty: no plan.
    #[serde(default)]
    pub plan: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerSummary {
    pub run: u64,
    pub tests: u64,
    pub touched_features: Vec<String>,
    pub dependent_features: Vec<String>,
    pub fail_open: bool,
    pub parallel_suites: u64,
    pub serial_suites: u64,
    pub commit: String,
}

/// A row of `polarizer runs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: u64,
    pub state: RunState,
    pub kind: TriggerKind,
    pub repo: String,
    pub git_ref: String,
    pub commit: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub tests: u64,
    /// Tests with a final status.
    pub done: u64,
    pub problems: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteRow {
    pub id: u64,
    pub ordinal: u32,
    /// "serial" or "parallel".
    pub kind: String,
    pub platform: Option<PlatformKind>,
    pub arch: Vec<String>,
    pub distro: Vec<String>,
    /// "queued", "running", "done", "cancelled".
    pub state: String,
    pub attempt: u32,
    pub agent: String,
    /// Why a queued suite is not running yet.
    pub waiting_for: String,
    pub versions: VersionChain,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// An attempt lost to the infrastructure (its agent went away): recorded, not counted as a test failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LostAttempt {
    pub attempt: u32,
    pub agent: String,
    pub message: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunTestRow {
    pub test: String,
    pub name: String,
    pub suite: u64,
    pub position: u32,
    pub status: TestStatus,
    pub attempt: u32,
    pub agent: String,
    pub started_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub message: String,
    pub reasons: Vec<String>,
    pub output_tail: String,
    pub subresults: Vec<SubResult>,
    pub lost_attempts: Vec<LostAttempt>,
    /// A failure's cluster, and its label when it is a known issue.
    pub cluster: Option<crate::analysis::ClusterRef>,
    /// Quarantined: a failure that does not fail the run.
    pub quarantined: bool,
    /// Slower than its history: the p95 (ms) it exceeded by the slow factor.
    pub slow_p95_ms: Option<u64>,
}

impl RunTestRow {
    /// The label of the cluster this failure joined, when that cluster is a known issue.
    pub fn known_issue(&self) -> Option<&crate::analysis::FailureLabel> {
        self.cluster.as_ref()?.label.as_ref()
    }

    /// Its message, after what analysis knows: "known issue RHBZ#2101, product bug — exit code 1",
    /// "quarantined — exit code 1".
    pub fn message_with_analysis(&self) -> String {
        let mut parts = Vec::new();
        if self.quarantined {
            parts.push("quarantined".to_string());
        }
        if let Some(label) = self.known_issue() {
            parts.push(label.describe());
        }
        if !self.message.is_empty() {
            parts.push(self.message.clone());
        }
        parts.join(" — ")
    }
}

/// `polarizer runs show`: everything about one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunRow,
    pub artifacts: Vec<String>,
    pub changed: Vec<String>,
    pub message: String,
    pub suites: Vec<SuiteRow>,
    pub tests: Vec<RunTestRow>,
    /// Its failures were all known system issues: the infrastructure's trouble, not the tests'.
    pub infrastructure_trouble: bool,
}

/// What `polarizer runs watch` receives as a run progresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunUpdate {
    TestStarted {
        run: u64,
        test: String,
        agent: String,
        attempt: u32,
    },
    TestFinished {
        run: u64,
        row: Box<RunTestRow>,
    },
    Output {
        run: u64,
        test: String,
        stream: OutputStream,
        line: String,
    },
    /// A suite went back to the queue because its agent was lost.
    Requeued {
        run: u64,
        suite: u64,
        attempt: u32,
        agent: String,
    },
    RunFinished {
        run: u64,
        state: RunState,
    },
    /// The agent of a lost attempt came back (a network cut, the same process) before anyone else began
    /// the suite: the attempt is its again, and what it ran meanwhile counts.
    Reinstated {
        run: u64,
        suite: u64,
        attempt: u32,
        agent: String,
    },
}

impl RunUpdate {
    pub fn run(&self) -> u64 {
        match self {
            RunUpdate::TestStarted { run, .. }
            | RunUpdate::TestFinished { run, .. }
            | RunUpdate::Output { run, .. }
            | RunUpdate::Requeued { run, .. }
            | RunUpdate::RunFinished { run, .. }
            | RunUpdate::Reinstated { run, .. } => *run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_result_keys_make_statuses() {
        assert_eq!(test_status(Exit::Code(0), ""), TestStatus::Pass);
        assert_eq!(test_status(Exit::Code(1), "respect"), TestStatus::Fail);
        assert_eq!(test_status(Exit::Code(2), ""), TestStatus::Error);
        assert_eq!(test_status(Exit::Signal(9), ""), TestStatus::Error);
        assert_eq!(test_status(Exit::TimedOut, ""), TestStatus::Timeout);
        assert_eq!(test_status(Exit::Code(0), "xfail"), TestStatus::Fail);
        assert_eq!(test_status(Exit::Code(1), "xfail"), TestStatus::Pass);
        assert_eq!(test_status(Exit::Code(1), "pass"), TestStatus::Pass);
        assert_eq!(test_status(Exit::Code(1), "info"), TestStatus::Info);
        assert_eq!(test_status(Exit::TimedOut, "pass"), TestStatus::Timeout);
        assert_eq!(test_status(Exit::Code(127), "info"), TestStatus::Error);
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in TestStatus::FINAL {
            assert_eq!(TestStatus::parse(status.as_str()), Some(status));
            assert!(status.is_final());
        }
        assert!(!TestStatus::Running.is_final());
    }
}
