//! Build messages from a message bus, read as Koji and Brew send them, the rules that turn them into
//! runs, and the CI messages (Fedora/RHEL CI messages, version 1) a run is announced with. Pure: the
//! daemon's `bus` module receives and sends the bytes.
//!
//! Shapes read:
//! - Fedora Messaging `buildsys.build.state.change` (koji-fedoramessaging `BuildStateChangeV1`): `name`,
//!   `version`, `release`, `epoch`, `new` (1 = complete), `owner`, `task_id`, `build_id`, `instance`;
//! - Fedora Messaging `buildsys.tag` (`TagV1`): `name`, `version`, `release`, `tag`, `owner`, `user`,
//!   `build_id`, `instance`;
//! - UMB `VirtualTopic.eng.brew.build.complete` (koji's protonmsg): `{info: {nvr, name, version,
//!   release, owner_name, task_id, source, build_id, …}, attribute, old, new}`;
//! - UMB `VirtualTopic.eng.brew.build.tag`: `{tag: {name}, build: {…as info…}, user: {name}}`.

use globset::{Glob, GlobMatcher};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Koji's build state "complete".
pub const COMPLETE: i64 = 1;
/// CI messages' layout version written.
pub const CI_MESSAGES_VERSION: &str = "1.1.14";

/// A finished build a message told of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Build {
    pub nvr: String,
    pub name: String,
    pub version: String,
    pub release: String,
    pub owner: String,
    /// The tag the build went into (tag messages only).
    pub tag: String,
    /// `primary` on Fedora's koji; empty when the message does not say.
    pub instance: String,
    pub task_id: Option<u64>,
    pub build_id: Option<u64>,
    /// Where it was built from (`git+https://…#sha`), when the message says.
    pub source: String,
    /// `koji-build` (Fedora Messaging) or `brew-build` (UMB): the CI messages' artifact type.
    pub artifact_type: String,
}

/// What a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    Build(Box<Build>),
    /// A build message that starts nothing, and why (a build that failed, a state that is not the end).
    NotFinished(String),
}

fn text<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn number(object: &Map<String, Value>, key: &str) -> Option<u64> {
    match object.get(key)? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

fn required(object: &Map<String, Value>, key: &str, what: &str) -> Result<String, String> {
    match object.get(key) {
        Some(Value::String(value)) if !value.trim().is_empty() => Ok(value.clone()),
        Some(Value::Number(value)) => Ok(value.to_string()),
        Some(_) => Err(format!("{what}: field {key:?} is not a string")),
        None => Err(format!("{what}: field {key:?} is missing")),
    }
}

/// The build as Koji's `getBuild` has it (UMB's `info`, a tag message's `build`).
fn koji_build(info: &Map<String, Value>, what: &str) -> Result<Build, String> {
    let name = required(info, "name", what)?;
    let version = required(info, "version", what)?;
    let release = required(info, "release", what)?;
    let nvr = match text(info, "nvr") {
        Some(nvr) if !nvr.trim().is_empty() => nvr.to_string(),
        _ => format!("{name}-{version}-{release}"),
    };
    Ok(Build {
        owner: text(info, "owner_name")
            .or_else(|| text(info, "owner"))
            .unwrap_or_default()
            .to_string(),
        task_id: number(info, "task_id"),
        build_id: number(info, "build_id").or_else(|| number(info, "id")),
        source: text(info, "source").unwrap_or_default().to_string(),
        nvr,
        name,
        version,
        release,
        ..Build::default()
    })
}

/// A state change is a build only when its new state is complete.
fn finished(new: Option<&Value>, what: &str) -> Result<Option<String>, String> {
    match new {
        Some(Value::Number(state)) if state.as_i64() == Some(COMPLETE) => Ok(None),
        Some(Value::Number(state)) => Ok(Some(format!(
            "{what}: the build is in state {} ({}), not complete",
            state,
            koji_state(state.as_i64().unwrap_or(-1))
        ))),
        Some(Value::String(state)) if state.eq_ignore_ascii_case("complete") => Ok(None),
        Some(Value::String(state)) => Ok(Some(format!(
            "{what}: the build is in state {state}, not complete"
        ))),
        Some(_) => Err(format!("{what}: field \"new\" is not a build state")),
        None => Err(format!("{what}: field \"new\" is missing")),
    }
}

fn koji_state(state: i64) -> &'static str {
    match state {
        0 => "building",
        1 => "complete",
        2 => "deleted",
        3 => "failed",
        4 => "canceled",
        _ => "unknown",
    }
}

