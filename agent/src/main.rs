//! `polarizer-agent`: parse flags, load config, start logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::Parser;
use polarizer_agent::config::AgentSettings;
use polarizer_transport::daemon;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "polarizer-agent",
    version,
    about = "The Polarizer agent: runs on every test platform."
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
    daemon::exit_code(outcome)
}
