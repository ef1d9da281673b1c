//! Gossip membership (chitchat over UDP): where the coordinator is and who is alive. Nothing read here is
//! trusted; addresses learned from gossip are only ever dialled through pinned-CA TLS.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use chitchat::transport::UdpTransport;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use polarizer_shared::membership::*;

use crate::cells::{CellsConfig, Hub};

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
    inner: Inner,
}

enum Inner {
    /// An agent: one node in its cell.
    One(ChitchatHandle),
    /// The coordinator: a node in every cell, behind one socket.
    Cells {
        hub: Arc<Hub>,
        router: tokio::task::JoinHandle<()>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start gossip on {addr}: {source:#}")]
pub struct GossipError {
    pub addr: SocketAddr,
    #[source]
    pub source: anyhow::Error,
}

/// The generation must grow at every restart so peers drop the previous incarnation's state.
fn new_generation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn chitchat_config(config: &GossipConfig, generation: u64) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.clone(), generation, config.advertise_addr),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: config.interval,
        listen_addr: config.listen_addr,
        seed_nodes: config.seeds.clone(),
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
    }
}

impl Gossip {
    /// One node, in the cell `config.cluster_id` names (see [`cell_cluster_id`]).
    ///
    /// [`cell_cluster_id`]: polarizer_shared::membership::cell_cluster_id
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        Self::start_on(config, &UdpTransport).await
    }

    /// [`start`](Self::start) over another transport (a benchmark's, counting bytes).
    pub async fn start_on(
        config: GossipConfig,
        transport: &dyn chitchat::transport::Transport,
    ) -> Result<Gossip, GossipError> {
        let handle = chitchat::spawn_chitchat(
            chitchat_config(&config, new_generation()),
            config.advertised,
            transport,
        )
        .await
        .map_err(|source| GossipError {
            addr: config.listen_addr,
            source,
        })?;
        Ok(Gossip {
            inner: Inner::One(handle),
        })
    }

    /// The coordinator's gossip: a member of the cluster `config.cluster_id` (the default cell) and of
    /// each cell of it whose agents gossip with it, all on the one address (see [`crate::cells`]).
    pub async fn start_cells(
        config: GossipConfig,
        cells: CellsConfig,
    ) -> Result<Gossip, GossipError> {
        let addr = config.listen_addr;
        let failed = |source: anyhow::Error| GossipError { addr, source };
        let (hub, socket, outgoing) = Hub::bind(config, new_generation(), cells)
            .await
            .map_err(failed)?;
        let router = tokio::spawn(hub.clone().route(socket, outgoing));
        if let Err(err) = hub.join(DEFAULT_CELL).await {
            router.abort();
            return Err(failed(err));
        }
        Ok(Gossip {
            inner: Inner::Cells { hub, router },
        })
    }

    /// Each cell's chitchat state, by cell name ("" for the default cell).
    fn chitchats(&self) -> Vec<(String, Arc<tokio::sync::Mutex<Chitchat>>)> {
        match &self.inner {
            Inner::One(handle) => vec![(String::new(), handle.chitchat())],
            Inner::Cells { hub, .. } => {
                let cells = hub.cells.lock().expect("cells lock");
                let mut chitchats: Vec<_> = cells
                    .iter()
                    .map(|(name, cell)| (name.clone(), cell.handle.chitchat()))
                    .collect();
                chitchats.sort_by(|a, b| a.0.cmp(&b.0));
                chitchats
            }
        }
    }

    /// QUIC addresses advertised by live nodes claiming to be coordinators, newest incarnation first.
    /// Unauthenticated: dial them through pinned TLS only.
    pub async fn coordinator_candidates(&self) -> Vec<SocketAddr> {
        let mut candidates: Vec<(u64, SocketAddr)> = Vec::new();
        for (_, chitchat) in self.chitchats() {
            let chitchat = chitchat.lock().await;
            candidates.extend(chitchat.live_nodes().filter_map(|id| {
                let state = chitchat.node_state(id)?;
                if state.get(KEY_ROLE) != Some(ROLE_COORDINATOR) {
                    return None;
                }
                let addr = state.get(KEY_QUIC_ADDR)?.parse().ok()?;
                Some((id.generation_id, addr))
            }));
        }
        candidates.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
        let mut seen = BTreeSet::new();
        candidates
            .into_iter()
            .map(|(_, addr)| addr)
            .filter(|addr| seen.insert(*addr))
            .collect()
    }

    /// Names of agents gossip currently sees alive, in any cell.
    pub async fn live_agent_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (_, chitchat) in self.chitchats() {
            let chitchat = chitchat.lock().await;
            names.extend(chitchat.live_nodes().filter_map(|id| {
                let state = chitchat.node_state(id)?;
                (state.get(KEY_ROLE) == Some(ROLE_AGENT))
                    .then(|| state.get(KEY_AGENT_NAME).map(str::to_string))?
            }));
        }
        names
    }

    /// Every cell this node is in, with how many other nodes it sees alive there ("" is the default
    /// cell).
    pub async fn cells(&self) -> Vec<(String, usize)> {
        let mut cells = Vec::new();
        for (name, chitchat) in self.chitchats() {
            let chitchat = chitchat.lock().await;
            let own = chitchat.self_chitchat_id().clone();
            cells.push((name, chitchat.live_nodes().filter(|id| **id != own).count()));
        }
        cells
    }

    pub async fn shutdown(self) {
        match self.inner {
            Inner::One(handle) => {
                let _ = handle.shutdown().await;
            }
            Inner::Cells { hub, router } => {
                router.abort();
                let cells: Vec<_> = hub.cells.lock().expect("cells lock").drain().collect();
                for (_, cell) in cells {
                    let _ = cell.handle.shutdown().await;
                }
            }
        }
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
