//! The scheduler loop: one task that carries out `core::schedule`'s decisions. Each step it reads the
//! truth from the store (a run's state lives in SQLite, so a restarted coordinator carries on where it
//! stopped) and the live sessions, asks `core::schedule::plan`, and applies the actions: ends runs past
//! their deadline, revokes leases of agents that are gone, leases queued suites and sends the
//! assignments. It runs when woken (a trigger, an agent coming or going, a suite finishing) or every
//! quarter second.
//!
//! Also here: committing an agent's records and publishing what they changed, and ending runs early.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use polarizer_shared::platforms::{PlatformRecord, PlatformState};

use polarizer_shared::protocol::CoordinatorMessage;
use polarizer_shared::run::{Record, SuiteRef};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::pools::{self, PoolPlan};
use crate::core::run::{RunEnd, SuiteState};
use crate::core::schedule::{self, Action, AgentView, ScheduleInput};
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::daemon::fanout::LiveEvent;
use crate::store::runs;
use crate::store::StoreError;

const TICK: Duration = Duration::from_millis(250);

/// Commits an agent's records and publishes what they changed. Returns the highest sequence number
/// committed for the agent: the acknowledgement.
pub async fn ingest(
    context: &Context,
    agent: &str,
    records: Vec<Record>,
) -> Result<u64, StoreError> {
    let name = agent.to_string();
    let attempts = context.settings.runs.attempts;
    let events = context.fanout.events.clone();
    let analysis = context.analysis.clone();
    let ingested = context
        .store
        .write_then(
            move |savepoint, path| {
                runs::ingest(
                    savepoint,
                    path,
                    &name,
                    records,
                    attempts,
                    now_ms(),
                    &analysis,
                )
            },
            // Published from the writer thread, in commit order: a follower that skips ids it has
            // seen never skips one it has not.
            move |ingested: &mut runs::Ingested| {
                let following = events.receiver_count() > 0;
                ingested.effects.retain_mut(|effect| match effect {
                    runs::Effect::Event(event) => {
                        if following {
                            let _ = events.send(LiveEvent::of(std::mem::take(event)));
                        }
                        false
                    }
                    _ => true,
                });
            },
        )
        .await?;
    context.publish(Some(agent), ingested.effects);
    Ok(ingested.committed)
}

/// [`ingest`] for a future that owns what it needs (a session keeps one in flight).
pub async fn ingest_owned(
    context: Context,
    agent: String,
    records: Vec<Record>,
) -> Result<u64, StoreError> {
    ingest(&context, &agent, records).await
}

pub async fn run(context: Context, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = context.scheduler.wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = step(&context).await {
            warn!(error = %err, "scheduling step failed; retrying");
        }
    }
}

/// Ends a run early (an operator's cancel, or its deadline) and stops its suites on their agents.
pub async fn end_run(context: &Context, run: u64, end: RunEnd) -> Result<(), StoreError> {
    let (running, effects) = context
        .store
        .write(move |savepoint, path| runs::end_run(savepoint, path, run, end, now_ms()))
        .await?;
    let reason = end.message();
    for (agent, suite) in running {
        context.sessions.send_to_agent(
            &agent,
            CoordinatorMessage::Cancel {
                suite,
                reason: reason.into(),
            },
        );
    }
    context.publish(None, effects);
    Ok(())
}

async fn revoke(context: &Context, suite: SuiteRef, message: String) -> Result<(), StoreError> {
    let attempts = context.settings.runs.attempts;
    warn!(%suite, reason = %message, "lease revoked");
    let effects = context
        .store
        .write(move |savepoint, path| {
            runs::revoke(savepoint, path, suite, &message, attempts, now_ms())
        })
        .await?;
    context.publish(None, effects);
    Ok(())
}

/// Gives back to `agent` (process `incarnation`) the attempts it lost and nobody else has begun, and
/// publishes that. Called when its session begins (before any of its records is read, so what it
/// spooled during a network cut counts) and by the scheduler should it lose the lease meanwhile.
pub async fn reinstate(context: &Context, agent: &str, incarnation: u64) -> Result<(), StoreError> {
    let name = agent.to_string();
    let effects = context
        .store
        .write(move |savepoint, path| {
            runs::reinstate(savepoint, path, &name, incarnation, now_ms())
        })
        .await?;
    for effect in &effects {
        if let runs::Effect::Update(polarizer_shared::run::RunUpdate::Reinstated {
            suite,
            attempt,
            ..
        }) = effect
        {
            info!(
                agent,
                suite, attempt, "agent back as the same process: its lost attempt is reinstated"
            );
        }
    }
    context.publish(None, effects);
    Ok(())
}

