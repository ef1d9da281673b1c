//! The foundation: gossip discovery, authenticated QUIC, the persistent inventory, and its security lines.

use std::time::Duration;

use polarizer_e2e::*;
use polarizer_shared::frame;
use polarizer_shared::protocol::*;
use polarizer_shared::AgentFacts;
use polarizer_transport::client::{client_endpoint, connect, ConnectError};
use polarizer_transport::{tls, CaTrust, Gossip, GossipConfig};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn three_agents_join_and_are_listed_online_with_their_facts() {
    let cluster = TestCluster::builder().agents(3).start();
    let inventory = cluster.inventory();
    assert_eq!(inventory.len(), 3);
    for agent in &inventory {
        for field in [
            "name",
            "state",
            "platform",
            "arch",
            "os",
            "distro",
            "kernel",
            "cpus",
            "memory_bytes",
            "labels",
            "agent_version",
            "last_seen",
        ] {
            assert!(!agent[field].is_null(), "field {field} missing in {agent}");
        }
        assert_eq!(agent["state"], "online");
        assert_eq!(agent["platform"], "vm");
        assert_eq!(agent["labels"]["team"], "rhsm");
        assert!(agent["cpus"].as_u64().unwrap() >= 1);
        assert!(agent["last_seen"].as_str().unwrap().ends_with('Z'));
    }
    let table = String::from_utf8(cluster.operator(&["agents"]).stdout).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|line| line.contains(" online "))
            .count(),
        3,
        "{table}"
    );
    // Secrets on disk are owner-only.
    use std::os::unix::fs::PermissionsExt;
    for path in [
        cluster.data_dir.join("agent-token"),
        cluster.data_dir.join("operator-token"),
        cluster.path("agent-vm-1/credential.toml"),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

#[test]
fn killed_agent_goes_offline_and_returns_with_the_same_identity() {
    let mut cluster = TestCluster::builder().agents(2).start();
    let credential = read(&cluster.path("agent-vm-1/credential.toml"));
    let first_seen = cluster.agent_record("vm-1").unwrap()["first_seen"].clone();
    cluster.agent("vm-1").kill_9();
    wait_for("vm-1 offline", WAIT, || {
        cluster.agent_state("vm-1").as_deref() == Some("offline")
    });
    assert_eq!(cluster.agent_state("vm-2").as_deref(), Some("online"));

    cluster.start_agent("vm-1", &[]);
    wait_for("vm-1 online again", WAIT, || {
        cluster.agent_state("vm-1").as_deref() == Some("online")
    });
    let agent = cluster.agent_record("vm-1").unwrap();
    assert_eq!(
        agent["first_seen"], first_seen,
        "same identity, not a new enrollment"
    );
    assert_eq!(
        read(&cluster.path("agent-vm-1/credential.toml")),
        credential
    );
    assert!(
        !cluster.agent("vm-1").log_text().contains("enrolled"),
        "the restarted agent used its credential"
    );
}

#[test]
fn agents_reconnect_after_a_coordinator_restart_and_inventory_is_kept() {
    let mut cluster = TestCluster::builder().agents(3).start();
    let before = cluster.inventory();
    cluster.coordinator.as_mut().unwrap().kill_9();
    cluster.start_coordinator(&[]);
    wait_for("all three agents back online", WAIT, || {
        cluster.online_names().len() == 3
    });
    let after = cluster.inventory();
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old["name"], new["name"]);
        assert_eq!(old["first_seen"], new["first_seen"]);
    }
    // A clean stop (SIGTERM) also keeps everything, and exits 0.
    let status = cluster
        .coordinator
        .as_mut()
        .unwrap()
        .terminate(WAIT)
        .expect("coordinator stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    // It comes back at another QUIC address: agents learn it from gossip and follow.
    cluster.quic = free_udp_addr();
    cluster.start_coordinator(&[]);
    wait_for(
        "all three agents online at the coordinator's new address",
        WAIT,
        || cluster.online_names().len() == 3,
    );
    // An agent stopped with SIGTERM exits 0 and is offline at once (it closes its connection).
    let status = cluster
        .agent("vm-3")
        .terminate(WAIT)
        .expect("agent stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    wait_for("vm-3 offline", WAIT, || {
        cluster.agent_state("vm-3").as_deref() == Some("offline")
    });
}

