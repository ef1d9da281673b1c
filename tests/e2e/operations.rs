//! Operating the daemons: systemd's notify protocol (readiness, watchdog, stopping) and JSON logs.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use polarizer_e2e::*;

/// What systemd would receive on `NOTIFY_SOCKET`, collected until `until` holds or time runs out.
fn collect_notifications(
    socket: &UnixDatagram,
    timeout: Duration,
    until: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut received = String::new();
    let mut buffer = [0u8; 4096];
    while !until(&received) && Instant::now() < deadline {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(length) = socket.recv(&mut buffer) {
            received.push_str(&String::from_utf8_lossy(&buffer[..length]));
            received.push('\n');
        }
    }
    received
}

#[test]
fn daemons_speak_systemd_notify_and_log_json() {
    let mut cluster = TestCluster::new_coordinator_only();
    // Restart the coordinator under a fake systemd: a notify socket, a watchdog, JSON logs.
    cluster.coordinator.as_mut().unwrap().kill_9();
    let coordinator_socket_path = cluster.path("coordinator.notify");
    let coordinator_socket = UnixDatagram::bind(&coordinator_socket_path).unwrap();
    let mut command = std::process::Command::new(binary("polarizer"));
    command
        .args([
            "serve",
            "--log-format",
            "json",
            "--gossip-interval-ms",
            "100",
            "--heartbeat-interval-ms",
            "200",
        ])
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .args([
            "--gossip",
            &cluster.gossip.to_string(),
            "--quic",
            &cluster.quic.to_string(),
            "--http",
            &cluster.http.to_string(),
        ])
        .env("NOTIFY_SOCKET", &coordinator_socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut coordinator = Process::spawn(
        "coordinator",
        command,
        cluster.path("coordinator-notify.log"),
    );
    let notes = collect_notifications(&coordinator_socket, Duration::from_secs(20), |text| {
        text.contains("READY=1") && text.matches("WATCHDOG=1").count() >= 2
    });
    assert!(
        notes.contains("READY=1") && notes.contains("STATUS=listening on"),
        "{notes}"
    );
    assert!(
        notes.matches("WATCHDOG=1").count() >= 2,
        "watchdog pings expected: {notes}"
    );

    // The agent is ready only once it is connected.
    let agent_socket_path = cluster.path("agent.notify");
    let agent_socket = UnixDatagram::bind(&agent_socket_path).unwrap();
    let mut agent_command = cluster.agent_command("vm-1");
    agent_command.env("NOTIFY_SOCKET", &agent_socket_path);
    let mut agent = Process::spawn("vm-1", agent_command, cluster.path("agent-notify.log"));
    let notes = collect_notifications(&agent_socket, Duration::from_secs(20), |text| {
        text.contains("READY=1")
    });
    assert!(
        notes.contains("READY=1") && notes.contains("STATUS=connected to the coordinator"),
        "{notes}"
    );
    assert_eq!(
        cluster.agent_state("vm-1").as_deref(),
        Some("online"),
        "ready means already in the inventory"
    );

    // SIGTERM: STOPPING=1 first, then a clean exit.
    assert!(agent
        .terminate(Duration::from_secs(20))
        .expect("agent exits")
        .success());
    let notes = collect_notifications(&agent_socket, Duration::from_secs(5), |text| {
        text.contains("STOPPING=1")
    });
    assert!(notes.contains("STOPPING=1"), "{notes}");
    assert!(coordinator
        .terminate(Duration::from_secs(20))
        .expect("coordinator exits")
        .success());
    let notes = collect_notifications(&coordinator_socket, Duration::from_secs(5), |text| {
        text.contains("STOPPING=1")
    });
    assert!(notes.contains("STOPPING=1"), "{notes}");

    // Every log line the coordinator wrote to stderr is a JSON object (stdout carries the banner).
    let log = coordinator.log_text();
    assert!(
        !log.lines().any(|line| line.starts_with("20")),
        "a human log line in JSON mode: {log}"
    );
    let json_lines: Vec<&str> = log.lines().filter(|line| line.starts_with('{')).collect();
    assert!(json_lines.len() >= 2, "{log}");
    for line in json_lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

/// A committed git repository with one test that runs for a minute.
fn slow_repo(root: &std::path::Path) -> std::path::PathBuf {
    git_repo(
        root,
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "/slow:\n  test: echo started; sleep 60\n  duration: 5m\n",
            ),
        ],
    )
}

/// An operator command running in the background, its output in files.
fn watcher(cluster: &TestCluster, name: &str, args: &[&str]) -> Process {
    Process::spawn(
        name,
        cluster.operator_command(args),
        cluster.path(&format!("{name}.out")),
    )
}

/// SIGTERM stops the coordinator while operators follow events and watch a run: their streams end
/// at once instead of holding it up, each told why, and it exits without waiting out its deadline.
#[test]
fn sigterm_stops_the_coordinator_while_operators_tail_and_watch() {
    let mut cluster = TestCluster::builder().agents(1).start();
    let repo = slow_repo(&cluster.path("slow"));
    let triggered = cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]);
    assert!(triggered.status.success(), "{triggered:?}");
    let run = serde_json::from_slice::<serde_json::Value>(&triggered.stdout).unwrap()["run"]
        .as_u64()
        .unwrap()
        .to_string();
    let mut tail = watcher(&cluster, "tail", &["tail", "--run", &run, "--since", "0"]);
    let mut watch = watcher(&cluster, "watch", &["runs", "watch", &run]);
    // Both are live: the tail has shown the test's first line, the watch its header.
    wait_for("the tail to follow the run", DEADLINE, || {
        tail.log_text().contains("started")
    });
    wait_for("the watch to follow the run", DEADLINE, || {
        watch.log_text().contains(&format!("watching run {run}"))
    });

    let coordinator = cluster.coordinator.as_mut().unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(coordinator.pid().to_string())
        .status();
    // A hang would hold it up until SIGKILL; the deadline only has to tell the two apart.
    let stopped = coordinator
        .wait_exit(STOP_DEADLINE)
        .expect("the coordinator exits after SIGTERM with operators watching");
    assert!(stopped.success(), "{stopped:?}");
    let log = coordinator.log_text();
    assert!(log.contains("coordinator stopped"), "{log}");
    assert!(
        !log.contains("did not end"),
        "every session ended by itself, none was cut at the deadline: {log}"
    );

    // Each operator is told, and exits 75 (EX_TEMPFAIL): cut short, try again; not 1, which
    // `runs watch` uses for a run that did not pass.
    for (process, resume) in [
        (&mut tail, "`polarizer tail --since ".to_string()),
        (
            &mut watch,
            format!("`polarizer runs watch {run}` once it is back"),
        ),
    ] {
        let status = process
            .wait_exit(STOP_DEADLINE)
            .unwrap_or_else(|| panic!("{} ends when the coordinator stops", process.name));
        let output = process.log_text();
        assert_eq!(status.code(), Some(75), "{}: {output}", process.name);
        assert!(
            output.contains("error: the coordinator is shutting down") && output.contains(&resume),
            "{}: {output}",
            process.name
        );
    }
}

/// Long enough that only a hang misses it.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(60);
