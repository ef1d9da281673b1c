//! `[polarion]` in coordinator.toml: where Polarion is and how to sign in (a password or a token, from
//! a 0600 file), what the importer files say, and when results go up. Every mistake names the key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use polarizer_shared::polarion::LookupMethod;
use serde::Deserialize;

use crate::core::polarion::{check_template, PolarionSettings};
use polarizer_transport::daemon::InvalidSetting as ConfigError;

/// `[polarion]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolarionToml {
    /// `https://HOST/polarion`: the importers are under it (`/import/xunit`, `/import/testcase`).
    pub url: Option<String>,
    /// The Polarion project id (`RHEL`).
    pub project: String,
    /// With `user`: basic authentication with this password (a 0600 file).
    pub password_file: Option<PathBuf>,
    /// A personal access token (a 0600 file), sent as a bearer token.
    pub token_file: Option<PathBuf>,
    /// `on-finish` (every run's results go up when it ends) or `manual` (`polarizer polarion upload N`)
    /// [default: manual].
    pub upload_results: Option<String>,
    /// At most this many test cases per XUnit file; a larger run is uploaded in several imports into
    /// the same test run [default: 1000].
    pub chunk: Option<usize>,
    /// How often a job in Polarion's queue is looked at [default: 10s].
    pub poll_interval: Option<String>,
    /// After this, a job still queued is reported as slow (and still followed) [default: 10m].
    pub poll_timeout: Option<String>,
    /// `polarion-user-id` of the results.
    pub user: Option<String>,
    /// `id`, `name` or `custom` [default: custom].
    pub lookup_method: Option<String>,
    /// With `lookup_method = "custom"`: the field holding the fmf id [default: testCaseID].
    pub custom_lookup_field: Option<String>,
    pub testrun_template: Option<String>,
    /// Placeholders: {run} {kind} {component} {artifact} {arch} {distro} {commit} {ref} {repo}.
    pub testrun_title: Option<String>,
    /// [default: polarizer-{run}]
    pub testrun_id: Option<String>,
    /// `polarion-custom-<key>` of the test run; values take the same placeholders.
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
    /// Send skipped tests (as waiting) [default: true].
    pub include_skipped: Option<bool>,
}

fn bad(key: &'static str, message: String) -> ConfigError {
    ConfigError { key, message }
}

/// How Polarizer signs in to Polarion.
#[derive(Clone)]
pub enum PolarionAuth {
    None,
    Basic { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for PolarionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolarionAuth::None => f.write_str("None"),
            PolarionAuth::Basic { user, .. } => write!(f, "Basic({user}, …)"),
            PolarionAuth::Token(_) => f.write_str("Token(…)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadResults {
    OnFinish,
    Manual,
}

#[derive(Clone, Debug)]
pub struct PolarionConfig {
    pub settings: PolarionSettings,
    /// Empty: no uploads (files only).
    pub url: String,
    pub auth: PolarionAuth,
    pub upload_results: UploadResults,
    pub chunk: usize,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
}

fn secret(key: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = polarizer_transport::state_files::read_private(path)
        .map_err(|err| bad(key, err.to_string()))?;
    if text.is_empty() {
        return Err(bad(key, format!("{} is empty", path.display())));
    }
    Ok(text)
}

fn duration(key: &'static str, given: Option<&str>, default: u64) -> Result<Duration, ConfigError> {
    match given {
        None => Ok(Duration::from_secs(default)),
        Some(text) => polarizer_shared::metadata::parse_duration_seconds(text)
            .filter(|seconds| (1..=86_400).contains(seconds))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                bad(
                    key,
                    format!("{text:?} is not a duration from 1s to a day (like 10s, 5m)"),
                )
            }),
    }
}

