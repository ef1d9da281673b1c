//! The operator's side of a QUIC connection: one request after another (listings, imports, triggers,
//! cancels, revocations), and the streaming ones (`runs watch`, `tail`, `replay`) until they end, or
//! until the coordinator stops: then the operator is told `ShuttingDown` and the connection closes.

use polarizer_shared::protocol::*;
use polarizer_shared::run::RunUpdate;
use polarizer_transport::state_files;
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::core::run::{RunEnd, SuiteState};
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::daemon::tail::{Ended, Sink};

/// How long a stopping coordinator gives an operator to receive what was sent before it closes.
const GOODBYE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and checks the tree off the async runtime, then stores it in one step.
async fn import(
    context: &Context,
    location: String,
    git_ref: String,
    adjust: Vec<(String, String)>,
) -> OperatorResponse {
    let data_dir = context.settings.data_dir.clone();
    let started = std::time::Instant::now();
    let prepared = tokio::task::spawn_blocking(move || {
        crate::daemon::import::prepare(&location, &git_ref, &adjust, &data_dir, now_ms())
    })
    .await;
    let prepare_ms = started.elapsed().as_millis() as u64;
    let import = match prepared {
        Ok(Ok(import)) => import,
        Ok(Err(err)) => {
            return OperatorResponse::Error {
                message: format!("import failed, nothing stored: {err}"),
            }
        }
        Err(err) => {
            return OperatorResponse::Error {
                message: format!("import failed: {err}"),
            }
        }
    };
    let source = import.source.clone();
    let storing = std::time::Instant::now();
    match context
        .store
        .import_checked(import, crate::daemon::import::check)
        .await
    {
        Ok(summary) => {
            let store_ms = storing.elapsed().as_millis() as u64;
            info!(source = %source.location, tests = summary.tests, added = summary.added, changed = summary.changed, removed = summary.removed, prepare_ms, store_ms, "catalog imported");
            OperatorResponse::Imported { source, summary }
        }
        Err(err) => OperatorResponse::Error {
            message: format!("import failed, nothing stored: {err}"),
        },
    }
}

/// Plans and stores a run (`polarizer trigger`).
async fn trigger(
    context: &Context,
    request: polarizer_shared::run::TriggerRequest,
) -> OperatorResponse {
    match crate::daemon::trigger::start(context, request, None).await {
        Ok(summary) => OperatorResponse::Triggered(summary),
        Err(failure) => OperatorResponse::Error {
            message: failure.message,
        },
    }
}

/// A run with the scheduler's reason for every suite still waiting.
async fn run_detail(
    context: &Context,
    run: u64,
) -> Result<Option<polarizer_shared::run::RunDetail>, String> {
    let settings = context.analysis_settings();
    let detail = context
        .store
        .read(move |reader| {
            let mut detail = reader.run(run)?;
            if let Some(detail) = detail.as_mut() {
                reader.flag_slow(detail, &settings)?;
            }
            Ok(detail)
        })
        .await
        .map_err(|err| err.to_string())?;
    Ok(detail.map(|mut detail| {
        let waiting = context.scheduler.waiting();
        for suite in &mut detail.suites {
            if suite.state == SuiteState::Queued.as_str() {
                suite.waiting_for = waiting
                    .get(&suite.id)
                    .cloned()
                    .unwrap_or_else(|| "waiting for the scheduler".into());
            }
        }
        detail
    }))
}

/// Writes a new enrollment token to the data dir (0600, atomically) and puts it in effect: from the
/// moment this answers, only the new token enrolls. Enrolled agents keep their credentials.
fn rotate_enrollment_token(context: &Context) -> OperatorResponse {
    let path = crate::data_dir::DataDir::new(&context.settings.data_dir).agent_token();
    let token = state_files::random_secret();
    let mut digest = context
        .settings
        .enrollment_token_digest
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(err) = state_files::write_private(&path, format!("{token}\n").as_bytes()) {
        return OperatorResponse::Error {
            message: format!("cannot write a new enrollment token: {err}"),
        };
    }
    *digest = state_files::secret_digest(&token);
    info!(path = %path.display(), "enrollment token rotated");
    OperatorResponse::EnrollmentTokenRotated {
        path: path.display().to_string(),
    }
}

/// A per-host token for the agent `name`: only its digest is stored; the token goes back to the
/// operator (over the authenticated connection) to hand to that one host.
async fn create_host_token(context: &Context, name: String, ttl_ms: u64) -> OperatorResponse {
    match crate::daemon::host_tokens::issue(&context.store, name, ttl_ms).await {
        Ok(issued) => OperatorResponse::EnrollmentTokenCreated {
            name: issued.name,
            token: issued.token,
            expires_ms: issued.expires_ms,
        },
        Err(err) => OperatorResponse::Error {
            message: err.to_string(),
        },
    }
}

