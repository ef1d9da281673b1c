//! AMQP 1.0 (UMB's ActiveMQ/Artemis, RabbitMQ's AMQP 1.0 plugin) with fe2o3-amqp: a receiver on the
//! configured address (UMB: `queue://Consumer.<client>.<name>.VirtualTopic.…`) with a credit window,
//! each delivery accepted once stored, rejected when malformed, released when the store failed; CI
//! messages sent to `publish_address` and settled by the broker before they are marked sent.
//!
//! TLS is ours (tokio-rustls on ring, `bus::tls`: the broker's CA pinned when `ca_file` is given, the
//! client certificate presented);
//! SASL is PLAIN when the URL carries a user and password, ANONYMOUS otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{
    Body, Header, Message, MessageId, Properties, Source, TerminusDurability,
};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::BusConfig;
use super::link::{digest, not_sent, reconnecting, sent, shown, Role};
use super::{Buses, Verdict};

/// Messages sent per read of the outbox.
const PUBLISH_BATCH: u32 = 100;

/// The broker's address and credentials, read from an `amqp://` or `amqps://` URL.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    user: String,
    password: String,
}

fn target(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("amqps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("amqp://") {
        (false, rest)
    } else {
        return Err(format!("{} is not an amqp:// or amqps:// URL", shown(url)));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (userinfo, hostport),
        None => ("", authority),
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{}: the port is not a number", shown(url)))?,
        ),
        _ => (hostport, if tls { 5671 } else { 5672 }),
    };
    if host.is_empty() {
        return Err(format!("{}: no host", shown(url)));
    }
    Ok(Target {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        user: user.to_string(),
        password: password.to_string(),
    })
}

async fn open(bus: &BusConfig, url: &str, role: &str) -> Result<ConnectionHandle<()>, String> {
    let target = target(url)?;
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|err| err.to_string())?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|err| format!("{}: {err}", target.host))?;
            let stream = tokio_rustls::TlsConnector::from(super::tls::client_config(bus)?)
                .connect(name, tcp)
                .await
                .map_err(|err| format!("TLS: {err}"))?;
            handshake(bus, &target, role, stream).await
        } else {
            handshake(bus, &target, role, tcp).await
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), connecting).await {
        Ok(result) => result,
        Err(_) => Err("no answer in 20 s".into()),
    }
}

async fn handshake<Io>(
    bus: &BusConfig,
    target: &Target,
    role: &str,
    stream: Io,
) -> Result<ConnectionHandle<()>, String>
where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let profile = if target.user.is_empty() {
        SaslProfile::Anonymous
    } else {
        SaslProfile::Plain {
            username: target.user.clone(),
            password: target.password.clone(),
        }
    };
    Connection::builder()
        .container_id(format!(
            "polarizer-{role}-{}-{}",
            bus.name,
            std::process::id()
        ))
        .hostname(target.host.as_str())
        .sasl_profile(profile)
        .open_with_stream(stream)
        .await
        .map_err(|err| format!("AMQP open: {err}"))
}

/// A delivery's message id, as text (its body's digest when it has none).
fn message_id(properties: Option<&Properties>, body: &[u8]) -> String {
    let id = properties.and_then(|properties| properties.message_id.as_ref());
    match id {
        Some(MessageId::String(text)) if !text.is_empty() => text.clone(),
        Some(MessageId::Ulong(number)) => number.to_string(),
        Some(MessageId::Uuid(uuid)) => uuid
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
        Some(MessageId::Binary(bytes)) if !bytes.is_empty() => {
            bytes.iter().map(|byte| format!("{byte:02x}")).collect()
        }
        _ => format!("sha256:{}", digest(body)),
    }
}

/// A message's body as bytes: a text or binary value (what Koji's protonmsg sends), or data sections.
fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, String> {
    match body {
        Body::Value(value) => match &value.0 {
            Value::String(text) => Ok(text.clone().into_bytes()),
            Value::Binary(bytes) => Ok(bytes.to_vec()),
            other => Err(format!(
                "the body is an AMQP value that is not text: {other:?}"
            )),
        },
        Body::Data(sections) => Ok(sections
            .iter()
            .flat_map(|section| section.0.iter().copied())
            .collect()),
        _ => Err("the body is neither text nor data".into()),
    }
}

/// Consumes the bus's subscription until shutdown, reconnecting across its URLs.
pub async fn consume(buses: Arc<Buses>, bus: BusConfig, shutdown: CancellationToken) {
    reconnecting(&bus, Role::Consumer, &shutdown, |url| {
        let (buses, bus, shutdown) = (&buses, &bus, &shutdown);
        async move { consume_from(buses, bus, &url, shutdown).await }
    })
    .await;
}

