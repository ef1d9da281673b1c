//! The agent's suite runner: checks an assignment's commit out into a git worktree, runs its hooks and tests as
//! process groups with timeouts, and turns everything they do into records for the spool.
//!
//! Contract: every test of an assignment ends in exactly one `TestFinished` unless the checkout fails (then the
//! suite ends with `SuiteFinished { error }` alone, an infrastructure failure the coordinator retries
//! elsewhere). Cleanup hooks always run and are never cancelled; only their own timeout stops them.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polarizer_shared::junit::{self, CaseStatus};
use polarizer_shared::run::{
    test_status, AssignedTest, Assignment, Exit, OutputStream, RecordBody, SubResult, SuiteRef,
    TestOutcome, TestStatus, VersionChain,
};
use polarizer_transport::state_files::secret_digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Appends a record to the agent's spool; cheap, never blocks.
pub type Emit = Arc<dyn Fn(RecordBody) + Send + Sync>;

/// A test whose `duration` is 0 gets this long.
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longer durations are clamped so that deadlines never overflow the clock.
const MAX_TEST_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const HOOK_TIMEOUT: Duration = Duration::from_secs(600);
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
const PACKAGE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to keep reading once the process group was killed: only a process that left the group (setsid)
/// can still hold the pipes open then, and it must not hold the suite up.
const PIPE_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
const JUNIT_MAX_BYTES: u64 = 64 * 1024 * 1024;
const READ_CHUNK_BYTES: usize = 64 * 1024;
const NOT_INSTALLED: &str = "not installed";
const TRUNCATION_NOTE: &str = "output truncated: further output is counted, not kept";

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
        }
    }
}

/// Runs one suite attempt to the end, emitting its records in order. Never fails: every problem becomes a
/// record. `cancel` stops the running test and skips the remaining ones; cleanups still run.
pub async fn run_suite(
    assignment: Assignment,
    config: &RunnerConfig,
    emit: Emit,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!(
        "suite",
        run = assignment.suite.run,
        suite = assignment.suite.suite,
        attempt = assignment.suite.attempt
    );
    let runner = SuiteRunner {
        assignment,
        config,
        emit,
        cancel,
    };
    runner.run().instrument(span).await
}

struct SuiteRunner<'a> {
    assignment: Assignment,
    config: &'a RunnerConfig,
    emit: Emit,
    cancel: CancellationToken,
}

/// Why a suite's tests cannot start.
enum SuiteBlocked {
    SetupFailed(String),
    Cancelled,
}

