//! Message buses in and out: build messages become runs, and every run they start is announced back
//! as CI messages. A message is acknowledged only once what it starts is stored (a trigger per matching
//! rule, deduplicated by the message id), so a broker's redelivery never starts a run twice; a CI message
//! is stored before it is sent and sent until the broker confirms it, so a broker that is down loses
//! nothing.

pub mod amqp091;
pub mod amqp1;
pub mod config;
mod link;
mod tls;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polarizer_shared::run::{RunState, RunUpdate, TriggerRequest};
use polarizer_shared::triggers::TriggerOutcome;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::bus::{self as messages, Announce, Build, CategoryResult, Reading};
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::store::bus as store_bus;
use crate::store::sql::sqlite_error;
use crate::store::triggers::{self, NewTrigger, Recorded};

use config::{BusConfig, BusesConfig, Protocol, Rule};

/// Counters for `/metrics` and the benchmark.
#[derive(Default)]
pub struct BusMetrics {
    pub received: AtomicU64,
    pub matched: AtomicU64,
    pub unmatched: AtomicU64,
    pub malformed: AtomicU64,
    pub duplicates: AtomicU64,
    pub runs: AtomicU64,
    pub published: AtomicU64,
}

/// Triggers planned at once.
const PLANNERS: usize = 4;

/// What a consumer does with a delivery once its message was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stored (or nothing to store): acknowledge.
    Accept,
    /// Malformed: never redeliver.
    Reject(String),
    /// Not stored (the store failed): give it back to the broker.
    Release(String),
}

/// What the planner reads back of a stored bus trigger.
#[derive(serde::Serialize, serde::Deserialize)]
struct Planned {
    bus: String,
    message_id: String,
    topic: String,
    rule: String,
    build: Build,
    request: TriggerRequest,
}

pub struct Buses {
    pub config: BusesConfig,
    context: Context,
    wake_planner: Notify,
    wake_announcer: Notify,
    planning: Mutex<BTreeSet<u64>>,
    pub metrics: BusMetrics,
    /// One wake per bus's publisher.
    publishers: Vec<Arc<Notify>>,
    /// Where runs are shown (`web_url`): CI messages link to `/runs/N` under it.
    web_url: String,
}

impl Buses {
    pub fn new(config: BusesConfig, context: Context, web_url: &str) -> Arc<Buses> {
        let publishers = config
            .buses
            .iter()
            .map(|_| Arc::new(Notify::new()))
            .collect();
        Arc::new(Buses {
            config,
            context,
            wake_planner: Notify::new(),
            wake_announcer: Notify::new(),
            planning: Mutex::new(BTreeSet::new()),
            metrics: BusMetrics::default(),
            publishers,
            web_url: web_url.trim_end_matches('/').to_string(),
        })
    }

