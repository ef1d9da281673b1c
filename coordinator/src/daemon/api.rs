//! The JSON API under `/api/`, on the coordinator's HTTP port: the operator protocol's answers for
//! browsers, dashboards and scripts. Authorised as operators are (the operator token, sent as a bearer
//! token), answered by the same handlers (`operator::respond`), and written as the CLI's `--json` writes
//! them (`core::views`): a field has one name everywhere.
//!
//! Errors are JSON too, `{"error": "…"}`: 401 without the operator token, 404 for a run or path that
//! does not exist, 400 for a request that cannot be honoured (the sentence says which field or why).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::SinkExt;
use polarizer_shared::catalog::TestQuery;
use polarizer_shared::events::TailQuery;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use polarizer_shared::run::{RunUpdate, TriggerKind, TriggerRequest};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::core::views;
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::daemon::operator::respond;
use crate::daemon::tail::{Ended, Outgoing, Sink};

/// How many runs and triggers a listing gives unless `?limit=` says otherwise (as the CLI's).
const DEFAULT_RUNS: u32 = 20;
const DEFAULT_TRIGGERS: u32 = 50;

/// What the API's handlers read: the daemon's context, and the token that says it is stopping (a
/// WebSocket then closes with 1001 and where to resume).
#[derive(Clone)]
struct ApiState {
    context: Context,
    shutdown: CancellationToken,
}

impl FromRef<ApiState> for Context {
    fn from_ref(state: &ApiState) -> Context {
        state.context.clone()
    }
}

/// The `/api/` routes, each behind the operator token.
pub fn router(context: Context, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/api/agents", get(agents))
        .route("/api/events", get(events))
        .route("/api/tests", get(tests))
        .route("/api/features", get(features))
        .route("/api/runs", get(runs).post(trigger))
        .route("/api/runs/{run}", get(run))
        .route("/api/runs/{run}/report", get(report))
        .route("/api/runs/{run}/cancel", post(cancel))
        .route("/api/runs/{run}/watch", get(watch))
        .route("/api/triggers", get(triggers))
        .route("/api/platforms", get(platforms))
        .route("/api/{*rest}", get(unknown).post(unknown))
        .layer(middleware::from_fn_with_state(context.clone(), authorise))
        .with_state(ApiState { context, shutdown })
        // What the API is: no secret in it, open like /healthz.
        .route("/api/openapi.json", get(openapi))
}

/// The API's OpenAPI 3.1 document, generated from the handlers' annotations below.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Polarizer",
        description = "The coordinator's JSON API: the answers of the CLI's --json, behind the operator token."
    ),
    paths(agents, tests, features, runs, trigger, run, report, cancel, watch, triggers, platforms, events),
    components(schemas(TriggerBody)),
    modifiers(&OperatorToken),
    security(("operator_token" = []))
)]
struct ApiDoc;

/// The bearer scheme every path but this document's needs.
struct OperatorToken;

impl utoipa::Modify for OperatorToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "operator_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("the coordinator's operator-token file"))
                        .build(),
                ),
            );
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Lets a request through only with `Authorization: Bearer <operator token>`, or a logged-in browser's
/// session cookie from this site (`daemon::web`).
async fn authorise(State(context): State<Context>, request: Request, next: Next) -> Response {
    match crate::daemon::web::refusal(&context, &request) {
        None => next.run(request).await,
        Some(why) => unauthorised(why),
    }
}

fn unauthorised(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": why })),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The operator handlers' answer, or their error as a 400.
async fn ask(context: &Context, request: OperatorRequest) -> Result<OperatorResponse, Response> {
    match respond(context, request).await {
        OperatorResponse::Error { message } => Err(error(StatusCode::BAD_REQUEST, message)),
        response => Ok(response),
    }
}

/// A 404 when there is no run `run` (asked of the store, not read from an error's wording).
async fn run_must_exist(context: &Context, run: u64) -> Result<(), Response> {
    match context
        .store
        .read(move |reader| reader.run_exists(run))
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(error(StatusCode::NOT_FOUND, format!("no run {run}"))),
        Err(err) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    }
}

