//! GitHub in and out: deliveries to `POST /hooks/github` become runs (`webhook` answers; the planner
//! here fetches the change, finds its paths and starts the run), and each run's state goes back to the
//! commit as a commit status or a check run (the reporter here). Both work from the store: a delivery
//! is stored before it is answered and a report before it is sent, so a restart loses neither.

pub mod api;
pub mod changes;
pub mod config;
pub mod webhook;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polarizer_shared::run::{RunState, RunUpdate, TriggerRequest};
use polarizer_shared::triggers::TriggerOutcome;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::github::{Change, ReportState, ReportText};
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::daemon::trigger::FailureKind;
use crate::store::sql::sqlite_error;
use crate::store::triggers::{self, ReportRow};

use api::{Api, ApiError};
use config::{GithubConfig, Report};

/// Deliveries planned at once (each runs git and reads an fmf tree).
const PLANNERS: usize = 4;
/// A report GitHub refused as sent is tried again after this long (an App installed later, a
/// permission granted).
const REFUSED_RETRY: Duration = Duration::from_secs(600);
/// The longest wait between tries of a report after errors.
const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// Lines of refused and duplicate deliveries being stored at once; beyond, they are counted only.
const LINES_IN_FLIGHT: usize = 64;
/// Delivery ids remembered for answering redeliveries without the store.
const RECENT_DELIVERIES: usize = 10_000;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct GithubMetrics {
    pub deliveries: AtomicU64,
    pub refused: AtomicU64,
    pub duplicates: AtomicU64,
    pub runs: AtomicU64,
    pub reports_sent: AtomicU64,
    pub report_failures: AtomicU64,
    /// Refused or duplicate deliveries not stored (a flood beyond the budget).
    pub unrecorded: AtomicU64,
}

pub struct Github {
    pub config: GithubConfig,
    context: Context,
    api: Api,
    wake_planner: Notify,
    wake_reporter: Notify,
    /// Triggers being planned now (so a wake does not plan one twice).
    planning: Mutex<BTreeSet<u64>>,
    /// Delivery ids taken lately, with their triggers (cleared when full; the store still knows).
    recent: Mutex<std::collections::HashMap<String, u64>>,
    /// The budget for storing lines of refused and duplicate deliveries.
    lines: Arc<Semaphore>,
    pub metrics: GithubMetrics,
}

impl Github {
    pub fn new(config: GithubConfig, context: Context) -> Result<Arc<Github>, String> {
        let api = Api::new(&config.api_url, config.auth.clone())?;
        Ok(Arc::new(Github {
            config,
            context,
            api,
            wake_planner: Notify::new(),
            wake_reporter: Notify::new(),
            planning: Mutex::new(BTreeSet::new()),
            recent: Mutex::new(std::collections::HashMap::new()),
            lines: Arc::new(Semaphore::new(LINES_IN_FLIGHT)),
            metrics: GithubMetrics::default(),
        }))
    }

    /// The trigger a delivery id was taken as, if it was lately.
    pub fn seen(&self, delivery: &str) -> Option<u64> {
        if delivery.is_empty() {
            return None;
        }
        self.recent.lock().expect("recent").get(delivery).copied()
    }

    pub fn remember(&self, delivery: &str, trigger: u64) {
        if delivery.is_empty() {
            return;
        }
        let mut recent = self.recent.lock().expect("recent");
        if recent.len() >= RECENT_DELIVERIES {
            recent.clear();
        }
        recent.insert(delivery.to_string(), trigger);
    }

