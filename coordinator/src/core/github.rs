//! GitHub's webhooks read as decisions, and runs told back as GitHub shows them: which deliveries
//! start a run and against what base, and what a commit status or check run says. Plain data in, plain
//! data out: the signature check, the store and the API calls are the daemon's.
//!
//! A body is read into the few fields Polarizer uses, each checked (a commit is 40 hex digits, a
//! repository is `owner/name`); anything else in it is never looked at.

use polarizer_shared::run::{RunDetail, RunState, TestStatus};
use serde::Deserialize;

/// GitHub's "no commit" (a push that created or deleted a branch has it as `before` or `after`).
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// A commit status description holds at most this many characters (GitHub refuses longer ones).
pub const STATUS_DESCRIPTION_MAX: usize = 140;
/// A check run takes at most this many annotations per request.
pub const ANNOTATIONS_MAX: usize = 50;
/// A check run's summary is cut at this many bytes (GitHub's limit is 65,535).
const SUMMARY_MAX: usize = 60_000;

/// Which kind of change a delivery is (the dedup key's third part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum EventKind {
    Push,
    PullRequest,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::PullRequest => "pull_request",
        }
    }
}

/// What a change is compared with to find the paths it touches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum Base {
    /// `before..after` on `branch`; `before` is `None` for a new branch. A force push (`forced`) or a
    /// new branch is compared with `default_branch` at their merge base.
    Push {
        branch: String,
        before: Option<String>,
        forced: bool,
        default_branch: String,
    },
    /// The merge base of the head (`refs/pull/N/head`) with `base_branch`.
    PullRequest { number: u64, base_branch: String },
}

/// A delivery that starts a run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Change {
    pub repo: String,
    pub kind: EventKind,
    /// `push`, or `pull_request.opened` (the event and its action).
    pub event: String,
    /// The commit the run is pinned to.
    pub sha: String,
    /// `refs/heads/BRANCH` or `pull/N`.
    pub git_ref: String,
    pub base: Base,
}

/// What a delivery is, read from its event name and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// GitHub checking the hook; answered, nothing else.
    Ping {
        repo: String,
    },
    /// Nothing to test: `reason` says why. `repo`, `event`, `sha` and `git_ref` as far as they were read.
    Ignored {
        repo: String,
        event: String,
        sha: String,
        git_ref: String,
        reason: String,
    },
    Change(Change),
}

/// A body that is not what its event says it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Malformed(pub String);

#[derive(Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    default_branch: String,
}

