//! Failure analysis over stored results, pure: the text a failure is clustered by, flaky tests (passed
//! and failed on the same commit with the same platform needs), flip rates, durations' mean and p95, a
//! result slower than its history, and a run whose failures are all known infrastructure issues.

use std::collections::BTreeMap;

use polarizer_shared::analysis::{FlakyEvidence, FlakyTest, LabelKind, TestStats};
use polarizer_shared::run::{RunTestRow, TestStatus};

/// `[analysis]` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisSettings {
    /// Cluster failures as they are stored.
    pub enabled: bool,
    /// A result slower than its history's p95 × this is flagged.
    pub slow_factor: f64,
    /// Results a test needs before its history flags anything.
    pub slow_min_results: usize,
    /// Tests whose failures do not fail a run, until the config drops them.
    pub quarantine: Vec<String>,
    /// Quarantine a test as soon as it is seen flaky.
    pub quarantine_flaky: bool,
    /// Consecutive passes that release a test quarantined for being flaky.
    pub release_after: u32,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        AnalysisSettings {
            enabled: true,
            slow_factor: 1.5,
            slow_min_results: 5,
            quarantine: Vec::new(),
            quarantine_flaky: false,
            release_after: 10,
        }
    }
}

/// Whether a status is a failure of the test (clustered, counted against it).
pub fn is_failure(status: TestStatus) -> bool {
    matches!(
        status,
        TestStatus::Fail | TestStatus::Error | TestStatus::Timeout
    )
}

/// A message that only says how the process ended: the output says more.
fn says_only_how_it_ended(message: &str) -> bool {
    let message = message.trim();
    message.is_empty()
        || [
            "exit code ",
            "killed by signal ",
            "timed out after ",
            "command not found",
        ]
        .iter()
        .any(|start| message.starts_with(start))
}

fn without_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Characters of a failure's text kept: enough for any message a person reads, bounded whatever a
/// test prints on one line.
pub const FAILURE_TEXT_MAX: usize = 1000;

/// The line a failure is clustered by: its message's first line, or, when the message only says how
/// the process ended ("exit code 1"), the output's last non-empty line; at most [`FAILURE_TEXT_MAX`]
/// characters.
pub fn failure_text(message: &str, output_tail: &str) -> String {
    let mut text = failure_line(message, output_tail);
    if let Some((cut, _)) = text.char_indices().nth(FAILURE_TEXT_MAX) {
        text.truncate(cut);
    }
    text
}

fn failure_line(message: &str, output_tail: &str) -> String {
    let first = message.lines().map(str::trim).find(|line| !line.is_empty());
    if let Some(first) = first.filter(|first| !says_only_how_it_ended(first)) {
        return without_escapes(first);
    }
    let last = output_tail
        .lines()
        .rev()
        .map(|line| without_escapes(line).trim().to_string())
        .find(|line| !line.is_empty());
    match (last, first) {
        (Some(last), _) => last,
        (None, Some(first)) => without_escapes(first),
        (None, None) => String::new(),
    }
}

/// Changes between pass and fail over results in time order, per result after the first.
pub fn flip_rate(statuses: &[bool]) -> f64 {
    if statuses.len() < 2 {
        return 0.0;
    }
    let flips = statuses
        .windows(2)
        .filter(|pair| pair[0] != pair[1])
        .count();
    flips as f64 / (statuses.len() - 1) as f64
}

/// The nearest-rank 95th percentile.
pub fn p95(sorted: &[u64]) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() as f64 * 0.95).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// One stored result, for flakiness and statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultPoint {
    pub test: String,
    pub run: u64,
    pub commit: String,
    pub needs: String,
    pub passed: bool,
    pub at_ms: i64,
    pub duration_ms: Option<u64>,
}