impl SuiteRunner<'_> {
    async fn run(&self) {
        let suite = self.assignment.suite;
        let versions = VersionChain {
            commit: self.assignment.commit.clone(),
            agent_version: self.config.agent_version.clone(),
            packages: package_versions(&self.assignment.packages).await,
        };
        self.emit(RecordBody::SuiteStarted { suite, versions });

        // Tests see POLARIZER_TREE as an absolute path even when the state directory was given relative.
        let workdir = std::path::absolute(self.workdir()).unwrap_or_else(|_| self.workdir());
        let checkout = tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            checked_out = checkout(&self.assignment, self.config, &workdir) => Some(checked_out),
        };
        match checkout {
            None => {
                info!("cancelled during checkout");
                for test in &self.assignment.tests {
                    self.finish_unstarted(test, TestStatus::Cancelled, "cancelled".into());
                }
                self.emit(RecordBody::SuiteFinished { suite, error: None });
                self.remove_worktree(&workdir).await;
                return;
            }
            Some(Err(git_line)) => {
                let error = format!(
                    "checkout of {} at {} failed: {git_line}",
                    self.assignment.repo, self.assignment.commit
                );
                warn!(error = %error, "checkout failed");
                self.emit_agent_line("", git_line);
                self.emit(RecordBody::SuiteFinished {
                    suite,
                    error: Some(error),
                });
                return;
            }
            Some(Ok(())) => {}
        }

        let tree_root = workdir.join(self.assignment.tree_path.trim_start_matches('/'));
        self.run_tests(&tree_root).await;
        self.emit(RecordBody::SuiteFinished { suite, error: None });
        self.remove_worktree(&workdir).await;
    }

    fn workdir(&self) -> PathBuf {
        let suite = self.assignment.suite;
        self.config
            .work_root
            .join(format!("{}-{}-{}", suite.run, suite.suite, suite.attempt))
    }

    /// Suite setup, the tests, suite cleanup.
    async fn run_tests(&self, tree_root: &Path) {
        let suite_environment = self.suite_environment(tree_root);
        let mut blocked = None;
        for command in &self.assignment.suite_setup {
            let hook = self
                .run_hook(
                    command,
                    tree_root,
                    &suite_environment,
                    "",
                    Some(&self.cancel),
                )
                .await;
            if hook.cancelled {
                blocked = Some(SuiteBlocked::Cancelled);
                break;
            }
            if !hook.succeeded() {
                let message = format!("suite setup `{command}` failed: {}", hook.describe());
                warn!(message = %message, "suite setup failed");
                blocked = Some(SuiteBlocked::SetupFailed(message));
                break;
            }
        }

        let tests = self.assignment.tests.iter();
        match blocked {
            Some(SuiteBlocked::SetupFailed(message)) => {
                for test in tests {
                    self.finish_unstarted(test, TestStatus::Error, message.clone());
                }
            }
            Some(SuiteBlocked::Cancelled) => {
                for test in tests {
                    self.finish_unstarted(test, TestStatus::Cancelled, "cancelled".into());
                }
            }
            None => {
                for test in tests {
                    if self.cancel.is_cancelled() {
                        self.finish_unstarted(test, TestStatus::Cancelled, "cancelled".into());
                        continue;
                    }
                    let outcome = self.run_test(test, tree_root).await;
                    self.emit(RecordBody::TestFinished(Box::new(outcome)));
                }
            }
        }

        for command in &self.assignment.suite_cleanup {
            let hook = self
                .run_hook(command, tree_root, &suite_environment, "", None)
                .await;
            if !hook.succeeded() {
                let message = format!("suite cleanup `{command}` failed: {}", hook.describe());
                warn!(message = %message, "suite cleanup failed");
                self.emit_agent_line("", message);
            }
        }
    }

    /// One test: its setup hooks, its command, its JUnit report, its cleanup hooks.
    async fn run_test(&self, test: &AssignedTest, tree_root: &Path) -> TestOutcome {
        let suite = self.assignment.suite;
        self.emit(RecordBody::TestStarted {
            suite,
            test: test.id.clone(),
        });
        let mut outcome = TestOutcome {
            suite,
            test: test.id.clone(),
            status: TestStatus::Error,
            exit: Exit::NotStarted,
            started_ms: unix_ms(),
            duration_ms: 0,
            message: String::new(),
            output_tail: String::new(),
            subresults: Vec::new(),
        };
        // The outcome's message: the main reason first, then notes (truncation, junit, cleanup failures).
        let mut messages: Vec<String> = Vec::new();
        let environment = self.test_environment(test, tree_root);
        let test_dir = tree_root.join(test.path.trim_start_matches('/'));
        let test_dir_exists = tokio::fs::metadata(&test_dir)
            .await
            .is_ok_and(|metadata| metadata.is_dir());
        // Hooks run where the test runs; without that directory, at the tree root.
        let hook_dir = if test_dir_exists {
            &test_dir
        } else {
            tree_root
        };

        if !test_dir_exists {
            messages.push(format!("working directory {} does not exist", test.path));
        } else if let Some((status, message)) = self.run_setup(test, &test_dir, &environment).await
        {
            outcome.status = status;
            messages.push(message);
        } else {
            let timeout = match test.duration_seconds {
                0 => DEFAULT_TEST_TIMEOUT,
                seconds => Duration::from_secs(seconds).min(MAX_TEST_TIMEOUT),
            };
            let process = self
                .run_process(ProcessRequest {
                    command: &test.test,
                    working_dir: &test_dir,
                    environment: &environment,
                    timeout,
                    test: &test.id,
                    hook: false,
                    cancel: Some(&self.cancel),
                })
                .await;
            outcome.exit = process.exit;
            outcome.started_ms = process.started_ms;
            outcome.duration_ms = duration_ms(process.duration);
            outcome.output_tail = process.tail.clone();
            if process.cancelled {
                outcome.status = TestStatus::Cancelled;
                messages.push("cancelled".into());
            } else if process.spawn_error.is_some() {
                outcome.status = TestStatus::Error;
                messages.push(process.describe());
            } else {
                outcome.status = test_status(process.exit, &test.result);
                let exit_message = exit_message(outcome.status, &process, &test.result);
                if !exit_message.is_empty() {
                    messages.push(exit_message);
                }
                if !test.junit.is_empty() {
                    self.apply_junit(test, &test_dir, &mut outcome, &mut messages)
                        .await;
                }
            }
            if process.dropped_bytes > 0 {
                messages.push(format!(
                    "output truncated: {} bytes dropped",
                    process.dropped_bytes
                ));
            }
        }

        for command in &test.cleanup {
            let hook = self
                .run_hook(command, hook_dir, &environment, &test.id, None)
                .await;
            if !hook.succeeded() {
                messages.push(format!("cleanup `{command}` failed: {}", hook.describe()));
            }
        }
        outcome.message = messages.join("; ");
        info!(test = %test.id, status = %outcome.status, message = %outcome.message, "test finished");
        outcome
    }

    /// Runs a test's setup hooks; `Some((status, message))` when one failed or was cancelled.
    async fn run_setup(
        &self,
        test: &AssignedTest,
        test_dir: &Path,
        environment: &[(String, String)],
    ) -> Option<(TestStatus, String)> {
        for command in &test.setup {
            let hook = self
                .run_hook(command, test_dir, environment, &test.id, Some(&self.cancel))
                .await;
            if hook.cancelled {
                return Some((TestStatus::Cancelled, "cancelled".into()));
            }
            if !hook.succeeded() {
                let message = format!("setup `{command}` failed: {}", hook.describe());
                return Some((TestStatus::Error, message));
            }
        }
        None
    }

    /// Reads the test's JUnit report into subresults; a missing or broken report makes the test an error.
    async fn apply_junit(
        &self,
        test: &AssignedTest,
        test_dir: &Path,
        outcome: &mut TestOutcome,
        messages: &mut Vec<String>,
    ) {
        let report_name = &test.junit;
        let report_path = test_dir.join(report_name.trim_start_matches('/'));
        // A test that already errored or timed out keeps that status; the report problem is only noted.
        let already_broken = matches!(outcome.status, TestStatus::Error | TestStatus::Timeout);
        let mut report_problem = |outcome: &mut TestOutcome, problem: String| {
            if already_broken {
                messages.push(problem);
            } else {
                outcome.status = TestStatus::Error;
                messages.insert(0, problem);
            }
        };
        let bytes = match read_capped(&report_path, JUNIT_MAX_BYTES).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let problem = format!("junit report {report_name} is larger than 64 MiB");
                return report_problem(outcome, problem);
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let problem = format!("junit report {report_name} was not written");
                return report_problem(outcome, problem);
            }
            Err(error) => {
                let problem = format!("junit report {report_name} cannot be read: {error}");
                return report_problem(outcome, problem);
            }
        };
        // Parsing up to 64 MiB is CPU work: keep it off the async workers.
        let parsed = tokio::task::spawn_blocking(move || junit_subresults(&bytes)).await;
        let subresults = match parsed {
            Ok(Ok(subresults)) => subresults,
            Ok(Err(error)) => {
                return report_problem(outcome, format!("junit report {report_name}: {error}"))
            }
            Err(join_error) => {
                let problem =
                    format!("junit report {report_name}: the parser failed: {join_error}");
                return report_problem(outcome, problem);
            }
        };
        let failed = subresults
            .iter()
            .filter(|sub| matches!(sub.status, TestStatus::Fail | TestStatus::Error))
            .count();
        if failed > 0 && outcome.status == TestStatus::Pass {
            outcome.status = TestStatus::Fail;
            messages.insert(
                0,
                format!("{failed} of {} JUnit cases failed", subresults.len()),
            );
        }
        outcome.subresults = subresults;
    }

    /// A hook (setup, cleanup, suite setup, suite cleanup): output goes to the agent stream.
    async fn run_hook(
        &self,
        command: &str,
        working_dir: &Path,
        environment: &[(String, String)],
        test: &str,
        cancel: Option<&CancellationToken>,
    ) -> ProcessOutcome {
        self.run_process(ProcessRequest {
            command,
            working_dir,
            environment,
            timeout: HOOK_TIMEOUT,
            test,
            hook: true,
            cancel,
        })
        .await
    }

    /// Runs `sh -c command` in its own process group and streams its output until it exits, times out or
    /// is cancelled; then kills whatever is left of the group.
    async fn run_process(&self, request: ProcessRequest<'_>) -> ProcessOutcome {
        let clock = Instant::now();
        let mut outcome = ProcessOutcome {
            exit: Exit::NotStarted,
            cancelled: false,
            timeout: request.timeout,
            spawn_error: None,
            started_ms: unix_ms(),
            duration: Duration::ZERO,
            dropped_bytes: 0,
            tail: String::new(),
        };
        let never_cancelled = CancellationToken::new();
        let cancel = request.cancel.unwrap_or(&never_cancelled);
        if cancel.is_cancelled() {
            outcome.cancelled = true;
            return outcome;
        }

        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(request.command)
            .current_dir(request.working_dir)
            .envs(
                request
                    .environment
                    .iter()
                    .map(|(name, value)| (name, value)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let message = format!(
                    "cannot start `{}` in {}: {error}",
                    request.command,
                    request.working_dir.display()
                );
                self.emit_agent_line(request.test, message);
                outcome.spawn_error = Some(error.to_string());
                return outcome;
            }
        };
        let mut group = ProcessGroup::new(child.id());
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let mut collector = OutputCollector::new(
            self.emit.clone(),
            self.assignment.suite,
            request.test,
            request.hook,
            self.config,
        );
        let mut stdout_buffer = vec![0u8; READ_CHUNK_BYTES];
        let mut stderr_buffer = vec![0u8; READ_CHUNK_BYTES];
        let deadline = clock + request.timeout;
        let mut stop: Option<Stop> = None;
        let mut sigkill_at: Option<Instant> = None;
        let mut exit_status: Option<io::Result<ExitStatus>> = None;
        let mut drain_until: Option<Instant> = None;

        loop {
            if exit_status.is_some() && stdout.is_none() && stderr.is_none() {
                break;
            }
            tokio::select! {
                read = read_pipe(&mut stdout, &mut stdout_buffer), if stdout.is_some() => match read {
                    Ok(0) | Err(_) => {
                        collector.finish_pipe(Pipe::Stdout);
                        stdout = None;
                    }
                    Ok(count) => collector.accept(Pipe::Stdout, &stdout_buffer[..count]),
                },
                read = read_pipe(&mut stderr, &mut stderr_buffer), if stderr.is_some() => match read {
                    Ok(0) | Err(_) => {
                        collector.finish_pipe(Pipe::Stderr);
                        stderr = None;
                    }
                    Ok(count) => collector.accept(Pipe::Stderr, &stderr_buffer[..count]),
                },
                exited = child.wait(), if exit_status.is_none() => {
                    outcome.duration = clock.elapsed();
                    // Background leftovers of the group must not keep the pipes open (or keep running).
                    group.kill_after_exit();
                    exit_status = Some(exited);
                    drain_until = Some(Instant::now() + PIPE_DRAIN_AFTER_EXIT);
                }
                () = tokio::time::sleep_until(deadline), if stop.is_none() && exit_status.is_none() => {
                    group.signal(libc::SIGTERM);
                    stop = Some(Stop::TimedOut);
                    sigkill_at = Some(Instant::now() + self.config.kill_grace);
                }
                () = cancel.cancelled(), if stop.is_none() && exit_status.is_none() => {
                    group.signal(libc::SIGTERM);
                    stop = Some(Stop::Cancelled);
                    sigkill_at = Some(Instant::now() + self.config.kill_grace);
                }
                () = tokio::time::sleep_until(sigkill_at.unwrap_or(deadline)),
                    if sigkill_at.is_some() && exit_status.is_none() => {
                    group.signal(libc::SIGKILL);
                    sigkill_at = None;
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => {
                    warn!(command = %request.command, "a process outside the group keeps the output open; not waiting for it");
                    break;
                }
            }
        }
        collector.finish_pipe(Pipe::Stdout);
        collector.finish_pipe(Pipe::Stderr);

        if outcome.duration.is_zero() {
            outcome.duration = clock.elapsed();
        }
        outcome.exit = match (stop, exit_status) {
            (Some(Stop::TimedOut), _) => Exit::TimedOut,
            (_, Some(Ok(status))) => exit_from_status(status),
            (_, Some(Err(error))) => {
                warn!(command = %request.command, error = %error, "cannot wait for a process");
                Exit::NotStarted
            }
            (_, None) => Exit::NotStarted,
        };
        outcome.cancelled = stop == Some(Stop::Cancelled);
        outcome.dropped_bytes = collector.dropped_bytes;
        outcome.tail = collector.tail();
        outcome
    }

    /// POLARIZER_* variables every hook and test sees.
    fn suite_environment(&self, tree_root: &Path) -> Vec<(String, String)> {
        let suite = self.assignment.suite;
        let mut environment: Vec<(String, String)> = self
            .config
            .emit_socket
            .iter()
            .map(|socket| {
                (
                    "POLARIZER_EMIT_SOCKET".to_string(),
                    socket.to_string_lossy().into_owned(),
                )
            })
            .collect();
        environment.extend([
            ("POLARIZER_RUN".into(), suite.run.to_string()),
            ("POLARIZER_SUITE".into(), suite.suite.to_string()),
            ("POLARIZER_ATTEMPT".into(), suite.attempt.to_string()),
            (
                "POLARIZER_TREE".into(),
                tree_root.to_string_lossy().into_owned(),
            ),
        ]);
        environment
    }

    /// The test's own variables, then the POLARIZER_* ones (which win on a clash).
    fn test_environment(&self, test: &AssignedTest, tree_root: &Path) -> Vec<(String, String)> {
        let mut environment = test.environment.clone();
        environment.extend(self.suite_environment(tree_root));
        environment.push(("POLARIZER_TEST".into(), test.id.clone()));
        environment.push(("POLARIZER_TEST_NAME".into(), test.name.clone()));
        environment
    }

    fn finish_unstarted(&self, test: &AssignedTest, status: TestStatus, message: String) {
        self.emit(RecordBody::TestFinished(Box::new(TestOutcome {
            suite: self.assignment.suite,
            test: test.id.clone(),
            status,
            exit: Exit::NotStarted,
            started_ms: unix_ms(),
            duration_ms: 0,
            message,
            output_tail: String::new(),
            subresults: Vec::new(),
        })));
    }

    async fn remove_worktree(&self, workdir: &Path) {
        let cache = cache_dir(self.config, &self.assignment.repo);
        let lock = cache_lock(&cache);
        let _guard = lock.lock().await;
        let removed = run_git(
            &cache,
            [
                OsStr::new("worktree"),
                OsStr::new("remove"),
                OsStr::new("--force"),
                OsStr::new("--force"),
                workdir.as_os_str(),
            ],
        )
        .await;
        if removed.is_ok() {
            return;
        }
        // Not a registered worktree (any more), or git refused: remove the directory and forget it.
        match tokio::fs::remove_dir_all(workdir).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                warn!(dir = %workdir.display(), error = %error, "cannot remove a suite worktree")
            }
        }
        let _ = run_git(&cache, ["worktree", "prune"]).await;
    }

    fn emit(&self, record: RecordBody) {
        (self.emit)(record);
    }

    fn emit_agent_line(&self, test: &str, line: String) {
        self.emit(RecordBody::Output {
            suite: self.assignment.suite,
            test: test.to_string(),
            stream: OutputStream::Agent,
            line,
        });
    }
}

