//! The spool's own thread: it alone owns the spool file, so the agent's single-threaded runtime never
//! waits on a disk write or an fsync (heartbeats, output readers and the event socket go on meanwhile).
//!
//! Tasks hand it records through a queue bounded in bytes ([`QUEUE_BYTES`]). The thread takes whatever
//! is queued, writes it, then makes it durable in one go (a single fsync for all the results among it)
//! and only then publishes it to the session: nothing is sent before it is on disk, and a result before
//! it is fsynced. The session asks the thread for each frame to send and tells it what the coordinator
//! acknowledged; those requests go before whatever is queued, so a flood never makes the session wait
//! behind it (a frame holds the records written so far).
//!
//! When the queue is full: `push` (the runner's and collectors' path, which must never block) still
//! queues a result, and drops an event or output line, counted and reported as `dropped` like a full
//! spool; [`SharedSpool::push_events_when_room`] (the event socket) waits for room instead, which slows
//! the writer on the other end of the socket down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use polarizer_shared::events::{Correlation, Event};
use polarizer_shared::run::RecordBody;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::{kind_of, now_ms, Spool, SpoolError};

/// Bytes of records queued for the writer thread at most (records are counted by their text).
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Requests the thread handles before it makes what it wrote durable and publishes it.
const DRAIN_BATCH: usize = 4096;
/// Events the event socket hands over in one request at most.
pub const EVENT_BATCH: usize = 512;

enum Request {
    Append {
        body: RecordBody,
        at_ms: i64,
        /// Queue room this record holds, given back once it is written.
        held_bytes: u32,
        durable_tx: Option<oneshot::Sender<Result<u64, String>>>,
    },
    /// Events from the event socket, each with when it came: one request for all that one read brought.
    AppendEvents {
        events: Vec<(RecordBody, i64)>,
        held_bytes: u32,
    },
    Unsent {
        after: u64,
        max_records: usize,
        budget_bytes: usize,
        total_bytes: usize,
        reply_tx: oneshot::Sender<Vec<(Vec<u8>, u64)>>,
    },
    Acknowledge {
        up_to: u64,
    },
    Sync {
        done_tx: oneshot::Sender<()>,
    },
    AllAcknowledged {
        reply_tx: oneshot::Sender<bool>,
    },
    /// Look at the session's requests (see `SharedSpool::send_first`).
    Wake,
}

struct Shared {
    /// The queue's free room, in bytes.
    room: Semaphore,
    /// Notified whenever newly durable records are published.
    published: Notify,
    /// The highest sequence number that is durable and may be sent.
    published_up_to: AtomicU64,
    /// What runs on this agent now, learnt from the runner's own records: events are stamped with it.
    running: Mutex<Option<Correlation>>,
    /// Records dropped because the queue was full, by kind, for the thread to report.
    dropped: Mutex<BTreeMap<String, u64>>,
    any_dropped: AtomicBool,
    /// The session's requests, handled before whatever is queued: a flood of events must not make the
    /// session wait behind it for the frame of records that are already written.
    first: Mutex<Vec<Request>>,
    any_first: AtomicBool,
}

/// The spool as the agent's tasks share it: the runner and the collectors push, the session sends and
/// acknowledges. Cheap to clone; every call returns at once or awaits, none blocks the thread.
#[derive(Clone)]
pub struct SharedSpool {
    requests_tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

impl SharedSpool {
    /// Starts the writer thread, which owns `spool` from now on.
    pub fn start(spool: Spool) -> Result<SharedSpool, SpoolError> {
        let (requests_tx, requests_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            room: Semaphore::new(QUEUE_BYTES),
            published: Notify::new(),
            published_up_to: AtomicU64::new(spool.last_seq()),
            running: Mutex::new(None),
            dropped: Mutex::new(BTreeMap::new()),
            any_dropped: AtomicBool::new(false),
            first: Mutex::new(Vec::new()),
            any_first: AtomicBool::new(false),
        });
        let writer = Writer {
            spool,
            requests_rx,
            shared: shared.clone(),
            durable_waiters: Vec::new(),
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(SpoolError::Thread)?;
        Ok(SharedSpool {
            requests_tx,
            shared,
        })
    }

