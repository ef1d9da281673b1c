//! GitHub for the tests: an HTTP server on loopback that answers the REST calls Polarizer makes as
//! api.github.com does (commit statuses, check runs, an App's installation and its tokens), records
//! each, and fails on demand as GitHub does (403 with the rate-limit headers, 502 from its front end).
//! And the other direction: webhook deliveries shaped as GitHub sends them, signed with the secret.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One API call as the fake received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub body: Value,
    /// What the fake answered.
    pub status: u16,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// A failure to answer the next call whose path contains `path_contains` with.
#[derive(Clone, Debug)]
pub enum Failure {
    /// 403, `x-ratelimit-remaining: 0`, reset in a second: GitHub's primary rate limit.
    RateLimited,
    /// 403 with `retry-after: 1`: a secondary rate limit.
    SecondaryRateLimited,
    /// 502 with GitHub's front end's HTML page.
    BadGateway,
}

#[derive(Default)]
struct Shared {
    calls: Vec<Call>,
    failures: VecDeque<(String, Failure)>,
    next_check_run: u64,
}

pub struct FakeGithub {
    pub addr: SocketAddr,
    /// The token statuses must carry (`Bearer TOKEN`); App calls carry a JWT, then this installation token.
    pub token: String,
    pub installation_token: String,
    shared: Arc<Mutex<Shared>>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    token: String,
    installation_token: String,
}

impl FakeGithub {
    pub fn start() -> FakeGithub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Arc::new(Mutex::new(Shared {
            next_check_run: 4000,
            ..Default::default()
        }));
        let state = AppState {
            shared: shared.clone(),
            token: "ghp_faketoken0123456789".into(),
            installation_token: "ghs_fakeinstallation0123456789".into(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeGithub {
            addr,
            token: state.token,
            installation_token: state.installation_token,
            shared,
            _runtime: runtime,
        }
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().unwrap().calls.clone()
    }

    /// The calls answered 2xx whose path contains `path_contains`.
    pub fn accepted(&self, path_contains: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.path.contains(path_contains) && call.status < 300)
            .collect()
    }

    /// The commit statuses GitHub took for `sha`, oldest first.
    pub fn statuses(&self, sha: &str) -> Vec<Value> {
        self.accepted(&format!("/statuses/{sha}"))
            .into_iter()
            .map(|call| call.body)
            .collect()
    }

    /// Drops every failure not yet answered (GitHub has recovered).
    pub fn clear_failures(&self) {
        self.shared.lock().unwrap().failures.clear();
    }

    /// Answers the next call whose path contains `path_contains` with `failure`.
    pub fn fail_next(&self, path_contains: &str, failure: Failure) {
        self.shared
            .lock()
            .unwrap()
            .failures
            .push_back((path_contains.to_string(), failure));
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.as_u16().to_string(),
        })
        .to_string(),
    )
        .into_response()
}

fn created(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            ("content-type", "application/json; charset=utf-8"),
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4999"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn answer(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = std::time::Instant::now();
    let path = uri.path().to_string();
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = respond(&state, &method, &path, &authorization, &headers, &body);
    state.shared.lock().unwrap().calls.push(Call {
        method: method.to_string(),
        path,
        authorization,
        body,
        status: response.status().as_u16(),
        at,
    });
    response
}

