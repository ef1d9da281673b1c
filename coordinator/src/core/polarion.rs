//! What Polarion gets from Polarizer's data: a test's metadata as a TestCase work item, and a run's
//! results as an XUnit import, under the `[polarion]` settings. Pure mapping; the XML itself is
//! `shared::polarion`'s.
//!
//! The mapping, in brief (README "Polarion" has it in full):
//! - lookup `id`: the work item id learnt for the test, else the fmf `id`; `name`: the test's node name
//!   (also its title); `custom`: the fmf `id` in the custom field named by `custom_lookup_field`.
//! - case importance from `tier` (0, 1 → critical, high; 2 → medium; else low); level from the type
//!   (unit → component, integration → integration, else system); automation: automated; test type
//!   functional, or non-functional for performance tests; positive/negative from a `positive` or
//!   `negative` tag; components, tags, the test's command; `link`s to Polarion work items.
//! - results: pass, info → passed; fail, warn → failed; error, timeout, cancelled, and anything
//!   unfinished → blocked with the reason; skipped → waiting.

use std::collections::BTreeMap;

use polarizer_shared::metadata::{TestMetadata, TestType};
use polarizer_shared::polarion::{
    LookupMethod, TestCaseImport, TestCaseItem, Verdict, XunitCase, XunitImport,
};
use polarizer_shared::run::{RunDetail, TestStatus};

/// `[polarion]` as the mapping needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolarionSettings {
    pub project: String,
    pub user: String,
    pub lookup_method: LookupMethod,
    /// The custom field holding the fmf `id` (lookup method `custom`).
    pub custom_lookup_field: String,
    pub testrun_template: String,
    /// With placeholders `{run}`, `{kind}`, `{component}`, `{artifact}`, `{arch}`, `{distro}`, `{commit}`,
    /// `{ref}`, `{repo}`.
    pub testrun_title: String,
    /// The test run's id, same placeholders [default: polarizer-{run}].
    pub testrun_id: String,
    /// `polarion-custom-<key>` of the test run, same placeholders.
    pub custom: BTreeMap<String, String>,
    pub include_skipped: bool,
}

impl Default for PolarionSettings {
    fn default() -> Self {
        PolarionSettings {
            project: String::new(),
            user: String::new(),
            lookup_method: LookupMethod::Custom,
            custom_lookup_field: "testCaseID".into(),
            testrun_template: String::new(),
            testrun_title: "{repo} {kind} run {run}".into(),
            testrun_id: "polarizer-{run}".into(),
            custom: BTreeMap::new(),
            include_skipped: true,
        }
    }
}

/// The placeholders a title, id or custom value may name.
pub const PLACEHOLDERS: [&str; 9] = [
    "run",
    "kind",
    "component",
    "artifact",
    "arch",
    "distro",
    "commit",
    "ref",
    "repo",
];

/// Checks a template names only known placeholders; the error names the first unknown one.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("{template:?}: a '{{' is not closed"));
        };
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "{template:?}: unknown placeholder {{{name}}} (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// `template` with the run's values in its placeholders.
pub fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// The values a run gives the placeholders.
pub fn run_values(detail: &RunDetail, components: &[String]) -> BTreeMap<&'static str, String> {
    let first_suite = detail.suites.first();
    BTreeMap::from([
        ("run", detail.run.id.to_string()),
        ("kind", detail.run.kind.as_str().to_string()),
        ("component", components.join(",")),
        ("artifact", detail.artifacts.join(",")),
        (
            "arch",
            first_suite
                .map(|suite| suite.arch.join(","))
                .unwrap_or_default(),
        ),
        (
            "distro",
            first_suite
                .map(|suite| suite.distro.join(","))
                .unwrap_or_default(),
        ),
        ("commit", detail.run.commit.clone()),
        ("ref", detail.run.git_ref.clone()),
        ("repo", detail.run.repo.clone()),
    ])
}

/// The id Polarion looks a test up by, per the lookup method: a work item id learnt from an earlier
/// import (`known`), else the fmf `id`; the node name; or the fmf `id` (custom field).
pub fn lookup_id(
    settings: &PolarionSettings,
    test_id: &str,
    test_name: &str,
    known: Option<&str>,
) -> String {
    match settings.lookup_method {
        LookupMethod::Id => known.unwrap_or(test_id).to_string(),
        LookupMethod::Name => test_name.to_string(),
        LookupMethod::Custom => test_id.to_string(),
    }
}

