//! The web view on the coordinator's HTTP port: server-rendered pages (`core::pages`), `app.js` and
//! `style.css` for their live parts, and how a browser logs in.
//!
//! A browser has no operator token, so `polarizer open PATH` (an operator, over QUIC) asks for a
//! one-time link: `/login?code=…`, valid five minutes, good once. Following it sets a session cookie
//! (`polarizer_session`: HttpOnly, SameSite=Lax, Secure under https) that the pages and the JSON API
//! accept as they accept the bearer token. Sessions live in memory: a restart logs browsers out.
//! A request authorised by the cookie that changes something (a POST) or opens a WebSocket must come
//! from this origin (its `Origin` header), so another site cannot act with a visitor's cookie.

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use polarizer_shared::catalog::TestQuery;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use polarizer_transport::state_files::secret_digest;
use serde::Deserialize;

use crate::core::pages;
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::daemon::operator::respond;

pub mod logins;
pub use logins::{Logins, LINK_TTL_MS, SESSION_TTL_MS};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "polarizer_session";
/// The session cookie's value in a request's `Cookie` headers.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == SESSION_COOKIE)
        .map(|cookie| cookie.value().to_string())
}

/// Whether the request's `Origin` is this site (the host it was sent to). `None` when it has none.
fn same_origin(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let authority = origin.parse::<Uri>().ok().and_then(|uri| {
        uri.authority()
            .map(|authority| authority.as_str().to_string())
    });
    Some(
        matches!((authority, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host)),
    )
}

/// Why a request is not authorised, in a sentence for the 401.
pub fn refusal(context: &Context, request: &Request) -> Option<&'static str> {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        return (token.is_empty()
            || secret_digest(token) != context.settings.operator_token_digest)
            .then_some("the bearer token is not this coordinator's operator token");
    }
    let Some(session) = session_cookie(headers) else {
        return Some("the operator token is needed: Authorization: Bearer TOKEN");
    };
    if !context.web.session_valid(&session, now_ms()) {
        return Some("this browser's session has ended (a restart, or 12 hours): log in again");
    }
    let upgrade = headers.contains_key(header::UPGRADE);
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    match same_origin(headers) {
        Some(false) => Some("a request from another site may not use this site's session"),
        None if changes || upgrade => {
            Some("a browser's request that changes something must say its Origin")
        }
        _ => None,
    }
}

/// The pages, static files, login and logout.
pub fn router(context: Context) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(runs_page))
        .route("/runs/{run}", get(run_page))
        .route("/agents", get(agents_page))
        .route("/tests", get(tests_page))
        .route("/features", get(features_page))
        .route("/triggers", get(triggers_page))
        .route("/fragments/runs", get(runs_rows))
        .route("/fragments/agents", get(agents_rows))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(context.clone(), authorise))
        .route("/login", get(login))
        .route("/static/app.js", get(app_js))
        .route("/static/style.css", get(style_css))
        .route("/static/icon.svg", get(icon))
        .route("/favicon.ico", get(icon));
    pages
        .layer(middleware::map_response(secure_headers))
        .with_state(context)
}

