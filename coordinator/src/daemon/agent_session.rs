//! An agent's session: heartbeats and their acks, facts changes, batches of records committed then
//! acknowledged (one batch in flight, the next gathering meanwhile), assignments and cancels from the
//! scheduler, the agent's notice that it is stopping (draining), and the liveness check that ends a silent
//! session.

use std::time::Instant;

use polarizer_shared::frame::FrameError;
use polarizer_shared::protocol::*;
use polarizer_shared::AgentFacts;
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::core::admission;
use crate::daemon::clock::now_ms;
use crate::daemon::context::Context;
use crate::daemon::sessions::LiveSession;
use crate::store::StoreError;

/// Records of one agent held while its previous batch commits, at most: this many, or as many as
/// frames of this many bytes brought.
const MAX_WAITING_RECORDS: usize = 65_536;
const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;
/// Test transfers one agent may have going at once (one per suite it runs, and a few to spare).
const MAX_TRANSFERS: usize = 8;

type IngestFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, StoreError>> + Send>>;

pub(super) async fn agent_session(
    connection: quinn::Connection,
    mut stream: FramedStream,
    context: Context,
    facts: AgentFacts,
    incarnation: u64,
    enrolled: bool,
    shutdown: CancellationToken,
) {
    let name = facts.name.clone();
    let connection_id = connection.stable_id();
    let (outbox, mut outbox_rx) = mpsc::channel(crate::daemon::sessions::OUTBOX_MESSAGES);
    // Back after a network cut as the same process: its lost attempts are its own again before the
    // scheduler sees it idle and before its spooled records are read.
    if let Err(err) = crate::daemon::scheduler::reinstate(&context, &name, incarnation).await {
        warn!(error = %err, "cannot reinstate lost attempts");
    }
    let registered = context.sessions.register(
        &name,
        LiveSession {
            connection: connection.clone(),
            last_frame: Instant::now(),
            incarnation,
            facts: std::sync::Arc::new(facts.clone()),
            outbox,
            draining: false,
        },
    );
    let replaced = match registered {
        Ok(replaced) => replaced,
        Err(_) => {
            // Revoked between admission and now: the revocation wins.
            connection.close(close_code::REVOKED.into(), b"revoked by an operator");
            info!("agent revoked while connecting");
            return;
        }
    };
    context.scheduler.wake();
    if let Some(previous) = replaced {
        // The agent restarted before its old connection timed out: the new one is the truth.
        previous.connection.close(
            close_code::REPLACED.into(),
            b"replaced by a newer connection of the same agent",
        );
    }
    info!(enrolled, address = %connection.remote_address(), platform = %facts.platform, "agent online");
    let mut liveness_check = tokio::time::interval(context.settings.heartbeat_interval / 2);
    // Stream frames QUIC has received from the agent: they count as its word even before this task
    // reads them (a coordinator behind on thousands of sessions must not call their agents silent).
    // Keep-alive pings are not stream frames: a hung agent still falls silent.
    let mut stream_frames = connection.stats().frame_rx.stream;
    let mut in_flight: Option<IngestFuture> = None;
    let mut waiting = Gathering::default();
    let transfers = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_TRANSFERS));
    let end = loop {
        tokio::select! {
            // Backpressure: with this much waiting for the store, stop reading until the commit lands.
            frame = stream.recv::<ClientFrame>(), if waiting.has_room() => match frame {
                Ok(Some(ClientFrame::Agent(AgentMessage::Heartbeat))) => {
                    context.sessions.touch(&name, connection_id);
                    // The agent's proof that this coordinator is alive: it reconnects when acks stop.
                    if stream.send(&ServerFrame::Agent(CoordinatorMessage::HeartbeatAck)).await.is_err() {
                        break "connection lost";
                    }
                }
                Ok(Some(ClientFrame::Agent(AgentMessage::FactsChanged(new_facts)))) => {
                    context.sessions.touch(&name, connection_id);
                    if new_facts.name != name {
                        context.metrics.protocol_error(&connection, "facts may not change the agent's name");
                        break "renamed";
                    }
                    context.sessions.update_facts(&name, connection_id, (*new_facts).clone());
                    let _ = context.store.facts_changed(&name, *new_facts).await;
                }
                Ok(Some(ClientFrame::Agent(AgentMessage::Draining))) => {
                    context.sessions.touch(&name, connection_id);
                    context.sessions.set_draining(&name, connection_id);
                    info!("agent draining: it finishes what it holds and is given nothing new");
                }
                Ok(Some(ClientFrame::Agent(AgentMessage::Records(records)))) => {
                    context.sessions.touch(&name, connection_id);
                    // One batch commits while the next frames arrive: they wait here and go as one.
                    if in_flight.is_none() {
                        in_flight = Some(Box::pin(crate::daemon::scheduler::ingest_owned(context.clone(), name.clone(), records)));
                    } else {
                        waiting.add(records, stream.last_frame_bytes());
                    }
                }
                Ok(Some(_)) => {
                    context.metrics.protocol_error(&connection, "unexpected frame from an agent");
                    break "protocol error";
                }
                Ok(None) => break "agent closed its stream",
                Err(StreamError::Frame(err @ (FrameError::Oversize { .. } | FrameError::Decode { .. } | FrameError::Truncated { .. }))) => {
                    context.metrics.protocol_error(&connection, &err.to_string());
                    break "protocol error";
                }
                Err(_) => break "connection lost",
            },
            outcome = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                // Time spent waiting for our own store is not the agent's silence.
                context.sessions.touch(&name, connection_id);
                match outcome {
                    // Committed before acknowledged: an ack is a promise the record is in SQLite.
                    Ok(committed) => {
                        let ack = ServerFrame::Agent(CoordinatorMessage::Ack { up_to: committed });
                        if stream.send(&ack).await.is_err() {
                            break "connection lost";
                        }
                    }
                    Err(err) => {
                        // Not acknowledged: the agent keeps the records and sends them again.
                        warn!(error = %err, "cannot store records; closing so the agent resends them");
                        connection.close(close_code::SHUTTING_DOWN.into(), b"coordinator store unavailable");
                        break "store unavailable";
                    }
                }
                if let Some(records) = waiting.take() {
                    in_flight = Some(Box::pin(crate::daemon::scheduler::ingest_owned(context.clone(), name.clone(), records)));
                }
            }
            // Every further stream the agent opens asks for a run's tests: served beside the session.
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let transfers = transfers.clone();
                    match transfers.try_acquire_owned() {
                        Ok(permit) => {
                            let transfer = crate::daemon::transfers::serve(context.clone(), name.clone(), send, recv);
                            tokio::spawn(async move {
                                transfer.await;
                                drop(permit);
                            }.instrument(tracing::Span::current()));
                        }
                        Err(_) => {
                            context.metrics.protocol_error(&connection, "too many test transfers at once");
                            break "protocol error";
                        }
                    }
                }
                Err(_) => break "connection lost",
            },
            message = outbox_rx.recv() => {
                // The sender lives in the sessions map: gone means a newer session replaced this one.
                let Some(message) = message else { break "replaced" };
                if stream.send(&ServerFrame::Agent(message)).await.is_err() {
                    break "connection lost";
                }
            }
            _ = liveness_check.tick() => {
                // While its records wait for our store, the agent is not silent: we are not listening.
                if in_flight.is_some() {
                    context.sessions.touch(&name, connection_id);
                }
                let received = connection.stats().frame_rx.stream;
                if received != stream_frames {
                    stream_frames = received;
                    context.sessions.touch(&name, connection_id);
                }
                let gossip_sees_alive = context.sessions.gossip_sees_alive(&name);
                let allowed = admission::silence_allowed(context.settings.heartbeat_interval, gossip_sees_alive);
                match context.sessions.silent_for(&name) {
                    Some(silence) if silence > allowed => {
                        connection.close(close_code::NORMAL.into(), b"no heartbeat");
                        break "heartbeat lapsed";
                    }
                    Some(_) => {}
                    None => break "session removed",
                }
            }
            () = shutdown.cancelled() => {
                connection.close(close_code::SHUTTING_DOWN.into(), b"coordinator shutting down");
                break "coordinator shutting down";
            }
        }
    };
    // Only the session that still owns the name marks the agent offline; a replaced one leaves it be.
    let owned = context.sessions.remove_if_owned(&name, connection_id);
    if owned && end != "coordinator shutting down" {
        let _ = context.store.agent_disconnected(&name, now_ms()).await;
        info!(reason = end, "agent offline");
        context.scheduler.wake();
    }
}

