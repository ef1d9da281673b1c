//! `polarizer-agent`: parse flags, load config, start logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::Parser;
use polarizer_agent::config::AgentSettings;
use polarizer_transport::daemon;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    args_conflicts_with_subcommands = true,
    name = "polarizer-agent",
    version,
    about = "The Polarizer agent: runs on every test platform.",
    after_help = "Exit status: 0 after a clean stop; 78 (EX_CONFIG) when the coordinator refused this \
                  agent for good (revoked, wrong enrollment token, unknown credential) or it has no \
                  credential and no token: starting it again as it is cannot help; 1 on any other error."
)]
struct Cli {
    /// A TOML file with any of the flags below as keys (flags and POLARIZER_* variables win)
    #[arg(long, env = "POLARIZER_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit
    #[arg(long)]
    check_config: bool,
    /// Log format: human or json
    #[arg(long, env = "POLARIZER_LOG_FORMAT", default_value = "human")]
    log_format: daemon::LogFormat,
    #[command(flatten)]
    settings: AgentSettings,
    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Record a custom event through the agent on this host (for tests and plugins); exit code 1 with the
    /// reason when the agent refuses it.
    Emit {
        /// The event's kind: 1-32 characters of a-z, 0-9, - and _ (e.g. app)
        #[arg(long)]
        kind: String,
        /// The event's data: JSON, at most 64 KiB
        #[arg(long)]
        data: String,
        /// One line for humans [default: the data, shortened]
        #[arg(long)]
        summary: Option<String>,
        /// The agent's event socket [default: $POLARIZER_EMIT_SOCKET, else the state dir's emit.sock]
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(AgentCommand::Emit {
        kind,
        data,
        summary,
        socket,
    }) = &cli.command
    {
        let socket = socket
            .clone()
            .or_else(|| cli.settings.emit_socket.clone())
            .unwrap_or_else(|| {
                cli.settings
                    .state_dir
                    .clone()
                    .unwrap_or_else(polarizer_agent::config::default_state_dir)
                    .join("emit.sock")
            });
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(polarizer_agent::collectors::emit::send(
                    &socket,
                    kind,
                    data,
                    summary.as_deref(),
                ))
            });
        return daemon::exit_code(outcome);
    }
    daemon::init_logging("info", cli.log_format);
    let outcome = (|| -> anyhow::Result<()> {
        let file_settings = match &cli.config {
            Some(path) => daemon::read_toml(path)?,
            None => AgentSettings::default(),
        };
        let config = cli.settings.or(file_settings).validate()?;
        if cli.check_config {
            println!("configuration is valid");
            return Ok(());
        }
        // One thread is plenty for an agent, and keeps its memory small.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(daemon::cancel_on_signal(shutdown.clone()));
            daemon::spawn_watchdog(shutdown.clone());
            polarizer_agent::run(config, shutdown).await
        })?;
        Ok(())
    })();
    let refused = outcome
        .as_ref()
        .err()
        .and_then(|err| err.downcast_ref::<polarizer_agent::AgentError>())
        .is_some_and(polarizer_agent::AgentError::is_final_refusal);
    let code = daemon::exit_code(outcome);
    if refused {
        return std::process::ExitCode::from(daemon::EXIT_REFUSED);
    }
    code
}
