//! `POST /hooks/github`: a delivery is read only after its `X-Hub-Signature-256` (HMAC-SHA256 of the
//! raw body with the webhook secret, compared in constant time) checks out; it is stored, then
//! answered (202) at once, and planned in the background. Every delivery, refused ones too, is a line
//! in the log and in `polarizer triggers`; only a signed change to a configured repository can
//! start a run.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use polarizer_shared::triggers::TriggerOutcome;
use tracing::{info, warn};

use super::Github;
use crate::core::github::{read_delivery, Delivery};
use crate::daemon::clock::now_ms;
use crate::store::sql::sqlite_error;
use crate::store::triggers::{NewTrigger, Recorded};

/// GitHub caps a delivery's payload at 25 MB.
pub const BODY_LIMIT: usize = 25 * 1024 * 1024;
/// The whole body must arrive within this.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Is `signature` (`sha256=HEX`) the HMAC-SHA256 of `body` under `secret`? Constant time in the
/// comparison (ring's `verify`).
pub fn signature_matches(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let mut tag = [0u8; 32];
    for (index, byte) in tag.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16) {
            Ok(value) => *byte = value,
            Err(_) => return false,
        }
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &tag).is_ok()
}

fn trigger_event(event: &str) -> String {
    crate::core::github::truncate(event, 64)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// A delivery id as GitHub makes them (a UUID); anything else is not kept.
fn delivery_id(text: &str) -> Option<String> {
    (!text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    .then(|| text.to_string())
}

pub async fn receive(
    State(github): State<Arc<Github>>,
    ConnectInfo(crate::daemon::http_tls::Peer(peer)): ConnectInfo<crate::daemon::http_tls::Peer>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    github.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
    let received_ms = now_ms();
    let raw_delivery = header(&headers, "x-github-delivery");
    let delivery = delivery_id(raw_delivery).unwrap_or_default();
    let event = header(&headers, "x-github-event").to_string();
    let refuse = |status: StatusCode, reason: String| {
        github.metrics.refused.fetch_add(1, Ordering::Relaxed);
        let trigger = NewTrigger {
            received_ms,
            source: "github".into(),
            delivery: delivery.clone(),
            event: crate::core::github::truncate(&event, 64),
            outcome: Some(TriggerOutcome::Refused),
            reason: format!("{} {reason} (from {peer})", status.as_u16()),
            ..Default::default()
        };
        // Anyone can send these: the log line and the stored line come out of a bounded budget, so a
        // flood of forgeries neither fills the log nor holds up the store.
        if github.record_line(trigger) {
            warn!(%peer, delivery = %delivery, event = %trigger_event(&event), status = status.as_u16(), reason = %reason, "GitHub delivery refused");
        }
        std::future::ready((status, format!("{reason}\n")))
    };
    if !raw_delivery.is_empty() && delivery.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "X-GitHub-Delivery is not a delivery id".into(),
        )
        .await;
    }
    let declared = header(&headers, "content-length").parse::<usize>().ok();
    if declared.is_some_and(|length| length > BODY_LIMIT) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over the {BODY_LIMIT}-byte limit"),
        )
        .await;
    }
    // A sender that trickles its body is cut off rather than held open.
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await {
            Ok(Ok(body)) => body,
            Err(_) => {
                return refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("body not received within {} s", BODY_TIMEOUT.as_secs()),
                )
                .await
            }
            Ok(Err(_)) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body over the {BODY_LIMIT}-byte limit, or cut short"),
                )
                .await
            }
        };
    let signature = header(&headers, "x-hub-signature-256");
    if signature.is_empty() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no X-Hub-Signature-256: set the webhook's secret".into(),
        )
        .await;
    }
    if !signature_matches(&github.config.webhook_secret, &body, signature) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "X-Hub-Signature-256 does not match the body under the webhook secret".into(),
        )
        .await;
    }
    if event.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "no X-GitHub-Event".into()).await;
    }
    if let Some(failing) = github.context.store.failing() {
        // GitHub shows the failure and can redeliver; nothing is taken that cannot be stored.
        warn!(%peer, delivery = %delivery, error = %failing.error, "GitHub delivery not taken: the store cannot commit");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the coordinator cannot store deliveries now; redeliver later\n".into(),
        );
    }
    // A redelivery seen lately is answered from memory, before its body is read.
    if let Some(of) = github.seen(&delivery) {
        github.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
        let reason = format!("delivery {delivery} was received before (trigger {of})");
        github.record_line(NewTrigger {
            received_ms,
            source: "github".into(),
            delivery: delivery.clone(),
            event: trigger_event(&event),
            outcome: Some(TriggerOutcome::Duplicate),
            reason,
            ..Default::default()
        });
        return (
            StatusCode::OK,
            format!("duplicate of trigger {of}: nothing started\n"),
        );
    }
    let read = match read_delivery(&event, &body) {
        Ok(read) => read,
        Err(malformed) => return refuse(StatusCode::BAD_REQUEST, malformed.to_string()).await,
    };
    let mut trigger = NewTrigger {
        received_ms,
        source: "github".into(),
        delivery: delivery.clone(),
        event: crate::core::github::truncate(&event, 64),
        ..Default::default()
    };
    let answer = match read {
        Delivery::Ping { repo } => {
            trigger.repo = repo;
            trigger.outcome = Some(TriggerOutcome::Ignored);
            trigger.reason = "ping: the hook reaches Polarizer and its secret matches".into();
            (StatusCode::OK, "pong\n".to_string())
        }
        Delivery::Ignored {
            repo,
            event,
            sha,
            git_ref,
            reason,
        } => {
            trigger.repo = repo;
            trigger.event = event;
            trigger.sha = sha;
            trigger.git_ref = git_ref;
            trigger.outcome = Some(TriggerOutcome::Ignored);
            trigger.reason = reason.clone();
            (StatusCode::OK, format!("ignored: {reason}\n"))
        }
        Delivery::Change(change) => {
            trigger.repo = change.repo.clone();
            trigger.event = change.event.clone();
            trigger.kind = change.kind.as_str().into();
            trigger.sha = change.sha.clone();
            trigger.git_ref = change.git_ref.clone();
            if github.config.repo(&change.repo).is_none() {
                trigger.outcome = Some(TriggerOutcome::Ignored);
                trigger.reason = format!("repository {} is not in [[github.repos]]", change.repo);
                (StatusCode::OK, format!("ignored: {}\n", trigger.reason))
            } else {
                trigger.change_json = serde_json::to_string(&change).unwrap_or_default();
                (StatusCode::ACCEPTED, String::new())
            }
        }
    };
    let window_ms = github.config.dedup_window.as_millis() as i64;
    let stored_trigger = trigger.clone();
    let recorded = github
        .context
        .store
        .write(move |savepoint, path| {
            crate::store::triggers::record(savepoint, &stored_trigger, window_ms)
                .map_err(sqlite_error(path))
        })
        .await;
    match recorded {
        Err(err) => {
            warn!(%peer, delivery = %delivery, error = %err, "GitHub delivery not stored");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the coordinator cannot store deliveries now; redeliver later\n".into(),
            )
        }
        Ok(Recorded::Duplicate { id, of }) => {
            github.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
            github.remember(&delivery, of);
            info!(trigger = id, of, delivery = %delivery, repo = %trigger.repo, sha = %trigger.sha, "GitHub delivery is a duplicate");
            (
                StatusCode::OK,
                format!("duplicate of trigger {of}: nothing started\n"),
            )
        }
        Ok(Recorded::New(id)) => {
            github.remember(&delivery, id);
            info!(trigger = id, delivery = %delivery, event = %trigger.event, repo = %trigger.repo, sha = %trigger.sha, outcome = %trigger.outcome.unwrap_or(TriggerOutcome::Received), "GitHub delivery");
            let (status, text) = answer;
            if status == StatusCode::ACCEPTED {
                github.wake_planner.notify_one();
                (status, format!("trigger {id}\n"))
            } else {
                (status, text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, body);
        format!(
            "sha256={}",
            tag.as_ref()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        )
    }

    #[test]
    fn signatures_check_the_whole_body_under_the_secret() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = sign(b"secret", body);
        assert!(signature_matches(b"secret", body, &good));
        assert!(!signature_matches(b"other", body, &good));
        assert!(!signature_matches(b"secret", b"{}", &good));
        assert!(!signature_matches(
            b"secret",
            body,
            &good.replace("sha256=", "sha1=")
        ));
        assert!(!signature_matches(b"secret", body, "sha256=zz"));
        assert!(!signature_matches(b"secret", body, &format!("{good}00")));
        // A multi-byte character where a hex digit goes is refused, not a panic.
        let odd = format!("sha256={}é", "0".repeat(62));
        assert!(!signature_matches(b"secret", body, &odd));
    }
}
