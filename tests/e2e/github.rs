//! GitHub in and out: signed webhook deliveries, shaped as GitHub sends them, start runs of the tests a
//! change touches (found by git in the coordinator's cache, against a real bare repository served over
//! file://), and each run goes back to the commit as a commit status or a check run on a fake GitHub
//! that answers as api.github.com does, rate limits and 502s included. Bad deliveries are refused,
//! recorded, and start nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polarizer_e2e::fake_github::{
    deliver, pull_request_payload, push_payload, Failure, FakeGithub, PullRequest,
};
use polarizer_e2e::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "It's a Secret to Everybody";
const REPO: &str = "octo/hello";

/// A work tree with a feature graph (login, billing) and a test per feature (`login` has a failing
/// one), pushed to a bare `origin.git`; answers (work tree, bare repository).
fn origin(root: &Path) -> (PathBuf, PathBuf) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git_repo(
        &work,
        &[
            (".fmf/version", "1\n"),
            (
                "features/main.fmf",
                "/login:\n    paths: [src/login/**]\n/billing:\n    paths: [src/billing/**]\n",
            ),
            (
                "tests/main.fmf",
                "framework: shell\nextra-polarizer-type: unit\n\
                 /login:\n    extra-polarizer-feature: login\n    test: 'true'\n\
                 /login-expiry:\n    extra-polarizer-feature: login\n    test: 'echo the session never expires; exit 1'\n\
                 /billing:\n    extra-polarizer-feature: billing\n    test: 'true'\n",
            ),
            ("src/login/login.py", "print('login')\n"),
            ("src/billing/billing.py", "print('billing')\n"),
        ],
    );
    let bare = root.join("origin.git");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--bare", "--"])
        .arg(&work)
        .arg(&bare)
        .status()
        .unwrap();
    assert!(status.success());
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    (work, bare)
}

/// Commits `files` in `work` and pushes to `git_ref` of origin; answers the commit.
fn commit_and_push(work: &Path, files: &[(&str, &str)], git_ref: &str) -> String {
    for (path, text) in files {
        let path = work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(work, &["add", "."]);
    git(work, &["commit", "--quiet", "-m", "change"]);
    git(
        work,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("HEAD:{git_ref}"),
        ],
    );
    git(work, &["rev-parse", "HEAD"])
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    write_secret(&path, text);
    path
}

/// A coordinator with `[github]` pointing at `fake`, the repository's code at `bare`, and one agent.
fn coordinator(
    dir: &Path,
    fake: &FakeGithub,
    bare: &Path,
    auth: &str,
    report: &str,
) -> TestCluster {
    let secret = secret_file(dir, "webhook-secret", SECRET);
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[github]\nwebhook_secret_file = {secret:?}\n{auth}\napi_url = {:?}\npublic_url = \"https://polarizer.example.com\"\n\n\
             [[github.repos]]\nname = {REPO:?}\nclone_url = \"file://{}\"\nreport = {report:?}\n",
            fake.api_url(),
            bare.display(),
        ),
    )
    .unwrap();
    let mut cluster = coordinator_with_config(&config);
    cluster.start_agent("vm-1", &[]);
    wait_for("the agent online", DEADLINE, || {
        cluster.online_names().len() == 1
    });
    cluster
}

/// [`coordinator`] signing in with a token and reporting commit statuses.
fn with_token(dir: &Path, fake: &FakeGithub, bare: &Path) -> TestCluster {
    let token = secret_file(dir, "token", &fake.token);
    coordinator(
        dir,
        fake,
        bare,
        &format!("token_file = {token:?}"),
        "statuses",
    )
}

fn send(cluster: &TestCluster, event: &str, delivery: &str, body: &Value) -> (u16, String) {
    deliver(
        cluster.http,
        SECRET,
        event,
        delivery,
        body.to_string().as_bytes(),
        None,
    )
}

/// The statuses of `sha` once one is final.
fn final_statuses(fake: &FakeGithub, sha: &str) -> Vec<Value> {
    let mut statuses = Vec::new();
    wait_for(&format!("a final status on {sha}"), DEADLINE, || {
        statuses = fake.statuses(sha);
        statuses
            .last()
            .is_some_and(|status| status["state"] != "pending")
    });
    statuses
}

