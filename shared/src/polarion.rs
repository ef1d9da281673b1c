//! Polarion's importer formats, written: the XUnit importer's file (test results into a test run) and the
//! TestCase importer's file (test case work items created or updated). Plain data in, XML text out, in
//! the element order Polarion's schemas require (`xunit.xsd`, `testcase-importer.xsd`): run properties
//! before the suite, a case's `<properties>` after its outcome and output.
//!
//! Escaping is quick-xml's; characters XML 1.0 cannot carry are replaced first, as in the JUnit writer.

use std::borrow::Cow;
use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::junit::xml_safe;

type XmlWriter = Writer<Vec<u8>>;

/// How Polarion finds the work item a case or test case is: its id, its title, or a custom field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupMethod {
    Id,
    Name,
    Custom,
}

impl LookupMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupMethod::Id => "id",
            LookupMethod::Name => "name",
            LookupMethod::Custom => "custom",
        }
    }

    pub fn parse(text: &str) -> Option<LookupMethod> {
        match text {
            "id" => Some(LookupMethod::Id),
            "name" => Some(LookupMethod::Name),
            "custom" => Some(LookupMethod::Custom),
            _ => None,
        }
    }
}

/// A result as Polarion reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// `<failure>`: failed.
    Failed {
        message: String,
        detail: String,
    },
    /// `<error>`: blocked (an error, a timeout, an infrastructure failure).
    Blocked {
        message: String,
    },
    /// `<skipped>`: waiting (left out with `polarion-include-skipped` false).
    Waiting {
        message: String,
    },
}

/// One `<testcase>` of an XUnit import.
#[derive(Clone, Debug, PartialEq)]
pub struct XunitCase {
    pub name: String,
    pub classname: String,
    pub time_seconds: Option<f64>,
    pub verdict: Verdict,
    pub system_out: String,
    /// `polarion-testcase-id`: the work item's id, its title or custom id, per the lookup method.
    pub testcase_id: String,
    pub comment: String,
    /// `polarion-parameter-<name>` of a parametrised test.
    pub parameters: Vec<(String, String)>,
}

/// One XUnit import: the run-level `polarion-*` properties (in order) and the cases.
#[derive(Clone, Debug, PartialEq)]
pub struct XunitImport {
    pub properties: Vec<(String, String)>,
    pub suite_name: String,
    pub cases: Vec<XunitCase>,
}

/// One test case work item of a TestCase import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestCaseItem {
    /// The work item's id when known (lookup method `id`); else Polarion finds or makes it.
    pub id: Option<String>,
    pub title: String,
    /// HTML; escaped in the file, as the importer expects.
    pub description: String,
    /// `(step, expected result)`; each step may name parameters as `${name}`.
    pub steps: Vec<(String, String)>,
    /// The parameters of a parametrised test, named in its steps.
    pub parameters: Vec<String>,
    pub custom_fields: Vec<(String, String)>,
    /// `(work item id, role)`: `verifies`, `relates_to`, ...
    pub links: Vec<(String, String)>,
}

/// One TestCase import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCaseImport {
    pub project: String,
    /// `response-property`s: the answer on the bus names them.
    pub response: Vec<(String, String)>,
    /// `lookup-method`, `dry-run`, and for `custom` the field.
    pub properties: Vec<(String, String)>,
    pub items: Vec<TestCaseItem>,
}

fn text(value: &str) -> Cow<'_, str> {
    xml_safe(value)
}

