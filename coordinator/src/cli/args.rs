//! The command line's shape: every subcommand and flag, as clap reads them. Flags of the `serve`
//! subcommand are the daemon's settings (`daemon::config::ServeSettings`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cli::client::ClientArgs;
use crate::daemon::config::ServeSettings;

#[derive(Debug, Parser)]
#[command(
    name = "polarizer",
    version,
    about = "Run the right tests on the right machines as soon as something changes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: human or json
    #[arg(
        long,
        global = true,
        env = "POLARIZER_LOG_FORMAT",
        default_value = "human"
    )]
    pub log_format: polarizer_transport::daemon::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon.
    Serve {
        /// A TOML file with any of the flags below as keys (flags and POLARIZER_* variables win)
        #[arg(long, env = "POLARIZER_CONFIG")]
        config: Option<PathBuf>,
        /// Validate the configuration and exit
        #[arg(long)]
        check_config: bool,
        #[command(flatten)]
        settings: Box<ServeSettings>,
    },
    /// Create the data directory (database, CA, server certificate, tokens) without serving; idempotent.
    Init {
        /// The data directory [default: $STATE_DIRECTORY, else ~/.local/share/polarizer]
        #[arg(long, env = "POLARIZER_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the agent inventory, or act on an agent.
    Agents {
        #[command(subcommand)]
        action: Option<AgentsAction>,
        /// Print JSON (an array of objects) instead of a table
        #[arg(long, global = true)]
        json: bool,
        /// List at most this many agents (a page, in name order; the next starts `--after` the last)
        #[arg(long)]
        limit: Option<u32>,
        /// List the agents named after this one (the last of the previous page)
        #[arg(long, default_value = "")]
        after: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The pools of platforms made on demand, and each platform: its state, age, suite and agent.
    Platforms {
        #[command(subcommand)]
        action: Option<PlatformsAction>,
        /// Print JSON (an object with `pools` and `platforms`) instead of tables
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Polarion: test cases from the catalog, results from runs, and the importers' jobs followed.
    Polarion {
        #[command(subcommand)]
        action: PolarionAction,
        /// Print JSON instead of a table or a sentence
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Failure clusters: each failure joins one as it is stored (its template, count, tests, first and
    /// last seen, label). `show ID`, `label ID`, `unlabel ID`; `cluster FILE`: any text, offline, one
    /// line at a time into templates (for every input line, in order: its cluster id, a tab, the template).
    Failures {
        #[command(subcommand)]
        action: Option<FailuresAction>,
        /// Only the failures of this run
        #[arg(long)]
        run: Option<u64>,
        /// Only failures this recent: a number with s, m, h or d [default: 7d; all with --run]
        #[arg(long, value_parser = parse_age)]
        since: Option<std::time::Duration>,
        /// Print JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Per test: results, pass rate, mean and p95 duration, flip rate, whether its last result was slow;
    /// per agent and pool: the share of attempts lost to infrastructure.
    Stats {
        /// Only results this recent: a number with s, m, h or d [default: 30d]
        #[arg(long, value_parser = parse_age, default_value = "30d")]
        since: std::time::Duration,
        /// Print JSON instead of tables
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What arrived from outside (GitHub webhooks), newest first: time, source, delivery id, repository,
    /// event, commit, and what became of it (a run, ignored and why, a duplicate, refused and why), with
    /// its report back.
    Triggers {
        /// Show this many [default: 50]
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON (an array of objects) instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Log a browser in to the web view: prints a link, good once for five minutes, that opens PATH
    /// (and opens it, on a desktop).
    Open {
        /// The page to open: /runs, /runs/7, /agents, /tests, /features, /triggers
        #[arg(default_value = "/runs")]
        path: String,
        /// Only print the link, even on a desktop
        #[arg(long)]
        no_browser: bool,
        /// Print JSON (`url`, `expires`) instead of the link alone
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enrollment tokens: `rotate` writes a new one to the data dir's agent-token, in effect at once.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import test metadata (fmf trees) and query it.
    Tests {
        #[command(subcommand)]
        action: TestsAction,
        /// Print JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The feature graph: each feature's paths, dependencies, dependents and test counts.
    Features {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Trigger a run: select the tests a change touches, plan suites, dispatch them to agents.
    Trigger {
        #[command(flatten)]
        args: crate::cli::runs::TriggerArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Recent runs; watch, show or cancel one.
    Runs {
        #[command(subcommand)]
        action: Option<crate::cli::runs::RunsAction>,
        /// Print JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
        /// How many recent runs to list
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a run's report: JUnit XML or JSON.
    Report {
        run: u64,
        #[arg(long, value_enum, default_value = "junit")]
        format: crate::cli::runs::ReportFormat,
        /// Write to this file instead of standard output
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Events from every agent, live: D-Bus signals, file and package changes, test output, results.
    Tail {
        #[command(flatten)]
        args: crate::cli::tail::TailArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A run's timeline: its results and events interleaved in time order.
    Replay {
        run: u64,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a coordinator and local agents in a temporary directory and watch them join.
    Demo {
        /// How many local agents to start
        #[arg(long, default_value_t = 3)]
        agents: u32,
        /// Keep everything running until Ctrl-C instead of stopping once all agents are online
        #[arg(long)]
        keep_running: bool,
    },
}

/// Which tests of the catalog: every filter given must hold.
#[derive(Debug, Clone, clap::Args)]
pub struct TestFilters {
    /// Tests covering this feature, directly or through a feature that depends on it
    #[arg(long)]
    pub feature: Option<String>,
    /// Tests that can run on this platform kind (vm, container, baremetal)
    #[arg(long)]
    pub platform: Option<String>,
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub distro: Option<String>,
    /// unit, integration, functional, performance or acceptance
    #[arg(long = "type")]
    pub test_type: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub tier: Option<String>,
    #[arg(long)]
    pub component: Option<String>,
    /// A linked requirement: relation:target (verifies:REQ-123) or just the target
    #[arg(long)]
    pub linked: Option<String>,
    /// Tests that need, create or modify this resource
    #[arg(long)]
    pub resource: Option<String>,
    /// Tests that must run after this test (name it in `after`)
    #[arg(long)]
    pub depends_on: Option<String>,
    /// Only tests whose metadata differs between distros (through adjust)
    #[arg(long)]
    pub differs_by_distro: bool,
    /// Include tests that disappeared from their source
    #[arg(long)]
    pub include_removed: bool,
}

impl TestFilters {
    pub fn query(self) -> polarizer_shared::catalog::TestQuery {
        polarizer_shared::catalog::TestQuery {
            feature: self.feature,
            platform: self.platform,
            arch: self.arch,
            distro: self.distro,
            test_type: self.test_type,
            tag: self.tag,
            tier: self.tier,
            component: self.component,
            linked: self.linked,
            resource: self.resource,
            depends_on: self.depends_on,
            differs_by_distro: self.differs_by_distro,
            include_removed: self.include_removed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum FailuresAction {
    /// Cluster the lines of FILE (`-`: standard input), without a coordinator.
    Cluster {
        file: PathBuf,
        /// A line joins a cluster when at least this share of its tokens match [default: 0.5]
        #[arg(long, default_value_t = 0.5)]
        similarity: f64,
        /// Lines go to the same leaf only with the same count and these first tokens [default: 2]
        #[arg(long, default_value_t = 2)]
        depth: usize,
    },
    /// One cluster: its template, label, the clusters merged into it, and its newest failures, each
    /// with its masked tokens and how many of them equal the template's.
    Show { id: u64 },
    /// Label a cluster as a known issue: its failures, past and to come, carry the label.
    Label {
        id: u64,
        /// The issue's id in its tracker, e.g. RHBZ#2101
        #[arg(long, default_value = "")]
        issue: String,
        /// product | automation | system | no-defect
        #[arg(long, value_parser = parse_label_kind)]
        kind: polarizer_shared::analysis::LabelKind,
        /// A note for whoever reads it
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Withdraw a cluster's label.
    Unlabel { id: u64 },
}

fn parse_label_kind(text: &str) -> Result<polarizer_shared::analysis::LabelKind, String> {
    polarizer_shared::analysis::LabelKind::parse(text)
        .ok_or_else(|| format!("{text:?} is not a kind: product, automation, system or no-defect"))
}

/// `7d`, `12h`: how far back, at most ten years.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let age = parse_ttl(text)?;
    if age > std::time::Duration::from_secs(3650 * 86_400) {
        return Err(format!("{text:?} is more than ten years"));
    }
    Ok(age)
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum PolarionAction {
    /// The catalog's tests as Polarion test cases: uploaded to the TestCase importer, or written to a
    /// file with -o. Filters as in `tests list`.
    ExportTests {
        #[command(flatten)]
        filters: TestFilters,
        /// Polarion checks the import and changes nothing
        #[arg(long)]
        dry_run: bool,
        /// Write the importer file here instead of uploading it
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Upload a run's results to the XUnit importer (in several files past `chunk` cases).
    Upload {
        run: u64,
        /// Polarion checks the import and changes nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Every import: kind, run, Polarion's job ids, state, the test run's URL, what failed.
    Jobs {
        /// Show this many [default: 50]
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TestsAction {
    /// Import an fmf tree: a directory, or a git URL (cloned by the coordinator). Re-import is idempotent;
    /// tests that disappeared are marked removed.
    Import {
        /// A directory holding an fmf tree (.fmf/version), or a git URL
        location: String,
        /// The git ref to import (branch, tag or commit) [default: the remote's HEAD]
        #[arg(long = "ref", default_value = "")]
        git_ref: String,
        /// An adjust context dimension, key=value (repeatable), e.g. distro=rhel-9.4
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
    /// Flaky tests: each test that passed and failed on the same commit with the same platform needs,
    /// its flip rate (changes between pass and fail per result), and the runs and commits that show it.
    Flaky {
        /// Only results this recent: a number with s, m, h or d [default: 30d]
        #[arg(long, value_parser = parse_age, default_value = "30d")]
        since: std::time::Duration,
    },
    /// List tests; every filter given must hold.
    List {
        #[command(flatten)]
        filters: TestFilters,
    },
    /// A test's full, adjusted metadata and where it came from.
    Show { id: String },
    /// Check an fmf tree here, without a coordinator: every error and warning with file, line, node
    /// and key; bare Polarizer keys with their lint-clean `extra-polarizer-` form. Exit 0 when clean
    /// (warnings shown), 1 with errors (or warnings, with --strict), 2 when there is no tree to read.
    Lint {
        /// A directory holding an fmf tree (.fmf/version)
        path: PathBuf,
        /// An adjust context dimension, key=value (repeatable), e.g. distro=rhel-9.4
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Fail (exit 1) on warnings too
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// A new enrollment token in the data dir's agent-token; the old one is refused from now on.
    /// Enrolled agents keep working: they use their own credentials.
    Rotate,
    /// A per-host enrollment token: it enrolls the agent NAME once, before it expires. Printed on
    /// stdout, or written to --output (0600). With --offline, no coordinator needs to run.
    Create {
        /// The agent it enrolls (its --name)
        #[arg(long)]
        name: String,
        /// How long it stays valid: a number with s, m, h or d (at most 30d)
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// Write the token to this file (0600) instead of printing it
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write it straight into the database of --data-dir instead of asking the coordinator,
        /// whether or not it runs (the database must exist: `polarizer init`)
        #[arg(long)]
        offline: bool,
    },
}

/// `90s`, `10m`, `1h`, `2d`.
fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Revoke an agent: its credential stops working and its connection is closed.
    Revoke { name: String },
    /// Admit an agent waiting as `pending` (the coordinator runs with `--enroll approve`).
    Approve { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PlatformsAction {
    /// Destroy a platform now; a suite it runs goes back to the queue.
    Destroy { name: String },
}
