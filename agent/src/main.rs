//! `polarizer-agent`: parse flags, load config, start logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::Parser;
use polarizer_agent::config::AgentSettings;
use polarizer_agent::Shutdown;
use polarizer_transport::daemon;

#[derive(Debug, Parser)]
#[command(
    args_conflicts_with_subcommands = true,
    name = "polarizer-agent",
    version,
    about = "The Polarizer agent: runs on every test platform.",
    after_help = "Stopping: the first SIGTERM (or SIGINT) drains: no new suite starts, the running test \
                  has --drain-timeout-ms to finish (then it is stopped and recorded as an error), cleanups \
                  run, the suite's other tests go back to the coordinator, and the agent exits once its \
                  records are acknowledged. A second SIGTERM stops at once.\n\n\
                  Exit status: 0 after a clean stop; 130 when a second signal stopped it; 78 (EX_CONFIG) when the coordinator refused this \
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

/// The exit status when a second signal stopped the agent before it drained (128 + SIGINT, as a shell
/// reports an interrupted command).
const EXIT_STOPPED: u8 = 130;

/// The first SIGTERM or SIGINT drains the agent; the second stops it at once.
async fn drain_then_stop_on_signals(shutdown: Shutdown) {
    daemon::on_two_signals(|| shutdown.drain.cancel(), || shutdown.stop.cancel()).await
}

fn main() -> std::process::ExitCode {
    // The agent does its work on one thread; glibc's default arena per thread would only hold memory
    // that the others cannot reuse (a blocking read, the file watcher's thread).
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
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
    let shutdown = Shutdown::default();
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
        // Blocking work (a package database read, a JUnit parse) is rare: its threads go soon after.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(std::time::Duration::from_secs(1))
            .build()?;
        // Dropping the runtime drops a suite still running, which kills its process groups.
        runtime.block_on(async {
            tokio::spawn(drain_then_stop_on_signals(shutdown.clone()));
            // Pings go on while the agent drains: the drain is bounded by its own timeout.
            daemon::spawn_watchdog(shutdown.stop.clone());
            polarizer_agent::run(config, shutdown.clone()).await
        })?;
        Ok(())
    })();
    if outcome.is_ok() && shutdown.stop.is_cancelled() {
        return std::process::ExitCode::from(EXIT_STOPPED);
    }
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