fn respond(
    state: &AppState,
    method: &Method,
    path: &str,
    authorization: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    let failure = {
        let mut shared = state.shared.lock().unwrap();
        let index = shared
            .failures
            .iter()
            .position(|(contains, _)| path.contains(contains.as_str()));
        index.and_then(|index| shared.failures.remove(index))
    };
    if let Some((_, failure)) = failure {
        return match failure {
            Failure::RateLimited => {
                let reset = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 1;
                (
                    StatusCode::FORBIDDEN,
                    [
                        ("content-type", "application/json; charset=utf-8".to_string()),
                        ("x-ratelimit-limit", "5000".to_string()),
                        ("x-ratelimit-remaining", "0".to_string()),
                        ("x-ratelimit-used", "5000".to_string()),
                        ("x-ratelimit-reset", reset.to_string()),
                        ("x-ratelimit-resource", "core".to_string()),
                    ],
                    json!({
                        "message": "API rate limit exceeded for installation ID 42.",
                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    })
                    .to_string(),
                )
                    .into_response()
            }
            Failure::SecondaryRateLimited => (
                StatusCode::FORBIDDEN,
                [
                    ("content-type", "application/json; charset=utf-8"),
                    ("retry-after", "1"),
                ],
                json!({
                    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                })
                .to_string(),
            )
                .into_response(),
            Failure::BadGateway => (
                StatusCode::BAD_GATEWAY,
                [("content-type", "text/html")],
                "<html><body><h1>502 Bad Gateway</h1></body></html>".to_string(),
            )
                .into_response(),
        };
    }
    if headers
        .get("user-agent")
        .is_none_or(|agent| agent.is_empty())
    {
        // GitHub refuses requests without a User-Agent.
        return error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let bearer = authorization.strip_prefix("Bearer ").unwrap_or_default();
    let is_jwt = bearer.split('.').count() == 3 && bearer.starts_with("eyJ");
    let repo_token_ok = bearer == state.token || bearer == state.installation_token;
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["repos", owner, repo, "installation"]) => {
            if !is_jwt {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "A JSON web token could not be decoded",
                );
            }
            created(
                StatusCode::OK,
                json!({"id": 42, "account": {"login": owner}, "repository_selection": "selected", "app_id": 1, "target_type": "Organization", "repo": repo}),
            )
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if !is_jwt {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "A JSON web token could not be decoded",
                );
            }
            if *id != "42" {
                return error(StatusCode::NOT_FOUND, "Not Found");
            }
            created(
                StatusCode::CREATED,
                json!({"token": state.installation_token, "expires_at": "2099-01-01T00:00:00Z", "permissions": {"checks": "write", "statuses": "write"}, "repository_selection": "selected"}),
            )
        }
        ("POST", ["repos", _, _, "statuses", sha]) => {
            if !repo_token_ok {
                return error(StatusCode::UNAUTHORIZED, "Bad credentials");
            }
            let state_field = body
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let description = body
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if sha.len() != 40
                || !["error", "failure", "pending", "success"].contains(&state_field)
                || description.chars().count() > 140
            {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
            }
            created(
                StatusCode::CREATED,
                json!({"id": 1, "state": state_field, "description": description, "context": body.get("context"), "target_url": body.get("target_url")}),
            )
        }
        ("POST", ["repos", _, _, "check-runs"]) => {
            if bearer != state.installation_token {
                return error(
                    StatusCode::FORBIDDEN,
                    "You must authenticate via a GitHub App.",
                );
            }
            if body.get("head_sha").and_then(Value::as_str).map(str::len) != Some(40)
                || body.get("name").and_then(Value::as_str).is_none()
            {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
            }
            let id = {
                let mut shared = state.shared.lock().unwrap();
                shared.next_check_run += 1;
                shared.next_check_run
            };
            created(
                StatusCode::CREATED,
                json!({"id": id, "head_sha": body["head_sha"], "status": body.get("status"), "name": body["name"]}),
            )
        }
        ("PATCH", ["repos", _, _, "check-runs", id]) => {
            if bearer != state.installation_token {
                return error(
                    StatusCode::FORBIDDEN,
                    "You must authenticate via a GitHub App.",
                );
            }
            if body.get("annotations").is_some()
                || body
                    .pointer("/output/annotations")
                    .and_then(Value::as_array)
                    .is_some_and(|annotations| annotations.len() > 50)
            {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
            }
            created(
                StatusCode::OK,
                json!({"id": id.parse::<u64>().unwrap_or(0), "status": body.get("status"), "conclusion": body.get("conclusion")}),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// A repository object as webhook payloads carry it.
fn repository(full_name: &str, clone_url: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    json!({
        "id": 1296269,
        "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
        "name": name,
        "full_name": full_name,
        "private": false,
        "owner": {"login": owner, "id": 1, "type": "Organization", "site_admin": false},
        "html_url": format!("https://github.com/{full_name}"),
        "fork": false,
        "url": format!("https://api.github.com/repos/{full_name}"),
        "clone_url": clone_url,
        "git_url": format!("git://github.com/{full_name}.git"),
        "ssh_url": format!("git@github.com:{full_name}.git"),
        "default_branch": "main",
        "master_branch": "main",
        "visibility": "public",
    })
}

/// A `push` payload as GitHub sends it (the fields Polarizer reads, among the usual others).
pub fn push_payload(full_name: &str, git_ref: &str, before: &str, after: &str) -> Value {
    let zero = "0".repeat(40);
    json!({
        "ref": git_ref,
        "before": before,
        "after": after,
        "created": before == zero,
        "deleted": after == zero,
        "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/{full_name}/compare/{}...{}", &before[..12], &after[..12]),
        "commits": [{"id": after, "tree_id": after, "distinct": true, "message": "change", "timestamp": "2026-12-01T12:00:00Z",
                     "author": {"name": "Octo Cat", "email": "octocat@github.com", "username": "octocat"},
                     "added": [], "removed": [], "modified": ["README.md"]}],
        "head_commit": {"id": after, "message": "change"},
        "repository": repository(full_name, &format!("https://github.com/{full_name}.git")),
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
    })
}

/// A pull request as its payloads describe it; `head_repo` differs from `repo` for one from a fork.
pub struct PullRequest<'a> {
    pub repo: &'a str,
    pub head_repo: &'a str,
    pub number: u64,
    pub head_ref: &'a str,
    pub head_sha: &'a str,
    pub base_ref: &'a str,
    pub base_sha: &'a str,
}

