//! Serving `polarizer tail` and `polarizer replay`: stored events first, then (when following) every new
//! one as it commits. A follower subscribes before reading the store, so nothing falls between the two;
//! one that falls behind the live buffer is told how much it missed and carries on.

use std::sync::Arc;

use polarizer_shared::events::{EventRow, TailQuery};
use polarizer_shared::protocol::{OperatorResponse, ServerFrame};
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::broadcast;

use crate::daemon::fanout::FanOut;
use crate::store::StoreHandle;

/// Events per frame.
const BATCH: usize = 1000;

async fn send(stream: &mut FramedStream, response: OperatorResponse) -> Result<(), StreamError> {
    stream.send(&ServerFrame::Operator(response)).await
}

/// Frames stay far below the frame limit whatever the events hold (custom events reach 64 KiB each).
const FRAME_BUDGET_BYTES: usize = 4 * 1024 * 1024;

/// Sends events in as few frames as the budget allows, encoded from the rows themselves.
async fn send_events(stream: &mut FramedStream, events: &[&EventRow]) -> Result<(), StreamError> {
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len()
            && (end == start || bytes < FRAME_BUDGET_BYTES)
            && end - start < BATCH
        {
            let event = events[end];
            bytes += 64
                + event.agent.len()
                + event.kind.len()
                + event.test.len()
                + event.summary.len()
                + event.data.len();
            end += 1;
        }
        let frame = polarizer_shared::protocol::events_frame(&events[start..end]);
        stream.send_encoded(&frame).await?;
        start = end;
    }
    Ok(())
}

async fn error(stream: &mut FramedStream, message: String) -> Result<(), StreamError> {
    send(stream, OperatorResponse::Error { message }).await
}

pub async fn tail(
    stream: &mut FramedStream,
    store: &StoreHandle,
    fanout: &FanOut,
    query: TailQuery,
) -> Result<(), StreamError> {
    let grep = match query.grep.as_deref().map(fancy_regex::Regex::new) {
        Some(Err(err)) => return error(stream, format!("--grep: {err}")).await,
        Some(Ok(regex)) => Some(regex),
        None => None,
    };
    let wanted = |event: &EventRow| {
        crate::store::events::matches(&query, event)
            && grep.as_ref().is_none_or(|regex| {
                regex.is_match(&event.summary).unwrap_or(false)
                    || regex.is_match(&event.data).unwrap_or(false)
            })
    };
    let mut live = fanout.events.subscribe();
    let stored = {
        let query = query.clone();
        store.read(move |reader| reader.events(&query)).await
    };
    let stored = match stored {
        Ok(stored) => stored,
        Err(err) => return error(stream, err.to_string()).await,
    };
    let mut last_id = query.after_id.unwrap_or(0);
    let stored: Vec<&EventRow> = stored.iter().filter(|event| wanted(event)).collect();
    send_events(stream, &stored).await?;
    if let Some(last) = stored.last() {
        last_id = last_id.max(last.id);
    }
    if !query.follow {
        return send(stream, OperatorResponse::EventsEnd).await;
    }
    // What committed while the store was read is both stored and live: skipped by id.
    loop {
        let first = match live.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                send(stream, OperatorResponse::Lagged { missed }).await?;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let mut batch: Vec<Arc<EventRow>> = vec![first];
        let mut missed = 0;
        while batch.len() < BATCH {
            match live.try_recv() {
                Ok(event) => batch.push(event),
                Err(broadcast::error::TryRecvError::Lagged(count)) => missed += count,
                Err(_) => break,
            }
        }
        let events: Vec<&EventRow> = batch
            .iter()
            .map(|event| &**event)
            .filter(|event| event.id > last_id && wanted(event))
            .collect();
        if let Some(last) = events.last() {
            last_id = last.id;
            // Encoded from the published rows themselves: no copy per follower.
            send_events(stream, &events).await?;
        }
        if missed > 0 {
            send(stream, OperatorResponse::Lagged { missed }).await?;
        }
    }
}

pub async fn replay(
    stream: &mut FramedStream,
    store: &StoreHandle,
    run: u64,
) -> Result<(), StreamError> {
    let exists = store.read(move |reader| reader.run(run)).await;
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => return error(stream, format!("no run {run}")).await,
        Err(err) => return error(stream, err.to_string()).await,
    }
    match store.read(move |reader| reader.timeline(run)).await {
        Ok(events) => {
            let events: Vec<&EventRow> = events.iter().collect();
            send_events(stream, &events).await?;
            send(stream, OperatorResponse::EventsEnd).await
        }
        Err(err) => error(stream, err.to_string()).await,
    }
}