/// Tests that passed and failed on the same commit with the same needs, most flaky first. `points`
/// are pass and failure results in any order.
pub fn flaky(points: &[ResultPoint], quarantined: &[String]) -> Vec<FlakyTest> {
    let mut by_test: BTreeMap<&str, Vec<&ResultPoint>> = BTreeMap::new();
    for point in points {
        by_test.entry(&point.test).or_default().push(point);
    }
    let mut out = Vec::new();
    for (test, mut points) in by_test {
        // By (commit, needs): the runs it passed in, and those it failed in.
        type Runs = (Vec<u64>, Vec<u64>);
        let mut groups: BTreeMap<(&str, &str), Runs> = BTreeMap::new();
        for point in &points {
            let group = groups.entry((&point.commit, &point.needs)).or_default();
            if point.passed {
                group.0.push(point.run);
            } else {
                group.1.push(point.run);
            }
        }
        let evidence: Vec<FlakyEvidence> = groups
            .into_iter()
            .filter(|(_, (passed, failed))| !passed.is_empty() && !failed.is_empty())
            .map(|((commit, needs), (mut passed_in, mut failed_in))| {
                passed_in.sort_unstable();
                passed_in.dedup();
                failed_in.sort_unstable();
                failed_in.dedup();
                FlakyEvidence {
                    commit: commit.to_string(),
                    needs: needs.to_string(),
                    passed_in,
                    failed_in,
                }
            })
            .collect();
        if evidence.is_empty() {
            continue;
        }
        points.sort_by_key(|point| (point.at_ms, point.run));
        let statuses: Vec<bool> = points.iter().map(|point| point.passed).collect();
        let passes = statuses.iter().filter(|passed| **passed).count() as u64;
        out.push(FlakyTest {
            test: test.to_string(),
            flip_rate: flip_rate(&statuses),
            results: statuses.len() as u64,
            passes,
            failures: statuses.len() as u64 - passes,
            evidence,
            quarantined: quarantined.iter().any(|name| name == test),
        });
    }
    rank_flaky(&mut out);
    out
}

/// Most flaky first (highest flip rate), then by name.
pub fn rank_flaky(flaky: &mut [FlakyTest]) {
    flaky.sort_by(|a, b| {
        b.flip_rate
            .total_cmp(&a.flip_rate)
            .then_with(|| a.test.cmp(&b.test))
    });
}

/// Per-test statistics over `points`, by test name.
pub fn test_stats(points: &[ResultPoint], slow_factor: f64, min_results: usize) -> Vec<TestStats> {
    let mut by_test: BTreeMap<&str, Vec<&ResultPoint>> = BTreeMap::new();
    for point in points {
        by_test.entry(&point.test).or_default().push(point);
    }
    by_test
        .into_iter()
        .map(|(test, mut points)| {
            points.sort_by_key(|point| (point.at_ms, point.run));
            let statuses: Vec<bool> = points.iter().map(|point| point.passed).collect();
            let passes = statuses.iter().filter(|passed| **passed).count() as u64;
            let results = statuses.len() as u64;
            let last_ms = points.last().and_then(|point| point.duration_ms);
            let earlier: Vec<u64> = points[..points.len().saturating_sub(1)]
                .iter()
                .filter_map(|point| point.duration_ms)
                .collect();
            let mut durations: Vec<u64> = points
                .iter()
                .filter_map(|point| point.duration_ms)
                .collect();
            durations.sort_unstable();
            let mean_ms = (!durations.is_empty())
                .then(|| durations.iter().sum::<u64>() / durations.len() as u64);
            TestStats {
                test: test.to_string(),
                results,
                passes,
                failures: results - passes,
                pass_rate: if results == 0 {
                    0.0
                } else {
                    passes as f64 / results as f64
                },
                mean_ms,
                p95_ms: p95(&durations),
                flip_rate: flip_rate(&statuses),
                slow_last: last_ms.is_some_and(|last| {
                    slower_than(last, &earlier, slow_factor, min_results).is_some()
                }),
                last_ms,
                runs: points
                    .iter()
                    .map(|point| point.run)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as u64,
            }
        })
        .collect()
}