/// What every page and file of the view is sent with: only this origin's script and style, never in a
/// frame, no referrer to other sites (a login link's code stays out of their logs).
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under the latter a browser's form posts say `Origin: null`.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A page only for a logged-in browser (or a bearer token); otherwise how to log in.
async fn authorise(State(context): State<Context>, request: Request, next: Next) -> Response {
    match refusal(&context, &request) {
        None => next.run(request).await,
        Some(why) => {
            let path = request
                .uri()
                .path_and_query()
                .map(|path| path.as_str().to_string())
                .unwrap_or_else(|| "/runs".into());
            let path = pages::login_path(&path).unwrap_or("/runs");
            (
                StatusCode::UNAUTHORIZED,
                Html(pages::login_needed(why, path).into_string()),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

/// Spends a login link's code: a session cookie and the way to the link's page.
async fn login(State(context): State<Context>, Query(query): Query<LoginQuery>) -> Response {
    let now = now_ms();
    let path = query
        .code
        .as_deref()
        .and_then(|code| context.web.redeem(code, now));
    let Some(path) = path else {
        return (
            StatusCode::UNAUTHORIZED,
            Html(
                pages::login_needed(
                    "This login link has expired or was used already: links are good once, for five minutes.",
                    "/runs",
                )
                .into_string(),
            ),
        )
            .into_response();
    };
    let session = context.web.open_session(now);
    let cookie = cookie::Cookie::build((SESSION_COOKIE, session))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .secure(context.web.secure())
        .max_age(cookie::time::Duration::milliseconds(SESSION_TTL_MS));
    tracing::info!("a browser logged in to the web view");
    (
        [(header::SET_COOKIE, cookie.to_string())],
        Redirect::to(&path),
    )
        .into_response()
}

async fn logout(State(context): State<Context>, headers: HeaderMap) -> Response {
    if let Some(session) = session_cookie(&headers) {
        context.web.close_session(&session);
    }
    let cookie = cookie::Cookie::build((SESSION_COOKIE, ""))
        .path("/")
        .http_only(true)
        .max_age(cookie::time::Duration::ZERO);
    (
        [(header::SET_COOKIE, cookie.to_string())],
        Html(pages::login_needed("You are logged out.", "/runs").into_string()),
    )
        .into_response()
}

fn html(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// A page for an error the operator handlers answered.
fn failed(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(
            pages::page(
                "Error",
                "/runs",
                "error",
                None,
                maud::html! { h1 { "Cannot show this" } p role="alert" { (message) } },
            )
            .into_string(),
        ),
    )
        .into_response()
}

async fn ask(context: &Context, request: OperatorRequest) -> Result<OperatorResponse, Response> {
    match respond(context, request).await {
        OperatorResponse::Error { message } => Err(failed(StatusCode::BAD_REQUEST, &message)),
        response => Ok(response),
    }
}

fn unexpected(response: &OperatorResponse) -> Response {
    failed(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("unexpected answer: {response:?}"),
    )
}

async fn latest_runs(context: &Context) -> Result<Vec<polarizer_shared::run::RunRow>, Response> {
    match ask(context, OperatorRequest::ListRuns { limit: 50 }).await? {
        OperatorResponse::Runs(runs) => Ok(runs),
        other => Err(unexpected(&other)),
    }
}

async fn runs_page(State(context): State<Context>) -> Response {
    match latest_runs(&context).await {
        Ok(runs) => html(pages::runs(&runs)),
        Err(response) => response,
    }
}

async fn runs_rows(State(context): State<Context>) -> Response {
    match latest_runs(&context).await {
        Ok(runs) => html(pages::runs_rows(&runs)),
        Err(response) => response,
    }
}

async fn run_page(State(context): State<Context>, Path(run): Path<String>) -> Response {
    let Ok(run) = run.parse::<u64>() else {
        return failed(
            StatusCode::NOT_FOUND,
            &format!("{run:?} is not a run's number"),
        );
    };
    match context
        .store
        .read(move |reader| reader.run_exists(run))
        .await
    {
        Ok(true) => {}
        Ok(false) => return failed(StatusCode::NOT_FOUND, &format!("no run {run}")),
        Err(err) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
    match ask(&context, OperatorRequest::ShowRun { run }).await {
        Ok(OperatorResponse::Run(detail)) => html(pages::run(&detail)),
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

async fn inventory(
    context: &Context,
) -> Result<
    (
        Vec<polarizer_shared::protocol::AgentRecord>,
        Vec<pages::Busy>,
    ),
    Response,
> {
    let agents = match ask(context, OperatorRequest::ListAgents).await? {
        OperatorResponse::Agents(agents) => agents,
        other => return Err(unexpected(&other)),
    };
    let busy = context
        .store
        .read(|reader| reader.active_suites())
        .await
        .map_err(|err| failed(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()))?
        .into_iter()
        .filter(|suite| suite.state == crate::core::run::SuiteState::Running)
        .map(|suite| pages::Busy {
            agent: suite.agent,
            run: suite.run,
            suite: suite.suite,
        })
        .collect();
    Ok((agents, busy))
}

async fn agents_page(State(context): State<Context>) -> Response {
    match inventory(&context).await {
        Ok((agents, busy)) => html(pages::agents(&agents, &busy)),
        Err(response) => response,
    }
}

async fn agents_rows(State(context): State<Context>) -> Response {
    match inventory(&context).await {
        Ok((agents, busy)) => html(pages::agents_rows(&agents, &busy)),
        Err(response) => response,
    }
}

async fn tests_page(
    State(context): State<Context>,
    Query(filters): Query<Vec<(String, String)>>,
) -> Response {
    let mut query = TestQuery::default();
    let mut given = Vec::new();
    for (name, value) in filters {
        let Some((key, _)) = pages::TEST_FILTERS
            .iter()
            .find(|(key, _)| *key == name.as_str())
        else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        let value = value.trim().to_string();
        let slot = match *key {
            "feature" => &mut query.feature,
            "type" => &mut query.test_type,
            "tag" => &mut query.tag,
            "tier" => &mut query.tier,
            "component" => &mut query.component,
            "platform" => &mut query.platform,
            "arch" => &mut query.arch,
            _ => &mut query.distro,
        };
        *slot = Some(value.clone());
        given.push((*key, value));
    }
    match respond(&context, OperatorRequest::ListTests(Box::new(query))).await {
        OperatorResponse::Tests(tests) => html(pages::tests(&tests, &given, None)),
        OperatorResponse::Error { message } => (
            StatusCode::BAD_REQUEST,
            html(pages::tests(&[], &given, Some(&message))),
        )
            .into_response(),
        other => unexpected(&other),
    }
}

async fn features_page(State(context): State<Context>) -> Response {
    match ask(&context, OperatorRequest::ListFeatures).await {
        Ok(OperatorResponse::Features(features)) => html(pages::features(&features)),
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

async fn triggers_page(State(context): State<Context>) -> Response {
    match ask(&context, OperatorRequest::ListTriggers { limit: 100 }).await {
        Ok(OperatorResponse::Triggers(triggers)) => html(pages::triggers(&triggers)),
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
        .into_response()
}

async fn icon() -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        include_str!("icon.svg"),
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_sites_origin_is_told_apart() {
        let mut headers = HeaderMap::new();
        assert_eq!(same_origin(&headers), None);
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7702"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7702"),
        );
        assert_eq!(same_origin(&headers), Some(true));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(same_origin(&headers), Some(false));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert_eq!(same_origin(&headers), Some(false));
    }
}