    /// Stores a line that starts nothing (a refused or duplicate delivery) without waiting for it, within
    /// a budget: false (and counted) when a flood has used it up.
    pub fn record_line(&self, trigger: triggers::NewTrigger) -> bool {
        let Ok(permit) = self.lines.clone().try_acquire_owned() else {
            self.metrics.unrecorded.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let store = self.context.store.clone();
        tokio::spawn(async move {
            let _ = store
                .write(move |savepoint, path| {
                    triggers::record(savepoint, &trigger, 0).map_err(sqlite_error(path))
                })
                .await;
            drop(permit);
        });
        true
    }

    /// Starts the planner, the reporter and the watcher of runs; triggers a previous process recorded
    /// and did not plan are planned now, and reports it did not deliver are sent.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        tracker.spawn(self.clone().planner(shutdown.clone()));
        tracker.spawn(self.clone().reporter(shutdown.clone()));
        let github = self.clone();
        let mut updates = self.context.fanout.updates.subscribe();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    update = updates.recv() => match update {
                        Ok(RunUpdate::RunFinished { .. } | RunUpdate::TestStarted { .. }) => {
                            github.wake_reporter.notify_one()
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            github.wake_reporter.notify_one()
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }

    /// Plans every recorded trigger, a few at once, until shutdown.
    async fn planner(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(PLANNERS));
        loop {
            let waiting = self
                .context
                .store
                .read(|reader| reader.received_triggers("github"))
                .await
                .unwrap_or_else(|err| {
                    warn!(error = %err, "cannot read the triggers waiting to be planned");
                    Vec::new()
                });
            for (id, change_json) in waiting {
                if !self.planning.lock().expect("planning").insert(id) {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let github = self.clone();
                tokio::spawn(async move {
                    github.plan_trigger(id, &change_json).await;
                    github.planning.lock().expect("planning").remove(&id);
                    drop(permit);
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake_planner.notified() => {}
                // A trigger left by a failed store write is looked at again.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }

    /// Fetches the change, finds its paths, starts its run and stores its first report.
    async fn plan_trigger(&self, id: u64, change_json: &str) {
        let started = Instant::now();
        let change: Change = match serde_json::from_str(change_json) {
            Ok(change) => change,
            Err(err) => {
                self.finish(
                    id,
                    TriggerOutcome::Failed,
                    &format!("stored change does not read: {err}"),
                    None,
                    None,
                    None,
                )
                .await;
                return;
            }
        };
        let Some(repo) = self.config.repo(&change.repo).cloned() else {
            self.finish(
                id,
                TriggerOutcome::Ignored,
                &format!(
                    "repository {} is no longer in [[github.repos]]",
                    change.repo
                ),
                None,
                None,
                None,
            )
            .await;
            return;
        };
        let cache = self.context.settings.data_dir.join("git-cache");
        let fetch_change = change.clone();
        let clone_url = repo.clone_url.clone();
        let changes = tokio::task::spawn_blocking(move || {
            changes::changed_paths(&clone_url, &cache, &fetch_change)
        })
        .await
        .unwrap_or_else(|err| Err(format!("finding the changed paths failed: {err}")));
        let fetch_ms = started.elapsed().as_millis() as u64;
        let changes = match changes {
            Ok(changes) => changes,
            Err(message) => {
                warn!(trigger = id, repo = %change.repo, error = %message, "trigger failed: the change cannot be fetched");
                let outcome = (TriggerOutcome::Failed, ReportState::Error);
                self.no_run(
                    id,
                    &repo,
                    &change,
                    outcome,
                    &message,
                    (Some(fetch_ms), None),
                )
                .await;
                return;
            }
        };
        let request = TriggerRequest {
            repo: repo.tests.clone(),
            git_ref: if repo.tests_in_repo() {
                change.sha.clone()
            } else {
                repo.tests_ref.clone()
            },
            kind: repo.kind,
            all: changes.paths.is_none(),
            changed: changes.paths.clone().unwrap_or_default(),
            features: Vec::new(),
            test_types: Vec::new(),
            artifacts: Vec::new(),
            context: Vec::new(),
            plan: repo.plan.clone(),
        };
        let note = (!changes.note.is_empty()).then(|| changes.note.clone());
        let started_run = crate::daemon::trigger::start(&self.context, request, note).await;
        let planned_ms = Some(started.elapsed().as_millis() as u64);
        match started_run {
            Ok(summary) => {
                self.metrics.runs.fetch_add(1, Ordering::Relaxed);
                info!(trigger = id, run = summary.run, repo = %change.repo, sha = %change.sha, event = %change.event, "run started by GitHub");
                self.finish(
                    id,
                    TriggerOutcome::Run,
                    &changes.note,
                    Some(summary.run),
                    Some(fetch_ms),
                    planned_ms,
                )
                .await;
                let text = ReportText {
                    line: format!(
                        "{} test{} queued",
                        summary.tests,
                        if summary.tests == 1 { "" } else { "s" }
                    ),
                    ..Default::default()
                };
                self.report(
                    id,
                    &repo,
                    &change,
                    Some(summary.run),
                    ReportState::Queued,
                    text,
                )
                .await;
            }
            Err(failure) => {
                let message = failure
                    .message
                    .trim_start_matches("trigger failed, no run created: ")
                    .to_string();
                warn!(trigger = id, repo = %change.repo, sha = %change.sha, error = %message, "trigger made no run");
                let (outcome, state) = match failure.kind {
                    FailureKind::Tree => (TriggerOutcome::Failed, ReportState::Failure),
                    FailureKind::NothingSelected => (TriggerOutcome::Ignored, ReportState::Success),
                    FailureKind::Other => (TriggerOutcome::Failed, ReportState::Error),
                };
                self.no_run(
                    id,
                    &repo,
                    &change,
                    (outcome, state),
                    &message,
                    (Some(fetch_ms), planned_ms),
                )
                .await;
            }
        }
    }

    /// A trigger that made no run: what became of it, and the report that tells the author why.
    async fn no_run(
        &self,
        id: u64,
        repo: &config::RepoConfig,
        change: &Change,
        (outcome, state): (TriggerOutcome, ReportState),
        message: &str,
        (fetch_ms, planned_ms): (Option<u64>, Option<u64>),
    ) {
        self.finish(id, outcome, message, None, fetch_ms, planned_ms)
            .await;
        let text = crate::core::github::trigger_failed_report(message);
        self.report(id, repo, change, None, state, text).await;
    }

    async fn finish(
        &self,
        id: u64,
        outcome: TriggerOutcome,
        reason: &str,
        run: Option<u64>,
        fetch_ms: Option<u64>,
        planned_ms: Option<u64>,
    ) {
        let reason = reason.to_string();
        let written = self
            .context
            .store
            .write(move |savepoint, path| {
                triggers::finish(savepoint, id, outcome, &reason, run, fetch_ms, planned_ms)
                    .map_err(sqlite_error(path))
            })
            .await;
        if let Err(err) = written {
            warn!(trigger = id, error = %err, "cannot store what became of a trigger");
        }
    }

    /// Stores a report's new version (the reporter sends it).
    async fn report(
        &self,
        trigger: u64,
        repo: &config::RepoConfig,
        change: &Change,
        run: Option<u64>,
        state: ReportState,
        text: ReportText,
    ) {
        if repo.report == Report::None {
            return;
        }
        let target = repo.report.as_str().to_string();
        let (name, sha, context) = (
            change.repo.clone(),
            change.sha.clone(),
            repo.context.clone(),
        );
        let text_json = serde_json::to_string(&text).unwrap_or_default();
        let written = self
            .context
            .store
            .write(move |savepoint, path| {
                triggers::put_report(
                    savepoint,
                    trigger,
                    &target,
                    &name,
                    &sha,
                    &context,
                    run,
                    state.as_str(),
                    &text_json,
                    now_ms(),
                )
                .map_err(sqlite_error(path))
            })
            .await;
        match written {
            Ok(()) => self.wake_reporter.notify_one(),
            Err(err) => warn!(trigger, error = %err, "cannot store a report"),
        }
    }

    /// Turns runs' progress into new report versions and sends what GitHub has not taken, until shutdown.
    async fn reporter(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.follow_runs().await {
                warn!(error = %err, "cannot read the runs reports follow");
            }
            let next = match self.send_due().await {
                Ok(next) => next,
                Err(err) => {
                    warn!(error = %err, "cannot read the reports to send");
                    Some(Duration::from_secs(5))
                }
            };
            let wait = next
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(30));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake_reporter.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A new version of each report whose run moved on (started, ended).
    async fn follow_runs(&self) -> Result<(), crate::store::sql::StoreError> {
        let open = self
            .context
            .store
            .read(|reader| reader.reports_of_open_runs())
            .await?;
        for (report, run_state) in open {
            let Some(run) = report.run else { continue };
            let Some(run_state) = RunState::parse(&run_state) else {
                continue;
            };
            let state = ReportState::of_run(run_state);
            if Some(state) == ReportState::parse(&report.state) {
                continue;
            }
            let detail = self
                .context
                .store
                .read(move |reader| reader.run(run))
                .await?;
            let Some(detail) = detail else { continue };
            let text = if state.is_final() {
                crate::core::github::run_report(&detail, &self.config.run_url(run), &|name| {
                    annotation_path("", name)
                })
            } else {
                ReportText {
                    line: crate::core::github::count_line(&detail),
                    ..Default::default()
                }
            };
            let text_json = serde_json::to_string(&text).unwrap_or_default();
            let trigger = report.trigger;
            self.context
                .store
                .write(move |savepoint, path| {
                    triggers::put_report(
                        savepoint,
                        trigger,
                        &report.target,
                        &report.repo,
                        &report.sha,
                        &report.context,
                        report.run,
                        state.as_str(),
                        &text_json,
                        now_ms(),
                    )
                    .map_err(sqlite_error(path))
                })
                .await?;
        }
        Ok(())
    }

    /// Sends every report due now; answers how long until the next one is due.
    async fn send_due(&self) -> Result<Option<Duration>, crate::store::sql::StoreError> {
        let unsent = self
            .context
            .store
            .read(|reader| reader.unsent_reports())
            .await?;
        let mut next: Option<Duration> = None;
        for report in unsent {
            let now = now_ms();
            if report.next_try_ms > now {
                let wait = Duration::from_millis((report.next_try_ms - now) as u64);
                next = Some(next.map_or(wait, |next| next.min(wait)));
                continue;
            }
            self.send(report).await?;
        }
        Ok(next)
    }

    async fn send(&self, report: ReportRow) -> Result<(), crate::store::sql::StoreError> {
        let Some(state) = ReportState::parse(&report.state) else {
            return Ok(());
        };
        let text: ReportText = serde_json::from_str(&report.text_json).unwrap_or_default();
        let url = report
            .run
            .map(|run| self.config.run_url(run))
            .unwrap_or_default();
        let sent = match report.target.as_str() {
            "checks" => self
                .api
                .check_run(
                    &report.repo,
                    &report.sha,
                    &report.context,
                    report.check_run_id,
                    &format!("polarizer-trigger-{}", report.trigger),
                    state,
                    &text,
                    &url,
                )
                .await
                .map(Some),
            _ => self
                .api
                .post_status(
                    &report.repo,
                    &report.sha,
                    &report.context,
                    state,
                    &text,
                    &url,
                )
                .await
                .map(|()| None),
        };
        let trigger = report.trigger;
        match sent {
            Ok(check_run_id) => {
                self.metrics.reports_sent.fetch_add(1, Ordering::Relaxed);
                let version = report.version;
                self.context
                    .store
                    .write(move |savepoint, path| {
                        triggers::report_sent(savepoint, trigger, version, check_run_id)
                            .map_err(sqlite_error(path))
                    })
                    .await
            }
            Err(err) => {
                self.metrics.report_failures.fetch_add(1, Ordering::Relaxed);
                let wait = match &err {
                    ApiError::Retry {
                        after: Some(after), ..
                    } => *after,
                    ApiError::Retry { after: None, .. } => {
                        Duration::from_secs(1u64 << report.tries.min(10)).min(BACKOFF_MAX)
                    }
                    ApiError::Refused { .. } => REFUSED_RETRY,
                };
                warn!(trigger, repo = %report.repo, sha = %report.sha, error = %err, retry_in_s = wait.as_secs(), "report not delivered");
                let message = err.to_string();
                let next = now_ms() + wait.as_millis() as i64;
                self.context
                    .store
                    .write(move |savepoint, path| {
                        triggers::report_failed(savepoint, trigger, &message, next)
                            .map_err(sqlite_error(path))
                    })
                    .await
            }
        }
    }
}

/// Where a failed test's annotation goes: its fmf node's directory in the repository.
fn annotation_path(tree_path: &str, name: &str) -> String {
    let node = name.trim_start_matches('/');
    let joined = if tree_path.is_empty() {
        node.to_string()
    } else {
        format!("{}/{node}", tree_path.trim_end_matches('/'))
    };
    if joined.is_empty() {
        ".fmf/version".into()
    } else {
        joined
    }
}