/// A `pull_request` payload with `action` (`opened`, `synchronize`, ...).
pub fn pull_request_payload(pull: &PullRequest<'_>, action: &str) -> Value {
    let PullRequest {
        repo: full_name,
        head_repo,
        number,
        head_ref,
        head_sha,
        base_ref,
        base_sha,
    } = *pull;
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "url": format!("https://api.github.com/repos/{full_name}/pulls/{number}"),
            "id": 1, "number": number, "state": "open", "locked": false, "title": "A change",
            "user": {"login": "contributor", "id": 2, "type": "User"},
            "head": {"label": format!("{}:{head_ref}", head_repo.split('/').next().unwrap()), "ref": head_ref, "sha": head_sha,
                     "repo": repository(head_repo, &format!("https://github.com/{head_repo}.git"))},
            "base": {"label": format!("{}:{base_ref}", full_name.split('/').next().unwrap()), "ref": base_ref, "sha": base_sha,
                     "repo": repository(full_name, &format!("https://github.com/{full_name}.git"))},
            "draft": false, "merged": false, "mergeable": null,
        },
        "repository": repository(full_name, &format!("https://github.com/{full_name}.git")),
        "sender": {"login": "contributor", "id": 2, "type": "User"},
    })
}

/// `sha256=HEX` of `body` under `secret`, as GitHub signs.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!(
        "sha256={}",
        tag.as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    )
}

/// Sends a delivery to `POST /hooks/github` with GitHub's headers: `signature` `None` signs it with
/// `secret`, `Some("")` sends none. Answers the status and body.
pub fn deliver(
    http: SocketAddr,
    secret: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signature = match signature {
        None => sign(secret, body),
        Some(given) => given.to_string(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut request = client
            .post(format!("http://{http}/hooks/github"))
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/f1aa8e4")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-github-hook-id", "292430182")
            .header("x-github-hook-installation-target-type", "repository")
            .body(body.to_vec());
        if !signature.is_empty() {
            request = request.header("x-hub-signature-256", signature);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(err) => (0, err.to_string()),
        }
    })
}
