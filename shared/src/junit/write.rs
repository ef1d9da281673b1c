//! The JUnit XML writer: a [`Report`] as an indented `<testsuites>` document that [`parse`](super::parse) reads
//! back into an equal report.
//!
//! Escaping is quick-xml's; characters that XML 1.0 cannot carry at all are replaced by U+FFFD first, so the
//! output is well-formed whatever the test output held. Counts are computed from the cases (nested suites
//! included), never stored.

use std::borrow::Cow;
use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use super::{xml_safe, CaseStatus, Report, TestCase, TestSuite};

type XmlWriter = Writer<Vec<u8>>;

/// One attribute: its name and its unescaped, XML-safe value.
type Attribute<'a> = (&'static str, Cow<'a, str>);

/// The report as a JUnit XML document (UTF-8, with an XML declaration).
pub fn write(report: &Report) -> String {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    // A Vec<u8> sink never fails, so neither does writing into it.
    write_report(&mut writer, report).expect("writing XML into a Vec<u8> cannot fail");
    let mut bytes = writer.into_inner();
    bytes.push(b'\n');
    // Everything written came from `&str`s, so this is valid UTF-8; the lossy path only avoids a panic.
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

fn text(value: &str) -> Cow<'_, str> {
    xml_safe(value)
}

fn seconds(value: f64) -> Cow<'static, str> {
    // `Display` for f64 prints the shortest decimal that parses back to the same value, never an exponent.
    Cow::Owned(value.to_string())
}

fn count(value: usize) -> Cow<'static, str> {
    Cow::Owned(value.to_string())
}

fn write_report(writer: &mut XmlWriter, report: &Report) -> io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let counts = report.counts();
    let mut attributes: Vec<Attribute<'_>> = Vec::new();
    if let Some(name) = &report.name {
        attributes.push(("name", text(name)));
    }
    attributes.extend([
        ("tests", count(counts.tests)),
        ("failures", count(counts.failures)),
        ("errors", count(counts.errors)),
        ("skipped", count(counts.skipped)),
    ]);
    let suite_times: Vec<f64> = report
        .suites
        .iter()
        .filter_map(|suite| suite.time_seconds)
        .collect();
    if !suite_times.is_empty() {
        // Rounded to microseconds so that the sum does not show floating-point noise.
        let total = (suite_times.iter().sum::<f64>() * 1e6).round() / 1e6;
        attributes.push(("time", seconds(total)));
    }
    let element = writer
        .create_element("testsuites")
        .with_attributes(attributes);
    if report.suites.is_empty() {
        element.write_empty()?;
        return Ok(());
    }
    element.write_inner_content(|writer| {
        report
            .suites
            .iter()
            .try_for_each(|suite| write_suite(writer, suite))
    })?;
    Ok(())
}

fn write_suite(writer: &mut XmlWriter, suite: &TestSuite) -> io::Result<()> {
    let counts = suite.counts();
    let mut attributes: Vec<Attribute<'_>> = vec![
        ("name", text(&suite.name)),
        ("tests", count(counts.tests)),
        ("failures", count(counts.failures)),
        ("errors", count(counts.errors)),
        ("skipped", count(counts.skipped)),
    ];
    if let Some(time) = suite.time_seconds {
        attributes.push(("time", seconds(time)));
    }
    if let Some(timestamp) = &suite.timestamp {
        attributes.push(("timestamp", text(timestamp)));
    }
    if let Some(hostname) = &suite.hostname {
        attributes.push(("hostname", text(hostname)));
    }
    let element = writer
        .create_element("testsuite")
        .with_attributes(attributes);
    let is_empty = suite.properties.is_empty()
        && suite.cases.is_empty()
        && suite.suites.is_empty()
        && suite.system_out.is_empty()
        && suite.system_err.is_empty();
    if is_empty {
        element.write_empty()?;
        return Ok(());
    }
    element.write_inner_content(|writer| {
        write_properties(writer, &suite.properties)?;
        suite
            .cases
            .iter()
            .try_for_each(|case| write_case(writer, case))?;
        suite
            .suites
            .iter()
            .try_for_each(|nested| write_suite(writer, nested))?;
        write_output(writer, "system-out", &suite.system_out)?;
        write_output(writer, "system-err", &suite.system_err)
    })?;
    Ok(())
}

