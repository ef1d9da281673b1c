//! Custom events: a Unix socket (mode 0660) where a test, a plugin or `polarizer-agent emit` writes one
//! JSON object per line, `{"kind": "app", "data": {...}, "summary": "..."}`, and reads back `ok` or
//! `error: <why>`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use polarizer_shared::events::{Event, MAX_EVENT_BYTES};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::spool::{SharedSpool, EVENT_BATCH};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Emitted<'a> {
    kind: String,
    /// Checked as JSON and kept as written: no tree is built.
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(default)]
    summary: Option<String>,
}

/// Checks one line from the socket and turns it into an event, or says what is wrong with it.
pub fn parse(line: &[u8]) -> Result<Event, String> {
    if line.len() > MAX_EVENT_BYTES {
        return Err(format!(
            "event of {} bytes is over the limit of {MAX_EVENT_BYTES} bytes",
            line.len()
        ));
    }
    let emitted: Emitted = serde_json::from_slice(line).map_err(|err| {
        format!("not a JSON object like {{\"kind\": \"app\", \"data\": {{...}}}}: {err}")
    })?;
    let kind_ok = !emitted.kind.is_empty()
        && emitted.kind.len() <= 32
        && emitted
            .kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !kind_ok {
        return Err(format!(
            "kind {:?} must be 1-32 characters of a-z, 0-9, - and _",
            emitted.kind
        ));
    }
    let data = emitted.data.get().to_string();
    let summary = emitted.summary.unwrap_or_else(|| {
        let mut summary: String = data.chars().take(200).collect();
        if summary.len() < data.len() {
            summary.push('…');
        }
        summary
    });
    Ok(Event {
        kind: emitted.kind,
        summary,
        data,
    })
}

/// Binds the socket (replacing a stale one left by a killed agent), mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if metadata.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            ));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|err| format!("{}: {err}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    spool: SharedSpool,
    shutdown: CancellationToken,
) {
    info!(socket = %path.display(), "custom events: listening");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, spool.clone()));
            }
            Err(err) => {
                warn!(socket = %path.display(), error = %err, "cannot accept on the event socket")
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn connection(stream: UnixStream, spool: SharedSpool) {
    let (read, write) = stream.into_split();
    // Replies are flushed when no more input is waiting: a pipelining writer gets them in bulk.
    let mut write = tokio::io::BufWriter::new(write);
    // One byte over the limit is enough to know a line is too long; the rest is skipped.
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    // The events of what one read brought go to the spool together, before their replies are flushed:
    // an `ok` a writer reads is an event the spool has.
    let mut accepted: Vec<(Event, i64)> = Vec::new();
    loop {
        line.clear();
        let read = (&mut lines)
            .take(MAX_EVENT_BYTES as u64 + 2)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => {
                spool.push_events_when_room(accepted).await;
                return;
            }
            Ok(_) => {}
        }
        let complete = line.last() == Some(&b'\n');
        let reply = if !complete && line.len() > MAX_EVENT_BYTES {
            // Skip the rest of the oversized line, then answer.
            let mut rest = Vec::new();
            let _ = lines.read_until(b'\n', &mut rest).await;
            format!("error: event of more than {MAX_EVENT_BYTES} bytes is over the limit\n")
        } else {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            match parse(text) {
                Ok(event) => {
                    accepted.push((event, crate::spool::now_ms()));
                    "ok\n".to_string()
                }
                Err(reason) => {
                    warn!(reason, "custom event refused");
                    format!("error: {reason}\n")
                }
            }
        };
        let read_all = lines.buffer().is_empty();
        if read_all || accepted.len() >= EVENT_BATCH {
            // Waits while the spool's writer is behind: a flood slows its writer down.
            spool
                .push_events_when_room(std::mem::take(&mut accepted))
                .await;
        }
        if write.write_all(reply.as_bytes()).await.is_err() {
            spool.push_events_when_room(accepted).await;
            return;
        }
        if read_all && write.flush().await.is_err() {
            return;
        }
    }
}

/// `polarizer-agent emit`: sends one event and waits for the agent's answer.
pub async fn send(
    socket: &Path,
    kind: &str,
    data: &str,
    summary: Option<&str>,
) -> anyhow::Result<()> {
    let data: serde_json::Value =
        serde_json::from_str(data).map_err(|err| anyhow::anyhow!("--data is not JSON: {err}"))?;
    let mut line = serde_json::json!({ "kind": kind, "data": data });
    if let Some(summary) = summary {
        line["summary"] = summary.into();
    }
    let mut text = line.to_string();
    text.push('\n');
    let mut stream = UnixStream::connect(socket).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot reach the agent's event socket {}: {err} (is polarizer-agent running? set --socket or POLARIZER_EMIT_SOCKET)",
            socket.display()
        )
    })?;
    stream.write_all(text.as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).await?;
    match reply.trim_end() {
        "ok" => Ok(()),
        other => anyhow::bail!(
            "the agent refused the event: {}",
            other.strip_prefix("error: ").unwrap_or(other)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_checked_before_they_are_recorded() {
        let event = parse(br#"{"kind":"app","data":{"state":"registered"}}"#).unwrap();
        assert_eq!(event.kind, "app");
        assert_eq!(event.data, r#"{"state":"registered"}"#);
        assert_eq!(event.summary, r#"{"state":"registered"}"#);
        assert!(parse(b"not json")
            .unwrap_err()
            .starts_with("not a JSON object"));
        assert!(parse(br#"{"kind":"App!","data":1}"#)
            .unwrap_err()
            .contains("kind"));
        assert!(parse(br#"{"kind":"app"}"#).is_err(), "data is required");
        let huge = format!(
            r#"{{"kind":"app","data":"{}"}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        assert!(parse(huge.as_bytes())
            .unwrap_err()
            .contains("over the limit"));
    }
}
