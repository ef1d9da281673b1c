//! JUnit/xUnit XML test reports: the model, a tolerant parser and a writer.
//!
//! JUnit XML has no specification; every producer (Surefire, Gradle, pytest, go-junit-report, nextest, Catch2,
//! jasmine, …) writes its own dialect. [`parse`] accepts that zoo and keeps what Polarizer needs:
//!
//! - the root is `<testsuites>` or a bare `<testsuite>` (wrapped into a [`Report`] without a name); suites nest;
//! - a test case's [`CaseStatus`] comes from its children, with the precedence `<error>` > `<failure>` >
//!   `<skipped>` (real files hold several, e.g. pytest's teardown error next to a failure). Without such a child
//!   a `status` attribute of `notrun`, `disabled` or `skipped` (jasmine, GoogleTest) marks it skipped;
//! - counts are computed from the cases, never taken from the (often wrong) `tests`/`failures` attributes;
//! - `time` may be missing, empty, `2,503.1`, `1.7e-05` or garbage; anything that is not a finite, non-negative
//!   number of seconds becomes `None` instead of an error;
//! - unknown elements (`rerunFailure`, `flakyFailure`, testsuites-level `<properties>`, an `<error>` directly under
//!   a suite, …) are skipped with their subtree; so are attributes the model has no field for;
//! - failure/error/skipped bodies and `system-out`/`system-err` keep at most [`TEXT_CAP_BYTES`] each; longer text
//!   is cut on a character boundary and ends with [`TRUNCATION_MARKER`];
//! - characters XML 1.0 cannot carry (control characters other than tab, newline and carriage return, e.g.
//!   `&#x1B;` from coloured test output) become U+FFFD, so every parsed report can be written again.
//!
//! It is strict about XML itself: malformed markup, undefined entities (DTDs are never processed, so external
//! entities are never resolved), non-UTF-8 input, nesting deeper than [`MAX_DEPTH`] or a root that is not a JUnit
//! element give a [`ParseError`] with the 1-based line and column of the problem.
//!
//! [`write`] produces well-formed JUnit XML that [`parse`] reads back into an equal report.
//!
//! ```
//! use polarizer_shared::junit;
//! let report = junit::parse(br#"<testsuite name="s"><testcase name="t"><failure message="no"/></testcase></testsuite>"#)?;
//! assert_eq!(report.counts().failures, 1);
//! assert_eq!(junit::parse(junit::write(&report).as_bytes())?, report);
//! # Ok::<(), junit::ParseError>(())
//! ```

mod parse;
mod write;

use serde::{Deserialize, Serialize};

pub use parse::{parse, ParseError};
pub use write::write;

/// The most bytes kept of one failure/error/skipped body or one `system-out`/`system-err` text, marker included.
pub const TEXT_CAP_BYTES: usize = 64 * 1024;

/// Appended to a text that was cut at [`TEXT_CAP_BYTES`].
pub const TRUNCATION_MARKER: &str = "\n[truncated]";

/// The deepest element nesting [`parse`] accepts (the root element is depth 1).
pub const MAX_DEPTH: usize = 64;

/// The outcome of one test case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaseStatus {
    Passed,
    Failed,
    Error,
    Skipped,
}

/// One `<testcase>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub name: String,
    pub classname: String,
    pub time_seconds: Option<f64>,
    pub status: CaseStatus,
    /// The `message` attribute of the element that decided the status (failure, error or skipped), or "".
    pub message: String,
    /// The text bodies of the elements that decided the status, joined by newlines and capped at
    /// [`TEXT_CAP_BYTES`]; usually a stack trace.
    pub detail: String,
    pub system_out: String,
    pub system_err: String,
    pub properties: Vec<(String, String)>,
}

/// One `<testsuite>`, possibly holding nested suites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestSuite {
    pub name: String,
    /// As written by the producer: formats vary wildly (ISO-8601 with or without zone, RFC 1123, epoch millis).
    pub timestamp: Option<String>,
    pub hostname: Option<String>,
    pub time_seconds: Option<f64>,
    pub properties: Vec<(String, String)>,
    pub cases: Vec<TestCase>,
    /// Nested `<testsuite>` elements.
    pub suites: Vec<TestSuite>,
    pub system_out: String,
    pub system_err: String,
}

/// A whole report: the `<testsuites>` root, or a bare `<testsuite>` root wrapped (then `name` is `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub name: Option<String>,
    pub suites: Vec<TestSuite>,
}