struct ProcessRequest<'a> {
    command: &'a str,
    working_dir: &'a Path,
    environment: &'a [(String, String)],
    timeout: Duration,
    /// The test the output belongs to ("" for suite hooks).
    test: &'a str,
    /// A hook's output all goes to the agent stream; a test keeps stdout and stderr apart.
    hook: bool,
    /// `None` for cleanups, which always run to the end.
    cancel: Option<&'a CancellationToken>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Cancelled,
}

struct ProcessOutcome {
    exit: Exit,
    cancelled: bool,
    timeout: Duration,
    spawn_error: Option<String>,
    started_ms: i64,
    duration: Duration,
    dropped_bytes: u64,
    tail: String,
}

impl ProcessOutcome {
    fn succeeded(&self) -> bool {
        self.exit == Exit::Code(0) && !self.cancelled
    }

    /// How the process ended, in a few words: "exit code 2", "killed by signal 9", "timed out after 5 s".
    fn describe(&self) -> String {
        if let Some(error) = &self.spawn_error {
            return format!("cannot start: {error}");
        }
        if self.cancelled {
            return "cancelled".into();
        }
        match self.exit {
            Exit::Code(127) => "command not found (exit code 127)".into(),
            Exit::Code(code) => format!("exit code {code}"),
            Exit::Signal(signal) => format!("killed by signal {signal}"),
            Exit::TimedOut => format!("timed out after {} s", self.timeout.as_secs()),
            Exit::NotStarted => "not started".into(),
        }
    }
}

