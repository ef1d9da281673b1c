//! Benchmark: message buses (issue 18), a release coordinator against a real RabbitMQ (Debian's).
//!
//! 1. Throughput of messages that start nothing: `--messages N` Fedora build messages of a
//!    package no rule names, waiting in the coordinator's queue before it starts; from its first to its
//!    last message taken (`polarizer_bus_received_total` on /metrics), beside a bare lapin consumer
//!    (same prefetch, receive and acknowledge, nothing else) draining the same number from a queue of
//!    its own, in the same run.
//! 2. Latency: `--builds N` build messages that match a rule, sent one every `--gap-ms`,
//!    each of a new NVR: from publishing it (confirmed by the broker) to its run stored (the run's
//!    `created_ms`), the tests' repository a local git work tree (as a cached one is).
//!
//! Run: `cargo build -j 2 --release -p polarizer -p polarizer-bench --bins && ./target/release/bench-bus`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use polarizer_e2e::rabbitmq::RabbitMq;
use polarizer_e2e::{git_repo, percentile, TestCluster};

const TOPIC: &str = "org.fedoraproject.prod.buildsys.build.state.change";
const PREFETCH: u16 = 25;

fn body(name: &str, release: u64) -> Vec<u8> {
    serde_json::json!({
        "attribute": "state", "build_id": 1874070 + release, "epoch": null, "instance": "primary",
        "name": name, "new": 1, "old": 0, "owner": "packit", "release": format!("{release}.fc41"),
        "task_id": 80860789 + release, "version": "1.29.40",
        "request": ["git+https://src.fedoraproject.org/rpms/x.git#51b57ec", "f41-candidate", {}],
        "creation_time": "2026-11-08T09:54:48.493165+00:00",
        "completion_time": "2026-11-08T10:01:04.706963+00:00"
    })
    .to_string()
    .into_bytes()
}

async fn channel(broker: &RabbitMq) -> anyhow::Result<(Connection, Channel)> {
    let connection = Connection::connect(&broker.url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            "amq.topic".into(),
            TOPIC.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Publishes one message with publisher confirms, to amq.topic or straight to a queue.
async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    id: &str,
    data: &[u8],
) -> anyhow::Result<()> {
    let properties = BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            data,
            properties,
        )
        .await?
        .await?;
    Ok(())
}

fn received(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("polarizer_bus_received_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Build messages from a real RabbitMQ broker into the coordinator (BENCHMARKS.md, "Message buses").
#[derive(clap::Parser)]
struct Args {
    /// Messages published for the ingest figure.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Builds announced one after another for the trigger latency.
    #[arg(long, default_value_t = 500)]
    builds: u64,
    /// The pause between two of those builds.
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let Args {
        messages,
        builds,
        gap_ms,
    } = clap::Parser::parse();
    let gap = Duration::from_millis(gap_ms);
    let dir = tempfile::tempdir()?;
    let broker = RabbitMq::start(&dir.path().join("rabbitmq"));
    // As many workers as the coordinator's runtime has (one per core).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (_connection, publisher) = runtime.block_on(channel(&broker))?;

    // The same messages in the coordinator's queue (bound, as it will bind it) and in a bare one.
    runtime.block_on(async {
        declare(&publisher, "polarizer-bench").await?;
        publisher
            .queue_declare(
                "bare".into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        let other = body("dnf", 1);
        for n in 0..messages {
            let id = format!("other-{n}");
            publish(&publisher, "", "bare", &id, &other).await?;
            publish(&publisher, "amq.topic", TOPIC, &id, &other).await?;
        }
        anyhow::Ok(())
    })?;

    // The bare consumer: receive and acknowledge.
    let bare_rate = runtime.block_on(async {
        let (_connection, channel) = channel(&broker).await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                "bare".into(),
                "bare".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut first = None;
        let mut taken = 0u64;
        while taken < messages {
            let Some(delivery) = consumer.next().await else {
                anyhow::bail!("the bare consumer ended at {taken}")
            };
            let delivery = delivery?;
            first.get_or_insert_with(Instant::now);
            delivery.ack(BasicAckOptions::default()).await?;
            taken += 1;
        }
        let seconds = first.map_or(0.0, |first| first.elapsed().as_secs_f64());
        anyhow::Ok((messages - 1) as f64 / seconds)
    })?;

    // The coordinator, its queue full: one rule, for a package none of those messages is of.
    let tests = dir.path().join("tests");
    std::fs::create_dir_all(&tests)?;
    git_repo(
        &tests,
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "framework: shell\n/register:\n    extra-polarizer-type: functional\n    test: 'true'\n",
            ),
        ],
    );
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[[bus]]\nname = \"bench\"\nprotocol = \"amqp091\"\nurls = [{:?}]\nqueue = \"polarizer-bench\"\n\
             topics = [{TOPIC:?}]\nprefetch = {PREFETCH}\n\n\
             [[bus.rules]]\nmatch = {{ package = \"subscription-manager\" }}\ntests = {:?}\ntest_types = [\"functional\"]\n",
            broker.url(),
            tests.display().to_string()
        ),
    )?;
    let cluster = TestCluster::new_coordinator_only_with(&["--config", config.to_str().unwrap()]);
    let metrics_url = format!("http://{}/metrics", cluster.http);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let read = || -> u64 {
        runtime.block_on(async {
            match client.get(&metrics_url).send().await {
                Ok(response) => response
                    .text()
                    .await
                    .map(|text| received(&text))
                    .unwrap_or(0),
                Err(_) => 0,
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut first, mut at_first) = (None, 0);
    loop {
        let now = read();
        if now > 0 && first.is_none() {
            first = Some(Instant::now());
            at_first = now;
        }
        if now >= messages {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the coordinator took {now} of {messages} in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let coordinator_rate = (messages - at_first) as f64
        / first.map_or(f64::NAN, |first| first.elapsed().as_secs_f64());

    // Latency: matching builds one after another, each its own NVR.
    let mut sent: HashMap<String, i64> = HashMap::new();
    runtime.block_on(async {
        for n in 0..builds {
            let id = format!("build-{n}");
            let data = body("subscription-manager", n + 1);
            sent.insert(id.clone(), chrono::Utc::now().timestamp_millis());
            publish(&publisher, "amq.topic", TOPIC, &id, &data).await?;
            tokio::time::sleep(gap).await;
        }
        anyhow::Ok(())
    })?;
    let database = cluster.path("coordinator").join("polarizer.db");
    let deadline = Instant::now() + Duration::from_secs(600);
    let created = loop {
        let connection = rusqlite::Connection::open_with_flags(
            &database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut statement = connection.prepare(
            "SELECT triggers.delivery, runs.created_ms FROM triggers JOIN runs ON runs.id = triggers.run_id
             WHERE triggers.source = 'bus:bench'",
        )?;
        let rows: Vec<(String, i64)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if rows.len() as u64 >= builds {
            break rows;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {builds} runs in 10 minutes",
            rows.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let latencies: Vec<f64> = created
        .iter()
        .filter_map(|(id, created_ms)| sent.get(id).map(|sent| (created_ms - sent) as f64))
        .collect();
    println!(
        "messages that start nothing: coordinator {coordinator_rate:.0} msgs/s, bare lapin consumer {bare_rate:.0} msgs/s ({messages} each, prefetch {PREFETCH})"
    );
    println!(
        "build message → run stored: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} builds, one every {} ms)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
        latencies.len(),
        gap.as_millis()
    );
    Ok(())
}