#[derive(Deserialize)]
struct PingBody {
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct PushBody {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequestBody {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequest {
    head: Branch,
    base: Branch,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

/// The `pull_request` actions that start a run: new code to test.
const PULL_REQUEST_ACTIONS: [&str; 3] = ["opened", "synchronize", "reopened"];

fn parse<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, Malformed> {
    serde_json::from_slice(body)
        .map_err(|err| Malformed(format!("a {event} body that does not read: {err}")))
}

/// Checks `owner/name` as GitHub spells repositories.
pub fn check_repo_name(name: &str) -> Result<(), Malformed> {
    let good_part = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match name.split_once('/') {
        Some((owner, repo)) if good_part(owner) && good_part(repo) => Ok(()),
        _ => Err(Malformed(format!(
            "repository {:?} is not owner/name",
            truncate(name, 120)
        ))),
    }
}

fn check_sha(field: &str, sha: &str) -> Result<(), Malformed> {
    if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Malformed(format!(
            "{field} {:?} is not a commit id (40 hex digits)",
            truncate(sha, 80)
        )))
    }
}

/// Reads a delivery. `event` is the `X-GitHub-Event` header.
pub fn read_delivery(event: &str, body: &[u8]) -> Result<Delivery, Malformed> {
    match event {
        "ping" => {
            let ping: PingBody = parse(event, body)?;
            Ok(Delivery::Ping {
                repo: ping
                    .repository
                    .map(|repo| repo.full_name)
                    .unwrap_or_default(),
            })
        }
        "push" => read_push(parse(event, body)?),
        "pull_request" => read_pull_request(parse(event, body)?),
        other => {
            // Only the repository is read from an event of another kind, and only to show it.
            #[derive(Deserialize)]
            struct Any {
                repository: Option<Repository>,
            }
            let repo = serde_json::from_slice::<Any>(body)
                .ok()
                .and_then(|any| any.repository)
                .map(|repo| repo.full_name)
                .filter(|name| check_repo_name(name).is_ok())
                .unwrap_or_default();
            Ok(Delivery::Ignored {
                repo,
                event: truncate(other, 64),
                sha: String::new(),
                git_ref: String::new(),
                reason: format!(
                    "event {:?} starts nothing (push and pull_request do)",
                    truncate(other, 64)
                ),
            })
        }
    }
}

fn read_push(push: PushBody) -> Result<Delivery, Malformed> {
    check_repo_name(&push.repository.full_name)?;
    let repo = push.repository.full_name;
    let ignored = |sha: &str, reason: String| Delivery::Ignored {
        repo: repo.clone(),
        event: "push".into(),
        sha: sha.to_string(),
        git_ref: truncate(&push.git_ref, 200),
        reason,
    };
    if push.deleted || push.after == ZERO_SHA {
        return Ok(ignored(
            "",
            "a deleted branch or tag: nothing to test".into(),
        ));
    }
    check_sha("after", &push.after)?;
    let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
        return Ok(ignored(
            &push.after,
            if push.git_ref.starts_with("refs/tags/") {
                "a tag push: tags start no run (branch pushes and pull requests do)".into()
            } else {
                format!("ref {:?} is not a branch", truncate(&push.git_ref, 200))
            },
        ));
    };
    let before = if push.created || push.before == ZERO_SHA {
        None
    } else {
        check_sha("before", &push.before)?;
        Some(push.before)
    };
    Ok(Delivery::Change(Change {
        kind: EventKind::Push,
        event: "push".into(),
        sha: push.after,
        git_ref: format!("refs/heads/{branch}"),
        base: Base::Push {
            branch: branch.to_string(),
            before,
            forced: push.forced,
            default_branch: push.repository.default_branch,
        },
        repo,
    }))
}

fn read_pull_request(body: PullRequestBody) -> Result<Delivery, Malformed> {
    check_repo_name(&body.repository.full_name)?;
    if body.number == 0 {
        return Err(Malformed("pull request number 0".into()));
    }
    let event = format!("pull_request.{}", truncate(&body.action, 40));
    let git_ref = format!("pull/{}", body.number);
    if !PULL_REQUEST_ACTIONS.contains(&body.action.as_str()) {
        return Ok(Delivery::Ignored {
            repo: body.repository.full_name,
            sha: if check_sha("head", &body.pull_request.head.sha).is_ok() {
                body.pull_request.head.sha
            } else {
                String::new()
            },
            reason: format!(
                "pull_request action {:?} brings no new code (opened, synchronize and reopened do)",
                truncate(&body.action, 40)
            ),
            event,
            git_ref,
        });
    }
    check_sha("pull_request.head.sha", &body.pull_request.head.sha)?;
    Ok(Delivery::Change(Change {
        repo: body.repository.full_name,
        kind: EventKind::PullRequest,
        event,
        sha: body.pull_request.head.sha,
        git_ref,
        base: Base::PullRequest {
            number: body.number,
            base_branch: body.pull_request.base.git_ref,
        },
    }))
}

/// At most `max` characters of `text`, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A report's state, as both commit statuses and check runs take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportState {
    /// Run created, nothing started (status `pending`, check `queued`).
    Queued,
    /// Tests running (status `pending`, check `in_progress`).
    Running,
    Success,
    Failure,
    /// An infrastructure error, or a cancelled run.
    Error,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Queued => "queued",
            ReportState::Running => "running",
            ReportState::Success => "success",
            ReportState::Failure => "failure",
            ReportState::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<ReportState> {
        [
            ReportState::Queued,
            ReportState::Running,
            ReportState::Success,
            ReportState::Failure,
            ReportState::Error,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReportState::Success | ReportState::Failure | ReportState::Error
        )
    }

