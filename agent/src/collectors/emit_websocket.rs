//! The browser bridge: a WebSocket on a loopback address where a web app under test (its redux store,
//! an observable: `clients/js`) sends custom events while a test runs. Each text message is one JSON
//! object as on the emit socket, `{"kind": "app", "data": {...}, "summary": "..."}`, answered by a text
//! message `ok` or `error: <why>`; the event is tagged with the running test like any other.
//!
//! Off unless `emit_websocket` names an address, and loopback only (checked with the configuration):
//! the pages that may reach it are those of this host's browser. Messages are bounded as events are,
//! and so is the number of open connections.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use polarizer_shared::events::MAX_EVENT_BYTES;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::collectors::emit::parse;
use crate::spool::SharedSpool;

/// Pages connected at once, at most; more wait for one to close.
const CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, spool: SharedSpool, shutdown: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        info!(address = %address, "browser bridge: listening for custom events over WebSocket");
    }
    let open = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit,
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let spool = spool.clone();
                tokio::spawn(async move {
                    if let Err(err) = connection(stream, spool).await {
                        info!(peer = %peer, error = %err, "browser bridge: connection ended");
                    }
                    drop(permit);
                });
            }
            Err(err) => warn!(error = %err, "browser bridge: cannot accept"),
        }
    }
}

async fn connection(
    stream: TcpStream,
    spool: SharedSpool,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_EVENT_BYTES + 1024))
        .max_frame_size(Some(MAX_EVENT_BYTES + 1024));
    let mut socket = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    while let Some(message) = socket.next().await {
        let reply = match message? {
            Message::Text(text) => match parse(text.as_bytes()) {
                Ok(event) => {
                    // Waits while the spool's writer is behind, as the emit socket does: the `ok` a
                    // page reads is an event the spool has.
                    spool
                        .push_events_when_room(vec![(event, crate::spool::now_ms())])
                        .await;
                    "ok".to_string()
                }
                Err(reason) => {
                    warn!(reason, "browser bridge: custom event refused");
                    format!("error: {reason}")
                }
            },
            Message::Binary(_) => "error: send each event as a text message of JSON".to_string(),
            Message::Close(_) => break,
            // Pings are answered by the library; pongs and raw frames need nothing.
            _ => continue,
        };
        socket.send(Message::text(reply)).await?;
    }
    Ok(())
}