/// [`ask`] about run `run`: a 404 when there is no such run.
async fn ask_about_run(
    context: &Context,
    run: u64,
    request: OperatorRequest,
) -> Result<OperatorResponse, Response> {
    run_must_exist(context, run).await?;
    ask(context, request).await
}

fn unexpected(response: &OperatorResponse) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer: {response:?}"),
    )
}

async fn unknown(Path(rest): Path<String>) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such API path: /api/{rest}"),
    )
}

/// A page of the inventory, as `agents --limit --after`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AgentsPage {
    /// At most this many agents, in name order.
    limit: Option<u32>,
    /// The agents named after this one (the last of the previous page).
    after: Option<String>,
}

#[utoipa::path(get, path = "/api/agents", params(AgentsPage), responses(
    (status = 200, description = "The inventory, as `agents --json`", body = Vec<serde_json::Value>),
    (status = 400, description = "A bad query"),
    (status = 401, description = "No operator token")))]
async fn agents(
    State(context): State<Context>,
    page: Result<Query<AgentsPage>, QueryRejection>,
) -> Response {
    let request = match page {
        Ok(Query(AgentsPage {
            limit: None,
            after: None,
        })) => OperatorRequest::ListAgents,
        Ok(Query(AgentsPage { limit, after })) => OperatorRequest::ListAgentsPage {
            after: after.unwrap_or_default(),
            limit: limit.unwrap_or(u32::MAX),
        },
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match ask(&context, request).await {
        Ok(OperatorResponse::Agents(agents)) => {
            Json(agents.iter().map(views::agent_json).collect::<Vec<_>>()).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

/// `tests list`'s filters, named as its flags are.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TestFilters {
    feature: Option<String>,
    platform: Option<String>,
    arch: Option<String>,
    distro: Option<String>,
    #[serde(rename = "type")]
    test_type: Option<String>,
    tag: Option<String>,
    tier: Option<String>,
    component: Option<String>,
    linked: Option<String>,
    resource: Option<String>,
    depends_on: Option<String>,
    #[serde(default)]
    differs_by_distro: bool,
    #[serde(default)]
    include_removed: bool,
}

#[utoipa::path(get, path = "/api/tests", params(TestFilters), responses(
    (status = 200, description = "The catalog, filtered as `tests list --json`", body = Vec<serde_json::Value>),
    (status = 400, description = "An unknown or bad filter, named"),
    (status = 401, description = "No operator token")))]
async fn tests(
    State(context): State<Context>,
    filters: Result<Query<TestFilters>, QueryRejection>,
) -> Response {
    let Query(filters) = match filters {
        Ok(filters) => filters,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let query = TestQuery {
        feature: filters.feature,
        platform: filters.platform,
        arch: filters.arch,
        distro: filters.distro,
        test_type: filters.test_type,
        tag: filters.tag,
        tier: filters.tier,
        component: filters.component,
        linked: filters.linked,
        resource: filters.resource,
        depends_on: filters.depends_on,
        differs_by_distro: filters.differs_by_distro,
        include_removed: filters.include_removed,
    };
    match ask(&context, OperatorRequest::ListTests(Box::new(query))).await {
        Ok(OperatorResponse::Tests(tests)) => Json(tests).into_response(),
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

#[utoipa::path(get, path = "/api/features", responses(
    (status = 200, description = "The feature graph, as `features --json`", body = Vec<serde_json::Value>),
    (status = 401, description = "No operator token")))]
