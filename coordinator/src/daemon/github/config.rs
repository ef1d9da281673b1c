//! `[github]` and `[[github.repos]]` in coordinator.toml: the webhook's secret, how Polarizer signs in
//! to GitHub's API (a token, or a GitHub App), and which repositories start runs. Secrets are read once,
//! at start, from files only other users cannot read; every mistake names the key (and the repository).

use std::path::PathBuf;
use std::time::Duration;

use polarizer_shared::run::TriggerKind;
use serde::Deserialize;

use polarizer_transport::daemon::InvalidSetting as ConfigError;

/// `[github]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// The secret GitHub signs deliveries with (`X-Hub-Signature-256`), in a 0600 file.
    pub webhook_secret_file: Option<PathBuf>,
    /// A token (fine-grained or classic, with commit statuses: write) in a 0600 file.
    pub token_file: Option<PathBuf>,
    /// A GitHub App (needed for check runs): its id and its private key (PEM) in a 0600 file.
    pub app_id: Option<u64>,
    pub private_key_file: Option<PathBuf>,
    /// The App's installation; absent: looked up per repository.
    pub installation_id: Option<u64>,
    /// [default: https://api.github.com]; GitHub Enterprise Server: https://HOST/api/v3
    pub api_url: Option<String>,
    /// Where people reach this coordinator: reports link to `PUBLIC_URL/runs/N`.
    pub public_url: Option<String>,
    /// The same commit and event kind of a repository again within this time is a duplicate (org and
    /// repository hooks both deliver) [default: 10m]
    pub dedup_window: Option<String>,
    #[serde(default)]
    pub repos: Vec<RepoSettings>,
}

/// One `[[github.repos]]` table as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// `owner/repo` as GitHub names it.
    pub name: String,
    /// Where the fmf tree lives: a git URL [default: the repository itself].
    pub tests: Option<String>,
    /// For a separate test repository: the ref to run [default: the pushed or pull request's commit].
    pub tests_ref: Option<String>,
    /// Where the repository's code is fetched from to find the paths a change touches [default: the
    /// web host of `api_url` + `/owner/repo.git`].
    pub clone_url: Option<String>,
    /// The trigger kind: `commit`, `build` or `manual`, which picks the test types [default: commit].
    pub kind: Option<String>,
    /// `checks` (a GitHub App), `statuses` or `none` [default: statuses].
    pub report: Option<String>,
    /// The status context or check name [default: polarizer/<kind>].
    pub context: Option<String>,
    /// A tmt plan of the tree to run (`/plans/ci`) [default: none, the change's selection].
    pub plan: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Checks,
    Statuses,
    None,
}

