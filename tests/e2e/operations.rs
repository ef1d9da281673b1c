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
