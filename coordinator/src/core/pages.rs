//! The web view's pages: server-rendered HTML of the same records the CLI's `--json` and the API show
//! (runs, a run, agents, tests, the feature graph, triggers). maud escapes every value it writes, so a
//! test's output or a repository's name is text, never markup. The live parts (a run's results as they
//! land, its timeline, the lists refreshed) are `app.js`'s, served beside this.
//!
//! Pure: records in, markup out. What the pages may load is fixed by the coordinator's Content Security
//! Policy (this origin's script and style only), so nothing here is inline script or style.

use maud::{html, Markup, DOCTYPE};
use polarizer_shared::catalog::{FeatureRow, TestRow};
use polarizer_shared::protocol::AgentRecord;
use polarizer_shared::run::{RunDetail, RunRow, RunTestRow, SuiteRow};
use polarizer_shared::triggers::TriggerRecord;

use crate::core::views::rfc3339;

/// The sections of the navigation, by path and label.
const SECTIONS: [(&str, &str); 5] = [
    ("/runs", "Runs"),
    ("/agents", "Agents"),
    ("/tests", "Tests"),
    ("/features", "Features"),
    ("/triggers", "Triggers"),
];

/// How many tests the tests page lists before asking for narrower filters.
pub const TESTS_SHOWN: usize = 2000;

