//! The suite flow: one assignment from version chain and checkout through suite setup, each test with its
//! hooks and report, and suite cleanup, to `SuiteFinished` and the removal of its worktree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use polarizer_shared::run::{
    test_status, AssignedTest, Assignment, Exit, OutputStream, RecordBody, TestOutcome, TestStatus,
    VersionChain,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::checkout::{checkout, remove_worktree};
use super::junit::apply_junit;
use super::process::{self, exit_message, ProcessOutcome, ProcessRequest};
use super::versions::package_versions;
use super::{duration_ms, unix_ms, Emit, RunnerConfig};

/// A test whose `duration` is 0 gets this long.
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longer durations are clamped so that deadlines never overflow the clock.
const MAX_TEST_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const HOOK_TIMEOUT: Duration = Duration::from_secs(600);

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
        self.run_tests(&tree_root).await;
        self.emit(RecordBody::SuiteFinished { suite, error: None });
        remove_worktree(&self.assignment, self.config, &workdir).await;
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