fn finish(writer: XmlWriter) -> String {
    let mut bytes = writer.into_inner();
    bytes.push(b'\n');
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

fn properties(
    writer: &mut XmlWriter,
    element: &str,
    item: &str,
    properties: &[(String, String)],
) -> io::Result<()> {
    if properties.is_empty() {
        return Ok(());
    }
    writer
        .create_element(element)
        .write_inner_content(|writer| {
            for (name, value) in properties {
                writer
                    .create_element(item)
                    .with_attributes([("name", text(name)), ("value", text(value))])
                    .write_empty()?;
            }
            Ok(())
        })?;
    Ok(())
}

/// The XUnit importer's file.
pub fn xunit(import: &XunitImport) -> String {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_xunit(&mut writer, import).expect("writing XML into a Vec<u8> cannot fail");
    finish(writer)
}

fn write_xunit(writer: &mut XmlWriter, import: &XunitImport) -> io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let count = |wanted: fn(&Verdict) -> bool| {
        import
            .cases
            .iter()
            .filter(|case| wanted(&case.verdict))
            .count()
            .to_string()
    };
    let failures = count(|verdict| matches!(verdict, Verdict::Failed { .. }));
    let errors = count(|verdict| matches!(verdict, Verdict::Blocked { .. }));
    let skipped = count(|verdict| matches!(verdict, Verdict::Waiting { .. }));
    let tests = import.cases.len().to_string();
    let time: f64 = import
        .cases
        .iter()
        .filter_map(|case| case.time_seconds)
        .sum();
    let time = ((time * 1e3).round() / 1e3).to_string();
    writer
        .create_element("testsuites")
        .with_attributes([
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", errors.as_str()),
            ("time", time.as_str()),
        ])
        .write_inner_content(|writer| {
            properties(writer, "properties", "property", &import.properties)?;
            writer
                .create_element("testsuite")
                .with_attributes([
                    ("name", text(&import.suite_name)),
                    ("tests", Cow::Borrowed(tests.as_str())),
                    ("failures", Cow::Borrowed(failures.as_str())),
                    ("errors", Cow::Borrowed(errors.as_str())),
                    ("skipped", Cow::Borrowed(skipped.as_str())),
                    ("time", Cow::Borrowed(time.as_str())),
                ])
                .write_inner_content(|writer| {
                    import
                        .cases
                        .iter()
                        .try_for_each(|case| write_case(writer, case))
                })?;
            Ok(())
        })?;
    Ok(())
}

fn write_case(writer: &mut XmlWriter, case: &XunitCase) -> io::Result<()> {
    let mut attributes: Vec<(&str, Cow<'_, str>)> = vec![
        ("name", text(&case.name)),
        ("classname", text(&case.classname)),
    ];
    if let Some(time) = case.time_seconds {
        attributes.push(("time", Cow::Owned(time.to_string())));
    }
    let mut case_properties = vec![("polarion-testcase-id".to_string(), case.testcase_id.clone())];
    if !case.comment.is_empty() {
        case_properties.push(("polarion-testcase-comment".into(), case.comment.clone()));
    }
    for (name, value) in &case.parameters {
        case_properties.push((format!("polarion-parameter-{name}"), value.clone()));
    }
    writer
        .create_element("testcase")
        .with_attributes(attributes)
        .write_inner_content(|writer| {
            // The schema's order: skipped, error, failure, system-out, system-err, properties.
            let outcome = |writer: &mut XmlWriter, element: &str, message: &str, detail: &str| {
                let mut outcome = writer.create_element(element);
                if !message.is_empty() {
                    outcome = outcome.with_attribute(("message", text(message)));
                }
                if detail.is_empty() {
                    outcome.write_empty().map(drop)
                } else {
                    outcome
                        .write_text_content(BytesText::new(&text(detail)))
                        .map(drop)
                }
            };
            match &case.verdict {
                Verdict::Passed => {}
                // The schema gives `<skipped>` text only, no attributes.
                Verdict::Waiting { message } => outcome(writer, "skipped", "", message)?,
                Verdict::Blocked { message } => outcome(writer, "error", message, "")?,
                Verdict::Failed { message, detail } => outcome(writer, "failure", message, detail)?,
            }
            if !case.system_out.is_empty() {
                writer
                    .create_element("system-out")
                    .write_text_content(BytesText::new(&text(&case.system_out)))?;
            }
            properties(writer, "properties", "property", &case_properties)
        })?;
    Ok(())
}