fn write_case(writer: &mut XmlWriter, case: &TestCase) -> io::Result<()> {
    let mut attributes: Vec<Attribute<'_>> = vec![
        ("name", text(&case.name)),
        ("classname", text(&case.classname)),
    ];
    if let Some(time) = case.time_seconds {
        attributes.push(("time", seconds(time)));
    }
    let element = writer
        .create_element("testcase")
        .with_attributes(attributes);
    let outcome_element = match case.status {
        CaseStatus::Passed => None,
        CaseStatus::Failed => Some("failure"),
        CaseStatus::Error => Some("error"),
        CaseStatus::Skipped => Some("skipped"),
    };
    let is_empty = outcome_element.is_none()
        && case.properties.is_empty()
        && case.system_out.is_empty()
        && case.system_err.is_empty();
    if is_empty {
        element.write_empty()?;
        return Ok(());
    }
    element.write_inner_content(|writer| {
        write_properties(writer, &case.properties)?;
        if let Some(outcome_element) = outcome_element {
            let mut outcome = writer.create_element(outcome_element);
            if !case.message.is_empty() {
                outcome = outcome.with_attribute(("message", text(&case.message)));
            }
            if case.detail.is_empty() {
                outcome.write_empty()?;
            } else {
                outcome.write_text_content(BytesText::new(&text(&case.detail)))?;
            }
        }
        write_output(writer, "system-out", &case.system_out)?;
        write_output(writer, "system-err", &case.system_err)
    })?;
    Ok(())
}

