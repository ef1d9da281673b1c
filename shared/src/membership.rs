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

/// The cell agents join when they name none: the whole cluster, as before cells existed.
pub const DEFAULT_CELL: &str = "";
/// Longest cell name.
pub const MAX_CELL_NAME: usize = 63;

/// The chitchat cluster id of one cell of `cluster`: the cluster's own id for the default cell, else
/// `CLUSTER/CELL`. Nodes of different cells ignore each other; the coordinator is a member of each.
pub fn cell_cluster_id(cluster: &str, cell: &str) -> String {
    if cell.is_empty() {
        cluster.to_string()
    } else {
        format!("{cluster}/{cell}")
    }
}

/// A cell name is 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit (a site,
/// a rack, a pool: `brno-lab`, `pool.ppc64le`).
pub fn check_cell_name(cell: &str) -> Result<(), String> {
    let mut chars = cell.chars();
    match chars.next() {
        None => Err("a cell name must not be empty".into()),
        _ if cell.len() > MAX_CELL_NAME => Err(format!(
            "a cell name is at most {MAX_CELL_NAME} characters, this one has {}",
            cell.len()
        )),
        Some(first) if !first.is_ascii_alphanumeric() => Err(format!(
            "cell name {cell:?} must start with a letter or digit"
        )),
        _ => match cell
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            Some(bad) => Err(format!(
                "cell name {cell:?} may hold only letters, digits, '-', '_' and '.', not {bad:?}"
            )),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_clusters_of_their_own_and_the_default_cell_is_the_cluster() {
        assert_eq!(cell_cluster_id("polarizer", DEFAULT_CELL), "polarizer");
        assert_eq!(
            cell_cluster_id("polarizer", "brno-lab"),
            "polarizer/brno-lab"
        );
        assert!(check_cell_name("brno-lab").is_ok());
        assert!(check_cell_name("pool.ppc64le_2").is_ok());
        for bad in ["", "-lab", "lab/a", "lab a", "ľab", &"a".repeat(64)] {
            assert!(check_cell_name(bad).is_err(), "{bad:?}");
        }
    }
}
