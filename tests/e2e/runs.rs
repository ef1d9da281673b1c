//! Runs end to end: real git repositories triggered through the CLI, suites dispatched to real agents
//! that run real shell tests, results streamed back; agents and the coordinator killed mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use polarizer_e2e::*;
use serde_json::Value;

const RUN_DEADLINE: Duration = Duration::from_secs(90);

fn trigger(cluster: &TestCluster, repo: &Path, extra: &[&str]) -> u64 {
    let mut args = vec!["trigger", "--repo", repo.to_str().unwrap(), "--json"];
    args.extend(extra);
    ok_json(cluster.operator(&args))["run"].as_u64().unwrap()
}

fn show(cluster: &TestCluster, run: u64) -> Value {
    ok_json(cluster.operator(&["runs", "show", &run.to_string(), "--json"]))
}

/// Polls `runs show` until the run has a final state; returns it. Tolerates a coordinator that is down.
fn wait_finished(cluster: &TestCluster, run: u64) -> Value {
    wait_run_finished(cluster, run, RUN_DEADLINE)
}

fn status_of(run: &Value, name: &str) -> String {
    tests_by_name(run)[name]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_change_runs_its_tests_across_three_agents_live() {
    let cluster = TestCluster::builder().agents(3).start();
    let examples = cluster.path("examples");
    polarizer::cli::examples::materialize(&examples).unwrap();
    let commit = git(&examples, &["rev-parse", "HEAD"]);

    // The sentence users read, then the live watch (exit code 1: a test fails and one times out on purpose).
    let triggered = cluster.operator(&[
        "trigger",
        "--repo",
        examples.to_str().unwrap(),
        "--changed",
        "src/identity/uuid.py",
        "--kind",
        "commit",
        "--type",
        "unit,integration,functional",
        "--artifact",
        "subscription-manager-1.29.40-1.el9",
    ]);
    let sentence = String::from_utf8_lossy(&triggered.stdout).to_string();
    assert!(
        triggered.status.success(),
        "{sentence}{}",
        String::from_utf8_lossy(&triggered.stderr)
    );
    assert!(
        sentence.starts_with("run 1: 17 tests selected (features identity, +3 dependents), 4 suites: 3 parallel, 1 serial"),
        "{sentence}"
    );
    let watched = cluster.operator(&["runs", "watch", "1"]);
    let watch_text = String::from_utf8_lossy(&watched.stdout).to_string();
    assert_eq!(watched.status.code(), Some(1), "{watch_text}");
    assert!(
        watch_text.contains("fail     /tests/register/unregister"),
        "{watch_text}"
    );
    assert!(
        watch_text.contains("timeout  /tests/repos/mirror-sync"),
        "{watch_text}"
    );
    assert!(watch_text.contains("run 1 failed"), "{watch_text}");

    let run = show(&cluster, 1);
    assert_eq!(run["state"], "failed");
    assert_eq!(run["commit"], commit.as_str());
    let tests = tests_by_name(&run);
    assert_eq!(
        tests.len(),
        17,
        "the cli feature is not selected: {:?}",
        tests.keys()
    );
    assert!(!tests.contains_key("/tests/cli/help"));
    for (name, test) in &tests {
        let expected = match name.as_str() {
            "/tests/register/unregister" => "fail",
            "/tests/repos/mirror-sync" => "timeout",
            _ => "pass",
        };
        assert_eq!(test["status"], expected, "{name}: {test}");
        assert_eq!(test["attempt"], 1, "{name}");
        assert!(
            !test["why"].as_array().unwrap().is_empty(),
            "{name} says why it ran"
        );
    }
    assert!(tests["/tests/register/unregister"]["output_tail"]
        .as_str()
        .unwrap()
        .contains("consumer certificate still present"));
    assert_eq!(
        tests["/tests/attach/parser"]["subresults"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(tests["/tests/identity/uuid"]["why"][0]
        .as_str()
        .unwrap()
        .contains("src/identity/uuid.py"));

    // The serial suite ran on one agent in dependency order; parallel suites spread over agents.
    let suites = run["suites"].as_array().unwrap();
    let serial = suites
        .iter()
        .find(|suite| suite["kind"] == "serial")
        .unwrap();
    let serial_tests: Vec<&Value> = run["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|test| test["suite"] == serial["id"])
        .collect();
    let agents: BTreeSet<&str> = serial_tests
        .iter()
        .map(|t| t["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 1, "{serial_tests:?}");
    let started = |name: &str| tests[name]["started"].as_str().unwrap().to_string();
    assert!(started("/tests/register/basic") < started("/tests/register/force"));
    assert!(started("/tests/register/force") < started("/tests/register/unregister"));
    let all_agents: BTreeSet<&str> = suites
        .iter()
        .map(|s| s["agent"].as_str().unwrap())
        .collect();
    assert!(
        all_agents.len() >= 2,
        "suites spread over agents: {all_agents:?}"
    );
    // The version chain of every suite.
    for suite in suites {
        assert_eq!(suite["versions"]["commit"], commit.as_str());
        assert_eq!(
            suite["versions"]["agent_version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            suite["versions"]["artifacts"][0],
            "subscription-manager-1.29.40-1.el9"
        );
    }

    // Reports.
    let report = cluster.path("run1.xml");
    let written = cluster.operator(&[
        "report",
        "1",
        "--format",
        "junit",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(written.status.success());
    let parsed = polarizer_shared::junit::parse(&std::fs::read(&report).unwrap()).unwrap();
    let counts = parsed.counts();
    assert_eq!((counts.tests, counts.failures), (17 + 3, 2), "{counts:?}");
    assert_eq!(parsed.suites.len(), 4);
    let json_report = ok_json(cluster.operator(&["report", "1", "--format", "json"]));
    assert_eq!(json_report["tests"].as_array().unwrap().len(), 17);
    let listed = ok_json(cluster.operator(&["runs", "--json"]));
    assert_eq!(listed[0]["id"], 1);
    assert_eq!(listed[0]["done"], 17);
}

/// Test `name` passed on `survivor` as attempt 2, its first attempt recorded as lost by `holder`
/// with a message containing `why`.
fn assert_passed_on_retry(
    tests: &BTreeMap<String, Value>,
    name: &str,
    holder: &str,
    survivor: &str,
    why: &str,
) {
    let test = &tests[name];
    assert_eq!(test["status"], "pass", "{name}: {test:#}");
    assert_eq!(test["attempt"], 2, "{name}");
    assert_eq!(test["agent"], survivor, "{name}");
    let lost = test["lost_attempts"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{name}: {lost:?}");
    assert_eq!(lost[0]["agent"], holder, "{name}");
    assert!(
        lost[0]["message"].as_str().unwrap().contains(why),
        "{name}: {lost:?}"
    );
}

/// Six one-second tests that share a resource: one serial suite.
fn serial_repo(root: &Path) -> PathBuf {
    let mut fmf = String::from("resources:\n  modifies: [db]\nduration: 1m\n");
    for index in 1..=6 {
        fmf.push_str(&format!(
            "/t{index}:\n  test: echo marker-t{index}; sleep 1\n"
        ));
    }
    git_repo(root, &[(".fmf/version", "1\n"), ("tests/main.fmf", &fmf)])
}

#[test]
fn kill_9_of_an_agent_mid_suite_reruns_its_unfinished_tests_elsewhere() {
    let mut cluster = TestCluster::builder().agents(2).start();
    let repo = serial_repo(&cluster.path("serial"));
    let run = trigger(&cluster, &repo, &[]);

    // Once the second test runs, kill the agent holding the suite.
    let mut holder = String::new();
    wait_for("the second test to start", RUN_DEADLINE, || {
        let shown = show(&cluster, run);
        let second = &tests_by_name(&shown)["/tests/t2"];
        if second["status"] == "running" {
            holder = second["agent"].as_str().unwrap().to_string();
            true
        } else {
            false
        }
    });
    let killed_at = Instant::now();
    cluster.agent(&holder).kill_9();
    let survivor = if holder == "vm-1" { "vm-2" } else { "vm-1" };

    let finished = wait_finished(&cluster, run);
    let elapsed = killed_at.elapsed();
    assert_eq!(finished["state"], "passed", "{finished:#}");
    let tests = tests_by_name(&finished);
    assert_eq!(
        tests["/tests/t1"]["attempt"], 1,
        "finished before the kill: kept"
    );
    assert_eq!(tests["/tests/t1"]["agent"], holder.as_str());
    for name in ["/tests/t2", "/tests/t6"] {
        assert_passed_on_retry(&tests, name, &holder, survivor, "went offline");
    }
    eprintln!("kill -9 → suite finished elsewhere in {elapsed:?}");
}

/// A serial suite of four tests whose second runs `second`; the suite's cleanup leaves
/// `<markers>/cleaned-<attempt>`.
fn drain_repo(root: &Path, second: &str, markers: &Path) -> PathBuf {
    let fmf = format!(
        "resources:\n  modifies: [db]\nduration: 5m\nhooks:\n  suite-cleanup: touch {}/cleaned-$POLARIZER_ATTEMPT\n\
         /t1:\n  test: 'true'\n/t2:\n  test: '{second}'\n/t3:\n  test: 'true'\n/t4:\n  test: 'true'\n",
        markers.display()
    );
    git_repo(root, &[(".fmf/version", "1\n"), ("tests/main.fmf", &fmf)])
}

/// Triggers a run of `repo` and waits for its second test to run; returns the run and the agent running it.
fn run_until_second_test_runs(cluster: &TestCluster, repo: &Path) -> (u64, String) {
    let run = trigger(cluster, repo, &[]);
    let mut holder = String::new();
    wait_for("the second test to start", RUN_DEADLINE, || {
        let second = &tests_by_name(&show(cluster, run))["/tests/t2"];
        holder = second["agent"].as_str().unwrap_or_default().to_string();
        second["status"] == "running"
    });
    (run, holder)
}

/// The first SIGTERM, as `systemctl stop` sends it; waits until the agent says it is draining.
fn sigterm_and_wait_for_the_drain(agent: &Process) {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(agent.pid().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    wait_for("the agent to start draining", RUN_DEADLINE, || {
        agent.log_text().contains("stopping: no new suite starts")
    });
}

#[test]
fn sigterm_lets_the_running_test_finish_runs_cleanups_and_hands_the_rest_to_another_agent() {
    let mut cluster = TestCluster::builder().agents(2).start();
    let markers = cluster.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let go = markers.join("go");
    // The running test finishes only once told to, after the agent began to drain.
    let second = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo finished",
        go.display()
    );
    let repo = drain_repo(&cluster.path("drain"), &second, &markers);
    let (run, holder) = run_until_second_test_runs(&cluster, &repo);
    let survivor = if holder == "vm-1" { "vm-2" } else { "vm-1" };

    sigterm_and_wait_for_the_drain(cluster.agent(&holder));
    std::fs::write(&go, "").unwrap();
    let exit = cluster.agent(&holder).wait_exit(RUN_DEADLINE);
    assert!(
        exit.is_some_and(|status| status.code() == Some(0)),
        "{exit:?}: {}",
        cluster.agent(&holder).log_text()
    );
    assert!(
        markers.join("cleaned-1").exists(),
        "the drained suite's cleanup ran"
    );

    let finished = wait_finished(&cluster, run);
    assert_eq!(finished["state"], "passed", "{finished:#}");
    let tests = tests_by_name(&finished);
    for name in ["/tests/t1", "/tests/t2"] {
        assert_eq!(
            tests[name]["attempt"], 1,
            "{name}: finished on the stopping agent"
        );
        assert_eq!(tests[name]["agent"], holder.as_str(), "{name}");
    }
    assert!(tests["/tests/t2"]["output_tail"]
        .as_str()
        .unwrap()
        .contains("finished"));
    for name in ["/tests/t3", "/tests/t4"] {
        assert_passed_on_retry(
            &tests,
            name,
            &holder,
            survivor,
            "was stopped before it started 2 of the suite's 4 tests",
        );
    }
}

#[test]
fn a_test_outlasting_the_drain_timeout_is_stopped_and_recorded_and_cleanups_still_run() {
    let mut cluster = TestCluster::new_coordinator_only();
    cluster.start_agent("vm-1", &[("--drain-timeout-ms", "1000")]);
    wait_for("the agent online", RUN_DEADLINE, || {
        cluster.online_names() == ["vm-1"]
    });
    let markers = cluster.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    // Ignores SIGTERM too: only the SIGKILL after the grace ends it.
    let repo = drain_repo(
        &cluster.path("stubborn"),
        "trap \"\" TERM; sleep 300",
        &markers,
    );
    let (run, _) = run_until_second_test_runs(&cluster, &repo);

    sigterm_and_wait_for_the_drain(cluster.agent("vm-1"));
    let exit = cluster.agent("vm-1").wait_exit(RUN_DEADLINE);
    assert!(
        exit.is_some_and(|status| status.code() == Some(0)),
        "{exit:?}: {}",
        cluster.agent("vm-1").log_text()
    );
    assert!(
        markers.join("cleaned-1").exists(),
        "the suite's cleanup ran"
    );

    // Without another agent the rest waits in the queue as attempt 2, the lost attempt recorded.
    let shown = show(&cluster, run);
    let tests = tests_by_name(&shown);
    assert_eq!(tests["/tests/t1"]["status"], "pass");
    let stopped = &tests["/tests/t2"];
    assert_eq!(stopped["status"], "error", "{stopped:#}");
    assert!(
        stopped["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within its drain timeout (1 s)"),
        "{stopped:#}"
    );
    for name in ["/tests/t3", "/tests/t4"] {
        let test = &tests[name];
        assert_eq!(test["status"], "queued", "{name}: {test:#}");
        assert_eq!(test["attempt"], 2, "{name}");
        let lost = test["lost_attempts"].as_array().unwrap();
        assert_eq!(lost.len(), 1, "{name}: {lost:?}");
        assert_eq!(
            (lost[0]["attempt"].as_u64(), lost[0]["agent"].as_str()),
            (Some(1), Some("vm-1"))
        );
    }
}

#[test]
fn kill_9_of_the_coordinator_mid_run_loses_and_duplicates_nothing() {
    let mut cluster = TestCluster::builder().agents(2).start();
    let mut files = vec![(".fmf/version".to_string(), "1\n".to_string())];
    let mut fmf = String::from("duration: 1m\n");
    for index in 1..=10 {
        fmf.push_str(&format!(
            "/t{index:02}:\n  test: for i in 1 2 3; do echo t{index:02}-line-$i; done; sleep 0.4\n"
        ));
    }
    files.push(("tests/main.fmf".into(), fmf));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let repo = git_repo(&cluster.path("parallel"), &files);
    let run = trigger(&cluster, &repo, &[]);

    wait_for("a few results", RUN_DEADLINE, || {
        show(&cluster, run)["tests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|test| test["status"] == "pass")
            .count()
            >= 2
    });
    cluster.coordinator.as_mut().unwrap().kill_9();
    // Agents go on running and spooling while the coordinator is down; it comes back on the same ports.
    cluster.start_coordinator(&[]);
    let finished = wait_finished(&cluster, run);
    assert_eq!(finished["state"], "passed", "{finished:#}");
    for (name, test) in tests_by_name(&finished) {
        assert_eq!(test["status"], "pass", "{name}");
        assert_eq!(
            test["attempt"], 1,
            "{name}: leases survive a coordinator restart"
        );
    }
    cluster
        .coordinator
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10));
    // Every output line exactly once: duplicates would show as repeated (test, line) pairs.
    let reader = polarizer::store::Reader::open(&cluster.data_dir.join("polarizer.db")).unwrap();
    let lines = reader.output(run).unwrap();
    let mut seen = BTreeMap::new();
    for (_, test, line) in &lines {
        if line.contains("-line-") {
            *seen.entry((test.clone(), line.clone())).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 30, "{seen:?}");
    assert!(seen.values().all(|count| *count == 1), "{seen:?}");
}

#[test]
fn bad_triggers_say_why_and_store_nothing() {
    let cluster = TestCluster::new_coordinator_only();
    let no_tree = git_repo(&cluster.path("no-tree"), &[("README", "no fmf here\n")]);
    let good = serial_repo(&cluster.path("good"));
    let plain = cluster.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--repo", "/nonexistent/tests"], "no such directory"),
        (
            vec!["--repo", plain.to_str().unwrap()],
            "not in a git repository",
        ),
        (
            vec!["--repo", "https://127.0.0.1:1/nothing.git"],
            "cannot fetch ref",
        ),
        (
            vec!["--repo", good.to_str().unwrap(), "--ref", "no-such-branch"],
            "cannot fetch ref \"no-such-branch\"",
        ),
        (vec!["--repo", no_tree.to_str().unwrap()], ".fmf"),
        (
            vec!["--repo", good.to_str().unwrap(), "--type", "performance"],
            "the trigger selects no tests",
        ),
        (
            vec!["--repo", good.to_str().unwrap(), "--feature", "nope"],
            "no feature named \"nope\"",
        ),
        (
            vec!["--repo", good.to_str().unwrap(), "--kind", "nightly"],
            "not one of commit, build, manual",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["trigger"];
        full.extend(&args);
        let output = cluster.operator(&full);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        let first_line = stderr.lines().next().unwrap_or_default();
        assert!(first_line.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(
        ok_json(cluster.operator(&["runs", "--json"])),
        serde_json::json!([])
    );
}

#[test]
fn a_cancelled_run_stops_its_tests_and_a_queued_suite_says_what_it_waits_for() {
    let cluster = TestCluster::builder().agents(1).start();
    let repo = git_repo(
        &cluster.path("slow"),
        &[
            (".fmf/version", "1\n"),
            ("tests/main.fmf", "/slow:\n  test: echo started; sleep 60\n  duration: 5m\n/container:\n  test: 'true'\n  platform:\n    kind: container\n"),
        ],
    );
    let run = trigger(&cluster, &repo, &[]);
    wait_for("the slow test to run", RUN_DEADLINE, || {
        status_of(&show(&cluster, run), "/tests/slow") == "running"
    });
    let shown = show(&cluster, run);
    let waiting = shown["suites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|suite| suite["platform"] == "container")
        .unwrap()["waiting_for"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        waiting,
        "waiting for an agent with platform container: none online"
    );
    // Another enrolled agent claims the slow test's attempt: its output and its result are refused,
    // and it is told to stop what it does not hold.
    let slow = &tests_by_name(&shown)["/tests/slow"];
    let claimed = polarizer_shared::run::SuiteRef {
        run,
        suite: slow["suite"].as_u64().unwrap(),
        attempt: slow["attempt"].as_u64().unwrap() as u32,
    };
    let answer = forge_records(&cluster, claimed, "/tests/slow");
    assert!(answer.contains("Cancel"), "{answer}");
    let replay = String::from_utf8_lossy(&cluster.operator(&["replay", &run.to_string()]).stdout)
        .to_string();
    assert!(!replay.contains("forged line"), "{replay}");
    assert_eq!(status_of(&show(&cluster, run), "/tests/slow"), "running");

    let cancelled = cluster.operator(&["runs", "cancel", &run.to_string()]);
    assert!(cancelled.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cancelled.stdout).trim(),
        format!("run {run} cancelled")
    );
    let finished = show(&cluster, run);
    assert_eq!(finished["state"], "cancelled");
    assert_eq!(status_of(&finished, "/tests/slow"), "cancelled");
    // The agent stops the test (its process group is killed) and takes new work.
    let again = trigger(&cluster, &serial_repo(&cluster.path("after-cancel")), &[]);
    assert_eq!(wait_finished(&cluster, again)["state"], "passed");
}

#[test]
fn polarizer_demo_runs_the_examples_and_leaves_nothing_running() {
    let output = Command::new(binary("polarizer"))
        .arg("demo")
        .output()
        .expect("run polarizer demo");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("run 1: 17 tests selected"), "{stdout}");
    assert!(stdout.contains("run 1 failed"), "{stdout}");
    let report = stdout
        .lines()
        .find_map(|line| line.strip_prefix("JUnit report: "))
        .expect("the report's path");
    let parsed = polarizer_shared::junit::parse(&std::fs::read(report).unwrap()).unwrap();
    assert_eq!(parsed.counts().tests, 17 + 3);
    std::fs::remove_file(report).unwrap();
    let workspace = stdout
        .lines()
        .next()
        .and_then(|line| line.rsplit(" in ").next())
        .unwrap()
        .to_string();
    assert!(!Path::new(&workspace).exists(), "cleaned up: {workspace}");
    // No process still refers to the demo's directory.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&workspace),
            "left running: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
}

#[test]
fn serve_local_agents_starts_agents_beside_the_coordinator_and_stops_them() {
    let mut cluster = TestCluster::new_coordinator_only_with(&[
        "--gossip-interval-ms",
        "100",
        "--heartbeat-interval-ms",
        "200",
        "--local-agents",
        "2",
    ]);
    wait_for("two local agents online", RUN_DEADLINE, || {
        cluster.online_names() == ["local-1", "local-2"]
    });
    let repo = serial_repo(&cluster.path("tests"));
    let run = trigger(&cluster, &repo, &[]);
    assert_eq!(wait_finished(&cluster, run)["state"], "passed");
    let local_root = cluster.data_dir.join("local-agents");
    let exit = cluster
        .coordinator
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(local_root.to_str().unwrap()),
            "left running: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
}

/// Enrolls an agent of its own and sends, for `claimed` (an attempt another agent holds), an output
/// line, a passing result and the suite's end; returns what the coordinator answered once it
/// acknowledged them (every frame, debug-printed).
fn forge_records(
    cluster: &TestCluster,
    claimed: polarizer_shared::run::SuiteRef,
    test: &str,
) -> String {
    use polarizer_shared::protocol::*;
    use polarizer_shared::run::*;
    use polarizer_transport::{client, tls, CaTrust};
    polarizer_transport::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let trust = CaTrust::from_pem_file(&cluster.data_dir.join("ca.pem")).unwrap();
        let endpoint =
            client::client_endpoint(tls::client_config(&trust).unwrap(), cluster.quic).unwrap();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Agent {
                credential: AgentCredential::Enroll {
                    token: read(&cluster.data_dir.join("agent-token"))
                        .trim()
                        .to_string(),
                    secret: "rogue-secret".into(),
                },
                facts: Box::new(polarizer_shared::AgentFacts::for_test("rogue")),
                incarnation: 1,
            },
        };
        let session = client::connect(&endpoint, cluster.quic, hello, Duration::from_secs(10))
            .await
            .unwrap();
        let mut stream = session.stream;
        let seq = session.welcome.records_committed;
        let bodies = vec![
            RecordBody::Output {
                suite: claimed,
                test: test.into(),
                stream: OutputStream::Stdout,
                line: "forged line".into(),
            },
            RecordBody::TestFinished(Box::new(TestOutcome {
                suite: claimed,
                test: test.into(),
                status: TestStatus::Pass,
                exit: Exit::Code(0),
                started_ms: 0,
                duration_ms: 1,
                message: String::new(),
                output_tail: String::new(),
                subresults: Vec::new(),
            })),
            RecordBody::SuiteFinished {
                suite: claimed,
                error: None,
            },
        ];
        let last = seq + bodies.len() as u64;
        let records = bodies
            .into_iter()
            .enumerate()
            .map(|(index, body)| Record {
                seq: seq + 1 + index as u64,
                at_ms: 0,
                body,
            })
            .collect();
        stream
            .send(&ClientFrame::Agent(AgentMessage::Records(records)))
            .await
            .unwrap();
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let (mut acked, mut cancelled) = (false, false);
        while !(acked && cancelled) {
            let frame = tokio::time::timeout_at(deadline, stream.recv::<ServerFrame>())
                .await
                .unwrap_or_else(|_| panic!("no ack and cancel within 20 s: {answers:?}"))
                .unwrap()
                .expect("an open stream");
            match &frame {
                ServerFrame::Agent(CoordinatorMessage::Ack { up_to }) if *up_to >= last => {
                    acked = true
                }
                ServerFrame::Agent(CoordinatorMessage::Cancel { .. }) => cancelled = true,
                _ => {}
            }
            answers.push(format!("{frame:?}"));
        }
        session.connection.close(0u32.into(), b"done");
        answers.join("\n")
    })
}