    /// Records an event from a collector, correlated with the suite and test running now. Dropped (and
    /// counted) if the writer's queue is full.
    pub fn push_event(&self, event: Event) {
        let correlation = self.running();
        self.push(RecordBody::Event { correlation, event });
    }

    /// Records events (at most [`EVENT_BATCH`]) that came at `at_ms` each, waiting while the writer's
    /// queue is full: the event socket's path, so that a flood of events slows its sender down rather
    /// than losing events, and hands them over in one request rather than one per event.
    pub async fn push_events_when_room(&self, events: Vec<(Event, i64)>) {
        if events.is_empty() {
            return;
        }
        let correlation = self.running();
        let events: Vec<(RecordBody, i64)> = events
            .into_iter()
            .map(|(event, at_ms)| {
                let correlation = correlation.clone();
                (RecordBody::Event { correlation, event }, at_ms)
            })
            .collect();
        let cost = events
            .iter()
            .map(|(body, _)| queue_cost(body) as usize)
            .sum::<usize>()
            .min(QUEUE_BYTES) as u32;
        let Ok(permit) = self.shared.room.acquire_many(cost).await else {
            return;
        };
        permit.forget();
        let request = Request::AppendEvents {
            events,
            held_bytes: cost,
        };
        if self.requests_tx.send(request).is_err() {
            self.shared.room.add_permits(cost as usize);
            tracing::error!("the spool's writer has stopped; events are lost");
        }
    }

