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

/// Receive buffer asked for on the coordinator's QUIC socket (the kernel caps it at
/// `net.core.rmem_max`): thousands of agents' heartbeats, and their handshakes after a restart, arrive
/// in bursts that overflow a default buffer of 208 KiB, and a dropped handshake packet costs its agent
/// a retransmission timeout.
pub const SERVER_RECEIVE_BUFFER: usize = 8 << 20;

/// A UDP socket for a QUIC endpoint, bound to `addr`, with the receive and send buffers asked for
/// (as large as the kernel allows up to `buffer` bytes; a refusal leaves its default).
pub fn quic_socket(
    addr: std::net::SocketAddr,
    buffer: usize,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        // As quinn's own binding: an IPv6 wildcard takes IPv4 too.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC server endpoint on `addr`, its socket's buffers sized for thousands of agents.
pub fn server_endpoint(
    config: quinn::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    let socket = quic_socket(addr, SERVER_RECEIVE_BUFFER)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
}

/// Bidirectional streams a peer may have open at once on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Bytes a peer may send on a stream ahead of what has been read (quinn's default, named).
const STREAM_RECEIVE_WINDOW: u32 = 1_250_000;

/// Installs ring as rustls' process-wide crypto provider. Idempotent; call at start of every binary.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
