//! Every JUnit/xUnit file in the shared corpus read by `junit::parse`: a report, or a `ParseError` for the files
//! that are deliberately broken or not JUnit at all; never a panic. Reports written back by `junit::write` read
//! back equal, and a few real files have their counts checked against what they hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polarizer_shared::junit::{self, CaseStatus, Counts};

fn corpus_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/junit")
}

/// Report files under `directory`, sorted: `*.xml`, plus gotestsum's `*.golden` (which are JUnit XML too).
fn report_files(directory: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            report_files(&path, files);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "xml" || extension == "golden")
        {
            files.push(path);
        }
    }
}

/// The corpus files that must be rejected, by the end of their path, with a piece of the expected message.
const EXPECTED_REJECTIONS: [(&str, &str); 7] = [
    // An XXE probe: a DOCTYPE with an external entity around a non-JUnit root; nothing is resolved.
    (
        "junit-plugin/src/test/resources/hudson/tasks/junit/testXxe-xxe.xml",
        "not a JUnit report",
    ),
    // The DTD fragment that goes with it, not an XML document.
    (
        "junit-plugin/src/test/resources/hudson/tasks/junit/testXxe-oob.xml",
        "not XML",
    ),
    // A Surefire report cut off inside a CDATA section.
    ("sf-reports/TEST-test.CorruptTest.xml", "malformed XML"),
    // A test template with time='<<computed>>' placeholders.
    (
        "junit-web-test/expectedRetries.xml",
        "'<' in the value of attribute time",
    ),
    // Allure 1 results (ns2:test-suite), CTest's Test.xml and xUnit.net's <assemblies>: XML, but not JUnit.
    (
        "junitdata/invalid.xml",
        "not a JUnit report: the root element is <test-suite>",
    ),
    (
        "ctest/testcase2/input.xml",
        "not a JUnit report: the root element is <Site>",
    ),
    (
        "xunitdotnet/testcase1/input.xml",
        "not a JUnit report: the root element is <assemblies>",
    ),
];

#[test]
fn every_corpus_file_parses_or_is_rejected_with_a_reason() {
    let directory = corpus_directory();
    if !directory.is_dir() {
        println!(
            "note: no JUnit corpus at {}, skipping (CI has it)",
            directory.display()
        );
        return;
    }
    let mut files = Vec::new();
    report_files(&directory, &mut files);
    assert!(
        !files.is_empty(),
        "no report files under {}",
        directory.display()
    );

    let mut parsed = 0;
    let mut rejected: BTreeMap<String, String> = BTreeMap::new();
    for path in &files {
        let relative = path
            .strip_prefix(&directory)
            .unwrap_or(path)
            .display()
            .to_string();
        let bytes =
            std::fs::read(path).unwrap_or_else(|error| panic!("reading {relative}: {error}"));
        let report = match junit::parse(&bytes) {
            Ok(report) => report,
            Err(error) => {
                assert!(error.line >= 1 && error.column >= 1, "{relative}: {error}");
                rejected.insert(relative, error.to_string());
                continue;
            }
        };
        parsed += 1;
        let counts = report.counts();
        assert_eq!(counts.tests, report.cases().count(), "{relative}");
        assert!(
            counts.failures + counts.errors + counts.skipped <= counts.tests,
            "{relative}"
        );
        // Parsed text is already capped and XML-safe, so the round trip is exact.
        let written = junit::write(&report);
        let reread = junit::parse(written.as_bytes())
            .unwrap_or_else(|error| panic!("{relative} written back: {error}"));
        assert_eq!(
            reread, report,
            "{relative} changed when written and read back"
        );
    }

    println!(
        "parsed {parsed} of {} corpus files, rejected {}:",
        files.len(),
        rejected.len()
    );
    for (file, reason) in &rejected {
        println!("  {file}: {reason}");
    }
    for (file, reason) in &rejected {
        let expected = EXPECTED_REJECTIONS
            .iter()
            .find(|(suffix, _)| file.ends_with(suffix));
        let Some((_, expected_reason)) = expected else {
            panic!("{file} was rejected but is expected to parse: {reason}");
        };
        assert!(
            reason.contains(expected_reason),
            "{file}: expected {expected_reason:?}, got {reason:?}"
        );
    }
    for (suffix, _) in EXPECTED_REJECTIONS {
        assert!(
            rejected.keys().any(|file| file.ends_with(suffix)),
            "{suffix} was expected to be rejected"
        );
    }
}

fn parse_corpus_file(relative: &str) -> Option<junit::Report> {
    let path = corpus_directory().join(relative);
    if !corpus_directory().is_dir() {
        println!(
            "note: no JUnit corpus at {}, skipping (CI has it)",
            corpus_directory().display()
        );
        return None;
    }
    let bytes =
        std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    Some(junit::parse(&bytes).unwrap_or_else(|error| panic!("{relative}: {error}")))
}

fn counts(tests: usize, failures: usize, errors: usize, skipped: usize) -> Counts {
    Counts {
        tests,
        failures,
        errors,
        skipped,
    }
}

