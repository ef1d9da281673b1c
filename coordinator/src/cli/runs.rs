//! `polarizer trigger`, `polarizer runs …` and `polarizer report`: the operator's view of runs.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use polarizer_shared::run::*;

use crate::cli::client::{CoordinatorStopped, OperatorClient};
use crate::cli::format::{rfc3339, table};
use crate::core::views::{note_warnings, run_json, run_row_json, triggered_json};

#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// The test repository: a directory in a git work tree (on the coordinator's host), or a git URL
    #[arg(long)]
    pub repo: String,
    /// The git ref to test (branch, tag, commit) [default: HEAD]
    #[arg(long = "ref", default_value = "HEAD")]
    pub git_ref: String,
    /// What happened: commit, build or manual; picks the default test types
    #[arg(long, default_value = "manual", value_parser = parse_kind)]
    pub kind: TriggerKind,
    /// A changed path, relative to the repository (repeatable, or comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub changed: Vec<String>,
    /// A feature to test, with every feature depending on it (repeatable)
    #[arg(long, value_delimiter = ',')]
    pub feature: Vec<String>,
    /// Test types to run instead of the kind's defaults (repeatable): unit, integration, functional, …
    #[arg(long = "type", value_delimiter = ',')]
    pub test_type: Vec<String>,
    /// An artifact under test, e.g. a build NVR (repeatable); recorded in every suite's version chain
    #[arg(long)]
    pub artifact: Vec<String>,
    /// Run every test (of the selected types), whatever changed
    #[arg(long)]
    pub all: bool,
    /// An adjust context dimension, key=value (repeatable)
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// Only the tests this tmt plan's fmf discover selects (a plan node of the tree, e.g. /plans/smoke);
    /// --changed then narrows them
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<String>,
    /// Watch the run until it finishes (exit code 1 if anything failed)
    #[arg(long)]
    pub wait: bool,
    /// Print JSON instead of a sentence
    #[arg(long)]
    pub json: bool,
}

