//! JUnit reports: reads the report a test wrote (capped in size) and turns its cases into subresults, which
//! can turn a passing test into a failed one.

use std::io;
use std::path::Path;

use polarizer_shared::junit::{self, CaseStatus};
use polarizer_shared::run::{AssignedTest, SubResult, TestOutcome, TestStatus};
use tokio::io::AsyncReadExt;

const JUNIT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Reads the test's JUnit report into subresults; a missing or broken report makes the test an error.
pub(super) async fn apply_junit(
    test: &AssignedTest,
    test_dir: &Path,
    outcome: &mut TestOutcome,
    messages: &mut Vec<String>,
) {
    let report_name = &test.junit;
    let report_path = test_dir.join(report_name.trim_start_matches('/'));
    // A test that already errored or timed out keeps that status; the report problem is only noted.
    let already_broken = matches!(outcome.status, TestStatus::Error | TestStatus::Timeout);
    let mut report_problem = |outcome: &mut TestOutcome, problem: String| {
        if already_broken {
            messages.push(problem);
        } else {
            outcome.status = TestStatus::Error;
            messages.insert(0, problem);
        }
    };
    let bytes = match read_capped(&report_path, JUNIT_MAX_BYTES).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let problem = format!("junit report {report_name} is larger than 64 MiB");
            return report_problem(outcome, problem);
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let problem = format!("junit report {report_name} was not written");
            return report_problem(outcome, problem);
        }
        Err(error) => {
            let problem = format!("junit report {report_name} cannot be read: {error}");
            return report_problem(outcome, problem);
        }
    };
    // Parsing up to 64 MiB is CPU work: keep it off the async workers.
    let parsed = tokio::task::spawn_blocking(move || junit_subresults(&bytes)).await;
    let subresults = match parsed {
        Ok(Ok(subresults)) => subresults,
        Ok(Err(error)) => {
            return report_problem(outcome, format!("junit report {report_name}: {error}"))
        }
        Err(join_error) => {
            let problem = format!("junit report {report_name}: the parser failed: {join_error}");
            return report_problem(outcome, problem);
        }
    };
    let failed = subresults
        .iter()
        .filter(|sub| matches!(sub.status, TestStatus::Fail | TestStatus::Error))
        .count();
    if failed > 0 && outcome.status == TestStatus::Pass {
        outcome.status = TestStatus::Fail;
        messages.insert(
            0,
            format!("{failed} of {} JUnit cases failed", subresults.len()),
        );
    }
    outcome.subresults = subresults;
}

/// Reads at most `limit` bytes of a file; `None` when it is longer.
async fn read_capped(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some(bytes))
}

fn junit_subresults(xml: &[u8]) -> Result<Vec<SubResult>, junit::ParseError> {
    let report = junit::parse(xml)?;
    let subresults = report
        .cases()
        .map(|(_suite, case)| SubResult {
            name: case.name.clone(),
            classname: case.classname.clone(),
            status: match case.status {
                CaseStatus::Passed => TestStatus::Pass,
                CaseStatus::Failed => TestStatus::Fail,
                CaseStatus::Error => TestStatus::Error,
                CaseStatus::Skipped => TestStatus::Skipped,
            },
            // The parser only keeps finite, non-negative times; `as` saturates anyway.
            duration_ms: case
                .time_seconds
                .map_or(0, |seconds| (seconds * 1000.0).round() as u64),
            message: case.message.clone(),
        })
        .collect();
    Ok(subresults)
}

#[cfg(test)]
mod tests {
    use polarizer_shared::run::TestStatus;

    use crate::runner::fixture::{fixture, outcome, test};

    #[tokio::test]
    async fn junit_reports_become_subresults() {
        let fixture = fixture();
        let report = "<testsuite name=\"s\"><testcase name=\"good\" classname=\"c\" time=\"0.25\"/>\
                      <testcase name=\"bad\" classname=\"c\"><failure message=\"boom\">trace</failure></testcase></testsuite>";
        let mut valid = test("/t/valid", &format!("printf '%s' '{report}' > report.xml"));
        valid.junit = "report.xml".into();
        let mut broken = test("/t/broken", "echo 'not xml' > report.xml");
        broken.junit = "report.xml".into();
        let mut unwritten = test("/t/unwritten", "true");
        unwritten.junit = "unwritten.xml".into();
        let records = fixture
            .run(fixture.assignment(vec![valid, broken, unwritten]))
            .await;

        let valid = outcome(&records, "/t/valid");
        assert_eq!(valid.status, TestStatus::Fail);
        assert_eq!(valid.message, "1 of 2 JUnit cases failed");
        let subresults: Vec<_> = valid
            .subresults
            .iter()
            .map(|sub| {
                (
                    sub.name.as_str(),
                    sub.status,
                    sub.duration_ms,
                    sub.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            subresults,
            [
                ("good", TestStatus::Pass, 250, ""),
                ("bad", TestStatus::Fail, 0, "boom")
            ]
        );
        let broken = outcome(&records, "/t/broken");
        assert_eq!(broken.status, TestStatus::Error);
        assert!(
            broken.message.starts_with("junit report"),
            "{}",
            broken.message
        );
        let unwritten = outcome(&records, "/t/unwritten");
        assert_eq!(unwritten.status, TestStatus::Error);
        assert_eq!(
            unwritten.message,
            "junit report unwritten.xml was not written"
        );
    }
}
