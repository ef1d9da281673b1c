//! GitHub's REST API, the few calls Polarizer makes: a commit status, a check run (create, update), and
//! a GitHub App's installation token. Each answer is sorted into done, try again (when: `Retry-After`,
//! `X-RateLimit-Reset`, or backoff for a 5xx) and refused (a 4xx that will not change by itself). The
//! token is sent in a header only; it is never part of an error or a log line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::Auth;
use crate::core::github::{ReportState, ReportText};

/// An installation token lives an hour; it is used for at most this long.
const INSTALLATION_TOKEN_USE: Duration = Duration::from_secs(50 * 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Worth sending again: at `after` if GitHub said when (rate limits), else after a backoff.
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// GitHub refused it as sent (no access, a bad field): sent again only after a long wait.
    #[error("{message}")]
    Refused { message: String },
}

pub struct Api {
    client: reqwest::Client,
    base: String,
    auth: Auth,
    /// Installation tokens of a GitHub App, by repository, with when each was made.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
}

#[derive(Deserialize)]
struct CheckRun {
    id: u64,
}

impl Api {
    pub fn new(base: &str, auth: Auth) -> Result<Api, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "X-GitHub-Api-Version",
            HeaderValue::from_static("2022-11-28"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("polarizer/", env!("CARGO_PKG_VERSION"))),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
        Ok(Api {
            client,
            base: base.to_string(),
            auth,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Sends one request and sorts its answer. `bearer` is the token to sign in with.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        let mut value =
            HeaderValue::from_str(&format!("Bearer {bearer}")).map_err(|_| ApiError::Refused {
                message: "the token holds characters a header cannot".into(),
            })?;
        value.set_sensitive(true);
        request = request.header(AUTHORIZATION, value);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| ApiError::Retry {
            // Without the URL's query (none is used) and never a header.
            message: format!("{method} {path}: {}", without_url(&err)),
            after: None,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let said = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|value| {
                value
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let message = format!(
            "{method} {path}: {status}{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {}", crate::core::github::truncate(&said, 200))
            }
        );
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.trim().parse::<u64>().ok())
        };
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (header("retry-after").is_some()
                    || header("x-ratelimit-remaining") == Some(0)
                    || said.to_ascii_lowercase().contains("rate limit")));
        if rate_limited {
            let after = header("retry-after").map(Duration::from_secs).or_else(|| {
                header("x-ratelimit-reset").map(|reset| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    Duration::from_secs(reset.saturating_sub(now).max(1))
                })
            });
            return Err(ApiError::Retry {
                message,
                after: Some(after.unwrap_or(Duration::from_secs(60))),
            });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(ApiError::Retry {
                message,
                after: None,
            });
        }
        Err(ApiError::Refused { message })
    }

    /// The token to act on `repo` with.
    async fn token(&self, repo: &str) -> Result<String, ApiError> {
        match &self.auth {
            Auth::None => Err(ApiError::Refused {
                message: "no github.token_file or GitHub App is configured".into(),
            }),
            Auth::Token(token) => Ok(token.clone()),
            Auth::App {
                app_id,
                key,
                installation_id,
            } => {
                if let Some((token, made)) = self.tokens.lock().expect("tokens").get(repo) {
                    if made.elapsed() < INSTALLATION_TOKEN_USE {
                        return Ok(token.clone());
                    }
                }
                let jwt = app_jwt(*app_id, key)?;
                let installation = match installation_id {
                    Some(id) => *id,
                    None => {
                        let found = self
                            .call(
                                reqwest::Method::GET,
                                &format!("/repos/{repo}/installation"),
                                &jwt,
                                None,
                            )
                            .await?;
                        serde_json::from_value::<Installation>(found)
                            .map_err(|err| ApiError::Retry {
                                message: format!("the installation of {repo} does not read: {err}"),
                                after: None,
                            })?
                            .id
                    }
                };
                let made = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/app/installations/{installation}/access_tokens"),
                        &jwt,
                        Some(&json!({})),
                    )
                    .await?;
                let token = serde_json::from_value::<AccessToken>(made)
                    .map_err(|err| ApiError::Retry {
                        message: format!("an installation token that does not read: {err}"),
                        after: None,
                    })?
                    .token;
                self.tokens
                    .lock()
                    .expect("tokens")
                    .insert(repo.to_string(), (token.clone(), Instant::now()));
                Ok(token)
            }
        }
    }

    /// A commit status on `sha`.
    pub async fn post_status(
        &self,
        repo: &str,
        sha: &str,
        context: &str,
        state: ReportState,
        text: &ReportText,
        target_url: &str,
    ) -> Result<(), ApiError> {
        let token = self.token(repo).await?;
        let mut body = json!({
            "state": state.status(),
            "description": crate::core::github::truncate(&text.line, crate::core::github::STATUS_DESCRIPTION_MAX),
            "context": context,
        });
        if !target_url.is_empty() {
            body["target_url"] = json!(target_url);
        }
        self.call(
            reqwest::Method::POST,
            &format!("/repos/{repo}/statuses/{sha}"),
            &token,
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Creates (`id` none) or updates a check run; answers its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn check_run(
        &self,
        repo: &str,
        sha: &str,
        name: &str,
        id: Option<u64>,
        external_id: &str,
        state: ReportState,
        text: &ReportText,
        details_url: &str,
    ) -> Result<u64, ApiError> {
        let token = self.token(repo).await?;
        let (status, conclusion) = state.check();
        let mut body = json!({
            "name": name,
            "status": status,
            "external_id": external_id,
            "output": {
                "title": crate::core::github::truncate(&text.line, 255),
                "summary": if text.summary.is_empty() { text.line.clone() } else { text.summary.clone() },
                "annotations": text.annotations.iter().map(|annotation| json!({
                    "path": annotation.path,
                    "start_line": 1,
                    "end_line": 1,
                    "annotation_level": "failure",
                    "title": annotation.title,
                    "message": if annotation.message.is_empty() { annotation.title.clone() } else { annotation.message.clone() },
                })).collect::<Vec<_>>(),
            },
        });
        if let Some(conclusion) = conclusion {
            body["conclusion"] = json!(conclusion);
        }
        if !details_url.is_empty() {
            body["details_url"] = json!(details_url);
        }
        let answer = match id {
            None => {
                body["head_sha"] = json!(sha);
                self.call(
                    reqwest::Method::POST,
                    &format!("/repos/{repo}/check-runs"),
                    &token,
                    Some(&body),
                )
                .await?
            }
            Some(id) => {
                self.call(
                    reqwest::Method::PATCH,
                    &format!("/repos/{repo}/check-runs/{id}"),
                    &token,
                    Some(&body),
                )
                .await?
            }
        };
        match id {
            Some(id) => Ok(id),
            None => serde_json::from_value::<CheckRun>(answer)
                .map(|run| run.id)
                .map_err(|err| ApiError::Retry {
                    message: format!("a created check run that does not read: {err}"),
                    after: None,
                }),
        }
    }
}

/// A GitHub App's JWT: RS256, issued a minute ago (clock drift), valid nine minutes.
fn app_jwt(app_id: u64, key: &jsonwebtoken::EncodingKey) -> Result<String, ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims =
        json!({ "iat": now.saturating_sub(60), "exp": now + 540, "iss": app_id.to_string() });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        key,
    )
    .map_err(|err| ApiError::Refused {
        message: format!("cannot sign the App's JWT: {err}"),
    })
}

/// A transport error's text: what kind, and its causes, never the request's headers.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text += &format!(": {inner}");
        source = inner.source();
    }
    text
}