async fn revoke(context: &Context, name: &str) -> OperatorResponse {
    match context.store.revoke(name, now_ms()).await {
        Ok(false) => OperatorResponse::Error {
            message: format!("no agent named {name:?} in the inventory"),
        },
        Ok(true) => {
            let session = context.sessions.revoke(name);
            let was_online = session.is_some();
            if let Some(session) = session {
                session
                    .connection
                    .close(close_code::REVOKED.into(), b"revoked by an operator");
            }
            info!(agent = %name, was_online, "agent revoked");
            OperatorResponse::Revoked {
                name: name.to_string(),
                was_online,
            }
        }
        Err(err) => OperatorResponse::Error {
            message: err.to_string(),
        },
    }
}

/// Streams a run (`runs watch`, `/api/runs/{id}/watch`): a snapshot, then every committed change, until
/// the run is finished or the coordinator stops. A watcher that falls behind gets a fresh snapshot
/// instead of slowing anyone down.
pub(crate) async fn watch_run<S: Sink>(
    stream: &mut S,
    context: &Context,
    run: u64,
    output: bool,
    shutdown: &CancellationToken,
) -> Result<Ended, S::Error> {
    let mut updates = context.fanout.updates.subscribe();
    let quiet = stream.heartbeat_every();
    loop {
        let detail = match run_detail(context, run).await {
            Ok(Some(detail)) => detail,
            Ok(None) => {
                let message = format!("no run {run}");
                stream.answer(OperatorResponse::Error { message }).await?;
                return Ok(Ended::Done);
            }
            Err(message) => {
                stream.answer(OperatorResponse::Error { message }).await?;
                return Ok(Ended::Done);
            }
        };
        let finished = detail.run.state.is_final();
        stream
            .answer(OperatorResponse::Run(Box::new(detail)))
            .await?;
        if finished {
            return Ok(Ended::Done);
        }
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Ended::ShuttingDown),
                received = updates.recv() => received,
                () = crate::daemon::tail::quiet_for(quiet) => {
                    stream.heartbeat().await?;
                    continue;
                }
            };
            match received {
                Ok(update) if update.run() == run => {
                    if !output && matches!(update, RunUpdate::Output { .. }) {
                        continue;
                    }
                    let done = matches!(update, RunUpdate::RunFinished { .. });
                    stream.answer(OperatorResponse::Update(update)).await?;
                    if done {
                        return Ok(Ended::Done);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return Ok(Ended::Done),
            }
        }
    }
}

fn no_polarion() -> OperatorResponse {
    OperatorResponse::Error {
        message: "the coordinator has no [polarion] in its config".into(),
    }
}

fn queued(imports: Result<Vec<u64>, String>) -> OperatorResponse {
    match imports {
        Ok(imports) => OperatorResponse::PolarionQueued { imports },
        Err(message) => OperatorResponse::Error { message },
    }
}

/// Sends `text` in pieces of at most 1 MiB (whole characters), the last one marked.
async fn send_text(stream: &mut FramedStream, text: &str) -> Result<(), ()> {
    const PIECE: usize = 1 << 20;
    let mut rest = text;
    loop {
        let mut end = rest.len().min(PIECE);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, after) = rest.split_at(end);
        let last = after.is_empty();
        let frame = ServerFrame::Operator(OperatorResponse::Text {
            text: piece.to_string(),
            last,
        });
        stream.send(&frame).await.map_err(drop)?;
        if last {
            return Ok(());
        }
        rest = after;
    }
}

/// Tells the operator the coordinator is stopping, gives it a moment to receive everything sent so
/// far, then closes the connection.
async fn say_shutting_down(connection: &quinn::Connection, mut stream: FramedStream) {
    let _ = tokio::time::timeout(GOODBYE_DEADLINE, async {
        let goodbye = ServerFrame::Operator(OperatorResponse::ShuttingDown);
        if stream.send(&goodbye).await.is_ok() {
            stream.finish().await;
        }
    })
    .await;
    connection.close(
        close_code::SHUTTING_DOWN.into(),
        b"coordinator shutting down",
    );
}