/// The message for a test's status: empty for a pass; names the `result` key when it changed the status.
fn exit_message(status: TestStatus, process: &ProcessOutcome, result_key: &str) -> String {
    if status == TestStatus::Pass {
        return String::new();
    }
    let described = process.describe();
    if status == test_status(process.exit, "") {
        described
    } else {
        format!("{described} (result: {result_key})")
    }
}

fn exit_from_status(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::NotStarted,
    }
}

/// The process group of a spawned child (its leader's pid, thanks to `process_group(0)`). Killed on drop
/// unless the leader was reaped and the group killed already, so that a dropped runner leaves nothing behind.
struct ProcessGroup {
    pgid: Option<libc::pid_t>,
}

impl ProcessGroup {
    fn new(child_pid: Option<u32>) -> ProcessGroup {
        // Never 0 or 1: kill(0) and kill(-1) would hit the agent's own group or every process.
        let pgid = child_pid
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
            .filter(|pid| *pid > 1);
        ProcessGroup { pgid }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) has no memory effects; a negative pid addresses the group. ESRCH (the group
            // is gone already) is the expected failure and needs no handling.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    /// Kills what is left after the leader exited, once; afterwards the pgid may be reused.
    fn kill_after_exit(&mut self) {
        self.signal(libc::SIGKILL);
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

async fn read_pipe<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buffer: &mut [u8],
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buffer).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy, Debug)]
enum Pipe {
    Stdout = 0,
    Stderr = 1,
}

/// Turns raw output chunks into line records: lines are capped at `output_line_bytes`, the total at
/// `output_bytes_per_test` (the rest is counted), and the last `tail_bytes` are kept. Memory is bounded by
/// those limits whatever the process writes.
struct OutputCollector {
    emit: Emit,
    suite: SuiteRef,
    test: String,
    hook: bool,
    line_limit: usize,
    budget_remaining: u64,
    truncated: bool,
    dropped_bytes: u64,
    /// The unfinished line of each pipe, never longer than `line_limit`.
    pending: [Vec<u8>; 2],
    tail: VecDeque<u8>,
    tail_limit: usize,
}

impl OutputCollector {
    fn new(
        emit: Emit,
        suite: SuiteRef,
        test: &str,
        hook: bool,
        config: &RunnerConfig,
    ) -> OutputCollector {
        OutputCollector {
            emit,
            suite,
            test: test.to_string(),
            hook,
            line_limit: config.output_line_bytes.max(1),
            budget_remaining: config.output_bytes_per_test,
            truncated: false,
            dropped_bytes: 0,
            pending: [Vec::new(), Vec::new()],
            tail: VecDeque::new(),
            tail_limit: config.tail_bytes,
        }
    }

