//! `polarizer failures cluster FILE`: any text clustered offline into templates by `core::cluster`,
//! one line at a time; for every input line, in order, its cluster id and the cluster's template.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;

use polarizer_shared::analysis::{FailureCluster, FailureDetail, FailureLabel};
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};

use super::args::FailuresAction;
use super::client::OperatorClient;
use super::format::{rfc3339, table};
use crate::core::cluster::{cluster_lines, ClusterConfig};

pub(super) fn cluster(
    file: &Path,
    json: bool,
    similarity: f64,
    depth: usize,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&similarity) {
        anyhow::bail!("--similarity {similarity} is not between 0 and 1");
    }
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
        ))
    };
    let mut lines = Vec::new();
    for line in reader.split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        // Bytes that are not UTF-8 are shown as U+FFFD, never refused.
        let text = String::from_utf8_lossy(&line);
        lines.push(text.trim_end_matches('\r').to_string());
    }
    let config = ClusterConfig {
        similarity,
        depth,
        ..ClusterConfig::default()
    };
    let (clusterer, ids) = cluster_lines(lines.iter().map(String::as_str), config);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        let clusters: Vec<_> = clusterer
            .clusters()
            .into_iter()
            .map(|(id, template, count)| json!({ "id": id, "template": template, "lines": count }))
            .collect();
        serde_json::to_writer_pretty(&mut out, &json!({ "clusters": clusters, "lines": ids }))?;
        writeln!(out)?;
    } else {
        let templates: std::collections::HashMap<u32, String> = clusterer
            .clusters()
            .into_iter()
            .map(|(id, template, _)| (id, template))
            .collect();
        for id in ids {
            writeln!(
                out,
                "{id}\t{}",
                templates.get(&id).map(String::as_str).unwrap_or("")
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Milliseconds since the epoch `age` ago.
pub(super) fn since_ms(age: std::time::Duration) -> i64 {
    super::format::now_ms().saturating_sub(age.as_millis() as i64)
}

fn label_json(label: Option<&FailureLabel>) -> serde_json::Value {
    match label {
        Some(label) => json!({
            "issue": label.issue,
            "kind": label.kind.as_str(),
            "note": label.note,
            "labelled": rfc3339(label.labelled_ms),
        }),
        None => serde_json::Value::Null,
    }
}

/// One cluster in `failures --json`. Field names are a public interface: add, never rename.
fn cluster_json(cluster: &FailureCluster) -> serde_json::Value {
    json!({
        "id": cluster.id,
        "template": cluster.template,
        "count": cluster.failures,
        "tests": cluster.tests,
        "test_count": cluster.test_count,
        "first_seen": rfc3339(cluster.first_ms),
        "last_seen": rfc3339(cluster.last_ms),
        "label": label_json(cluster.label.as_ref()),
    })
}

fn label_text(label: Option<&FailureLabel>) -> String {
    label.map_or_else(
        || "-".to_string(),
        |label| {
            let mut text = format!("{} {}", label.kind, label.issue);
            text.truncate(text.trim_end().len());
            text
        },
    )
}

pub(super) async fn failures_command(
    client: &mut OperatorClient,
    action: Option<FailuresAction>,
    run: Option<u64>,
    since: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let request = match action {
        None => OperatorRequest::ListFailures {
            run,
            // A run's failures are all of them; otherwise the last week's.
            since_ms: match (since, run) {
                (Some(since), _) => Some(since_ms(since)),
                (None, Some(_)) => None,
                (None, None) => Some(since_ms(std::time::Duration::from_secs(7 * 86_400))),
            },
        },
        Some(FailuresAction::Show { id }) => OperatorRequest::ShowFailure { id },
        Some(FailuresAction::Label {
            id,
            issue,
            kind,
            note,
        }) => OperatorRequest::LabelFailure {
            id,
            label: Some(FailureLabel {
                issue,
                kind,
                note,
                labelled_ms: super::format::now_ms(),
            }),
        },
        Some(FailuresAction::Unlabel { id }) => OperatorRequest::LabelFailure { id, label: None },
        Some(FailuresAction::Cluster { .. }) => anyhow::bail!("`failures cluster` runs offline"),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match client.request(request).await? {
        OperatorResponse::Failures(clusters) => {
            if json {
                let rows: Vec<_> = clusters.iter().map(cluster_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if clusters.is_empty() {
                writeln!(out, "no failures")?;
            } else {
                let rows: Vec<Vec<String>> = clusters
                    .iter()
                    .map(|cluster| {
                        let mut tests = cluster
                            .tests
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ");
                        if cluster.test_count > 3 {
                            tests.push_str(&format!(" (+{})", cluster.test_count - 3));
                        }
                        vec![
                            cluster.id.to_string(),
                            cluster.failures.to_string(),
                            label_text(cluster.label.as_ref()),
                            rfc3339(cluster.last_ms),
                            tests,
                            cluster.template.clone(),
                        ]
                    })
                    .collect();
                write!(
                    out,
                    "{}",
                    table(
                        &[
                            "CLUSTER",
                            "COUNT",
                            "LABEL",
                            "LAST SEEN",
                            "TESTS",
                            "TEMPLATE"
                        ],
                        &rows
                    )
                )?;
            }
        }
        OperatorResponse::Failure(detail) => {
            if json {
                let mut value = cluster_json(&detail.cluster);
                value["merged"] = json!(detail.merged);
                value["similarity"] = json!(detail.similarity);
                value["examples"] = detail
                    .examples
                    .iter()
                    .map(|example| {
                        json!({
                            "run": example.run,
                            "test": example.test,
                            "status": example.status,
                            "at": rfc3339(example.at_ms),
                            "text": example.text,
                            "masked": example.masked,
                            "matched": example.matched,
                            "tokens": example.tokens,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write!(out, "{}", describe_cluster(&detail))?;
            }
        }
        OperatorResponse::Labelled { id, label } => {
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({ "id": id, "label": label_json(label.as_ref()) })
                )?;
            } else {
                match label {
                    Some(label) => writeln!(out, "cluster {id}: {}", label.describe())?,
                    None => writeln!(out, "cluster {id}: label withdrawn")?,
                }
            }
        }
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    }
    Ok(())
}

fn describe_cluster(detail: &FailureDetail) -> String {
    let cluster = &detail.cluster;
    let mut text = format!("cluster {}\ntemplate  {}\n", cluster.id, cluster.template);
    match &cluster.label {
        Some(label) => {
            text.push_str(&format!("label     {}\n", label.describe()));
            if !label.note.is_empty() {
                text.push_str(&format!("note      {}\n", label.note));
            }
        }
        None => text.push_str("label     none (polarizer failures label ID --issue … --kind …)\n"),
    }
    text.push_str(&format!(
        "failures  {} in {} tests, first {} last {}\n",
        cluster.failures,
        cluster.test_count,
        rfc3339(cluster.first_ms),
        rfc3339(cluster.last_ms)
    ));
    if !detail.merged.is_empty() {
        let merged: Vec<String> = detail.merged.iter().map(u64::to_string).collect();
        text.push_str(&format!(
            "merged    clusters {} (their templates converged)\n",
            merged.join(", ")
        ));
    }
    text.push_str(&format!(
        "why       a failure joins when at least {:.0} % of its tokens equal the template's; variable parts (numbers, ids, paths, addresses, times, quoted values) are masked as <*> first\n",
        detail.similarity * 100.0
    ));
    for example in &detail.examples {
        text.push_str(&format!(
            "\nrun {}  {}  {}  {}\n  text     {}\n  masked   {}\n  matched  {} of {} tokens\n",
            example.run,
            example.test,
            example.status,
            rfc3339(example.at_ms),
            example.text,
            example.masked,
            example.matched,
            example.tokens
        ));
    }
    text
}

pub(super) fn print_flaky(response: OperatorResponse, json: bool) -> anyhow::Result<()> {
    let flaky = match response {
        OperatorResponse::Flaky(flaky) => flaky,
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    };
    if json {
        let rows: Vec<_> = flaky
            .iter()
            .map(|test| {
                json!({
                    "test": test.test,
                    "flip_rate": test.flip_rate,
                    "results": test.results,
                    "passes": test.passes,
                    "failures": test.failures,
                    "quarantined": test.quarantined,
                    "evidence": test.evidence.iter().map(|evidence| json!({
                        "commit": evidence.commit,
                        "needs": serde_json::from_str::<serde_json::Value>(&evidence.needs).unwrap_or(json!(evidence.needs)),
                        "passed_in": evidence.passed_in,
                        "failed_in": evidence.failed_in,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if flaky.is_empty() {
        println!("no flaky tests: none passed and failed on the same commit");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = flaky
        .iter()
        .map(|test| {
            let evidence: Vec<String> = test
                .evidence
                .iter()
                .map(|evidence| {
                    let runs = |runs: &[u64]| {
                        runs.iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    format!(
                        "{}: passed in {}, failed in {}",
                        evidence.commit.chars().take(12).collect::<String>(),
                        runs(&evidence.passed_in),
                        runs(&evidence.failed_in)
                    )
                })
                .collect();
            vec![
                test.test.clone(),
                format!("{:.2}", test.flip_rate),
                format!("{}/{}", test.passes, test.results),
                if test.quarantined { "yes" } else { "no" }.to_string(),
                evidence.join("; "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "TEST",
                "FLIP RATE",
                "PASSED",
                "QUARANTINED",
                "EVIDENCE (COMMIT: RUNS)"
            ],
            &rows
        )
    );
    Ok(())
}

pub(super) fn print_stats(response: OperatorResponse, json: bool) -> anyhow::Result<()> {
    let stats = match response {
        OperatorResponse::Stats(stats) => stats,
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    };
    let host_json = |host: &polarizer_shared::analysis::HostStats| {
        json!({
            "agent": host.agent,
            "pool": host.pool,
            "attempts": host.attempts,
            "infra_errors": host.infra_errors,
            "infra_rate": host.infra_rate,
        })
    };
    if json {
        let value = json!({
            "since": stats.since_ms.map(rfc3339),
            "runs": stats.runs,
            "infrastructure_runs": stats.infrastructure_runs,
            "tests": stats.tests.iter().map(|test| json!({
                "test": test.test,
                "runs": test.runs,
                "results": test.results,
                "passes": test.passes,
                "failures": test.failures,
                "pass_rate": test.pass_rate,
                "mean_ms": test.mean_ms,
                "p95_ms": test.p95_ms,
                "flip_rate": test.flip_rate,
                "slow_last": test.slow_last,
                "last_ms": test.last_ms,
            })).collect::<Vec<_>>(),
            "agents": stats.hosts.iter().map(host_json).collect::<Vec<_>>(),
            "pools": stats.pools.iter().map(host_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let ms = |ms: Option<u64>| {
        ms.map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
    };
    let tests: Vec<Vec<String>> = stats
        .tests
        .iter()
        .map(|test| {
            vec![
                test.test.clone(),
                test.runs.to_string(),
                test.results.to_string(),
                format!("{:.0} %", test.pass_rate * 100.0),
                ms(test.mean_ms),
                ms(test.p95_ms),
                format!("{:.2}", test.flip_rate),
                if test.slow_last {
                    format!("slow ({})", ms(test.last_ms))
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "TEST",
                "RUNS",
                "RESULTS",
                "PASS RATE",
                "MEAN",
                "P95",
                "FLIP RATE",
                "LAST"
            ],
            &tests
        )
    );
    let hosts: Vec<Vec<String>> = stats
        .hosts
        .iter()
        .chain(&stats.pools)
        .map(|host| {
            vec![
                if host.agent.is_empty() {
                    format!("pool {}", host.pool)
                } else {
                    host.agent.clone()
                },
                if host.agent.is_empty() {
                    String::new()
                } else {
                    host.pool.clone()
                },
                host.attempts.to_string(),
                host.infra_errors.to_string(),
                format!("{:.1} %", host.infra_rate * 100.0),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(
            &[
                "AGENT / POOL",
                "POOL",
                "ATTEMPTS",
                "INFRA ERRORS",
                "INFRA RATE"
            ],
            &hosts
        )
    );
    println!(
        "\n{} runs finished; {} of them failed only on known system issues (infrastructure trouble)",
        stats.runs, stats.infrastructure_runs
    );
    Ok(())
}