pub(super) async fn operator_session(
    connection: quinn::Connection,
    mut stream: FramedStream,
    context: Context,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return say_shutting_down(&connection, stream).await,
            received = stream.recv::<ClientFrame>() => received,
        };
        let request = match received {
            Ok(Some(ClientFrame::Operator(request))) => request,
            Ok(None) => break,
            Ok(Some(_)) => {
                return context
                    .metrics
                    .protocol_error(&connection, "unexpected frame from an operator")
            }
            Err(StreamError::Frame(err)) => {
                return context
                    .metrics
                    .protocol_error(&connection, &err.to_string())
            }
            Err(_) => return,
        };
        let response = match request {
            OperatorRequest::Tail(query) => {
                let ended = crate::daemon::tail::tail(
                    &mut stream,
                    &context.store,
                    &context.fanout,
                    *query,
                    &shutdown,
                )
                .await;
                match ended {
                    Ok(Ended::Done) => continue,
                    Ok(Ended::ShuttingDown) => return say_shutting_down(&connection, stream).await,
                    Err(_) => return,
                }
            }
            OperatorRequest::Replay { run } => {
                let ended =
                    crate::daemon::tail::replay(&mut stream, &context.store, run, &shutdown).await;
                match ended {
                    Ok(Ended::Done) => continue,
                    Ok(Ended::ShuttingDown) => return say_shutting_down(&connection, stream).await,
                    Err(_) => return,
                }
            }
            OperatorRequest::WatchRun { run, output } => {
                match watch_run(&mut stream, &context, run, output, &shutdown).await {
                    Ok(Ended::Done) => continue,
                    Ok(Ended::ShuttingDown) => return say_shutting_down(&connection, stream).await,
                    Err(_) => return,
                }
            }
            OperatorRequest::PolarionTestCases {
                query,
                dry_run,
                upload: false,
            } => match &context.polarion {
                None => no_polarion(),
                Some(polarion) => match polarion.testcases_file(*query, dry_run).await {
                    Ok(text) => match send_text(&mut stream, &text).await {
                        Ok(()) => continue,
                        Err(()) => return,
                    },
                    Err(message) => OperatorResponse::Error { message },
                },
            },
            OperatorRequest::PolarionXunit { run, dry_run } => match &context.polarion {
                None => no_polarion(),
                Some(polarion) => match polarion.xunit_file(run, dry_run).await {
                    Ok(text) => match send_text(&mut stream, &text).await {
                        Ok(()) => continue,
                        Err(()) => return,
                    },
                    Err(message) => OperatorResponse::Error { message },
                },
            },
            request => respond(&context, request).await,
        };
        if stream.send(&ServerFrame::Operator(response)).await.is_err() {
            return;
        }
    }
    stream.finish().await;
}