    /// A commit status's `state`.
    pub fn status(self) -> &'static str {
        match self {
            ReportState::Queued | ReportState::Running => "pending",
            ReportState::Success => "success",
            ReportState::Failure => "failure",
            ReportState::Error => "error",
        }
    }

    /// A check run's `status`, and its `conclusion` once completed.
    pub fn check(self) -> (&'static str, Option<&'static str>) {
        match self {
            ReportState::Queued => ("queued", None),
            ReportState::Running => ("in_progress", None),
            ReportState::Success => ("completed", Some("success")),
            ReportState::Failure => ("completed", Some("failure")),
            // `action_required` would need a details URL; an error fails the check, its title says why.
            ReportState::Error => ("completed", Some("failure")),
        }
    }

    /// What a run in `state` reports.
    pub fn of_run(state: RunState) -> ReportState {
        match state {
            RunState::Queued => ReportState::Queued,
            RunState::Running => ReportState::Running,
            RunState::Passed => ReportState::Success,
            RunState::Failed => ReportState::Failure,
            RunState::Error | RunState::Cancelled => ReportState::Error,
        }
    }
}

/// A failed test, for a check run's annotation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Annotation {
    /// A file in the repository (the test's fmf file, or its directory's `main.fmf`).
    pub path: String,
    pub title: String,
    pub message: String,
}

/// What a report says: the one line (a status's description, a check's title), a Markdown summary
/// (checks) and the annotations (checks).
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReportText {
    pub line: String,
    pub summary: String,
    pub annotations: Vec<Annotation>,
}

