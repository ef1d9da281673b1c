//! The suite flow: one assignment from version chain and checkout through suite setup, each test with its
//! hooks and report, and suite cleanup, to `SuiteFinished` and the removal of its worktree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use polarizer_shared::run::{
    test_status, AssignedTest, Assignment, Exit, OutputStream, RecordBody, TestOutcome, TestStatus,
    VersionChain,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn, Instrument};

use super::checkout::{checkout, remove_worktree};
use super::junit::apply_junit;
use super::process::{self, exit_message, ProcessOutcome, ProcessRequest};
use super::versions::package_versions;
use super::{duration_ms, unix_ms, Emit, RunnerConfig, Stopping};

/// A test whose `duration` is 0 gets this long.
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longer durations are clamped so that deadlines never overflow the clock.
const MAX_TEST_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs one suite attempt to the end, emitting its records in order. Never fails: every problem becomes a
/// record. `cancel` (the coordinator's) stops the running test and skips the remaining ones; `stopping`
/// (the agent's) lets the running test finish, within the drain timeout, and leaves the remaining ones to
/// another agent. Cleanups run in both cases.
pub async fn run_suite(
    assignment: Assignment,
    config: &RunnerConfig,
    emit: Emit,
    cancel: CancellationToken,
    stopping: Stopping,
) {
    let span = tracing::info_span!(
        "suite",
        run = assignment.suite.run,
        suite = assignment.suite.suite,
        attempt = assignment.suite.attempt
    );
    // What stops a running test or setup hook: the coordinator's cancel, or the end of the drain.
    let interrupt = CancellationToken::new();
    let _interrupt_watch = AbortOnDropHandle::new(tokio::spawn({
        let interrupt = interrupt.clone();
        let cancel = cancel.clone();
        let expired = stopping.expired.clone();
        async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = expired.cancelled() => {}
            }
            interrupt.cancel();
        }
    }));
    let runner = SuiteRunner {
        assignment,
        config,
        emit,
        cancel,
        stopping,
        interrupt,
    };
    runner.run().instrument(span).await
}

struct SuiteRunner<'a> {
    assignment: Assignment,
    config: &'a RunnerConfig,
    emit: Emit,
    cancel: CancellationToken,
    stopping: Stopping,
    /// `cancel` or `stopping.expired`, whichever comes first.
    interrupt: CancellationToken,
}

/// Why a suite's tests cannot start.
enum SuiteBlocked {
    SetupFailed(String),
    Cancelled,
    /// The agent is stopping: the tests go back to the queue.
    Stopping,
}

/// Why a process was interrupted: the coordinator's cancel wins over the end of the agent's drain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Interruption {
    Cancelled,
    DrainExpired,
}

