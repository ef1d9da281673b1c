//! Failure analysis as operators see it: failure clusters and their labels (known issues), flaky tests,
//! and per-test and per-host statistics. Field order is the wire format: append, never reorder.

use serde::{Deserialize, Serialize};

/// What a labelled cluster of failures is, ReportPortal's triage classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelKind {
    /// A bug in what is tested.
    Product,
    /// A bug in the test itself.
    Automation,
    /// The infrastructure: a platform, a network, a mirror.
    System,
    /// Not a defect (expected, or already fixed).
    NoDefect,
}

impl LabelKind {
    pub const ALL: [LabelKind; 4] = [
        LabelKind::Product,
        LabelKind::Automation,
        LabelKind::System,
        LabelKind::NoDefect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Product => "product",
            LabelKind::Automation => "automation",
            LabelKind::System => "system",
            LabelKind::NoDefect => "no-defect",
        }
    }

    /// How a report says it: "product bug", "system issue".
    pub fn describe(self) -> &'static str {
        match self {
            LabelKind::Product => "product bug",
            LabelKind::Automation => "automation bug",
            LabelKind::System => "system issue",
            LabelKind::NoDefect => "no defect",
        }
    }

    pub fn parse(text: &str) -> Option<LabelKind> {
        LabelKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for LabelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A known issue: the label an operator put on a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureLabel {
    /// The issue's id in its tracker ("RHBZ#2101", "RHEL-1234"); may be empty for `no-defect`.
    pub issue: String,
    pub kind: LabelKind,
    pub note: String,
    pub labelled_ms: i64,
}

impl FailureLabel {
    /// "known issue RHBZ#2101, product bug".
    pub fn describe(&self) -> String {
        if self.issue.is_empty() {
            format!("known issue, {}", self.kind.describe())
        } else {
            format!("known issue {}, {}", self.issue, self.kind.describe())
        }
    }
}

/// The cluster a failed test joined, as its result row carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRef {
    pub id: u64,
    pub label: Option<FailureLabel>,
}

/// One cluster of failures, as `polarizer failures` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCluster {
    pub id: u64,
    /// The failure text with its variable parts as `<*>`.
    pub template: String,
    /// Failures in the window asked for.
    pub failures: u64,
    /// The tests that failed this way (the first ones, sorted).
    pub tests: Vec<String>,
    /// How many tests in all.
    pub test_count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub label: Option<FailureLabel>,
}

/// One failure of a cluster, and why it is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureExample {
    pub run: u64,
    pub test: String,
    pub status: String,
    pub at_ms: i64,
    /// The text clustered: the message's first line, or the output's last line.
    pub text: String,
    /// Its tokens, variable parts masked.
    pub masked: String,
    /// Tokens equal to the template's, and the template's token count.
    pub matched: u32,
    pub tokens: u32,
}

/// `polarizer failures show ID`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureDetail {
    pub cluster: FailureCluster,
    /// Clusters whose templates converged into this one.
    pub merged: Vec<u64>,
    pub examples: Vec<FailureExample>,
    /// The share of a line's tokens that must equal the template's for it to join.
    pub similarity: f64,
}

/// One test that passed and failed on the same commit with the same platform needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlakyTest {
    pub test: String,
    /// Changes between pass and fail over the test's results in the window, in time order, per result
    /// after the first.
    pub flip_rate: f64,
    pub results: u64,
    pub passes: u64,
    pub failures: u64,
    pub evidence: Vec<FlakyEvidence>,
    /// Quarantined now: its failures do not fail a run.
    pub quarantined: bool,
}

/// A commit and platform needs under which one test both passed and failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyEvidence {
    pub commit: String,
    pub needs: String,
    pub passed_in: Vec<u64>,
    pub failed_in: Vec<u64>,
}

/// Per test, over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestStats {
    pub test: String,
    pub results: u64,
    pub passes: u64,
    pub failures: u64,
    pub pass_rate: f64,
    pub mean_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub flip_rate: f64,
    /// Its last result took longer than its p95 × the slow factor.
    pub slow_last: bool,
    pub last_ms: Option<u64>,
    /// The runs it had a result in.
    pub runs: u64,
}

/// Per agent (a platform made by a pool carries the pool's name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    pub agent: String,
    /// The pool that made this platform; empty for an agent installed by hand.
    pub pool: String,
    /// Results reported plus attempts lost there.
    pub attempts: u64,
    /// Attempts lost to infrastructure (a platform gone, a checkout that failed, a suite setup).
    pub infra_errors: u64,
    pub infra_rate: f64,
}

/// `polarizer stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub since_ms: Option<i64>,
    pub tests: Vec<TestStats>,
    pub hosts: Vec<HostStats>,
    /// Per pool, summed over its platforms.
    pub pools: Vec<HostStats>,
    /// Runs in the window, and those whose failures were all known system issues.
    pub runs: u64,
    pub infrastructure_runs: u64,
}
