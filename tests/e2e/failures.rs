//! `polarizer failures cluster`: any text, offline, one output line per input line (its cluster id, a
//! tab, the template), bytes that are not UTF-8 included; no coordinator needed.

use std::io::Write;
use std::process::{Command, Stdio};

use polarizer_e2e::binary;

#[test]
fn any_text_clusters_offline_one_line_out_per_line_in() {
    let mut input = Vec::new();
    for n in 0..50 {
        writeln!(input, "timeout after {n}s waiting for 10.0.{n}.1:22").unwrap();
        writeln!(input, "AssertionError: expected {n} but got {}", n + 1).unwrap();
    }
    input.extend_from_slice(b"bad bytes \xff\xfe here\n\nlast line without newline");
    let mut child = Command::new(binary("polarizer"))
        .args(["failures", "cluster", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 103, "{text}");
    assert_eq!(lines[0], lines[2]);
    assert_eq!(lines[1], lines[99]);
    assert!(
        lines[0].ends_with("\ttimeout after <*> waiting for <*>"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with("\tAssertionError: expected <*> but got <*>"),
        "{}",
        lines[1]
    );
    assert!(lines[100].contains('\u{fffd}'), "{}", lines[100]);
    let missing = Command::new(binary("polarizer"))
        .args(["failures", "cluster", "/nonexistent/app.log"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/app.log"));
}

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

fn trigger(cluster: &polarizer_e2e::TestCluster, repo: &std::path::Path) -> u64 {
    let triggered = polarizer_e2e::ok_json(cluster.operator(&[
        "trigger",
        "--repo",
        repo.to_str().unwrap(),
        "--all",
        "--json",
    ]));
    triggered["run"].as_u64().unwrap()
}

fn finished(cluster: &polarizer_e2e::TestCluster, run: u64) -> serde_json::Value {
    polarizer_e2e::wait_run_finished(cluster, run, DEADLINE)
}

fn cluster_of(run: &serde_json::Value, name: &str) -> serde_json::Value {
    polarizer_e2e::tests_by_name(run)[name]["cluster"].clone()
}

/// Failures cluster as they are stored: two tests failing the same way (different addresses) share a
/// cluster, another failure has its own, across runs and a coordinator restart. A label makes later
/// failures of that cluster a known issue, live in `runs watch`; a run whose failures are all known
/// system issues is flagged. A test that passed and failed on one commit is flaky, quarantined (its
/// failure no longer fails the run) and released after passes; `stats` has per-test and per-agent
/// figures.
#[test]
fn failures_cluster_at_ingest_labels_mark_known_issues_and_flaky_tests_are_quarantined() {
    use polarizer_e2e::*;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[analysis]\nquarantine_flaky = true\nrelease_after = 2\n",
    )
    .unwrap();
    let mut cluster = coordinator_with_config(&config);
    cluster.start_agent("vm-1", &[]);
    wait_for("the agent online", DEADLINE, || {
        cluster.online_names().len() == 1
    });
    // The flaky test fails when its marker is missing and passes when it is there, taking turns.
    let marker = dir.path().join("marker");
    // Once this exists, the flaky test always passes.
    let fixed = dir.path().join("fixed");
    let fmf = [
        ("net-a", "echo 'Error: connection refused to 10.0.0.1:443 after 3 tries'; exit 1".to_string()),
        ("net-b", "echo 'Error: connection refused to 10.0.9.7:8443 after 12 tries'; exit 1".into()),
        ("assert", "echo 'AssertionError: expected 200 but got 503'; exit 2".into()),
        ("ok", "true".into()),
        (
            "flaky",
            format!(
                "if [ -e {f} ]; then exit 0; fi; if [ -e {m} ]; then rm {m}; else touch {m}; echo 'race: lock held by pid 4242'; exit 1; fi",
                m = marker.display(),
                f = fixed.display()
            ),
        ),
    ]
    .iter()
    .map(|(name, test)| format!("/{name}:\n  test: |\n    {test}\n"))
    .collect::<String>();
    let repo = git_repo(
        &cluster.path("repo"),
        &[(".fmf/version", "1\n"), ("tests/main.fmf", &fmf)],
    );

    let first = finished(&cluster, trigger(&cluster, &repo));
    assert_eq!(first["state"], "failed", "{first:#}");
    let net = cluster_of(&first, "/tests/net-a");
    assert!(net["id"].is_u64(), "{first:#}");
    assert_eq!(net, cluster_of(&first, "/tests/net-b"));
    let assertion = cluster_of(&first, "/tests/assert");
    assert_ne!(assertion["id"], net["id"]);
    assert!(cluster_of(&first, "/tests/ok").is_null());
    assert_eq!(first["infrastructure_trouble"], false);

    let listed = ok_json(cluster.operator(&["failures", "--json"]));
    let net_id = net["id"].as_u64().unwrap();
    let net_row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == net_id)
        .unwrap_or_else(|| panic!("{listed:#}"))
        .clone();
    assert_eq!(net_row["count"], 2, "{net_row:#}");
    assert_eq!(
        net_row["tests"],
        serde_json::json!(["/tests/net-a", "/tests/net-b"])
    );
    assert_eq!(
        net_row["template"],
        "Error: connection refused to <*> after <*> tries"
    );
    assert!(net_row["label"].is_null());

    // Labels: a known system issue, and a product bug; a bad kind or an unknown cluster is refused.
    let labelled = cluster.operator(&[
        "failures",
        "label",
        &net_id.to_string(),
        "--issue",
        "RHBZ#2101",
        "--kind",
        "system",
        "--note",
        "lab network flaps",
    ]);
    assert!(labelled.status.success(), "{labelled:?}");
    assert!(
        String::from_utf8_lossy(&labelled.stdout).contains("known issue RHBZ#2101, system issue")
    );
    let bad = cluster.operator(&["failures", "label", "1", "--kind", "bug"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("product, automation, system or no-defect")
    );
    let unknown = cluster.operator(&["failures", "label", "9999", "--kind", "product"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no failure cluster 9999"));

    // The same commit again, after a restart: same clusters, the label carried live, the flaky test
    // passes (and is found flaky, then quarantined).
    let mut coordinator = cluster.coordinator.take().unwrap();
    coordinator
        .terminate(DEADLINE)
        .expect("the coordinator stops");
    cluster.start_coordinator(&[]);
    wait_for("the agent back", DEADLINE, || {
        cluster.online_names().len() == 1
    });
    let second = trigger(&cluster, &repo);
    let watched = cluster.operator(&["runs", "watch", &second.to_string()]);
    let watch_text = String::from_utf8_lossy(&watched.stdout).to_string();
    assert!(
        watch_text.contains(&format!(
            "— known issue RHBZ#2101, system issue (cluster {net_id})"
        )),
        "{watch_text}"
    );
    let second = finished(&cluster, second);
    assert_eq!(cluster_of(&second, "/tests/net-b")["id"], net_id);
    assert_eq!(cluster_of(&second, "/tests/net-b")["kind"], "system");
    assert_eq!(cluster_of(&second, "/tests/assert")["id"], assertion["id"]);
    assert_eq!(tests_by_name(&second)["/tests/flaky"]["status"], "pass");

    let flaky = ok_json(cluster.operator(&["tests", "flaky", "--json"]));
    assert_eq!(flaky.as_array().unwrap().len(), 1, "{flaky:#}");
    assert_eq!(flaky[0]["test"], "/tests/flaky");
    assert_eq!(flaky[0]["quarantined"], true);
    assert_eq!(
        flaky[0]["evidence"][0]["failed_in"],
        serde_json::json!([first["id"]])
    );
    assert_eq!(
        flaky[0]["evidence"][0]["passed_in"],
        serde_json::json!([second["id"]])
    );

    // Its next failure is quarantined: reported as such, not counted against the run.
    let third = finished(&cluster, trigger(&cluster, &repo));
    let flaky_row = &tests_by_name(&third)["/tests/flaky"];
    assert_eq!(flaky_row["status"], "fail");
    assert_eq!(flaky_row["quarantined"], true, "{flaky_row:#}");
    let shown = cluster.operator(&["runs", "show", &third["id"].to_string()]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("[quarantined; cluster"));

    // Only the network tests: every failure a known system issue, the run flagged.
    let net_only = git_repo(
        &cluster.path("net-only"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "/net-c:\n  test: |\n    echo 'Error: connection refused to 192.168.1.1:22 after 1 tries'; exit 1\n",
            ),
        ],
    );
    let infra = finished(&cluster, trigger(&cluster, &net_only));
    assert_eq!(infra["state"], "failed");
    assert_eq!(infra["infrastructure_trouble"], true, "{infra:#}");
    let summary = cluster.operator(&["runs", "show", &infra["id"].to_string()]);
    assert!(
        String::from_utf8_lossy(&summary.stdout).contains("infrastructure trouble"),
        "{summary:?}"
    );

    // Why a failure matched; a label withdrawn.
    let shown = ok_json(cluster.operator(&["failures", "show", &net_id.to_string(), "--json"]));
    let example = &shown["examples"][0];
    assert_eq!(example["test"], "/tests/net-c", "{shown:#}");
    assert_eq!(example["matched"], example["tokens"]);
    assert_eq!(shown["label"]["issue"], "RHBZ#2101");
    let per_run =
        ok_json(cluster.operator(&["failures", "--run", &infra["id"].to_string(), "--json"]));
    assert_eq!(per_run.as_array().unwrap().len(), 1, "{per_run:#}");
    let withdrawn = cluster.operator(&["failures", "unlabel", &net_id.to_string()]);
    assert!(withdrawn.status.success());
    let again = ok_json(cluster.operator(&["runs", "show", &infra["id"].to_string(), "--json"]));
    assert_eq!(again["infrastructure_trouble"], false);

    // Statistics: per test and per agent.
    let stats = ok_json(cluster.operator(&["stats", "--json"]));
    let test_stats = |name: &str| {
        stats["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|test| test["test"] == name)
            .unwrap_or_else(|| panic!("{name} in {stats:#}"))
            .clone()
    };
    assert_eq!(test_stats("/tests/ok")["results"], 3);
    assert_eq!(test_stats("/tests/ok")["runs"], 3);
    assert_eq!(test_stats("/tests/ok")["pass_rate"], 1.0);
    assert_eq!(test_stats("/tests/flaky")["flip_rate"], 1.0);
    assert_eq!(stats["agents"][0]["agent"], "vm-1");
    assert_eq!(stats["agents"][0]["attempts"], 16);
    assert_eq!(stats["agents"][0]["infra_errors"], 0);
    assert_eq!(stats["runs"], 4);

    // Fixed: two passes in a row (release_after = 2) release it from quarantine.
    std::fs::write(&fixed, "").unwrap();
    for _ in 0..2 {
        let run = finished(&cluster, trigger(&cluster, &repo));
        assert_eq!(tests_by_name(&run)["/tests/flaky"]["status"], "pass");
    }
    let flaky = ok_json(cluster.operator(&["tests", "flaky", "--json"]));
    assert_eq!(flaky[0]["test"], "/tests/flaky");
    assert_eq!(flaky[0]["quarantined"], false, "{flaky:#}");
}
