//! JSON views: what `--json` prints and the HTTP API (`/api/`) answers, one function per record, so the
//! two never drift apart. Field names are a public interface: add, never rename.

use std::collections::BTreeMap;

use polarizer_shared::events::EventRow;
use polarizer_shared::platforms::{PlatformRecord, PoolRecord};
use polarizer_shared::protocol::AgentRecord;
use polarizer_shared::run::{RunDetail, RunRow, RunTestRow, RunUpdate, TriggerSummary};
use polarizer_shared::triggers::TriggerRecord;
use serde_json::json;

/// A Unix time in milliseconds as RFC 3339 UTC with milliseconds; empty when out of range.
pub fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One agent as `polarizer agents --json` prints it. Field names are a public interface: add, never rename.
pub fn agent_json(agent: &AgentRecord) -> serde_json::Value {
    let facts = &agent.facts;
    json!({
        "name": agent.name,
        "state": agent.state.as_str(),
        "platform": facts.platform.as_str(),
        "arch": facts.arch,
        "os": facts.os,
        "distro": facts.distro(),
        "distro_id": facts.distro_id,
        "distro_version": facts.distro_version,
        "kernel": facts.kernel,
        "hostname": facts.hostname,
        "cpus": facts.cpus,
        "memory_bytes": facts.memory_bytes,
        "labels": facts.labels,
        "agent_version": facts.agent_version,
        "address": agent.address,
        "gossip_live": agent.gossip_live,
        "first_seen": rfc3339(agent.first_seen_ms),
        "last_seen": rfc3339(agent.last_seen_ms),
    })
}

/// One run as `runs --json` lists it. Field names are a public interface: add, never rename.
pub fn run_row_json(run: &RunRow) -> serde_json::Value {
    json!({
        "id": run.id,
        "state": run.state.as_str(),
        "kind": run.kind.as_str(),
        "repo": run.repo,
        "ref": run.git_ref,
        "commit": run.commit,
        "created": rfc3339(run.created_ms),
        "finished": run.finished_ms.map(rfc3339),
        "tests": run.tests,
        "done": run.done,
        "problems": run.problems,
    })
}

/// `runs show --json` and `report --format json`. Field names are a public interface.
pub fn run_json(detail: &RunDetail) -> serde_json::Value {
    let mut run = run_row_json(&detail.run);
    run["changed"] = json!(detail.changed);
    run["artifacts"] = json!(detail.artifacts);
    run["message"] = json!(detail.message);
    run["infrastructure_trouble"] = json!(detail.infrastructure_trouble);
    run["suites"] = detail
        .suites
        .iter()
        .map(|suite| {
            json!({
                "id": suite.id,
                "ordinal": suite.ordinal,
                "kind": suite.kind,
                "platform": suite.platform.map(|kind| kind.as_str()),
                "arch": suite.arch,
                "distro": suite.distro,
                "state": suite.state,
                "attempt": suite.attempt,
                "agent": suite.agent,
                "waiting_for": suite.waiting_for,
                "versions": {
                    "commit": suite.versions.commit,
                    "agent_version": suite.versions.agent_version,
                    "packages": suite.versions.packages.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "artifacts": detail.artifacts,
                },
                "started": suite.started_ms.map(rfc3339),
                "finished": suite.finished_ms.map(rfc3339),
            })
        })
        .collect();
    run["tests"] = detail.tests.iter().map(test_json).collect();
    run
}

/// One test of a run, as `runs show --json` has it in `tests`.
pub fn test_json(test: &RunTestRow) -> serde_json::Value {
    json!({
        "test": test.test,
        "name": test.name,
        "suite": test.suite,
        "status": test.status.as_str(),
        "agent": test.agent,
        "attempt": test.attempt,
        "duration_ms": test.duration_ms,
        "started": test.started_ms.map(rfc3339),
        "message": test.message,
        "why": test.reasons,
        "lost_attempts": test.lost_attempts.iter().map(|lost| json!({
            "attempt": lost.attempt,
            "agent": lost.agent,
            "message": lost.message,
            "at": rfc3339(lost.at_ms),
        })).collect::<Vec<_>>(),
        "subresults": test.subresults.iter().map(|sub| json!({
            "name": sub.name,
            "classname": sub.classname,
            "status": sub.status.as_str(),
            "duration_ms": sub.duration_ms,
            "message": sub.message,
        })).collect::<Vec<_>>(),
        "output_tail": test.output_tail,
        "cluster": test.cluster.as_ref().map(|cluster| json!({
            "id": cluster.id,
            "issue": cluster.label.as_ref().map(|label| label.issue.as_str()),
            "kind": cluster.label.as_ref().map(|label| label.kind.as_str()),
            "note": cluster.label.as_ref().map(|label| label.note.as_str()),
        })),
        "quarantined": test.quarantined,
        "slow_p95_ms": test.slow_p95_ms,
    })
}

