//! For tests: a real QUIC connection on loopback, made with a data dir's own CA and certificate, so
//! what runs on a connection (sessions, streams to operators) is tested on the real thing.

use polarizer_transport::client::client_endpoint;
use polarizer_transport::{tls, CaTrust};

use crate::daemon::identity::Prepare;
use crate::data_dir::DataDir;

/// Both ends of one connection, and the endpoints that must outlive it.
pub struct Loopback {
    /// Held, not read: an endpoint dropped takes its connections with it.
    #[allow(dead_code)]
    pub server: quinn::Endpoint,
    #[allow(dead_code)]
    pub client: quinn::Endpoint,
    /// The coordinator's end.
    pub accepted: quinn::Connection,
    /// The peer's end.
    pub connected: quinn::Connection,
}

pub async fn connect(data_dir: &DataDir) -> Loopback {
    polarizer_transport::install_crypto_provider();
    let identity = data_dir.prepare().expect("prepare the data dir");
    let server = quinn::Endpoint::server(
        tls::server_config(identity.chain, identity.key).expect("server config"),
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("server endpoint");
    let address = server.local_addr().expect("server address");
    let trust = CaTrust::from_pem_file(&data_dir.ca_certificate()).expect("CA");
    let client = client_endpoint(tls::client_config(&trust).expect("client config"), address)
        .expect("client endpoint");
    let (accepted, connected) = tokio::join!(
        async {
            server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("accepted")
        },
        async {
            client
                .connect(address, tls::server_name())
                .expect("connect")
                .await
                .expect("connected")
        }
    );
    Loopback {
        server,
        client,
        accepted,
        connected,
    }
}
