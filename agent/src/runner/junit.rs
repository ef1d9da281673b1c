//! JUnit reports: reads the report a test wrote (capped in size) and turns its cases into subresults, which
//! can turn a passing test into a failed one. The test tree is hostile: a report that resolves to a file
//! outside the suite's checkout (through a symlink or `..`) is refused unread.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use polarizer_shared::junit::{self, CaseStatus};
use polarizer_shared::run::{AssignedTest, SubResult, TestOutcome, TestStatus};
use tokio::io::AsyncReadExt;

const JUNIT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Reads the test's JUnit report into subresults; a missing, broken or out-of-checkout report makes the
/// test an error. `checkout_root` is the suite's worktree, which holds `test_dir`.
pub(super) async fn apply_junit(
    test: &AssignedTest,
    checkout_root: &Path,
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
    let bytes = match read_report(checkout_root, &report_path).await {
        Ok(bytes) => bytes,
        Err(unread) => {
            let problem = match unread {
                Unread::OutsideCheckout => format!(
                    "junit report {report_name} leads out of the test's checkout; it is not read"
                ),
                Unread::TooLarge => format!("junit report {report_name} is larger than 64 MiB"),
                Unread::Io(error) if error.kind() == io::ErrorKind::NotFound => {
                    format!("junit report {report_name} was not written")
                }
                Unread::Io(error) => format!("junit report {report_name} cannot be read: {error}"),
            };
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

/// Why a report's bytes are not there to parse.
enum Unread {
    OutsideCheckout,
    TooLarge,
    Io(io::Error),
}

/// The report's bytes, if it resolves to a file inside `checkout_root` of at most [`JUNIT_MAX_BYTES`].
async fn read_report(checkout_root: &Path, report_path: &Path) -> Result<Vec<u8>, Unread> {
    let resolved = resolve_inside(checkout_root, report_path)
        .await
        .map_err(Unread::Io)?
        .ok_or(Unread::OutsideCheckout)?;
    read_capped(resolved, JUNIT_MAX_BYTES)
        .await
        .map_err(Unread::Io)?
        .ok_or(Unread::TooLarge)
}

/// `path` with every symlink and `..` resolved, or `None` when that lies outside `root`.
async fn resolve_inside(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let root = tokio::fs::canonicalize(root).await?;
    let resolved = tokio::fs::canonicalize(path).await?;
    Ok(resolved.starts_with(&root).then_some(resolved))
}

/// Reads at most `limit` bytes of a regular file; `None` when it is longer. `path` is already resolved:
/// a symlink put in its place since is not followed, and a FIFO is refused rather than waited on.
async fn read_capped(path: PathBuf, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(file)
    })
    .await
    .map_err(io::Error::other)??;
    let file = tokio::fs::File::from_std(file);
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

    /// A report linked (or `..`-walked) to a file outside the checkout is refused, and nothing of that file
    /// reaches the result.
    #[tokio::test]
    async fn reports_outside_the_checkout_are_refused_unread() {
        let fixture = fixture();
        let secret = fixture.path("secret.xml");
        let secret_report = "<testsuite name=\"s\"><testcase name=\"SECRET-CASE\" classname=\"c\">\
                             <failure message=\"SECRET-MESSAGE\"/></testcase></testsuite>";
        std::fs::write(&secret, secret_report).expect("write secret");
        let mut linked = test("/t/linked", &format!("ln -s '{secret}' report.xml"));
        linked.junit = "report.xml".into();
        let mut climbing = test("/t/climbing", "true");
        climbing.junit = format!("{}{}", "../".repeat(40), secret.trim_start_matches('/'));
        let mut inside = test(
            "/t/inside",
            "mkdir -p out && printf '<testsuite name=\"s\"><testcase name=\"ok\"/></testsuite>' > out/real.xml \
             && ln -s out/real.xml inside.xml",
        );
        inside.junit = "inside.xml".into();
        let records = fixture
            .run(fixture.assignment(vec![linked, climbing, inside]))
            .await;

        for id in ["/t/linked", "/t/climbing"] {
            let refused = outcome(&records, id);
            assert_eq!(refused.status, TestStatus::Error, "{id}");
            assert!(
                refused.message.contains("leads out of the test's checkout"),
                "{id}: {}",
                refused.message
            );
            assert!(refused.subresults.is_empty(), "{id}");
            assert!(!format!("{refused:?}").contains("SECRET"), "{id}");
        }
        let inside = outcome(&records, "/t/inside");
        assert_eq!(inside.status, TestStatus::Pass, "{}", inside.message);
        assert_eq!(inside.subresults.len(), 1);
    }
}
