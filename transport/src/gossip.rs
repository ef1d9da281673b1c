//! Gossip membership (chitchat over UDP): where the coordinator is and who is alive. Nothing read here is
//! trusted; addresses learned from gossip are only ever dialled through pinned-CA TLS.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use polarizer_shared::membership::*;

#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub node_id: String,
    pub listen_addr: SocketAddr,
    /// The address peers gossip with this node at (differs from `listen_addr` on 0.0.0.0).
    pub advertise_addr: SocketAddr,
    pub seeds: Vec<String>,
    pub cluster_id: String,
    pub interval: Duration,
    /// Key-values this node advertises (role, addresses, name).
    pub advertised: Vec<(String, String)>,
}

pub struct Gossip {
    handle: ChitchatHandle,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start gossip on {addr}: {source:#}")]
pub struct GossipError {
    pub addr: SocketAddr,
    #[source]
    pub source: anyhow::Error,
}

impl Gossip {
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        Self::start_on(config, &UdpTransport).await
    }

    /// [`start`](Self::start) over another transport (a benchmark's, counting bytes).
    pub async fn start_on(
        config: GossipConfig,
        transport: &dyn chitchat::transport::Transport,
    ) -> Result<Gossip, GossipError> {
        // The generation must grow at every restart so peers drop the previous incarnation's state.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id, generation, config.advertise_addr),
            cluster_id: config.cluster_id,
            gossip_interval: config.interval,
            listen_addr: config.listen_addr,
            seed_nodes: config.seeds,
            failure_detector_config: FailureDetectorConfig {
                // Without this a fresh cluster takes 10 s+ to notice its first dead node.
                initial_interval: config.interval,
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, config.advertised, transport)
            .await
            .map_err(|source| GossipError {
                addr: config.listen_addr,
                source,
            })?;
        Ok(Gossip { handle })
    }

    /// QUIC addresses advertised by live nodes claiming to be coordinators, newest incarnation first.
    /// Unauthenticated: dial them through pinned TLS only.
    pub async fn coordinator_candidates(&self) -> Vec<SocketAddr> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let mut candidates: Vec<(u64, SocketAddr)> = chitchat
            .live_nodes()
            .filter_map(|id| {
                let state = chitchat.node_state(id)?;
                if state.get(KEY_ROLE) != Some(ROLE_COORDINATOR) {
                    return None;
                }
                let addr = state.get(KEY_QUIC_ADDR)?.parse().ok()?;
                Some((id.generation_id, addr))
            })
            .collect();
        candidates.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
        let mut seen = BTreeSet::new();
        candidates
            .into_iter()
            .map(|(_, addr)| addr)
            .filter(|addr| seen.insert(*addr))
            .collect()
    }

    /// Names of agents gossip currently sees alive.
    pub async fn live_agent_names(&self) -> BTreeSet<String> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        chitchat
            .live_nodes()
            .filter_map(|id| {
                let state = chitchat.node_state(id)?;
                (state.get(KEY_ROLE) == Some(ROLE_AGENT))
                    .then(|| state.get(KEY_AGENT_NAME).map(str::to_string))?
            })
            .collect()
    }

    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

/// The address peers should dial for a socket listening on `listen`: the listen address itself, or, when
/// it listens on every interface, `advertise` (else the detected outbound IP) with the same port.
pub fn advertised_addr(listen: SocketAddr, advertise: Option<std::net::IpAddr>) -> SocketAddr {
    match advertise {
        Some(ip) => SocketAddr::new(ip, listen.port()),
        None if listen.ip().is_unspecified() => SocketAddr::new(detect_local_ip(), listen.port()),
        None => listen,
    }
}

/// The local IP the kernel would use for an outbound route (no packet is sent); loopback without one.
fn detect_local_ip() -> std::net::IpAddr {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.connect("192.0.2.1:9")?;
        Ok(socket.local_addr()?.ip())
    };
    probe().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// Resolves port 0 to a concrete free UDP port (chitchat must advertise the port it listens on).
pub fn concrete_udp_addr(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let socket = std::net::UdpSocket::bind(listen)?;
    socket.local_addr()
}