    /// Records `body`; never blocks. A result always goes to the writer; an event or output line is
    /// dropped (and counted) when the queue is full.
    pub fn push(&self, body: RecordBody) {
        self.follow_running(&body);
        let cost = queue_cost(&body);
        let held_bytes = match self.shared.room.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                cost
            }
            // Results are few (one per test) and never dropped: they go over the bound.
            Err(_) if body.is_result() => 0,
            Err(_) => {
                *self
                    .shared
                    .dropped
                    .lock()
                    .expect("dropped lock")
                    .entry(kind_of(&body))
                    .or_default() += 1;
                self.shared.any_dropped.store(true, Ordering::Release);
                return;
            }
        };
        self.send_append(body, held_bytes, None);
    }

    /// Records `body` and returns once it is durable (fsynced, for a result), with its sequence number
    /// (0 when a full spool dropped it). Waits for room in the queue rather than dropping.
    pub async fn push_durable(&self, body: RecordBody) -> Result<u64, String> {
        self.follow_running(&body);
        let held_bytes = self
            .wait_for_room(&body)
            .await
            .ok_or("the spool's writer has stopped")?;
        let (durable_tx, durable_rx) = oneshot::channel();
        self.send_append(body, held_bytes, Some(durable_tx));
        durable_rx
            .await
            .map_err(|_| "the spool's writer has stopped".to_string())?
    }

    /// The highest sequence number that is durable and may be sent.
    pub fn published_up_to(&self) -> u64 {
        self.shared.published_up_to.load(Ordering::Acquire)
    }

    /// Resolves once records are published after this is called (or were, since the last call).
    pub async fn published(&self) {
        self.shared.published.notified().await
    }

    /// The next frame to send: durable records after `after`, at most `max_records` and `budget_bytes`
    /// of them (see [`Spool::unsent_frame`]), and the last sequence number in it.
    pub async fn unsent_frame(
        &self,
        after: u64,
        max_records: usize,
        budget_bytes: usize,
    ) -> Option<(Vec<u8>, u64)> {
        self.unsent_frames(after, max_records, budget_bytes, 0)
            .await
            .into_iter()
            .next()
    }

    /// The next frames to send, one after the other, while they fit in `total_bytes` (at least one when
    /// anything is waiting): one request to the thread for many frames under a backlog.
    pub async fn unsent_frames(
        &self,
        after: u64,
        max_records: usize,
        budget_bytes: usize,
        total_bytes: usize,
    ) -> Vec<(Vec<u8>, u64)> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send_first(Request::Unsent {
            after,
            max_records,
            budget_bytes,
            total_bytes,
            reply_tx,
        });
        reply_rx.await.unwrap_or_default()
    }

    /// The coordinator has committed everything up to `up_to`.
    pub fn acknowledge(&self, up_to: u64) {
        self.send_first(Request::Acknowledge { up_to });
    }

    /// Hands the thread a request to handle before what is queued (it looks between two requests).
    fn send_first(&self, request: Request) {
        self.shared.first.lock().expect("first lock").push(request);
        self.shared.any_first.store(true, Ordering::Release);
        // Wakes an idle thread; a busy one sees the flag before it gets here.
        let _ = self.requests_tx.send(Request::Wake);
    }

    /// Returns once everything pushed before is on disk (results fsynced): before the agent exits.
    pub async fn sync(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.requests_tx.send(Request::Sync { done_tx }).is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Whether the coordinator has acknowledged every record pushed before this call.
    pub async fn all_acknowledged(&self) -> bool {
        let (reply_tx, reply_rx) = oneshot::channel();
        if self
            .requests_tx
            .send(Request::AllAcknowledged { reply_tx })
            .is_err()
        {
            return false;
        }
        reply_rx.await.unwrap_or(false)
    }

    fn running(&self) -> Option<Correlation> {
        self.shared.running.lock().expect("running lock").clone()
    }

    fn follow_running(&self, body: &RecordBody) {
        let mut running = self.shared.running.lock().expect("running lock");
        match body {
            RecordBody::SuiteStarted { suite, .. } => {
                *running = Some(Correlation {
                    suite: *suite,
                    test: String::new(),
                })
            }
            RecordBody::TestStarted { suite, test } => {
                *running = Some(Correlation {
                    suite: *suite,
                    test: test.clone(),
                })
            }
            RecordBody::TestFinished(outcome) => {
                *running = Some(Correlation {
                    suite: outcome.suite,
                    test: String::new(),
                })
            }
            RecordBody::SuiteFinished { .. } => *running = None,
            _ => {}
        }
    }

    /// Takes room in the queue for `body`, waiting for it; `None` if the writer is gone.
    async fn wait_for_room(&self, body: &RecordBody) -> Option<u32> {
        let cost = queue_cost(body);
        self.shared.room.acquire_many(cost).await.ok()?.forget();
        Some(cost)
    }

    fn send_append(
        &self,
        body: RecordBody,
        held_bytes: u32,
        durable_tx: Option<oneshot::Sender<Result<u64, String>>>,
    ) {
        let request = Request::Append {
            body,
            at_ms: now_ms(),
            held_bytes,
            durable_tx,
        };
        if self.requests_tx.send(request).is_err() {
            self.shared.room.add_permits(held_bytes as usize);
            tracing::error!("the spool's writer has stopped; a record is lost");
        }
    }
}

/// What a record takes in the queue: about its text, capped so that any record can get in.
fn queue_cost(body: &RecordBody) -> u32 {
    let text = match body {
        RecordBody::SuiteStarted { versions, .. } => {
            versions.commit.len()
                + versions.agent_version.len()
                + versions
                    .packages
                    .iter()
                    .map(|(name, version)| name.len() + version.len())
                    .sum::<usize>()
        }
        RecordBody::TestStarted { test, .. } => test.len(),
        RecordBody::Output { test, line, .. } => test.len() + line.len(),
        RecordBody::TestFinished(outcome) => {
            outcome.test.len()
                + outcome.message.len()
                + outcome.output_tail.len()
                + outcome
                    .subresults
                    .iter()
                    .map(|case| 16 + case.name.len() + case.classname.len() + case.message.len())
                    .sum::<usize>()
        }
        RecordBody::SuiteFinished { error, .. } => error.as_ref().map_or(0, String::len),
        RecordBody::Event { correlation, event } => {
            correlation.as_ref().map_or(0, |c| c.test.len())
                + event.kind.len()
                + event.summary.len()
                + event.data.len()
        }
    };
    (64 + text).min(QUEUE_BYTES) as u32
}

