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
use std::time::Duration;

use polarizer_shared::membership::*;
use polarizer_transport::client::client_endpoint;
use polarizer_transport::gossip::{advertised_addr, concrete_udp_addr};
use polarizer_transport::{tls, CaTrust, Gossip, GossipConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

/// Once the running suite is drained, how long the agent waits for the coordinator to acknowledge its
/// last records before it exits anyway (they stay in the spool and are sent at the next start).
const ACKNOWLEDGE_WAIT: Duration = Duration::from_secs(10);
const ACKNOWLEDGE_POLL: Duration = Duration::from_millis(50);

/// How the agent is asked to stop. `drain` (the first SIGTERM or SIGINT): take no new suite, let the
/// running test finish within the drain timeout, run the cleanups, hand the suite's other tests back to
/// the coordinator, and exit once every record is acknowledged. `stop` (the second): exit at once, killing
/// whatever runs.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub stop: CancellationToken,
}

/// Runs the agent until `shutdown` has drained it (or stopped it), or until the coordinator refuses it
/// for good.
pub async fn run(config: AgentConfig, shutdown: Shutdown) -> Result<(), AgentError> {
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
        cluster_id: polarizer_shared::membership::cell_cluster_id(&config.cluster, &config.cell),
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
    let stopping = runner::Stopping {
        drain: shutdown.drain.clone(),
        expired: CancellationToken::new(),
        drain_timeout: config.drain_timeout,
    };
    tokio::spawn(stopping.clone().expire_after_drain());
    tokio::spawn({
        let drain = shutdown.drain.clone();
        let drain_timeout = config.drain_timeout;
        async move {
            drain.cancelled().await;
            info!(?drain_timeout, "stopping: no new suite starts; the running test has the drain timeout to finish (a second SIGTERM stops it now)");
        }
    });
    let (link, link_rx) = tokio::sync::watch::channel(None);
    let (suites, runner_drained) = start_runner(&config, spool.clone(), stopping, link_rx);
    let collectors_stop = CancellationToken::new();
    collectors::start(&config, &spool, &collectors_stop);
    let session_end = CancellationToken::new();
    tokio::spawn(end_session_when_drained(
        shutdown.clone(),
        runner_drained,
        spool.clone(),
        collectors_stop,
        session_end.clone(),
    ));
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
        draining: shutdown.drain.clone(),
        link,
    };
    let outcome = connector.run(session_end).await;
    endpoint.close(0u32.into(), b"agent stopped");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    info!("agent stopped");
    outcome
}

/// The agent's stop after the first SIGTERM: once the runner has drained (its suite ended, cleanups run,
/// records spooled), the collectors stop and the session stays open until the coordinator has
/// acknowledged every record, for at most `ACKNOWLEDGE_WAIT`; then `session_end` ends it. The second
/// SIGTERM ends it at once.
async fn end_session_when_drained(
    shutdown: Shutdown,
    runner_drained: CancellationToken,
    spool: spool::SharedSpool,
    collectors_stop: CancellationToken,
    session_end: CancellationToken,
) {
    tokio::select! {
        () = runner_drained.cancelled() => {}
        () = shutdown.stop.cancelled() => {
            warn!("stopping now: the running test is killed");
            session_end.cancel();
            return;
        }
    }
    collectors_stop.cancel();
    let deadline = tokio::time::Instant::now() + ACKNOWLEDGE_WAIT;
    loop {
        // Nothing left to send means nothing unacknowledged: the spool keeps a record until its ack.
        if spool.all_acknowledged().await {
            info!("drained: every record is acknowledged");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(waited = ?ACKNOWLEDGE_WAIT, "drained, but the coordinator has not acknowledged every record; the spool sends them at the next start");
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(ACKNOWLEDGE_POLL) => {}
            () = shutdown.stop.cancelled() => break,
        }
    }
    session_end.cancel();
}

/// The runner task: runs assigned suites one after another, each feeding the spool. Once the agent
/// drains, it starts no suite (each assignment ends at once, for the coordinator to give elsewhere), and
/// `runner_drained` is cancelled as soon as nothing runs and nothing waits.
fn start_runner(
    config: &AgentConfig,
    spool: spool::SharedSpool,
    stopping: runner::Stopping,
    link: tokio::sync::watch::Receiver<Option<quinn::Connection>>,
) -> (session::SuiteQueue, CancellationToken) {
    let (assign, mut assignments) =
        tokio::sync::mpsc::unbounded_channel::<polarizer_shared::run::Assignment>();
    let cancels: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<polarizer_shared::run::SuiteRef, CancellationToken>,
        >,
    > = Default::default();
    let mut runner_config = runner::RunnerConfig::new(&config.state_dir);
    runner_config.emit_socket = config.events.emit_socket.clone();
    runner_config.courier = Some(runner::Courier::new(link));
    runner_config.fetch_tests_directly = config.fetch_tests_directly;
    runner_config.test_cache_max_bytes = config.test_cache_max_bytes;
    if !runner_config.git_available {
        info!("git is not installed: tests come from the coordinator as tars of their tree");
    }
    let emit: runner::Emit = std::sync::Arc::new(move |body| spool.push(body));
    let queue = session::SuiteQueue {
        assign,
        cancels: cancels.clone(),
    };
    let runner_drained = CancellationToken::new();
    let drained = runner_drained.clone();
    tokio::spawn(async move {
        loop {
            let assignment = tokio::select! {
                // Assignments already here are handled first: drained means none is left.
                biased;
                assignment = assignments.recv() => assignment,
                () = stopping.drain.cancelled(), if !drained.is_cancelled() => {
                    info!("drained: no suite runs or waits");
                    drained.cancel();
                    continue;
                }
            };
            let Some(assignment) = assignment else { break };
            let suite = assignment.suite;
            let cancel = cancels
                .lock()
                .expect("cancels lock")
                .entry(suite)
                .or_default()
                .clone();
            runner::run_suite(
                assignment,
                &runner_config,
                emit.clone(),
                cancel,
                stopping.clone(),
            )
            .await;
            info!(%suite, "suite finished");
        }
    });
    (queue, runner_drained)
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