fn write_properties(writer: &mut XmlWriter, properties: &[(String, String)]) -> io::Result<()> {
    if properties.is_empty() {
        return Ok(());
    }
    writer
        .create_element("properties")
        .write_inner_content(|writer| {
            for (name, value) in properties {
                writer
                    .create_element("property")
                    .with_attributes([("name", text(name)), ("value", text(value))])
                    .write_empty()?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_output(writer: &mut XmlWriter, element: &str, output: &str) -> io::Result<()> {
    if !output.is_empty() {
        writer
            .create_element(element)
            .write_text_content(BytesText::new(&text(output)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::junit::{parse, Counts};
    use proptest::prelude::*;

    fn sample() -> Report {
        let mut failed = TestCase::new("fails <&>", "pkg.Class");
        failed.status = CaseStatus::Failed;
        failed.message = "expected \"1\"\nbut was '2'".into();
        failed.detail = "  at line 1\r\n  ]]> <not a tag> &amp;\t".into();
        failed.time_seconds = Some(0.001);
        failed.properties = vec![("attempt".into(), "2".into())];
        failed.system_out = "printed\n".into();
        let mut skipped = TestCase::new("skips", "pkg.Class");
        skipped.status = CaseStatus::Skipped;
        skipped.message = "not today".into();
        let mut errored = TestCase::new("errors", "");
        errored.status = CaseStatus::Error;
        errored.detail = "panic".into();
        let mut inner = TestSuite::new("inner");
        inner.cases.push(errored);
        let mut outer = TestSuite::new("outer");
        outer.timestamp = Some("2024-01-03T12:27:54Z".into());
        outer.hostname = Some(String::new());
        outer.time_seconds = Some(2503.1);
        outer.properties = vec![("go.version".into(), "1.22".into())];
        outer.cases = vec![TestCase::new("passes", "pkg.Class"), failed, skipped];
        outer.suites.push(inner);
        outer.system_err = "warning".into();
        Report {
            name: Some("all".into()),
            suites: vec![outer, TestSuite::new("empty")],
        }
    }

    #[test]
    fn writes_junit_with_computed_counts() {
        let report = sample();
        let xml = write(&report);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"all\" tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\" time=\"2503.1\">"), "{xml}");
        assert!(xml.contains(r#"<testsuite name="outer" tests="4" failures="1" errors="1" skipped="1" time="2503.1" timestamp="2024-01-03T12:27:54Z" hostname="">"#), "{xml}");
        assert!(
            xml.contains(r#"<property name="go.version" value="1.22"/>"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<skipped message="not today"/>"#), "{xml}");
        assert!(
            xml.contains(
                r#"<testsuite name="empty" tests="0" failures="0" errors="0" skipped="0"/>"#
            ),
            "{xml}"
        );
        assert_eq!(parse(xml.as_bytes()).expect("own output parses"), report);
        assert_eq!(
            report.counts(),
            Counts {
                tests: 4,
                failures: 1,
                errors: 1,
                skipped: 1
            }
        );
    }

    #[test]
    fn binary_garbage_is_replaced_so_the_output_stays_well_formed() {
        let mut case = TestCase::new("bin\u{0}ary", "c\u{1}");
        case.status = CaseStatus::Failed;
        case.message = "\u{1b}[31mred\u{1b}[0m".into();
        case.detail = "\u{0}\u{7}\u{8}\u{b}\u{c}\u{1f}\u{FFFE}\u{FFFF} ok".into();
        case.system_out = String::from_utf8_lossy(&(0u8..=255).collect::<Vec<u8>>()).into_owned();
        let mut suite = TestSuite::new("s");
        suite.cases.push(case);
        suite.properties.push(("k\u{2}".into(), "v\u{3}".into()));
        let report = Report {
            name: None,
            suites: vec![suite],
        };

        let parsed = parse(write(&report).as_bytes()).expect("well-formed");
        let case = &parsed.suites[0].cases[0];
        assert_eq!(case.name, "bin\u{FFFD}ary");
        assert_eq!(case.message, "\u{FFFD}[31mred\u{FFFD}[0m");
        assert_eq!(
            case.detail,
            "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD} ok"
        );
        assert!(
            case.system_out.starts_with("\u{FFFD}"),
            "{:?}",
            case.system_out
        );
        assert!(
            case.system_out.contains("\t\n\u{FFFD}\u{FFFD}\r"),
            "{:?}",
            case.system_out
        );
        assert!(
            case.system_out
                .contains(" !\"#$%&'()*+,-./0123456789:;<=>?@A"),
            "{:?}",
            case.system_out
        );
        assert_eq!(
            parsed.suites[0].properties,
            [("k\u{FFFD}".into(), "v\u{FFFD}".into())]
        );
    }

    #[test]
    fn an_empty_report_is_an_empty_testsuites_element() {
        let report = Report {
            name: None,
            suites: Vec::new(),
        };
        let xml = write(&report);
        assert!(
            xml.ends_with("<testsuites tests=\"0\" failures=\"0\" errors=\"0\" skipped=\"0\"/>\n"),
            "{xml}"
        );
        assert_eq!(parse(xml.as_bytes()).expect("parses"), report);
    }

    /// Text that survives a round trip: no characters XML cannot carry, no more than the text cap.
    fn sane_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[ -~]{0,40}",
            "[a-z \t\r\n<>&'\"\\]é€😀]{0,40}",
            "\\PC{0,20}",
        ]
    }

    fn time() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            (0.0..1e7f64).prop_map(Some),
            (0u32..100_000).prop_map(|ms| Some(f64::from(ms) / 1000.0))
        ]
    }

    fn properties() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((sane_text(), sane_text()), 0..3)
    }

    fn case() -> impl Strategy<Value = TestCase> {
        let status = prop_oneof![
            Just(CaseStatus::Passed),
            Just(CaseStatus::Failed),
            Just(CaseStatus::Error),
            Just(CaseStatus::Skipped)
        ];
        (
            (sane_text(), sane_text(), time(), status),
            (
                sane_text(),
                sane_text(),
                sane_text(),
                sane_text(),
                properties(),
            ),
        )
            .prop_map(
                |(
                    (name, classname, time_seconds, status),
                    (message, detail, system_out, system_err, properties),
                )| {
                    // A passed case has no element to carry a message or detail.
                    let (message, detail) = if status == CaseStatus::Passed {
                        (String::new(), String::new())
                    } else {
                        (message, detail)
                    };
                    TestCase {
                        name,
                        classname,
                        time_seconds,
                        status,
                        message,
                        detail,
                        system_out,
                        system_err,
                        properties,
                    }
                },
            )
    }

    fn suite() -> impl Strategy<Value = TestSuite> {
        let leaf = (
            (
                sane_text(),
                prop::option::of(sane_text()),
                prop::option::of(sane_text()),
                time(),
            ),
            (
                properties(),
                prop::collection::vec(case(), 0..4),
                sane_text(),
                sane_text(),
            ),
        )
            .prop_map(
                |(
                    (name, timestamp, hostname, time_seconds),
                    (properties, cases, system_out, system_err),
                )| {
                    TestSuite {
                        name,
                        timestamp,
                        hostname,
                        time_seconds,
                        properties,
                        cases,
                        suites: Vec::new(),
                        system_out,
                        system_err,
                    }
                },
            );
        leaf.prop_recursive(3, 12, 3, |inner| {
            (inner.clone(), prop::collection::vec(inner, 0..3)).prop_map(|(mut suite, nested)| {
                suite.suites = nested;
                suite
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parse_reads_back_what_write_wrote(
            name in prop::option::of(sane_text()),
            suites in prop::collection::vec(suite(), 0..3),
        ) {
            let report = Report { name, suites };
            let xml = write(&report);
            let parsed = parse(xml.as_bytes()).map_err(|error| TestCaseError::fail(format!("{error}\n{xml}")))?;
            prop_assert_eq!(parsed, report);
        }
    }
}