#[test]
fn a_signed_push_runs_the_tests_it_touches_and_its_status_says_how_they_went() {
    let dir = tempfile::tempdir().unwrap();
    let (work, bare) = origin(dir.path());
    let before = git(&work, &["rev-parse", "HEAD"]);
    let fake = FakeGithub::start();
    let cluster = with_token(dir.path(), &fake, &bare);
    let after = commit_and_push(
        &work,
        &[("src/login/login.py", "print('login v2')\n")],
        "refs/heads/main",
    );
    let push = push_payload(REPO, "refs/heads/main", &before, &after);

    let (status, text) = send(
        &cluster,
        "push",
        "d0000001-0000-0000-0000-000000000001",
        &push,
    );
    assert_eq!(status, 202, "{text}");
    let statuses = final_statuses(&fake, &after);
    assert_eq!(statuses[0]["state"], "pending", "{statuses:#?}");
    assert_eq!(statuses[0]["context"], "polarizer/commit");
    let last = statuses.last().unwrap();
    assert_eq!(last["state"], "failure", "{statuses:#?}");
    assert_eq!(
        last["description"], "2 tests: 1 passed, 1 failed",
        "{last:#}"
    );
    assert_eq!(last["target_url"], "https://polarizer.example.com/runs/1");
    // The change touched login only: billing's test was not selected.
    let run = ok_json(cluster.operator(&["runs", "show", "1", "--json"]));
    let names: Vec<&str> = run["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|test| test["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{run:#}");
    assert!(!names.contains(&"/tests/billing"), "{names:?}");
    assert_eq!(run["commit"], after.as_str());
    let listed = cluster.triggers();
    assert_eq!(listed[0]["outcome"], "run", "{listed:#?}");
    assert_eq!(listed[0]["run"], 1);
    assert_eq!(listed[0]["event"], "push");
    assert_eq!(listed[0]["sha"], after.as_str());
    assert_eq!(
        listed[0]["delivery"],
        "d0000001-0000-0000-0000-000000000001"
    );
    assert!(listed[0]["fetch_ms"].as_u64().is_some(), "{listed:#?}");
    wait_for("the final status recorded as delivered", DEADLINE, || {
        cluster.triggers()[0]["report"] == "statuses failure delivered"
    });

    // GitHub's redelivery (same id), and an org hook's copy (another id, same commit): no new run.
    let (status, text) = send(
        &cluster,
        "push",
        "d0000001-0000-0000-0000-000000000001",
        &push,
    );
    assert_eq!((status, text.contains("duplicate")), (200, true), "{text}");
    let (status, text) = send(
        &cluster,
        "push",
        "d0000001-0000-0000-0000-000000000002",
        &push,
    );
    assert_eq!((status, text.contains("duplicate")), (200, true), "{text}");

    // Hostile or irrelevant deliveries: each answered as it deserves, none starts anything.
    let body = push.to_string();
    let forged = deliver(cluster.http, "guess", "push", "e1", body.as_bytes(), None);
    assert_eq!(forged.0, 401, "{forged:?}");
    let unsigned = deliver(
        cluster.http,
        SECRET,
        "push",
        "e2",
        body.as_bytes(),
        Some(""),
    );
    assert_eq!(unsigned.0, 401, "{unsigned:?}");
    let malformed = deliver(cluster.http, SECRET, "push", "e3", b"{\"ref\": ", None);
    assert_eq!(malformed.0, 400, "{malformed:?}");
    let tag = push_payload(REPO, "refs/tags/v1.0", &"0".repeat(40), &after);
    let (status, text) = send(&cluster, "push", "e4", &tag);
    assert_eq!((status, text.contains("tag")), (200, true), "{text}");
    let stranger = push_payload("someone/else", "refs/heads/main", &before, &after);
    let (status, text) = send(&cluster, "push", "e5", &stranger);
    assert_eq!(
        (status, text.contains("not in [[github.repos]]")),
        (200, true),
        "{text}"
    );
    let (status, text) = send(
        &cluster,
        "ping",
        "e6",
        &serde_json::json!({"zen": "Design for failure.", "hook_id": 1, "repository": {"full_name": REPO}}),
    );
    assert_eq!((status, text.as_str()), (200, "pong\n"));
    let huge = vec![b' '; 26 * 1024 * 1024];
    let too_big = deliver(cluster.http, SECRET, "push", "e7", &huge, None);
    // The answer comes before the body is read: a client still sending may see the connection close
    // first (0); the stored line below says 413 either way.
    assert!(matches!(too_big.0, 413 | 0), "{:?}", too_big.0);
    assert_eq!(cluster.runs().len(), 1, "no delivery above started a run");
    // Lines of refused and duplicate deliveries are stored after the answer.
    let mut listed = Vec::new();
    wait_for("every delivery listed", DEADLINE, || {
        listed = cluster.triggers();
        [
            "d0000001-0000-0000-0000-000000000002",
            "e1",
            "e2",
            "e3",
            "e7",
        ]
        .iter()
        .all(|delivery| {
            listed
                .iter()
                .any(|trigger| trigger["delivery"] == *delivery)
        })
    });
    let outcome = |delivery: &str| {
        listed
            .iter()
            .find(|trigger| trigger["delivery"] == delivery)
            .map(|trigger| {
                format!(
                    "{} {}",
                    trigger["outcome"].as_str().unwrap(),
                    trigger["reason"].as_str().unwrap()
                )
            })
            .unwrap_or_else(|| panic!("{delivery} not listed: {listed:#?}"))
    };
    assert!(outcome("d0000001-0000-0000-0000-000000000002").starts_with("duplicate"));
    assert!(
        outcome("e1").starts_with("refused 401"),
        "{}",
        outcome("e1")
    );
    assert!(
        outcome("e2").contains("no X-Hub-Signature-256"),
        "{}",
        outcome("e2")
    );
    assert!(
        outcome("e3").starts_with("refused 400"),
        "{}",
        outcome("e3")
    );
    assert!(outcome("e4").starts_with("ignored"), "{}", outcome("e4"));
    assert!(outcome("e5").starts_with("ignored"), "{}", outcome("e5"));
    assert!(
        outcome("e7").starts_with("refused 413"),
        "{}",
        outcome("e7")
    );
    let log = cluster.coordinator.as_ref().unwrap().log_text();
    assert!(log.contains("GitHub delivery refused"), "no log line");
    assert!(!log.contains(&fake.token), "the token must never be logged");

    // A push of 10,000 files: the change is real, its paths too many to select by: everything runs.
    let files: Vec<(String, String)> = (0..10_000)
        .map(|n| (format!("data/{:02}/{n}.txt", n % 100), format!("{n}\n")))
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect();
    let big = commit_and_push(&work, &borrowed, "refs/heads/main");
    let push = push_payload(REPO, "refs/heads/main", &after, &big);
    let (status, text) = send(
        &cluster,
        "push",
        "d0000001-0000-0000-0000-000000000003",
        &push,
    );
    assert_eq!(status, 202, "{text}");
    final_statuses(&fake, &big);
    let run = ok_json(cluster.operator(&["runs", "show", "2", "--json"]));
    assert_eq!(run["tests"].as_array().unwrap().len(), 3, "{run:#}");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("10000 files changed, more than 3000: everything selected"),
        "{run:#}"
    );
}

#[test]
fn pull_requests_report_check_runs_with_annotations_and_a_broken_tree_fails_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (work, bare) = origin(dir.path());
    let base = git(&work, &["rev-parse", "HEAD"]);
    let key = dir.path().join("app.pem");
    let made = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let fake = FakeGithub::start();
    let cluster = coordinator(
        dir.path(),
        &fake,
        &bare,
        &format!("app_id = 1\nprivate_key_file = {key:?}"),
        "checks",
    );
    // A pull request from a fork: its head lives only as refs/pull/7/head in the base repository.
    git(&work, &["checkout", "--quiet", "-b", "fix"]);
    let head = commit_and_push(
        &work,
        &[("src/login/login.py", "print('fixed')\n")],
        "refs/pull/7/head",
    );
    // The API stumbles twice: a rate limit and a 502 from GitHub's front end; the report gets through.
    fake.fail_next("/check-runs", Failure::RateLimited);
    fake.fail_next("/check-runs", Failure::BadGateway);
    let opened = pull_request_payload(
        &PullRequest {
            repo: REPO,
            head_repo: "contributor/hello",
            number: 7,
            head_ref: "fix",
            head_sha: &head,
            base_ref: "main",
            base_sha: &base,
        },
        "opened",
    );
    let (status, text) = send(
        &cluster,
        "pull_request",
        "f0000001-0000-0000-0000-000000000001",
        &opened,
    );
    assert_eq!(status, 202, "{text}");
    let mut completed = Value::Null;
    wait_for("the check run completed", DEADLINE, || {
        completed = fake
            .accepted("/check-runs")
            .into_iter()
            .map(|call| call.body)
            .find(|body| body["status"] == "completed")
            .unwrap_or(Value::Null);
        !completed.is_null()
    });
    assert_eq!(completed["conclusion"], "failure", "{completed:#}");
    assert_eq!(completed["name"], "polarizer/commit");
    assert_eq!(completed["output"]["title"], "2 tests: 1 passed, 1 failed");
    let annotations = completed["output"]["annotations"].as_array().unwrap();
    assert_eq!(annotations.len(), 1, "{completed:#}");
    assert!(annotations[0]["title"]
        .as_str()
        .unwrap()
        .contains("/tests/login-expiry"));
    assert!(completed["output"]["summary"]
        .as_str()
        .unwrap()
        .contains("| `/tests/login-expiry` | fail |"));
    let calls = fake.calls();
    let statuses: Vec<u16> = calls
        .iter()
        .filter(|call| call.path.contains("/check-runs"))
        .map(|call| call.status)
        .collect();
    assert_eq!(&statuses[..3], &[403, 502, 201], "{calls:#?}");
    let created = calls
        .iter()
        .find(|call| call.status == 201 && call.path.ends_with("/check-runs"))
        .unwrap();
    assert_eq!(created.body["head_sha"], head.as_str());
    assert_eq!(
        created.authorization,
        format!("Bearer {}", fake.installation_token)
    );
    assert!(calls
        .iter()
        .any(|call| call.path == "/app/installations/42/access_tokens"));

    // The next push to the pull request breaks the tree: a failed check names the file and line.
    let broken = commit_and_push(
        &work,
        &[(
            "tests/main.fmf",
            "framework: shell\n/login:\n    test: [unclosed\n",
        )],
        "refs/pull/7/head",
    );
    let synchronize = pull_request_payload(
        &PullRequest {
            repo: REPO,
            head_repo: "contributor/hello",
            number: 7,
            head_ref: "fix",
            head_sha: &broken,
            base_ref: "main",
            base_sha: &base,
        },
        "synchronize",
    );
    let (status, _) = send(
        &cluster,
        "pull_request",
        "f0000001-0000-0000-0000-000000000002",
        &synchronize,
    );
    assert_eq!(status, 202);
    let mut failed = Value::Null;
    wait_for("the broken tree's check run", DEADLINE, || {
        failed = fake
            .accepted("/check-runs")
            .into_iter()
            .map(|call| call.body)
            .find(|body| body["head_sha"] == broken.as_str())
            .unwrap_or(Value::Null);
        !failed.is_null()
    });
    assert_eq!(failed["conclusion"], "failure", "{failed:#}");
    let summary = failed["output"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("tests/main.fmf") && summary.contains("line 3"),
        "{summary}"
    );
    assert!(
        !summary.contains("[unclosed"),
        "no file contents: {summary}"
    );
    let listed = cluster.triggers();
    assert_eq!(listed[0]["outcome"], "failed", "{listed:#?}");
    assert_eq!(cluster.runs().len(), 1, "a broken tree starts no run");

    // A pull request whose head ref no longer exists: an error check, no run.
    let gone = pull_request_payload(
        &PullRequest {
            repo: REPO,
            head_repo: "contributor/hello",
            number: 9,
            head_ref: "gone",
            head_sha: &"d".repeat(40),
            base_ref: "main",
            base_sha: &base,
        },
        "reopened",
    );
    let (status, _) = send(
        &cluster,
        "pull_request",
        "f0000001-0000-0000-0000-000000000003",
        &gone,
    );
    assert_eq!(status, 202);
    wait_for("the missing head's trigger failed", DEADLINE, || {
        let listed = cluster.triggers();
        listed[0]["outcome"] == "failed"
            && listed[0]["reason"]
                .as_str()
                .unwrap()
                .contains("cannot be fetched")
    });
    assert_eq!(cluster.runs().len(), 1);
}