/// A Polarion work item id in a link target: `RHEL-123`, or a URL naming it (`…?id=RHEL-123`,
/// `…/workitem/RHEL-123`).
pub fn work_item_id(target: &str) -> Option<String> {
    let candidate = target.rsplit(['=', '/']).next().unwrap_or(target).trim();
    let (project, number) = candidate.rsplit_once('-')?;
    let good = !project.is_empty()
        && project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit());
    good.then(|| candidate.to_string())
}

fn importance(tier: &str) -> &'static str {
    match tier.trim() {
        "0" => "critical",
        "1" => "high",
        "2" => "medium",
        _ => "low",
    }
}

fn level(test_type: Option<TestType>) -> &'static str {
    match test_type {
        Some(TestType::Unit) => "component",
        Some(TestType::Integration) => "integration",
        _ => "system",
    }
}

/// The HTML description: the test's description as paragraphs, and where it lives.
fn description(test: &TestMetadata) -> String {
    let mut html = String::new();
    for paragraph in test
        .description
        .split("\n\n")
        .filter(|text| !text.trim().is_empty())
    {
        html += "<p>";
        html += &html_escape(paragraph.trim());
        html += "</p>";
    }
    html += &format!("<p>fmf: <code>{}</code></p>", html_escape(&test.name));
    html
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A test as a TestCase work item.
pub fn test_case(
    settings: &PolarionSettings,
    test: &TestMetadata,
    known: Option<&str>,
) -> TestCaseItem {
    let mut custom_fields = vec![
        (
            "caseimportance".to_string(),
            importance(&test.tier).to_string(),
        ),
        ("caselevel".into(), level(test.test_type).into()),
        ("caseautomation".into(), "automated".into()),
        (
            "testtype".into(),
            if test.test_type == Some(TestType::Performance) {
                "nonfunctional".into()
            } else {
                "functional".into()
            },
        ),
    ];
    if let Some(test_type) = test.test_type {
        custom_fields.push(("subtype1".into(), test_type.as_str().into()));
    }
    // Positive or negative, where a tag says so.
    for posneg in ["positive", "negative"] {
        if test.tags.iter().any(|tag| tag == posneg) {
            custom_fields.push(("caseposneg".into(), posneg.into()));
        }
    }
    if !test.components.is_empty() {
        custom_fields.push(("casecomponent".into(), test.components.join(", ")));
    }
    if !test.tags.is_empty() {
        custom_fields.push(("tags".into(), test.tags.join(", ")));
    }
    if !test.test.is_empty() {
        custom_fields.push(("automation_script".into(), test.test.clone()));
    }
    if settings.lookup_method == LookupMethod::Custom {
        custom_fields.push((settings.custom_lookup_field.clone(), test.id.clone()));
    }
    let links = test
        .links
        .iter()
        .filter_map(|link| {
            work_item_id(&link.target).map(|id| (id, link.relation.replace('-', "_")))
        })
        .collect();
    let title = if settings.lookup_method == LookupMethod::Name || test.summary.is_empty() {
        test.name.clone()
    } else {
        test.summary.clone()
    };
    TestCaseItem {
        id: match settings.lookup_method {
            LookupMethod::Id => Some(lookup_id(settings, &test.id, &test.name, known)),
            _ => known.map(str::to_string),
        },
        title,
        description: description(test),
        steps: vec![(
            if test.test.is_empty() {
                test.name.clone()
            } else {
                test.test.clone()
            },
            "Exits 0".into(),
        )],
        parameters: Vec::new(),
        custom_fields,
        links,
    }
}

/// The TestCase importer file of `tests`, each item made as it is written; `known` gives a test's
/// learnt work item id.
pub fn test_cases_file(
    settings: &PolarionSettings,
    tests: &[TestMetadata],
    known: &dyn Fn(&str) -> Option<String>,
    dry_run: bool,
) -> String {
    let header = TestCaseImport {
        items: Vec::new(),
        ..test_cases(settings, &[], known, dry_run)
    };
    polarizer_shared::polarion::testcases_streamed(
        &header,
        tests
            .iter()
            .map(|test| test_case(settings, test, known(&test.id).as_deref())),
        tests.len() * 1400,
    )
}

/// The TestCase import of `tests`; `known` gives a test's learnt work item id.
pub fn test_cases(
    settings: &PolarionSettings,
    tests: &[TestMetadata],
    known: &dyn Fn(&str) -> Option<String>,
    dry_run: bool,
) -> TestCaseImport {
    let mut properties = vec![
        (
            "lookup-method".to_string(),
            settings.lookup_method.as_str().to_string(),
        ),
        ("dry-run".into(), dry_run.to_string()),
    ];
    if settings.lookup_method == LookupMethod::Custom {
        properties.push((
            "polarion-custom-lookup-method-field-id".into(),
            settings.custom_lookup_field.clone(),
        ));
    }
    TestCaseImport {
        project: settings.project.clone(),
        response: vec![("polarizer".into(), "testcases".into())],
        properties,
        items: tests
            .iter()
            .map(|test| test_case(settings, test, known(&test.id).as_deref()))
            .collect(),
    }
}

fn verdict(status: TestStatus, message: &str, output: &str) -> Verdict {
    let reason = |fallback: &str| {
        if message.is_empty() {
            fallback.to_string()
        } else {
            format!("{fallback}: {message}")
        }
    };
    match status {
        TestStatus::Pass | TestStatus::Info => Verdict::Passed,
        TestStatus::Fail | TestStatus::Warn => Verdict::Failed {
            message: reason(status.as_str()),
            detail: output.to_string(),
        },
        TestStatus::Skipped => Verdict::Waiting {
            message: reason("skipped"),
        },
        TestStatus::Error
        | TestStatus::Timeout
        | TestStatus::Cancelled
        | TestStatus::Queued
        | TestStatus::Running => Verdict::Blocked {
            message: reason(status.as_str()),
        },
    }
}

/// A run's results as XUnit imports of at most `chunk` cases each, all into the same test run. A
/// test's JUnit sub-results become cases of their own (`TEST::SUB`), each under the test's own work item
/// with the sub-result's name as the parameter `case`.
pub fn xunit_imports(
    settings: &PolarionSettings,
    detail: &RunDetail,
    components: &[String],
    known: &dyn Fn(&str) -> Option<String>,
    dry_run: bool,
    chunk: usize,
) -> Vec<XunitImport> {
    let values = run_values(detail, components);
    let mut properties = vec![
        ("polarion-project-id".to_string(), settings.project.clone()),
        (
            "polarion-testrun-id".into(),
            fill(&settings.testrun_id, &values),
        ),
        (
            "polarion-testrun-title".into(),
            fill(&settings.testrun_title, &values),
        ),
        (
            "polarion-lookup-method".into(),
            settings.lookup_method.as_str().into(),
        ),
        ("polarion-dry-run".into(), dry_run.to_string()),
        (
            "polarion-include-skipped".into(),
            settings.include_skipped.to_string(),
        ),
        ("polarion-testrun-status-id".into(), "finished".into()),
        (
            "polarion-response-polarizer".into(),
            format!("run-{}", detail.run.id),
        ),
    ];
    if !settings.user.is_empty() {
        properties.push(("polarion-user-id".into(), settings.user.clone()));
    }
    if !settings.testrun_template.is_empty() {
        properties.push((
            "polarion-testrun-template-id".into(),
            settings.testrun_template.clone(),
        ));
    }
    if settings.lookup_method == LookupMethod::Custom {
        properties.push((
            "polarion-custom-lookup-method-field-id".into(),
            settings.custom_lookup_field.clone(),
        ));
    }
    for (key, value) in &settings.custom {
        properties.push((format!("polarion-custom-{key}"), fill(value, &values)));
    }
    // The version chain: what the run tested.
    if let Some(suite) = detail.suites.first() {
        if !suite.versions.agent_version.is_empty() {
            properties.push((
                "polarion-custom-polarizer_agent".into(),
                suite.versions.agent_version.clone(),
            ));
        }
    }
    let mut cases = Vec::new();
    for test in &detail.tests {
        let id = lookup_id(
            settings,
            &test.test,
            &test.name,
            known(&test.test).as_deref(),
        );
        cases.push(XunitCase {
            name: test.name.clone(),
            classname: "polarizer".into(),
            time_seconds: test.duration_ms.map(|ms| ms as f64 / 1000.0),
            verdict: verdict(
                test.status,
                &test.message_with_analysis(),
                &test.output_tail,
            ),
            system_out: if matches!(test.status, TestStatus::Pass | TestStatus::Info) {
                String::new()
            } else {
                test.output_tail.clone()
            },
            testcase_id: id.clone(),
            comment: String::new(),
            parameters: Vec::new(),
        });
        for sub in &test.subresults {
            cases.push(XunitCase {
                name: format!("{}::{}", test.name, sub.name),
                classname: sub.classname.clone(),
                time_seconds: Some(sub.duration_ms as f64 / 1000.0),
                verdict: verdict(sub.status, &sub.message, ""),
                system_out: String::new(),
                testcase_id: id.clone(),
                comment: String::new(),
                parameters: vec![("case".into(), sub.name.clone())],
            });
        }
    }
    if !settings.include_skipped {
        cases.retain(|case| !matches!(case.verdict, Verdict::Waiting { .. }));
    }
    let chunk = chunk.max(1);
    let parts = cases.len().div_ceil(chunk).max(1);
    let mut imports = Vec::with_capacity(parts);
    let mut rest = cases.into_iter().peekable();
    for part in 1..=parts {
        let cases: Vec<XunitCase> = rest.by_ref().take(chunk).collect();
        imports.push(XunitImport {
            properties: properties.clone(),
            suite_name: if parts == 1 {
                format!("polarizer run {}", detail.run.id)
            } else {
                format!("polarizer run {} ({part} of {parts})", detail.run.id)
            },
            cases,
        });
    }
    imports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_item_ids_come_from_ids_and_urls() {
        assert_eq!(work_item_id("RHEL-123").as_deref(), Some("RHEL-123"));
        assert_eq!(
            work_item_id(
                "https://polarion.example.com/polarion/#/project/RHEL/workitem?id=RHEL-42"
            )
            .as_deref(),
            Some("RHEL-42")
        );
        assert_eq!(
            work_item_id("https://bugzilla.redhat.com/show_bug.cgi?id=1234"),
            None
        );
        assert_eq!(work_item_id("/tests/login"), None);
    }

    #[test]
    fn templates_name_known_placeholders_only() {
        check_template("{component} {kind} {artifact} run {run}").unwrap();
        let err = check_template("{build}").unwrap_err();
        assert!(err.contains("{build}"), "{err}");
        assert!(check_template("{run").is_err());
        let values = BTreeMap::from([("run", "7".to_string())]);
        assert_eq!(fill("run {run}", &values), "run 7");
    }

    #[test]
    fn tests_map_to_work_items_by_the_lookup_method() {
        let test = TestMetadata {
            id: "5f0c-uuid".into(),
            name: "/tests/login".into(),
            summary: "Login works".into(),
            tier: "1".into(),
            test_type: Some(TestType::Unit),
            test: "./login.sh".into(),
            links: vec![polarizer_shared::metadata::Link {
                relation: "verifies".into(),
                target: "RHEL-9".into(),
                note: String::new(),
            }],
            ..Default::default()
        };
        let settings = PolarionSettings::default();
        let item = test_case(&settings, &test, None);
        assert_eq!(item.id, None);
        assert!(item
            .custom_fields
            .contains(&("testCaseID".into(), "5f0c-uuid".into())));
        assert!(item
            .custom_fields
            .contains(&("caseimportance".into(), "high".into())));
        assert!(item
            .custom_fields
            .contains(&("caselevel".into(), "component".into())));
        assert_eq!(
            item.links,
            vec![("RHEL-9".to_string(), "verifies".to_string())]
        );
        let by_id = PolarionSettings {
            lookup_method: LookupMethod::Id,
            ..PolarionSettings::default()
        };
        assert_eq!(
            test_case(&by_id, &test, Some("RHEL-77")).id.as_deref(),
            Some("RHEL-77")
        );
    }
}

/// What an importer's job log says: the work items it found or made, the lookups that failed, the
/// test run's URL, and its errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobLog {
    /// `(name as looked up or titled, work item id, custom id)`.
    pub work_items: Vec<(String, String, String)>,
    pub not_found: Vec<String>,
    pub not_unique: Vec<String>,
    pub testrun_url: String,
    pub errors: Vec<String>,
}

