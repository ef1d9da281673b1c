//! The `polarizer` command line: `serve` runs the daemon, `demo` shows it working, every other
//! subcommand is an operator client of a running coordinator: dispatch here, the clap types in `args`, one module
//! per subcommand group, the QUIC client in `client`, tables and times in `format`.
//!
//! May import `shared` (the protocol), `core`'s plain parsing and `data_dir`; `daemon` only where a
//! subcommand starts one or works on its data dir without it (`serve`, `init`, `demo`,
//! `tokens create --offline`), and never `store` (checked by `tests/layers.rs`).

mod agents;
pub mod args;
mod catalog;
pub mod client;
pub mod demo;
pub mod examples;
mod failures;
pub mod format;
pub mod lint;
mod platforms;
pub mod polarion;
pub mod runs;
pub mod tail;
mod triggers;

pub use args::{
    AgentsAction, Cli, Command, FailuresAction, PlatformsAction, PolarionAction, TestsAction,
    TokensAction,
};

use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use tokio_util::sync::CancellationToken;

use crate::cli::client::OperatorClient;
use crate::daemon::config::ServeSettings;

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
            crate::daemon::serve::run(config, shutdown, None).await
        }
        Command::Init { data_dir } => crate::daemon::serve::init(data_dir),
        Command::Agents {
            action,
            json,
            limit,
            after,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = agents::agents_command(&mut client, action, json, (after, limit)).await;
            client.close().await;
            outcome
        }
        Command::Platforms {
            action,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = platforms::platforms_command(&mut client, action, json).await;
            client.close().await;
            outcome
        }
        Command::Failures {
            action:
                Some(FailuresAction::Cluster {
                    file,
                    similarity,
                    depth,
                }),
            json,
            ..
        } => failures::cluster(&file, json, similarity, depth),
        Command::Failures {
            action,
            run,
            since,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = failures::failures_command(&mut client, action, run, since, json).await;
            client.close().await;
            outcome
        }
        Command::Stats {
            since,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let response = client
                .request(OperatorRequest::Stats {
                    since_ms: Some(failures::since_ms(since)),
                })
                .await;
            client.close().await;
            failures::print_stats(response?, json)
        }
        Command::Tests {
            action: TestsAction::Flaky { since },
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let response = client
                .request(OperatorRequest::ListFlaky {
                    since_ms: Some(failures::since_ms(since)),
                })
                .await;
            client.close().await;
            failures::print_flaky(response?, json)
        }
        Command::Polarion {
            action,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = polarion::polarion_command(&mut client, action, json).await;
            client.close().await;
            outcome
        }
        Command::Open {
            path,
            no_browser,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let response = client.request(OperatorRequest::WebLogin { path }).await;
            client.close().await;
            open_link(response?, json, no_browser)
        }
        Command::Triggers {
            limit,
            json,
            client,
        } => {
            let mut client = OperatorClient::connect(&client).await?;
            let response = client
                .request(OperatorRequest::ListTriggers { limit })
                .await;
            client.close().await;
            triggers::print(response?, json)
        }
        Command::Tests {
            action:
                TestsAction::Lint {
                    path,
                    context,
                    strict,
                },
            json,
            ..
        } => lint::lint(&path, &context, json, strict),
        Command::Tests {
            action,
            json,
            client,
        } => {
            let request = catalog::tests_request(action)?;
            let mut client = OperatorClient::connect(&client).await?;
            let response = client.request(request).await;
            client.close().await;
            catalog::print_catalog_response(response?, json)
        }
        Command::Tokens {
            action:
                TokensAction::Create {
                    name,
                    ttl,
                    output,
                    offline: true,
                },
            client,
        } => {
            let token =
                crate::daemon::serve::create_host_token_offline(client.data_dir, name, ttl).await?;
            hand_over_host_token(&token, output.as_deref())
        }
        Command::Tokens { action, client } => {
            let request = match &action {
                TokensAction::Rotate => OperatorRequest::RotateEnrollmentToken,
                TokensAction::Create { name, ttl, .. } => OperatorRequest::CreateEnrollmentToken {
                    name: name.clone(),
                    ttl_ms: ttl.as_millis() as u64,
                },
            };
            let mut client = OperatorClient::connect(&client).await?;
            let response = client.request(request).await;
            client.close().await;
            match (response?, action) {
                (OperatorResponse::EnrollmentTokenRotated { path }, _) => {
                    println!("enrollment token rotated: the new one is in {path}; the old one is refused from now on");
                    Ok(())
                }
                (
                    OperatorResponse::EnrollmentTokenCreated { token, .. },
                    TokensAction::Create { output, .. },
                ) => hand_over_host_token(&token, output.as_deref()),
                (OperatorResponse::Error { message }, _) => anyhow::bail!("{message}"),
                (other, _) => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
            }
        }
        Command::Features { json, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let response = client.request(OperatorRequest::ListFeatures).await;
            client.close().await;
            catalog::print_catalog_response(response?, json)
        }
        Command::Trigger { args, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = crate::cli::runs::trigger(&mut client, args).await;
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
            let outcome = crate::cli::runs::runs(&mut client, action, json, limit).await;
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
            let outcome = crate::cli::runs::report(&mut client, run, format, output).await;
            client.close().await;
            outcome
        }
        Command::Tail { args, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = tokio::select! {
                outcome = crate::cli::tail::tail(&mut client, args) => outcome,
                () = shutdown.cancelled() => Ok(()),
            };
            client.close().await;
            outcome
        }
        Command::Replay { run, json, client } => {
            let mut client = OperatorClient::connect(&client).await?;
            let outcome = crate::cli::tail::replay(&mut client, run, json).await;
            client.close().await;
            outcome
        }
        Command::Demo {
            agents,
            keep_running,
        } => crate::cli::demo::run(agents, keep_running, shutdown).await,
    }
}

/// A new per-host token goes to `output` (0600), or to stdout when no file is named.
fn hand_over_host_token(token: &str, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            polarizer_transport::state_files::write_private(path, format!("{token}\n").as_bytes())?
        }
        None => println!("{token}"),
    }
    Ok(())
}

/// Prints the login link (and opens it in the desktop's browser, unless told not to).
fn open_link(response: OperatorResponse, json: bool, no_browser: bool) -> anyhow::Result<()> {
    let (url, expires_ms) = match response {
        OperatorResponse::WebLogin { url, expires_ms } => (url, expires_ms),
        OperatorResponse::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "url": url, "expires": crate::core::views::rfc3339(expires_ms) })
        );
    } else {
        println!("{url}");
        eprintln!("This link logs one browser in, once, within five minutes.");
    }
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    if desktop && !no_browser {
        // The URL is the coordinator's own link (http(s)://…), never an option.
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    Ok(())
}
