//! The Polarizer agent: joins the cluster by gossip, connects to the coordinator over pinned-CA QUIC,
//! enrolls once, and reports its platform's facts. Small by design: no database, no scheduler.

pub mod collectors;
pub mod config;
pub mod credential;
pub mod facts;
pub mod runner;
pub mod session;
pub mod spool;

use std::path::PathBuf;

use polarizer_shared::membership::*;
use polarizer_transport::client::client_endpoint;
use polarizer_transport::gossip::{advertised_addr, concrete_udp_addr};
use polarizer_transport::{tls, CaTrust, Gossip, GossipConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{AgentConfig, CaPin};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] polarizer_transport::TlsError),
    #[error(transparent)]
    Credential(#[from] credential::CredentialError),
    #[error(transparent)]
    StateFile(#[from] polarizer_transport::state_files::StateFileError),
    #[error(transparent)]
    Gossip(#[from] polarizer_transport::gossip::GossipError),
    #[error("cannot open a QUIC endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
    #[error("no credential in {state_dir} and no --token-file to enroll with")]
    NoCredential { state_dir: PathBuf },
    #[error("the coordinator refused this agent: {refusal}")]
    Refused { refusal: String },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("this agent was revoked by an operator ({reason}); it will not reconnect")]
    Revoked { reason: String },
}

impl AgentError {
    /// True when starting the agent again as it is cannot help: the coordinator refused or revoked it,
    /// or it has nothing to authenticate with. `main` exits with `daemon::EXIT_REFUSED` then.
    pub fn is_final_refusal(&self) -> bool {
        matches!(
            self,
            AgentError::Refused { .. }
                | AgentError::Revoked { .. }
                | AgentError::NoCredential { .. }
        )
    }
}

/// Runs the agent until `shutdown` is cancelled, or until the coordinator refuses it for good.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    polarizer_transport::install_crypto_provider();
    let trust = match &config.ca {
        CaPin::File(path) => CaTrust::from_pem_file(path)?,
        CaPin::Fingerprint(text) => CaTrust::from_fingerprint(text)?,
    };
    let ca_fingerprint = match &trust {
        CaTrust::Certificate(der) => tls::fingerprint(der),
        CaTrust::Fingerprint(bytes) => format!(
            "sha256:{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    };
    // Fail before joining anything when there is no way to authenticate.
    if credential::load(&config.state_dir, &config.name)?.is_none() && config.token_file.is_none() {
        return Err(AgentError::NoCredential {
            state_dir: config.state_dir.clone(),
        });
    }
    if let Some(token_file) = &config.token_file {
        if credential::load(&config.state_dir, &config.name)?.is_none() {
            polarizer_transport::state_files::read_private(token_file)?;
        }
    }
    let endpoint = client_endpoint(tls::client_config(&trust)?, config.gossip)
        .map_err(AgentError::Endpoint)?;
    let facts = facts::collect(&config.name, &config.labels, config.platform);

    let gossip_listen = concrete_udp_addr(config.gossip).map_err(AgentError::Endpoint)?;
    let gossip = Gossip::start(GossipConfig {
        node_id: agent_node_id(&config.name),
        listen_addr: gossip_listen,
        advertise_addr: advertised_addr(gossip_listen, config.advertise),
        seeds: config.join.clone(),
        cluster_id: config.cluster.clone(),
        interval: config.gossip_interval,
        advertised: vec![
            (KEY_ROLE.into(), ROLE_AGENT.into()),
            (KEY_AGENT_NAME.into(), config.name.clone()),
        ],
    })
    .await?;
    info!(name = %config.name, gossip = %gossip_listen, platform = %facts.platform, "agent started");

    let spool = spool::SharedSpool::start(spool::Spool::open(
        &config.state_dir.join("spool"),
        config.spool_max_bytes,
    )?)?;
    let suites = start_runner(&config, spool.clone());
    collectors::start(&config, &spool, &shutdown);
    let connector = session::Connector {
        config,
        endpoint: endpoint.clone(),
        gossip,
        ca_fingerprint,
        facts,
        must_enroll: Default::default(),
        waiting_for_approval: Default::default(),
        incarnation: rand::random::<u64>(),
        spool,
        suites,
    };
    let outcome = connector.run(shutdown).await;
    endpoint.close(0u32.into(), b"agent stopped");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    info!("agent stopped");
    outcome
}

/// The runner task: runs assigned suites one after another, each feeding the spool.
fn start_runner(config: &AgentConfig, spool: spool::SharedSpool) -> session::SuiteQueue {
    let (assign, mut assignments) =
        tokio::sync::mpsc::unbounded_channel::<polarizer_shared::run::Assignment>();
    let cancels: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<polarizer_shared::run::SuiteRef, CancellationToken>,
        >,
    > = Default::default();
    let mut runner_config = runner::RunnerConfig::new(&config.state_dir);
    runner_config.emit_socket = config.events.emit_socket.clone();
    let emit: runner::Emit = std::sync::Arc::new(move |body| spool.push(body));
    let queue = session::SuiteQueue {
        assign,
        cancels: cancels.clone(),
    };
    tokio::spawn(async move {
        while let Some(assignment) = assignments.recv().await {
            let suite = assignment.suite;
            let cancel = cancels
                .lock()
                .expect("cancels lock")
                .entry(suite)
                .or_default()
                .clone();
            runner::run_suite(assignment, &runner_config, emit.clone(), cancel).await;
            info!(%suite, "suite finished");
        }
    });
    queue
}

#[cfg(test)]
mod tests {
    use polarizer_transport::daemon::EXIT_REFUSED;

    #[test]
    fn the_unit_does_not_restart_an_agent_that_was_refused() {
        let unit = include_str!("../../systemd/polarizer-agent.service");
        let expected = format!("RestartPreventExitStatus={EXIT_REFUSED}");
        assert!(
            unit.lines().any(|line| line.trim() == expected),
            "systemd/polarizer-agent.service has no {expected:?}: a revoked agent would restart forever"
        );
    }
}