pub fn validate(toml: PolarionToml) -> Result<PolarionConfig, ConfigError> {
    let url = match toml.url.as_deref() {
        None | Some("") => String::new(),
        Some(text) => {
            let text = text.trim_end_matches('/');
            let host = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"))
                .ok_or_else(|| bad("polarion.url", format!("{text:?} is not an http(s) URL")))?;
            let host = host.split(['/', ':']).next().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if text.starts_with("http://") && !loopback {
                return Err(bad(
                    "polarion.url",
                    format!("{text:?}: http:// would send the password in clear; use https://"),
                ));
            }
            text.to_string()
        }
    };
    let user = toml.user.clone().unwrap_or_default();
    let auth = match (toml.password_file.as_deref(), toml.token_file.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "polarion.token_file",
                "give either password_file (with user) or token_file, not both".into(),
            ))
        }
        (Some(path), None) => {
            if user.is_empty() {
                return Err(bad(
                    "polarion.user",
                    "password_file needs the user it belongs to".into(),
                ));
            }
            PolarionAuth::Basic {
                user: user.clone(),
                password: secret("polarion.password_file", path)?,
            }
        }
        (None, Some(path)) => PolarionAuth::Token(secret("polarion.token_file", path)?),
        (None, None) => PolarionAuth::None,
    };
    let upload_results = match toml.upload_results.as_deref() {
        None | Some("manual") => UploadResults::Manual,
        Some("on-finish") => UploadResults::OnFinish,
        Some(other) => {
            return Err(bad(
                "polarion.upload_results",
                format!("{other:?} is not on-finish or manual"),
            ))
        }
    };
    if upload_results == UploadResults::OnFinish && url.is_empty() {
        return Err(bad(
            "polarion.url",
            "upload_results = \"on-finish\" needs the url".into(),
        ));
    }
    let chunk = toml.chunk.unwrap_or(1000);
    if !(1..=100_000).contains(&chunk) {
        return Err(bad(
            "polarion.chunk",
            format!("{chunk} is not between 1 and 100000"),
        ));
    }
    let poll_interval = duration("polarion.poll_interval", toml.poll_interval.as_deref(), 10)?;
    let poll_timeout = duration("polarion.poll_timeout", toml.poll_timeout.as_deref(), 600)?;
    Ok(PolarionConfig {
        settings: settings(toml)?,
        url,
        auth,
        upload_results,
        chunk,
        poll_interval,
        poll_timeout,
    })
}

fn settings(toml: PolarionToml) -> Result<PolarionSettings, ConfigError> {
    let defaults = PolarionSettings::default();
    let project = toml.project.trim().to_string();
    if project.is_empty()
        || !project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        return Err(bad(
            "polarion.project",
            format!("{project:?} is not a Polarion project id"),
        ));
    }
    let lookup_method = match toml.lookup_method.as_deref() {
        None => defaults.lookup_method,
        Some(text) => LookupMethod::parse(text).ok_or_else(|| {
            bad(
                "polarion.lookup_method",
                format!("{text:?} is not id, name or custom"),
            )
        })?,
    };
    let template = |key: &'static str, given: Option<String>, default: String| {
        let text = given.unwrap_or(default);
        check_template(&text).map_err(|message| bad(key, message))?;
        Ok::<String, ConfigError>(text)
    };
    let mut custom = BTreeMap::new();
    for (key, value) in toml.custom {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            return Err(bad(
                "polarion.custom",
                format!("{key:?} is not a custom field id"),
            ));
        }
        check_template(&value).map_err(|message| bad("polarion.custom", message))?;
        custom.insert(key, value);
    }
    Ok(PolarionSettings {
        project,
        user: toml.user.unwrap_or_default(),
        lookup_method,
        custom_lookup_field: toml
            .custom_lookup_field
            .unwrap_or(defaults.custom_lookup_field),
        testrun_template: toml.testrun_template.unwrap_or_default(),
        testrun_title: template(
            "polarion.testrun_title",
            toml.testrun_title,
            defaults.testrun_title,
        )?,
        testrun_id: template("polarion.testrun_id", toml.testrun_id, defaults.testrun_id)?,
        custom,
        include_skipped: toml.include_skipped.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_name_the_key() {
        let err = validate(PolarionToml {
            project: "RHEL".into(),
            lookup_method: Some("uuid".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("polarion.lookup_method"), "{err}");
        let err = validate(PolarionToml {
            project: "RHEL".into(),
            testrun_title: Some("{nvr} run".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("testrun_title") && err.contains("{nvr}"),
            "{err}"
        );
        let config = validate(PolarionToml {
            project: "RHEL".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.settings.testrun_id, "polarizer-{run}");
        let err = validate(PolarionToml {
            project: "RHEL".into(),
            url: Some("http://polarion.example.com/polarion".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("polarion.url") && err.contains("clear"),
            "{err}"
        );
    }
}