/// Leases each suite to its agent and sends it the assignment: one commit and one read for all of a
/// step's leases (a run over thousands of agents is thousands of leases in its first step).
async fn assign(context: &Context, leases: Vec<(SuiteRef, String, u64)>) -> Result<(), StoreError> {
    if leases.is_empty() {
        return Ok(());
    }
    let wanted = leases.clone();
    let leased: Vec<bool> = context
        .store
        .write(move |savepoint, path| {
            let now = now_ms();
            wanted
                .iter()
                .map(|(suite, agent, incarnation)| {
                    runs::lease(savepoint, path, suite.suite, agent, *incarnation, now)
                })
                .collect()
        })
        .await?;
    let mut granted = Vec::new();
    for ((suite, agent, _), leased) in leases.into_iter().zip(leased) {
        if leased {
            context.pools.leased(&agent, suite).await;
            granted.push((suite, agent));
        } else {
            // Someone got there first; the agent is free for another suite in the next step.
            context.scheduler.wake();
        }
    }
    let packages = context.settings.runs.packages.clone();
    let suites: Vec<SuiteRef> = granted.iter().map(|(suite, _)| *suite).collect();
    let assignments = context
        .store
        .read(move |reader| {
            suites
                .into_iter()
                .map(|suite| reader.assignment(suite, &packages))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    for ((suite, agent), assignment) in granted.into_iter().zip(assignments) {
        if let Some(assignment) = assignment {
            info!(suite = %suite, agent = %agent, tests = assignment.tests.len(), "suite dispatched");
            // If the session just ended, the next step sees the agent gone and revokes the lease.
            context
                .sessions
                .send_to_agent(&agent, CoordinatorMessage::Assign(Box::new(assignment)));
        }
    }
    Ok(())
}

async fn step(context: &Context) -> Result<(), StoreError> {
    let active = context.store.read(|reader| reader.active_suites()).await?;
    if active.is_empty() && context.pools.is_empty() {
        // Nothing queued or held, no pool to keep warm: idle agents coming and going cost nothing.
        context
            .scheduler
            .waiting
            .lock()
            .expect("waiting lock")
            .clear();
        return Ok(());
    }
    let online = context.sessions.online_agents();
    let platforms = context.pools.snapshot();
    let platform_states: HashMap<&str, PlatformState> = platforms
        .iter()
        .map(|platform| (platform.name.as_str(), platform.state))
        .collect();
    let views: Vec<AgentView<'_>> = online
        .iter()
        .map(|agent| AgentView {
            name: agent.name(),
            incarnation: agent.incarnation,
            facts: &agent.facts,
            // A platform that ran its suite (or is being cleaned or destroyed) takes no other.
            draining: agent.draining
                || platform_states
                    .get(agent.name())
                    .is_some_and(|state| !state.takes_suites()),
        })
        .collect();
    // Only holders of a lease are looked up (the grace after a restart is for them).
    let seen = context
        .sessions
        .seen_among(active.iter().map(|suite| suite.agent.as_str()));
    let plan = schedule::plan(&ScheduleInput {
        active: &active,
        online: &views,
        seen: &seen,
        restart_grace_until_ms: context.settings.restart_grace_until_ms,
        now_ms: now_ms(),
    });
    let pool_plan = if context.pools.is_empty() {
        PoolPlan::default()
    } else {
        plan_pools(context, &active, &online, &platforms, &plan)
    };
    // Everything else first, in order; then the step's leases together.
    let mut leases = Vec::new();
    for action in plan.actions {
        match action {
            Action::EndRunAtDeadline { run } => {
                info!(
                    run,
                    "run deadline passed; ending its unfinished tests as timeout"
                );
                end_run(context, run, RunEnd::Deadline).await?;
            }
            Action::Revoke { suite, message } => revoke(context, suite, message).await?,
            Action::Reinstate { agent, incarnation } => {
                reinstate(context, &agent, incarnation).await?
            }
            Action::Assign {
                suite,
                agent,
                incarnation,
            } => leases.push((suite, agent, incarnation)),
        }
    }
    assign(context, leases).await?;
    context.pools.apply(pool_plan.actions).await?;
    let mut waiting = plan.waiting;
    waiting.extend(pool_plan.waiting);
    *context.scheduler.waiting.lock().expect("waiting lock") = waiting;
    Ok(())
}

/// What the pools do in this step: platforms for the suites no agent took, warm ones, joined and
/// released ones.
fn plan_pools(
    context: &Context,
    active: &[schedule::ActiveSuite],
    online: &[crate::daemon::sessions::OnlineAgent],
    platforms: &[PlatformRecord],
    plan: &schedule::Plan,
) -> PoolPlan {
    let failed = context.pools.failed_pools();
    let waiting: Vec<pools::WaitingSuite<'_>> = active
        .iter()
        .filter(|suite| plan.waiting.contains_key(&suite.suite))
        .map(|suite| pools::WaitingSuite {
            suite: suite.suite_ref(),
            needs: &suite.needs,
            failed_pools: failed.get(&suite.suite).map_or(&[], Vec::as_slice),
            reason: plan.waiting.get(&suite.suite).map_or("", String::as_str),
            containerfile: &suite.containerfile,
        })
        .collect();
    let online_names: BTreeSet<&str> = online.iter().map(|agent| agent.name()).collect();
    let mut busy: BTreeSet<&str> = active
        .iter()
        .filter(|suite| suite.state == SuiteState::Running)
        .map(|suite| suite.agent.as_str())
        .collect();
    for action in &plan.actions {
        match action {
            Action::Assign { agent, .. } | Action::Reinstate { agent, .. } => {
                busy.insert(agent.as_str());
            }
            _ => {}
        }
    }
    let pool_views = context.pools.views();
    let now = now_ms();
    let platform_views: Vec<pools::PlatformView<'_>> = platforms
        .iter()
        .map(|platform| pools::PlatformView {
            name: &platform.name,
            pool: &platform.pool,
            state: platform.state,
            for_suite: platform.suite.map(|suite| suite.suite),
            dedicated: !platform.image.is_empty(),
            made: !platform.provider_id.is_empty(),
            idle_ms: if platform.state == PlatformState::Ready {
                now - platform.state_ms
            } else {
                0
            },
        })
        .collect();
    pools::plan(&pools::PoolInput {
        pools: &pool_views,
        platforms: &platform_views,
        waiting: &waiting,
        online: &online_names,
        busy: &busy,
    })
}