/// `Some(p95)` when `duration_ms` exceeds the p95 of `history` × `factor` and the history holds at
/// least `min_results` durations.
pub fn slower_than(
    duration_ms: u64,
    history: &[u64],
    factor: f64,
    min_results: usize,
) -> Option<u64> {
    if history.len() < min_results.max(1) {
        return None;
    }
    let mut sorted = history.to_vec();
    sorted.sort_unstable();
    let p95 = p95(&sorted)?;
    (duration_ms as f64 > p95 as f64 * factor).then_some(p95)
}

/// A finished run's failures (quarantined ones aside) all belong to clusters labelled `system`: its
/// trouble was the infrastructure's. A run without failures is not.
pub fn infrastructure_trouble(rows: &[RunTestRow]) -> bool {
    let mut failures = rows
        .iter()
        .filter(|row| is_failure(row.status) && !row.quarantined)
        .peekable();
    failures.peek().is_some()
        && failures.all(|row| {
            row.cluster
                .as_ref()
                .and_then(|cluster| cluster.label.as_ref())
                .is_some_and(|label| label.kind == LabelKind::System)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_exit_is_explained_by_the_output() {
        assert_eq!(
            failure_text(
                "exit code 1",
                "starting\nError: connection refused to 10.0.0.1\n\n"
            ),
            "Error: connection refused to 10.0.0.1"
        );
        assert_eq!(
            failure_text("AssertionError: 1 != 2\n  at line 3", "noise"),
            "AssertionError: 1 != 2"
        );
        assert_eq!(failure_text("exit code 2", ""), "exit code 2");
        assert_eq!(failure_text("", "\u{1b}[31mFAILED\u{1b}[0m x"), "FAILED x");
        let long = "é".repeat(5000);
        assert_eq!(failure_text(&long, "").chars().count(), FAILURE_TEXT_MAX);
    }

    fn point(test: &str, run: u64, commit: &str, passed: bool, ms: u64) -> ResultPoint {
        ResultPoint {
            test: test.into(),
            run,
            commit: commit.into(),
            needs: "{}".into(),
            passed,
            at_ms: run as i64,
            duration_ms: Some(ms),
        }
    }

    #[test]
    fn flaky_means_both_outcomes_on_one_commit() {
        let points = [
            point("/a", 1, "c1", true, 10),
            point("/a", 2, "c1", false, 10),
            point("/a", 3, "c1", true, 10),
            // Failed only after a change: a regression, not flakiness.
            point("/b", 1, "c1", true, 10),
            point("/b", 2, "c2", false, 10),
        ];
        let flaky = flaky(&points, &["/a".to_string()]);
        assert_eq!(flaky.len(), 1, "{flaky:?}");
        assert_eq!(flaky[0].test, "/a");
        assert_eq!(flaky[0].flip_rate, 1.0);
        assert_eq!(flaky[0].evidence[0].passed_in, [1, 3]);
        assert_eq!(flaky[0].evidence[0].failed_in, [2]);
        assert!(flaky[0].quarantined);
    }

    #[test]
    fn a_result_far_beyond_its_history_is_slow() {
        let history = [100, 110, 120, 100, 105];
        assert_eq!(slower_than(200, &history, 1.5, 5), Some(120));
        assert_eq!(slower_than(150, &history, 1.5, 5), None);
        assert_eq!(slower_than(900, &history[..3], 1.5, 5), None);
        let points: Vec<ResultPoint> = [100, 110, 120, 100, 105, 400]
            .iter()
            .enumerate()
            .map(|(n, ms)| point("/t", n as u64 + 1, "c", true, *ms))
            .collect();
        let stats = test_stats(&points, 1.5, 5);
        assert!(stats[0].slow_last);
        assert_eq!(stats[0].p95_ms, Some(400));
        assert_eq!(stats[0].pass_rate, 1.0);
        assert_eq!(stats[0].runs, 6);
    }
}
