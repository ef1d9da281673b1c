//! The client side of the handshake, shared by agents and operator commands: dial through pinned TLS,
//! send the hello, read the welcome or the refusal.

use std::net::SocketAddr;
use std::time::Duration;

use polarizer_shared::protocol::{ClientFrame, Hello, Refusal, ServerFrame, Welcome};

use crate::framed::{FramedStream, StreamError};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot dial {addr}: {source}")]
    Dial {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    /// TLS failed, or nothing answered. A certificate that does not chain to the pinned CA lands here.
    #[error("no trusted connection to {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("coordinator at {addr} refused: {refusal}")]
    Refused { addr: SocketAddr, refusal: Refusal },
    #[error("coordinator at {addr}: {source}")]
    Stream {
        addr: SocketAddr,
        #[source]
        source: StreamError,
    },
    #[error("coordinator at {addr} answered the hello with an unexpected frame")]
    UnexpectedAnswer { addr: SocketAddr },
    #[error("coordinator at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

impl ConnectError {
    /// True when the peer could not prove it is the coordinator (TLS failed): try another address.
    pub fn is_untrusted_peer(&self) -> bool {
        matches!(
            self,
            ConnectError::Handshake {
                source: quinn::ConnectionError::TransportError(_),
                ..
            }
        )
    }
}

pub struct Session {
    pub connection: quinn::Connection,
    pub stream: FramedStream,
    pub welcome: Welcome,
}

/// Dials `addr`, verifies the coordinator's certificate with the endpoint's client configuration, and
/// exchanges hello and welcome, all within `timeout`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    hello: Hello,
    timeout: Duration,
) -> Result<Session, ConnectError> {
    let attempt = async {
        let connecting = endpoint
            .connect(addr, crate::tls::server_name())
            .map_err(|source| ConnectError::Dial { addr, source })?;
        let connection = connecting
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        let stream_error = |source| ConnectError::Stream { addr, source };
        let mut stream = FramedStream::open(&connection)
            .await
            .map_err(stream_error)?;
        stream
            .send(&ClientFrame::Hello(hello))
            .await
            .map_err(stream_error)?;
        match stream.expect::<ServerFrame>().await.map_err(stream_error)? {
            ServerFrame::Welcome(welcome) => Ok(Session {
                connection,
                stream,
                welcome,
            }),
            ServerFrame::Refused(refusal) => {
                connection.close(0u32.into(), b"refused");
                Err(ConnectError::Refused { addr, refusal })
            }
            _ => Err(ConnectError::UnexpectedAnswer { addr }),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(
    config: quinn::ClientConfig,
    family_of: SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if family_of.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