/// Reads a message's body. `Err` is a malformed message (not JSON, not one of the shapes, a field
/// missing), named for the log line; `NotFinished` a well-formed message that starts nothing.
pub fn read(body: &[u8]) -> Result<Reading, String> {
    let value: Value = serde_json::from_slice(body).map_err(|err| format!("not JSON: {err}"))?;
    // Some producers send the JSON as a JSON string (an AMQP 1.0 value holding text).
    let value = match value {
        Value::String(inner) => serde_json::from_str(&inner)
            .map_err(|err| format!("not JSON inside a string: {err}"))?,
        value => value,
    };
    let Value::Object(body) = value else {
        return Err("the body is not a JSON object".into());
    };
    if let Some(info) = body.get("info") {
        let Value::Object(info) = info else {
            return Err("UMB build message: field \"info\" is not an object".into());
        };
        // `info` is the build as it was before the change: the new state is the top-level `new`.
        if let Some(reason) = finished(body.get("new"), "UMB build message")? {
            return Ok(Reading::NotFinished(reason));
        }
        let mut build = koji_build(info, "UMB build message: info")?;
        build.artifact_type = "brew-build".into();
        return Ok(Reading::Build(Box::new(build)));
    }
    if let (Some(Value::Object(build)), Some(tag)) = (body.get("build"), body.get("tag")) {
        let mut read = koji_build(build, "UMB tag message: build")?;
        read.tag = match tag {
            Value::Object(tag) => required(tag, "name", "UMB tag message: tag")?,
            Value::String(tag) => tag.clone(),
            _ => return Err("UMB tag message: field \"tag\" is not an object".into()),
        };
        if read.owner.is_empty() {
            if let Some(Value::Object(user)) = body.get("user") {
                read.owner = text(user, "name").unwrap_or_default().to_string();
            }
        }
        read.artifact_type = "brew-build".into();
        return Ok(Reading::Build(Box::new(read)));
    }
    let what = if body.contains_key("tag") {
        "Koji tag message"
    } else {
        "Koji build message"
    };
    let mut build = koji_build(&body, what)?;
    build.instance = text(&body, "instance").unwrap_or_default().to_string();
    build.artifact_type = "koji-build".into();
    if body.contains_key("tag") {
        build.tag = required(&body, "tag", what)?;
        return Ok(Reading::Build(Box::new(build)));
    }
    if let Some(reason) = finished(body.get("new"), what)? {
        return Ok(Reading::NotFinished(reason));
    }
    Ok(Reading::Build(Box::new(build)))
}

/// The globs a rule matches builds with (any key left out matches everything).
#[derive(Clone, Debug, Default)]
pub struct Match {
    pub package: Option<GlobMatcher>,
    pub tag: Option<GlobMatcher>,
    pub owner: Option<GlobMatcher>,
    pub instance: Option<GlobMatcher>,
}

impl Match {
    /// Compiles `match`'s globs; the error names the key and the glob.
    pub fn new(
        package: Option<&str>,
        tag: Option<&str>,
        owner: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Match, String> {
        let glob = |key: &str, pattern: Option<&str>| -> Result<Option<GlobMatcher>, String> {
            pattern
                .map(|pattern| {
                    Glob::new(pattern)
                        .map(|glob| glob.compile_matcher())
                        .map_err(|err| format!("match.{key} = {pattern:?}: {err}"))
                })
                .transpose()
        };
        Ok(Match {
            package: glob("package", package)?,
            tag: glob("tag", tag)?,
            owner: glob("owner", owner)?,
            instance: glob("instance", instance)?,
        })
    }

    /// Whether a build matches: every key given matches its field; a `tag` rule matches only messages
    /// that name a tag.
    pub fn matches(&self, build: &Build) -> bool {
        let field = |matcher: &Option<GlobMatcher>, value: &str| {
            matcher
                .as_ref()
                .is_none_or(|matcher| !value.is_empty() && matcher.is_match(value))
        };
        field(&self.package, &build.name)
            && field(&self.tag, &build.tag)
            && field(&self.owner, &build.owner)
            && field(&self.instance, &build.instance)
    }
}

/// A run's state as CI messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Announce {
    Queued,
    Running,
    Complete,
    Error,
}

impl Announce {
    pub fn as_str(self) -> &'static str {
        match self {
            Announce::Queued => "queued",
            Announce::Running => "running",
            Announce::Complete => "complete",
            Announce::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Announce> {
        [
            Announce::Queued,
            Announce::Running,
            Announce::Complete,
            Announce::Error,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Announce::Complete | Announce::Error)
    }
}

/// Who sends the CI messages (`contact` of every message).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    #[serde(default = "default_contact_name")]
    pub name: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub docs: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub irc: String,
}

fn default_contact_name() -> String {
    "Polarizer".into()
}

/// One category's result in a run (CI messages' `test.result`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryResult {
    /// The tests' type (`functional`, `acceptance`, …) as the run has it.
    pub test_type: String,
    /// `passed`, `failed` or `needs_inspection` (errors, nothing run).
    pub result: String,
    pub tests: u64,
}

