//! What both daemons' `main`s share: reading a TOML config file, the systemd-aware default state
//! directory, logging setup, systemd notifications (readiness, watchdog, stopping), and the two-stage
//! SIGTERM/SIGINT handling.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// A config file that could not be read or parsed; the message names the key, line and column.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {message}")]
pub struct ConfigFileError {
    pub path: PathBuf,
    pub message: String,
}

/// A setting with a bad value, shown as `key: why`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub message: String,
}

/// A millisecond setting: `default` when unset, an error naming `key` when outside `allowed`.
pub fn millis_setting(
    key: &'static str,
    value: Option<u64>,
    default: u64,
    allowed: std::ops::RangeInclusive<u64>,
) -> Result<std::time::Duration, InvalidSetting> {
    let millis = value.unwrap_or(default);
    if !allowed.contains(&millis) {
        let message = format!(
            "{millis} is outside {}..={}",
            allowed.start(),
            allowed.end()
        );
        return Err(InvalidSetting { key, message });
    }
    Ok(std::time::Duration::from_millis(millis))
}

/// Reads a TOML file into `T` (whose `deny_unknown_fields` turns typos into errors).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let error = |message: String| ConfigFileError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
    toml::from_str(&text).map_err(|err| error(err.to_string().trim_end().to_string()))
}

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`; the first when several), else
/// `~/<home_relative>`.
pub fn state_directory_or(home_relative: &str) -> PathBuf {
    if let Some(state) = std::env::var_os("STATE_DIRECTORY").filter(|value| !value.is_empty()) {
        let first = state
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(home_relative)
}

/// How logs are written: `human` lines (the default) or one JSON object per line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown log format {0:?}: expected human or json")]
pub struct UnknownLogFormat(String);

impl std::str::FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_string())),
        }
    }
}

/// Logs to stderr, filtered by `POLARIZER_LOG` (`debug`, `polarizer=debug,info`: a level, and levels per
/// target) or `default_filter`. Colour only on a terminal; under systemd's journal (`JOURNAL_STREAM` set)
/// human lines carry no timestamp of their own, since journald stamps every line. The filter is a plain
/// list of targets (no regular expressions to compile: the agent's idle memory counts).
pub fn init_logging(default_filter: &str, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = || default_filter.parse().unwrap_or_default();
    let mut unusable = None;
    let filter: tracing_subscriber::filter::Targets = match std::env::var("POLARIZER_LOG") {
        Ok(text) => text.parse().unwrap_or_else(|err| {
            unusable = Some(format!(
                "POLARIZER_LOG={text:?} is not a filter ({err}); using {default_filter:?}"
            ));
            default()
        }),
        Err(_) => default(),
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Json => builder.json().finish().with(filter).init(),
        LogFormat::Human if under_journald => builder
            .with_ansi(false)
            .without_time()
            .finish()
            .with(filter)
            .init(),
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init(),
    }
    if let Some(warning) = unusable {
        tracing::warn!("{warning}");
    }
}

/// Tells systemd (`Type=notify`) the service is ready, with a status line for `systemctl status`.
/// A no-op outside systemd.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd the service is stopping (so a slow drain is not mistaken for a hang).
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// When the unit sets `WatchdogSec=`, pings systemd at half that interval from the async runtime, so a
/// wedged runtime stops the pings and systemd restarts the service. Ends with `shutdown`.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(timeout / 2);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                () = shutdown.cancelled() => return,
            }
        }
    });
}

/// The first SIGTERM or SIGINT cancels `shutdown` (a clean stop); a second one exits at once.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    on_two_signals(|| shutdown.cancel(), || std::process::exit(130)).await
}

/// Waits for SIGTERM or SIGINT: at the first, tells systemd the daemon is stopping and runs `first`;
/// at the second, runs `second`.
pub async fn on_two_signals(first: impl FnOnce(), second: impl FnOnce()) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
    notify_stopping();
    first();
    tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
    second();
}

/// The exit status of a daemon refused for good (revoked, a wrong enrollment token, a credential the
/// coordinator did not issue): sysexits.h's EX_CONFIG. Started again as it is, it would only be refused
/// again, so its unit names this status in `RestartPreventExitStatus=`.
pub const EXIT_REFUSED: u8 = 78;

/// Prints an error the way every Polarizer command does, and gives the exit code.
pub fn exit_code(outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