async fn consume_from(
    buses: &Buses,
    bus: &BusConfig,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut connection = open(bus, url, "consumer").await?;
    let mut session = Session::begin(&mut connection)
        .await
        .map_err(|err| format!("session: {err}"))?;
    let mut receiver = Receiver::builder()
        .name(format!("polarizer-{}", bus.name))
        // A durable source: the subscription's queue outlives this link (RabbitMQ declares it so).
        .source(
            Source::builder()
                .address(bus.subscription.as_str())
                .durable(TerminusDurability::Configuration)
                .build(),
        )
        .credit_mode(CreditMode::Auto(u32::from(bus.prefetch)))
        .auto_accept(false)
        .attach(&mut session)
        .await
        .map_err(|err| format!("receiving from {}: {err}", bus.subscription))?;
    info!(bus = %bus.name, url = %shown(url), address = %bus.subscription, "bus consumer: connected");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = receiver.close().await;
                let _ = session.end().await;
                let _ = connection.close().await;
                return Ok(());
            }
            delivery = receiver.recv::<Body<Value>>() => delivery.map_err(|err| err.to_string())?,
        };
        let message = delivery.message();
        let topic = message
            .properties
            .as_ref()
            .and_then(|properties| properties.to.clone().or_else(|| properties.subject.clone()))
            .unwrap_or_else(|| bus.subscription.clone());
        let (verdict, id) = match body_bytes(delivery.body()) {
            Ok(bytes) => {
                let id = message_id(message.properties.as_ref(), &bytes);
                (buses.take(&bus.name, &topic, &id, &bytes).await, id)
            }
            Err(reason) => {
                let id = message_id(message.properties.as_ref(), &[]);
                (buses.refuse(&bus.name, &topic, &id, reason).await, id)
            }
        };
        let settled = match verdict {
            Verdict::Accept => receiver.accept(&delivery).await,
            Verdict::Reject(reason) => {
                let error = fe2o3_amqp::types::definitions::Error::new(
                    fe2o3_amqp::types::definitions::AmqpError::DecodeError,
                    Some(reason.chars().take(200).collect::<String>()),
                    None,
                );
                receiver.reject(&delivery, error).await
            }
            Verdict::Release(reason) => {
                warn!(bus = %bus.name, topic = %topic, message_id = %id, error = %reason, "build message given back to the broker");
                receiver.release(&delivery).await
            }
        };
        settled.map_err(|err| format!("settling {id}: {err}"))?;
    }
}

/// Sends the bus's stored CI messages until shutdown, each settled by the broker before it is marked
/// sent; reconnects across the URLs when the broker is away.
pub async fn publish(
    buses: Arc<Buses>,
    bus: BusConfig,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    reconnecting(&bus, Role::Publisher, &shutdown, |url| {
        let (buses, bus, wake, shutdown) = (&buses, &bus, &wake, &shutdown);
        async move { publish_to(buses, bus, &url, wake, shutdown).await }
    })
    .await;
}

async fn publish_to(
    buses: &Buses,
    bus: &BusConfig,
    url: &str,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut connection = open(bus, url, "publisher").await?;
    let mut session = Session::begin(&mut connection)
        .await
        .map_err(|err| format!("session: {err}"))?;
    let mut senders: HashMap<String, Sender> = HashMap::new();
    info!(bus = %bus.name, url = %shown(url), "bus publisher: connected");
    loop {
        let name = bus.name.clone();
        let due = buses
            .context
            .store
            .read(move |reader| reader.unsent_bus_messages(&name, PUBLISH_BATCH))
            .await
            .map_err(|err| err.to_string())?;
        for message in &due {
            let address = bus.publish_address.replace("{topic}", &message.topic);
            if !senders.contains_key(&address) {
                let sender = Sender::attach(
                    &mut session,
                    format!("polarizer-{}-{}", bus.name, senders.len()),
                    address.as_str(),
                )
                .await
                .map_err(|err| format!("sending to {address}: {err}"))?;
                senders.insert(address.clone(), sender);
            }
            let sender = senders.get_mut(&address).expect("attached above");
            let amqp_message = Message::builder()
                .header(Header {
                    durable: true,
                    ..Header::default()
                })
                .properties(
                    Properties::builder()
                        .message_id(message.message_id.clone())
                        .to(address.clone())
                        .subject(message.topic.clone())
                        .content_type("application/json")
                        .build(),
                )
                .value(message.body.clone())
                .build();
            let outcome = sender.send(amqp_message).await;
            match outcome {
                Ok(outcome) if outcome.is_accepted() => sent(buses, bus, message).await?,
                outcome => {
                    let error = match outcome {
                        Ok(outcome) => format!("the broker did not accept it: {outcome:?}"),
                        Err(err) => err.to_string(),
                    };
                    return Err(not_sent(buses, message, error).await);
                }
            }
        }
        if due.len() as u32 == PUBLISH_BATCH {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                for (_, sender) in senders.drain() {
                    let _ = sender.close().await;
                }
                let _ = session.end().await;
                let _ = connection.close().await;
                return Ok(());
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_credentials() {
        let plain = target("amqp://guest:guest@127.0.0.1:5672").unwrap();
        assert_eq!(
            (
                plain.tls,
                plain.host.as_str(),
                plain.port,
                plain.user.as_str()
            ),
            (false, "127.0.0.1", 5672, "guest")
        );
        let umb = target("amqps://umb-broker01.example").unwrap();
        assert_eq!((umb.tls, umb.port, umb.user.as_str()), (true, 5671, ""));
        assert!(matches!(target("amqps://host:x"), Err(err) if err.contains("port")));
        assert!(target("http://host").is_err());
    }

    #[test]
    fn bodies_are_text_values_or_data() {
        let text = Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(
            "{\"a\":1}".into(),
        )));
        assert_eq!(body_bytes(&text).unwrap(), b"{\"a\":1}");
        let number = Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::Int(1)));
        assert!(body_bytes(&number).is_err());
    }
}
