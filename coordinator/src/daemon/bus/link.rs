//! What the two protocols' links share: the reconnection loop across a bus's URLs, the log form of a
//! URL, a message's digest, and marking an outgoing CI message sent or not.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::BusConfig;
use super::Buses;
use crate::daemon::clock::now_ms;
use crate::store::bus::{self as store_bus, Outgoing};
use crate::store::sql::sqlite_error;

/// The longest wait between connection tries.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection that held this long starts the waits over.
const HELD: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
pub(super) enum Role {
    Consumer,
    Publisher,
}

/// A URL without its password, for log lines.
pub(super) fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The first half of a SHA-256, in hex: the id of a message that has none.
pub(super) fn digest(data: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, data);
    hash.as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Runs `session` on the bus's URLs in turn until it ends well (shutdown), waiting 1 s doubling to a
/// minute between failures; each failure is logged naming the bus and the URL (without its password).
pub(super) async fn reconnecting<F, Fut>(
    bus: &BusConfig,
    role: Role,
    shutdown: &CancellationToken,
    mut session: F,
) where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tries = 0u32;
    for next in 0usize.. {
        let url = bus.urls[next % bus.urls.len()].clone();
        let began = Instant::now();
        let err = match session(url.clone()).await {
            Ok(()) => return,
            Err(err) => err,
        };
        match role {
            Role::Consumer => {
                warn!(bus = %bus.name, url = %shown(&url), error = %err, "bus consumer: connection lost or refused; trying again")
            }
            Role::Publisher => {
                warn!(bus = %bus.name, url = %shown(&url), error = %err, "bus publisher: cannot send; the messages stay stored")
            }
        }
        tries = if began.elapsed() > HELD { 0 } else { tries + 1 };
        let wait = Duration::from_secs(1u64 << tries.min(6)).min(BACKOFF_MAX);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The broker took `message`: stored as sent.
pub(super) async fn sent(buses: &Buses, bus: &BusConfig, message: &Outgoing) -> Result<(), String> {
    let id = message.id;
    buses
        .context
        .store
        .write(move |savepoint, path| {
            store_bus::sent(savepoint, id, now_ms()).map_err(sqlite_error(path))
        })
        .await
        .map_err(|err| err.to_string())?;
    buses
        .metrics
        .published
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    info!(bus = %bus.name, topic = %message.topic, message_id = %message.message_id, "CI message sent");
    Ok(())
}

/// The broker did not take `message`: its try is counted with the error, and the link ends (it is
/// sent again on the next one); answers the error for the reconnection loop.
pub(super) async fn not_sent(buses: &Buses, message: &Outgoing, error: String) -> String {
    let (id, stored) = (message.id, error.clone());
    let _ = buses
        .context
        .store
        .write(move |savepoint, path| {
            store_bus::not_sent(savepoint, id, &stored).map_err(sqlite_error(path))
        })
        .await;
    format!("{} ({}): {error}", message.topic, message.message_id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_log_lines() {
        assert_eq!(
            super::shown("amqps://fedora:secret@rabbitmq.example/%2Fpublic_pubsub"),
            "amqps://…@rabbitmq.example/%2Fpublic_pubsub"
        );
        assert_eq!(
            super::shown("amqp://127.0.0.1:5672"),
            "amqp://127.0.0.1:5672"
        );
    }
}
