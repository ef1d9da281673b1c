//! Gossip in cells, the coordinator's side: one UDP port, one chitchat cluster per cell behind it.
//!
//! A flat chitchat cluster sends its whole digest (one entry per node) to three peers every round, so
//! its traffic grows with the square of its size and its digest outgrows a datagram near a thousand
//! nodes. Agents therefore gossip in cells (a site, a rack, a pool: `cell = "brno-lab"`), each its own
//! chitchat cluster with the id `CLUSTER/CELL`, and the coordinator is a member of every one. Agents
//! keep the coordinator's one gossip address as their seed: this hub reads each datagram's cluster id
//! (in a SYN) or remembers which cell last spoke with its sender (a SYN-ACK, an ACK), and hands it to
//! that cell's chitchat instance. A cell is joined when its first member gossips, up to a limit, or
//! only among the cells an operator lists. Nothing here is trusted: a cell name is a routing key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatHandle, ChitchatMessage};

use crate::gossip::{chitchat_config, GossipConfig};
use polarizer_shared::membership::{cell_cluster_id, check_cell_name, DEFAULT_CELL, MAX_CELL_NAME};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Which cells a coordinator joins besides the default one.
#[derive(Clone, Debug)]
pub struct CellsConfig {
    /// Only these cells; empty: any well-formed cell name, up to `max`.
    pub allowed: Vec<String>,
    /// At most this many cells (the default one included).
    pub max: usize,
}

impl Default for CellsConfig {
    fn default() -> Self {
        CellsConfig {
            allowed: Vec::new(),
            max: 256,
        }
    }
}

/// The coordinator gossips in a cell other than the default one at most this often.
pub const CELL_GOSSIP_FLOOR: Duration = Duration::from_secs(1);
/// Datagrams waiting for one cell's chitchat: past this, as a full socket buffer would, they are dropped.
const INBOX: usize = 1024;
/// Peers whose cell the hub remembers; past this the memory starts over (live peers are relearned
/// within a gossip round).
const MAX_PEERS: usize = 65_536;
/// Refused cell names logged (once each); past this, refusals are only counted.
const MAX_REFUSED_NAMES: usize = 256;
/// Datagrams the cells have handed the socket, not yet sent.
const OUTBOX: usize = 4096;

/// A datagram a cell sends, and where to say how many bytes went.
type Outgoing = (
    SocketAddr,
    ChitchatEnvelope,
    oneshot::Sender<anyhow::Result<SendOutcome>>,
);

/// The cells this coordinator is a member of, by cell name ("" for the default cell).
pub(crate) struct Hub {
    local_addr: SocketAddr,
    cluster: String,
    config: CellsConfig,
    pub(crate) cells: Mutex<HashMap<String, HubCell>>,
    /// Which cell (its cluster id) a peer gossips in.
    peers: Arc<Mutex<HashMap<SocketAddr, String>>>,
    refused: Mutex<HashSet<String>>,
    outbox: mpsc::Sender<Outgoing>,
    /// Every cell's chitchat node is this one, in another cluster.
    template: GossipConfig,
    generation: u64,
}

pub(crate) struct HubCell {
    pub(crate) handle: ChitchatHandle,
    inbox: mpsc::Sender<RecvOutcome>,
}

impl Hub {
    /// Binds the gossip socket; [`route`](Self::route) then serves it.
    pub(crate) async fn bind(
        template: GossipConfig,
        generation: u64,
        config: CellsConfig,
    ) -> anyhow::Result<(Arc<Hub>, UdpSocket, mpsc::Receiver<Outgoing>)> {
        let socket = UdpSocket::open(template.listen_addr).await?;
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        let hub = Hub {
            local_addr: socket.local_addr()?,
            cluster: template.cluster_id.clone(),
            template,
            generation,
            config,
            cells: Mutex::new(HashMap::new()),
            peers: Arc::new(Mutex::new(HashMap::new())),
            refused: Mutex::new(HashSet::new()),
            outbox,
        };
        Ok((Arc::new(hub), socket, outgoing))
    }

