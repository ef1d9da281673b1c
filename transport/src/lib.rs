//! The IO glue both Polarizer daemons share: QUIC endpoints with TLS pinned to the coordinator's CA,
//! framed streams over them, and gossip membership. The agent and the coordinator's CLI client use the
//! same client side, so there is one place where trust is decided.

pub mod cells;
pub mod client;
pub mod daemon;
pub mod framed;
pub mod git;
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
    // Sized for the protocol: one framed stream each way per connection (a few allowed, so a
    // reconnecting peer's stream is never refused), no unidirectional streams, and a connection
    // window of a few stream windows. The library's defaults allow 100 streams each way and an
    // unbounded connection window: buffer a peer could fill before saying who it is.
    config.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    config.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    config.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    config.receive_window(quinn::VarInt::from_u32(
        STREAM_RECEIVE_WINDOW * MAX_STREAMS_PER_CONNECTION,
    ));
    config
}

/// Bidirectional streams a peer may have open at once on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Bytes a peer may send on a stream ahead of what has been read (quinn's default, named).
const STREAM_RECEIVE_WINDOW: u32 = 1_250_000;

/// Installs ring as rustls' process-wide crypto provider. Idempotent; call at start of every binary.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
