//! The gossip key schema. Gossip only says *where* the coordinator is and *who is alive*; nothing read
//! here is trusted (chitchat has no authentication), so these keys carry addresses and names, never facts.

/// Every node sets `role` to one of these.
pub const KEY_ROLE: &str = "role";
pub const ROLE_COORDINATOR: &str = "coordinator";
pub const ROLE_AGENT: &str = "agent";
/// A coordinator advertises the QUIC address agents and operators should connect to.
pub const KEY_QUIC_ADDR: &str = "quic_addr";
/// An agent advertises its name, so the coordinator can tell which agents gossip still sees alive.
pub const KEY_AGENT_NAME: &str = "agent_name";
/// The default cluster id; nodes with another id ignore each other.
pub const DEFAULT_CLUSTER_ID: &str = "polarizer";

/// Gossip node ids: unique per process incarnation, readable in logs.
pub fn agent_node_id(name: &str) -> String {
    format!("agent/{name}")
}

pub fn coordinator_node_id(quic_addr: &str) -> String {
    format!("coordinator/{quic_addr}")
}
