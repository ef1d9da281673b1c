//! `polarizer-agent`: parse flags, load config, start logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::Parser;
use polarizer_agent::config::AgentSettings;
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
    #[command(flatten)]
    settings: AgentSettings,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("POLARIZER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let outcome = (|| -> anyhow::Result<()> {
        let file_settings = match &cli.config {
            Some(path) => AgentSettings::from_file(path)?,
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
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            polarizer_agent::run(config, shutdown).await
        })?;
        Ok(())
    })();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
    shutdown.cancel();
    tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
    std::process::exit(130);
}
