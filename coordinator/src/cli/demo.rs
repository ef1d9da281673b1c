//! `polarizer demo`: a coordinator and local agents in a temporary directory, on loopback; the agents join
//! live, a change to the example test repository is triggered, and the run is watched as it happens.
//! Nothing to set up; nothing left running afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use polarizer_shared::protocol::{AgentRecord, AgentState, OperatorRequest, OperatorResponse};
use polarizer_shared::run::{TriggerKind, TriggerRequest};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cli::client::{ClientArgs, OperatorClient};
use crate::daemon::config::ServeConfig;

const JOIN_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(
    agent_count: u32,
    keep_running: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::daemon::local_agents::agent_binary()?;
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
    let coordinator = tokio::spawn(crate::daemon::serve::run(
        config,
        coordinator_shutdown.clone(),
        Some(listening_tx),
    ));
    let listening = listening_rx
        .await
        .context("the coordinator did not start")?;
    println!();

    let started = Instant::now();
    let names: Vec<String> = (1..=agent_count)
        .map(|index| format!("demo-{index}"))
        .collect();
    let agents = crate::daemon::local_agents::LocalAgents::start(
        &names,
        workspace.path(),
        &data_dir,
        listening.gossip,
        &["demo=true"],
    )?;
    for name in &names {
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
    let mut outcome =
        watch_until_online(&client_args, agent_count as usize, started, &shutdown).await;
    if outcome.is_ok() {
        if let Ok(agents) = list(&client_args).await {
            println!("\n{}", crate::cli::format::agents_table(&agents));
        }
        outcome = tokio::select! {
            outcome = run_examples(&client_args, workspace.path()) => outcome,
            () = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
        };
    }

    if outcome.is_ok() && keep_running {
        println!("everything keeps running; in another terminal try:");
        let flags = format!(
            "--data-dir {} --coordinator {}",
            data_dir.display(),
            listening.quic
        );
        println!("  polarizer runs {flags}");
        println!("  polarizer runs show 1 {flags}");
        println!("press Ctrl-C to stop");
        shutdown.cancelled().await;
    }

    agents.stop().await;
    coordinator_shutdown.cancel();
    coordinator.await.context("the coordinator task failed")??;
    if let Err(err) = &outcome {
        let kept = workspace.keep();
        bail!("{err:#}; logs kept in {}", kept.display());
    }
    println!(
        "demo finished after {:.1} s; everything stopped and cleaned up",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The main event: the example repository committed to git, a change to it triggered, the run watched
/// live, and its JUnit report written somewhere that outlives the demo.
async fn run_examples(args: &ClientArgs, workspace: &Path) -> anyhow::Result<()> {
    let repo = workspace.join("example-tests");
    crate::cli::examples::materialize(&repo)?;
    let changed = "src/identity/uuid.py";
    println!(
        "a commit changes {changed} in the example test repository ({}):",
        repo.display()
    );
    println!(
        "  polarizer trigger --repo {} --changed {changed} --kind commit --type unit,integration,functional\n",
        repo.display()
    );
    let mut client = OperatorClient::connect(args).await?;
    let request = TriggerRequest {
        repo: repo.display().to_string(),
        git_ref: "HEAD".into(),
        kind: TriggerKind::Commit,
        changed: vec![changed.into()],
        features: Vec::new(),
        test_types: vec!["unit".into(), "integration".into(), "functional".into()],
        artifacts: Vec::new(),
        all: false,
        context: Vec::new(),
        plan: String::new(),
    };
    let outcome = async {
        let OperatorResponse::Triggered(summary) = client
            .request(OperatorRequest::Trigger(Box::new(request)))
            .await?
        else {
            bail!("the coordinator answered the trigger with something else");
        };
        println!("{}\n", crate::cli::runs::trigger_sentence(&summary));
        // The examples fail and time out on purpose: the demo succeeds when the run finishes.
        if let Err(err) = crate::cli::runs::watch(&mut client, summary.run, false).await {
            println!("  ({err}: one test fails and one times out on purpose)");
        }
        let detail = crate::cli::runs::fetch(&mut client, summary.run).await?;
        if !detail.run.state.is_final() {
            bail!("run {} did not finish", summary.run);
        }
        let report = std::env::temp_dir().join(format!(
            "polarizer-demo-{}-run-{}.xml",
            std::process::id(),
            summary.run
        ));
        std::fs::write(&report, crate::core::reports::junit(&detail))
            .with_context(|| format!("cannot write {}", report.display()))?;
        println!("\nJUnit report: {}\n", report.display());
        Ok(())
    }
    .await;
    client.close().await;
    outcome
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