async fn features(State(context): State<Context>) -> Response {
    match ask(&context, OperatorRequest::ListFeatures).await {
        Ok(OperatorResponse::Features(features)) => Json(features).into_response(),
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Limit {
    /// How many, newest first (runs 20, triggers 50 by default; at most 10,000).
    limit: Option<u32>,
}

/// `?limit=`, or `default`, within 1–10,000; a bad query's reason.
fn limit_of(limit: Result<Query<Limit>, QueryRejection>, default: u32) -> Result<u32, String> {
    match limit {
        Ok(Query(Limit { limit })) => Ok(limit.unwrap_or(default).clamp(1, 10_000)),
        Err(rejection) => Err(rejection.body_text()),
    }
}

#[utoipa::path(get, path = "/api/runs", params(Limit), responses(
    (status = 200, description = "The newest runs, as `runs --json`", body = Vec<serde_json::Value>),
    (status = 400, description = "A bad limit"),
    (status = 401, description = "No operator token")))]
async fn runs(
    State(context): State<Context>,
    limit: Result<Query<Limit>, QueryRejection>,
) -> Response {
    let limit = match limit_of(limit, DEFAULT_RUNS) {
        Ok(limit) => limit,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match ask(&context, OperatorRequest::ListRuns { limit }).await {
        Ok(OperatorResponse::Runs(runs)) => {
            Json(runs.iter().map(views::run_row_json).collect::<Vec<_>>()).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

#[utoipa::path(get, path = "/api/runs/{run}", params(("run" = u64, Path, description = "The run's id")), responses(
    (status = 200, description = "The run, as `runs show --json`", body = serde_json::Value),
    (status = 404, description = "No such run"),
    (status = 401, description = "No operator token")))]
async fn run(State(context): State<Context>, Path(run): Path<u64>) -> Response {
    match ask_about_run(&context, run, OperatorRequest::ShowRun { run }).await {
        Ok(OperatorResponse::Run(detail)) => Json(views::run_json(&detail)).into_response(),
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ReportFormat {
    /// `json` (the default) or `junit`.
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/runs/{run}/report", params(("run" = u64, Path, description = "The run's id"), ReportFormat), responses(
    (status = 200, description = "The run's report: JSON as `runs show --json`, or JUnit XML", body = serde_json::Value),
    (status = 400, description = "A format that is not json or junit"),
    (status = 404, description = "No such run"),
    (status = 401, description = "No operator token")))]
async fn report(
    State(context): State<Context>,
    Path(run): Path<u64>,
    format: Result<Query<ReportFormat>, QueryRejection>,
) -> Response {
    let format = match format {
        Ok(Query(ReportFormat { format })) => format.unwrap_or_else(|| "json".into()),
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    if !matches!(format.as_str(), "json" | "junit") {
        return error(
            StatusCode::BAD_REQUEST,
            format!("format {format:?} is not one of json, junit"),
        );
    }
    let detail = match ask_about_run(&context, run, OperatorRequest::ShowRun { run }).await {
        Ok(OperatorResponse::Run(detail)) => detail,
        Ok(other) => return unexpected(&other),
        Err(response) => return response,
    };
    if format == "junit" {
        return (
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            crate::core::reports::junit(&detail),
        )
            .into_response();
    }
    Json(views::run_json(&detail)).into_response()
}

/// `POST /api/runs`: `polarizer trigger`'s arguments, named as its flags are; lists for the repeatable.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    /// A git URL, or a directory in a git work tree on the coordinator's host.
    repo: String,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    changed: Vec<String>,
    #[serde(default)]
    feature: Vec<String>,
    #[serde(default, rename = "type")]
    test_type: Vec<String>,
    #[serde(default)]
    artifact: Vec<String>,
    #[serde(default)]
    all: bool,
    /// `KEY=VALUE` adjust context dimensions.
    #[serde(default)]
    context: Vec<String>,
    /// A tmt plan of the tree (`/plans/smoke`).
    #[serde(default)]
    plan: Option<String>,
}

#[utoipa::path(post, path = "/api/runs", request_body = TriggerBody, responses(
    (status = 201, description = "The run made, as `trigger --json`; `Location` is its path", body = serde_json::Value),
    (status = 400, description = "A bad field, named, or a tree that cannot be run, and why"),
    (status = 401, description = "No operator token")))]