fn parse_kind(text: &str) -> Result<TriggerKind, String> {
    TriggerKind::parse(text).ok_or_else(|| format!("{text:?} is not one of commit, build, manual"))
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsAction {
    /// Follow a run live: progress, each test as it finishes; exit code 1 if anything failed.
    Watch {
        run: u64,
        /// Also print every line of test output as it arrives
        #[arg(long)]
        output: bool,
    },
    /// Everything about a run: suites, agents, every test's status, attempt, duration and why it ran.
    Show { run: u64 },
    /// Cancel a run: queued suites never start, running tests are stopped.
    Cancel { run: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Junit,
    Json,
    /// Polarion's XUnit importer file, as `[polarion]` in the coordinator's config says
    Polarion,
}

pub async fn trigger(client: &mut OperatorClient, args: TriggerArgs) -> anyhow::Result<()> {
    // A local path is resolved here, where the user typed it, not in the coordinator's directory.
    let repo = match std::fs::canonicalize(&args.repo) {
        Ok(path) if !crate::core::source::is_git_url(&args.repo) => path.display().to_string(),
        _ => args.repo.clone(),
    };
    let context = crate::core::source::parse_context(&args.context)?;
    let plan = args.plan.unwrap_or_default();
    let request = TriggerRequest {
        repo,
        git_ref: args.git_ref,
        kind: args.kind,
        changed: args.changed,
        features: args.feature,
        test_types: args.test_type,
        artifacts: args.artifact,
        all: args.all,
        context,
        plan: plan.clone(),
    };
    let OperatorResponse::Triggered(summary) = client
        .request(OperatorRequest::Trigger(Box::new(request)))
        .await?
    else {
        bail!("the coordinator answered a trigger with something else");
    };
    // The tree's warnings (an undeclared feature, say) are in the run's note, one per line.
    let detail = fetch(client, summary.run).await?;
    let warnings = note_warnings(&detail.message);
    if !args.json {
        for warning in &warnings {
            eprintln!("{warning}");
        }
    }
    if args.json {
        println!("{}", triggered_json(&summary, &warnings));
    } else {
        println!("{}", trigger_sentence_in_plan(&summary, &plan));
    }
    if args.wait {
        watch(client, summary.run, false).await?;
    }
    Ok(())
}

/// `run 7: 23 tests selected (features register, attach, +2 dependents), 5 suites: 4 parallel, 1 serial`
pub fn trigger_sentence(summary: &TriggerSummary) -> String {
    trigger_sentence_in_plan(summary, "")
}

/// [`trigger_sentence`] for a trigger bounded by tmt plan `plan` (empty: none).
fn trigger_sentence_in_plan(summary: &TriggerSummary, plan: &str) -> String {
    let in_plan = if plan.is_empty() {
        String::new()
    } else {
        format!(" in plan {plan}")
    };
    let why = if summary.fail_open {
        format!("no feature matched the change: everything{in_plan} selected")
    } else if summary.touched_features.is_empty() {
        if plan.is_empty() {
            "all tests of the selected types".to_string()
        } else {
            format!("the tests of plan {plan}")
        }
    } else {
        let mut why = format!("features {}", summary.touched_features.join(", "));
        if !summary.dependent_features.is_empty() {
            why.push_str(&format!(
                ", +{} dependent{}",
                summary.dependent_features.len(),
                plural(summary.dependent_features.len() as u64)
            ));
        }
        why.push_str(&in_plan);
        why
    };
    let suites = summary.parallel_suites + summary.serial_suites;
    format!(
        "run {}: {} test{} selected ({why}), {suites} suite{}: {} parallel, {} serial",
        summary.run,
        summary.tests,
        plural(summary.tests),
        plural(suites),
        summary.parallel_suites,
        summary.serial_suites
    )
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

pub async fn runs(
    client: &mut OperatorClient,
    action: Option<RunsAction>,
    json: bool,
    limit: u32,
) -> anyhow::Result<()> {
    match action {
        None => {
            let OperatorResponse::Runs(runs) =
                client.request(OperatorRequest::ListRuns { limit }).await?
            else {
                bail!("the coordinator answered a listing with something else");
            };
            if json {
                let rows: Vec<_> = runs.iter().map(run_row_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|run| {
                        vec![
                            run.id.to_string(),
                            run.state.to_string(),
                            run.kind.as_str().to_string(),
                            format!("{}/{}", run.done, run.tests),
                            run.problems.to_string(),
                            short(&run.commit),
                            rfc3339(run.created_ms),
                            run.repo.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["RUN", "STATE", "KIND", "DONE", "PROBLEMS", "COMMIT", "CREATED", "REPO"],
                        &rows
                    )
                );
            }
            Ok(())
        }
        Some(RunsAction::Watch { run, output }) => watch(client, run, output).await,
        Some(RunsAction::Show { run }) => {
            let detail = fetch(client, run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run_json(&detail))?);
            } else {
                print!("{}", describe(&detail));
            }
            Ok(())
        }
        Some(RunsAction::Cancel { run }) => {
            let response = client.request(OperatorRequest::CancelRun { run }).await?;
            let OperatorResponse::Cancelled { state, .. } = response else {
                bail!("the coordinator answered a cancel with something else");
            };
            if state == RunState::Cancelled {
                println!("run {run} cancelled");
            } else {
                println!("run {run} had already finished: {state}");
            }
            Ok(())
        }
    }
}

pub async fn fetch(client: &mut OperatorClient, run: u64) -> anyhow::Result<RunDetail> {
    match client.request(OperatorRequest::ShowRun { run }).await? {
        OperatorResponse::Run(detail) => Ok(*detail),
        other => bail!("unexpected answer from the coordinator: {other:?}"),
    }
}

pub async fn report(
    client: &mut OperatorClient,
    run: u64,
    format: ReportFormat,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let text = match format {
        ReportFormat::Junit => crate::core::reports::junit(&fetch(client, run).await?),
        ReportFormat::Json => {
            serde_json::to_string_pretty(&run_json(&fetch(client, run).await?))? + "\n"
        }
        ReportFormat::Polarion => {
            let first = client
                .request(OperatorRequest::PolarionXunit {
                    run,
                    dry_run: false,
                })
                .await?;
            client.collect_text(first).await?
        }
    };
    crate::cli::format::write_or_print(&text, output)
}

fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Follows a run until it finishes. Errors (exit code 1) when it did not pass.
pub async fn watch(client: &mut OperatorClient, run: u64, output: bool) -> anyhow::Result<()> {
    let first = client
        .request(OperatorRequest::WatchRun { run, output })
        .await?;
    let OperatorResponse::Run(detail) = first else {
        bail!("unexpected answer from the coordinator: {first:?}");
    };
    let mut detail = *detail;
    let total = detail.tests.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} run {msg} [{bar:30}] {pos}/{len} tests, {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(run.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut finished: BTreeMap<String, TestStatus> = BTreeMap::new();
    let show_done = |rows: &[RunTestRow], finished: &mut BTreeMap<String, TestStatus>| {
        for row in rows {
            if row.status.is_final() && !finished.contains_key(&row.test) {
                finished.insert(row.test.clone(), row.status);
                say(test_line(row));
            }
        }
    };
    if detail.run.state.is_final() {
        show_done(&detail.tests, &mut finished);
    } else {
        say(format!(
            "watching run {run}: {total} tests in {} suites",
            detail.suites.len()
        ));
        show_done(&detail.tests, &mut finished);
        bar.set_position(finished.len() as u64);
        loop {
            let response = match client.next().await {
                Ok(response) => response,
                Err(error) => {
                    bar.finish_and_clear();
                    if CoordinatorStopped::is(&error) {
                        return Err(CoordinatorStopped {
                            resume: Some(format!(
                                "run {run} is not over: `polarizer runs watch {run}` once it is back"
                            )),
                        }
                        .into());
                    }
                    return Err(error);
                }
            };
            match response {
                OperatorResponse::Update(RunUpdate::TestFinished { row, .. }) => {
                    show_done(std::slice::from_ref(&row), &mut finished);
                    bar.set_position(finished.len() as u64);
                }
                OperatorResponse::Update(RunUpdate::TestStarted { test, agent, attempt, .. }) => {
                    bar.set_message(format!("{run}: {test} on {agent}"));
                    if attempt > 1 {
                        say(format!("  retry    {test} (attempt {attempt}) on {agent}"));
                    }
                }
                OperatorResponse::Update(RunUpdate::Requeued { suite, attempt, agent, .. }) => say(format!(
                    "  agent {agent} was lost: suite {suite} goes back to the queue (attempt {attempt})"
                )),
                OperatorResponse::Update(RunUpdate::Reinstated { suite, attempt, agent, .. }) => say(format!(
                    "  agent {agent} is back: suite {suite} stays its attempt {attempt}, what it ran meanwhile counts"
                )),
                OperatorResponse::Update(RunUpdate::Output { test, stream, line, .. }) => {
                    say(format!("    {test} {}| {line}", stream.as_str()))
                }
                OperatorResponse::Update(RunUpdate::RunFinished { .. }) => break,
                // A fresh snapshot: this watcher fell behind.
                OperatorResponse::Run(snapshot) => {
                    show_done(&snapshot.tests, &mut finished);
                    bar.set_position(finished.len() as u64);
                    if snapshot.run.state.is_final() {
                        break;
                    }
                }
                other => bail!("unexpected answer from the coordinator: {other:?}"),
            }
        }
        bar.finish_and_clear();
        detail = fetch(client, run).await?;
        show_done(&detail.tests, &mut finished);
    }
    bar.finish_and_clear();
    println!("{}", summary_line(&detail));
    if detail.run.state != RunState::Passed {
        bail!("run {run} {}", detail.run.state);
    }
    Ok(())
}

fn test_line(row: &RunTestRow) -> String {
    let mut line = format!(
        "  {:<8} {}  ({}, {}",
        row.status.as_str(),
        row.name,
        if row.agent.is_empty() {
            "-"
        } else {
            &row.agent
        },
        row.duration_ms.map(seconds).unwrap_or_else(|| "-".into())
    );
    if row.attempt > 1 {
        line.push_str(&format!(", attempt {}", row.attempt));
    }
    line.push(')');
    if let Some(note) = analysis_note(row) {
        line.push_str(&format!(" — {note}"));
    }
    if !row.message.is_empty() {
        line.push_str(&format!(": {}", row.message));
    }
    line
}

/// What analysis says of a result: quarantined, its failure cluster (a known issue when labelled),
/// slower than its history.
pub fn analysis_note(row: &RunTestRow) -> Option<String> {
    let mut parts = Vec::new();
    if row.quarantined {
        parts.push("quarantined".to_string());
    }
    if let Some(cluster) = &row.cluster {
        parts.push(match &cluster.label {
            Some(label) => format!("{} (cluster {})", label.describe(), cluster.id),
            None => format!("cluster {}", cluster.id),
        });
    }
    if let (Some(p95), Some(duration)) = (row.slow_p95_ms, row.duration_ms) {
        parts.push(format!(
            "slow: {} against a p95 of {}",
            seconds(duration),
            seconds(p95)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

pub fn summary_line(detail: &RunDetail) -> String {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for test in &detail.tests {
        *counts.entry(test.status.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(status, count)| format!("{count} {status}"))
        .collect();
    let elapsed = detail
        .run
        .finished_ms
        .map(|finished| {
            format!(
                " in {}",
                seconds((finished - detail.run.created_ms).max(0) as u64)
            )
        })
        .unwrap_or_default();
    let trouble = if detail.infrastructure_trouble {
        " — infrastructure trouble: every failure is a known system issue"
    } else {
        ""
    };
    format!(
        "run {} {}{elapsed}: {}{trouble}",
        detail.run.id,
        detail.run.state,
        parts.join(", ")
    )
}

fn describe(detail: &RunDetail) -> String {
    let run = &detail.run;
    let mut out = format!(
        "run {}  {}  ({} trigger)\nrepo    {} @ {} ({})\n",
        run.id,
        run.state,
        run.kind.as_str(),
        run.repo,
        run.git_ref,
        short(&run.commit)
    );
    if !detail.changed.is_empty() {
        out.push_str(&format!("changed {}\n", detail.changed.join(", ")));
    }
    if !detail.artifacts.is_empty() {
        out.push_str(&format!("artifacts {}\n", detail.artifacts.join(", ")));
    }
    if !detail.message.is_empty() {
        out.push_str(&format!("note    {}\n", detail.message));
    }
    out.push_str(&format!("created {}\n\n", rfc3339(run.created_ms)));
    let suites: Vec<Vec<String>> = detail
        .suites
        .iter()
        .map(|suite| {
            vec![
                suite.ordinal.to_string(),
                suite.kind.clone(),
                needs_text(suite),
                suite.state.clone(),
                suite.attempt.to_string(),
                if suite.state == "queued" {
                    suite.waiting_for.clone()
                } else {
                    suite.agent.clone()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SUITE",
            "KIND",
            "NEEDS",
            "STATE",
            "ATTEMPT",
            "AGENT / WAITING FOR",
        ],
        &suites,
    ));
    out.push('\n');
    let ordinal: BTreeMap<u64, u32> = detail
        .suites
        .iter()
        .map(|suite| (suite.id, suite.ordinal))
        .collect();
    let tests: Vec<Vec<String>> = detail
        .tests
        .iter()
        .map(|test| {
            vec![
                test.name.clone(),
                test.status.to_string(),
                ordinal
                    .get(&test.suite)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                test.agent.clone(),
                test.attempt.to_string(),
                test.duration_ms.map(seconds).unwrap_or_default(),
                match (analysis_note(test), test.message.is_empty()) {
                    (Some(note), true) => format!("[{note}]"),
                    (Some(note), false) => format!("[{note}] {}", test.message),
                    (None, true) => test.reasons.first().cloned().unwrap_or_default(),
                    (None, false) => test.message.clone(),
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TEST",
            "STATUS",
            "SUITE",
            "AGENT",
            "ATTEMPT",
            "DURATION",
            "MESSAGE / WHY",
        ],
        &tests,
    ));
    out.push_str(&format!("\n{}\n", summary_line(detail)));
    out
}

fn needs_text(suite: &SuiteRow) -> String {
    let mut parts = Vec::new();
    if let Some(kind) = suite.platform {
        parts.push(kind.to_string());
    }
    parts.extend(suite.arch.iter().cloned());
    parts.extend(suite.distro.iter().cloned());
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" ")
    }
}
