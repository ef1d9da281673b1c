//! `polarizer platforms`: the pools and their platforms, as tables or JSON, and destroying one.

use anyhow::Context;
use polarizer_shared::platforms::{PlatformRecord, PoolRecord};
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use serde_json::json;

use super::args::PlatformsAction;
use super::client::OperatorClient;
use super::format::{rfc3339, table};

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
                let value = json!({
                    "pools": pools.iter().map(|pool| pool_json(pool, &platforms)).collect::<Vec<_>>(),
                    "platforms": platforms.iter().map(|platform| platform_json(platform, now)).collect::<Vec<_>>(),
                });
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

fn in_use(pool: &PoolRecord, platforms: &[PlatformRecord]) -> usize {
    platforms
        .iter()
        .filter(|platform| platform.pool == pool.name && platform.state.counts())
        .count()
}

fn pool_json(pool: &PoolRecord, platforms: &[PlatformRecord]) -> serde_json::Value {
    json!({
        "name": pool.name,
        "provisioner": pool.provisioner,
        "max": pool.max,
        "min_ready": pool.min_ready,
        "reuse": pool.reuse,
        "platforms": in_use(pool, platforms),
    })
}

fn suite_text(platform: &PlatformRecord) -> String {
    platform
        .suite
        .map(|suite| format!("{}/{}", suite.run, suite.suite))
        .unwrap_or_default()
}

fn platform_json(platform: &PlatformRecord, now_ms: i64) -> serde_json::Value {
    json!({
        "name": platform.name,
        "pool": platform.pool,
        "state": platform.state.as_str(),
        "age_seconds": (now_ms - platform.created_ms).max(0) / 1000,
        "created": rfc3339(platform.created_ms),
        "state_since": rfc3339(platform.state_ms),
        "run": platform.suite.map(|suite| suite.run),
        "suite": platform.suite.map(|suite| suite.suite),
        "agent": platform.name,
        "provider_id": platform.provider_id,
        "address": platform.address,
        "tries": platform.tries,
        "error": platform.error,
    })
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
