//! Faults of the network between hosts: an agent in a network namespace of its own, joined to the
//! coordinator by a veth pair that the test cuts and restores. Needs root (namespaces, links); skipped
//! with the reason printed otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use polarizer_e2e::*;
use serde_json::Value;

use crate::netns::Link;

const DEADLINE: Duration = Duration::from_secs(90);

const TESTS: usize = 8;

/// A serial suite (the tests share a resource) of tests that each print 4 lines over a second.
fn serial_repo(root: &Path) {
    let mut fmf = String::from("resources:\n  modifies: [db]\nduration: 1m\n");
    for test in 1..=TESTS {
        fmf.push_str(&format!(
            "/t{test}:\n  test: for i in 1 2 3 4; do echo line-t{test}-$i; sleep 0.25; done\n"
        ));
    }
    git_repo(root, &[(".fmf/version", "1\n"), ("tests/main.fmf", &fmf)]);
}

/// The agent is cut off while it runs a serial suite, long enough for the coordinator to call it lost
/// and put the suite back in the queue; it runs on, spooling. When the link returns, the same agent
/// process takes its attempt back (nobody else began the suite), so every test counts once, from
/// attempt 1, and none runs again.
#[test]
fn an_agent_cut_off_mid_suite_keeps_its_attempt_when_the_link_returns() {
    let Some(link) = Link::new() else {
        return;
    };
    let mut cluster = TestCluster::new_coordinator_only_on(
        link.host_ip.into(),
        &[
            "--gossip-interval-ms",
            "100",
            "--heartbeat-interval-ms",
            "200",
        ],
    );
    let gossip = SocketAddr::new(link.agent_ip.into(), free_udp_addr().port());
    cluster.start_agent_in_netns(&link.netns, "vm-cut", gossip);
    wait_for("the agent in its namespace online", DEADLINE, || {
        cluster.agent_state("vm-cut").as_deref() == Some("online")
    });
    let repo = cluster.path("serial");
    serial_repo(&repo);
    let run = ok_json(cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]))
        ["run"]
        .as_u64()
        .unwrap()
        .to_string();
    let show = |cluster: &TestCluster| {
        let output = cluster.operator(&["runs", "show", &run, "--json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice::<Value>(&output.stdout).unwrap())
    };
    wait_for("the second test to run", DEADLINE, || {
        show(&cluster)
            .is_some_and(|shown| tests_by_name(&shown)["/tests/t2"]["status"] == "running")
    });

    link.cut();
    wait_for("the suite back in the queue as attempt 2", DEADLINE, || {
        show(&cluster)
            .is_some_and(|shown| tests_by_name(&shown)[&format!("/tests/t{TESTS}")]["attempt"] == 2)
    });
    assert_ne!(cluster.agent_state("vm-cut").as_deref(), Some("online"));
    let restored = Instant::now();
    link.restore();

    let mut finished = Value::Null;
    wait_for("the run to finish", DEADLINE, || {
        finished = show(&cluster).unwrap_or(Value::Null);
        matches!(
            finished["state"].as_str(),
            Some("passed" | "failed" | "error")
        )
    });
    eprintln!("link restored → run finished in {:?}", restored.elapsed());
    assert_eq!(finished["state"], "passed", "{finished:#}");
    for (name, test) in tests_by_name(&finished) {
        assert_eq!(test["status"], "pass", "{name}");
        assert_eq!(test["attempt"], 1, "{name} ran again: {test:#}");
        assert_eq!(test["agent"], "vm-cut", "{name}");
        assert_eq!(
            test["lost_attempts"].as_array().map(Vec::len),
            Some(0),
            "{name}: its attempt was given back, not lost: {test:#}"
        );
    }

    // Every line the tests printed is stored, once.
    let output = cluster.operator(&[
        "tail",
        "--no-follow",
        "--json",
        "--since",
        "0",
        "--run",
        &run,
        "--kind",
        "output",
    ]);
    assert!(output.status.success());
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for event in String::from_utf8_lossy(&output.stdout).lines() {
        let event: Value = serde_json::from_str(event).unwrap();
        let text = event.to_string();
        if let Some(start) = text.find("line-t") {
            let marker: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            *lines.entry(marker).or_default() += 1;
        }
    }
    assert_eq!(lines.len(), TESTS * 4, "{lines:?}");
    assert!(lines.values().all(|&count| count == 1), "{lines:?}");
}
