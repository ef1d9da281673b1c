//! `polarizer platforms`: the pools and their platforms, as tables or JSON, and destroying one.

use anyhow::Context;
use polarizer_shared::platforms::{PlatformRecord, PoolRecord};
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use serde_json::json;

use super::args::PlatformsAction;
use super::client::OperatorClient;
use super::format::table;
use crate::core::views::{in_use, platforms_json};

pub(super) async fn platforms_command(
    client: &mut OperatorClient,
    action: Option<PlatformsAction>,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        None => {
            let OperatorResponse::Platforms { pools, platforms } =
                client.request(OperatorRequest::ListPlatforms).await?
            else {
                anyhow::bail!("the coordinator answered a listing with something else");
            };
            let now = chrono::Utc::now().timestamp_millis();
            if json {
                let value = platforms_json(&pools, &platforms, now);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).context("cannot encode JSON")?
                );
            } else {
                print!("{}", tables(&pools, &platforms, now));
            }
        }
        Some(PlatformsAction::Destroy { name }) => {
            match client
                .request(OperatorRequest::DestroyPlatform { name: name.clone() })
                .await?
            {
                OperatorResponse::PlatformDestroyed { .. } if json => {
                    println!("{}", json!({ "name": name, "destroying": true }));
                }
                OperatorResponse::PlatformDestroyed { .. } => {
                    println!("destroying {name}");
                }
                other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
            }
        }
    }
    Ok(())
}

fn suite_text(platform: &PlatformRecord) -> String {
    platform
        .suite
        .map(|suite| format!("{}/{}", suite.run, suite.suite))
        .unwrap_or_default()
}

fn age(ms: i64) -> String {
    let seconds = ms.max(0) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        _ => format!("{}h", seconds / 3600),
    }
}

fn tables(pools: &[PoolRecord], platforms: &[PlatformRecord], now_ms: i64) -> String {
    let pool_rows: Vec<Vec<String>> = pools
        .iter()
        .map(|pool| {
            vec![
                pool.name.clone(),
                pool.provisioner.clone(),
                format!("{}/{}", in_use(pool, platforms), pool.max),
                pool.min_ready.to_string(),
                pool.reuse.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &["POOL", "PROVISIONER", "IN USE", "MIN READY", "REUSE"],
        &pool_rows,
    );
    if pools.is_empty() {
        out.push_str("(no pools: add [[pools]] to coordinator.toml)\n");
    }
    if platforms.is_empty() {
        out.push_str("\n(no platforms)\n");
        return out;
    }
    let rows: Vec<Vec<String>> = platforms
        .iter()
        .map(|platform| {
            vec![
                platform.name.clone(),
                platform.pool.clone(),
                platform.state.as_str().into(),
                age(now_ms - platform.created_ms),
                suite_text(platform),
                platform.name.clone(),
                platform.error.clone(),
            ]
        })
        .collect();
    out.push('\n');
    out += &table(
        &[
            "PLATFORM",
            "POOL",
            "STATE",
            "AGE",
            "RUN/SUITE",
            "AGENT",
            "ERROR",
        ],
        &rows,
    );
    out
}