/// One trigger as `triggers --json` lists it. Field names are a public interface.
pub fn trigger_json(trigger: &TriggerRecord) -> serde_json::Value {
    json!({
        "id": trigger.id,
        "time": rfc3339(trigger.received_ms),
        "received_ms": trigger.received_ms,
        "source": trigger.source,
        "delivery": trigger.delivery,
        "repo": trigger.repo,
        "event": trigger.event,
        "sha": trigger.sha,
        "ref": trigger.git_ref,
        "outcome": trigger.outcome.as_str(),
        "reason": trigger.reason,
        "run": trigger.run,
        "report": trigger.report,
        "fetch_ms": trigger.fetch_ms,
        "planned_ms": trigger.planned_ms,
    })
}

/// A trigger's answer as `trigger --json` prints it: the run made, what was selected and why, and the
/// tree's warnings (one placed line each).
pub fn triggered_json(summary: &TriggerSummary, warnings: &[&str]) -> serde_json::Value {
    json!({
        "run": summary.run,
        "tests": summary.tests,
        "commit": summary.commit,
        "features": summary.touched_features,
        "dependent_features": summary.dependent_features,
        "fail_open": summary.fail_open,
        "parallel_suites": summary.parallel_suites,
        "serial_suites": summary.serial_suites,
        "warnings": warnings,
    })
}

/// The tree's warnings in a run's note (an undeclared feature, say): one placed line each.
pub fn note_warnings(message: &str) -> Vec<&str> {
    message
        .lines()
        .filter(|line| line.contains(": warning: "))
        .collect()
}

/// `platforms --json`: pools with how many platforms count against their `max`, and every platform.
pub fn platforms_json(
    pools: &[PoolRecord],
    platforms: &[PlatformRecord],
    now_ms: i64,
) -> serde_json::Value {
    json!({
        "pools": pools.iter().map(|pool| pool_json(pool, platforms)).collect::<Vec<_>>(),
        "platforms": platforms.iter().map(|platform| platform_json(platform, now_ms)).collect::<Vec<_>>(),
    })
}

/// Platforms of `pool` that count against its `max`.
pub fn in_use(pool: &PoolRecord, platforms: &[PlatformRecord]) -> usize {
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

/// One event as `tail --json` prints it. Field names are a public interface: add, never rename.
pub fn event_json(event: &EventRow) -> serde_json::Value {
    let data: serde_json::Value =
        serde_json::from_str(&event.data).unwrap_or_else(|_| json!(event.data));
    json!({
        "id": event.id,
        "agent": event.agent,
        "seq": event.seq,
        "time": rfc3339(event.agent_ms),
        "received": rfc3339(event.received_ms),
        "kind": event.kind,
        "run": event.run,
        "suite": event.suite,
        "test": event.test,
        "summary": event.summary,
        "data": data,
    })
}

/// A run's update as `/api/runs/{id}/watch` sends it: `type` says which, a finished test is the object
/// `test_json` writes.
pub fn update_json(update: &RunUpdate) -> serde_json::Value {
    match update {
        RunUpdate::TestStarted {
            run,
            test,
            agent,
            attempt,
        } => {
            json!({ "type": "test_started", "run": run, "test": test, "agent": agent, "attempt": attempt })
        }
        RunUpdate::TestFinished { run, row } => {
            json!({ "type": "test_finished", "run": run, "test": test_json(row) })
        }
        RunUpdate::Output {
            run,
            test,
            stream,
            line,
        } => json!({ "type": "output", "run": run, "test": test, "stream": stream, "line": line }),
        RunUpdate::Requeued {
            run,
            suite,
            attempt,
            agent,
        } => {
            json!({ "type": "requeued", "run": run, "suite": suite, "attempt": attempt, "agent": agent })
        }
        RunUpdate::RunFinished { run, state } => {
            json!({ "type": "run_finished", "run": run, "state": state.as_str() })
        }
        RunUpdate::Reinstated {
            run,
            suite,
            attempt,
            agent,
        } => {
            json!({ "type": "reinstated", "run": run, "suite": suite, "attempt": attempt, "agent": agent })
        }
    }
}
