//! The JUnit XML reader: quick-xml events driven through a stack of open elements into a [`Report`].
//!
//! Each open element is a frame that knows what it is building (a suite, a case, a failure body, …); an
//! element's frame is finished when it closes and handed to its parent. Elements the model has no place for
//! become `Ignored` frames, so their subtree is read (and checked for well-formedness) but dropped.

use std::borrow::Cow;

use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::{
    is_xml_char, xml_safe, CaseStatus, Report, TestCase, TestSuite, MAX_DEPTH, TEXT_CAP_BYTES,
    TRUNCATION_MARKER,
};

/// Why some bytes are not a JUnit report, and where (1-based line and column, in characters).
#[derive(Debug, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ParseError {
    /// An error at byte `offset` of `xml`, which is turned into a line and column.
    fn at(xml: &[u8], offset: u64, message: impl Into<String>) -> Self {
        let (line, column) = line_and_column(xml, offset);
        Self {
            line,
            column,
            message: message.into(),
        }
    }
}

/// The 1-based line and column (counting characters, not bytes) of byte `offset` in `xml`.
fn line_and_column(xml: &[u8], offset: u64) -> (usize, usize) {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(xml.len());
    let before = &xml[..offset];
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    // UTF-8 continuation bytes (0b10xx_xxxx) do not start a character.
    let column = before[line_start..]
        .iter()
        .filter(|&&byte| byte & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

/// Reads a JUnit/xUnit XML report; see the [module documentation](super) for what is accepted.
pub fn parse(xml: &[u8]) -> Result<Report, ParseError> {
    if xml.is_empty() {
        return Err(ParseError::at(xml, 0, "not XML: the input is empty"));
    }
    ReportReader::new(xml).read()
}

/// Text that keeps at most [`TEXT_CAP_BYTES`] (marker included) and only characters XML can carry.
///
/// Capping is idempotent: a capped text is never longer than the cap, so reading it again keeps it as it is.
#[derive(Default)]
struct CappedText {
    text: String,
    truncated: bool,
}

impl CappedText {
    fn push(&mut self, piece: &str) {
        if self.truncated || piece.is_empty() {
            return;
        }
        let piece = xml_safe(piece);
        if self.text.len() + piece.len() <= TEXT_CAP_BYTES {
            self.text.push_str(&piece);
            return;
        }
        self.truncated = true;
        let keep = TEXT_CAP_BYTES - TRUNCATION_MARKER.len();
        if self.text.len() < keep {
            let take = floor_char_boundary(&piece, keep - self.text.len());
            self.text.push_str(&piece[..take]);
        } else {
            let cut = floor_char_boundary(&self.text, keep);
            self.text.truncate(cut);
        }
        self.text.push_str(TRUNCATION_MARKER);
    }

    fn into_string(self) -> String {
        self.text
    }
}

/// The largest character boundary of `text` that is not after `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    (0..=index)
        .rev()
        .find(|&candidate| text.is_char_boundary(candidate))
        .unwrap_or(0)
}

/// A `time` attribute in seconds: `None` unless it is a finite, non-negative number. Accepts thousands
/// separators (`2,503.1`) and exponents (`1.7e-05`).
fn parse_seconds(raw: &str) -> Option<f64> {
    let trimmed = raw.trim();
    let plain: Cow<'_, str> = if trimmed.contains(',') {
        Cow::Owned(strip_thousands_separators(trimmed)?)
    } else {
        Cow::Borrowed(trimmed)
    };
    let seconds: f64 = plain.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// `1,234,567.5` → `1234567.5`; `None` when the commas are not thousands separators (`1,5` is ambiguous).
fn strip_thousands_separators(number: &str) -> Option<String> {
    let (integer, fraction) = match number.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (number, None),
    };
    let all_digits = |group: &str| group.bytes().all(|byte| byte.is_ascii_digit());
    let mut groups = integer.split(',');
    let first = groups.next()?;
    if first.is_empty() || first.len() > 3 || !all_digits(first) {
        return None;
    }
    let mut plain = first.to_owned();
    for group in groups {
        if group.len() != 3 || !all_digits(group) {
            return None;
        }
        plain.push_str(group);
    }
    if let Some(fraction) = fraction {
        plain.push('.');
        plain.push_str(fraction);
    }
    Some(plain)
}