/// Records that arrived while the batch before them commits, to go as the next batch. Bounded in
/// records and in the bytes of the frames that brought them: once full, the session stops reading its
/// agent (QUIC flow control makes the agent wait) until the batch in flight has committed.
#[derive(Default)]
struct Gathering {
    records: Vec<polarizer_shared::run::Record>,
    frame_bytes: usize,
}

impl Gathering {
    fn has_room(&self) -> bool {
        self.records.len() < MAX_WAITING_RECORDS && self.frame_bytes < MAX_WAITING_BYTES
    }

    fn add(&mut self, records: Vec<polarizer_shared::run::Record>, frame_bytes: usize) {
        self.records.extend(records);
        self.frame_bytes += frame_bytes;
    }

    /// Everything gathered, if anything, leaving it empty.
    fn take(&mut self) -> Option<Vec<polarizer_shared::run::Record>> {
        self.frame_bytes = 0;
        (!self.records.is_empty()).then(|| std::mem::take(&mut self.records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::run::Record;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            at_ms: 0,
            body: polarizer_shared::run::RecordBody::Event {
                correlation: None,
                event: polarizer_shared::events::Event {
                    kind: "app".into(),
                    summary: String::new(),
                    data: "{}".into(),
                },
            },
        }
    }

    /// A session stops reading once what waits is large, however few records it is (a counted bound
    /// alone would hold 65,536 records of up to a frame each), and reads again once it is taken.
    #[test]
    fn what_waits_for_the_store_is_bounded_in_records_and_in_bytes() {
        let mut few_but_large = Gathering::default();
        for seq in 0..4 {
            assert!(few_but_large.has_room());
            few_but_large.add(vec![record(seq)], 16 * 1024 * 1024);
        }
        assert!(!few_but_large.has_room(), "4 records in 64 MiB of frames");
        assert_eq!(few_but_large.take().map(|records| records.len()), Some(4));
        assert!(few_but_large.has_room());
        assert!(few_but_large.take().is_none());

        let mut many_but_small = Gathering::default();
        many_but_small.add((0..MAX_WAITING_RECORDS as u64).map(record).collect(), 1024);
        assert!(!many_but_small.has_room());
    }
}