/// The quoted text after `marker` in `line`, up to the last `'` before `end`.
fn quoted<'a>(line: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let start = line.find(marker)? + marker.len();
    let rest = &line[start..];
    let close = rest.rfind('\'')?;
    Some((&rest[..close], &rest[close + 1..]))
}

/// Reads an importer's job log (the XUnit and TestCase importers write the same kind of lines).
pub fn parse_job_log(text: &str) -> JobLog {
    let mut log = JobLog::default();
    for line in text.lines() {
        let message = line.split_once(" - ").map_or(line, |(_, message)| message);
        if let Some((name, rest)) = quoted(message, "Work item: '") {
            if let Some(id) = rest
                .trim()
                .strip_prefix('(')
                .and_then(|rest| rest.strip_suffix(')'))
            {
                log.work_items
                    .push((name.to_string(), id.to_string(), String::new()));
            }
        } else if let Some((name, _)) = quoted(message, "Unable to find *unique* work item for '") {
            log.not_unique.push(name.to_string());
        } else if let Some((name, _)) = quoted(message, "Unable to find work item for '") {
            log.not_found.push(name.to_string());
        } else if let Some((name, rest)) = quoted(message, "Updated test case '")
            .or_else(|| quoted(message, "Created test case '"))
        {
            let ids = rest
                .trim()
                .trim_end_matches('.')
                .trim_start_matches('(')
                .trim_end_matches(')');
            let (id, custom) = ids.split_once('/').unwrap_or((ids, ""));
            if !id.is_empty() {
                log.work_items
                    .push((name.to_string(), id.to_string(), custom.to_string()));
            }
        } else if let Some(url) = message.strip_prefix("Polarion results published to: ") {
            log.testrun_url = url.trim().to_string();
        } else if let Some((title, _)) =
            quoted(message, "Found multiple work items with the title '")
        {
            log.not_unique.push(title.to_string());
        } else if line.contains(" ERROR ") {
            log.errors.push(message.trim().to_string());
        }
    }
    log
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn job_logs_read_as_the_importers_write_them() {
        let xunit = "2018-09-16 14:13:08,699 INFO ImportXUnitThread_181 - Using Polarion lookup method: name\n\
2018-09-16 14:13:08,873 INFO ImportXUnitThread_181 - Work item: 'test_tagwise[vc-6.5]' (RHCF3-49131)\n\
2018-09-16 14:13:09,005 WARN ImportXUnitThread_181 - Unable to find *unique* work item for 'test_guest_os_reset[vc-5.5]'.\n\
2018-09-16 14:13:11,108 WARN ImportXUnitThread_181 - Unable to find work item for 'test_quota[group]'.\n\
2018-09-16 14:14:26,203 INFO ImportXUnitThread_181 - Polarion results published to: https://polarion.example.com/polarion/#/project/RHCF3/testrun?id=5_10_0_15\n";
        let log = parse_job_log(xunit);
        assert_eq!(
            log.work_items,
            vec![(
                "test_tagwise[vc-6.5]".to_string(),
                "RHCF3-49131".to_string(),
                String::new()
            )]
        );
        assert_eq!(
            log.not_unique,
            vec!["test_guest_os_reset[vc-5.5]".to_string()]
        );
        assert_eq!(log.not_found, vec!["test_quota[group]".to_string()]);
        assert!(log.testrun_url.ends_with("testrun?id=5_10_0_15"));
        let testcase = "2018-09-21 14:54:45,997 INFO ImportTestcaseThread_1985 - Updated test case 'TestCVEsQuery.test_post_multi' (INSI-1488/3182d6f3).\n\
2018-09-21 14:54:45,998 ERROR ImportTestcaseThread_1985 - Found multiple work items with the title 'test_duplicates'.\n";
        let log = parse_job_log(testcase);
        assert_eq!(
            log.work_items,
            vec![(
                "TestCVEsQuery.test_post_multi".to_string(),
                "INSI-1488".to_string(),
                "3182d6f3".to_string()
            )]
        );
        assert_eq!(log.not_unique, vec!["test_duplicates".to_string()]);
    }
}
