//! Serving `polarizer tail` and `polarizer replay`: stored events read and sent a page at a time (the
//! coordinator never holds a whole log), then (when following) every new one as it commits. A follower
//! subscribes before reading the store, so nothing falls between the two. One that falls behind the
//! live ring is told how far, takes a fresh place in the ring and catches up from the store: it misses
//! nothing, and holds no more than a page. Both end early, with [`Ended::ShuttingDown`], when the
//! coordinator stops.

use polarizer_shared::events::{EventRow, TailQuery};
use polarizer_shared::protocol::{OperatorResponse, ServerFrame};
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::daemon::fanout::{FanOut, LiveEvent, LiveRow};
use crate::store::events::{PageLimit, TimelineCursor};
use crate::store::StoreHandle;

/// Events per frame.
const BATCH: usize = 1000;

/// Frames stay far below the frame limit whatever the events hold (custom events reach 64 KiB each).
const FRAME_BUDGET_BYTES: usize = 4 * 1024 * 1024;

/// A page of stored events: one frame's worth.
pub const PAGE: PageLimit = PageLimit {
    rows: BATCH,
    bytes: FRAME_BUDGET_BYTES,
};

/// How a streamed answer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// As asked: everything sent, or an error answered.
    Done,
    /// The coordinator is stopping; the caller tells the peer.
    ShuttingDown,
}

async fn send(stream: &mut FramedStream, response: OperatorResponse) -> Result<(), StreamError> {
    stream.send(&ServerFrame::Operator(response)).await
}

/// An event as a tail sends it: read from the store, or from the live ring (whose JSON is written once
/// for every follower).
#[derive(Clone, Copy, Debug)]
pub enum Outgoing<'a> {
    Stored(&'a EventRow),
    Live(&'a LiveRow),
}

impl<'a> Outgoing<'a> {
    pub fn row(self) -> &'a EventRow {
        match self {
            Outgoing::Stored(row) => row,
            Outgoing::Live(live) => live.row(),
        }
    }

    /// The event as `tail --json` prints it.
    pub fn json(self) -> std::borrow::Cow<'a, str> {
        match self {
            Outgoing::Stored(row) => crate::core::views::event_json(row).to_string().into(),
            Outgoing::Live(live) => live.json().into(),
        }
    }
}

/// Sends events in as few frames as the budget allows, encoded from the rows themselves.
async fn send_events(
    stream: &mut FramedStream,
    events: &[Outgoing<'_>],
) -> Result<(), StreamError> {
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len()
            && (end == start || bytes < FRAME_BUDGET_BYTES)
            && end - start < BATCH
        {
            bytes += events[end].row().approximate_bytes();
            end += 1;
        }
        let rows: Vec<&EventRow> = events[start..end].iter().map(|event| event.row()).collect();
        let frame = polarizer_shared::protocol::events_frame(&rows);
        stream.send_encoded(&frame).await?;
        start = end;
    }
    Ok(())
}

