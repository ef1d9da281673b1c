//! Reports of a run (`polarizer report`, `/api/runs/{id}/report`). JUnit XML: one `<testsuite>` per
//! suite, its properties carrying the version chain; one case per test; a test's JUnit sub-results as a
//! nested `<testsuite>` named after it; the output of failing tests kept (capped by the writer). JSON is
//! `runs show --json`.

use polarizer_shared::junit::{self, CaseStatus, Report, TestCase, TestSuite};
use polarizer_shared::run::{RunDetail, RunTestRow, TestStatus};

fn case_status(status: TestStatus) -> CaseStatus {
    match status {
        TestStatus::Pass | TestStatus::Info => CaseStatus::Passed,
        TestStatus::Fail | TestStatus::Timeout | TestStatus::Warn => CaseStatus::Failed,
        TestStatus::Error | TestStatus::Queued | TestStatus::Running => CaseStatus::Error,
        TestStatus::Skipped | TestStatus::Cancelled => CaseStatus::Skipped,
    }
}

fn test_case(test: &RunTestRow, classname: &str) -> TestCase {
    let mut case = TestCase::new(test.name.clone(), classname);
    case.status = case_status(test.status);
    case.time_seconds = test.duration_ms.map(|ms| ms as f64 / 1000.0);
    case.message = if test.message.is_empty() {
        test.status.as_str().to_string()
    } else {
        format!("{}: {}", test.status, test.message)
    };
    if let Some(label) = test
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.label.as_ref())
    {
        case.message = format!("{} — {}", case.message, label.describe());
    }
    if case.status == CaseStatus::Passed {
        case.message.clear();
    } else {
        // Output is what a reader of a failure needs first.
        case.system_out = test.output_tail.clone();
    }
    case.properties = vec![
        ("polarizer.status".into(), test.status.as_str().into()),
        ("polarizer.agent".into(), test.agent.clone()),
        ("polarizer.attempt".into(), test.attempt.to_string()),
        ("polarizer.id".into(), test.test.clone()),
    ];
    if let Some(cluster) = &test.cluster {
        case.properties
            .push(("polarizer.cluster".into(), cluster.id.to_string()));
        if let Some(label) = &cluster.label {
            case.properties
                .push(("polarizer.known_issue".into(), label.issue.clone()));
            case.properties
                .push(("polarizer.defect_type".into(), label.kind.as_str().into()));
        }
    }
    if test.quarantined {
        case.properties
            .push(("polarizer.quarantined".into(), "true".into()));
    }
    for lost in &test.lost_attempts {
        case.properties.push((
            format!("polarizer.lost_attempt.{}", lost.attempt),
            format!("{} ({})", lost.message, lost.agent),
        ));
    }
    case
}