    /// Starts the chitchat of one cell on this hub's socket.
    pub(crate) async fn join(&self, cell: &str) -> anyhow::Result<()> {
        let cluster_id = cell_cluster_id(&self.cluster, cell);
        let (inbox, receiver) = mpsc::channel(INBOX);
        let transport = HubTransport {
            socket: Mutex::new(Some(HubSocket {
                local_addr: self.local_addr,
                outbox: self.outbox.clone(),
                peers: self.peers.clone(),
                cluster_id: cluster_id.clone(),
                inbox: receiver,
            })),
        };
        let mut config = self.template.clone();
        config.cluster_id = cluster_id;
        if !cell.is_empty() {
            // Its members come to the coordinator; the seeds it was given are the default cell's.
            config.seeds.clear();
            // Its members tell each other what the coordinator says: it need not gossip in each of a
            // hundred cells as often as in one.
            config.interval = config.interval.max(CELL_GOSSIP_FLOOR);
        }
        let handle = chitchat::spawn_chitchat(
            chitchat_config(&config, self.generation),
            config.advertised,
            &transport,
        )
        .await?;
        self.cells
            .lock()
            .expect("cells lock")
            .insert(cell.to_string(), HubCell { handle, inbox });
        Ok(())
    }

    /// Serves the socket until it fails: each datagram read goes to its cell, each a cell sends goes out.
    pub(crate) async fn route(
        self: Arc<Self>,
        mut socket: UdpSocket,
        mut outgoing: mpsc::Receiver<Outgoing>,
    ) {
        loop {
            tokio::select! {
                received = socket.recv() => match received {
                    Ok(received) => self.deliver(received).await,
                    Err(err) => {
                        warn!(error = %err, "gossip socket failed; gossip stops");
                        return;
                    }
                },
                Some((to, envelope, sent)) = outgoing.recv() => {
                    let _ = sent.send(socket.send(to, envelope).await);
                }
            }
        }
    }

    /// Hands a datagram to its cell: a SYN names its cluster, an answer goes where its sender gossips.
    async fn deliver(&self, received: RecvOutcome) {
        let from = received.from_addr;
        let cell = match &received.envelope.message {
            ChitchatMessage::Syn { cluster_id, .. } => {
                let Some(cell) = self.cell_of(cluster_id, from).await else {
                    return;
                };
                remember(&self.peers, from, cluster_id);
                cell
            }
            _ => {
                let cluster_id = self.peers.lock().expect("peers lock").get(&from).cloned();
                match cluster_id.and_then(|id| self.cell_name(&id)) {
                    Some(cell) => cell,
                    None => return,
                }
            }
        };
        let inbox = self
            .cells
            .lock()
            .expect("cells lock")
            .get(&cell)
            .map(|cell| cell.inbox.clone());
        if let Some(inbox) = inbox {
            // A full inbox drops the datagram, as a full socket buffer would.
            let _ = inbox.try_send(received);
        }
    }

    /// The cell name of one of this cluster's ids, if it is one.
    fn cell_name(&self, cluster_id: &str) -> Option<String> {
        if cluster_id == self.cluster {
            return Some(DEFAULT_CELL.to_string());
        }
        cluster_id
            .strip_prefix(self.cluster.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_string)
    }

    /// The cell a SYN with this cluster id goes to, joining it first if it is new and welcome.
    async fn cell_of(&self, cluster_id: &str, from: SocketAddr) -> Option<String> {
        let cell = self.cell_name(cluster_id)?;
        if self.cells.lock().expect("cells lock").contains_key(&cell) {
            return Some(cell);
        }
        let refusal = if let Err(reason) = check_cell_name(&cell) {
            Some(reason)
        } else if !self.config.allowed.is_empty() && !self.config.allowed.contains(&cell) {
            Some("not one of the coordinator's `cells`".to_string())
        } else if self.cells.lock().expect("cells lock").len() >= self.config.max {
            Some(format!(
                "the coordinator is in max_cells = {} cells already",
                self.config.max
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            // A peer's cluster id may be as long as a datagram: what is kept and logged of it is not.
            let shown: String = cell.chars().take(MAX_CELL_NAME + 1).collect();
            let mut refused = self.refused.lock().expect("refused lock");
            if refused.len() < MAX_REFUSED_NAMES && refused.insert(shown.clone()) {
                warn!(peer = %from, cell = %shown.escape_debug(), "gossip of a cell this coordinator does not join: {reason}");
            }
            return None;
        }
        match self.join(&cell).await {
            Ok(()) => {
                info!(cell = %cell, first = %from, "joined a gossip cell");
                Some(cell)
            }
            Err(err) => {
                warn!(cell = %cell, error = %err, "cannot join a gossip cell");
                None
            }
        }
    }
}

fn remember(peers: &Mutex<HashMap<SocketAddr, String>>, peer: SocketAddr, cluster_id: &str) {
    let mut peers = peers.lock().expect("peers lock");
    if peers.get(&peer).map(String::as_str) == Some(cluster_id) {
        return;
    }
    if peers.len() >= MAX_PEERS {
        peers.clear();
    }
    peers.insert(peer, cluster_id.to_string());
}

/// What a cell's chitchat opens: its end of the hub.
struct HubTransport {
    socket: Mutex<Option<HubSocket>>,
}

#[async_trait]
impl Transport for HubTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self.socket.lock().expect("hub transport lock").take();
        match socket {
            Some(socket) => Ok(Box::new(socket)),
            None => anyhow::bail!("a cell's gossip socket is opened once"),
        }
    }
}