/// "17 tests: 15 passed, 1 failed, 1 timed out" (zero counts left out).
pub fn count_line(detail: &RunDetail) -> String {
    let tests = detail.tests.len();
    let count = |status: TestStatus| {
        detail
            .tests
            .iter()
            .filter(|test| test.status == status)
            .count()
    };
    let parts: Vec<String> = [
        (TestStatus::Pass, "passed"),
        (TestStatus::Fail, "failed"),
        (TestStatus::Error, "errored"),
        (TestStatus::Timeout, "timed out"),
        (TestStatus::Warn, "warned"),
        (TestStatus::Info, "info"),
        (TestStatus::Skipped, "skipped"),
        (TestStatus::Cancelled, "cancelled"),
        (TestStatus::Running, "running"),
        (TestStatus::Queued, "queued"),
    ]
    .into_iter()
    .filter_map(|(status, word)| match count(status) {
        0 => None,
        n => Some(format!("{n} {word}")),
    })
    .collect();
    format!(
        "{tests} test{}: {}",
        if tests == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// What a run reports: its count line, a table of the tests that did not pass, and an annotation per
/// failed test placed at `annotation_path(test name)`.
pub fn run_report(
    detail: &RunDetail,
    target_url: &str,
    annotation_path: &dyn Fn(&str) -> String,
) -> ReportText {
    let line = count_line(detail);
    let problems: Vec<_> = detail
        .tests
        .iter()
        .filter(|test| {
            matches!(
                test.status,
                TestStatus::Fail | TestStatus::Error | TestStatus::Timeout | TestStatus::Cancelled
            )
        })
        .collect();
    let mut summary = format!(
        "**Run {}** at `{}`: {line}.\n",
        detail.run.id,
        truncate(&detail.run.commit, 12)
    );
    if !target_url.is_empty() {
        summary += &format!("\n[The run in Polarizer]({target_url})\n");
    }
    if !detail.message.is_empty() {
        summary += &format!("\n> {}\n", detail.message.replace('\n', "\n> "));
    }
    if detail.infrastructure_trouble {
        summary += "\nInfrastructure trouble: every failure is a known system issue.\n";
    }
    if !problems.is_empty() {
        summary += "\n| test | result | message |\n|---|---|---|\n";
        for test in &problems {
            let row = format!(
                "| `{}` | {} | {} |\n",
                markdown_cell(&test.name),
                test.status.as_str(),
                markdown_cell(&truncate(&test.message_with_analysis(), 200))
            );
            if summary.len() + row.len() > SUMMARY_MAX {
                summary += "| … | | |\n";
                break;
            }
            summary += &row;
        }
    }
    let annotations = problems
        .iter()
        .take(ANNOTATIONS_MAX)
        .map(|test| Annotation {
            path: annotation_path(&test.name),
            title: truncate(&format!("{} {}", test.name, test.status.as_str()), 255),
            message: truncate(
                if test.message.is_empty() {
                    test.output_tail.as_str()
                } else {
                    test.message.as_str()
                },
                2000,
            ),
        })
        .collect();
    ReportText {
        line,
        summary,
        annotations,
    }
}

fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The report of a trigger that made no run: `problem` names the file and line where the tree is at
/// fault (its text is Polarizer's own error, never a file's contents).
pub fn trigger_failed_report(problem: &str) -> ReportText {
    ReportText {
        line: truncate(problem, STATUS_DESCRIPTION_MAX),
        summary: format!(
            "Polarizer could not start a run for this commit:\n\n```\n{}\n```\n",
            truncate(problem, 4000).replace("```", "'''")
        ),
        annotations: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(reference: &str, before: &str, after: &str) -> String {
        serde_json::json!({
            "ref": reference, "before": before, "after": after,
            "created": before == ZERO_SHA, "deleted": after == ZERO_SHA, "forced": false,
            "repository": {"full_name": "octo/hello", "default_branch": "main"},
        })
        .to_string()
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn a_branch_push_is_a_change_against_its_before() {
        let delivery = read_delivery("push", push("refs/heads/main", A, B).as_bytes()).unwrap();
        let Delivery::Change(change) = delivery else {
            panic!("{delivery:?}")
        };
        assert_eq!(change.sha, B);
        assert_eq!(
            change.base,
            Base::Push {
                branch: "main".into(),
                before: Some(A.into()),
                forced: false,
                default_branch: "main".into()
            }
        );
        let new_branch =
            read_delivery("push", push("refs/heads/topic", ZERO_SHA, B).as_bytes()).unwrap();
        assert!(matches!(
            new_branch,
            Delivery::Change(Change {
                base: Base::Push { before: None, .. },
                ..
            })
        ));
    }

    #[test]
    fn tags_and_deletions_are_ignored_with_a_reason() {
        for (reference, before, after, reason) in [
            ("refs/tags/v1", ZERO_SHA, B, "tag"),
            ("refs/heads/gone", A, ZERO_SHA, "deleted"),
        ] {
            match read_delivery("push", push(reference, before, after).as_bytes()).unwrap() {
                Delivery::Ignored { reason: why, .. } => assert!(why.contains(reason), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn bad_fields_are_malformed_and_named() {
        let err = read_delivery("push", push("refs/heads/main", A, "HEAD~1").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("after"), "{err}");
        let err = read_delivery("push", b"{not json").unwrap_err().to_string();
        assert!(err.contains("push"), "{err}");
        let body = push("refs/heads/main", A, B).replace("octo/hello", "../../etc");
        assert!(read_delivery("push", body.as_bytes()).is_err());
    }

    #[test]
    fn pull_requests_start_runs_only_for_new_code() {
        let body = |action: &str| {
            serde_json::json!({
                "action": action, "number": 7,
                "pull_request": {"head": {"ref": "fix", "sha": B}, "base": {"ref": "main", "sha": A}},
                "repository": {"full_name": "octo/hello", "default_branch": "main"},
            })
            .to_string()
        };
        let Delivery::Change(change) =
            read_delivery("pull_request", body("synchronize").as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(change.git_ref, "pull/7");
        assert_eq!(change.event, "pull_request.synchronize");
        assert!(matches!(
            read_delivery("pull_request", body("closed").as_bytes()).unwrap(),
            Delivery::Ignored { .. }
        ));
        assert!(matches!(
            read_delivery("issues", b"{}").unwrap(),
            Delivery::Ignored { .. }
        ));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let text = "é".repeat(200);
        let cut = truncate(&text, STATUS_DESCRIPTION_MAX);
        assert_eq!(cut.chars().count(), STATUS_DESCRIPTION_MAX);
        assert!(cut.ends_with('…'));
    }

    proptest::proptest! {
        /// Any body under any event reads as a decision or an error, never a panic.
        #[test]
        fn any_body_reads_without_panic(event in "push|pull_request|ping|issues", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = read_delivery(&event, &body);
        }
    }
}