/// The text an entity or character reference in element content stands for. Characters XML cannot carry
/// (`&#x1B;`, `&#0;`) become U+FFFD; named entities other than the five predefined ones are an error, since DTDs
/// are never read.
fn resolve_reference(reference: &BytesRef<'_>) -> Result<Cow<'static, str>, String> {
    let name: &str = reference;
    if let Some(number) = name.strip_prefix('#') {
        let (digits, radix) = match number.strip_prefix('x') {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        if digits.is_empty() || !digits.chars().all(|digit| digit.is_digit(radix)) {
            return Err(format!("malformed XML: bad character reference &{name};"));
        }
        let character = u32::from_str_radix(digits, radix)
            .ok()
            .and_then(char::from_u32)
            .filter(|&character| is_xml_char(character))
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        return Ok(Cow::Owned(character.to_string()));
    }
    resolve_xml_entity(name).map(Cow::Borrowed).ok_or_else(|| {
        format!(
            "undefined entity &{name}; (only &lt; &gt; &amp; &apos; &quot; and character references are \
             allowed: document type definitions are not processed)"
        )
    })
}

/// The decoded attributes of one element, keyed by local name.
struct Attributes(Vec<(String, String)>);

impl Attributes {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    fn string(&self, key: &str) -> String {
        self.get(key).unwrap_or_default().to_owned()
    }

    fn optional(&self, key: &str) -> Option<String> {
        self.get(key).map(str::to_owned)
    }

    fn seconds(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(parse_seconds)
    }
}

/// Which output stream a `<system-out>`/`<system-err>` element holds.
#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

#[derive(Default)]
struct Outputs {
    out: CappedText,
    err: CappedText,
}

impl Outputs {
    fn stream(&mut self, stream: Stream) -> &mut CappedText {
        match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        }
    }
}

struct SuiteBuilder {
    suite: TestSuite,
    outputs: Outputs,
}

impl SuiteBuilder {
    fn new(attributes: &Attributes) -> Self {
        let mut suite = TestSuite::new(attributes.string("name"));
        suite.timestamp = attributes.optional("timestamp");
        suite.hostname = attributes.optional("hostname");
        suite.time_seconds = attributes.seconds("time");
        Self {
            suite,
            outputs: Outputs::default(),
        }
    }

    fn finish(self) -> TestSuite {
        TestSuite {
            system_out: self.outputs.out.into_string(),
            system_err: self.outputs.err.into_string(),
            ..self.suite
        }
    }
}

/// One `<failure>`, `<error>` or `<skipped>` child of a case.
struct Outcome {
    status: CaseStatus,
    message: String,
    body: CappedText,
}

struct CaseBuilder {
    case: TestCase,
    /// The `status` attribute some producers use instead of (or besides) result elements.
    status_attribute: Option<String>,
    outcomes: Vec<Outcome>,
    outputs: Outputs,
}

impl CaseBuilder {
    fn new(attributes: &Attributes) -> Self {
        let mut case = TestCase::new(attributes.string("name"), attributes.string("classname"));
        case.time_seconds = attributes.seconds("time");
        Self {
            case,
            status_attribute: attributes.optional("status"),
            outcomes: Vec::new(),
            outputs: Outputs::default(),
        }
    }

    /// Picks the status by the precedence error > failure > skipped, then the `status` attribute.
    fn finish(self) -> TestCase {
        let decisive = [CaseStatus::Error, CaseStatus::Failed, CaseStatus::Skipped]
            .into_iter()
            .find(|status| {
                self.outcomes
                    .iter()
                    .any(|outcome| outcome.status == *status)
            });
        let (status, message, detail) = match decisive {
            Some(status) => {
                let chosen: Vec<Outcome> = self
                    .outcomes
                    .into_iter()
                    .filter(|outcome| outcome.status == status)
                    .collect();
                let message = chosen
                    .iter()
                    .map(|outcome| outcome.message.as_str())
                    .find(|message| !message.is_empty())
                    .unwrap_or_default()
                    .to_owned();
                let mut detail = CappedText::default();
                let bodies = chosen.into_iter().map(|outcome| outcome.body.into_string());
                for (index, body) in bodies.filter(|body| !body.is_empty()).enumerate() {
                    if index > 0 {
                        detail.push("\n");
                    }
                    detail.push(&body);
                }
                (status, message, detail.into_string())
            }
            None => {
                let skipped_by_attribute = matches!(
                    self.status_attribute
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .as_deref(),
                    Some("notrun" | "disabled" | "skipped")
                );
                let status = if skipped_by_attribute {
                    CaseStatus::Skipped
                } else {
                    CaseStatus::Passed
                };
                (status, String::new(), String::new())
            }
        };
        TestCase {
            status,
            message,
            detail,
            system_out: self.outputs.out.into_string(),
            system_err: self.outputs.err.into_string(),
            ..self.case
        }
    }
}

/// What an open element is building.
enum Frame {
    /// The `<testsuites>` root.
    Suites,
    Suite(Box<SuiteBuilder>),
    Case(Box<CaseBuilder>),
    Properties(Vec<(String, String)>),
    /// A `<property>`: its `value` attribute, or else its text.
    Property {
        name: String,
        value: Option<String>,
        text: String,
    },
    Outcome(Outcome),
    Output {
        stream: Stream,
        text: CappedText,
    },
    /// An element the model has no place for; its subtree is dropped.
    Ignored,
}

struct OpenElement {
    frame: Frame,
    name: String,
    /// Where its start tag begins, for the error about an element that is never closed.
    offset: u64,
}

/// How far the reader is through the root element.
#[derive(Clone, Copy, PartialEq)]
enum RootElement {
    NotSeen,
    Open,
    Closed,
}

struct ReportReader<'x> {
    xml: &'x [u8],
    reader: Reader<&'x [u8]>,
    version: XmlVersion,
    root: RootElement,
    root_name: String,
    stack: Vec<OpenElement>,
    report: Report,
}

