//! The IO glue both Polarizer daemons share: QUIC endpoints with TLS pinned to the coordinator's CA,
//! framed streams over them, and gossip membership. The agent and the coordinator's CLI client use the
//! same client side, so there is one place where trust is decided.

pub mod client;
pub mod daemon;
pub mod framed;
pub mod gossip;
pub mod state_files;
pub mod tls;

pub use framed::{FramedStream, StreamError};
pub use gossip::{Gossip, GossipConfig};
pub use tls::{CaTrust, TlsError};

use std::time::Duration;

/// QUIC transport settings both sides use. Keep-alives hold idle connections open through NAT and let a
/// peer notice a dead one; the application heartbeat decides liveness much sooner than the idle timeout.
pub fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(Duration::from_secs(1)));
    config.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        10_000,
    ))));
    config
}

/// Installs ring as rustls' process-wide crypto provider. Idempotent; call at start of every binary.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
