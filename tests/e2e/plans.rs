//! tmt plans: `polarizer trigger --plan` runs what the plan's fmf discover selects, `--changed` narrows
//! it, and a plan Polarizer cannot honour (`how: shell`, an unknown name) is refused with nothing stored.

use std::time::Duration;

use polarizer_e2e::*;
use serde_json::Value;

const RUN_DEADLINE: Duration = Duration::from_secs(90);

const TREE: &[(&str, &str)] = &[
    (".fmf/version", "1\n"),
    (
        "main.fmf",
        "/features:\n  /login:\n    paths: [src/login/**]\n  /billing:\n    paths: [src/billing/**]\n",
    ),
    (
        "tests.fmf",
        "test: 'true'\n\
         /login-fast:\n  tag: [fast]\n  extra-polarizer-feature: login\n\
         /login-slow:\n  tag: [slow]\n  extra-polarizer-feature: login\n\
         /billing-fast:\n  tag: [fast]\n  extra-polarizer-feature: billing\n\
         /billing-off:\n  tag: [fast]\n  enabled: false\n  extra-polarizer-feature: billing\n\
         /billing-rhel:\n  tag: [slow]\n  extra-polarizer-feature: billing\n  adjust:\n    - when: distro == rhel-9\n      tag: [fast]\n",
    ),
    (
        "plans.fmf",
        "execute:\n  how: tmt\n\
         /smoke:\n  discover:\n    how: fmf\n    filter: 'tag: fast'\n\
         /rhel:\n  context:\n    distro: rhel-9\n  discover:\n    how: fmf\n    filter: 'tag: fast'\n\
         /shell:\n  discover:\n    how: shell\n    tests:\n      - name: /x\n        test: 'true'\n",
    ),
];

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_count(cluster: &TestCluster) -> usize {
    ok_json(cluster.operator(&["runs", "--json"]))
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

fn test_names(cluster: &TestCluster, run: u64) -> Vec<String> {
    let shown = ok_json(cluster.operator(&["runs", "show", &run.to_string(), "--json"]));
    tests_by_name(&shown).into_keys().collect()
}

#[test]
fn a_plan_selects_its_tests_a_change_narrows_them_and_a_shell_plan_is_refused() {
    let cluster = TestCluster::builder().agents(1).start();
    let repo = git_repo(&cluster.path("repo"), TREE);
    let repo_arg = repo.to_str().unwrap();

    // The plan's tests, exactly: enabled, `tag: fast`; and the run completes on the agent.
    let triggered = ok_json(cluster.operator(&[
        "trigger",
        "--repo",
        repo_arg,
        "--plan",
        "/plans/smoke",
        "--json",
    ]));
    assert_eq!(triggered["tests"], 2, "{triggered}");
    let run = triggered["run"].as_u64().unwrap();
    assert_eq!(
        test_names(&cluster, run),
        ["/tests/billing-fast", "/tests/login-fast"]
    );
    let mut finished = Value::Null;
    wait_for(&format!("run {run} to finish"), RUN_DEADLINE, || {
        let output = cluster.operator(&["runs", "show", &run.to_string(), "--json"]);
        if !output.status.success() {
            return false;
        }
        finished = serde_json::from_slice(&output.stdout).unwrap();
        !matches!(finished["state"].as_str(), Some("queued" | "running"))
    });
    assert_eq!(finished["state"], "passed", "{finished:#}");
    let reasons = tests_by_name(&finished)["/tests/login-fast"].to_string();
    assert!(
        reasons.contains("plan /plans/smoke selects it"),
        "{reasons}"
    );

    // The plan is adjusted by the trigger's context, like the tests.
    let adjusted = ok_json(cluster.operator(&[
        "trigger",
        "--repo",
        repo_arg,
        "--plan",
        "/plans/smoke",
        "--context",
        "distro=rhel-9",
        "--json",
    ]));
    assert_eq!(
        test_names(&cluster, adjusted["run"].as_u64().unwrap()),
        [
            "/tests/billing-fast",
            "/tests/billing-rhel",
            "/tests/login-fast"
        ]
    );

    // A plan's own context adjusts its tests (the trigger's context would override it).
    let in_context = ok_json(cluster.operator(&[
        "trigger",
        "--repo",
        repo_arg,
        "--plan",
        "/plans/rhel",
        "--json",
    ]));
    assert_eq!(
        test_names(&cluster, in_context["run"].as_u64().unwrap()),
        [
            "/tests/billing-fast",
            "/tests/billing-rhel",
            "/tests/login-fast"
        ]
    );

    // Without --json, the sentence says where the tests come from.
    let said = cluster.operator(&["trigger", "--repo", repo_arg, "--plan", "/plans/smoke"]);
    assert!(
        text(&said).contains("2 tests selected (the tests of plan /plans/smoke)"),
        "{}",
        text(&said)
    );

    // A change narrows the plan: login's change selects login's tests, of which the plan has one.
    let narrowed = ok_json(cluster.operator(&[
        "trigger",
        "--repo",
        repo_arg,
        "--plan",
        "/plans/smoke",
        "--changed",
        "src/login/form.py",
        "--json",
    ]));
    assert_eq!(
        test_names(&cluster, narrowed["run"].as_u64().unwrap()),
        ["/tests/login-fast"]
    );
    let said = cluster.operator(&[
        "trigger",
        "--repo",
        repo_arg,
        "--plan",
        "/plans/smoke",
        "--changed",
        "src/login/form.py",
    ]);
    assert!(
        text(&said).contains("1 test selected (features login in plan /plans/smoke)"),
        "{}",
        text(&said)
    );

    // Refused, naming the plan and the key, with nothing stored.
    let before = run_count(&cluster);
    let refused = cluster.operator(&["trigger", "--repo", repo_arg, "--plan", "/plans/shell"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("plan /plans/shell: discover.how") && message.contains("how: shell"),
        "{message}"
    );
    let unknown = cluster.operator(&["trigger", "--repo", repo_arg, "--plan", "/plans/nope"]);
    assert!(!unknown.status.success(), "{}", text(&unknown));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("no plan named \"/plans/nope\"")
            && message.contains("plans found: /plans/rhel, /plans/shell, /plans/smoke"),
        "{message}"
    );
    assert_eq!(run_count(&cluster), before, "a refused plan stores no run");
}