struct Writer {
    spool: Spool,
    requests_rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    /// Callers waiting for their record to be durable, with its sequence number.
    durable_waiters: Vec<(u64, oneshot::Sender<Result<u64, String>>)>,
}

impl Writer {
    /// Until every handle is gone: take what is queued, write it, make it durable, publish it.
    fn run(mut self) {
        // Idle, the thread sleeps until a request comes.
        while let Ok(first) = self.requests_rx.recv() {
            self.handle_first();
            self.handle(first);
            for _ in 1..DRAIN_BATCH {
                self.handle_first();
                match self.requests_rx.try_recv() {
                    Ok(request) => self.handle(request),
                    Err(_) => break,
                }
            }
            self.publish();
        }
        self.publish();
    }

    /// The session's requests, if any came.
    fn handle_first(&mut self) {
        if self.shared.any_first.load(Ordering::Acquire)
            && self.shared.any_first.swap(false, Ordering::AcqRel)
        {
            let requests = std::mem::take(&mut *self.shared.first.lock().expect("first lock"));
            for request in requests {
                self.handle(request);
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Wake => self.handle_first(),
            Request::Append {
                body,
                at_ms,
                held_bytes,
                durable_tx,
            } => {
                self.take_dropped();
                let outcome = self.spool.push_at(body, at_ms);
                self.shared.room.add_permits(held_bytes as usize);
                match (outcome, durable_tx) {
                    (Ok(seq), Some(durable_tx)) => self.durable_waiters.push((seq, durable_tx)),
                    (Ok(_), None) => {}
                    (Err(err), durable_tx) => {
                        // The disk is full or gone: the record cannot be kept, and saying so is all
                        // that is left.
                        tracing::error!(error = %err, "cannot spool a record");
                        if let Some(durable_tx) = durable_tx {
                            let _ = durable_tx.send(Err(err.to_string()));
                        }
                    }
                }
            }
            Request::AppendEvents { events, held_bytes } => {
                self.take_dropped();
                for (body, at_ms) in events {
                    if let Err(err) = self.spool.push_at(body, at_ms) {
                        tracing::error!(error = %err, "cannot spool an event");
                    }
                }
                self.shared.room.add_permits(held_bytes as usize);
            }
            Request::Unsent {
                after,
                max_records,
                budget_bytes,
                total_bytes,
                reply_tx,
            } => {
                self.publish();
                let frames =
                    self.spool
                        .unsent_frames(after, max_records, budget_bytes, total_bytes.max(1));
                let _ = reply_tx.send(frames);
            }
            Request::Acknowledge { up_to } => {
                if let Err(err) = self.spool.acknowledge(up_to) {
                    tracing::warn!(error = %err, "cannot trim the spool");
                }
            }
            Request::Sync { done_tx } => {
                self.publish();
                let _ = done_tx.send(());
            }
            Request::AllAcknowledged { reply_tx } => {
                let _ = reply_tx.send(self.spool.pending_count() == 0);
            }
        }
    }

    /// Counts in the spool what `push` dropped for want of room (a load first: this runs per record).
    fn take_dropped(&mut self) {
        if self.shared.any_dropped.load(Ordering::Acquire)
            && self.shared.any_dropped.swap(false, Ordering::AcqRel)
        {
            let dropped = std::mem::take(&mut *self.shared.dropped.lock().expect("dropped lock"));
            for (kind, count) in dropped {
                self.spool.dropped_behind(kind, count);
            }
        }
    }

    /// Makes what was written durable, then tells whoever waits for it.
    fn publish(&mut self) {
        if let Err(err) = self.spool.make_durable() {
            tracing::error!(error = %err, "cannot write the spool through");
            for (_, durable_tx) in self.durable_waiters.drain(..) {
                let _ = durable_tx.send(Err(err.to_string()));
            }
            return;
        }
        let last = self.spool.last_seq();
        if last > self.shared.published_up_to.load(Ordering::Acquire) {
            self.shared.published_up_to.store(last, Ordering::Release);
            self.shared.published.notify_one();
        }
        // After publishing: whoever waited sees its record published.
        for (seq, durable_tx) in self.durable_waiters.drain(..) {
            let _ = durable_tx.send(Ok(seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::run::{Exit, Record, SuiteRef, TestOutcome, TestStatus};

    fn event(data: &str) -> Event {
        Event {
            kind: "app".into(),
            summary: String::new(),
            data: data.into(),
        }
    }

    fn decode_frame(frame: &[u8]) -> Vec<Record> {
        match polarizer_shared::frame::decode(&frame[4..]).unwrap() {
            polarizer_shared::protocol::ClientFrame::Agent(
                polarizer_shared::protocol::AgentMessage::Records(records),
            ) => records,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn records_are_published_durable_in_order_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SharedSpool::start(Spool::open(dir.path(), 1 << 20).unwrap()).unwrap();
        let suite = SuiteRef {
            run: 1,
            suite: 2,
            attempt: 1,
        };
        spool.push(RecordBody::TestStarted {
            suite,
            test: "/t".into(),
        });
        spool.push_events_when_room(vec![(event("{}"), 5)]).await;
        let result = RecordBody::TestFinished(Box::new(TestOutcome {
            suite,
            test: "/t".into(),
            status: TestStatus::Pass,
            exit: Exit::Code(0),
            started_ms: 1,
            duration_ms: 1,
            message: String::new(),
            output_tail: String::new(),
            subresults: Vec::new(),
        }));
        assert_eq!(spool.push_durable(result).await, Ok(3));
        assert!(spool.published_up_to() >= 3);
        let (frame, last) = spool.unsent_frame(0, 512, 1 << 20).await.unwrap();
        assert_eq!(last, 3);
        let records = decode_frame(&frame);
        assert_eq!(records.len(), 3);
        // The event came while the test ran: it is stamped with it.
        match &records[1].body {
            RecordBody::Event { correlation, .. } => {
                assert_eq!(correlation.as_ref().unwrap().test, "/t")
            }
            other => panic!("{other:?}"),
        }
        assert!(!spool.all_acknowledged().await);
        spool.acknowledge(3);
        assert!(spool.all_acknowledged().await);
        assert!(spool.unsent_frame(0, 512, 1 << 20).await.is_none());
        // Numbering goes on after the acknowledged ones.
        spool.push_event(event("{}"));
        spool.sync().await;
        let (_, last) = spool.unsent_frame(3, 512, 1 << 20).await.unwrap();
        assert_eq!(last, 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_events_but_never_results_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SharedSpool::start(Spool::open(dir.path(), 1 << 30).unwrap()).unwrap();
        // Hold the whole queue, as a writer stuck on a slow disk would.
        let held = spool
            .shared
            .room
            .try_acquire_many(QUEUE_BYTES as u32)
            .unwrap();
        spool.push_event(event("{}"));
        spool.push(RecordBody::SuiteFinished {
            suite: SuiteRef {
                run: 1,
                suite: 2,
                attempt: 1,
            },
            error: None,
        });
        drop(held);
        spool.push_event(event(r#"{"after":1}"#));
        spool.sync().await;
        let (frame, _) = spool.unsent_frame(0, 512, 1 << 20).await.unwrap();
        let kinds: Vec<String> = decode_frame(&frame)
            .into_iter()
            .map(|record| match record.body {
                RecordBody::Event { event, .. } => format!("{}: {}", event.kind, event.summary),
                RecordBody::SuiteFinished { .. } => "suite finished".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "dropped: agent busy: the spool's writer fell behind and dropped 1 app",
                "suite finished",
                "app: "
            ]
        );
    }
}