#[test]
fn a_report_github_does_not_take_is_kept_across_a_coordinator_kill_and_delivered_after() {
    let dir = tempfile::tempdir().unwrap();
    let (work, bare) = origin(dir.path());
    let before = git(&work, &["rev-parse", "HEAD"]);
    let fake = FakeGithub::start();
    // GitHub answers the first statuses with its secondary rate limit, then with 502s.
    fake.fail_next("/statuses/", Failure::SecondaryRateLimited);
    for _ in 0..50 {
        fake.fail_next("/statuses/", Failure::BadGateway);
    }
    let mut cluster = with_token(dir.path(), &fake, &bare);
    let after = commit_and_push(
        &work,
        &[("src/billing/billing.py", "print('billing v2')\n")],
        "refs/heads/main",
    );
    let push = push_payload(REPO, "refs/heads/main", &before, &after);
    let (status, text) = send(
        &cluster,
        "push",
        "a0000001-0000-0000-0000-000000000001",
        &push,
    );
    assert_eq!(status, 202, "{text}");
    wait_for("a report that did not get through", DEADLINE, || {
        cluster.triggers()[0]["report"]
            .as_str()
            .unwrap()
            .contains("not delivered")
    });
    let listed = cluster.triggers();
    let report = listed[0]["report"].as_str().unwrap();
    assert!(
        report.contains("secondary rate limit") || report.contains("502"),
        "{report}"
    );
    cluster.coordinator.as_mut().unwrap().kill_9();
    // GitHub recovers while the coordinator is down.
    let statuses_before = fake.statuses(&after).len();
    fake.clear_failures();
    cluster.start_coordinator(&[]);
    let statuses = final_statuses(&fake, &after);
    assert!(statuses.len() > statuses_before, "{statuses:#?}");
    assert_eq!(
        statuses.last().unwrap()["state"],
        "success",
        "{statuses:#?}"
    );
    assert_eq!(
        statuses.last().unwrap()["description"],
        "1 test: 1 passed",
        "{statuses:#?}"
    );
    wait_for("the report recorded as delivered", DEADLINE, || {
        cluster.triggers()[0]["report"] == "statuses success delivered"
    });
}
