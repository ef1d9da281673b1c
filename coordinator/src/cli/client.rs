//! The operator's client: every `polarizer` subcommand but `serve` reaches the running coordinator over
//! the same QUIC protocol as agents, authenticated by the operator token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use polarizer_shared::protocol::{
    close_code, ClientFrame, Hello, OperatorRequest, OperatorResponse, Peer, ServerFrame,
    PROTOCOL_VERSION,
};
use polarizer_transport::client::{client_endpoint, connect, Session};
use polarizer_transport::state_files::read_private;
use polarizer_transport::{tls, CaTrust, StreamError};

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

/// The exit status of a command the coordinator's shutdown cut short: sysexits.h's EX_TEMPFAIL. Not 0:
/// what was asked (follow, watch to the end) did not happen; not 1: `runs watch` exits 1 for a run
/// that did not pass, and this says nothing about the run. Run the command again once it is back.
pub const EXIT_COORDINATOR_STOPPED: u8 = 75;

/// The coordinator stopped while the command was waiting for it (a `tail` following, a `runs watch`).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator is shutting down{}", resume.as_deref().map(|how| format!("; {how}")).unwrap_or_default())]
pub struct CoordinatorStopped {
    /// How to carry on once it is back, when the command knows.
    pub resume: Option<String>,
}

impl CoordinatorStopped {
    /// Whether `error` is (or was caused by) the coordinator stopping.
    pub fn is(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| cause.is::<CoordinatorStopped>())
    }
}

/// The coordinator said it is stopping, or closed the connection saying so (the frame that would
/// have said it may not arrive).
fn stopped(error: &StreamError) -> bool {
    let closed = match error {
        StreamError::Connection(error) => Some(error),
        StreamError::Read(quinn::ReadError::ConnectionLost(error)) => Some(error),
        StreamError::Write(quinn::WriteError::ConnectionLost(error)) => Some(error),
        _ => None,
    };
    matches!(
        closed,
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == close_code::SHUTTING_DOWN.into()
    )
}

/// An answer as the commands take it: an error or the coordinator stopping becomes `Err`.
fn answer(frame: Result<ServerFrame, StreamError>) -> anyhow::Result<OperatorResponse> {
    match frame {
        Ok(ServerFrame::Operator(OperatorResponse::Error { message })) => bail!("{message}"),
        Ok(ServerFrame::Operator(OperatorResponse::ShuttingDown)) => {
            Err(CoordinatorStopped { resume: None }.into())
        }
        Ok(ServerFrame::Operator(response)) => Ok(response),
        Ok(other) => bail!("unexpected answer from the coordinator: {other:?}"),
        Err(error) if stopped(&error) => Err(CoordinatorStopped { resume: None }.into()),
        Err(error) => Err(error.into()),
    }
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
        if let Err(error) = self
            .session
            .stream
            .send(&ClientFrame::Operator(request))
            .await
        {
            return answer(Err(error));
        }
        answer(self.session.stream.expect::<ServerFrame>().await)
    }

    /// The next answer of a streamed response (`WatchRun`, `Tail`, `Replay`).
    pub async fn next(&mut self) -> anyhow::Result<OperatorResponse> {
        answer(self.session.stream.expect::<ServerFrame>().await)
    }

    /// A text the coordinator sends in pieces (`Text` answers); `first` is the answer already read.
    pub async fn collect_text(&mut self, first: OperatorResponse) -> anyhow::Result<String> {
        let mut text = String::new();
        let mut next = first;
        loop {
            match next {
                OperatorResponse::Text { text: piece, last } => {
                    text += &piece;
                    if last {
                        return Ok(text);
                    }
                }
                OperatorResponse::Error { message } => bail!("{message}"),
                other => bail!("unexpected answer from the coordinator: {other:?}"),
            }
            next = self.next().await?;
        }
    }

    pub async fn close(self) {
        self.session.stream.finish().await;
        self.session.connection.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}