struct HubSocket {
    local_addr: SocketAddr,
    outbox: mpsc::Sender<Outgoing>,
    peers: Arc<Mutex<HashMap<SocketAddr, String>>>,
    cluster_id: String,
    inbox: mpsc::Receiver<RecvOutcome>,
}

#[async_trait]
impl Socket for HubSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Its answer (a SYN-ACK, an ACK) carries no cluster id: it comes back to this cell.
        remember(&self.peers, to, &self.cluster_id);
        let (sent, outcome) = oneshot::channel();
        self.outbox
            .send_timeout((to, envelope, sent), Duration::from_secs(1))
            .await
            .map_err(|_| anyhow::anyhow!("the gossip socket is busy or gone"))?;
        outcome
            .await
            .map_err(|_| anyhow::anyhow!("the gossip socket is gone"))?
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inbox
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the gossip hub stopped"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use polarizer_shared::membership::*;

    use super::*;
    use crate::gossip::{concrete_udp_addr, Gossip};

    fn node(name: &str, role: &str, seeds: Vec<String>, cell: &str) -> GossipConfig {
        let listen = concrete_udp_addr(([127, 0, 0, 1], 0).into()).expect("a free port");
        GossipConfig {
            node_id: format!("{role}/{name}"),
            listen_addr: listen,
            advertise_addr: listen,
            seeds,
            cluster_id: cell_cluster_id("test", cell),
            interval: Duration::from_millis(50),
            advertised: vec![
                (KEY_ROLE.into(), role.into()),
                (KEY_AGENT_NAME.into(), name.into()),
                (KEY_QUIC_ADDR.into(), "127.0.0.1:7701".into()),
            ],
        }
    }

    async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done().await {
            assert!(Instant::now() < deadline, "not within 20 s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agents_gossip_only_in_their_cell_and_the_coordinator_is_in_each() {
        let config = node("hub", ROLE_COORDINATOR, Vec::new(), DEFAULT_CELL);
        let seed = vec![config.listen_addr.to_string()];
        let coordinator = Gossip::start_cells(
            config,
            CellsConfig {
                allowed: vec!["brno".into(), "westford".into()],
                max: 8,
            },
        )
        .await
        .expect("coordinator gossip");
        let mut agents = Vec::new();
        for (name, cell) in [
            ("a1", "brno"),
            ("a2", "brno"),
            ("b1", "westford"),
            ("d1", DEFAULT_CELL),
            ("x1", "elsewhere"),
        ] {
            let gossip = Gossip::start(node(name, ROLE_AGENT, seed.clone(), cell))
                .await
                .expect("agent gossip");
            agents.push((name, gossip));
        }
        let wanted: BTreeSet<String> = ["a1", "a2", "b1", "d1"].map(String::from).into();
        until(
            "the coordinator sees every agent of its cells",
            async || coordinator.live_agent_names().await == wanted,
        )
        .await;
        for (name, gossip) in &agents[..4] {
            until(&format!("{name} finds the coordinator"), async || {
                !gossip.coordinator_candidates().await.is_empty()
            })
            .await;
        }
        until("a1 sees a2", async || {
            agents[0].1.live_agent_names().await.contains("a2")
        })
        .await;
        // Each agent knows its own cell only.
        let brno: BTreeSet<String> = ["a1", "a2"].map(String::from).into();
        assert_eq!(agents[0].1.live_agent_names().await, brno);
        let westford: BTreeSet<String> = ["b1"].map(String::from).into();
        assert_eq!(agents[2].1.live_agent_names().await, westford);
        // A cell not among `cells` is never joined: its agent finds no coordinator.
        let cells: Vec<String> = coordinator
            .cells()
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(cells, ["", "brno", "westford"]);
        assert!(agents[4].1.coordinator_candidates().await.is_empty());
        for (_, gossip) in agents {
            gossip.shutdown().await;
        }
        coordinator.shutdown().await;
    }
}
