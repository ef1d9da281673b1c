//! The scheduler: one task that keeps leases honest and hands queued suites to idle agents whose facts
//! match. It reads the truth from the store every step (a run's state lives in SQLite, so a restarted
//! coordinator carries on where it stopped), and runs when woken (a trigger, an agent coming or going, a
//! suite finishing) or every quarter second.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use polarizer_shared::protocol::CoordinatorMessage;
use polarizer_shared::run::{Record, SuiteRef, TestStatus};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::placement::{facts_match, waiting_reason};
use crate::daemon::now_ms;
use crate::daemon::server::{OnlineAgent, Shared};
use crate::store::runs;
use crate::store::StoreError;

const TICK: Duration = Duration::from_millis(250);

/// Commits an agent's records and publishes what they changed. Returns the highest sequence number
/// committed for the agent: the acknowledgement.
pub async fn ingest(shared: &Shared, agent: &str, records: Vec<Record>) -> Result<u64, StoreError> {
    let name = agent.to_string();
    let attempts = shared.runs.attempts;
    let events = shared.events.clone();
    let ingested = shared
        .store
        .write_then(
            move |savepoint, path| {
                runs::ingest(savepoint, path, &name, records, attempts, now_ms())
            },
            // Published from the writer thread, in commit order: a follower that skips ids it has
            // seen never skips one it has not.
            move |ingested: &mut runs::Ingested| {
                let following = events.receiver_count() > 0;
                ingested.effects.retain_mut(|effect| match effect {
                    runs::Effect::Event(event) => {
                        if following {
                            let _ = events.send(Arc::new(std::mem::take(event)));
                        }
                        false
                    }
                    _ => true,
                });
            },
        )
        .await?;
    shared.publish(Some(agent), ingested.effects);
    Ok(ingested.committed)
}

/// [`ingest`] for a future that owns what it needs (a session keeps one in flight).
pub async fn ingest_owned(
    shared: Arc<Shared>,
    agent: String,
    records: Vec<Record>,
) -> Result<u64, StoreError> {
    ingest(&shared, &agent, records).await
}

pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.schedule.notified() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = step(&shared).await {
            warn!(error = %err, "scheduling step failed; retrying");
        }
    }
}

/// Ends a run early (an operator's cancel, or its deadline) and stops its suites on their agents.
pub async fn end_run(
    shared: &Shared,
    run: u64,
    status: TestStatus,
    message: String,
) -> Result<(), StoreError> {
    let reason = message.clone();
    let (running, effects) = shared
        .store
        .write(move |savepoint, path| {
            runs::end_run(savepoint, path, run, status, &message, now_ms())
        })
        .await?;
    for (agent, suite) in running {
        shared.send_to_agent(
            &agent,
            CoordinatorMessage::Cancel {
                suite,
                reason: reason.clone(),
            },
        );
    }
    shared.publish(None, effects);
    Ok(())
}

async fn revoke(shared: &Shared, suite: SuiteRef, message: String) -> Result<(), StoreError> {
    let attempts = shared.runs.attempts;
    warn!(%suite, reason = %message, "lease revoked");
    let effects = shared
        .store
        .write(move |savepoint, path| {
            runs::revoke(savepoint, path, suite, &message, attempts, now_ms())
        })
        .await?;
    shared.publish(None, effects);
    Ok(())
}

async fn step(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let active = shared.store.read(|reader| reader.active_suites()).await?;
    let online = shared.online_agents();
    let by_name: HashMap<&str, &OnlineAgent> = online
        .iter()
        .map(|agent| (agent.name.as_str(), agent))
        .collect();
    let now = now_ms();
    let in_grace = shared.started.elapsed() < shared.runs.lease_grace;

    let mut ended = BTreeSet::new();
    for suite in &active {
        if suite.run_deadline_ms <= now && ended.insert(suite.run) {
            info!(
                run = suite.run,
                "run deadline passed; ending its unfinished tests as timeout"
            );
            end_run(
                shared,
                suite.run,
                TestStatus::Timeout,
                "the run's deadline passed before this test finished".into(),
            )
            .await?;
        }
    }

    let mut busy: BTreeSet<String> = BTreeSet::new();
    for suite in active
        .iter()
        .filter(|suite| suite.state == "running" && !ended.contains(&suite.run))
    {
        match by_name.get(suite.agent.as_str()) {
            Some(agent) if agent.incarnation == suite.incarnation => {
                busy.insert(suite.agent.clone());
            }
            Some(_) => {
                revoke(
                    shared,
                    suite.suite_ref(),
                    format!(
                        "agent {} restarted during attempt {}",
                        suite.agent, suite.attempt
                    ),
                )
                .await?
            }
            // After a coordinator restart, agents get a moment to reconnect and keep their suites.
            None if in_grace
                && !shared
                    .seen
                    .lock()
                    .expect("seen lock")
                    .contains(&suite.agent) => {}
            None => {
                revoke(
                    shared,
                    suite.suite_ref(),
                    format!(
                        "agent {} went offline during attempt {}",
                        suite.agent, suite.attempt
                    ),
                )
                .await?
            }
        }
    }

    let mut waiting = HashMap::new();
    for suite in active
        .iter()
        .filter(|suite| suite.state == "queued" && !ended.contains(&suite.run))
    {
        let candidate = online
            .iter()
            .filter(|agent| !busy.contains(&agent.name) && facts_match(&agent.facts, &suite.needs))
            .min_by(|a, b| a.name.cmp(&b.name));
        let Some(agent) = candidate else {
            let facts: Vec<_> = online.iter().map(|agent| &agent.facts).collect();
            waiting.insert(
                suite.suite,
                waiting_reason(&suite.needs, &facts, busy.len()),
            );
            continue;
        };
        let (suite_id, name, incarnation) = (suite.suite, agent.name.clone(), agent.incarnation);
        let leased = shared
            .store
            .write(move |savepoint, path| {
                runs::lease(savepoint, path, suite_id, &name, incarnation, now_ms())
            })
            .await?;
        if !leased {
            continue;
        }
        busy.insert(agent.name.clone());
        let suite_ref = suite.suite_ref();
        let packages = shared.runs.packages.clone();
        let assignment = shared
            .store
            .read(move |reader| reader.assignment(suite_ref, &packages))
            .await?;
        if let Some(assignment) = assignment {
            info!(suite = %suite_ref, agent = %agent.name, tests = assignment.tests.len(), "suite dispatched");
            // If the session just ended, the next step sees the agent gone and revokes the lease.
            let _ = agent
                .outbox
                .send(CoordinatorMessage::Assign(Box::new(assignment)));
        }
    }
    *shared.waiting.lock().expect("waiting lock") = waiting;
    Ok(())
}