/// How many cases there are and how many of them failed, errored or were skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub tests: usize,
    pub failures: usize,
    pub errors: usize,
    pub skipped: usize,
}

impl Counts {
    fn add_case(&mut self, case: &TestCase) {
        self.tests += 1;
        match case.status {
            CaseStatus::Passed => {}
            CaseStatus::Failed => self.failures += 1,
            CaseStatus::Error => self.errors += 1,
            CaseStatus::Skipped => self.skipped += 1,
        }
    }
}

impl TestCase {
    /// A passed case with no time, output or properties.
    pub fn new(name: impl Into<String>, classname: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            classname: classname.into(),
            time_seconds: None,
            status: CaseStatus::Passed,
            message: String::new(),
            detail: String::new(),
            system_out: String::new(),
            system_err: String::new(),
            properties: Vec::new(),
        }
    }
}

impl TestSuite {
    /// An empty suite with no attributes besides its name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            timestamp: None,
            hostname: None,
            time_seconds: None,
            properties: Vec::new(),
            cases: Vec::new(),
            suites: Vec::new(),
            system_out: String::new(),
            system_err: String::new(),
        }
    }

    /// This suite and every suite nested in it, depth-first, parents before children.
    fn depth_first(&self) -> Vec<&TestSuite> {
        let mut order = Vec::new();
        let mut pending = vec![self];
        while let Some(suite) = pending.pop() {
            order.push(suite);
            // Reversed so that the first nested suite is visited first.
            pending.extend(suite.suites.iter().rev());
        }
        order
    }

    /// The counts over this suite's cases and those of its nested suites.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for suite in self.depth_first() {
            suite.cases.iter().for_each(|case| counts.add_case(case));
        }
        counts
    }
}

impl Report {
    /// Every case with the innermost suite holding it, depth-first: a suite's own cases, then its nested suites'.
    pub fn cases(&self) -> impl Iterator<Item = (&TestSuite, &TestCase)> {
        self.suites
            .iter()
            .flat_map(TestSuite::depth_first)
            .flat_map(|suite| suite.cases.iter().map(move |case| (suite, case)))
    }

    /// The counts over all cases, computed from the cases themselves.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        self.cases().for_each(|(_, case)| counts.add_case(case));
        counts
    }
}

/// Whether XML 1.0 can carry `character` at all (its `Char` production); control characters other than tab,
/// newline and carriage return cannot, not even as character references.
fn is_xml_char(character: char) -> bool {
    matches!(character,
        '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// `text` with every character XML 1.0 cannot carry replaced by U+FFFD.
pub(crate) fn xml_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let replaced = text
        .chars()
        .map(|character| {
            if is_xml_char(character) {
                character
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect();
    std::borrow::Cow::Owned(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, status: CaseStatus) -> TestCase {
        TestCase {
            status,
            ..TestCase::new(name, "c")
        }
    }

    #[test]
    fn cases_are_depth_first_with_their_innermost_suite() {
        let mut inner = TestSuite::new("inner");
        inner.cases.push(case("c", CaseStatus::Skipped));
        let mut deeper = TestSuite::new("deeper");
        deeper.cases.push(case("d", CaseStatus::Error));
        inner.suites.push(deeper);
        let mut outer = TestSuite::new("outer");
        outer.cases.push(case("a", CaseStatus::Passed));
        outer.suites.push(inner);
        outer.cases.push(case("b", CaseStatus::Failed));
        let mut last = TestSuite::new("last");
        last.cases.push(case("e", CaseStatus::Passed));
        let report = Report {
            name: None,
            suites: vec![outer, last],
        };

        let visited: Vec<(&str, &str)> = report
            .cases()
            .map(|(suite, case)| (suite.name.as_str(), case.name.as_str()))
            .collect();
        assert_eq!(
            visited,
            [
                ("outer", "a"),
                ("outer", "b"),
                ("inner", "c"),
                ("deeper", "d"),
                ("last", "e")
            ]
        );
        assert_eq!(
            report.counts(),
            Counts {
                tests: 5,
                failures: 1,
                errors: 1,
                skipped: 1
            }
        );
        assert_eq!(report.suites[0].suites[0].counts().tests, 2);
    }

    #[test]
    fn xml_safe_replaces_only_characters_xml_cannot_carry() {
        assert_eq!(xml_safe("a\tb\nc\rd é 😀"), "a\tb\nc\rd é 😀");
        assert_eq!(
            xml_safe("\u{1b}[31mred\0\u{FFFE}"),
            "\u{FFFD}[31mred\u{FFFD}\u{FFFD}"
        );
    }
}
