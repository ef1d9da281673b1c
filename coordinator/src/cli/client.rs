//! The operator's client: every `polarizer` subcommand but `serve` reaches the running coordinator over
//! the same QUIC protocol as agents, authenticated by the operator token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use polarizer_shared::protocol::{
    ClientFrame, Hello, OperatorRequest, OperatorResponse, Peer, ServerFrame, PROTOCOL_VERSION,
};
use polarizer_transport::client::{client_endpoint, connect, Session};
use polarizer_transport::state_files::read_private;
use polarizer_transport::{tls, CaTrust};

use crate::data_dir::default_data_dir;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientArgs {
    /// The coordinator's QUIC address [default: 127.0.0.1:7701]
    #[arg(long, global = true, env = "POLARIZER_COORDINATOR")]
    pub coordinator: Option<String>,
    /// A coordinator data dir to take ca.pem and operator-token from
    #[arg(long, global = true, env = "POLARIZER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The coordinator's CA certificate [default: DATA_DIR/ca.pem]
    #[arg(long, global = true, env = "POLARIZER_CA")]
    pub ca: Option<PathBuf>,
    /// Pin the coordinator's CA by fingerprint (sha256:...) instead of a file
    #[arg(
        long,
        global = true,
        env = "POLARIZER_CA_FINGERPRINT",
        conflicts_with = "ca"
    )]
    pub ca_fingerprint: Option<String>,
    /// File holding the operator token [default: DATA_DIR/operator-token]
    #[arg(long, global = true, env = "POLARIZER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

pub struct OperatorClient {
    session: Session,
    endpoint: quinn::Endpoint,
}

impl OperatorClient {
    pub async fn connect(args: &ClientArgs) -> anyhow::Result<OperatorClient> {
        polarizer_transport::install_crypto_provider();
        let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
        let trust = match (&args.ca_fingerprint, &args.ca) {
            (Some(fingerprint), _) => CaTrust::from_fingerprint(fingerprint)?,
            (None, Some(ca)) => CaTrust::from_pem_file(ca)?,
            (None, None) => CaTrust::from_pem_file(&data_dir.join("ca.pem")).context(
                "no CA to trust the coordinator with: pass --data-dir, --ca or --ca-fingerprint",
            )?,
        };
        let token_file = args
            .token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("operator-token"));
        let token = read_private(&token_file)
            .context("no operator token: pass --data-dir or --token-file")?;
        let target = args
            .coordinator
            .clone()
            .unwrap_or_else(|| "127.0.0.1:7701".to_string());
        let addr = tokio::net::lookup_host(&target)
            .await
            .with_context(|| format!("cannot resolve coordinator address {target:?}"))?
            .next()
            .with_context(|| format!("coordinator address {target:?} resolves to nothing"))?;
        let endpoint = client_endpoint(tls::client_config(&trust)?, addr)?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Operator { token },
        };
        let session = connect(&endpoint, addr, hello, Duration::from_secs(10))
            .await
            .with_context(|| {
                format!("cannot reach the coordinator at {target} (is `polarizer serve` running?)")
            })?;
        Ok(OperatorClient { session, endpoint })
    }

    pub async fn request(&mut self, request: OperatorRequest) -> anyhow::Result<OperatorResponse> {
        self.session
            .stream
            .send(&ClientFrame::Operator(request))
            .await?;
        match self.session.stream.expect::<ServerFrame>().await? {
            ServerFrame::Operator(OperatorResponse::Error { message }) => bail!("{message}"),
            ServerFrame::Operator(response) => Ok(response),
            other => bail!("unexpected answer from the coordinator: {other:?}"),
        }
    }

    /// The next answer of a streamed response (`WatchRun`).
    pub async fn next(&mut self) -> anyhow::Result<OperatorResponse> {
        match self.session.stream.expect::<ServerFrame>().await? {
            ServerFrame::Operator(OperatorResponse::Error { message }) => bail!("{message}"),
            ServerFrame::Operator(response) => Ok(response),
            other => bail!("unexpected answer from the coordinator: {other:?}"),
        }
    }

    pub async fn close(self) {
        self.session.stream.finish().await;
        self.session.connection.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}