    fn accept(&mut self, pipe: Pipe, chunk: &[u8]) {
        self.remember_tail(chunk);
        let kept_length = usize::try_from(self.budget_remaining)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        let (kept, dropped) = chunk.split_at(kept_length);
        self.budget_remaining -= kept_length as u64;
        self.split_lines(pipe, kept);
        if dropped.is_empty() {
            return;
        }
        self.dropped_bytes += dropped.len() as u64;
        if !self.truncated {
            self.truncated = true;
            self.finish_pipe(Pipe::Stdout);
            self.finish_pipe(Pipe::Stderr);
            self.emit_line(OutputStream::Agent, TRUNCATION_NOTE.to_string());
        }
    }

    fn split_lines(&mut self, pipe: Pipe, mut rest: &[u8]) {
        let index = pipe as usize;
        while !rest.is_empty() {
            if self.pending[index].len() >= self.line_limit {
                // A full piece: it is the whole line if a newline follows right away.
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                }
                self.emit_pending(pipe);
                continue;
            }
            let room = self.line_limit - self.pending[index].len();
            let window = &rest[..room.min(rest.len())];
            match window.iter().position(|byte| *byte == b'\n') {
                Some(newline) => {
                    self.pending[index].extend_from_slice(&rest[..newline]);
                    self.emit_pending(pipe);
                    rest = &rest[newline + 1..];
                }
                None => {
                    self.pending[index].extend_from_slice(window);
                    rest = &rest[window.len()..];
                }
            }
        }
    }

    /// Emits the unfinished line of a pipe that ended (or before the truncation note).
    fn finish_pipe(&mut self, pipe: Pipe) {
        if !self.pending[pipe as usize].is_empty() {
            self.emit_pending(pipe);
        }
    }

    fn emit_pending(&mut self, pipe: Pipe) {
        let line = String::from_utf8_lossy(&self.pending[pipe as usize]).into_owned();
        self.pending[pipe as usize].clear();
        let stream = match (self.hook, pipe) {
            (true, _) => OutputStream::Agent,
            (false, Pipe::Stdout) => OutputStream::Stdout,
            (false, Pipe::Stderr) => OutputStream::Stderr,
        };
        self.emit_line(stream, line);
    }

    fn emit_line(&self, stream: OutputStream, line: String) {
        (self.emit)(RecordBody::Output {
            suite: self.suite,
            test: self.test.clone(),
            stream,
            line,
        });
    }

    fn remember_tail(&mut self, chunk: &[u8]) {
        if self.tail_limit == 0 {
            return;
        }
        let chunk = &chunk[chunk.len().saturating_sub(self.tail_limit)..];
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(self.tail_limit);
        self.tail.drain(..overflow);
        self.tail.extend(chunk);
    }

    fn tail(&mut self) -> String {
        String::from_utf8_lossy(self.tail.make_contiguous()).into_owned()
    }
}

/// Reads at most `limit` bytes of a file; `None` when it is longer.
async fn read_capped(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some(bytes))
}

fn junit_subresults(xml: &[u8]) -> Result<Vec<SubResult>, junit::ParseError> {
    let report = junit::parse(xml)?;
    let subresults = report
        .cases()
        .map(|(_suite, case)| SubResult {
            name: case.name.clone(),
            classname: case.classname.clone(),
            status: match case.status {
                CaseStatus::Passed => TestStatus::Pass,
                CaseStatus::Failed => TestStatus::Fail,
                CaseStatus::Error => TestStatus::Error,
                CaseStatus::Skipped => TestStatus::Skipped,
            },
            // The parser only keeps finite, non-negative times; `as` saturates anyway.
            duration_ms: case
                .time_seconds
                .map_or(0, |seconds| (seconds * 1000.0).round() as u64),
            message: case.message.clone(),
        })
        .collect();
    Ok(subresults)
}

/// The repository cache of one test repository: `repo_cache/<16 hex of sha256(repo)>`.
fn cache_dir(config: &RunnerConfig, repo: &str) -> PathBuf {
    let digest = secret_digest(repo);
    config.repo_cache.join(digest.get(..16).unwrap_or(&digest))
}

/// Serialises git operations on one cache within this process: concurrent fetches and worktree changes in
/// the same repository race on its lock files.
fn cache_lock(cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(cache.to_path_buf()).or_default().clone()
}

/// Fetches the commit into the repository cache and adds `workdir` as a detached worktree of it. On failure,
/// returns git's last line of complaint.
async fn checkout(
    assignment: &Assignment,
    config: &RunnerConfig,
    workdir: &Path,
) -> Result<(), String> {
    let commit = assignment.commit.as_str();
    let is_object_id =
        (4..=64).contains(&commit.len()) && commit.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !is_object_id {
        return Err(format!("`{commit}` is not a commit id"));
    }
    let cache = cache_dir(config, &assignment.repo);
    let lock = cache_lock(&cache);
    let _guard = lock.lock().await;

    tokio::fs::create_dir_all(&cache)
        .await
        .map_err(|error| format!("cannot create {}: {error}", cache.display()))?;
    if tokio::fs::metadata(cache.join(".git")).await.is_err() {
        run_git(&cache, ["init", "--quiet"]).await?;
    }
    if !has_commit(&cache, commit).await {
        // Servers may refuse a bare commit id as a want; the ref it came from then brings it along.
        if let Err(by_commit) = fetch(&cache, &assignment.repo, commit).await {
            let by_ref = match assignment.git_ref.as_str() {
                "" => Ok(()),
                git_ref => fetch(&cache, &assignment.repo, git_ref).await,
            };
            if !has_commit(&cache, commit).await {
                return Err(by_ref.err().unwrap_or(by_commit));
            }
        }
    }

    tokio::fs::create_dir_all(&config.work_root)
        .await
        .map_err(|error| format!("cannot create {}: {error}", config.work_root.display()))?;
    match tokio::fs::remove_dir_all(workdir).await {
        Ok(()) => info!(dir = %workdir.display(), "removed a leftover suite worktree"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot remove {}: {error}", workdir.display())),
    }
    run_git(&cache, ["worktree", "prune"]).await?;
    run_git(
        &cache,
        [
            OsStr::new("worktree"),
            OsStr::new("add"),
            OsStr::new("--quiet"),
            OsStr::new("--detach"),
            OsStr::new("--force"),
            workdir.as_os_str(),
            OsStr::new(commit),
        ],
    )
    .await
}

async fn fetch(cache: &Path, repo: &str, what: &str) -> Result<(), String> {
    run_git(cache, ["fetch", "--quiet", "--", repo, what]).await
}

async fn has_commit(cache: &Path, commit: &str) -> bool {
    let object = format!("{commit}^{{commit}}");
    run_git(cache, ["cat-file", "-e", object.as_str()])
        .await
        .is_ok()
}

/// Runs `git -C cache args…` without a terminal prompt; `Err` holds git's last stderr line.
async fn run_git<I, S>(cache: &Path, args: I) -> Result<(), String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(cache)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(GIT_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("cannot run git: {error}")),
        Err(_elapsed) => return Err(format!("git timed out after {} s", GIT_TIMEOUT.as_secs())),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last_line = stderr
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_string);
    Err(last_line.unwrap_or_else(|| format!("git failed: {}", output.status)))
}

