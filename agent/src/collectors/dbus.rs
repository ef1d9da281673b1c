//! D-Bus signals: a connection to the system bus, the session bus or an address, match rules (default:
//! every signal), and for each signal its sender, path, interface, member and decoded body.

use futures_util::StreamExt;
use polarizer_shared::events::{kind, Event};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::spool::SharedSpool;

/// Where to listen: "system", "session", or a D-Bus address (`unix:path=/run/dbus/test.sock`).
pub async fn connect(address: &str) -> zbus::Result<zbus::Connection> {
    match address {
        "system" => zbus::Connection::system().await,
        "session" => zbus::Connection::session().await,
        address => zbus::connection::Builder::address(address).build().await,
    }
}

/// One signal as an event.
pub fn event(message: &zbus::Message) -> Event {
    let header = message.header();
    let text = |value: Option<String>| value.unwrap_or_default();
    let sender = text(header.sender().map(|name| name.to_string()));
    let path = text(header.path().map(|path| path.to_string()));
    let interface = text(header.interface().map(|name| name.to_string()));
    let member = text(header.member().map(|name| name.to_string()));
    let body = message.body();
    let signature = body.signature().to_string();
    let decoded = if signature.is_empty() {
        String::new()
    } else {
        match body.deserialize::<zbus::wire::Structure<'_>>() {
            Ok(structure) => structure.to_string(),
            Err(err) => format!("<undecodable body of signature {signature}: {err}>"),
        }
    };
    let mut summary = format!("{interface}.{member} {path}");
    if !decoded.is_empty() {
        let short: String = decoded.chars().take(160).collect();
        summary.push(' ');
        summary.push_str(&short);
        if short.len() < decoded.len() {
            summary.push('…');
        }
    }
    Event {
        kind: kind::DBUS.into(),
        summary,
        data: json!({
            "sender": sender,
            "path": path,
            "interface": interface,
            "member": member,
            "signature": signature,
            "body": decoded,
        })
        .to_string(),
    }
}

/// Listens until shutdown. A bus that cannot be reached is reported and the agent carries on without it.
pub fn start(address: String, rules: Vec<String>, spool: SharedSpool, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let connection = match connect(&address).await {
            Ok(connection) => connection,
            Err(err) => {
                return warn!(bus = %address, error = %err, "D-Bus events: cannot connect to the bus; the other collectors carry on");
            }
        };
        let rules = if rules.is_empty() {
            vec!["type='signal'".to_string()]
        } else {
            rules
        };
        let mut streams = Vec::new();
        for rule in &rules {
            match zbus::MessageStream::for_match_rule(rule.as_str(), &connection, None).await {
                Ok(stream) => streams.push(stream),
                Err(err) => {
                    warn!(bus = %address, rule, error = %err, "D-Bus events: match rule refused")
                }
            }
        }
        if streams.is_empty() {
            return;
        }
        info!(bus = %address, rules = ?rules, "D-Bus events: listening");
        let mut messages = futures_util::stream::select_all(streams);
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = shutdown.cancelled() => return,
            };
            match message {
                Some(Ok(message)) => {
                    if message.message_type() == zbus::message::Type::Signal {
                        spool.push_event(event(&message));
                    }
                }
                Some(Err(err)) => warn!(bus = %address, error = %err, "D-Bus events: bad message"),
                None => {
                    return warn!(bus = %address, "D-Bus events: the bus connection closed");
                }
            }
        }
    });
}