async fn trigger(
    State(context): State<Context>,
    body: Result<Json<TriggerBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let kind = body.kind.as_deref().unwrap_or("manual");
    let Some(kind) = TriggerKind::parse(kind) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("kind {kind:?} is not one of commit, build, manual"),
        );
    };
    let adjust = match crate::core::source::parse_context(&body.context) {
        Ok(adjust) => adjust,
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("context: {err}")),
    };
    let request = TriggerRequest {
        repo: body.repo,
        git_ref: body.git_ref.unwrap_or_else(|| "HEAD".into()),
        kind,
        changed: body.changed,
        features: body.feature,
        test_types: body.test_type,
        artifacts: body.artifact,
        all: body.all,
        context: adjust,
        plan: body.plan.unwrap_or_default(),
    };
    let summary = match ask(&context, OperatorRequest::Trigger(Box::new(request))).await {
        Ok(OperatorResponse::Triggered(summary)) => summary,
        Ok(other) => return unexpected(&other),
        Err(response) => return response,
    };
    // The tree's warnings are in the run's note, as `polarizer trigger` shows them.
    let message = match ask(&context, OperatorRequest::ShowRun { run: summary.run }).await {
        Ok(OperatorResponse::Run(detail)) => detail.message,
        _ => String::new(),
    };
    let location = format!("/api/runs/{}", summary.run);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(views::triggered_json(
            &summary,
            &views::note_warnings(&message),
        )),
    )
        .into_response()
}

#[utoipa::path(post, path = "/api/runs/{run}/cancel", params(("run" = u64, Path, description = "The run's id")), responses(
    (status = 200, description = "`{\"run\", \"state\"}`: cancelled, or how it had already ended", body = serde_json::Value),
    (status = 404, description = "No such run"),
    (status = 401, description = "No operator token")))]
async fn cancel(State(context): State<Context>, Path(run): Path<u64>) -> Response {
    match ask_about_run(&context, run, OperatorRequest::CancelRun { run }).await {
        Ok(OperatorResponse::Cancelled { run, state }) => {
            Json(json!({ "run": run, "state": state.as_str() })).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

#[utoipa::path(get, path = "/api/triggers", params(Limit), responses(
    (status = 200, description = "What arrived and what became of it, as `triggers --json`", body = Vec<serde_json::Value>),
    (status = 400, description = "A bad limit"),
    (status = 401, description = "No operator token")))]