    /// Starts each bus's consumer and publisher, the planner and the announcer.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        for (index, bus) in self.config.buses.iter().enumerate() {
            let wake = self.publishers[index].clone();
            match bus.protocol {
                Protocol::Amqp091 => {
                    tracker.spawn(amqp091::consume(
                        self.clone(),
                        bus.clone(),
                        shutdown.clone(),
                    ));
                    if bus.publish_prefix.is_some() {
                        tracker.spawn(amqp091::publish(
                            self.clone(),
                            bus.clone(),
                            wake,
                            shutdown.clone(),
                        ));
                    }
                }
                Protocol::Amqp1 => {
                    tracker.spawn(amqp1::consume(self.clone(), bus.clone(), shutdown.clone()));
                    if bus.publish_prefix.is_some() {
                        tracker.spawn(amqp1::publish(
                            self.clone(),
                            bus.clone(),
                            wake,
                            shutdown.clone(),
                        ));
                    }
                }
            }
        }
        tracker.spawn(self.clone().planner(shutdown.clone()));
        tracker.spawn(self.clone().announcer(shutdown.clone()));
        let buses = self.clone();
        let mut updates = self.context.fanout.updates.subscribe();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    update = updates.recv() => match update {
                        Ok(RunUpdate::RunFinished { .. } | RunUpdate::TestStarted { .. })
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            buses.wake_announcer.notify_one()
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }

    /// The counters in Prometheus' text format, for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let counters = &self.metrics;
        [
            ("received", "Messages taken from the buses.", &counters.received),
            ("matched", "Build messages that matched a rule.", &counters.matched),
            ("unmatched", "Messages acknowledged that start nothing (no rule, a build not complete).", &counters.unmatched),
            ("malformed", "Messages refused as malformed (never redelivered).", &counters.malformed),
            ("duplicates", "Messages delivered again and not started again.", &counters.duplicates),
            ("runs", "Runs started by build messages.", &counters.runs),
            ("published", "CI messages the brokers confirmed.", &counters.published),
        ]
        .iter()
        .map(|(name, help, counter)| {
            format!(
                "# HELP polarizer_bus_{name}_total {help}\n# TYPE polarizer_bus_{name}_total counter\npolarizer_bus_{name}_total {}\n",
                counter.load(Ordering::Relaxed)
            )
        })
        .collect()
    }

    fn rules_for<'a>(&'a self, bus: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.config
            .rules
            .iter()
            .filter(move |rule| rule.bus.as_deref().is_none_or(|only| only == bus))
    }

    /// Reads one delivery and stores the triggers it makes: the consumer acknowledges on `Accept`.
    pub async fn take(&self, bus: &str, topic: &str, message_id: &str, body: &[u8]) -> Verdict {
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        let (topic, message_id) = (&bounded_topic(topic), &bounded_id(message_id));
        let build = match messages::read(body) {
            Ok(Reading::Build(build)) => *build,
            Ok(Reading::NotFinished(reason)) => {
                self.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bus, topic, message_id, reason = %reason, "build message starts nothing");
                return Verdict::Accept;
            }
            Err(reason) => return self.refuse(bus, topic, message_id, reason).await,
        };
        let matching: Vec<&Rule> = self
            .rules_for(bus)
            .filter(|rule| rule.matching.matches(&build))
            .collect();
        if matching.is_empty() {
            self.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            return Verdict::Accept;
        }
        self.metrics.matched.fetch_add(1, Ordering::Relaxed);
        let mut lines = Vec::new();
        for (index, rule) in matching.iter().enumerate() {
            let request = TriggerRequest {
                repo: rule.tests.clone(),
                git_ref: rule.tests_ref.clone(),
                kind: rule.kind,
                all: true,
                changed: Vec::new(),
                features: Vec::new(),
                test_types: rule.test_types.clone(),
                artifacts: vec![build.nvr.clone()],
                context: rule.context.clone(),
                plan: rule.plan.clone(),
            };
            let planned = Planned {
                bus: bus.to_string(),
                message_id: message_id.to_string(),
                topic: topic.to_string(),
                rule: rule.name.clone(),
                build: build.clone(),
                request,
            };
            // One message may match several rules: each is its own trigger, deduplicated on its own.
            let delivery = if index == 0 {
                message_id.to_string()
            } else {
                format!("{message_id}#{index}")
            };
            lines.push(NewTrigger {
                received_ms: now_ms(),
                source: format!("bus:{bus}"),
                delivery,
                repo: rule.tests.clone(),
                event: topic.to_string(),
                kind: String::new(),
                sha: build.nvr.clone(),
                git_ref: rule.tests_ref.clone(),
                outcome: None,
                reason: String::new(),
                change_json: serde_json::to_string(&planned).unwrap_or_default(),
            });
        }
        let stored = self
            .context
            .store
            .write(move |savepoint, path| {
                let mut duplicates = 0;
                for line in &lines {
                    if let Recorded::Duplicate { .. } =
                        triggers::record(savepoint, line, 0).map_err(sqlite_error(path))?
                    {
                        duplicates += 1;
                    }
                }
                Ok(duplicates)
            })
            .await;
        match stored {
            Ok(duplicates) => {
                if duplicates > 0 {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    info!(bus, topic, message_id, nvr = %build.nvr, "build message delivered again: nothing new started");
                } else {
                    info!(bus, topic, message_id, nvr = %build.nvr, rules = matching.len(), "build message stored");
                }
                self.wake_planner.notify_one();
                Verdict::Accept
            }
            Err(err) => {
                // Given back at once, the message would come straight back to a store that is failing:
                // the consumer (one message at a time) waits a second first.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Verdict::Release(format!("cannot store the trigger: {err}"))
            }
        }
    }

    /// A malformed message: logged naming bus, topic and message id, listed by `polarizer triggers` as
    /// refused (the store keeps the newest thousand), never redelivered.
    pub async fn refuse(
        &self,
        bus: &str,
        topic: &str,
        message_id: &str,
        reason: String,
    ) -> Verdict {
        self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
        let (topic, message_id) = (&bounded_topic(topic), &bounded_id(message_id));
        warn!(bus, topic, message_id, error = %reason, "malformed build message refused");
        let line = NewTrigger {
            received_ms: now_ms(),
            source: format!("bus:{bus}"),
            delivery: message_id.to_string(),
            event: topic.to_string(),
            outcome: Some(TriggerOutcome::Refused),
            reason: reason.clone(),
            ..NewTrigger::default()
        };
        let _ = self
            .context
            .store
            .write(move |savepoint, path| {
                triggers::record(savepoint, &line, 0).map_err(sqlite_error(path))
            })
            .await;
        Verdict::Reject(reason)
    }

    /// Starts a run for each stored bus trigger, until shutdown; a previous process's leftovers first.
    async fn planner(self: Arc<Self>, shutdown: CancellationToken) {
        // Each plan reads a tree (and fetches it when it is a URL): a few at once.
        let permits = Arc::new(tokio::sync::Semaphore::new(PLANNERS));
        loop {
            for bus in &self.config.buses {
                let source = format!("bus:{}", bus.name);
                let waiting = self
                    .context
                    .store
                    .read(move |reader| reader.received_triggers(&source))
                    .await
                    .unwrap_or_else(|err| {
                        warn!(error = %err, "cannot read the bus triggers waiting to be planned");
                        Vec::new()
                    });
                for (id, change_json) in waiting {
                    if !self.planning.lock().expect("planning").insert(id) {
                        continue;
                    }
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let buses = self.clone();
                    tokio::spawn(async move {
                        buses.plan(id, &change_json).await;
                        buses.planning.lock().expect("planning").remove(&id);
                        drop(permit);
                    });
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake_planner.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }

    async fn plan(&self, id: u64, change_json: &str) {
        let planned: Planned = match serde_json::from_str(change_json) {
            Ok(planned) => planned,
            Err(err) => {
                self.finish(
                    id,
                    TriggerOutcome::Failed,
                    &format!("stored trigger does not read: {err}"),
                    None,
                )
                .await;
                return;
            }
        };
        let note = format!(
            "started by build {}: message {} ({}) on bus {}",
            planned.build.nvr, planned.message_id, planned.topic, planned.bus
        );
        match crate::daemon::trigger::start(&self.context, planned.request.clone(), Some(note))
            .await
        {
            Ok(summary) => {
                self.metrics.runs.fetch_add(1, Ordering::Relaxed);
                info!(trigger = id, run = summary.run, bus = %planned.bus, nvr = %planned.build.nvr, "run started by a build message");
                let build_json = serde_json::to_string(&planned.build).unwrap_or_default();
                let (bus, rule, run) = (planned.bus.clone(), planned.rule.clone(), summary.run);
                let written = self
                    .context
                    .store
                    .write(move |savepoint, path| {
                        triggers::finish(
                            savepoint,
                            id,
                            TriggerOutcome::Run,
                            "",
                            Some(run),
                            None,
                            None,
                        )
                        .map_err(sqlite_error(path))?;
                        store_bus::record_run(savepoint, run, id, &bus, &build_json, &rule)
                            .map_err(sqlite_error(path))
                    })
                    .await;
                if let Err(err) = written {
                    warn!(trigger = id, error = %err, "cannot store the run a build message started");
                }
                self.wake_announcer.notify_one();
            }
            Err(failure) => {
                warn!(trigger = id, bus = %planned.bus, nvr = %planned.build.nvr, error = %failure.message, "build message made no run");
                self.finish(id, TriggerOutcome::Failed, &failure.message, None)
                    .await;
            }
        }
    }

    async fn finish(&self, id: u64, outcome: TriggerOutcome, reason: &str, run: Option<u64>) {
        let reason = reason.to_string();
        let written = self
            .context
            .store
            .write(move |savepoint, path| {
                triggers::finish(savepoint, id, outcome, &reason, run, None, None)
                    .map_err(sqlite_error(path))
            })
            .await;
        if let Err(err) = written {
            warn!(trigger = id, error = %err, "cannot store what became of a bus trigger");
        }
    }

    /// Turns the progress of runs that build messages started into CI messages, until shutdown.
    async fn announcer(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.announce_due().await {
                warn!(error = %err, "cannot announce runs on the buses");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake_announcer.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }

    async fn announce_due(&self) -> Result<(), crate::store::sql::StoreError> {
        let open = self
            .context
            .store
            .read(|reader| reader.open_bus_runs())
            .await?;
        for bus_run in open {
            let Some((index, bus)) = self
                .config
                .buses
                .iter()
                .enumerate()
                .find(|(_, bus)| bus.name == bus_run.bus)
            else {
                continue;
            };
            let Some(state) = RunState::parse(&bus_run.run_state) else {
                continue;
            };
            let states = due_states(state, Announce::parse(&bus_run.announced));
            let Some(last) = states.last().copied() else {
                continue;
            };
            let messages = self.messages(bus, &bus_run, &states).await?;
            let (run, name) = (bus_run.run, bus.name.clone());
            self.context
                .store
                .write(move |savepoint, path| {
                    store_bus::announce(savepoint, run, &name, last.as_str(), &messages, now_ms())
                        .map_err(sqlite_error(path))
                })
                .await?;
            self.publishers[index].notify_one();
        }
        Ok(())
    }

    /// The CI messages of a run's new states: one per state and category of its tests.
    async fn messages(
        &self,
        bus: &BusConfig,
        bus_run: &store_bus::BusRun,
        states: &[Announce],
    ) -> Result<Vec<(String, String, String)>, crate::store::sql::StoreError> {
        let Some(prefix) = &bus.publish_prefix else {
            return Ok(Vec::new());
        };
        let build: Build = serde_json::from_str(&bus_run.build_json).unwrap_or_default();
        let run = bus_run.run;
        let counts = self
            .context
            .store
            .read(move |reader| reader.run_types(run))
            .await?;
        let systems = self
            .context
            .store
            .read(move |reader| reader.run_systems(run))
            .await?;
        let systems: Vec<(String, String, String)> = systems
            .into_iter()
            .map(|(os, arch)| (os, "polarizer".to_string(), arch))
            .collect();
        let categories = categories(&counts);
        let run_url = format!("{}/runs/{run}", self.web_url);
        let namespace = format!("{}.{}", bus.namespace, build.artifact_type);
        let generated_at = crate::core::views::rfc3339(now_ms());
        let mut out = Vec::new();
        for state in states {
            for category in &categories {
                let body = messages::ci_message(&messages::Announcement {
                    state: *state,
                    build: &build,
                    contact: &bus.contact,
                    run,
                    run_url: &run_url,
                    namespace: &namespace,
                    test_type: &bus_run.rule_name,
                    category,
                    reason: if bus_run.message.is_empty() {
                        "the run ended in error"
                    } else {
                        &bus_run.message
                    },
                    generated_at: &generated_at,
                    systems: &systems,
                });
                let message_id = format!(
                    "polarizer-run-{run}-{}-{}",
                    category.test_type,
                    state.as_str()
                );
                out.push((
                    messages::topic(prefix, &build.artifact_type, *state),
                    message_id,
                    body.to_string(),
                ));
            }
        }
        Ok(out)
    }
}

/// The CI messages a run's state calls for that were not sent yet, in order: queued first (also for a
/// run that began, or ended, before it was announced), running once it runs, then its end.
fn due_states(state: RunState, announced: Option<Announce>) -> Vec<Announce> {
    let due = match state {
        RunState::Queued => Announce::Queued,
        RunState::Running => Announce::Running,
        RunState::Passed | RunState::Failed => Announce::Complete,
        RunState::Error | RunState::Cancelled => Announce::Error,
    };
    let mut states = vec![Announce::Queued];
    if due == Announce::Running {
        states.push(Announce::Running);
    }
    if due.is_final() {
        states.push(due);
    }
    states.retain(|state| Some(*state) > announced);
    states
}

/// The longest message id and topic stored and logged as given (both come from the broker's
/// publishers).
const ID_MAX: usize = 256;

/// A message id as stored: a longer one is replaced by its digest, the same for every redelivery.
fn bounded_id(message_id: &str) -> String {
    if message_id.len() <= ID_MAX {
        message_id.to_string()
    } else {
        format!("sha256:{}", link::digest(message_id.as_bytes()))
    }
}

/// A topic as stored and logged: cut at `ID_MAX` bytes (on a character boundary).
fn bounded_topic(topic: &str) -> String {
    let mut end = topic.len().min(ID_MAX);
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    topic[..end].to_string()
}

/// The run's categories from its counted tests: failed if any failed, needs_inspection if any errored
/// or none ran, passed otherwise.
fn categories(counts: &[(String, String, u64)]) -> Vec<CategoryResult> {
    let mut out: Vec<CategoryResult> = Vec::new();
    for (test_type, status, count) in counts {
        let test_type = if test_type.is_empty() {
            "functional".to_string()
        } else {
            test_type.clone()
        };
        let position = match out
            .iter()
            .position(|category| category.test_type == test_type)
        {
            Some(position) => position,
            None => {
                out.push(CategoryResult {
                    test_type,
                    result: "passed".into(),
                    tests: 0,
                });
                out.len() - 1
            }
        };
        let category = &mut out[position];
        category.tests += count;
        let worse = match status.as_str() {
            "fail" | "timeout" => "failed",
            "error" | "cancelled" | "queued" | "running" => "needs_inspection",
            _ => "passed",
        };
        let rank = |result: &str| match result {
            "failed" => 2,
            "needs_inspection" => 1,
            _ => 0,
        };
        if rank(worse) > rank(&category.result) {
            category.result = worse.into();
        }
    }
    if out.is_empty() {
        out.push(CategoryResult {
            test_type: "functional".into(),
            result: "needs_inspection".into(),
            tests: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_ids_and_topics_are_bounded() {
        assert_eq!(bounded_id("build-1"), "build-1");
        let long = "x".repeat(10_000);
        assert_eq!(bounded_id(&long), bounded_id(&long));
        assert!(bounded_id(&long).starts_with("sha256:") && bounded_id(&long).len() < 64);
        assert_eq!(bounded_topic(&"é".repeat(200)).len(), 256);
        assert_eq!(bounded_topic("a.b"), "a.b");
    }

    #[test]
    fn each_state_is_announced_once_in_order() {
        assert_eq!(due_states(RunState::Queued, None), [Announce::Queued]);
        assert_eq!(due_states(RunState::Queued, Some(Announce::Queued)), []);
        assert_eq!(
            due_states(RunState::Running, Some(Announce::Queued)),
            [Announce::Running]
        );
        // A run that ended before it was announced at all (the broker was away).
        assert_eq!(
            due_states(RunState::Failed, None),
            [Announce::Queued, Announce::Complete]
        );
        assert_eq!(
            due_states(RunState::Error, Some(Announce::Running)),
            [Announce::Error]
        );
        assert_eq!(due_states(RunState::Passed, Some(Announce::Complete)), []);
    }

    #[test]
    fn a_category_is_as_bad_as_its_worst_test() {
        let counts = [
            ("functional".to_string(), "pass".to_string(), 3),
            ("functional".to_string(), "fail".to_string(), 1),
            ("acceptance".to_string(), "pass".to_string(), 2),
            ("acceptance".to_string(), "error".to_string(), 1),
            (String::new(), "pass".to_string(), 1),
            ("performance".to_string(), "pass".to_string(), 4),
        ];
        let found = categories(&counts);
        let result = |test_type: &str| {
            found
                .iter()
                .find(|category| category.test_type == test_type)
                .map(|category| (category.result.as_str(), category.tests))
        };
        assert_eq!(result("functional"), Some(("failed", 5)));
        assert_eq!(result("acceptance"), Some(("needs_inspection", 3)));
        assert_eq!(result("performance"), Some(("passed", 4)));
        assert_eq!(categories(&[])[0].result, "needs_inspection");
    }
}