impl<'x> ReportReader<'x> {
    fn new(xml: &'x [u8]) -> Self {
        Self {
            xml,
            reader: Reader::from_reader(xml),
            version: XmlVersion::Implicit1_0,
            root: RootElement::NotSeen,
            root_name: String::new(),
            stack: Vec::new(),
            report: Report {
                name: None,
                suites: Vec::new(),
            },
        }
    }

    fn error_at(&self, offset: u64, message: impl Into<String>) -> ParseError {
        ParseError::at(self.xml, offset, message)
    }

    fn read(mut self) -> Result<Report, ParseError> {
        loop {
            // The previous event ended where this one starts, so this is the position of its first byte.
            let offset = self.reader.buffer_position();
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(error) => return Err(self.xml_error(&error)),
            };
            match event {
                Event::Decl(declaration) => {
                    self.version = declaration.xml_version().unwrap_or(XmlVersion::Implicit1_0);
                }
                Event::Start(start) => self.open(&start, offset)?,
                Event::Empty(start) => {
                    self.open(&start, offset)?;
                    self.close(offset)?;
                }
                // The reader has already checked that the end tag matches the open element.
                Event::End(_) => self.close(offset)?,
                Event::Text(text) => self.text(&text.xml_content(self.version), offset)?,
                Event::CData(data) => self.text(&data.xml_content(self.version), offset)?,
                Event::GeneralRef(reference) => {
                    let resolved = resolve_reference(&reference)
                        .map_err(|message| self.error_at(offset, message))?;
                    self.text(&resolved, offset)?;
                }
                Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
                Event::Eof => return self.finish(offset),
            }
        }
    }

    fn xml_error(&self, error: &quick_xml::Error) -> ParseError {
        let offset = self.reader.error_position();
        let message = match (error, self.root) {
            (quick_xml::Error::Encoding(error), _) => format!("not UTF-8 text: {error}"),
            (error, RootElement::NotSeen) => format!("not XML: {error}"),
            (error, _) => format!("malformed XML: {error}"),
        };
        self.error_at(offset, message)
    }

    /// Decodes every attribute (checking all of them, also on ignored elements, so any malformed one is an error).
    fn attributes(&self, start: &BytesStart<'_>, offset: u64) -> Result<Attributes, ParseError> {
        let mut decoded = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|error| {
                self.error_at(offset, format!("malformed XML: bad attribute: {error}"))
            })?;
            let key = attribute.key.local_name().as_ref().to_owned();
            if attribute.value.contains('<') {
                return Err(self.error_at(
                    offset,
                    format!("malformed XML: '<' in the value of attribute {key}"),
                ));
            }
            let value = attribute.normalized_value(self.version).map_err(|error| {
                self.error_at(
                    offset,
                    format!("malformed XML: bad value of attribute {key}: {error}"),
                )
            })?;
            decoded.push((key, xml_safe(&value).into_owned()));
        }
        Ok(Attributes(decoded))
    }

    fn open(&mut self, start: &BytesStart<'_>, offset: u64) -> Result<(), ParseError> {
        let name = start.local_name().as_ref().to_owned();
        let attributes = self.attributes(start, offset)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error_at(
                offset,
                format!("elements are nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let frame = match self.stack.last() {
            None => self.open_root(&name, &attributes, offset)?,
            Some(parent) => match (&parent.frame, name.as_str()) {
                (Frame::Suites | Frame::Suite(_), "testsuite") => {
                    Frame::Suite(Box::new(SuiteBuilder::new(&attributes)))
                }
                (Frame::Suite(_), "testcase") => {
                    Frame::Case(Box::new(CaseBuilder::new(&attributes)))
                }
                (Frame::Suite(_) | Frame::Case(_), "properties") => Frame::Properties(Vec::new()),
                (Frame::Suite(_) | Frame::Case(_), "system-out") => Frame::Output {
                    stream: Stream::Out,
                    text: CappedText::default(),
                },
                (Frame::Suite(_) | Frame::Case(_), "system-err") => Frame::Output {
                    stream: Stream::Err,
                    text: CappedText::default(),
                },
                (Frame::Case(_), "failure" | "error" | "skipped") => Frame::Outcome(Outcome {
                    status: match name.as_str() {
                        "failure" => CaseStatus::Failed,
                        "error" => CaseStatus::Error,
                        _ => CaseStatus::Skipped,
                    },
                    message: attributes.string("message"),
                    body: CappedText::default(),
                }),
                (Frame::Properties(_), "property") => Frame::Property {
                    name: attributes.string("name"),
                    value: attributes.optional("value"),
                    text: String::new(),
                },
                _ => Frame::Ignored,
            },
        };
        self.stack.push(OpenElement {
            frame,
            name,
            offset,
        });
        Ok(())
    }

    fn open_root(
        &mut self,
        name: &str,
        attributes: &Attributes,
        offset: u64,
    ) -> Result<Frame, ParseError> {
        if self.root == RootElement::Closed {
            return Err(self.error_at(
                offset,
                format!(
                    "malformed XML: a second root element <{name}> after </{}>",
                    self.root_name
                ),
            ));
        }
        let frame = match name {
            "testsuites" => {
                self.report.name = attributes.optional("name");
                Frame::Suites
            }
            "testsuite" => Frame::Suite(Box::new(SuiteBuilder::new(attributes))),
            other => {
                return Err(self.error_at(
                    offset,
                    format!("not a JUnit report: the root element is <{other}>, expected <testsuites> or <testsuite>"),
                ))
            }
        };
        self.root = RootElement::Open;
        self.root_name = name.to_owned();
        Ok(frame)
    }

    /// Finishes the innermost open element and hands what it built to its parent.
    fn close(&mut self, offset: u64) -> Result<(), ParseError> {
        let Some(element) = self.stack.pop() else {
            return Err(self.error_at(offset, "malformed XML: an end tag without a start tag"));
        };
        let parent = self.stack.last_mut().map(|parent| &mut parent.frame);
        match (element.frame, parent) {
            (Frame::Suites, None) => self.root = RootElement::Closed,
            (Frame::Suite(builder), None) => {
                self.report.suites.push(builder.finish());
                self.root = RootElement::Closed;
            }
            (Frame::Suite(builder), Some(Frame::Suites)) => {
                self.report.suites.push(builder.finish())
            }
            (Frame::Suite(builder), Some(Frame::Suite(parent))) => {
                parent.suite.suites.push(builder.finish())
            }
            (Frame::Case(builder), Some(Frame::Suite(parent))) => {
                parent.suite.cases.push(builder.finish())
            }
            (Frame::Properties(properties), Some(Frame::Suite(parent))) => {
                parent.suite.properties.extend(properties);
            }
            (Frame::Properties(properties), Some(Frame::Case(parent))) => {
                parent.case.properties.extend(properties)
            }
            (Frame::Property { name, value, text }, Some(Frame::Properties(properties))) => {
                properties.push((name, value.unwrap_or(text)));
            }
            (Frame::Outcome(outcome), Some(Frame::Case(parent))) => parent.outcomes.push(outcome),
            (Frame::Output { stream, text }, Some(Frame::Suite(parent))) => {
                parent.outputs.stream(stream).push(&text.into_string());
            }
            (Frame::Output { stream, text }, Some(Frame::Case(parent))) => {
                parent.outputs.stream(stream).push(&text.into_string());
            }
            (Frame::Ignored, _) => {}
            (_, _) => debug_assert!(
                false,
                "open() only creates frames under parents that accept them"
            ),
        }
        Ok(())
    }

    /// Character data (text, CDATA or a resolved reference) at `offset`, for the innermost open element.
    fn text(&mut self, text: &str, offset: u64) -> Result<(), ParseError> {
        let Some(element) = self.stack.last_mut() else {
            if text.chars().all(char::is_whitespace) {
                return Ok(());
            }
            let message = match self.root {
                RootElement::Closed => format!("malformed XML: text after </{}>", self.root_name),
                _ => "not XML: text before the root element".to_owned(),
            };
            return Err(self.error_at(offset, message));
        };
        match &mut element.frame {
            Frame::Outcome(outcome) => outcome.body.push(text),
            Frame::Output { text: output, .. } => output.push(text),
            Frame::Property { text: value, .. } => value.push_str(&xml_safe(text)),
            // Whitespace between elements, or junk text the model has no place for.
            _ => {}
        }
        Ok(())
    }

    fn finish(self, offset: u64) -> Result<Report, ParseError> {
        if let Some(innermost) = self.stack.last() {
            let (line, column) = line_and_column(self.xml, innermost.offset);
            return Err(self.error_at(
                offset,
                format!(
                    "truncated: the input ends inside <{}> (opened at line {line}, column {column})",
                    innermost.name
                ),
            ));
        }
        if self.root == RootElement::NotSeen {
            return Err(self.error_at(offset, "not XML: there is no root element"));
        }
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_str(xml: &str) -> Result<Report, ParseError> {
        parse(xml.as_bytes())
    }

    fn error(xml: &str) -> ParseError {
        match parse_str(xml) {
            Ok(report) => panic!("expected an error, got {report:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn bare_testsuite_root_is_wrapped_and_statuses_come_from_children() {
        let report = parse_str(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="suite" timestamp="2024-01-03T12:27:54" hostname="box" time="1.5">
  <properties><property name="a" value="1"/><property name="b">multi
line</property></properties>
  <testcase name="passes" classname="C" time="0.001"/>
  <testcase name="fails" classname="C"><failure message="boom" type="AssertionError">trace &amp; more</failure></testcase>
  <testcase name="errors" classname="C"><error message="oops"><![CDATA[<raw> & stuff]]></error></testcase>
  <testcase name="skips" classname="C"><skipped message="later"/></testcase>
  <testcase name="notrun" classname="C" status="notrun"/>
  <system-out>out</system-out><system-err>err</system-err>
</testsuite>"#,
        )
        .expect("valid report");
        assert_eq!(report.name, None);
        let suite = &report.suites[0];
        assert_eq!(suite.name, "suite");
        assert_eq!(suite.timestamp.as_deref(), Some("2024-01-03T12:27:54"));
        assert_eq!(suite.hostname.as_deref(), Some("box"));
        assert_eq!(suite.time_seconds, Some(1.5));
        assert_eq!(
            suite.properties,
            [("a".into(), "1".into()), ("b".into(), "multi\nline".into())]
        );
        assert_eq!(
            (suite.system_out.as_str(), suite.system_err.as_str()),
            ("out", "err")
        );
        let statuses: Vec<&CaseStatus> = suite.cases.iter().map(|case| &case.status).collect();
        assert_eq!(
            statuses,
            [
                &CaseStatus::Passed,
                &CaseStatus::Failed,
                &CaseStatus::Error,
                &CaseStatus::Skipped,
                &CaseStatus::Skipped
            ]
        );
        assert_eq!(suite.cases[0].time_seconds, Some(0.001));
        assert_eq!(
            (
                suite.cases[1].message.as_str(),
                suite.cases[1].detail.as_str()
            ),
            ("boom", "trace & more")
        );
        assert_eq!(suite.cases[2].detail, "<raw> & stuff");
        assert_eq!(suite.cases[3].message, "later");
    }

    #[test]
    fn error_beats_failure_beats_skipped_and_rerun_elements_are_ignored() {
        let report = parse_str(
            r#"<testsuites name="all"><testsuite name="s">
  <testcase name="both"><failure message="f">first</failure><failure>second</failure><error message="e">teardown</error></testcase>
  <testcase name="flaky"><flakyFailure message="once"><stackTrace>x</stackTrace></flakyFailure></testcase>
  <testcase name="disabled" status="disabled"><failure message="still failed"/></testcase>
</testsuite></testsuites>"#,
        )
        .expect("valid report");
        assert_eq!(report.name.as_deref(), Some("all"));
        let cases = &report.suites[0].cases;
        assert_eq!(
            (
                &cases[0].status,
                cases[0].message.as_str(),
                cases[0].detail.as_str()
            ),
            (&CaseStatus::Error, "e", "teardown")
        );
        assert_eq!(cases[1].status, CaseStatus::Passed);
        assert_eq!(cases[2].status, CaseStatus::Failed);
    }

    #[test]
    fn several_failures_join_their_bodies() {
        let report = parse_str(
            r#"<testsuite><testcase name="t"><failure>one</failure><failure message="m2"/><failure>two</failure></testcase></testsuite>"#,
        )
        .expect("valid report");
        let case = &report.suites[0].cases[0];
        assert_eq!(
            (case.message.as_str(), case.detail.as_str()),
            ("m2", "one\ntwo")
        );
    }

    #[test]
    fn nested_suites_keep_their_place() {
        let report = parse_str(
            r#"<testsuites><testsuite name="a"><testcase name="1"/><testsuite name="b"><testsuite name="c"><testcase name="2"/></testsuite></testsuite><testcase name="3"/></testsuite></testsuites>"#,
        )
        .expect("valid report");
        let visited: Vec<(&str, &str)> = report
            .cases()
            .map(|(suite, case)| (suite.name.as_str(), case.name.as_str()))
            .collect();
        assert_eq!(visited, [("a", "1"), ("a", "3"), ("c", "2")]);
        assert_eq!(report.suites[0].suites[0].suites[0].name, "c");
    }

    #[test]
    fn times_tolerate_separators_exponents_and_garbage() {
        assert_eq!(parse_seconds("2,503.1"), Some(2503.1));
        assert_eq!(parse_seconds("1,234,567"), Some(1_234_567.0));
        assert_eq!(parse_seconds(" 1.7e-05 "), Some(1.7e-5));
        assert_eq!(parse_seconds("0.000000"), Some(0.0));
        for garbage in [
            "",
            "1,5",
            "12,34.5",
            "-1",
            "NaN",
            "inf",
            "<<computed>>",
            "1.2.3",
            ",123",
        ] {
            assert_eq!(parse_seconds(garbage), None, "{garbage:?}");
        }
        let report =
            parse_str(r#"<testsuite time="later"><testcase name="t" time=""/></testsuite>"#)
                .expect("valid");
        assert_eq!(
            (
                report.suites[0].time_seconds,
                report.suites[0].cases[0].time_seconds
            ),
            (None, None)
        );
    }

    #[test]
    fn references_are_resolved_and_unrepresentable_characters_replaced() {
        let report = parse_str(
            r#"<testsuite name="a&amp;b &#x41;&#66;"><testcase name="t"><failure message="l1&#10;l2 &#x1B;[0m">&lt;&gt;&apos;&quot;&#13;&#x1B;[31m&#0;</failure></testcase></testsuite>"#,
        )
        .expect("valid");
        let suite = &report.suites[0];
        assert_eq!(suite.name, "a&b AB");
        assert_eq!(suite.cases[0].message, "l1\nl2 \u{FFFD}[0m");
        assert_eq!(suite.cases[0].detail, "<>'\"\r\u{FFFD}[31m\u{FFFD}");
    }

    #[test]
    fn attribute_values_are_normalized_like_xml_says() {
        let report = parse_str(
            "<testsuite name=\"a\nb\tc\"><testcase name=\"t\" classname=\"x&#9;y\"/></testsuite>",
        )
        .expect("valid");
        assert_eq!(report.suites[0].name, "a b c");
        assert_eq!(report.suites[0].cases[0].classname, "x\ty");
    }

    #[test]
    fn long_text_is_capped_on_a_character_boundary_and_capping_is_idempotent() {
        let body = "é".repeat(TEXT_CAP_BYTES);
        let xml = format!(
            r#"<testsuite><testcase name="t"><failure>{body}</failure><system-out>{body}</system-out></testcase></testsuite>"#
        );
        let report = parse_str(&xml).expect("valid");
        let case = &report.suites[0].cases[0];
        for text in [&case.detail, &case.system_out] {
            assert!(text.len() <= TEXT_CAP_BYTES);
            assert!(text.ends_with(TRUNCATION_MARKER));
            assert!(text
                .trim_end_matches(TRUNCATION_MARKER)
                .chars()
                .all(|character| character == 'é'));
        }
        let mut again = CappedText::default();
        again.push(&case.detail);
        assert_eq!(again.into_string(), case.detail);
        let short = "x".repeat(TEXT_CAP_BYTES);
        let mut exactly_full = CappedText::default();
        exactly_full.push(&short);
        assert_eq!(exactly_full.into_string(), short);
    }

    #[test]
    fn errors_name_the_problem_and_its_position() {
        let cases: [(&str, usize, usize, &str); 10] = [
            ("", 1, 1, "not XML: the input is empty"),
            ("   \n  ", 2, 3, "not XML: there is no root element"),
            ("hello world", 1, 1, "not XML: text before the root element"),
            (
                "<!DOCTYPE html>\n<html><body/></html>",
                2,
                1,
                "not a JUnit report: the root element is <html>",
            ),
            (
                "<testsuites>\n  <testsuite>\n  </testcase>",
                3,
                3,
                "malformed XML",
            ),
            (
                "<testsuites>\n<testsuite name=\"x\">",
                2,
                21,
                "truncated: the input ends inside <testsuite> (opened at line 2, column 1)",
            ),
            (
                "<testsuite/>\n<testsuite/>",
                2,
                1,
                "malformed XML: a second root element <testsuite> after </testsuite>",
            ),
            (
                "<testsuite name='&bogus;'/>",
                1,
                1,
                "malformed XML: bad value of attribute name",
            ),
            (
                "<testsuite>&xxe;</testsuite>",
                1,
                12,
                "undefined entity &xxe;",
            ),
            (
                "<testsuite time='<<computed>>'/>",
                1,
                1,
                "malformed XML: '<' in the value of attribute time",
            ),
        ];
        for (xml, line, column, message) in cases {
            let error = error(xml);
            assert!(error.message.starts_with(message), "{xml:?}: {error}");
            assert_eq!(
                (error.line, error.column),
                (line, column),
                "{xml:?}: {error}"
            );
        }
        assert_eq!(
            error("<x/>").to_string(),
            "line 1, column 1: not a JUnit report: the root element is <x>, expected <testsuites> or <testsuite>"
        );
        assert!(error("<testsuite>\u{e9}<\u{ff}")
            .message
            .starts_with("malformed XML"));
        assert!(parse(b"<testsuite name=\"\xff\"/>").is_err());
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_an_error() {
        let nested = |depth: usize| {
            format!(
                "{}{}",
                "<testsuite>".repeat(depth),
                "</testsuite>".repeat(depth)
            )
        };
        assert!(parse_str(&nested(MAX_DEPTH)).is_ok());
        let error = error(&nested(MAX_DEPTH + 1));
        assert!(error.message.contains("nested deeper than 64"), "{error}");
        assert_eq!(
            (error.line, error.column),
            (1, MAX_DEPTH * "<testsuite>".len() + 1)
        );
        let ignored = format!("<testsuite>{}", "<x>".repeat(100_000));
        assert!(error_message_contains(&ignored, "nested deeper"));
    }

    fn error_message_contains(xml: &str, needle: &str) -> bool {
        parse_str(xml).is_err_and(|error| error.message.contains(needle))
    }

    #[test]
    fn byte_order_mark_and_xml_1_1_are_accepted() {
        let report = parse(
            b"\xEF\xBB\xBF<?xml version='1.1'?><testsuites><testsuite name='s'/></testsuites>",
        )
        .expect("valid");
        assert_eq!(report.suites[0].name, "s");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_and_column("ab\néé<".as_bytes(), 7), (2, 3));
        assert_eq!(line_and_column(b"abc", 99), (1, 4));
    }

    const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="n"><testsuite name="s" time="1,000.5"><properties><property name="p" value="v"/></properties>
<testcase name="a" classname="c" time="0.1"><failure message="m">body &amp; <![CDATA[cdata]]></failure><system-out>o</system-out></testcase>
<testcase name="b"><skipped/></testcase><testsuite name="inner"><testcase name="c"/></testsuite></testsuite></testsuites>"#;

    #[derive(Debug, Clone)]
    enum Mutation {
        Delete { at: usize, length: usize },
        Insert { at: usize, bytes: Vec<u8> },
        Duplicate { at: usize, length: usize },
        Truncate { at: usize },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1..20usize).prop_map(|(at, length)| Mutation::Delete { at, length }),
            (
                any::<usize>(),
                prop::collection::vec(
                    prop_oneof![
                        Just(b'<'),
                        Just(b'>'),
                        Just(b'/'),
                        Just(b'&'),
                        Just(b'"'),
                        Just(b';'),
                        Just(b'#'),
                        any::<u8>()
                    ],
                    1..8
                )
            )
                .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
            (any::<usize>(), 1..40usize)
                .prop_map(|(at, length)| Mutation::Duplicate { at, length }),
            any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
        let position = |at: usize, bytes: &Vec<u8>| at % (bytes.len() + 1);
        match mutation {
            Mutation::Delete { at, length } => {
                let start = position(*at, bytes);
                let end = (start + length).min(bytes.len());
                bytes.drain(start..end);
            }
            Mutation::Insert {
                at,
                bytes: inserted,
            } => {
                let start = position(*at, bytes);
                bytes.splice(start..start, inserted.iter().copied());
            }
            Mutation::Duplicate { at, length } => {
                let start = position(*at, bytes);
                let end = (start + length).min(bytes.len());
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Mutation::Truncate { at } => {
                let end = position(*at, bytes);
                bytes.truncate(end);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_reports_never_panic_and_errors_point_inside_the_input(
            mutations in prop::collection::vec(mutation(), 1..6)
        ) {
            let mut bytes = SAMPLE.as_bytes().to_vec();
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            if let Err(error) = parse(&bytes) {
                let lines = bytes.iter().filter(|&&byte| byte == b'\n').count() + 1;
                prop_assert!(error.line >= 1 && error.line <= lines && error.column >= 1, "{}", error);
            }
        }
    }
}