async fn triggers(
    State(context): State<Context>,
    limit: Result<Query<Limit>, QueryRejection>,
) -> Response {
    let limit = match limit_of(limit, DEFAULT_TRIGGERS) {
        Ok(limit) => limit,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match ask(&context, OperatorRequest::ListTriggers { limit }).await {
        Ok(OperatorResponse::Triggers(triggers)) => {
            Json(triggers.iter().map(views::trigger_json).collect::<Vec<_>>()).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

#[utoipa::path(get, path = "/api/platforms", responses(
    (status = 200, description = "Pools and platforms, as `platforms --json`", body = serde_json::Value),
    (status = 401, description = "No operator token")))]
async fn platforms(State(context): State<Context>) -> Response {
    match ask(&context, OperatorRequest::ListPlatforms).await {
        Ok(OperatorResponse::Platforms { pools, platforms }) => {
            Json(views::platforms_json(&pools, &platforms, now_ms())).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

/// `/api/events`' filters: `tail`'s, named as its flags are; lists comma-separated.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventFilters {
    agent: Option<String>,
    kind: Option<String>,
    run: Option<u64>,
    test: Option<String>,
    /// A duration back (`10m`) or the id of the last event seen, to resume after it.
    since: Option<String>,
    /// How many stored events first when `since` is not given (20).
    n: Option<u32>,
    grep: Option<String>,
    /// `false`: what is stored, then `{"end": true}` and a normal close.
    follow: Option<bool>,
}

fn list(text: Option<String>) -> Vec<String> {
    text.iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

fn tail_query(filters: EventFilters) -> Result<TailQuery, String> {
    let (since_ms, after_id) = match filters.since.as_deref() {
        None => (None, None),
        Some(text) => polarizer_shared::events::parse_since(text, now_ms())
            .map_err(|why| format!("since {text:?}: {why}"))?,
    };
    if filters.test.is_some() && filters.run.is_none() {
        return Err("test needs run: test names repeat across runs".into());
    }
    Ok(TailQuery {
        agents: list(filters.agent),
        kinds: list(filters.kind),
        run: filters.run,
        test: filters.test,
        limit: match filters.since {
            Some(_) => None,
            None => Some(filters.n.unwrap_or(20)),
        },
        since_ms,
        after_id,
        grep: filters.grep,
        follow: filters.follow.unwrap_or(true),
    })
}

/// `GET /api/events` as a WebSocket: `polarizer tail` live, one event per text message as `tail --json`
/// writes it. A client that falls behind is sent `{"lagged": N, "resume": ID}` and goes on from the
/// store (it misses nothing; ingest never waits for it). Closes 1000 when a `follow=false` tail is done
/// (after `{"end": true}`), 1001 when the coordinator stops (the reason names `since=ID` to resume),
/// 1008 when the tail cannot be served (`{"error": …}` first).
#[utoipa::path(get, path = "/api/events", params(EventFilters), responses(
    (status = 101, description = "A WebSocket: one event per text message, as `tail --json`"),
    (status = 400, description = "A bad filter, named"),
    (status = 401, description = "No operator token")))]
async fn events(
    State(state): State<ApiState>,
    filters: Result<Query<EventFilters>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let query = match filters {
        Ok(Query(filters)) => tail_query(filters),
        Err(rejection) => Err(rejection.body_text()),
    };
    let query = match query {
        Ok(query) => query,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    upgrade.on_upgrade(move |socket| follow_events(state, socket, query))
}

async fn follow_events(state: ApiState, socket: WebSocket, query: TailQuery) {
    let mut sink = WebSocketSink {
        socket,
        last_id: query.after_id.unwrap_or(0),
        failed: false,
        run_finished: false,
        heartbeat: state.context.settings.heartbeat_interval,
    };
    let ended = crate::daemon::tail::tail(
        &mut sink,
        &state.context.store,
        &state.context.fanout,
        query,
        &state.shutdown,
    )
    .await;
    close(sink, ended).await;
}

/// Closes a WebSocket as its stream ended: 1000 done, 1001 the coordinator stopping (the reason says
/// where to resume), 1008 an error answered; nothing when the client went away.
async fn close(mut sink: WebSocketSink, ended: Result<Ended, axum::Error>) {
    let (code, reason) = match ended {
        Ok(Ended::Done) if sink.failed => (1008, "the tail could not be served".to_string()),
        Ok(Ended::Done) => (1000, "done".to_string()),
        Ok(Ended::ShuttingDown) => (
            1001,
            format!(
                "the coordinator is shutting down; resume with since={}",
                sink.last_id
            ),
        ),
        // The client went away.
        Err(_) => return,
    };
    let _ = sink
        .socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// A tail's answer over a WebSocket: JSON text messages.
struct WebSocketSink {
    socket: WebSocket,
    /// The id of the last event sent: where a client resumes.
    last_id: u64,
    /// An error was answered.
    failed: bool,
    /// A run's `run_finished` was sent (the final run follows).
    run_finished: bool,
    /// After how long without a message a ping goes (the agents' heartbeat interval).
    heartbeat: std::time::Duration,
}

impl WebSocketSink {
    async fn text(&mut self, value: serde_json::Value) -> Result<(), axum::Error> {
        self.socket
            .send(Message::Text(value.to_string().into()))
            .await
    }
}

impl Sink for WebSocketSink {
    type Error = axum::Error;

    async fn events(&mut self, events: &[Outgoing<'_>]) -> Result<(), axum::Error> {
        // One message each, written out together: a batch costs one flush, not one per event.
        for event in events {
            self.socket
                .feed(Message::Text(event.json().into_owned().into()))
                .await?;
            self.last_id = event.row().id;
        }
        self.socket.flush().await
    }

    async fn answer(&mut self, response: OperatorResponse) -> Result<(), axum::Error> {
        match response {
            OperatorResponse::Lagged { missed } => {
                let resume = self.last_id;
                self.text(json!({ "lagged": missed, "resume": resume }))
                    .await
            }
            OperatorResponse::EventsEnd => self.text(json!({ "end": true })).await,
            OperatorResponse::Error { message } => {
                self.failed = true;
                self.text(json!({ "error": message })).await
            }
            OperatorResponse::Run(detail) => {
                self.text(json!({ "type": "run", "run": views::run_json(&detail) }))
                    .await
            }
            OperatorResponse::Update(update) => {
                self.run_finished |= matches!(update, RunUpdate::RunFinished { .. });
                self.text(views::update_json(&update)).await
            }
            _ => Ok(()),
        }
    }

    fn heartbeat_every(&self) -> Option<std::time::Duration> {
        Some(self.heartbeat)
    }

    async fn heartbeat(&mut self) -> Result<(), axum::Error> {
        self.socket.send(Message::Ping(Default::default())).await
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WatchOptions {
    /// Also every line of test output as it arrives.
    #[serde(default)]
    output: bool,
}

/// `GET /api/runs/{id}/watch` as a WebSocket: `{"type": "run", "run": …}` (the run as `runs show
/// --json` has it), then each update as it commits (`test_started`, `test_finished` with the test,
/// `output` with `?output=true`, `requeued`, `reinstated`, `run_finished`), then the final run, and a
/// close 1000. A watcher that falls behind is sent the whole run again instead of slowing ingest.
#[utoipa::path(get, path = "/api/runs/{run}/watch", params(("run" = u64, Path, description = "The run's id"), WatchOptions), responses(
    (status = 101, description = "A WebSocket: the run, each update as it commits, the final run"),
    (status = 404, description = "No such run"),
    (status = 401, description = "No operator token")))]
async fn watch(
    State(state): State<ApiState>,
    Path(run): Path<u64>,
    options: Result<Query<WatchOptions>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let output = match options {
        Ok(Query(options)) => options.output,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    // A run that does not exist is a 404 before any upgrade.
    if let Err(response) = run_must_exist(&state.context, run).await {
        return response;
    }
    upgrade.on_upgrade(move |socket| watch_socket(state, socket, run, output))
}

async fn watch_socket(state: ApiState, socket: WebSocket, run: u64, output: bool) {
    let mut sink = WebSocketSink {
        socket,
        last_id: 0,
        failed: false,
        run_finished: false,
        heartbeat: state.context.settings.heartbeat_interval,
    };
    let ended =
        crate::daemon::operator::watch_run(&mut sink, &state.context, run, output, &state.shutdown)
            .await;
    // After `run_finished`, the run as it ended, complete.
    let ended = match ended {
        Ok(Ended::Done) if sink.run_finished => {
            match respond(&state.context, OperatorRequest::ShowRun { run }).await {
                OperatorResponse::Run(detail) if detail.run.state.is_final() => sink
                    .text(json!({ "type": "run", "run": views::run_json(&detail) }))
                    .await
                    .map(|()| Ended::Done),
                _ => Ok(Ended::Done),
            }
        }
        other => other,
    };
    close(sink, ended).await;
}
