//! AMQP 0-9-1 (RabbitMQ, Fedora Messaging) with lapin: a durable queue bound to the configured topics
//! on the exchange, a prefetch window, each delivery acknowledged once stored (rejected without requeue
//! when malformed, given back when the store failed); CI messages published with publisher confirms.
//! A lost connection is retried across the URL list with a growing wait.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::BusConfig;
use super::link::{digest, not_sent, reconnecting, sent, shown, Role};
use super::{Buses, Verdict};
use crate::daemon::clock::now_ms;

/// Messages sent per read of the outbox.
const PUBLISH_BATCH: u32 = 100;

async fn connect(bus: &BusConfig, url: &str, role: &str) -> Result<Connection, String> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|err: String| format!("{}: {err}", shown(url)))?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("polarizer {role} {}", bus.name).into());
    let runtime = lapin::runtime::default_runtime().map_err(|err| err.to_string())?;
    // TLS is ours: the broker's CA pinned, the client certificate presented (bus::tls).
    let tls = match uri.scheme {
        AMQPScheme::AMQPS => Some(RustlsConnector::from(super::tls::client_config(bus)?)),
        AMQPScheme::AMQP => None,
    };
    let (host, port) = (uri.authority.host.clone(), uri.authority.port);
    let connecting = Connection::connector(
        uri,
        runtime,
        async move |_uri, runtime| {
            // Each of the host's addresses in turn.
            let mut stream = Err(std::io::Error::other(format!("{host} has no address")));
            for address in tokio::net::lookup_host((host.as_str(), port)).await? {
                stream = AsyncTcpStream::connect(&runtime, address).await;
                if stream.is_ok() {
                    break;
                }
            }
            let stream = stream?;
            match &tls {
                Some(connector) => Ok(stream.into_rustls(connector, &host).await?),
                None => Ok(stream),
            }
        },
        properties,
    );
    match tokio::time::timeout(Duration::from_secs(20), connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("no answer in 20 s".into()),
    }
}

/// Consumes the bus's queue until shutdown, reconnecting across its URLs.
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
    let connection = connect(bus, url, "consumer").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|err| err.to_string())?;
    channel
        .basic_qos(bus.prefetch, BasicQosOptions::default())
        .await
        .map_err(|err| format!("prefetch: {err}"))?;
    channel
        .queue_declare(
            bus.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| format!("queue {}: {err}", bus.queue))?;
    for topic in &bus.topics {
        channel
            .queue_bind(
                bus.queue.as_str().into(),
                bus.exchange.as_str().into(),
                topic.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| format!("binding {topic} on {}: {err}", bus.exchange))?;
    }
    let mut consumer = channel
        .basic_consume(
            bus.queue.as_str().into(),
            format!("polarizer-{}", bus.name).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| format!("consuming {}: {err}", bus.queue))?;
    info!(bus = %bus.name, url = %shown(url), queue = %bus.queue, topics = bus.topics.len(), "bus consumer: connected");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = connection.close(200, "coordinator stopping".into()).await;
                return Ok(());
            }
            delivery = consumer.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("the broker ended the consumer".into()),
        };
        let topic = delivery.routing_key.as_str().to_string();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_string())
            .filter(|id| !id.is_empty())
            // Without an id, the message's own bytes identify it (a redelivery has the same ones).
            .unwrap_or_else(|| format!("sha256:{}", digest(&delivery.data)));
        let acked = match buses
            .take(&bus.name, &topic, &message_id, &delivery.data)
            .await
        {
            Verdict::Accept => delivery.ack(BasicAckOptions::default()).await,
            Verdict::Reject(_) => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await
            }
            Verdict::Release(reason) => {
                warn!(bus = %bus.name, topic = %topic, message_id = %message_id, error = %reason, "build message given back to the broker");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
        };
        acked.map_err(|err| format!("acknowledging {message_id}: {err}"))?;
    }
}

/// Sends the bus's stored CI messages until shutdown, each confirmed by the broker before it is
/// marked sent; reconnects across the URLs when the broker is away.
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
    let connection = connect(bus, url, "publisher").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|err| err.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|err| format!("publisher confirms: {err}"))?;
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
            let mut headers = FieldTable::default();
            headers.insert(
                "sent-at".into(),
                AMQPValue::LongString(crate::core::views::rfc3339(now_ms()).into()),
            );
            let properties = BasicProperties::default()
                .with_message_id(ShortString::from(message.message_id.as_str()))
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_delivery_mode(2)
                .with_headers(headers);
            let confirmed = channel
                .basic_publish(
                    bus.exchange.as_str().into(),
                    message.topic.as_str().into(),
                    BasicPublishOptions::default(),
                    message.body.as_bytes(),
                    properties,
                )
                .await;
            let confirmed = match confirmed {
                Ok(confirm) => confirm.await.map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            match confirmed {
                Ok(confirmation) if !confirmation.is_nack() => sent(buses, bus, message).await?,
                outcome => {
                    let error = match outcome {
                        Ok(_) => "the broker refused it (nack)".to_string(),
                        Err(err) => err,
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
                let _ = connection.close(200, "coordinator stopping".into()).await;
                return Ok(());
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