impl SuiteRunner<'_> {
    async fn run(&self) {
        let suite = self.assignment.suite;
        if self.stopping.drain.is_cancelled() {
            // Assigned while the agent stops (or waiting behind the suite it drained): not started here.
            info!("the agent is stopping; suite not started");
            self.emit(RecordBody::SuiteFinished {
                suite,
                error: Some(self.stopping_message(self.assignment.tests.len())),
            });
            return;
        }
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
            () = self.interrupt.cancelled() => None,
            checked_out = checkout(&self.assignment, self.config, &workdir) => Some(checked_out),
        };
        match checkout {
            None if self.interruption() == Some(Interruption::DrainExpired) => {
                info!("the drain timeout passed during checkout");
                self.emit(RecordBody::SuiteFinished {
                    suite,
                    error: Some(self.stopping_message(self.assignment.tests.len())),
                });
                remove_worktree(&self.assignment, self.config, &workdir).await;
                return;
            }
            None => {
                info!("cancelled during checkout");
                for test in &self.assignment.tests {
                    self.finish_unstarted(test, TestStatus::Cancelled, "cancelled".into());
                }
                self.emit(RecordBody::SuiteFinished { suite, error: None });
                remove_worktree(&self.assignment, self.config, &workdir).await;
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
        let error = self.run_tests(&tree_root).await;
        self.emit(RecordBody::SuiteFinished { suite, error });
        remove_worktree(&self.assignment, self.config, &workdir).await;
    }

    fn workdir(&self) -> PathBuf {
        let suite = self.assignment.suite;
        self.config
            .work_root
            .join(format!("{}-{}-{}", suite.run, suite.suite, suite.attempt))
    }

    /// Suite setup, the tests, suite cleanup. Returns the suite's error when the agent stopped before
    /// running all of its tests (the coordinator gives those to another agent).
    async fn run_tests(&self, tree_root: &Path) -> Option<String> {
        let tests = self.assignment.tests.iter();
        if self.stopping.drain.is_cancelled() && !self.cancel.is_cancelled() {
            // Stopping since the checkout: nothing ran, so there is nothing to clean up.
            return Some(self.stopping_message(tests.len()));
        }
        let suite_environment = self.suite_environment(tree_root);
        let mut blocked = None;
        for command in &self.assignment.suite_setup {
            let hook = self
                .run_hook(
                    command,
                    tree_root,
                    &suite_environment,
                    "",
                    Some(&self.interrupt),
                )
                .await;
            if hook.cancelled {
                blocked = Some(match self.interruption() {
                    Some(Interruption::DrainExpired) => SuiteBlocked::Stopping,
                    _ => SuiteBlocked::Cancelled,
                });
                break;
            }
            if !hook.succeeded() {
                let message = format!("suite setup `{command}` failed: {}", hook.describe());
                warn!(message = %message, "suite setup failed");
                blocked = Some(SuiteBlocked::SetupFailed(message));
                break;
            }
        }

        if blocked.is_none() && self.stopping.drain.is_cancelled() && !self.cancel.is_cancelled() {
            blocked = Some(SuiteBlocked::Stopping);
        }
        let mut error = None;
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
            // No result for the tests: they are not this agent's to decide.
            Some(SuiteBlocked::Stopping) => error = Some(self.stopping_message(tests.len())),
            None => {
                for (index, test) in tests.enumerate() {
                    if self.cancel.is_cancelled() {
                        self.finish_unstarted(test, TestStatus::Cancelled, "cancelled".into());
                        continue;
                    }
                    if self.stopping.drain.is_cancelled() {
                        let not_started = self.assignment.tests.len() - index;
                        info!(not_started, "the agent is stopping; no further test starts");
                        error = Some(self.stopping_message(not_started));
                        break;
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
        error
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
                    cancel: Some(&self.interrupt),
                })
                .await;
            outcome.exit = process.exit;
            outcome.started_ms = process.started_ms;
            outcome.duration_ms = duration_ms(process.duration);
            outcome.output_tail = process.tail.clone();
            if process.cancelled {
                let (status, message) = self.interrupted_outcome();
                outcome.status = status;
                messages.push(message);
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
                    let checkout_root = self.workdir();
                    apply_junit(test, &checkout_root, &test_dir, &mut outcome, &mut messages).await;
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
                .run_hook(
                    command,
                    test_dir,
                    environment,
                    &test.id,
                    Some(&self.interrupt),
                )
                .await;
            if hook.cancelled {
                return Some(self.interrupted_outcome());
            }
            if !hook.succeeded() {
                let message = format!("setup `{command}` failed: {}", hook.describe());
                return Some((TestStatus::Error, message));
            }
        }
        None
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

    /// A hook or test command, its output recorded as this suite's.
    async fn run_process(&self, request: ProcessRequest<'_>) -> ProcessOutcome {
        process::run_process(request, &self.emit, self.assignment.suite, self.config).await
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

    fn interruption(&self) -> Option<Interruption> {
        if self.cancel.is_cancelled() {
            Some(Interruption::Cancelled)
        } else if self.stopping.expired.is_cancelled() {
            Some(Interruption::DrainExpired)
        } else {
            None
        }
    }

    /// A test (or its setup) that was interrupted: cancelled by the coordinator, or stopped by the end of
    /// the agent's drain, an error that says so.
    fn interrupted_outcome(&self) -> (TestStatus, String) {
        match self.interruption() {
            Some(Interruption::DrainExpired) => (
                TestStatus::Error,
                format!(
                    "interrupted: the agent was stopped and the test did not finish within its drain timeout ({})",
                    describe_duration(self.stopping.drain_timeout)
                ),
            ),
            _ => (TestStatus::Cancelled, "cancelled".into()),
        }
    }

    /// The suite's error when the agent stops before starting `not_started` of its tests.
    fn stopping_message(&self, not_started: usize) -> String {
        format!(
            "the agent was stopped before it started {not_started} of the suite's {} tests",
            self.assignment.tests.len()
        )
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

/// "600 s", or "500 ms" for what is not whole seconds.
fn describe_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use polarizer_shared::run::{
        AssignedTest, Assignment, Exit, OutputStream, RecordBody, TestStatus,
    };
    use tokio_util::sync::CancellationToken;

    use super::run_suite;
    use crate::runner::fixture::{
        event_tags, fixture, outcome, output_lines, recorder, test, wait_for, SUITE,
    };
    use crate::runner::Stopping;

    fn stopping() -> Stopping {
        Stopping::new(Duration::from_secs(60))
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
            async move { run_suite(assignment, &config, emit, cancel, stopping()).await }
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

    /// Runs `assignment` in a task; returns the task and the records it emits, as they come.
    fn spawn_suite(
        fixture: &crate::runner::fixture::Fixture,
        assignment: Assignment,
        stopping: &Stopping,
    ) -> (
        tokio::task::JoinHandle<()>,
        std::sync::Arc<std::sync::Mutex<Vec<RecordBody>>>,
    ) {
        let (emit, records) = recorder();
        let config = fixture.config.clone();
        let stopping = stopping.clone();
        let task = tokio::spawn(async move {
            run_suite(
                assignment,
                &config,
                emit,
                CancellationToken::new(),
                stopping,
            )
            .await
        });
        (task, records)
    }

    async fn wait_started(records: &std::sync::Mutex<Vec<RecordBody>>, id: &str) {
        wait_for(&format!("{id} to start"), Duration::from_secs(10), || {
            records
                .lock()
                .expect("records")
                .iter()
                .any(|record| matches!(record, RecordBody::TestStarted { test, .. } if test == id))
        })
        .await;
    }

    fn suite_error(records: &[RecordBody]) -> Option<String> {
        match records.last() {
            Some(RecordBody::SuiteFinished { error, .. }) => error.clone(),
            other => panic!("the suite did not end with SuiteFinished: {other:?}"),
        }
    }

    #[tokio::test]
    async fn stopping_lets_the_running_test_finish_and_leaves_the_rest_to_another_agent() {
        let fixture = fixture();
        let go = fixture.path("go");
        let test_cleaned = fixture.path("test-cleaned");
        let suite_cleaned = fixture.path("suite-cleaned");
        // Runs until the test below says so: it must outlive the agent's first SIGTERM.
        let mut running = test(
            "/t/running",
            &format!("while [ ! -e '{go}' ]; do sleep 0.05; done; echo finished"),
        );
        running.cleanup = vec![format!("touch '{test_cleaned}'")];
        let assignment = Assignment {
            suite_cleanup: vec![format!("touch '{suite_cleaned}'")],
            ..fixture.assignment(vec![
                test("/t/first", "true"),
                running,
                test("/t/second", "true"),
                test("/t/third", "true"),
            ])
        };
        let stopping = stopping();
        let (task, records) = spawn_suite(&fixture, assignment.clone(), &stopping);
        wait_started(&records, "/t/running").await;
        stopping.drain.cancel();
        std::fs::write(&go, "").expect("write go");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the suite ends")
            .expect("no panic");

        let records = records.lock().expect("records").clone();
        assert_eq!(
            event_tags(&records),
            [
                "suite started",
                "started /t/first",
                "finished /t/first",
                "started /t/running",
                "finished /t/running",
                "suite finished Some(\"the agent was stopped before it started 2 of the suite's 4 tests\")",
            ]
        );
        let finished = outcome(&records, "/t/running");
        assert_eq!(
            (finished.status, finished.exit),
            (TestStatus::Pass, Exit::Code(0))
        );
        assert!(Path::new(&test_cleaned).exists(), "the test's cleanup ran");
        assert!(
            Path::new(&suite_cleaned).exists(),
            "the suite's cleanup ran"
        );

        // A suite that comes after the first SIGTERM is not started at all.
        let (emit, late) = recorder();
        run_suite(
            assignment,
            &fixture.config,
            emit,
            CancellationToken::new(),
            stopping,
        )
        .await;
        let late = late.lock().expect("records").clone();
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!(
            suite_error(&late).as_deref(),
            Some("the agent was stopped before it started 4 of the suite's 4 tests")
        );
    }

    #[tokio::test]
    async fn a_test_outlasting_the_drain_is_stopped_as_an_error_and_cleanups_still_run() {
        let fixture = fixture();
        let test_cleaned = fixture.path("test-cleaned");
        let suite_cleaned = fixture.path("suite-cleaned");
        // Ignores SIGTERM, so only the SIGKILL after the grace stops it.
        let mut stubborn = test("/t/stubborn", "trap '' TERM; sleep 30");
        stubborn.cleanup = vec![format!("touch '{test_cleaned}'")];
        let assignment = Assignment {
            suite_cleanup: vec![format!("touch '{suite_cleaned}'")],
            ..fixture.assignment(vec![stubborn, test("/t/after", "true")])
        };
        let stopping = Stopping::new(Duration::from_millis(200));
        let (task, records) = spawn_suite(&fixture, assignment, &stopping);
        wait_started(&records, "/t/stubborn").await;
        stopping.drain.cancel();
        tokio::spawn(stopping.clone().expire_after_drain());
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the suite ends")
            .expect("no panic");

        let records = records.lock().expect("records").clone();
        let stopped = outcome(&records, "/t/stubborn");
        assert_eq!(stopped.status, TestStatus::Error);
        assert_eq!(stopped.exit, Exit::Signal(libc::SIGKILL));
        assert_eq!(
            stopped.message,
            "interrupted: the agent was stopped and the test did not finish within its drain timeout (200 ms)"
        );
        assert!(
            !records.iter().any(|record| matches!(record, RecordBody::TestStarted { test, .. } if test == "/t/after")),
            "no test starts after the drain"
        );
        assert_eq!(
            suite_error(&records).as_deref(),
            Some("the agent was stopped before it started 1 of the suite's 2 tests")
        );
        assert!(Path::new(&test_cleaned).exists(), "the test's cleanup ran");
        assert!(
            Path::new(&suite_cleaned).exists(),
            "the suite's cleanup ran"
        );
    }
}