#[test]
fn wrong_or_missing_token_is_refused_with_a_reason() {
    let mut cluster = TestCluster::new_coordinator_only();
    let bad_token = cluster.path("bad-token");
    write_secret(
        &bad_token,
        "not-the-token
",
    );
    cluster.start_agent("intruder", &[("--token-file", bad_token.to_str().unwrap())]);
    let status = cluster
        .agent("intruder")
        .wait_exit(WAIT)
        .expect("a refused agent exits");
    assert!(!status.success());
    let log = cluster.agent("intruder").log_text();
    assert!(
        log.contains("error: the coordinator refused this agent: the enrollment token is wrong"),
        "{log}"
    );

    let output = with_args(cluster.agent_command("tokenless"), &[("--token-file", "")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no --token-file to enroll with"),
        "{stderr}"
    );
    assert!(cluster.inventory().is_empty(), "nothing enrolled");
}

#[test]
fn a_rotated_enrollment_token_takes_effect_at_once() {
    let mut cluster = TestCluster::builder().agents(1).start();
    let token_file = cluster.data_dir.join("agent-token");
    let old = read(&token_file);
    let old_copy = cluster.path("old-token");
    write_secret(&old_copy, &old);

    let output = cluster.operator(&["tokens", "rotate"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("enrollment token rotated"), "{stdout}");
    assert!(
        !stdout.contains(read(&token_file).trim()),
        "the token is never printed"
    );
    assert_ne!(read(&token_file), old);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The old token no longer enrolls anyone; the new one does, and the enrolled agent carries on.
    cluster.start_agent("late", &[("--token-file", old_copy.to_str().unwrap())]);
    let status = cluster
        .agent("late")
        .wait_exit(WAIT)
        .expect("a refused agent exits");
    assert!(!status.success());
    let log = cluster.agent("late").log_text();
    assert!(log.contains("the enrollment token is wrong"), "{log}");
    cluster.start_agent("fresh", &[]);
    wait_for("the agent with the new token online", WAIT, || {
        cluster.agent_state("fresh").as_deref() == Some("online")
    });
    assert_eq!(cluster.online_names().len(), 2);
}

/// The agent `name` exited, refused for its enrollment token.
fn refused_token(cluster: &mut TestCluster, name: &str) {
    let status = cluster
        .agent(name)
        .wait_exit(WAIT)
        .expect("a refused agent exits");
    assert!(!status.success());
    let log = cluster.agent(name).log_text();
    assert!(log.contains("the enrollment token is wrong"), "{log}");
}

/// A per-host token made for vm-7 in `token_file`: another agent presenting it is refused, vm-7
/// enrolls with it, and then it is spent: a second vm-7 (another state dir) is refused.
fn token_enrolls_vm_7_once(cluster: &mut TestCluster, token_file: &std::path::Path) {
    let token = token_file.to_str().unwrap();
    cluster.start_agent("vm-8", &[("--token-file", token)]);
    refused_token(cluster, "vm-8");
    cluster.start_agent("vm-7", &[("--token-file", token)]);
    wait_for("vm-7 online with its host token", WAIT, || {
        cluster.agent_state("vm-7").as_deref() == Some("online")
    });
    let elsewhere = cluster.path("agent-vm-7-elsewhere");
    cluster.start_agent(
        "vm-7-again",
        &[
            ("--name", "vm-7"),
            ("--token-file", token),
            ("--state-dir", elsewhere.to_str().unwrap()),
        ],
    );
    refused_token(cluster, "vm-7-again");
}

#[test]
fn an_offline_host_token_enrolls_its_one_agent_whether_or_not_the_coordinator_runs() {
    let mut cluster = TestCluster::new_coordinator_only();
    cluster
        .coordinator
        .as_mut()
        .unwrap()
        .terminate(WAIT)
        .expect("coordinator stops on SIGTERM");
    let data_dir = cluster.data_dir.to_str().unwrap().to_string();
    let offline = |args: &[&str]| {
        std::process::Command::new(binary("polarizer"))
            .args(["tokens", "create", "--offline"])
            .args(args)
            .output()
            .expect("run polarizer")
    };

    // Written while no coordinator runs; read from the database by the one that starts next.
    let token_file = cluster.path("vm-7-token");
    let output = offline(&[
        "--data-dir",
        &data_dir,
        "--name",
        "vm-7",
        "--ttl",
        "1h",
        "--output",
        token_file.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty(), "{output:?}");
    cluster.start_coordinator(&[]);
    token_enrolls_vm_7_once(&mut cluster, &token_file);

    // Beside a running coordinator too: its next hello finds the row another process wrote.
    let output = offline(&["--data-dir", &data_dir, "--name", "vm-9"]);
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(output.status.success() && printed.len() == 64, "{output:?}");
    let vm_9_token = cluster.path("vm-9-token");
    write_secret(&vm_9_token, &printed);
    cluster.start_agent("vm-9", &[("--token-file", vm_9_token.to_str().unwrap())]);
    wait_for(
        "vm-9 online with a token written beside the coordinator",
        WAIT,
        || cluster.agent_state("vm-9").as_deref() == Some("online"),
    );
    let mut online = cluster.online_names();
    online.sort();
    assert_eq!(online, ["vm-7", "vm-9"], "nobody else enrolled");

    // No database there: an error naming it, and no data dir made.
    let missing = cluster.path("no-coordinator-here");
    let output = offline(&["--data-dir", missing.to_str().unwrap(), "--name", "vm-1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    assert!(!missing.exists(), "--offline never makes a data dir");
}

#[test]
fn a_host_token_enrolls_its_one_agent_once_before_it_expires() {
    let mut cluster = TestCluster::new_coordinator_only();
    let token_file = cluster.path("vm-7-token");
    let output = cluster.operator(&[
        "tokens",
        "create",
        "--name",
        "vm-7",
        "--ttl",
        "1h",
        "--output",
        token_file.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout.is_empty(),
        "a token written to a file is not printed"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    token_enrolls_vm_7_once(&mut cluster, &token_file);

    // Printed when no file is named; expired at once with a zero TTL.
    let output = cluster.operator(&["tokens", "create", "--name", "vm-9", "--ttl", "0s"]);
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(output.status.success() && printed.len() == 64, "{printed}");
    let expired = cluster.path("vm-9-token");
    write_secret(&expired, &printed);
    cluster.start_agent("vm-9", &[("--token-file", expired.to_str().unwrap())]);
    refused_token(&mut cluster, "vm-9");
    let output = cluster.operator(&["tokens", "create", "--name", "bad name!", "--ttl", "1h"]);
    assert!(!output.status.success());
    assert_eq!(cluster.inventory().len(), 1, "only vm-7 enrolled");
}

#[test]
fn under_enroll_approve_a_new_agent_waits_as_pending_until_an_operator_approves_it() {
    let mut cluster = TestCluster::new_coordinator_only_with(&["--enroll", "approve"]);
    // The token is still required: a wrong one is refused outright, never listed as pending.
    let bad_token = cluster.path("bad-token");
    write_secret(&bad_token, "not-the-token\n");
    cluster.start_agent("intruder", &[("--token-file", bad_token.to_str().unwrap())]);
    assert!(cluster.agent("intruder").wait_exit(WAIT).is_some());

    cluster.start_agent("vm-1", &[]);
    wait_for("vm-1 listed as pending", WAIT, || {
        cluster.agent_state("vm-1").as_deref() == Some("pending")
    });
    wait_for("vm-1 says it waits for approval", WAIT, || {
        cluster
            .agent("vm-1")
            .log_text()
            .contains("polarizer agents approve vm-1")
    });
    assert!(
        cluster.agent("vm-1").wait_exit(Duration::ZERO).is_none(),
        "a pending agent keeps trying, it does not exit"
    );
    let listed: Vec<String> = cluster
        .inventory()
        .iter()
        .map(|agent| agent["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["vm-1"]);

    let output = cluster.operator(&["agents", "approve", "nobody"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no agent named \"nobody\""), "{stderr}");

    let output = cluster.operator(&["agents", "approve", "vm-1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("approved vm-1"));
    wait_for("vm-1 online once approved", WAIT, || {
        cluster.agent_state("vm-1").as_deref() == Some("online")
    });
    let output = cluster.operator(&["agents", "approve", "vm-1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("not waiting for approval"),
        "{stderr}"
    );
}

#[test]
fn agent_refuses_a_rogue_coordinator_named_by_gossip() {
    // A rogue `polarizer serve` with its own CA runs first; the agent joins its gossip, but pins the real CA.
    let mut rogue = TestCluster::new_coordinator_only();
    let mut real = TestCluster::new_coordinator_only();
    let rogue_gossip = rogue.gossip.to_string();
    let agent = with_args(real.agent_command("vm-1"), &[("--join", &rogue_gossip)]);
    let mut process = Process::spawn("vm-1", agent, real.path("agent-vm-1.log"));
    wait_for("the agent to refuse the rogue coordinator", WAIT, || {
        process.log_text().contains("refusing coordinator")
    });
    assert!(
        rogue.inventory().is_empty(),
        "the rogue never learned anything"
    );
    assert!(real.inventory().is_empty());
    // The real coordinator joins the same gossip: the agent finds it and connects.
    real.coordinator.as_mut().unwrap().kill_9();
    let join = rogue.gossip.to_string();
    real.start_coordinator(&["--join", &join]);
    wait_for("the agent online at the real coordinator", WAIT, || {
        real.agent_state("vm-1").as_deref() == Some("online")
    });
    assert!(rogue.inventory().is_empty());
    process.kill_9();
    rogue.agents.clear();
}

#[test]
fn revoked_agent_is_refused_and_a_wrong_operator_token_too() {
    let mut cluster = TestCluster::builder().agents(2).start();
    let output = cluster.operator(&["agents", "revoke", "vm-1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("revoked vm-1"));
    // The online agent is cut off and stops for good, with the reason.
    let status = cluster
        .agent("vm-1")
        .wait_exit(WAIT)
        .expect("revoked agent exits");
    // With its own status, so that systemd does not restart it (RestartPreventExitStatus=).
    assert_eq!(
        status.code(),
        Some(i32::from(polarizer_transport::daemon::EXIT_REFUSED)),
        "{status:?}"
    );
    assert!(
        cluster.agent("vm-1").log_text().contains("revoked"),
        "{}",
        cluster.agent("vm-1").log_text()
    );
    assert_eq!(cluster.agent_state("vm-1").as_deref(), Some("revoked"));
    // Starting it again with its credential is refused; so is enrolling the name again with the token.
    cluster.start_agent("vm-1", &[]);
    let status = cluster.agent("vm-1").wait_exit(WAIT).expect("refused");
    assert_eq!(
        status.code(),
        Some(i32::from(polarizer_transport::daemon::EXIT_REFUSED)),
        "{status:?}"
    );
    assert!(cluster
        .agent("vm-1")
        .log_text()
        .contains("agent \"vm-1\" is revoked"));
    std::fs::remove_dir_all(cluster.path("agent-vm-1")).unwrap();
    cluster.start_agent("vm-1", &[]);
    assert!(!cluster
        .agent("vm-1")
        .wait_exit(WAIT)
        .expect("refused")
        .success());
    assert_eq!(cluster.agent_state("vm-2").as_deref(), Some("online"));
    // Revoking an unknown name is an error naming it.
    let output = cluster.operator(&["agents", "revoke", "nobody"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no agent named \"nobody\""));

    let wrong = cluster.path("wrong-operator-token");
    write_secret(
        &wrong, "guess
",
    );
    let output = cluster.operator(&["agents", "--token-file", wrong.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the operator token is wrong"), "{stderr}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn gossip_claims_never_enter_the_inventory() {
    let cluster = TestCluster::builder().agents(1).start();
    let runtime = runtime();
    // A gossip node that claims to be agent "ghost" and also "vm-1" with another address.
    let ghost_addr = free_udp_addr();
    let ghost = runtime.block_on(async {
        Gossip::start(GossipConfig {
            node_id: "agent/ghost".into(),
            listen_addr: ghost_addr,
            advertise_addr: ghost_addr,
            seeds: vec![cluster.gossip.to_string()],
            cluster_id: "polarizer".into(),
            interval: Duration::from_millis(100),
            advertised: vec![
                ("role".into(), "agent".into()),
                ("agent_name".into(), "ghost".into()),
            ],
        })
        .await
        .unwrap()
    });
    // Once the ghost has the coordinator's state, the coordinator has had the ghost's claim too (a gossip
    // round exchanges both ways). The ghost's gossip runs while this thread is inside `block_on`.
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + WAIT;
        while ghost.coordinator_candidates().await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ghost's gossip never reached the coordinator"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // several gossip rounds for the claim to land
    });
    assert!(
        cluster
            .inventory()
            .iter()
            .all(|agent| agent["name"] != "ghost"),
        "a gossip claim created an inventory row"
    );
    assert_eq!(cluster.inventory().len(), 1);
    runtime.block_on(ghost.shutdown());
}

#[test]
fn oversize_and_garbage_frames_do_not_disturb_other_agents() {
    let cluster = TestCluster::builder().agents(2).start();
    let runtime = runtime();
    polarizer_transport::install_crypto_provider();
    let trust = CaTrust::from_pem_file(&cluster.data_dir.join("ca.pem")).unwrap();
    let endpoint = runtime.block_on(async {
        client_endpoint(tls::client_config(&trust).unwrap(), cluster.quic).unwrap()
    });

    let send_raw = |bytes: Vec<u8>| {
        runtime.block_on(async {
            let connection = endpoint
                .connect(cluster.quic, tls::server_name())
                .unwrap()
                .await
                .unwrap();
            let (mut send, _recv) = connection.open_bi().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed())
                .await
                .expect("coordinator closes the connection");
            reason.to_string()
        })
    };
    // A length prefix of 1 GiB: refused from the header alone.
    let reason = send_raw((1u32 << 30).to_be_bytes().to_vec());
    assert!(reason.contains("over the limit"), "{reason}");
    // Bytes that are not a frame of anything.
    let mut garbage = 7u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 7]);
    let reason = send_raw(garbage);
    assert!(
        reason.contains("refused") || reason.contains("closed"),
        "{reason}"
    );

    // A hello from a future protocol version is refused with both versions named.
    let refusal = runtime.block_on(async {
        let hello = Hello {
            protocol_version: 999,
            peer: Peer::Operator { token: "x".into() },
        };
        match connect(&endpoint, cluster.quic, hello, Duration::from_secs(10)).await {
            Err(ConnectError::Refused { refusal, .. }) => refusal,
            Err(other) => panic!("expected a refusal, got {other}"),
            Ok(_) => panic!("expected a refusal, got a welcome"),
        }
    });
    assert_eq!(
        refusal,
        Refusal::VersionMismatch {
            coordinator: PROTOCOL_VERSION,
            peer: 999
        }
    );

    // An agent hello with a valid token but a name that is no name.
    let token = read(&cluster.data_dir.join("agent-token"))
        .trim()
        .to_string();
    let refusal = runtime.block_on(async {
        let mut facts = AgentFacts::for_test("bad name!");
        facts.name = "bad name!".into();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Agent {
                credential: AgentCredential::Enroll {
                    token,
                    secret: "s".into(),
                },
                facts: Box::new(facts),
                incarnation: 1,
            },
        };
        match connect(&endpoint, cluster.quic, hello, Duration::from_secs(10)).await {
            Err(ConnectError::Refused { refusal, .. }) => refusal,
            _ => panic!("expected a refusal"),
        }
    });
    assert!(
        matches!(refusal, Refusal::InvalidHello { .. }),
        "{refusal:?}"
    );
    assert!(frame::encode(&ClientFrame::Agent(AgentMessage::Heartbeat)).is_ok());

    // Everyone else carried on: both agents are online and still sending heartbeats.
    let before = last_seen(&cluster);
    wait_for("heartbeats still arriving", WAIT, || {
        last_seen(&cluster)
            .iter()
            .zip(&before)
            .all(|(now, then)| now > then)
    });
    assert_eq!(cluster.online_names().len(), 2);
    let metrics = http_get(cluster.http, "/metrics");
    // The oversize frame is a protocol error; the garbage, the future version and the bad name were
    // each answered as a refused hello.
    assert!(
        metrics.contains("polarizer_protocol_errors_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("polarizer_refusals_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("polarizer_agents{state=\"online\"} 2"),
        "{metrics}"
    );
}

/// Every agent's `last_seen`, in inventory order: it moves on with each heartbeat.
fn last_seen(cluster: &TestCluster) -> Vec<String> {
    cluster
        .inventory()
        .iter()
        .map(|agent| agent["last_seen"].as_str().unwrap().to_string())
        .collect()
}

/// Resident memory of a process, in KiB (from /proc).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn oversize_hellos_from_many_peers_cost_the_coordinator_nothing() {
    let mut cluster = TestCluster::builder().agents(3).start();
    let pid = cluster.coordinator.as_mut().expect("coordinator").pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    polarizer_transport::install_crypto_provider();
    let trust = CaTrust::from_pem_file(&cluster.data_dir.join("ca.pem")).unwrap();
    let endpoint = runtime.block_on(async {
        client_endpoint(tls::client_config(&trust).unwrap(), cluster.quic).unwrap()
    });
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let attacking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, attacking) = (peak.clone(), attacking.clone());
        std::thread::spawn(move || {
            while attacking.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Twenty peers at once, each announcing a hello just under the general 16 MiB frame limit and
    // streaming 8 MiB of it: with no cap before authentication, that is 160 MiB buffered.
    let reasons: Vec<String> = runtime.block_on(async {
        let mut peers = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (endpoint, quic) = (endpoint.clone(), cluster.quic);
            peers.spawn(async move {
                let connection = endpoint.connect(quic, tls::server_name()).unwrap().await?;
                let (mut send, _recv) = connection.open_bi().await?;
                if send
                    .write_all(&((16u32 << 20) - 1).to_be_bytes())
                    .await
                    .is_err()
                {
                    return Ok(connection.closed().await.to_string());
                }
                let chunk = vec![0u8; 64 * 1024];
                for _ in 0..128 {
                    if send.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let reason = tokio::time::timeout(Duration::from_secs(15), connection.closed())
                    .await
                    .map(|reason| reason.to_string())
                    .unwrap_or_else(|_| "still open after 15 s".into());
                Ok::<_, quinn::ConnectionError>(reason)
            });
        }
        let mut reasons = Vec::new();
        while let Some(joined) = peers.join_next().await {
            reasons.push(match joined.unwrap() {
                Ok(reason) => reason,
                Err(err) => err.to_string(),
            });
        }
        reasons
    });
    attacking.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let growth_mib = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)
        / 1024;
    assert!(
        growth_mib < 48,
        "the coordinator grew by {growth_mib} MiB under 20 oversize hellos"
    );
    for reason in &reasons {
        assert!(reason.contains("over the limit"), "{reason}");
    }

    // The agents never noticed: all online, heartbeats still arriving.
    let then = last_seen(&cluster);
    wait_for("heartbeats still arriving", WAIT, || {
        let now = last_seen(&cluster);
        now.len() == 3 && now.iter().zip(&then).all(|(now, then)| now > then)
    });
    assert_eq!(cluster.online_names().len(), 3);
}

#[test]
fn config_files_and_environment_configure_both_daemons() {
    let mut cluster = TestCluster::new_coordinator_only();
    // The agent takes everything from a TOML file, its name from the environment.
    let config = cluster.path("agent.toml");
    std::fs::write(
        &config,
        format!(
            "join = [\"{}\"]\ngossip = \"{}\"\ntoken_file = \"{}\"\nca = \"{}\"\nstate_dir = \"{}\"\ngossip_interval_ms = 100\n[labels]\nrack = \"r3\"\n",
            cluster.gossip,
            free_udp_addr(),
            cluster.data_dir.join("agent-token").display(),
            cluster.data_dir.join("ca.pem").display(),
            cluster.path("agent-from-file").display(),
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(binary("polarizer-agent"));
    command
        .arg("--config")
        .arg(&config)
        .env("POLARIZER_NAME", "from-env");
    let check = std::process::Command::new(binary("polarizer-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .env("POLARIZER_NAME", "from-env")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let process = Process::spawn("from-env", command, cluster.path("agent-from-env.log"));
    cluster.agents.push(("from-env".into(), process));
    wait_for("the configured agent online", WAIT, || {
        cluster.agent_state("from-env").as_deref() == Some("online")
    });
    let agent = cluster.agent_record("from-env").unwrap();
    assert_eq!(agent["labels"]["rack"], "r3");

    // A typo in a config file is an error naming the file, the key and the line; nothing starts.
    let bad = cluster.path("coordinator.toml");
    std::fs::write(&bad, "quic = \"127.0.0.1:1\"\nhttp_port = 80\n").unwrap();
    let output = std::process::Command::new(binary("polarizer"))
        .args(["serve", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("coordinator.toml")
            && stderr.contains("http_port")
            && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn demo_shows_agents_joining_and_leaves_nothing_behind() {
    let output = std::process::Command::new(binary("polarizer"))
        .args(["demo", "--agents", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["demo-1", "demo-2", "demo-3"] {
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(name) && line.contains("online")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("everything stopped and cleaned up"),
        "{stdout}"
    );
    let workspace = stdout
        .lines()
        .next()
        .and_then(|line| line.rsplit(" in ").next())
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !std::path::Path::new(&workspace).exists(),
        "{workspace} was not removed"
    );
}

/// Enrollment survives a crash on either side of the coordinator's commit: the agent stores its secret
/// before sending it, so it always holds what the coordinator may have recorded.
#[test]
fn enrollment_survives_a_crash_before_or_after_the_commit() {
    let mut cluster = TestCluster::new_coordinator_only();
    let ca = read(&cluster.data_dir.join("ca.pem"));
    let fingerprint = {
        let CaTrust::Certificate(der) =
            CaTrust::from_pem_file(&cluster.data_dir.join("ca.pem")).unwrap()
        else {
            unreachable!()
        };
        tls::fingerprint(&der)
    };
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let write_credential = |dir: &std::path::Path, name: &str, secret: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let credential = format!("version = 1\nname = \"{name}\"\nsecret = \"{secret}\"\nca_fingerprint = \"{fingerprint}\"\n");
        write_secret(&dir.join("credential.toml"), &credential);
    };

    // Crash before the commit: the agent stored a secret the coordinator never saw.
    write_credential(&cluster.path("agent-early"), "early", "never-sent");
    cluster.start_agent("early", &[]);
    wait_for("early online", WAIT, || {
        cluster.agent_state("early").as_deref() == Some("online")
    });

    // Crash after the commit: the coordinator recorded the enrollment, the agent never saw the welcome.
    let runtime = runtime();
    let token = read(&cluster.data_dir.join("agent-token"))
        .trim()
        .to_string();
    runtime.block_on(async {
        let trust = CaTrust::from_pem_file(&cluster.data_dir.join("ca.pem")).unwrap();
        let endpoint = client_endpoint(tls::client_config(&trust).unwrap(), cluster.quic).unwrap();
        let facts = Box::new(AgentFacts::for_test("late"));
        let credential = AgentCredential::Enroll {
            token,
            secret: "sent-once".into(),
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Agent {
                credential,
                facts,
                incarnation: 1,
            },
        };
        let session = connect(&endpoint, cluster.quic, hello, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(session.welcome.enrolled);
        session.connection.close(0u32.into(), b"crash");
    });
    wait_for("late offline after its crash", WAIT, || {
        cluster.agent_state("late").as_deref() == Some("offline")
    });
    write_credential(&cluster.path("agent-late"), "late", "sent-once");
    cluster.start_agent("late", &[]);
    wait_for("late online with the secret it stored", WAIT, || {
        cluster.agent_state("late").as_deref() == Some("online")
    });
    assert_eq!(cluster.inventory().len(), 2);
}