/// Where a tail's answer goes: an operator's QUIC stream, or a WebSocket of the HTTP API.
pub trait Sink: Send {
    type Error: Send;
    /// Events, in order.
    fn events(
        &mut self,
        events: &[Outgoing<'_>],
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
    /// One of the answers a tail gives besides events: `Lagged`, `EventsEnd`, `Error`.
    fn answer(
        &mut self,
        response: OperatorResponse,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
    /// After how long a quiet stream says it is alive ([`heartbeat`](Self::heartbeat)); `None`: never
    /// (QUIC has keep-alives of its own).
    fn heartbeat_every(&self) -> Option<std::time::Duration> {
        None
    }
    /// Said when nothing else was for [`heartbeat_every`](Self::heartbeat_every): the client (and any
    /// proxy between) sees the stream alive, and a client that is gone is found.
    fn heartbeat(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// Waits `quiet` (forever when `None`): a heartbeat's turn.
pub async fn quiet_for(quiet: Option<std::time::Duration>) {
    match quiet {
        Some(quiet) => tokio::time::sleep(quiet).await,
        None => std::future::pending().await,
    }
}

impl Sink for FramedStream {
    type Error = StreamError;

    async fn events(&mut self, events: &[Outgoing<'_>]) -> Result<(), StreamError> {
        send_events(self, events).await
    }

    async fn answer(&mut self, response: OperatorResponse) -> Result<(), StreamError> {
        send(self, response).await
    }
}

async fn error<S: Sink>(stream: &mut S, message: String) -> Result<Ended, S::Error> {
    stream.answer(OperatorResponse::Error { message }).await?;
    Ok(Ended::Done)
}

/// Where a catch-up from the store left the follower.
enum Progress {
    CaughtUp,
    Stop(Ended),
}

/// One `tail`: its filters, its stream, and the last event id it has sent or passed over.
struct Follower<'a, S> {
    stream: &'a mut S,
    store: &'a StoreHandle,
    query: TailQuery,
    grep: Option<fancy_regex::Regex>,
    last_id: u64,
    page: PageLimit,
}

impl<S: Sink> Follower<'_, S> {
    fn wanted(&self, event: &EventRow) -> bool {
        crate::store::events::matches(&self.query, event)
            && self.grep.as_ref().is_none_or(|regex| {
                regex.is_match(&event.summary).unwrap_or(false)
                    || regex.is_match(&event.data).unwrap_or(false)
            })
    }

    /// Sends the stored events after `last_id`, a page at a time, until a page comes back short.
    async fn catch_up(&mut self, shutdown: &CancellationToken) -> Result<Progress, S::Error> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(Progress::Stop(Ended::ShuttingDown));
            }
            let (query, after, limit) = (self.query.clone(), self.last_id, self.page);
            let page = match self
                .store
                .read(move |reader| reader.events_page(&query, after, limit))
                .await
            {
                Ok(page) => page,
                Err(err) => return Ok(Progress::Stop(error(self.stream, err.to_string()).await?)),
            };
            let Some(last) = page.last() else {
                return Ok(Progress::CaughtUp);
            };
            self.last_id = last.id;
            let wanted: Vec<Outgoing> = page
                .iter()
                .filter(|event| self.wanted(event))
                .map(Outgoing::Stored)
                .collect();
            self.stream.events(&wanted).await?;
            if !limit.filled_by(&page) {
                return Ok(Progress::CaughtUp);
            }
        }
    }
}

pub async fn tail<S: Sink>(
    stream: &mut S,
    store: &StoreHandle,
    fanout: &FanOut,
    query: TailQuery,
    shutdown: &CancellationToken,
) -> Result<Ended, S::Error> {
    tail_paged(stream, store, fanout, query, shutdown, PAGE).await
}

async fn tail_paged<S: Sink>(
    stream: &mut S,
    store: &StoreHandle,
    fanout: &FanOut,
    query: TailQuery,
    shutdown: &CancellationToken,
    page: PageLimit,
) -> Result<Ended, S::Error> {
    let grep = match query.grep.as_deref().map(fancy_regex::Regex::new) {
        Some(Err(err)) => return error(stream, format!("--grep: {err}")).await,
        Some(Ok(regex)) => Some(regex),
        None => None,
    };
    let mut live = fanout.events.subscribe();
    let start = {
        let query = query.clone();
        store.read(move |reader| reader.events_start(&query)).await
    };
    let start = match start {
        Ok(start) => start,
        Err(err) => return error(stream, err.to_string()).await,
    };
    let follow = query.follow;
    let mut follower = Follower {
        stream,
        store,
        query,
        grep,
        last_id: start,
        page,
    };
    if let Progress::Stop(ended) = follower.catch_up(shutdown).await? {
        return Ok(ended);
    }
    if !follow {
        follower.stream.answer(OperatorResponse::EventsEnd).await?;
        return Ok(Ended::Done);
    }
    // What committed while the store was read is both stored and live: skipped by id.
    let quiet = follower.stream.heartbeat_every();
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Ended::ShuttingDown),
            received = live.recv() => received,
            () = quiet_for(quiet) => {
                follower.stream.heartbeat().await?;
                continue;
            }
        };
        let mut batch: Vec<LiveEvent> = Vec::new();
        let mut lagged = None;
        match first {
            Ok(event) => batch.push(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => lagged = Some(missed),
            Err(broadcast::error::RecvError::Closed) => return Ok(Ended::Done),
        }
        while lagged.is_none() && batch.len() < BATCH {
            match live.try_recv() {
                Ok(event) => batch.push(event),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => lagged = Some(missed),
                Err(_) => break,
            }
        }
        // Sent from the ring up to the first event it could not hold; from there on, from the store.
        let mut from_store = lagged.is_some();
        let mut events: Vec<Outgoing> = Vec::new();
        for item in &batch {
            match item {
                LiveEvent::Event(event) if event.row().id > follower.last_id => {
                    if follower.wanted(event.row()) {
                        // Encoded from the published rows themselves: no copy per follower.
                        events.push(Outgoing::Live(event));
                    }
                    follower.last_id = event.row().id;
                }
                LiveEvent::Event(_) => {}
                LiveEvent::Stored { id } if *id > follower.last_id => {
                    from_store = true;
                    break;
                }
                LiveEvent::Stored { .. } => {}
            }
        }
        follower.stream.events(&events).await?;
        drop(events);
        drop(batch);
        if let Some(missed) = lagged {
            follower
                .stream
                .answer(OperatorResponse::Lagged { missed })
                .await?;
            // A fresh place at the ring's head, taken before the store is read: whatever the store
            // does not have yet, the ring will.
            live = fanout.events.subscribe();
        }
        if from_store {
            if let Progress::Stop(ended) = follower.catch_up(shutdown).await? {
                return Ok(ended);
            }
        }
    }
}

