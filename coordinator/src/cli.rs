//! The `polarizer` command line: `serve` runs the daemon, `demo` shows it working, every other
//! subcommand is an operator client of a running coordinator.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use polarizer_shared::protocol::{AgentRecord, OperatorRequest, OperatorResponse};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientArgs, OperatorClient};
use crate::config::ServeSettings;

#[derive(Debug, Parser)]
#[command(
    name = "polarizer",
    version,
    about = "Run the right tests on the right machines as soon as something changes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: human or json
    #[arg(
        long,
        global = true,
        env = "POLARIZER_LOG_FORMAT",
        default_value = "human"
    )]
    pub log_format: polarizer_transport::daemon::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon.
    Serve {
        /// A TOML file with any of the flags below as keys (flags and POLARIZER_* variables win)
        #[arg(long, env = "POLARIZER_CONFIG")]
        config: Option<PathBuf>,
        /// Validate the configuration and exit
        #[arg(long)]
        check_config: bool,
        #[command(flatten)]
        settings: ServeSettings,
    },
    /// Create the data directory (database, CA, server certificate, tokens) without serving; idempotent.
    Init {
        /// The data directory [default: $STATE_DIRECTORY, else ~/.local/share/polarizer]
        #[arg(long, env = "POLARIZER_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the agent inventory, or act on an agent.
    Agents {
        #[command(subcommand)]
        action: Option<AgentsAction>,
        /// Print JSON (an array of objects) instead of a table
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import test metadata (fmf trees) and query it.
    Tests {
        #[command(subcommand)]
        action: TestsAction,
        /// Print JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The feature graph: each feature's paths, dependencies, dependents and test counts.
    Features {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Trigger a run: select the tests a change touches, plan suites, dispatch them to agents.
    Trigger {
        #[command(flatten)]
        args: crate::runs_cli::TriggerArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Recent runs; watch, show or cancel one.
    Runs {
        #[command(subcommand)]
        action: Option<crate::runs_cli::RunsAction>,
        /// Print JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
        /// How many recent runs to list
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a run's report: JUnit XML or JSON.
    Report {
        run: u64,
        #[arg(long, value_enum, default_value = "junit")]
        format: crate::runs_cli::ReportFormat,
        /// Write to this file instead of standard output
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Events from every agent, live: D-Bus signals, file and package changes, test output, results.
    Tail {
        #[command(flatten)]
        args: crate::tail_cli::TailArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A run's timeline: its results and events interleaved in time order.
    Replay {
        run: u64,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a coordinator and local agents in a temporary directory and watch them join.
    Demo {
        /// How many local agents to start
        #[arg(long, default_value_t = 3)]
        agents: u32,
        /// Keep everything running until Ctrl-C instead of stopping once all agents are online
        #[arg(long)]
        keep_running: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TestsAction {
    /// Import an fmf tree: a directory, or a git URL (cloned by the coordinator). Re-import is idempotent;
    /// tests that disappeared are marked removed.
    Import {
        /// A directory holding an fmf tree (.fmf/version), or a git URL
        location: String,
        /// The git ref to import (branch, tag or commit) [default: the remote's HEAD]
        #[arg(long = "ref", default_value = "")]
        git_ref: String,
        /// An adjust context dimension, key=value (repeatable), e.g. distro=rhel-9.4
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
    /// List tests; every filter given must hold.
    List {
        /// Tests covering this feature, directly or through a feature that depends on it
        #[arg(long)]
        feature: Option<String>,
        /// Tests that can run on this platform kind (vm, container, baremetal)
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        distro: Option<String>,
        /// unit, integration, functional, performance or acceptance
        #[arg(long = "type")]
        test_type: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        #[arg(long)]
        component: Option<String>,
        /// A linked requirement: relation:target (verifies:REQ-123) or just the target
        #[arg(long)]
        linked: Option<String>,
        /// Tests that need, create or modify this resource
        #[arg(long)]
        resource: Option<String>,
        /// Tests that must run after this test (name it in `after`)
        #[arg(long)]
        depends_on: Option<String>,
        /// Only tests whose metadata differs between distros (through adjust)
        #[arg(long)]
        differs_by_distro: bool,
        /// Include tests that disappeared from their source
        #[arg(long)]
        include_removed: bool,
    },
    /// A test's full, adjusted metadata and where it came from.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Revoke an agent: its credential stops working and its connection is closed.
    Revoke { name: String },
}

/// Runs a parsed command line. The caller prints errors as `error: {:#}` and exits non-zero.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            check_config,
            settings,
        } => {
            let file_settings = match &config {
                Some(path) => polarizer_transport::daemon::read_toml(path)?,
                None => ServeSettings::default(),
            };
            let config = settings.or(file_settings).validate()?;
            if check_config {
                println!("configuration is valid");
                return Ok(());
            }
            crate::serve::run(config, shutdown, None).await
        }
        Command::Init { data_dir } => init(data_dir),
        Command::Agents {
            action,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = agents_command(&mut client, action, json).await;
            client.close().await;
            outcome
        }
        Command::Tests {
            action,
            json,
            client,
        } => {
            let request = tests_request(action)?;
            let mut client = OperatorClient::connect(&client).await?;
            let response = client.request(request).await;
            client.close().await;
            print_catalog_response(response?, json)
        }
        Command::Features { json, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let response = client.request(OperatorRequest::ListFeatures).await;
            client.close().await;
            print_catalog_response(response?, json)
        }
        Command::Trigger { args, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = crate::runs_cli::trigger(&mut client, args).await;
            client.close().await;
            outcome
        }
        Command::Runs {
            action,
            json,
            limit,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = crate::runs_cli::runs(&mut client, action, json, limit).await;
            client.close().await;
            outcome
        }
        Command::Report {
            run,
            format,
            output,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = crate::runs_cli::report(&mut client, run, format, output).await;
            client.close().await;
            outcome
        }
        Command::Tail { args, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = tokio::select! {
                outcome = crate::tail_cli::tail(&mut client, args) => outcome,
                () = shutdown.cancelled() => Ok(()),
            };
            client.close().await;
            outcome
        }
        Command::Replay { run, json, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = crate::tail_cli::replay(&mut client, run, json).await;
            client.close().await;
            outcome
        }
        Command::Demo {
            agents,
            keep_running,
        } => crate::demo::run(agents, keep_running, shutdown).await,
    }
}

/// `polarizer init`: what `serve` does on first start, without serving (for ansible and packaging).
fn init(data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir =
        crate::data_dir::DataDir::new(data_dir.unwrap_or_else(crate::config::default_data_dir));
    let identity = data_dir.prepare()?;
    // Run the migrations too, so the first `serve` finds a ready database.
    let (store, writer) = crate::store::Store::open(&data_dir.database())?;
    drop(store);
    let _ = writer.join();
    let verb = if identity.created {
        "created"
    } else {
        "exists"
    };
    println!("{verb} {}", data_dir.root.display());
    print!("{}", data_dir.secrets_summary(&identity.ca_fingerprint));
    Ok(())
}

async fn agents_command(
    client: &mut OperatorClient,
    action: Option<AgentsAction>,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        None => {
            let OperatorResponse::Agents(agents) =
                client.request(OperatorRequest::ListAgents).await?
            else {
                anyhow::bail!("the coordinator answered a listing with something else");
            };
            if json {
                let rows: Vec<_> = agents.iter().map(agent_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).context("cannot encode JSON")?
                );
            } else {
                print!("{}", agents_table(&agents));
            }
        }
        Some(AgentsAction::Revoke { name }) => {
            let response = client
                .request(OperatorRequest::RevokeAgent { name: name.clone() })
                .await?;
            if let OperatorResponse::Revoked { was_online, .. } = response {
                if json {
                    println!(
                        "{}",
                        json!({ "name": name, "revoked": true, "was_online": was_online })
                    );
                } else if was_online {
                    println!("revoked {name}; its connection was closed");
                } else {
                    println!("revoked {name}");
                }
            }
        }
    }
    Ok(())
}

pub fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One agent as `polarizer agents --json` prints it. Field names are a public interface: add, never rename.
pub fn agent_json(agent: &AgentRecord) -> serde_json::Value {
    let facts = &agent.facts;
    json!({
        "name": agent.name,
        "state": agent.state.as_str(),
        "platform": facts.platform.as_str(),
        "arch": facts.arch,
        "os": facts.os,
        "distro": facts.distro(),
        "distro_id": facts.distro_id,
        "distro_version": facts.distro_version,
        "kernel": facts.kernel,
        "hostname": facts.hostname,
        "cpus": facts.cpus,
        "memory_bytes": facts.memory_bytes,
        "labels": facts.labels,
        "agent_version": facts.agent_version,
        "address": agent.address,
        "gossip_live": agent.gossip_live,
        "first_seen": rfc3339(agent.first_seen_ms),
        "last_seen": rfc3339(agent.last_seen_ms),
    })
}

pub fn agents_table(agents: &[AgentRecord]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|agent| {
            let facts = &agent.facts;
            let labels: Vec<String> = facts
                .labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            vec![
                agent.name.clone(),
                agent.state.as_str().to_string(),
                facts.platform.as_str().to_string(),
                facts.arch.clone(),
                facts.distro(),
                facts.cpus.to_string(),
                format!("{:.1} GiB", facts.memory_bytes as f64 / (1u64 << 30) as f64),
                rfc3339(agent.last_seen_ms),
                labels.join(","),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "NAME",
            "STATE",
            "PLATFORM",
            "ARCH",
            "DISTRO",
            "CPUS",
            "MEMORY",
            "LAST SEEN",
            "LABELS",
        ],
        &rows,
    );
    if agents.is_empty() {
        out.push_str("(no agents yet: start one with polarizer-agent --join HOST:7700 ...)\n");
    }
    out
}

fn tests_request(action: TestsAction) -> anyhow::Result<OperatorRequest> {
    Ok(match action {
        TestsAction::Import {
            location,
            git_ref,
            context,
        } => {
            let context = crate::import::parse_context(&context)?;
            // A local directory is read by the coordinator: give it an absolute path.
            let location = if crate::import::is_git_url(&location) {
                location
            } else {
                std::fs::canonicalize(&location)
                    .with_context(|| format!("{location}: no such directory"))?
                    .display()
                    .to_string()
            };
            OperatorRequest::ImportTests {
                location,
                git_ref,
                context,
            }
        }
        TestsAction::List {
            feature,
            platform,
            arch,
            distro,
            test_type,
            tag,
            tier,
            component,
            linked,
            resource,
            depends_on,
            differs_by_distro,
            include_removed,
        } => OperatorRequest::ListTests(Box::new(polarizer_shared::catalog::TestQuery {
            feature,
            platform,
            arch,
            distro,
            test_type,
            tag,
            tier,
            component,
            linked,
            resource,
            depends_on,
            differs_by_distro,
            include_removed,
        })),
        TestsAction::Show { id } => OperatorRequest::ShowTest { id },
    })
}

fn print_catalog_response(response: OperatorResponse, json: bool) -> anyhow::Result<()> {
    match response {
        OperatorResponse::Imported { source, summary } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "source": source, "summary": summary }))?
                );
            } else {
                let commit = if source.git_commit.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", &source.git_commit)
                };
                println!(
                    "imported {}{commit}: {} tests ({} new, {} changed, {} removed), {} features",
                    source.location,
                    summary.tests,
                    summary.added,
                    summary.changed,
                    summary.removed,
                    summary.features
                );
            }
        }
        OperatorResponse::Tests(tests) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&tests)?);
            } else {
                let rows: Vec<Vec<String>> = tests
                    .iter()
                    .map(|test| {
                        vec![
                            test.name.clone(),
                            test.test_type.clone(),
                            test.feature.clone(),
                            test.tier.clone(),
                            test.platform_kind.clone(),
                            format!("{}s", test.duration_seconds),
                            if test.removed {
                                "removed".into()
                            } else if test.enabled {
                                String::new()
                            } else {
                                "disabled".into()
                            },
                            test.summary.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "NAME", "TYPE", "FEATURE", "TIER", "PLATFORM", "DURATION", "STATE",
                            "SUMMARY"
                        ],
                        &rows
                    )
                );
                println!("{} tests", tests.len());
            }
        }
        OperatorResponse::Test {
            metadata,
            source,
            removed,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "metadata": metadata, "source": source, "removed": removed })
                    )?
                );
            } else {
                let mut value = serde_json::to_value(&metadata)?;
                if let Some(map) = value.as_object_mut() {
                    map.retain(|_, field| {
                        !(field.is_null()
                            || field == &json!("")
                            || field == &json!([])
                            || field == &json!({}))
                    });
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
                println!(
                    "source: {} {} {}",
                    source.location, source.git_ref, source.git_commit
                );
                if removed {
                    println!("removed: this test is no longer in its source");
                }
            }
        }
        OperatorResponse::Features(features) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&features)?);
            } else {
                let rows: Vec<Vec<String>> = features
                    .iter()
                    .map(|feature| {
                        vec![
                            feature.name.clone(),
                            feature.depends.join(","),
                            feature.dependents.join(","),
                            feature.direct_tests.to_string(),
                            feature.selected_tests.to_string(),
                            feature.paths.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "FEATURE",
                            "DEPENDS",
                            "DEPENDENTS",
                            "TESTS",
                            "SELECTED",
                            "PATHS"
                        ],
                        &rows
                    )
                );
            }
        }
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    }
    Ok(())
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|header| header.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}