/// The answer to a request that has one: everything but the streams (`tail`, `replay`, `runs watch`,
/// Polarion's files), which the operator's session sends itself. The HTTP API answers with it too.
pub async fn respond(context: &Context, request: OperatorRequest) -> OperatorResponse {
    match request {
        OperatorRequest::ListAgents => match context.sessions.list_agents(&context.store).await {
            Ok(agents) => OperatorResponse::Agents(agents),
            Err(err) => OperatorResponse::Error {
                message: err.to_string(),
            },
        },
        OperatorRequest::ListAgentsPage { after, limit } => match context
            .sessions
            .list_agents_page(&context.store, after, Some(limit))
            .await
        {
            Ok(agents) => OperatorResponse::Agents(agents),
            Err(err) => OperatorResponse::Error {
                message: err.to_string(),
            },
        },
        OperatorRequest::RevokeAgent { name } => revoke(context, &name).await,
        OperatorRequest::ImportTests {
            location,
            git_ref,
            context: adjust,
        } => import(context, location, git_ref, adjust).await,
        OperatorRequest::ListTests(query) => {
            match context.store.read(move |reader| reader.tests(&query)).await {
                Ok(tests) => OperatorResponse::Tests(tests),
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::ShowTest { id } => {
            let wanted = id.clone();
            let found = context
                .store
                .read(move |reader| {
                    let found = reader.test(&wanted)?;
                    let polarion_id = match &found {
                        Some((metadata, _, _)) => reader.polarion_id(&metadata.id)?,
                        None => None,
                    };
                    Ok(found.map(|found| (found, polarion_id.unwrap_or_default())))
                })
                .await;
            match found {
                Ok(Some(((metadata, source, removed), polarion_id))) => OperatorResponse::Test {
                    metadata: Box::new(metadata),
                    source,
                    removed,
                    polarion_id,
                },
                Ok(None) => OperatorResponse::Error {
                    message: format!("no test {id:?} in the catalog"),
                },
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::Trigger(request) => trigger(context, *request).await,
        OperatorRequest::ListRuns { limit } => {
            match context.store.read(move |reader| reader.runs(limit)).await {
                Ok(runs) => OperatorResponse::Runs(runs),
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::ShowRun { run } => match run_detail(context, run).await {
            Ok(Some(detail)) => OperatorResponse::Run(Box::new(detail)),
            Ok(None) => OperatorResponse::Error {
                message: format!("no run {run}"),
            },
            Err(message) => OperatorResponse::Error { message },
        },
        OperatorRequest::CancelRun { run } => {
            match crate::daemon::scheduler::end_run(context, run, RunEnd::Cancel).await {
                Ok(()) => match run_detail(context, run).await {
                    Ok(Some(detail)) => OperatorResponse::Cancelled {
                        run,
                        state: detail.run.state,
                    },
                    Ok(None) => OperatorResponse::Error {
                        message: format!("no run {run}"),
                    },
                    Err(message) => OperatorResponse::Error { message },
                },
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::RotateEnrollmentToken => rotate_enrollment_token(context),
        OperatorRequest::ApproveAgent { name } => match context.store.approve(&name).await {
            Ok(()) => {
                info!(agent = %name, "agent approved");
                OperatorResponse::Approved { name }
            }
            Err(err) => OperatorResponse::Error {
                message: err.to_string(),
            },
        },
        OperatorRequest::CreateEnrollmentToken { name, ttl_ms } => {
            create_host_token(context, name, ttl_ms).await
        }
        OperatorRequest::WebLogin { path } => match context.web.link(&path, now_ms()) {
            Ok((url, expires_ms)) => {
                info!(path = %path, "a web login link was given");
                OperatorResponse::WebLogin { url, expires_ms }
            }
            Err(message) => OperatorResponse::Error { message },
        },
        OperatorRequest::ListTriggers { limit } => {
            match context
                .store
                .read(move |reader| reader.triggers(limit.clamp(1, 10_000)))
                .await
            {
                Ok(triggers) => OperatorResponse::Triggers(triggers),
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::ListFailures { run, since_ms } => answer(
            context
                .store
                .read(move |reader| reader.failures(run, since_ms))
                .await,
            OperatorResponse::Failures,
        ),
        OperatorRequest::ShowFailure { id } => {
            match context.store.read(move |reader| reader.failure(id)).await {
                Ok(Some(detail)) => OperatorResponse::Failure(Box::new(detail)),
                Ok(None) => OperatorResponse::Error {
                    message: format!("no failure cluster {id}"),
                },
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::LabelFailure { id, label } => {
            crate::daemon::analysis::label(context, id, label).await
        }
        OperatorRequest::ListFlaky { since_ms } => {
            crate::daemon::analysis::flaky(context, since_ms).await
        }
        OperatorRequest::Stats { since_ms } => {
            crate::daemon::analysis::stats(context, since_ms).await
        }
        OperatorRequest::ListPlatforms => {
            let (pools, platforms) = context.pools.list();
            OperatorResponse::Platforms { pools, platforms }
        }
        OperatorRequest::DestroyPlatform { name } => match context.pools.destroy_now(&name) {
            Ok(()) => {
                info!(platform = %name, "platform destroyed by an operator");
                OperatorResponse::PlatformDestroyed { name }
            }
            Err(message) => OperatorResponse::Error { message },
        },
        OperatorRequest::PolarionUpload { run, dry_run } => match &context.polarion {
            None => no_polarion(),
            Some(polarion) => queued(polarion.upload_run(run, dry_run, "operator").await),
        },
        OperatorRequest::PolarionJobs { limit } => {
            match context
                .store
                .read(move |reader| reader.imports(limit.clamp(1, 10_000)))
                .await
            {
                Ok(imports) => OperatorResponse::PolarionImports(imports),
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::ListFeatures => {
            match context.store.read(|reader| reader.features()).await {
                Ok(features) => OperatorResponse::Features(features),
                Err(err) => OperatorResponse::Error {
                    message: err.to_string(),
                },
            }
        }
        OperatorRequest::PolarionTestCases {
            query,
            dry_run,
            upload,
        } => match &context.polarion {
            None => no_polarion(),
            Some(polarion) if upload => queued(polarion.upload_tests(*query, dry_run).await),
            Some(_) => streamed_only(),
        },
        OperatorRequest::PolarionXunit { .. } => match &context.polarion {
            None => no_polarion(),
            Some(_) => streamed_only(),
        },
        OperatorRequest::Tail(_)
        | OperatorRequest::Replay { .. }
        | OperatorRequest::WatchRun { .. } => streamed_only(),
    }
}

/// A stream asked where only one answer can be given.
fn streamed_only() -> OperatorResponse {
    OperatorResponse::Error {
        message: "this request streams its answer: ask it over the operator protocol".into(),
    }
}

/// A read's answer, or its error.
fn answer<T>(
    read: Result<T, crate::store::StoreError>,
    respond: impl FnOnce(T) -> OperatorResponse,
) -> OperatorResponse {
    match read {
        Ok(value) => respond(value),
        Err(err) => OperatorResponse::Error {
            message: err.to_string(),
        },
    }
}
