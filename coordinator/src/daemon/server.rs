//! The coordinator's QUIC side: accepts connections, authenticates each hello, and hands the connection
//! to an agent session or an operator session. A bad peer gets a reason and a closed connection; it
//! never disturbs anyone else.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polarizer_shared::facts::validate_agent_name;
use polarizer_shared::frame::MAX_FRAME_BYTES;
use polarizer_shared::protocol::*;
use polarizer_transport::state_files::secret_digest;
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::core::admission::{self, Admission};
use crate::daemon::clock::now_ms;
use crate::daemon::context::{Context, Metrics, Settings};
use crate::store::{Enrollment, StoreError};

/// From the first packet to a finished TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Connections between their first packet and an admitted hello: each may hold a stream window of
/// buffered bytes, and none has said who it is yet. More wait at the door (quinn holds only their first
/// packet) for up to `ADMISSION_WAIT`, as thousands of agents do when they all reconnect after a
/// coordinator restart; past `MAX_WAITING` of those, or that wait, they are refused and retry later.
const MAX_UNAUTHENTICATED: usize = 64;
const MAX_WAITING: usize = 8192;
const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown`, each on its own task.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    context: Context,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    let at_the_door = Arc::new(Semaphore::new(MAX_WAITING));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let peer = incoming.remote_address();
        let Ok(waiting) = at_the_door.clone().try_acquire_owned() else {
            context.metrics.refusals.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "refused a connection: {MAX_WAITING} others wait to be let in");
            incoming.refuse();
            continue;
        };
        let context = context.clone();
        let shutdown = shutdown.clone();
        let unauthenticated = unauthenticated.clone();
        tracker.spawn(
            async move {
                let admitted =
                    tokio::time::timeout(ADMISSION_WAIT, unauthenticated.acquire_owned()).await;
                drop(waiting);
                let Ok(Ok(permit)) = admitted else {
                    context.metrics.refusals.fetch_add(1, Ordering::Relaxed);
                    warn!("refused a connection: {MAX_UNAUTHENTICATED} others had not said who they are for {ADMISSION_WAIT:?}");
                    incoming.refuse();
                    return;
                };
                match tokio::time::timeout(HANDSHAKE_DEADLINE, incoming).await {
                    Ok(Ok(connection)) => {
                        context.metrics.connections.fetch_add(1, Ordering::Relaxed);
                        handle_connection(connection, context, shutdown, permit).await;
                    }
                    Ok(Err(err)) => debug!(error = %err, "handshake failed"),
                    Err(_) => debug!("no handshake within {HANDSHAKE_DEADLINE:?}"),
                }
            }
            .instrument(tracing::info_span!("connection", %peer)),
        );
    }
    // Tell every peer why we are going away; agents reconnect to the next coordinator incarnation.
    endpoint.close(
        close_code::SHUTTING_DOWN.into(),
        b"coordinator shutting down",
    );
}

/// Reads and checks the hello, then runs the peer's session. `unauthenticated` is held until the peer
/// is admitted.
async fn handle_connection(
    connection: quinn::Connection,
    context: Context,
    shutdown: CancellationToken,
    unauthenticated: OwnedSemaphorePermit,
) {
    let peer = connection.remote_address();
    let hello = tokio::time::timeout(HELLO_DEADLINE, async {
        let mut stream = FramedStream::accept(&connection).await?;
        // Before the peer is known, a frame is a hello or nothing: small.
        stream.set_frame_limit(MAX_HELLO_BYTES);
        let bytes = stream.recv_bytes().await?.ok_or(StreamError::Closed)?;
        stream.set_frame_limit(MAX_FRAME_BYTES);
        Ok::<_, StreamError>((stream, bytes))
    })
    .await;
    let (mut stream, hello_bytes) = match hello {
        Ok(Ok(received)) => received,
        Ok(Err(err)) => {
            return context
                .metrics
                .protocol_error(&connection, &err.to_string())
        }
        Err(_) => {
            return context
                .metrics
                .protocol_error(&connection, "no hello within 5 s")
        }
    };
    let peer_version = polarizer_shared::protocol::peek_hello_version(&hello_bytes);
    if let Some(version) = peer_version.filter(|version| *version != PROTOCOL_VERSION) {
        return refuse(
            &connection,
            &context.metrics,
            stream,
            Refusal::VersionMismatch {
                coordinator: PROTOCOL_VERSION,
                peer: version,
            },
        )
        .await;
    }
    let hello = match decode_hello(&hello_bytes) {
        Ok(hello) => hello,
        Err(reason) => {
            return refuse(
                &connection,
                &context.metrics,
                stream,
                Refusal::InvalidHello { reason },
            )
            .await
        }
    };
    match hello.peer {
        Peer::Operator { token } => {
            if secret_digest(&token) != context.settings.operator_token_digest {
                return refuse(
                    &connection,
                    &context.metrics,
                    stream,
                    Refusal::BadOperatorToken,
                )
                .await;
            }
            if stream
                .send(&welcome(false, &context.settings))
                .await
                .is_err()
            {
                return;
            }
            drop(unauthenticated);
            crate::daemon::operator::operator_session(connection, stream, context, shutdown).await;
        }
        Peer::Agent {
            credential,
            facts,
            incarnation,
        } => {
            let facts = *facts;
            if let Err(reason) = validate_agent_name(&facts.name) {
                return refuse(
                    &connection,
                    &context.metrics,
                    stream,
                    Refusal::InvalidHello { reason },
                )
                .await;
            }
            let name = facts.name.clone();
            let stored = {
                let name = name.clone();
                context.store.read(move |reader| reader.agent(&name)).await
            };
            let stored = match stored {
                Ok(stored) => stored,
                Err(err) => {
                    warn!(agent = %name, error = %err, "cannot read the inventory");
                    connection.close(
                        close_code::SHUTTING_DOWN.into(),
                        b"coordinator store unavailable",
                    );
                    return;
                }
            };
            // Read now, not held: a rotation may replace it at any moment.
            let enrollment_token_digest = context
                .settings
                .enrollment_token_digest
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            // A token other than the shared one may be a per-host one: look it up by its digest.
            let host_token = match &credential {
                AgentCredential::Enroll { token, .. }
                    if secret_digest(token) != enrollment_token_digest =>
                {
                    let digest = secret_digest(token);
                    context
                        .store
                        .read(move |reader| reader.host_token(&digest))
                        .await
                        .unwrap_or_else(|err| {
                            warn!(agent = %name, error = %err, "cannot read enrollment tokens");
                            None
                        })
                }
                _ => None,
            };
            let enrolled = match admission::admit_agent(
                &name,
                &credential,
                stored.as_ref(),
                &enrollment_token_digest,
                host_token.as_ref(),
                now_ms(),
                secret_digest,
            ) {
                Admission::Refuse(refusal) => {
                    return refuse(&connection, &context.metrics, stream, refusal).await
                }
                Admission::Known => {
                    if context
                        .store
                        .agent_connected(&name, facts.clone(), peer.to_string(), now_ms())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    false
                }
                Admission::Enroll {
                    credential_sha256,
                    host_token,
                } => {
                    let approved = context.settings.enroll.approves_on_enrollment();
                    match context
                        .store
                        .enroll(Enrollment {
                            name: name.clone(),
                            credential_sha256,
                            host_token,
                            approved,
                            facts: facts.clone(),
                            address: peer.to_string(),
                            now_ms: now_ms(),
                        })
                        .await
                    {
                        Ok(()) if approved => true,
                        Ok(()) => {
                            info!(agent = %name, %peer, "agent enrolled; it waits for an operator's approval");
                            return refuse(
                                &connection,
                                &context.metrics,
                                stream,
                                Refusal::Pending { name },
                            )
                            .await;
                        }
                        Err(StoreError::NameTaken { name }) => {
                            return refuse(
                                &connection,
                                &context.metrics,
                                stream,
                                Refusal::NameTaken { name },
                            )
                            .await;
                        }
                        // Spent by another connection in between: once is all.
                        Err(StoreError::HostTokenRefused { .. }) => {
                            return refuse(
                                &connection,
                                &context.metrics,
                                stream,
                                Refusal::BadEnrollmentToken,
                            )
                            .await;
                        }
                        Err(err) => {
                            warn!(agent = %name, error = %err, "cannot enroll agent");
                            return;
                        }
                    }
                }
            };
            let records_committed = {
                let name = name.clone();
                context
                    .store
                    .read(move |reader| reader.records_committed(&name))
                    .await
                    .unwrap_or(0)
            };
            let mut hello = welcome(enrolled, &context.settings);
            if let ServerFrame::Welcome(welcome) = &mut hello {
                welcome.records_committed = records_committed;
            }
            if stream.send(&hello).await.is_err() {
                return;
            }
            drop(unauthenticated);
            crate::daemon::agent_session::agent_session(
                connection,
                stream,
                context,
                facts,
                incarnation,
                enrolled,
                shutdown,
            )
            .instrument(tracing::info_span!("agent", agent = %name))
            .await;
        }
    }
}

fn welcome(enrolled: bool, settings: &Settings) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
        enrolled,
        heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u32,
        records_committed: 0,
    })
}

/// Sends the refusal, waits (briefly) until the peer has it, then closes.
async fn refuse(
    connection: &quinn::Connection,
    metrics: &Metrics,
    mut stream: FramedStream,
    refusal: Refusal,
) {
    metrics.refusals.fetch_add(1, Ordering::Relaxed);
    if let Refusal::Pending { .. } = refusal {
        // It asks again every few seconds until approved: not worth a warning each time.
        debug!(reason = %refusal, "agent waits for approval");
    } else {
        warn!(reason = %refusal, "refused peer");
    }
    let reason = refusal.to_string();
    if stream.send(&ServerFrame::Refused(refusal)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.finish()).await;
    }
    connection.close(close_code::REFUSED.into(), reason.as_bytes());
}