/// Each package's version as rpm (preferred) or dpkg reports it, or "not installed".
async fn package_versions(packages: &[String]) -> Vec<(String, String)> {
    if packages.is_empty() {
        return Vec::new();
    }
    let rpm = find_on_path("rpm").await;
    let dpkg_query = find_on_path("dpkg-query").await;
    let mut versions = Vec::with_capacity(packages.len());
    for package in packages {
        let mut version = None;
        // A name that looks like an option would be taken for one.
        if !package.starts_with('-') {
            if let Some(rpm) = &rpm {
                let format = "%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}";
                version = query_version(rpm, &["-q", "--qf", format, package]).await;
            }
            if let (None, Some(dpkg_query)) = (&version, &dpkg_query) {
                let format = "${Version} ${Architecture}";
                version = query_version(dpkg_query, &["-W", "-f", format, package]).await;
            }
        }
        versions.push((
            package.clone(),
            version.unwrap_or_else(|| NOT_INSTALLED.to_string()),
        ));
    }
    versions
}

async fn query_version(program: &Path, args: &[&str]) -> Option<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(PACKAGE_QUERY_TIMEOUT, command.output())
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!version.is_empty()).then_some(version)
}

async fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(metadata) = tokio::fs::metadata(&candidate).await {
            if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use std::process::Command as StdCommand;

    use super::*;

    const SUITE: SuiteRef = SuiteRef {
        run: 7,
        suite: 3,
        attempt: 1,
    };

    type Records = Arc<Mutex<Vec<RecordBody>>>;

    /// A real git repository with `tests/sub/data.txt`, and a runner config under the same temp dir.
    struct Fixture {
        dir: tempfile::TempDir,
        repo: PathBuf,
        commit: String,
        config: RunnerConfig,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("tests/sub")).expect("create tree");
        std::fs::write(repo.join("tests/sub/data.txt"), "data\n").expect("write file");
        git_in(&repo, &["init", "--quiet"]);
        git_in(&repo, &["add", "."]);
        git_in(&repo, &["commit", "--quiet", "-m", "tests"]);
        let commit = git_in(&repo, &["rev-parse", "HEAD"]).trim().to_string();
        let mut config = RunnerConfig::new(&dir.path().join("state"));
        config.kill_grace = Duration::from_millis(200);
        Fixture {
            dir,
            repo,
            commit,
            config,
        }
    }

    fn git_in(dir: &Path, args: &[&str]) -> String {
        let output = StdCommand::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=Polarizer Test"])
            .args(["-c", "user.email=test@example.invalid"])
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .expect("run git");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).expect("utf-8")
    }

    impl Fixture {
        fn assignment(&self, tests: Vec<AssignedTest>) -> Assignment {
            Assignment {
                suite: SUITE,
                repo: self.repo.to_string_lossy().into_owned(),
                git_ref: "main".into(),
                commit: self.commit.clone(),
                tree_path: "tests".into(),
                tests,
                packages: Vec::new(),
                suite_setup: Vec::new(),
                suite_cleanup: Vec::new(),
            }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).to_string_lossy().into_owned()
        }

        async fn run(&self, assignment: Assignment) -> Vec<RecordBody> {
            let (emit, records) = recorder();
            run_suite(assignment, &self.config, emit, CancellationToken::new()).await;
            let records = records.lock().expect("records").clone();
            records
        }
    }

    fn test(id: &str, command: &str) -> AssignedTest {
        AssignedTest {
            id: id.into(),
            name: id.trim_start_matches('/').into(),
            test: command.into(),
            path: String::new(),
            environment: Vec::new(),
            duration_seconds: 60,
            result: "respect".into(),
            junit: String::new(),
            setup: Vec::new(),
            cleanup: Vec::new(),
        }
    }

    fn recorder() -> (Emit, Records) {
        let records: Records = Arc::default();
        let sink = records.clone();
        let emit: Emit = Arc::new(move |record| sink.lock().expect("records").push(record));
        (emit, records)
    }

    fn outcome<'a>(records: &'a [RecordBody], id: &str) -> &'a TestOutcome {
        records
            .iter()
            .find_map(|record| match record {
                RecordBody::TestFinished(outcome) if outcome.test == id => Some(&**outcome),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no TestFinished for {id} in {records:#?}"))
    }

    fn output_lines<'a>(records: &'a [RecordBody], id: &str, wanted: OutputStream) -> Vec<&'a str> {
        records
            .iter()
            .filter_map(|record| match record {
                RecordBody::Output {
                    test, stream, line, ..
                } if test == id && *stream == wanted => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The records without output, as short tags: the order the coordinator relies on.
    fn event_tags(records: &[RecordBody]) -> Vec<String> {
        records
            .iter()
            .filter_map(|record| match record {
                RecordBody::SuiteStarted { .. } => Some("suite started".to_string()),
                RecordBody::TestStarted { test, .. } => Some(format!("started {test}")),
                RecordBody::TestFinished(outcome) => Some(format!("finished {}", outcome.test)),
                RecordBody::SuiteFinished { error, .. } => {
                    Some(format!("suite finished {error:?}"))
                }
                RecordBody::Output { .. } | RecordBody::Event { .. } => None,
            })
            .collect()
    }

    async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Gone, or a zombie waiting for its new parent to reap it: either way it no longer runs.
    fn process_is_gone(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|fields| fields.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn statuses_environment_and_record_order() {
        let fixture = fixture();
        let mut env_test = test(
            "/t/env",
            "test \"$POLARIZER_TEST\" = /t/env && test \"$POLARIZER_RUN\" = 7 && test \"$GREETING\" = hi \
             && test -f data.txt && test \"$(cat \"$POLARIZER_TREE/ready\")\" = ready && echo out && echo err >&2",
        );
        env_test.path = "/sub".into();
        env_test.environment = vec![("GREETING".into(), "hi".into())];
        let mut failing = test("/t/fail", "exit 1");
        failing.cleanup = vec![
            format!("touch '{}'", fixture.path("fail-cleaned")),
            "false".into(),
        ];
        let assignment = Assignment {
            packages: vec!["polarizer-no-such-package".into()],
            suite_setup: vec!["echo ready > ready && echo setting up".into()],
            suite_cleanup: vec![format!("touch '{}'", fixture.path("suite-cleaned"))],
            ..fixture.assignment(vec![
                env_test,
                failing,
                test("/t/error", "exit 3"),
                test("/t/missing", "polarizer-no-such-command"),
                xfail(test("/t/xfail", "exit 1")),
            ])
        };
        let records = fixture.run(assignment).await;

        let RecordBody::SuiteStarted { suite, versions } = &records[0] else {
            panic!("first record: {:?}", records[0]);
        };
        assert_eq!(*suite, SUITE);
        assert_eq!(versions.commit, fixture.commit);
        assert_eq!(
            versions.packages,
            vec![("polarizer-no-such-package".into(), "not installed".into())]
        );
        let ids = ["/t/env", "/t/fail", "/t/error", "/t/missing", "/t/xfail"];
        let mut expected = vec!["suite started".to_string()];
        for id in ids {
            expected.push(format!("started {id}"));
            expected.push(format!("finished {id}"));
        }
        expected.push("suite finished None".into());
        assert_eq!(event_tags(&records), expected);

        let summary: Vec<_> = ids
            .iter()
            .map(|id| {
                let outcome = outcome(&records, id);
                (outcome.status, outcome.exit, outcome.message.as_str())
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (TestStatus::Pass, Exit::Code(0), ""),
                (
                    TestStatus::Fail,
                    Exit::Code(1),
                    "exit code 1; cleanup `false` failed: exit code 1"
                ),
                (TestStatus::Error, Exit::Code(3), "exit code 3"),
                (
                    TestStatus::Error,
                    Exit::Code(127),
                    "command not found (exit code 127)"
                ),
                (TestStatus::Pass, Exit::Code(1), ""),
            ]
        );
        assert_eq!(
            output_lines(&records, "/t/env", OutputStream::Stdout),
            ["out"]
        );
        assert_eq!(
            output_lines(&records, "/t/env", OutputStream::Stderr),
            ["err"]
        );
        assert!(outcome(&records, "/t/env").output_tail.contains("out"));
        assert_eq!(
            output_lines(&records, "", OutputStream::Agent),
            ["setting up"]
        );
        assert!(Path::new(&fixture.path("fail-cleaned")).exists());
        assert!(Path::new(&fixture.path("suite-cleaned")).exists());
        let leftovers = std::fs::read_dir(&fixture.config.work_root)
            .expect("work root")
            .count();
        assert_eq!(leftovers, 0, "the suite worktree is removed");
    }

    fn xfail(mut test: AssignedTest) -> AssignedTest {
        test.result = "xfail".into();
        test
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group_and_cleanup_still_runs() {
        let fixture = fixture();
        let pid_file = fixture.path("background.pid");
        let marker = fixture.path("cleaned");
        let mut sleeper = test(
            "/t/sleep",
            &format!("sleep 60 & echo $! > '{pid_file}'; sleep 30"),
        );
        sleeper.duration_seconds = 1;
        sleeper.cleanup = vec![format!("touch '{marker}'")];
        let started = Instant::now();
        let records = fixture.run(fixture.assignment(vec![sleeper])).await;

        assert!(started.elapsed() < Duration::from_secs(20));
        let outcome = outcome(&records, "/t/sleep");
        assert_eq!(outcome.status, TestStatus::Timeout);
        assert_eq!(outcome.exit, Exit::TimedOut);
        assert_eq!(outcome.message, "timed out after 1 s");
        assert!(Path::new(&marker).exists(), "cleanup ran");
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        wait_for(
            "the background sleep to die",
            Duration::from_secs(10),
            || process_is_gone(pid),
        )
        .await;
    }

    #[tokio::test]
    async fn output_is_capped_drained_and_split() {
        let mut fixture = fixture();
        fixture.config.output_bytes_per_test = 1024 * 1024;
        let records = fixture
            .run(fixture.assignment(vec![
                test("/t/garbage", "head -c 20000000 /dev/urandom"),
                test("/t/long", "head -c 10000 /dev/zero | tr '\\0' a"),
            ]))
            .await;

        let garbage = outcome(&records, "/t/garbage");
        assert_eq!(garbage.status, TestStatus::Pass);
        assert!(
            garbage.message.starts_with("output truncated: "),
            "{}",
            garbage.message
        );
        // Lossy decoding turns each byte into at most one character.
        let kept_characters: usize = [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .flat_map(|stream| output_lines(&records, "/t/garbage", stream))
            .map(|line| line.chars().count())
            .sum();
        assert!(kept_characters <= 1024 * 1024, "{kept_characters}");
        assert_eq!(
            output_lines(&records, "/t/garbage", OutputStream::Agent),
            [TRUNCATION_NOTE]
        );
        assert!(garbage.output_tail.chars().count() <= fixture.config.tail_bytes);

        let long = outcome(&records, "/t/long");
        assert_eq!(long.status, TestStatus::Pass);
        assert_eq!(long.message, "");
        let pieces: Vec<usize> = output_lines(&records, "/t/long", OutputStream::Stdout)
            .iter()
            .map(|line| line.len())
            .collect();
        assert_eq!(pieces, [8192, 10000 - 8192]);
        assert_eq!(long.output_tail, "a".repeat(10000));
    }

    #[test]
    fn lines_are_split_on_newlines_and_at_the_line_limit() {
        let (emit, records) = recorder();
        let mut config = RunnerConfig::new(Path::new("/nonexistent"));
        config.output_line_bytes = 4;
        config.output_bytes_per_test = 20;
        config.tail_bytes = 5;
        let mut collector = OutputCollector::new(emit, SUITE, "/t", false, &config);
        collector.accept(Pipe::Stdout, b"ab\ncdef");
        collector.accept(Pipe::Stderr, b"\xff\xfe");
        collector.accept(Pipe::Stdout, b"\nghijk");
        collector.accept(Pipe::Stdout, b"lm\nnopqrstuvwxyz");
        collector.finish_pipe(Pipe::Stdout);
        collector.finish_pipe(Pipe::Stderr);
        let records = records.lock().expect("records").clone();
        let lines: Vec<(OutputStream, &str)> = records
            .iter()
            .filter_map(|record| match record {
                RecordBody::Output { stream, line, .. } => Some((*stream, line.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                (OutputStream::Stdout, "ab"),
                (OutputStream::Stdout, "cdef"),
                (OutputStream::Stdout, "ghij"),
                (OutputStream::Stdout, "klm"),
                (OutputStream::Stdout, "no"),
                (OutputStream::Stderr, "\u{fffd}\u{fffd}"),
                (OutputStream::Agent, TRUNCATION_NOTE),
            ]
        );
        assert_eq!(collector.dropped_bytes, 11);
        assert_eq!(collector.tail(), "vwxyz");
    }

    #[tokio::test]
    async fn junit_reports_become_subresults() {
        let fixture = fixture();
        let report = "<testsuite name=\"s\"><testcase name=\"good\" classname=\"c\" time=\"0.25\"/>\
                      <testcase name=\"bad\" classname=\"c\"><failure message=\"boom\">trace</failure></testcase></testsuite>";
        let mut valid = test("/t/valid", &format!("printf '%s' '{report}' > report.xml"));
        valid.junit = "report.xml".into();
        let mut broken = test("/t/broken", "echo 'not xml' > report.xml");
        broken.junit = "report.xml".into();
        let mut unwritten = test("/t/unwritten", "true");
        unwritten.junit = "unwritten.xml".into();
        let records = fixture
            .run(fixture.assignment(vec![valid, broken, unwritten]))
            .await;

        let valid = outcome(&records, "/t/valid");
        assert_eq!(valid.status, TestStatus::Fail);
        assert_eq!(valid.message, "1 of 2 JUnit cases failed");
        let subresults: Vec<_> = valid
            .subresults
            .iter()
            .map(|sub| {
                (
                    sub.name.as_str(),
                    sub.status,
                    sub.duration_ms,
                    sub.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            subresults,
            [
                ("good", TestStatus::Pass, 250, ""),
                ("bad", TestStatus::Fail, 0, "boom")
            ]
        );
        let broken = outcome(&records, "/t/broken");
        assert_eq!(broken.status, TestStatus::Error);
        assert!(
            broken.message.starts_with("junit report"),
            "{}",
            broken.message
        );
        let unwritten = outcome(&records, "/t/unwritten");
        assert_eq!(unwritten.status, TestStatus::Error);
        assert_eq!(
            unwritten.message,
            "junit report unwritten.xml was not written"
        );
    }

    #[tokio::test]
    async fn a_failed_checkout_finishes_the_suite_with_an_error_and_no_tests() {
        let fixture = fixture();
        let assignment = Assignment {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            ..fixture.assignment(vec![test("/t/never", "true")])
        };
        let records = fixture.run(assignment).await;

        let tags = event_tags(&records);
        assert_eq!(tags.len(), 2, "{records:#?}");
        let RecordBody::SuiteFinished {
            error: Some(error), ..
        } = &records[records.len() - 1]
        else {
            panic!("{records:#?}");
        };
        let expected_start = format!(
            "checkout of {} at 0123456789abcdef0123456789abcdef01234567 failed: ",
            fixture.repo.display()
        );
        assert!(error.starts_with(&expected_start), "{error}");
        assert_eq!(output_lines(&records, "", OutputStream::Agent).len(), 1);
    }

    #[tokio::test]
    async fn cancelling_stops_the_running_test_and_skips_the_rest() {
        let fixture = fixture();
        let marker = fixture.path("cleaned");
        let mut slow = test("/t/slow", "sleep 30");
        slow.cleanup = vec![format!("touch '{marker}'")];
        let assignment = fixture.assignment(vec![
            test("/t/quick", "true"),
            slow,
            test("/t/later", "true"),
        ]);
        let (emit, records) = recorder();
        let cancel = CancellationToken::new();
        let suite_task = tokio::spawn({
            let cancel = cancel.clone();
            let config = fixture.config.clone();
            async move { run_suite(assignment, &config, emit, cancel).await }
        });
        wait_for("the second test to start", Duration::from_secs(10), || {
            records.lock().expect("records").iter().any(|record| {
                matches!(record, RecordBody::TestStarted { test, .. } if test == "/t/slow")
            })
        })
        .await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), suite_task)
            .await
            .expect("the suite stops")
            .expect("no panic");

        let records = records.lock().expect("records").clone();
        assert_eq!(outcome(&records, "/t/quick").status, TestStatus::Pass);
        let slow = outcome(&records, "/t/slow");
        assert_eq!(
            (slow.status, slow.message.as_str()),
            (TestStatus::Cancelled, "cancelled")
        );
        let later = outcome(&records, "/t/later");
        assert_eq!(
            (later.status, later.exit, later.message.as_str()),
            (TestStatus::Cancelled, Exit::NotStarted, "cancelled")
        );
        assert!(Path::new(&marker).exists(), "cleanup ran");
        assert!(matches!(
            records.last(),
            Some(RecordBody::SuiteFinished { error: None, .. })
        ));
    }
}