pub async fn replay(
    stream: &mut FramedStream,
    store: &StoreHandle,
    run: u64,
    shutdown: &CancellationToken,
) -> Result<Ended, StreamError> {
    let exists = store.read(move |reader| reader.run(run)).await;
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => return error(stream, format!("no run {run}")).await,
        Err(err) => return error(stream, err.to_string()).await,
    }
    send_timeline(stream, store, run, shutdown, PAGE).await
}

/// A run's timeline a page at a time, then `EventsEnd`.
async fn send_timeline(
    stream: &mut FramedStream,
    store: &StoreHandle,
    run: u64,
    shutdown: &CancellationToken,
    limit: PageLimit,
) -> Result<Ended, StreamError> {
    let mut after: Option<TimelineCursor> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(Ended::ShuttingDown);
        }
        let page = match store
            .read(move |reader| reader.timeline_page(run, after, limit))
            .await
        {
            Ok(page) => page,
            Err(err) => return error(stream, err.to_string()).await,
        };
        let Some(last) = page.last() else { break };
        after = Some(TimelineCursor::after(last));
        send_events(
            stream,
            &page.iter().map(Outgoing::Stored).collect::<Vec<_>>(),
        )
        .await?;
        if !limit.filled_by(&page) {
            break;
        }
    }
    send(stream, OperatorResponse::EventsEnd).await?;
    Ok(Ended::Done)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use polarizer_shared::protocol::{ClientFrame, OperatorRequest};

    use super::*;
    use crate::daemon::loopback::{self, Loopback};
    use crate::data_dir::DataDir;
    use crate::store::{events, Store};

    /// Stores events of vm-1 (in run 7, at these agent times) in one transaction; returns them as stored.
    async fn store_events(store: &StoreHandle, agent_times: &[i64]) -> Vec<EventRow> {
        let agent_times = agent_times.to_vec();
        store
            .write(move |savepoint, path| {
                let first = events::next_id(savepoint, path)?;
                let rows: Vec<EventRow> = agent_times
                    .iter()
                    .enumerate()
                    .map(|(index, agent_ms)| EventRow {
                        id: first + index as u64,
                        agent: "vm-1".into(),
                        seq: first + index as u64,
                        agent_ms: *agent_ms,
                        received_ms: 7,
                        kind: "app".into(),
                        run: Some(7),
                        summary: format!("event at {agent_ms}"),
                        ..EventRow::default()
                    })
                    .collect();
                events::insert_rows(savepoint, path, "vm-1", 7, &rows.iter().collect::<Vec<_>>())?;
                Ok(rows)
            })
            .await
            .unwrap()
    }

    /// The coordinator's end of a stream the operator opened with `request`, and the operator's end.
    async fn operator_stream(
        loopback: &Loopback,
        request: OperatorRequest,
    ) -> (FramedStream, FramedStream) {
        let mut operator = FramedStream::open(&loopback.connected).await.unwrap();
        operator
            .send(&ClientFrame::Operator(request))
            .await
            .unwrap();
        let mut coordinator = FramedStream::accept(&loopback.accepted).await.unwrap();
        let _request: ClientFrame = coordinator.expect().await.unwrap();
        (coordinator, operator)
    }

    async fn answer(operator: &mut FramedStream) -> OperatorResponse {
        match operator.expect::<ServerFrame>().await.unwrap() {
            ServerFrame::Operator(response) => response,
            other => panic!("not an operator answer: {other:?}"),
        }
    }

    /// Reads `Events` frames until `count` events have come; returns them and how many frames.
    async fn events_until(
        operator: &mut FramedStream,
        count: usize,
        lagged: &mut Vec<u64>,
    ) -> (Vec<EventRow>, usize) {
        let (mut received, mut frames) = (Vec::new(), 0);
        while received.len() < count {
            match answer(operator).await {
                OperatorResponse::Events(events) => {
                    frames += 1;
                    received.extend(events);
                }
                OperatorResponse::Lagged { missed } => lagged.push(missed),
                other => panic!("unexpected {other:?}"),
            }
        }
        (received, frames)
    }

    /// A follower that falls behind the live ring is told by how much, then catches up from the store
    /// a few rows at a time: it sees every event once, in order, and holds at most a page.
    #[tokio::test]
    async fn a_follower_that_falls_behind_is_told_and_catches_up_from_the_store_in_pages() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(temp.path());
        let loopback = loopback::connect(&data_dir).await;
        let (store, _writer) = Store::open(&data_dir.database()).unwrap();
        let fanout = Arc::new(FanOut::with_capacity(16, 8));
        let query = TailQuery {
            follow: true,
            ..TailQuery::default()
        };
        let before = store_events(&store, &[0]).await;
        let (mut coordinator, mut operator) =
            operator_stream(&loopback, OperatorRequest::Tail(Box::new(query.clone()))).await;
        let shutdown = CancellationToken::new();
        let following = tokio::spawn({
            let (store, fanout, shutdown) = (store.clone(), fanout.clone(), shutdown.clone());
            let page = PageLimit {
                rows: 3,
                bytes: usize::MAX,
            };
            async move { tail_paged(&mut coordinator, &store, &fanout, query, &shutdown, page).await }
        });
        // Once the event stored before it arrives, the follower has read the store and follows the ring.
        let (received, _) = events_until(&mut operator, 1, &mut Vec::new()).await;
        assert_eq!(received, before);
        // Twenty events commit and are published at once: the ring of 8 drops 12 of them for this
        // follower before it can read one.
        let stored = store_events(&store, &[1; 20]).await;
        for event in &stored {
            fanout
                .events
                .send(LiveEvent::Event(Arc::new(LiveRow::new(event.clone()))))
                .unwrap();
        }
        let mut lagged = Vec::new();
        let (received, frames) = events_until(&mut operator, 20, &mut lagged).await;
        assert_eq!(received, stored, "every event once, in order");
        assert_eq!(lagged, [12]);
        assert!(frames >= 7, "read and sent 3 at a time: {frames} frames");
        // Then it follows live again; an event too large for the ring comes from the store.
        let later = store_events(&store, &[2]).await;
        fanout
            .events
            .send(LiveEvent::Stored { id: later[0].id })
            .unwrap();
        let (received, _) = events_until(&mut operator, 1, &mut lagged).await;
        assert_eq!(received, later);
        // The coordinator stopping ends it.
        shutdown.cancel();
        assert_eq!(following.await.unwrap().unwrap(), Ended::ShuttingDown);
    }

    /// `tail -n N` starts at the newest N (matching its filters), and without following it ends.
    #[tokio::test]
    async fn a_tail_with_a_limit_starts_at_the_newest_and_ends_without_following() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(temp.path());
        let loopback = loopback::connect(&data_dir).await;
        let (store, _writer) = Store::open(&data_dir.database()).unwrap();
        let stored = store_events(&store, &[1; 10]).await;
        let query = TailQuery {
            limit: Some(4),
            ..TailQuery::default()
        };
        let (mut coordinator, mut operator) =
            operator_stream(&loopback, OperatorRequest::Tail(Box::new(query.clone()))).await;
        let page = PageLimit {
            rows: 3,
            bytes: usize::MAX,
        };
        let ended = tail_paged(
            &mut coordinator,
            &store,
            &FanOut::default(),
            query,
            &CancellationToken::new(),
            page,
        )
        .await;
        assert_eq!(ended.unwrap(), Ended::Done);
        let (received, _) = events_until(&mut operator, 4, &mut Vec::new()).await;
        assert_eq!(received, stored[6..]);
        assert_eq!(answer(&mut operator).await, OperatorResponse::EventsEnd);
    }

    /// A run's timeline goes out a page at a time, in the agents' time order (ties in arrival order).
    #[tokio::test]
    async fn a_timeline_is_sent_in_pages_in_time_order() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(temp.path());
        let loopback = loopback::connect(&data_dir).await;
        let (store, _writer) = Store::open(&data_dir.database()).unwrap();
        let mut stored = store_events(&store, &[5, 3, 5, 1, 3, 5, 2, 2, 9, 0]).await;
        let (mut coordinator, mut operator) =
            operator_stream(&loopback, OperatorRequest::Replay { run: 7 }).await;
        let page = PageLimit {
            rows: 3,
            bytes: usize::MAX,
        };
        let ended =
            send_timeline(&mut coordinator, &store, 7, &CancellationToken::new(), page).await;
        assert_eq!(ended.unwrap(), Ended::Done);
        let (received, frames) = events_until(&mut operator, 10, &mut Vec::new()).await;
        assert_eq!(frames, 4, "10 events, 3 a page");
        stored.sort_by_key(|event| (event.agent_ms, event.id));
        assert_eq!(received, stored);
        assert_eq!(answer(&mut operator).await, OperatorResponse::EventsEnd);
    }
}