/// The CI messages category of a Polarizer test type (the spec's list: functional, integration,
/// interoperability, static-analysis, system, validation, performance).
pub fn category(test_type: &str) -> &'static str {
    match test_type {
        "integration" => "integration",
        "interoperability" => "interoperability",
        "static-analysis" | "lint" => "static-analysis",
        "system" => "system",
        "acceptance" | "validation" => "validation",
        "performance" => "performance",
        _ => "functional",
    }
}

/// Everything one CI message of a run says.
pub struct Announcement<'a> {
    pub state: Announce,
    pub build: &'a Build,
    pub contact: &'a Contact,
    pub run: u64,
    pub run_url: &'a str,
    /// `namespace` of `test` (`polarizer.brew-build`).
    pub namespace: &'a str,
    /// `type` of `test`, and the pipeline's name.
    pub test_type: &'a str,
    pub category: &'a CategoryResult,
    /// The error's reason (`Error` only).
    pub reason: &'a str,
    pub generated_at: &'a str,
    /// The run's platforms, as (os, provider, architecture); complete messages only.
    pub systems: &'a [(String, String, String)],
}

/// The topic a CI message goes to: `<prefix>.<artifact type>.test.<state>`.
pub fn topic(prefix: &str, artifact_type: &str, state: Announce) -> String {
    format!(
        "{}.{artifact_type}.test.{}",
        prefix.trim_end_matches('.'),
        state.as_str()
    )
}

