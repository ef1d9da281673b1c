//! Finding the coordinator through gossip: what nodes advertising dead coordinator addresses can cost an
//! agent that reconnects.

use std::net::SocketAddr;
use std::time::Duration;

use polarizer_e2e::*;
use polarizer_shared::membership::{KEY_QUIC_ADDR, KEY_ROLE, ROLE_COORDINATOR};
use polarizer_transport::{Gossip, GossipConfig};

const WAIT: Duration = Duration::from_secs(30);
/// Gossip nodes that each claim to be a coordinator at a QUIC address nobody listens on.
const ROGUES: usize = 10;
/// A bound that separates the two behaviours, not a speed target: an agent that dials its last good
/// address first and at most 4 gossip candidates for 1 s each per round is back within ~6 s; one that
/// dials every advertised address for 5 s each needs a 50 s round before it reaches the coordinator.
const BACK_ONLINE: Duration = Duration::from_secs(10);

/// Starts a gossip node claiming to be a coordinator at `dead_quic`, seeded at `seed`.
fn rogue_coordinator(
    runtime: &tokio::runtime::Runtime,
    index: usize,
    seed: SocketAddr,
    dead_quic: SocketAddr,
) -> Gossip {
    let listen = free_udp_addr();
    runtime
        .block_on(Gossip::start(GossipConfig {
            node_id: format!("coordinator/rogue-{index}"),
            listen_addr: listen,
            advertise_addr: listen,
            seeds: vec![seed.to_string()],
            cluster_id: "polarizer".into(),
            interval: Duration::from_millis(100),
            advertised: vec![
                (KEY_ROLE.into(), ROLE_COORDINATOR.into()),
                (KEY_QUIC_ADDR.into(), dead_quic.to_string()),
            ],
        }))
        .expect("rogue gossip node starts")
}

#[test]
fn dead_coordinator_addresses_in_gossip_do_not_delay_a_reconnect() {
    let mut cluster = TestCluster::new_coordinator_only();
    let agent_gossip = free_udp_addr();
    cluster.start_agent("vm-1", &[("--gossip", &agent_gossip.to_string())]);
    wait_for("vm-1 online", WAIT, || {
        cluster.agent_state("vm-1").as_deref() == Some("online")
    });
    // A worker thread keeps the rogues gossiping while this thread waits.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dead_quic: Vec<SocketAddr> = (0..ROGUES).map(|_| free_udp_addr()).collect();
    // Started after the coordinator, the rogues advertise newer generations than it does.
    let rogues: Vec<Gossip> = dead_quic
        .iter()
        .enumerate()
        .map(|(index, quic)| rogue_coordinator(&runtime, index, agent_gossip, *quic))
        .collect();

    // The coordinator dies; once the agent is dialling the dead addresses, it comes back where it was.
    cluster.coordinator.as_mut().unwrap().kill_9();
    let dials_a_dead_address = |log: &str| {
        log.lines().any(|line| {
            line.contains("cannot connect to coordinator")
                && dead_quic
                    .iter()
                    .any(|addr| line.contains(&format!("={addr} ")))
        })
    };
    wait_for(
        "the agent to dial an address a rogue advertised",
        WAIT,
        || dials_a_dead_address(&cluster.agent("vm-1").log_text()),
    );
    cluster.start_coordinator(&[]);
    wait_for("vm-1 back online despite the rogues", BACK_ONLINE, || {
        cluster.agent_state("vm-1").as_deref() == Some("online")
    });

    for rogue in rogues {
        runtime.block_on(rogue.shutdown());
    }
}

/// Gossip cells (issue 21): agents of two cells and of the default one, seeded with the coordinator's one
/// gossip address, all come online; the coordinator counts each cell's members; an agent of a cell the
/// coordinator does not join never finds it, and the coordinator's log names that cell and its peer.
#[test]
fn agents_in_cells_find_the_coordinator_through_its_one_gossip_port() {
    let mut cluster = TestCluster::new_coordinator_only_with(&["--cells", "brno,westford"]);
    for (name, cell) in [
        ("a1", "brno"),
        ("a2", "brno"),
        ("b1", "westford"),
        ("x1", "elsewhere"),
    ] {
        cluster.start_agent(name, &[("--cell", cell)]);
    }
    cluster.start_agent("d1", &[]);
    wait_for("the agents of the coordinator's cells online", WAIT, || {
        ["a1", "a2", "b1", "d1"]
            .iter()
            .all(|name| cluster.agent_state(name).as_deref() == Some("online"))
    });
    wait_for("each cell's members counted", WAIT, || {
        let metrics = http_get(cluster.http, "/metrics");
        metrics.contains("polarizer_gossip_cell_members{cell=\"brno\"} 2\n")
            && metrics.contains("polarizer_gossip_cell_members{cell=\"westford\"} 1\n")
            && metrics.contains("polarizer_gossip_cell_members{cell=\"\"} 1\n")
    });
    let coordinator = cluster.coordinator.as_ref().expect("coordinator");
    wait_for("the refused cell named in the log", WAIT, || {
        let log = coordinator.log_text();
        log.contains("elsewhere") && log.contains("not one of the coordinator's `cells`")
    });
    assert_eq!(
        cluster.agent_state("x1"),
        None,
        "x1 never reached the coordinator"
    );
    assert!(!http_get(cluster.http, "/metrics").contains("cell=\"elsewhere\""));

    // The inventory in pages, by name: each starts after the last name of the one before.
    let page = |args: &[&str]| -> Vec<String> {
        let listed = ok_json(cluster.operator(&[&["agents", "--json"], args].concat()));
        listed
            .as_array()
            .expect("an array")
            .iter()
            .map(|agent| agent["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(page(&["--limit", "2"]), ["a1", "a2"]);
    assert_eq!(page(&["--limit", "2", "--after", "a2"]), ["b1", "d1"]);
    assert!(page(&["--after", "d1"]).is_empty());
}
