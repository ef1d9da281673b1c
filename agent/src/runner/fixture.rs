//! The runner tests' fixture: a real git repository of tests to check out, a recorder for the records a suite
//! emits, and lookups into them.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polarizer_shared::run::{
    AssignedTest, Assignment, OutputStream, RecordBody, SuiteRef, TestOutcome,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{run_suite, Emit, RunnerConfig, Stopping};

pub(super) const SUITE: SuiteRef = SuiteRef {
    run: 7,
    suite: 3,
    attempt: 1,
};

type Records = Arc<Mutex<Vec<RecordBody>>>;

/// A real git repository with `tests/sub/data.txt`, and a runner config under the same temp dir.
pub(super) struct Fixture {
    dir: tempfile::TempDir,
    pub(super) repo: PathBuf,
    pub(super) commit: String,
    pub(super) config: RunnerConfig,
}

pub(super) fn fixture() -> Fixture {
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
    pub(super) fn assignment(&self, tests: Vec<AssignedTest>) -> Assignment {
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

    pub(super) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    pub(super) async fn run(&self, assignment: Assignment) -> Vec<RecordBody> {
        let (emit, records) = recorder();
        run_suite(
            assignment,
            &self.config,
            emit,
            CancellationToken::new(),
            Stopping::new(Duration::from_secs(60)),
        )
        .await;
        let records = records.lock().expect("records").clone();
        records
    }
}

pub(super) fn test(id: &str, command: &str) -> AssignedTest {
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

pub(super) fn recorder() -> (Emit, Records) {
    let records: Records = Arc::default();
    let sink = records.clone();
    let emit: Emit = Arc::new(move |record| sink.lock().expect("records").push(record));
    (emit, records)
}

pub(super) fn outcome<'a>(records: &'a [RecordBody], id: &str) -> &'a TestOutcome {
    records
        .iter()
        .find_map(|record| match record {
            RecordBody::TestFinished(outcome) if outcome.test == id => Some(&**outcome),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TestFinished for {id} in {records:#?}"))
}

pub(super) fn output_lines<'a>(
    records: &'a [RecordBody],
    id: &str,
    wanted: OutputStream,
) -> Vec<&'a str> {
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
pub(super) fn event_tags(records: &[RecordBody]) -> Vec<String> {
    records
        .iter()
        .filter_map(|record| match record {
            RecordBody::SuiteStarted { .. } => Some("suite started".to_string()),
            RecordBody::TestStarted { test, .. } => Some(format!("started {test}")),
            RecordBody::TestFinished(outcome) => Some(format!("finished {}", outcome.test)),
            RecordBody::SuiteFinished { error, .. } => Some(format!("suite finished {error:?}")),
            RecordBody::Output { .. } | RecordBody::Event { .. } => None,
        })
        .collect()
}

pub(super) async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