impl Report {
    pub fn as_str(self) -> &'static str {
        match self {
            Report::Checks => "checks",
            Report::Statuses => "statuses",
            Report::None => "none",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RepoConfig {
    pub name: String,
    pub tests: String,
    /// Empty: the change's own commit.
    pub tests_ref: String,
    pub clone_url: String,
    pub kind: TriggerKind,
    pub report: Report,
    pub context: String,
    pub plan: String,
}

impl RepoConfig {
    /// Are the tests in the repository that changed (so the run is pinned to the change's commit)?
    pub fn tests_in_repo(&self) -> bool {
        self.tests_ref.is_empty() && self.tests == self.clone_url
    }
}

/// How Polarizer signs in to the API.
#[derive(Clone)]
pub enum Auth {
    None,
    Token(String),
    App {
        app_id: u64,
        key: jsonwebtoken::EncodingKey,
        installation_id: Option<u64>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(…)"),
            Auth::App { app_id, .. } => write!(f, "App({app_id})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GithubConfig {
    pub webhook_secret: Vec<u8>,
    pub auth: Auth,
    pub api_url: String,
    pub public_url: String,
    pub dedup_window: Duration,
    pub repos: Vec<RepoConfig>,
}

impl GithubConfig {
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos
            .iter()
            .find(|repo| repo.name.eq_ignore_ascii_case(name))
    }

    /// Where a run is shown: `public_url/runs/N`, or empty when no public URL is set.
    pub fn run_url(&self, run: u64) -> String {
        if self.public_url.is_empty() {
            String::new()
        } else {
            format!("{}/runs/{run}", self.public_url)
        }
    }
}

fn bad(key: &'static str, message: String) -> ConfigError {
    ConfigError { key, message }
}

fn secret_file(key: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = polarizer_transport::state_files::read_private(path)
        .map_err(|err| bad(key, err.to_string()))?;
    if text.is_empty() {
        return Err(bad(key, format!("{} is empty", path.display())));
    }
    Ok(text)
}

/// Checks an API or public URL: `https://`, or `http://` on loopback only (a token must not cross a
/// network in clear).
fn check_url(key: &'static str, text: &str) -> Result<String, ConfigError> {
    let text = text.trim_end_matches('/');
    let rest = if let Some(rest) = text.strip_prefix("https://") {
        rest
    } else if let Some(rest) = text.strip_prefix("http://") {
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && key == "github.api_url" {
            return Err(bad(
                key,
                format!("{text:?}: http:// would send the token in clear; use https://"),
            ));
        }
        rest
    } else {
        return Err(bad(key, format!("{text:?} is not an http(s) URL")));
    };
    if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(key, format!("{text:?} is not a URL")));
    }
    Ok(text.to_string())
}

/// The web host's clone URL for `owner/repo` (`api.github.com` → `github.com`; GHES `HOST/api/v3` →
/// `HOST`).
fn default_clone_url(api_url: &str, name: &str) -> String {
    let web = if api_url == "https://api.github.com" {
        "https://github.com".to_string()
    } else {
        api_url.trim_end_matches("/api/v3").to_string()
    };
    format!("{web}/{name}.git")
}

pub fn validate(settings: GithubSettings) -> Result<GithubConfig, ConfigError> {
    let Some(secret_path) = settings.webhook_secret_file else {
        return Err(bad(
            "github.webhook_secret_file",
            "is required: deliveries are accepted only when signed with it".into(),
        ));
    };
    let webhook_secret = secret_file("github.webhook_secret_file", &secret_path)?.into_bytes();
    let api_url = check_url(
        "github.api_url",
        settings
            .api_url
            .as_deref()
            .unwrap_or("https://api.github.com"),
    )?;
    let public_url = match settings.public_url.as_deref() {
        None | Some("") => String::new(),
        Some(text) => check_url("github.public_url", text)?,
    };
    let auth = match (
        settings.token_file,
        settings.app_id,
        settings.private_key_file,
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(bad(
                "github.token_file",
                "give either token_file or app_id with private_key_file, not both".into(),
            ))
        }
        (Some(path), None, None) => Auth::Token(secret_file("github.token_file", &path)?),
        (None, Some(app_id), Some(path)) => {
            let pem = secret_file("github.private_key_file", &path)?;
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|err| {
                bad(
                    "github.private_key_file",
                    format!("{}: not an RSA private key in PEM: {err}", path.display()),
                )
            })?;
            Auth::App {
                app_id,
                key,
                installation_id: settings.installation_id,
            }
        }
        (None, Some(_), None) => {
            return Err(bad(
                "github.private_key_file",
                "app_id needs the App's private key file".into(),
            ))
        }
        (None, None, Some(_)) => {
            return Err(bad(
                "github.app_id",
                "private_key_file needs the App's id".into(),
            ))
        }
        (None, None, None) => Auth::None,
    };
    let dedup_window = match settings.dedup_window.as_deref() {
        None => Duration::from_secs(600),
        Some(text) => polarizer_shared::metadata::parse_duration_seconds(text)
            .filter(|seconds| *seconds <= 7 * 86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                bad(
                    "github.dedup_window",
                    format!("{text:?} is not a duration up to a week (like 0, 90s, 10m)"),
                )
            })?,
    };
    let mut repos: Vec<RepoConfig> = Vec::new();
    for (index, repo) in settings.repos.into_iter().enumerate() {
        let named = |message: String| {
            bad(
                "github.repos",
                format!("[{index}] ({:?}): {message}", repo.name),
            )
        };
        crate::core::github::check_repo_name(&repo.name).map_err(|err| named(err.to_string()))?;
        if repos
            .iter()
            .any(|other| other.name.eq_ignore_ascii_case(&repo.name))
        {
            return Err(named("named twice".into()));
        }
        let kind = match repo.kind.as_deref() {
            None => TriggerKind::Commit,
            Some(text) => TriggerKind::parse(text)
                .ok_or_else(|| named(format!("kind: {text:?} is not commit, build or manual")))?,
        };
        let report = match repo.report.as_deref() {
            None | Some("statuses") => Report::Statuses,
            Some("checks") => Report::Checks,
            Some("none") => Report::None,
            Some(other) => {
                return Err(named(format!(
                    "report: {other:?} is not checks, statuses or none"
                )))
            }
        };
        match (&auth, report) {
            (Auth::None, Report::Checks | Report::Statuses) => {
                return Err(named(format!(
                    "report = {:?} needs github.token_file, or github.app_id and github.private_key_file",
                    report.as_str()
                )))
            }
            (Auth::Token(_), Report::Checks) => {
                return Err(named(
                    "report = \"checks\" needs a GitHub App (github.app_id and github.private_key_file): GitHub takes check runs from Apps only".into(),
                ))
            }
            _ => {}
        }
        let clone_url = match repo.clone_url {
            Some(url) => url,
            None => default_clone_url(&api_url, &repo.name),
        };
        polarizer_transport::git::check_url(&clone_url)
            .map_err(|err| named(format!("clone_url: {err}")))?;
        let tests = repo.tests.unwrap_or_else(|| clone_url.clone());
        if !crate::core::source::is_git_url(&tests) {
            return Err(named(format!("tests: {tests:?} is not a git URL")));
        }
        polarizer_transport::git::check_url(&tests)
            .map_err(|err| named(format!("tests: {err}")))?;
        let tests_ref = repo.tests_ref.unwrap_or_default();
        if !tests_ref.is_empty() {
            polarizer_transport::git::check_ref(&tests_ref)
                .map_err(|err| named(format!("tests_ref: {err}")))?;
        }
        let context = repo
            .context
            .unwrap_or_else(|| format!("polarizer/{}", kind.as_str()));
        if context.is_empty() || context.len() > 100 {
            return Err(named("context: must be 1 to 100 characters".into()));
        }
        repos.push(RepoConfig {
            name: repo.name,
            tests,
            tests_ref,
            clone_url,
            kind,
            report,
            context,
            plan: repo.plan.unwrap_or_default(),
        });
    }
    Ok(GithubConfig {
        webhook_secret,
        auth,
        api_url,
        public_url,
        dedup_window,
        repos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(dir: &std::path::Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn repo(name: &str, report: &str) -> RepoSettings {
        RepoSettings {
            name: name.into(),
            report: Some(report.into()),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_must_be_private_and_mistakes_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret(dir.path(), "open", 0o644);
        let err = validate(GithubSettings {
            webhook_secret_file: Some(open),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("webhook_secret_file") && err.contains("chmod 600"),
            "{err}"
        );
        let private = secret(dir.path(), "private", 0o600);
        let err = validate(GithubSettings {
            webhook_secret_file: Some(private.clone()),
            token_file: Some(private.clone()),
            repos: vec![repo("octo/hello", "checks")],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("octo/hello") && err.contains("GitHub App"),
            "{err}"
        );
        let err = validate(GithubSettings {
            webhook_secret_file: Some(private.clone()),
            token_file: Some(private.clone()),
            api_url: Some("http://github.example.com/api/v3".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("api_url") && err.contains("clear"), "{err}");
        let config = validate(GithubSettings {
            webhook_secret_file: Some(private.clone()),
            token_file: Some(private),
            repos: vec![repo("octo/hello", "statuses")],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.webhook_secret, b"s3cret");
        assert_eq!(
            config.repos[0].clone_url,
            "https://github.com/octo/hello.git"
        );
        assert_eq!(config.repos[0].context, "polarizer/commit");
        assert!(config.repos[0].tests_in_repo());
        assert!(!format!("{:?}", config.auth).contains("s3cret"));
    }
}