/// A CI message (v1 layout) of a run.
pub fn ci_message(message: &Announcement<'_>) -> Value {
    let build = message.build;
    let contact = message.contact;
    let mut contact_json = json!({
        "name": contact.name,
        "team": contact.team,
        "email": contact.email,
        "docs": if contact.docs.is_empty() { message.run_url } else { contact.docs.as_str() },
    });
    for (key, value) in [("url", &contact.url), ("irc", &contact.irc)] {
        if !value.is_empty() {
            contact_json[key] = json!(value);
        }
    }
    let mut artifact = json!({
        "type": build.artifact_type,
        "id": build.task_id.or(build.build_id).unwrap_or(0),
        "issuer": build.owner,
        "component": build.name,
        "nvr": build.nvr,
        "scratch": false,
    });
    if !build.source.is_empty() {
        artifact["source"] = json!(build.source);
    }
    let result = message.category;
    let mut test = json!({
        "category": category(&result.test_type),
        "namespace": message.namespace,
        "type": message.test_type,
        "docs": contact_json["docs"],
        "note": format!("{} {} test{}", result.tests, result.test_type,
            if result.tests == 1 { "" } else { "s" }),
    });
    let mut body = json!({
        "contact": contact_json,
        "run": {
            "url": message.run_url,
            "log": message.run_url,
        },
        "artifact": artifact,
        "pipeline": {
            "id": format!("polarizer-run-{}-{}", message.run, result.test_type),
            "name": message.test_type,
        },
        "test": Value::Null,
        "generated_at": message.generated_at,
        "version": CI_MESSAGES_VERSION,
    });
    match message.state {
        Announce::Complete => {
            test["result"] = json!(result.result);
            test["xunit_urls"] = json!([format!("{}/report.xml", message.run_url)]);
            body["system"] = Value::Array(
                message
                    .systems
                    .iter()
                    .map(|(os, provider, architecture)| {
                        json!({"os": os, "provider": provider, "architecture": architecture})
                    })
                    .collect(),
            );
        }
        Announce::Error => {
            body["error"] = json!({"reason": message.reason});
        }
        Announce::Queued | Announce::Running => {}
    }
    body["test"] = test;
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(body: &str) -> Build {
        match read(body.as_bytes()) {
            Ok(Reading::Build(build)) => *build,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fedora_state_change_and_tag() {
        let change = build(
            r#"{"attribute":"state","build_id":1874070,"epoch":null,"instance":"primary","name":"python-ogr",
                "new":1,"old":0,"owner":"packit","release":"1.fc36","task_id":80860789,"version":"0.34.0"}"#,
        );
        assert_eq!(change.nvr, "python-ogr-0.34.0-1.fc36");
        assert_eq!(change.task_id, Some(80860789));
        assert_eq!(change.owner, "packit");
        assert_eq!(change.instance, "primary");
        assert_eq!(change.artifact_type, "koji-build");
        assert_eq!(change.tag, "");
        let tag = build(
            r#"{"base_url":"https://koji.fedoraproject.org","build_id":1234567,"instance":"primary",
                "name":"python-specfile","owner":"nforro","release":"1.fc40","tag":"f40-build-side-12345",
                "tag_id":12345,"user":"nforro","version":"0.31.0"}"#,
        );
        assert_eq!(tag.tag, "f40-build-side-12345");
        assert_eq!(tag.nvr, "python-specfile-0.31.0-1.fc40");
        let failed = read(br#"{"name":"a","version":"1","release":"1","new":3,"owner":"x"}"#);
        assert!(
            matches!(&failed, Ok(Reading::NotFinished(reason)) if reason.contains("failed")),
            "{failed:?}"
        );
    }

    #[test]
    fn umb_build_complete_trusts_new_over_info_state() {
        let body = r#"{"attribute":"state","old":0,"new":1,
            "info":{"id":547865,"build_id":547865,"nvr":"org.jboss-jboss-dmr-1.4.0.Final_redhat_1-1",
              "name":"org.jboss-jboss-dmr","version":"1.4.0.Final_redhat_1","release":"1","owner_name":"psakar",
              "task_id":12915073,"source":null,"state":0,"completion_time":null}}"#;
        let read_build = build(body);
        assert_eq!(read_build.nvr, "org.jboss-jboss-dmr-1.4.0.Final_redhat_1-1");
        assert_eq!(read_build.owner, "psakar");
        assert_eq!(read_build.artifact_type, "brew-build");
        // The same, as protonmsg sends it: the JSON as a string.
        let quoted = serde_json::to_string(body).unwrap();
        assert_eq!(build(&quoted), read_build);
        let tag = build(
            r#"{"tag":{"id":1,"name":"rhel-9.6.0-candidate"},"build":{"nvr":"subscription-manager-1.29.40-1.el9",
               "name":"subscription-manager","version":"1.29.40","release":"1.el9","task_id":5,"owner_name":""},
               "user":{"name":"jdoe"},"force":false}"#,
        );
        assert_eq!(
            (tag.tag.as_str(), tag.owner.as_str()),
            ("rhel-9.6.0-candidate", "jdoe")
        );
    }

    #[test]
    fn malformed_messages_are_named() {
        for (body, expected) in [
            ("{not json", "not JSON"),
            ("[1,2]", "not a JSON object"),
            (
                r#"{"info":{"name":"a","version":"1"},"new":1}"#,
                "\"release\" is missing",
            ),
            (r#"{"info":"x","new":1}"#, "not an object"),
            (
                r#"{"name":"a","version":"1","release":"1"}"#,
                "\"new\" is missing",
            ),
        ] {
            let err = read(body.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn rules_match_by_globs() {
        let rule = Match::new(
            Some("subscription-manager"),
            Some("rhel-9.*-candidate"),
            None,
            None,
        )
        .unwrap();
        let mut build = Build {
            name: "subscription-manager".into(),
            tag: "rhel-9.6.0-candidate".into(),
            ..Build::default()
        };
        assert!(rule.matches(&build));
        build.tag.clear();
        assert!(!rule.matches(&build), "a tag rule needs a tag message");
        build.tag = "rhel-10.0-candidate".into();
        assert!(!rule.matches(&build));
        assert!(Match::new(None, None, None, None).unwrap().matches(&build));
        let err = Match::new(Some("a[b"), None, None, None).unwrap_err();
        assert!(err.contains("match.package"), "{err}");
    }

    #[test]
    fn a_complete_message_has_the_v1_layout() {
        let build = Build {
            nvr: "setup-2.8.71-7.el7_4".into(),
            name: "setup".into(),
            owner: "alice".into(),
            task_id: Some(14546276),
            artifact_type: "brew-build".into(),
            ..Build::default()
        };
        let category = CategoryResult {
            test_type: "acceptance".into(),
            result: "failed".into(),
            tests: 3,
        };
        let systems = [(
            "RHEL-9.4".to_string(),
            "polarizer".to_string(),
            "x86_64".to_string(),
        )];
        let message = ci_message(&Announcement {
            state: Announce::Complete,
            build: &build,
            contact: &Contact {
                name: "Polarizer".into(),
                ..Contact::default()
            },
            run: 42,
            run_url: "https://polarizer.example/runs/42",
            namespace: "polarizer.brew-build",
            test_type: "tier1",
            category: &category,
            reason: "",
            generated_at: "2026-12-02T05:00:00Z",
            systems: &systems,
        });
        assert_eq!(message["artifact"]["id"], 14546276);
        assert_eq!(message["test"]["category"], "validation");
        assert_eq!(message["test"]["result"], "failed");
        assert_eq!(message["system"][0]["architecture"], "x86_64");
        assert_eq!(message["version"], CI_MESSAGES_VERSION);
        assert_eq!(
            topic("VirtualTopic.eng.ci", "brew-build", Announce::Complete),
            "VirtualTopic.eng.ci.brew-build.test.complete"
        );
    }
}
