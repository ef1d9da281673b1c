//! The agent's suite runner: checks an assignment's commit out into a git worktree, runs its hooks and tests as
//! process groups with timeouts, and turns everything they do into records for the spool.
//!
//! Contract: every test of an assignment ends in exactly one `TestFinished` unless the checkout fails (then the
//! suite ends with `SuiteFinished { error }` alone, an infrastructure failure the coordinator retries
//! elsewhere) or the agent is stopping (`Stopping`): then the tests it did not start have none, and the
//! suite ends with `SuiteFinished { error }`, which sends them to another agent. Cleanup hooks always run and
//! are never cancelled; only their own timeout stops them.
//!
//! One module per job, each told apart by what it may import from its siblings:
//! - here: the runner's vocabulary (`Emit`, `RunnerConfig`) and the millisecond clock (`unix_ms`, `duration_ms`);
//!   every module may use these.
//! - `suite`: the suite flow (`run_suite`): checkout, hooks, tests, reports, in record order. It uses all the
//!   others; none uses it.
//! - `process`: one `sh -c` command in its own process group, with a timeout, cancellation and a kill of
//!   whatever is left; how it ended, in words. Uses `output`.
//! - `output`: a process's output as line records, capped per line and per test, with its tail.
//! - `checkout`: the suite's tree: a worktree from the per-repository git cache (or a tar without git).
//!   Uses `cache` and `shipping`.
//! - `cache`: the cache of tests on disk, its locks and its eviction (least recently used first).
//! - `shipping`: receiving the tests the coordinator ships, chunk by checked chunk, resumable.
//! - `junit`: a test's JUnit report as subresults.
//! - `versions`: the installed package versions of the suite's version chain.
//!
//! `output`, `cache`, `shipping`, `junit` and `versions` use no sibling. Tests that need a real suite share `fixture`.

mod cache;
mod checkout;
#[cfg(test)]
mod fixture;
mod junit;
mod output;
mod process;
mod shipping;
mod suite;
mod versions;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polarizer_shared::run::RecordBody;
use tokio_util::sync::CancellationToken;

pub use shipping::Courier;
pub use suite::run_suite;

/// Appends a record to the agent's spool; cheap, never blocks.
pub type Emit = Arc<dyn Fn(RecordBody) + Send + Sync>;

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Suite worktrees live here, one directory per suite attempt, e.g. `<state_dir>/work`.
    pub work_root: PathBuf,
    /// One git repository per test repository, reused across suites, e.g. `<state_dir>/repos`.
    pub repo_cache: PathBuf,
    pub agent_version: String,
    /// Longer lines are emitted in pieces of this many bytes.
    pub output_line_bytes: usize,
    /// Output beyond this is counted and dropped (the process keeps running and is drained).
    pub output_bytes_per_test: u64,
    /// The last bytes of a test's output kept as its `output_tail`.
    pub tail_bytes: usize,
    /// Between SIGTERM and SIGKILL to a process group that timed out or was cancelled.
    pub kill_grace: Duration,
    /// The agent's custom-event socket, given to tests as POLARIZER_EMIT_SOCKET (for `polarizer-agent emit`).
    pub emit_socket: Option<PathBuf>,
    /// The link to the coordinator tests are shipped over; `None` (the runner's own tests) fetches them
    /// from the repository itself.
    pub courier: Option<Courier>,
    /// With a courier: try the repository itself first when it is a URL (`fetch_tests_directly`).
    pub fetch_tests_directly: bool,
    /// The cache of tests (`repo_cache`) is kept under this many bytes.
    pub test_cache_max_bytes: u64,
    /// Whether this host has `git`; without it, trees come as tars.
    pub git_available: bool,
}

impl RunnerConfig {
    pub fn new(state_dir: &Path) -> RunnerConfig {
        RunnerConfig {
            work_root: state_dir.join("work"),
            repo_cache: state_dir.join("repos"),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            output_line_bytes: 8 * 1024,
            output_bytes_per_test: 4 * 1024 * 1024,
            tail_bytes: 16 * 1024,
            kill_grace: Duration::from_secs(2),
            emit_socket: None,
            courier: None,
            fetch_tests_directly: false,
            test_cache_max_bytes: 4096 << 20,
            git_available: git_available(),
        }
    }
}

/// The agent's stop as its suites see it. `drain` is cancelled by the first SIGTERM: no suite and no test
/// starts after it, and the tests of a suite that were not started go back to the coordinator's queue.
/// `expired` is cancelled `drain_timeout` later: the test (or setup hook) still running is stopped and
/// recorded as an error. Cleanups run in every case.
#[derive(Clone, Debug)]
pub struct Stopping {
    pub drain: CancellationToken,
    pub expired: CancellationToken,
    pub drain_timeout: Duration,
}

impl Stopping {
    pub fn new(drain_timeout: Duration) -> Stopping {
        Stopping {
            drain: CancellationToken::new(),
            expired: CancellationToken::new(),
            drain_timeout,
        }
    }

    /// Cancels `expired` once `drain_timeout` has passed since `drain`; spawn it once.
    pub async fn expire_after_drain(self) {
        self.drain.cancelled().await;
        tokio::time::sleep(self.drain_timeout).await;
        self.expired.cancel();
    }
}

/// Whether `git` runs here.
fn git_available() -> bool {
    std::process::Command::new("git")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