/// The TestCase importer's file.
pub fn testcases(import: &TestCaseImport) -> String {
    testcases_streamed(import, &import.items, 0)
}

/// The TestCase importer's file with `import`'s header and the items `items` makes one at a time (its
/// own `items` are not written), so a large export never holds every item at once. `capacity`: the
/// bytes to reserve for the file.
pub fn testcases_streamed<T: std::borrow::Borrow<TestCaseItem>>(
    import: &TestCaseImport,
    items: impl IntoIterator<Item = T>,
    capacity: usize,
) -> String {
    let mut writer = Writer::new_with_indent(Vec::with_capacity(capacity), b' ', 2);
    write_testcases(&mut writer, import, items).expect("writing XML into a Vec<u8> cannot fail");
    finish(writer)
}

fn write_testcases<T: std::borrow::Borrow<TestCaseItem>>(
    writer: &mut XmlWriter,
    import: &TestCaseImport,
    items: impl IntoIterator<Item = T>,
) -> io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    writer
        .create_element("testcases")
        .with_attribute(("project-id", text(&import.project)))
        .write_inner_content(|writer| {
            properties(
                writer,
                "response-properties",
                "response-property",
                &import.response,
            )?;
            properties(writer, "properties", "property", &import.properties)?;
            items
                .into_iter()
                .try_for_each(|item| write_item(writer, item.borrow()))
        })?;
    Ok(())
}

