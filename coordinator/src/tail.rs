//! Serving `polarizer tail` and `polarizer replay`: stored events first, then (when following) every new
//! one as it commits. A follower subscribes before reading the store, so nothing falls between the two;
//! one that falls behind the live buffer is told how much it missed and carries on.

use std::sync::Arc;

use polarizer_shared::events::{EventRow, TailQuery};
use polarizer_shared::protocol::{OperatorResponse, ServerFrame};
use polarizer_transport::{FramedStream, StreamError};
use tokio::sync::broadcast;

use crate::server::Shared;

/// Events per frame.
const BATCH: usize = 1000;

async fn send(stream: &mut FramedStream, response: OperatorResponse) -> Result<(), StreamError> {
    stream.send(&ServerFrame::Operator(response)).await
}

async fn error(stream: &mut FramedStream, message: String) -> Result<(), StreamError> {
    send(stream, OperatorResponse::Error { message }).await
}

pub async fn tail(
    stream: &mut FramedStream,
    shared: &Shared,
    query: TailQuery,
) -> Result<(), StreamError> {
    let grep = match query.grep.as_deref().map(fancy_regex::Regex::new) {
        Some(Err(err)) => return error(stream, format!("--grep: {err}")).await,
        Some(Ok(regex)) => Some(regex),
        None => None,
    };
    let wanted = |event: &EventRow| {
        crate::events::matches(&query, event)
            && grep.as_ref().is_none_or(|regex| {
                regex.is_match(&event.summary).unwrap_or(false)
                    || regex.is_match(&event.data).unwrap_or(false)
            })
    };
    let mut live = shared.events.subscribe();
    let stored = {
        let query = query.clone();
        shared.store.read(move |reader| reader.events(&query)).await
    };
    let stored = match stored {
        Ok(stored) => stored,
        Err(err) => return error(stream, err.to_string()).await,
    };
    let mut last_id = query.after_id.unwrap_or(0);
    let stored: Vec<EventRow> = stored.into_iter().filter(|event| wanted(event)).collect();
    for chunk in stored.chunks(BATCH) {
        send(stream, OperatorResponse::Events(chunk.to_vec())).await?;
    }
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
        let events: Vec<EventRow> = batch
            .iter()
            .filter(|event| event.id > last_id && wanted(event))
            .map(|event| EventRow::clone(event))
            .collect();
        if let Some(last) = events.last() {
            last_id = last.id;
            send(stream, OperatorResponse::Events(events)).await?;
        }
        if missed > 0 {
            send(stream, OperatorResponse::Lagged { missed }).await?;
        }
    }
}

pub async fn replay(
    stream: &mut FramedStream,
    shared: &Shared,
    run: u64,
) -> Result<(), StreamError> {
    let exists = shared.store.read(move |reader| reader.run(run)).await;
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => return error(stream, format!("no run {run}")).await,
        Err(err) => return error(stream, err.to_string()).await,
    }
    match shared.store.read(move |reader| reader.timeline(run)).await {
        Ok(events) => {
            for chunk in events.chunks(BATCH) {
                send(stream, OperatorResponse::Events(chunk.to_vec())).await?;
            }
            send(stream, OperatorResponse::EventsEnd).await
        }
        Err(err) => error(stream, err.to_string()).await,
    }
}
