//! `polarizer demo`: a coordinator and local agents in a temporary directory, on loopback, showing the
//! agents join live. Nothing to set up; nothing left running afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use polarizer_shared::protocol::{AgentRecord, AgentState, OperatorRequest, OperatorResponse};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientArgs, OperatorClient};
use crate::config::ServeConfig;

const JOIN_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(
    agent_count: u32,
    keep_running: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let agent_binary = sibling_binary("polarizer-agent")?;
    let workspace = tempfile::Builder::new()
        .prefix("polarizer-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let data_dir = workspace.path().join("coordinator");
    println!(
        "polarizer demo: a coordinator and {agent_count} agents on this machine, in {}\n",
        workspace.path().display()
    );

    let mut config = ServeConfig::for_test(&data_dir);
    config.gossip_interval = Duration::from_millis(200);
    config.heartbeat_interval = Duration::from_millis(500);
    let coordinator_shutdown = CancellationToken::new();
    let (listening_tx, listening_rx) = oneshot::channel();
    let coordinator = tokio::spawn(crate::serve::run(
        config,
        coordinator_shutdown.clone(),
        Some(listening_tx),
    ));
    let listening = listening_rx
        .await
        .context("the coordinator did not start")?;
    println!();

    let started = Instant::now();
    let mut agents = Vec::new();
    for index in 1..=agent_count {
        let name = format!("demo-{index}");
        agents.push(
            start_agent(
                &agent_binary,
                workspace.path(),
                &data_dir,
                &name,
                listening.gossip,
            )
            .await?,
        );
        println!(
            "  started agent {name} (log: {})",
            workspace.path().join(format!("{name}.log")).display()
        );
    }
    println!("\nwatching the inventory (polarizer agents) as agents join:");

    let client_args = ClientArgs {
        coordinator: Some(listening.quic.to_string()),
        data_dir: Some(data_dir.clone()),
        ..ClientArgs::default()
    };
    let outcome = watch_until_online(&client_args, agent_count as usize, started, &shutdown).await;
    let final_listing = match &outcome {
        Ok(()) => list(&client_args).await.ok(),
        Err(_) => None,
    };
    if let Some(agents) = &final_listing {
        println!("\n{}", crate::cli::agents_table(agents));
    }

    if outcome.is_ok() && keep_running {
        println!("everything keeps running; in another terminal try:");
        println!(
            "  polarizer agents --data-dir {} --coordinator {}",
            data_dir.display(),
            listening.quic
        );
        println!("press Ctrl-C to stop");
        shutdown.cancelled().await;
    }

    for agent in &mut agents {
        stop_gracefully(agent).await;
    }
    coordinator_shutdown.cancel();
    coordinator.await.context("the coordinator task failed")??;
    if let Err(err) = &outcome {
        let kept = workspace.keep();
        bail!("{err:#}; logs kept in {}", kept.display());
    }
    println!("demo finished after {:.2} s: {agent_count} agents joined; everything stopped and cleaned up", started.elapsed().as_secs_f64());
    Ok(())
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to {}: build both binaries (cargo build --workspace)",
            name,
            exe.display()
        );
    }
    Ok(path)
}

async fn start_agent(
    binary: &Path,
    workspace: &Path,
    data_dir: &Path,
    name: &str,
    gossip_seed: std::net::SocketAddr,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(workspace.join(format!("{name}.log")))?;
    let gossip = polarizer_transport::gossip::concrete_udp_addr(([127, 0, 0, 1], 0).into())?;
    Command::new(binary)
        .arg("--join")
        .arg(gossip_seed.to_string())
        .arg("--gossip")
        .arg(gossip.to_string())
        .arg("--token-file")
        .arg(data_dir.join("agent-token"))
        .arg("--ca")
        .arg(data_dir.join("ca.pem"))
        .arg("--state-dir")
        .arg(workspace.join(name))
        .arg("--name")
        .arg(name)
        .args(["--label", "demo=true"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

async fn list(args: &ClientArgs) -> anyhow::Result<Vec<AgentRecord>> {
    let mut client = OperatorClient::connect(args).await?;
    let response = client.request(OperatorRequest::ListAgents).await;
    client.close().await;
    match response? {
        OperatorResponse::Agents(agents) => Ok(agents),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Prints each agent as its state changes, until `expected` are online.
async fn watch_until_online(
    args: &ClientArgs,
    expected: usize,
    started: Instant,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut client = OperatorClient::connect(args).await?;
    let mut known: BTreeMap<String, AgentState> = BTreeMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break Err(anyhow::anyhow!("interrupted")),
        }
        if started.elapsed() > JOIN_DEADLINE {
            break Err(anyhow::anyhow!(
                "not every agent joined within {JOIN_DEADLINE:?}"
            ));
        }
        let OperatorResponse::Agents(agents) = client.request(OperatorRequest::ListAgents).await?
        else {
            continue;
        };
        for agent in &agents {
            if known.get(&agent.name) != Some(&agent.state) {
                let facts = &agent.facts;
                println!(
                    "  {:>6.2} s  {:<8} {:<8} {} {} {}, {} CPUs",
                    started.elapsed().as_secs_f64(),
                    agent.name,
                    agent.state.as_str(),
                    facts.distro(),
                    facts.arch,
                    facts.platform,
                    facts.cpus
                );
                known.insert(agent.name.clone(), agent.state);
            }
        }
        if known
            .values()
            .filter(|state| **state == AgentState::Online)
            .count()
            >= expected
        {
            break Ok(());
        }
    };
    client.close().await;
    outcome
}

async fn stop_gracefully(agent: &mut Child) {
    if let Some(pid) = agent.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(5), agent.wait())
        .await
        .is_err()
    {
        let _ = agent.kill().await;
    }
}
