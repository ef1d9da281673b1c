//! The operator's failure analysis requests: labels put on clusters (checked, then stored), flaky
//! tests and statistics computed by `core::analysis` from what the store reads.

use polarizer_shared::analysis::{FailureLabel, HostStats, Stats};
use polarizer_shared::protocol::OperatorResponse;
use tracing::info;

use crate::core::analysis;
use crate::daemon::context::Context;

const MAX_ISSUE: usize = 200;
const MAX_NOTE: usize = 2000;

fn check_label(label: &FailureLabel) -> Result<(), String> {
    if label.issue.chars().count() > MAX_ISSUE || label.issue.chars().any(char::is_control) {
        return Err(format!(
            "--issue must be at most {MAX_ISSUE} characters on one line"
        ));
    }
    if label.note.chars().count() > MAX_NOTE {
        return Err(format!("--note must be at most {MAX_NOTE} characters"));
    }
    Ok(())
}

pub async fn label(context: &Context, id: u64, label: Option<FailureLabel>) -> OperatorResponse {
    if let Some(label) = &label {
        if let Err(message) = check_label(label) {
            return OperatorResponse::Error { message };
        }
    }
    let stored = label.clone();
    let labelled = context
        .store
        .write(move |savepoint, path| {
            crate::store::analysis::label(savepoint, path, id, stored.as_ref())
        })
        .await;
    match labelled {
        Ok(true) => {
            match &label {
                Some(label) => {
                    info!(cluster = id, issue = %label.issue, kind = %label.kind, "failure cluster labelled")
                }
                None => info!(cluster = id, "failure cluster label withdrawn"),
            }
            OperatorResponse::Labelled { id, label }
        }
        Ok(false) => OperatorResponse::Error {
            message: format!(
                "no failure cluster {id} (polarizer failures lists them; a merged one is labelled through the cluster it went into)"
            ),
        },
        Err(err) => OperatorResponse::Error {
            message: err.to_string(),
        },
    }
}

pub async fn flaky(context: &Context, since_ms: Option<i64>) -> OperatorResponse {
    let settings = context.analysis_settings();
    let read = context
        .store
        .read(move |reader| {
            let mut quarantined = settings.quarantine;
            quarantined.extend(reader.quarantine()?.into_iter().map(|(name, _)| name));
            let mut flaky = Vec::new();
            reader.each_test_results(since_ms, |points| {
                flaky.extend(analysis::flaky(&points, &quarantined));
            })?;
            analysis::rank_flaky(&mut flaky);
            Ok(flaky)
        })
        .await;
    match read {
        Ok(flaky) => OperatorResponse::Flaky(flaky),
        Err(err) => OperatorResponse::Error {
            message: err.to_string(),
        },
    }
}

pub async fn stats(context: &Context, since_ms: Option<i64>) -> OperatorResponse {
    let settings = context.analysis_settings();
    let read = context
        .store
        .read(move |reader| {
            let mut tests = Vec::new();
            reader.each_test_results(since_ms, |points| {
                tests.extend(analysis::test_stats(
                    &points,
                    settings.slow_factor,
                    settings.slow_min_results,
                ));
            })?;
            let hosts = reader.host_stats(since_ms)?;
            let runs = reader.runs_since(since_ms)?;
            let mut infrastructure_runs = 0;
            for run in &runs {
                if reader.infrastructure_run(*run)? {
                    infrastructure_runs += 1;
                }
            }
            Ok((tests, hosts, runs.len() as u64, infrastructure_runs))
        })
        .await;
    match read {
        Ok((tests, hosts, runs, infrastructure_runs)) => {
            let mut pools: std::collections::BTreeMap<String, HostStats> = Default::default();
            for host in hosts.iter().filter(|host| !host.pool.is_empty()) {
                let pool = pools.entry(host.pool.clone()).or_insert(HostStats {
                    agent: String::new(),
                    pool: host.pool.clone(),
                    attempts: 0,
                    infra_errors: 0,
                    infra_rate: 0.0,
                });
                pool.attempts += host.attempts;
                pool.infra_errors += host.infra_errors;
                pool.infra_rate = pool.infra_errors as f64 / pool.attempts.max(1) as f64;
            }
            OperatorResponse::Stats(Box::new(Stats {
                since_ms,
                tests,
                hosts,
                pools: pools.into_values().collect(),
                runs,
                infrastructure_runs,
            }))
        }
        Err(err) => OperatorResponse::Error {
            message: err.to_string(),
        },
    }
}