fn write_item(writer: &mut XmlWriter, item: &TestCaseItem) -> io::Result<()> {
    let mut element = writer.create_element("testcase");
    if let Some(id) = &item.id {
        element = element.with_attribute(("id", text(id)));
    }
    element.write_inner_content(|writer| {
        writer
            .create_element("title")
            .write_text_content(BytesText::new(&text(&item.title)))?;
        if !item.description.is_empty() {
            writer
                .create_element("description")
                .write_text_content(BytesText::new(&text(&item.description)))?;
        }
        if !item.steps.is_empty() {
            writer
                .create_element("test-steps")
                .write_inner_content(|writer| {
                    for (step, expected) in &item.steps {
                        writer
                            .create_element("test-step")
                            .write_inner_content(|writer| {
                                let column = writer
                                    .create_element("test-step-column")
                                    .with_attribute(("id", "step"));
                                if item.parameters.is_empty() {
                                    column.write_text_content(BytesText::new(&text(step)))?;
                                } else {
                                    column.write_inner_content(|writer| {
                                        writer.write_event(Event::Text(BytesText::new(&text(
                                            step,
                                        ))))?;
                                        for name in &item.parameters {
                                            writer
                                                .create_element("parameter")
                                                .with_attributes([
                                                    ("name", text(name)),
                                                    ("scope", Cow::Borrowed("local")),
                                                ])
                                                .write_empty()?;
                                        }
                                        Ok(())
                                    })?;
                                }
                                writer
                                    .create_element("test-step-column")
                                    .with_attribute(("id", "expectedResult"))
                                    .write_text_content(BytesText::new(&text(expected)))?;
                                Ok(())
                            })?;
                    }
                    Ok(())
                })?;
        }
        if !item.custom_fields.is_empty() {
            writer
                .create_element("custom-fields")
                .write_inner_content(|writer| {
                    for (id, content) in &item.custom_fields {
                        writer
                            .create_element("custom-field")
                            .with_attributes([("id", text(id)), ("content", text(content))])
                            .write_empty()?;
                    }
                    Ok(())
                })?;
        }
        if !item.links.is_empty() {
            writer
                .create_element("linked-work-items")
                .write_inner_content(|writer| {
                    for (id, role) in &item.links {
                        writer
                            .create_element("linked-work-item")
                            .with_attributes([("workitem-id", text(id)), ("role-id", text(role))])
                            .write_empty()?;
                    }
                    Ok(())
                })?;
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xunit_puts_run_properties_first_and_case_properties_last() {
        let import = XunitImport {
            properties: vec![
                ("polarion-project-id".into(), "RHEL".into()),
                ("polarion-lookup-method".into(), "custom".into()),
            ],
            suite_name: "run 7".into(),
            cases: vec![
                XunitCase {
                    name: "/tests/login".into(),
                    classname: "polarizer".into(),
                    time_seconds: Some(1.5),
                    verdict: Verdict::Failed {
                        message: "exit 1 <&>".into(),
                        detail: "tail".into(),
                    },
                    system_out: "out\u{1b}put".into(),
                    testcase_id: "RHEL-1".into(),
                    comment: String::new(),
                    parameters: vec![("arch".into(), "x86_64".into())],
                },
                XunitCase {
                    name: "/tests/skip".into(),
                    classname: "polarizer".into(),
                    time_seconds: None,
                    verdict: Verdict::Waiting {
                        message: "skipped".into(),
                    },
                    system_out: String::new(),
                    testcase_id: "RHEL-2".into(),
                    comment: "why".into(),
                    parameters: Vec::new(),
                },
            ],
        };
        let xml = xunit(&import);
        let run = xml.find("polarion-project-id").unwrap();
        let suite = xml.find("<testsuite ").unwrap();
        assert!(run < suite, "{xml}");
        let failure = xml.find("<failure").unwrap();
        let output = xml.find("<system-out>").unwrap();
        let case_id = xml.find("polarion-testcase-id").unwrap();
        assert!(failure < output && output < case_id, "{xml}");
        assert!(xml.contains("exit 1 &lt;&amp;&gt;"), "{xml}");
        assert!(xml.contains("polarion-parameter-arch"), "{xml}");
        assert!(!xml.contains('\u{1b}'), "{xml}");
        assert!(
            xml.contains("tests=\"2\" failures=\"1\" errors=\"0\""),
            "{xml}"
        );
    }

    #[test]
    fn testcases_escape_html_descriptions() {
        let xml = testcases(&TestCaseImport {
            project: "RHEL".into(),
            response: vec![("polarizer".into(), "export".into())],
            properties: vec![("lookup-method".into(), "id".into())],
            items: vec![TestCaseItem {
                id: Some("RHEL-7".into()),
                title: "Login works".into(),
                description: "<p>a & b</p>".into(),
                steps: vec![("run ${arch}".into(), "passes".into())],
                parameters: vec!["arch".into()],
                custom_fields: vec![("caseautomation".into(), "automated".into())],
                links: vec![("RHEL-1".into(), "verifies".into())],
            }],
        });
        assert!(xml.contains("&lt;p&gt;a &amp; b&lt;/p&gt;"), "{xml}");
        assert!(
            xml.contains("<parameter name=\"arch\" scope=\"local\"/>"),
            "{xml}"
        );
        assert!(xml.contains("role-id=\"verifies\""), "{xml}");
        let response = xml.find("response-properties").unwrap();
        let properties = xml.find("<properties>").unwrap();
        assert!(response < properties, "{xml}");
    }
}

/// One import as `polarizer polarion jobs` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportRecord {
    pub id: u64,
    /// `xunit` or `testcase`.
    pub kind: String,
    pub run: Option<u64>,
    /// This file's place among the run's files (a large run is uploaded in several).
    pub part: u32,
    pub parts: u32,
    pub dry_run: bool,
    /// `waiting` (to be uploaded), `queued`, `running`, `success`, `failed`.
    pub state: String,
    /// Polarion's job ids for the upload.
    pub job_ids: Vec<u64>,
    pub testrun_url: String,
    /// What went wrong, or what the log says was not found.
    pub message: String,
    /// Tries at uploading so far.
    pub tries: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}