/// go-junit-report: three suites with go.version properties, CDATA output, a failure and two skips.
#[test]
fn go_junit_report_counts_and_details() {
    let Some(report) = parse_corpus_file("jstemmer+go-junit-report/testdata/001-report.xml") else {
        return;
    };
    assert_eq!(report.counts(), counts(5, 1, 0, 2));
    let suite = &report.suites[1];
    assert_eq!(suite.name, "package/fail");
    assert_eq!(
        suite.properties,
        [("go.version".to_owned(), "1.0".to_owned())]
    );
    assert_eq!(suite.time_seconds, Some(0.151));
    assert_eq!(suite.timestamp.as_deref(), Some("2022-01-01T00:00:00Z"));
    let failed = &suite.cases[0];
    assert_eq!(
        (&failed.status, failed.message.as_str()),
        (&CaseStatus::Failed, "Failed")
    );
    assert!(
        failed
            .detail
            .starts_with("    fail_test.go:6: Error message\n"),
        "{:?}",
        failed.detail
    );
    assert!(report.suites[0].cases[1]
        .system_out
        .ends_with("        multi\n        line"));
    assert_eq!(
        report.suites[2].cases[0].detail,
        "    skip_test.go:6: skip message"
    );
}

/// Four levels of nested suites with cases both in the innermost suites and beside them.
#[test]
fn nested_suites_counts_and_innermost_suites() {
    let Some(report) =
        parse_corpus_file("mikepenz+action-junit-report/test_results/nested/junit.xml")
    else {
        return;
    };
    assert_eq!(report.counts(), counts(5, 3, 0, 0));
    let visited: Vec<(&str, &str)> = report
        .cases()
        .map(|(suite, case)| (suite.name.as_str(), case.name.as_str()))
        .collect();
    assert_eq!(
        visited,
        [
            ("packet", "A"),
            ("TestA", "A"),
            ("TestA", "B"),
            ("TestB", "A"),
            ("TestB", "B")
        ]
    );
}

/// jasmine: a UTF-8 byte order mark and status="notrun" as the only skip marker.
#[test]
fn jasmine_status_attribute_counts_as_skipped() {
    let Some(report) = parse_corpus_file(
        "allure-framework+allure2/plugins/junit-xml-plugin/src/test/resources/junitdata/TEST-status-attribute.xml",
    ) else {
        return;
    };
    assert_eq!(report.counts(), counts(3, 0, 0, 2));
    assert_eq!(report.suites[1].cases[1].status, CaseStatus::Skipped);
}

/// pytest 3 (CFME): a teardown <error> after a <failure> in one case counts as an error; multi-line messages.
#[test]
fn pytest_failure_with_teardown_error_counts_as_an_error() {
    let Some(report) = parse_corpus_file("mkoura+dump2polarion/tests/data/junit-report.xml") else {
        return;
    };
    // The file's own attributes say errors="1" failures="1" skips="3"; by case, the failing case also errored.
    assert_eq!(report.counts(), counts(7, 0, 2, 3));
    let last = &report.suites[0].cases[6];
    assert_eq!(
        (&last.status, last.message.as_str()),
        (&CaseStatus::Error, "test teardown failure")
    );
    assert!(last
        .detail
        .starts_with("item = <Function 'test_power_options_from_on[vsphere65-nested]'>"));
    // A raw newline inside an attribute value is normalized to a space, as XML requires.
    assert!(report.suites[0].cases[0]
        .message
        .starts_with("Skipping due to these blockers:         - Bugzilla"));
}

/// pytest: `&#10;` in a message attribute is a real newline; `&gt;` in a body is decoded.
#[test]
fn pytest_references_in_messages_and_bodies() {
    let Some(report) =
        parse_corpus_file("mikepenz+action-junit-report/test_results/python/report.xml")
    else {
        return;
    };
    assert_eq!(report.counts(), counts(3, 2, 0, 0));
    let failed = &report.suites[0].cases[1];
    assert_eq!(
        failed.message,
        "AssertionError: assert 'test' == 'xyz'\n  - xyz\n  + test"
    );
    assert!(failed
        .detail
        .contains("\n>       assert event['attr'] == 'xyz'\n"));
    assert_eq!(
        report.suites[0].hostname.as_deref(),
        Some("Mikes-iMac.local")
    );
}

/// A 1.28 MB bare <testsuite> with 7580 cases, negative times and text-valued properties.
#[test]
fn huge_report_counts() {
    let Some(report) = parse_corpus_file(
        "jenkinsci+junit-plugin/src/test/resources/hudson/tasks/junit/junit-report-huge.xml",
    ) else {
        return;
    };
    assert_eq!(report.name, None);
    assert_eq!(report.counts(), counts(7580, 19, 0, 2430));
    let first = &report.suites[0].cases[0];
    assert_eq!(first.time_seconds, None, "a negative time is garbage");
    let multiline = &report.suites[0].properties[1];
    assert_eq!(multiline.0, "multiline");
    assert!(multiline.1.contains("Config line 1\n"), "{multiline:?}");
}
