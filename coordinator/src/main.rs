//! `polarizer`: parse flags, start logging, run the command, print errors as `error: ...`.

use clap::Parser;
use polarizer::cli::client::{CoordinatorStopped, EXIT_COORDINATOR_STOPPED};
use polarizer::cli::lint::LintFailed;
use polarizer::cli::{Cli, Command};
use polarizer_transport::daemon;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The daemon logs its life; client commands speak only when something is wrong.
    let is_daemon = matches!(cli.command, Command::Serve { .. });
    if !matches!(cli.command, Command::Serve { .. } | Command::Demo { .. }) {
        // A client's output piped into `head` ends it quietly, as it ends `ls` or `grep`: the default
        // SIGPIPE action instead of Rust's (ignored, then a panic on the failed print). The daemons keep
        // it ignored: their sockets report a closed peer as an error to handle.
        restore_default_sigpipe();
    }
    let default_level = if is_daemon { "info" } else { "warn" };
    daemon::init_logging(default_level, cli.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return daemon::exit_code(Err(
                anyhow::Error::new(err).context("cannot start the async runtime")
            ))
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(daemon::cancel_on_signal(shutdown.clone()));
        if is_daemon {
            daemon::spawn_watchdog(shutdown.clone());
        }
        polarizer::cli::run(cli, shutdown).await
    });
    // Dropping a runtime waits for every blocking task without limit (a git clone, a long read): the
    // daemon has already stopped what matters, so give the rest a moment and go.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Err(err) if CoordinatorStopped::is(&err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(EXIT_COORDINATOR_STOPPED)
        }
        Err(err) if LintFailed::of(&err).is_some() => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(LintFailed::of(&err).map_or(1, |failed| failed.code))
        }
        outcome => daemon::exit_code(outcome),
    }
}

fn restore_default_sigpipe() {
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