/// The run as JUnit XML.
pub fn junit(detail: &RunDetail) -> String {
    let mut report = Report {
        name: Some(format!("polarizer run {}", detail.run.id)),
        suites: Vec::new(),
    };
    for suite in &detail.suites {
        let mut out = TestSuite::new(format!("suite {} ({})", suite.ordinal, suite.kind));
        out.hostname = (!suite.agent.is_empty()).then(|| suite.agent.clone());
        out.timestamp = suite.started_ms.map(crate::core::views::rfc3339);
        out.time_seconds = suite
            .started_ms
            .zip(suite.finished_ms)
            .map(|(started, finished)| (finished - started).max(0) as f64 / 1000.0);
        out.properties = vec![
            ("polarizer.run".into(), detail.run.id.to_string()),
            ("polarizer.repo".into(), detail.run.repo.clone()),
            ("polarizer.ref".into(), detail.run.git_ref.clone()),
            ("polarizer.commit".into(), detail.run.commit.clone()),
            ("polarizer.agent".into(), suite.agent.clone()),
            (
                "polarizer.agent_version".into(),
                suite.versions.agent_version.clone(),
            ),
            ("polarizer.attempt".into(), suite.attempt.to_string()),
        ];
        for (package, version) in &suite.versions.packages {
            out.properties
                .push((format!("polarizer.package.{package}"), version.clone()));
        }
        for artifact in &detail.artifacts {
            out.properties
                .push(("polarizer.artifact".into(), artifact.clone()));
        }
        let classname = format!("polarizer.run{}.suite{}", detail.run.id, suite.ordinal);
        for test in detail.tests.iter().filter(|test| test.suite == suite.id) {
            out.cases.push(test_case(test, &classname));
            if !test.subresults.is_empty() {
                let mut nested = TestSuite::new(test.name.clone());
                for sub in &test.subresults {
                    let mut case = TestCase::new(sub.name.clone(), sub.classname.clone());
                    case.status = case_status(sub.status);
                    case.time_seconds = Some(sub.duration_ms as f64 / 1000.0);
                    case.message = sub.message.clone();
                    nested.cases.push(case);
                }
                out.suites.push(nested);
            }
        }
        report.suites.push(out);
    }
    junit::write(&report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::run::*;

    fn detail() -> RunDetail {
        let row = |test: &str, status: TestStatus, subresults: Vec<SubResult>| RunTestRow {
            test: test.into(),
            name: test.into(),
            suite: 1,
            position: 0,
            status,
            attempt: 1,
            agent: "vm-1".into(),
            started_ms: Some(1),
            duration_ms: Some(1500),
            message: if status == TestStatus::Pass {
                String::new()
            } else {
                "exit code 1".into()
            },
            reasons: vec!["all tests requested".into()],
            output_tail: "boom \u{1b}[31m\n".into(),
            subresults,
            lost_attempts: Vec::new(),
            cluster: None,
            quarantined: false,
            slow_p95_ms: None,
        };
        RunDetail {
            run: RunRow {
                id: 7,
                state: RunState::Failed,
                kind: TriggerKind::Commit,
                repo: "/repo".into(),
                git_ref: "HEAD".into(),
                commit: "abc".into(),
                created_ms: 0,
                finished_ms: Some(2000),
                tests: 2,
                done: 2,
                problems: 1,
            },
            artifacts: vec!["pkg-1.0-1.el9".into()],
            changed: Vec::new(),
            message: String::new(),
            infrastructure_trouble: false,
            suites: vec![SuiteRow {
                id: 1,
                ordinal: 1,
                kind: "parallel".into(),
                platform: None,
                arch: Vec::new(),
                distro: Vec::new(),
                state: "done".into(),
                attempt: 1,
                agent: "vm-1".into(),
                waiting_for: String::new(),
                versions: VersionChain {
                    commit: "abc".into(),
                    agent_version: "0.1.0".into(),
                    packages: vec![("bash".into(), "5.2".into())],
                },
                started_ms: Some(0),
                finished_ms: Some(2000),
            }],
            tests: vec![
                row("/a", TestStatus::Pass, Vec::new()),
                row(
                    "/b",
                    TestStatus::Fail,
                    vec![SubResult {
                        name: "case".into(),
                        classname: "k".into(),
                        status: TestStatus::Fail,
                        duration_ms: 3,
                        message: "bad".into(),
                    }],
                ),
            ],
        }
    }

    #[test]
    fn the_junit_report_has_suites_versions_subresults_and_failing_output() {
        let xml = junit(&detail());
        let report = junit::parse(xml.as_bytes()).expect("our own report parses");
        let counts = report.counts();
        assert_eq!((counts.tests, counts.failures), (3, 2));
        let suite = &report.suites[0];
        assert!(suite
            .properties
            .contains(&("polarizer.package.bash".into(), "5.2".into())));
        assert!(suite
            .properties
            .contains(&("polarizer.artifact".into(), "pkg-1.0-1.el9".into())));
        assert_eq!(suite.suites[0].name, "/b");
        let failing = &suite.cases[1];
        assert!(failing.system_out.contains("boom"), "{failing:?}");
        assert!(suite.cases[0].system_out.is_empty());
    }

    /// A failure of a labelled cluster says so in every report: JUnit, GitHub's summary, Polarion.
    #[test]
    fn known_issues_and_infrastructure_trouble_reach_the_reports() {
        use polarizer_shared::analysis::{ClusterRef, FailureLabel, LabelKind};
        let mut detail = detail();
        detail.tests[1].cluster = Some(ClusterRef {
            id: 12,
            label: Some(FailureLabel {
                issue: "RHBZ#2101".into(),
                kind: LabelKind::System,
                note: String::new(),
                labelled_ms: 1,
            }),
        });
        detail.infrastructure_trouble =
            crate::core::analysis::infrastructure_trouble(&detail.tests);
        assert!(detail.infrastructure_trouble);
        let report = junit::parse(junit(&detail).as_bytes()).unwrap();
        let failing = &report.suites[0].cases[1];
        assert!(failing
            .properties
            .contains(&("polarizer.known_issue".into(), "RHBZ#2101".into())));
        assert!(failing
            .properties
            .contains(&("polarizer.defect_type".into(), "system".into())));
        assert!(failing
            .message
            .ends_with("— known issue RHBZ#2101, system issue"));
        let github = crate::core::github::run_report(&detail, "", &|name| name.to_string());
        assert!(github
            .summary
            .contains("known issue RHBZ#2101, system issue — exit code 1"));
        assert!(github.summary.contains("Infrastructure trouble"));
        // Quarantined, it no longer counts: the run is not the infrastructure's alone to blame.
        detail.tests[1].cluster = None;
        detail.tests[1].quarantined = true;
        assert!(!crate::core::analysis::infrastructure_trouble(
            &detail.tests
        ));
        assert_eq!(
            detail.tests[1].message_with_analysis(),
            "quarantined — exit code 1"
        );
    }
}