/// A whole page: head, navigation (with `current` marked), `body` as its main content. `page` names
/// it for `app.js` (`data-page`), `run` is the run it shows.
pub fn page(title: &str, current: &str, page: &str, run: Option<u64>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — Polarizer" }
                link rel="stylesheet" href="/static/style.css";
                link rel="icon" href="/static/icon.svg" type="image/svg+xml";
                script type="module" src="/static/app.js" {}
            }
            body data-page=(page) data-run=[run] {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Sections" {
                        span.brand { "Polarizer" }
                        ul {
                            @for (path, label) in SECTIONS {
                                li {
                                    @if path == current {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    @if !current.is_empty() {
                        form.logout method="post" action="/logout" {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// The page a browser without a session gets: how to log in.
pub fn login_needed(why: &str, path: &str) -> Markup {
    page(
        "Log in",
        "",
        "login",
        None,
        html! {
            h1 { "Log in" }
            p { (why) }
            p {
                "On a host with the operator token (the coordinator's, or one with "
                code { "--operator-token-file" } "), run"
            }
            pre { code { "polarizer open " (path) } }
            p { "and open the link it prints. Each link logs one browser in, once, within five minutes." }
        },
    )
}

/// A table's head: one column header each.
fn columns(names: &[&str]) -> Markup {
    html! { thead { tr { @for name in names { th scope="col" { (name) } } } } }
}

/// A state or status as a badge: its word always written, the colour only a help.
fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } { (state) } }
}

fn time(unix_ms: i64) -> Markup {
    let text = rfc3339(unix_ms);
    html! { time datetime=(text) { (text.get(..19).unwrap_or(&text).replace('T', " ")) } }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn duration(ms: Option<u64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) if ms < 10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} s", ms / 1000),
    }
}

/// The runs, newest first; `app.js` refreshes the rows (`runs_rows`) while the page is open.
pub fn runs(runs: &[RunRow]) -> Markup {
    page(
        "Runs",
        "/runs",
        "runs",
        None,
        html! {
            h1 { "Runs" }
            p #live role="status" aria-live="polite" {}
            div.scroll {
                table {
                    caption { "The newest runs; this list follows new ones as they come." }
                    (columns(&["Run", "State", "Kind", "Repository", "Ref", "Commit", "Done", "Problems", "Created"]))
                    tbody #rows { (runs_rows(runs)) }
                }
            }
        },
    )
}

/// The rows of the runs table (also served alone, for the refresh).
pub fn runs_rows(runs: &[RunRow]) -> Markup {
    html! {
        @for run in runs {
            tr {
                th scope="row" { a href={ "/runs/" (run.id) } { "Run " (run.id) } }
                td { (badge(run.state.as_str())) }
                td { (run.kind.as_str()) }
                td.wrap { (run.repo) }
                td { (run.git_ref) }
                td { code { (short(&run.commit)) } }
                td { (run.done) " / " (run.tests) }
                td { (run.problems) }
                td { (time(run.created_ms)) }
            }
        }
        @if runs.is_empty() {
            tr { td colspan="9" { "No runs yet: " code { "polarizer trigger" } " starts one." } }
        }
    }
}

/// One run: what started it, its suites, each test (status, attempt, duration, why selected, output
/// tail, sub-results, lost attempts), its version chain, and its timeline. `app.js` follows it live
/// (`/api/runs/{id}/watch`) and fills the timeline (`/api/events?run=ID&since=0`).
pub fn run(detail: &RunDetail) -> Markup {
    let run = &detail.run;
    page(
        &format!("Run {}", run.id),
        "/runs",
        "run",
        Some(run.id),
        html! {
            h1 { "Run " (run.id) " " span #run-state aria-live="polite" { (badge(run.state.as_str())) } }
            p #live role="status" aria-live="polite" {}
            dl.facts {
                dt { "Kind" } dd { (run.kind.as_str()) }
                dt { "Repository" } dd.wrap { (run.repo) }
                dt { "Ref" } dd { (run.git_ref) " " code { (short(&run.commit)) } }
                dt { "Done" } dd #run-done { (run.done) " / " (run.tests) }
                dt { "Problems" } dd #run-problems { (run.problems) }
                dt { "Created" } dd { (time(run.created_ms)) }
                dt { "Finished" } dd #run-finished { @if let Some(ms) = run.finished_ms { (time(ms)) } }
                @if !detail.changed.is_empty() {
                    dt { "Changed" } dd.wrap { (detail.changed.join(", ")) }
                }
                @if !detail.artifacts.is_empty() {
                    dt { "Artifacts" } dd.wrap { (detail.artifacts.join(", ")) }
                }
                @if detail.infrastructure_trouble {
                    dt { "Note" } dd { "Every failure is a known system issue: the infrastructure's trouble, not the tests'." }
                }
            }
            @if !detail.message.is_empty() {
                details { summary { "Trigger note" } pre { (detail.message) } }
            }
            h2 #suites-heading { "Suites" }
            div.scroll { (suites(&detail.suites, &detail.artifacts)) }
            h2 { "Tests" }
            div.scroll {
                table #tests {
                    caption { "Each test of the run; open a test's name for its output and sub-results." }
                    (columns(&["Test", "Status", "Attempt", "Duration", "Agent", "Suite", "Why selected"]))
                    tbody { @for test in &detail.tests { (test_row(test)) } }
                }
            }
            h2 { "Timeline" }
            p {
                button #replay type="button" { "Replay" }
                " the run's events in the order they happened."
            }
            ol #timeline aria-label="The run's events, oldest first" {}
        },
    )
}

fn suites(suites: &[SuiteRow], artifacts: &[String]) -> Markup {
    html! {
        table {
            caption { "Suites: where each part of the run ran, and the versions it ran against." }
            (columns(&["Suite", "Kind", "Platform", "State", "Attempt", "Agent", "Versions"]))
            tbody {
                @for suite in suites {
                    tr data-suite=(suite.id) {
                        th scope="row" { (suite.id) }
                        td { (suite.kind) }
                        td {
                            (suite.platform.map(|kind| kind.as_str()).unwrap_or("any"))
                            @for need in suite.arch.iter().chain(&suite.distro) { " " (need) }
                        }
                        td.state { (badge(&suite.state)) @if !suite.waiting_for.is_empty() { " " small { (suite.waiting_for) } } }
                        td.attempt { (suite.attempt) }
                        td.agent { (suite.agent) }
                        td.wrap.versions {
                            @if !suite.versions.commit.is_empty() { "tests " code { (short(&suite.versions.commit)) } }
                            @if !suite.versions.agent_version.is_empty() { " · agent " (suite.versions.agent_version) }
                            @for (package, version) in &suite.versions.packages { " · " (package) " " (version) }
                            @for artifact in artifacts { " · " (artifact) }
                        }
                    }
                }
            }
        }
    }
}

/// One test's row: its name opens its output, message, sub-results and lost attempts.
fn test_row(test: &RunTestRow) -> Markup {
    let status = test.status.as_str();
    html! {
        tr data-test=(test.test) {
            th scope="row" {
                details {
                    summary { (test.name) }
                    div.result {
                        p.message { (test.message) }
                        @if let Some(label) = test.known_issue() {
                            p { "Known issue " (label.issue) " (" (label.kind.as_str()) "): " (label.note) }
                        }
                        @if test.quarantined { p { "Quarantined: this failure does not fail the run." } }
                        @if let Some(p95) = test.slow_p95_ms { p { "Slow: its history's p95 is " (duration(Some(p95))) "." } }
                        pre.output aria-label={ "Output of " (test.name) } { (test.output_tail) }
                        ul.subresults {
                            @for sub in &test.subresults {
                                li { (badge(sub.status.as_str())) " " (sub.classname) " " (sub.name) " " (duration(Some(sub.duration_ms))) " " (sub.message) }
                            }
                        }
                        @for lost in &test.lost_attempts {
                            p { "Attempt " (lost.attempt) " lost on " (lost.agent) " at " (time(lost.at_ms)) ": " (lost.message) }
                        }
                    }
                }
            }
            td.status { (badge(status)) }
            td.attempt { (test.attempt) }
            td.duration { (duration(test.duration_ms)) }
            td.agent { (test.agent) }
            td { (test.suite) }
            td.wrap { (test.reasons.join("; ")) }
        }
    }
}

/// The agent inventory; `app.js` refreshes the rows (`agents_rows`).
pub fn agents(agents: &[AgentRecord], busy: &[Busy]) -> Markup {
    page(
        "Agents",
        "/agents",
        "agents",
        None,
        html! {
            h1 { "Agents" }
            p #live role="status" aria-live="polite" {}
            div.scroll {
                table {
                    caption { "The inventory: every agent, its state, facts, labels and what it runs now." }
                    (columns(&["Agent", "State", "Platform", "Distro", "CPUs", "Memory", "Labels", "Running", "Version", "Last seen"]))
                    tbody #rows { (agents_rows(agents, busy)) }
                }
            }
        },
    )
}

/// An agent running a suite now.
pub struct Busy {
    pub agent: String,
    pub run: u64,
    pub suite: u64,
}

/// The rows of the agents table (also served alone, for the refresh).
pub fn agents_rows(agents: &[AgentRecord], busy: &[Busy]) -> Markup {
    html! {
        @for agent in agents {
            @let facts = &agent.facts;
            tr {
                th scope="row" { (agent.name) }
                td { (badge(agent.state.as_str())) }
                td { (facts.platform.as_str()) " " (facts.arch) }
                td { (facts.distro()) }
                td { (facts.cpus) }
                td { (facts.memory_bytes >> 20) " MiB" }
                td.wrap { @for (key, value) in &facts.labels { code { (key) "=" (value) } " " } }
                td { @for held in busy.iter().filter(|held| held.agent == agent.name) {
                    a href={ "/runs/" (held.run) } { "run " (held.run) " · suite " (held.suite) } " "
                } }
                td { (facts.agent_version) }
                td { (time(agent.last_seen_ms)) }
            }
        }
        @if agents.is_empty() {
            tr { td colspan="10" { "No agents yet: install one with the ansible playbook, or start " code { "polarizer-agent" } "." } }
        }
    }
}

/// The filters of the tests page, as `tests list`'s flags name them.
pub const TEST_FILTERS: [(&str, &str); 8] = [
    ("feature", "Feature"),
    ("type", "Type"),
    ("tag", "Tag"),
    ("tier", "Tier"),
    ("component", "Component"),
    ("platform", "Platform"),
    ("arch", "Arch"),
    ("distro", "Distro"),
];

/// The catalog, filtered as `tests list` filters (`filters` are the values given, by name).
pub fn tests(tests: &[TestRow], filters: &[(&str, String)], error: Option<&str>) -> Markup {
    let value = |name: &str| {
        filters
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or("")
    };
    page(
        "Tests",
        "/tests",
        "tests",
        None,
        html! {
            h1 { "Tests" }
            form.filters method="get" action="/tests" {
                @for (name, label) in TEST_FILTERS {
                    label { (label) " " input type="text" name=(name) value=(value(name)); }
                }
                button type="submit" { "Filter" }
            }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            p {
                (tests.len()) " tests"
                @if tests.len() > TESTS_SHOWN { "; the first " (TESTS_SHOWN) " are shown: narrow the filters for the rest" }
                "."
            }
            div.scroll {
                table {
                    caption { "The imported tests and their metadata." }
                    (columns(&["Test", "Summary", "Type", "Feature", "Tier", "Platform", "Duration", "Enabled", "Polarion"]))
                    tbody {
                        @for test in tests.iter().take(TESTS_SHOWN) {
                            tr {
                                th scope="row" { (test.name) }
                                td.wrap { (test.summary) }
                                td { (test.test_type) }
                                td { @if !test.feature.is_empty() { a href={ "/features#feature-" (test.feature) } { (test.feature) } } }
                                td { (test.tier) }
                                td { (test.platform_kind) }
                                td { (test.duration_seconds) " s" }
                                td { @if test.enabled { "yes" } @else { "no" } }
                                td { (test.polarion_id) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The feature graph: each feature, what it depends on and what depends on it (links between rows),
/// the paths whose change selects it, and how many tests a change selects.
pub fn features(features: &[FeatureRow]) -> Markup {
    let link = |name: &str| html! { a href={ "#feature-" (name) } { (name) } };
    page(
        "Features",
        "/features",
        "features",
        None,
        html! {
            h1 { "Features" }
            p { "A change to a feature's paths selects its tests and those of every feature that depends on it." }
            div.scroll {
                table {
                    caption { "The feature graph." }
                    (columns(&["Feature", "Depends on", "Depended on by", "Paths", "Own tests", "Selected by a change"]))
                    tbody {
                        @for feature in features {
                            tr id={ "feature-" (feature.name) } {
                                th scope="row" {
                                    (feature.name)
                                    @if !feature.declared { " " small { "(undeclared)" } }
                                    @if !feature.description.is_empty() { br; small { (feature.description) } }
                                }
                                td { @for (index, name) in feature.depends.iter().enumerate() { @if index > 0 { ", " } (link(name)) } }
                                td { @for (index, name) in feature.dependents.iter().enumerate() { @if index > 0 { ", " } (link(name)) } }
                                td.wrap { @for path in &feature.paths { code { (path) } " " } }
                                td { (feature.direct_tests) }
                                td { (feature.selected_tests) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What arrived from outside and what became of it.
pub fn triggers(triggers: &[TriggerRecord]) -> Markup {
    page(
        "Triggers",
        "/triggers",
        "triggers",
        None,
        html! {
            h1 { "Triggers" }
            div.scroll {
                table {
                    caption { "Webhooks and messages that arrived, newest first, and what became of each." }
                    (columns(&["Time", "Source", "Repository", "Event", "Commit", "Outcome", "Run", "Report"]))
                    tbody {
                        @for trigger in triggers {
                            tr {
                                th scope="row" { (time(trigger.received_ms)) }
                                td { (trigger.source) br; small { (trigger.delivery) } }
                                td.wrap { (trigger.repo) }
                                td { (trigger.event) }
                                td { code { (short(&trigger.sha)) } }
                                td { (badge(trigger.outcome.as_str())) @if !trigger.reason.is_empty() { " " (trigger.reason) } }
                                td { @if let Some(run) = trigger.run { a href={ "/runs/" (run) } { "Run " (run) } } }
                                td.wrap { (trigger.report) }
                            }
                        }
                        @if triggers.is_empty() {
                            tr { td colspan="8" { "Nothing has arrived from outside yet." } }
                        }
                    }
                }
            }
        },
    )
}

/// A path a login link may lead to: this site's own (`/…`, never `//host`), printable, short.
pub fn login_path(path: &str) -> Result<&str, String> {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= 512
        && path.bytes().all(|byte| byte.is_ascii_graphic());
    if ok {
        Ok(path)
    } else {
        Err(format!(
            "{path:?} is not a path of the web view (it starts with one /, as /runs/7 does)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a test prints or a repository is named, it is text on the page, never markup.
    #[test]
    fn values_are_escaped() {
        let run = RunRow {
            id: 7,
            state: polarizer_shared::run::RunState::Failed,
            kind: polarizer_shared::run::TriggerKind::Manual,
            repo: "<script>alert(1)</script>".into(),
            git_ref: "\"><img src=x>".into(),
            commit: String::new(),
            created_ms: 0,
            finished_ms: None,
            tests: 1,
            done: 1,
            problems: 1,
        };
        let html = runs(&[run]).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
    }

    #[test]
    fn a_login_leads_only_to_a_path_of_this_site() {
        assert_eq!(login_path("/runs/7"), Ok("/runs/7"));
        assert_eq!(login_path("/tests?tag=smoke"), Ok("/tests?tag=smoke"));
        for bad in [
            "//evil.example/",
            "https://evil.example",
            "/\\evil",
            "runs",
            "/a b",
            "/a\r\nSet-Cookie: x",
        ] {
            assert!(login_path(bad).is_err(), "{bad:?}");
        }
    }
}
