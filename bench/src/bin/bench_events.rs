//! Benchmarks for live events, printed as Markdown for BENCHMARKS.md. Real `polarizer serve` and real
//! `polarizer-agent` processes on loopback; events enter through the agents' custom-event sockets
//! (pipelined writers) and are counted once committed to SQLite: by reading the coordinator's database, or
//! by a `tail` follower (the latency figures, and a second throughput figure).
//!
//! Run: `cargo build --release --workspace && ./target/release/bench-events`

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use polarizer::cli::client::{ClientArgs, OperatorClient};
use polarizer_e2e::*;
use polarizer_shared::events::TailQuery;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};

/// Live events end to end (BENCHMARKS.md, "Live events").
#[derive(clap::Parser)]
struct Args {
    /// Only one figure.
    #[arg(long, env = "POLARIZER_BENCH_ONLY", value_parser = ["one", "ten", "latency", "analysis", "fanout", "rss"])]
    only: Option<String>,
    /// Rounds of the analysis overhead, each with analysis off and on.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// WebSocket followers of the fan-out figure.
    #[arg(long, default_value_t = 100)]
    followers: usize,
}

fn main() -> anyhow::Result<()> {
    let runtime = bench_runtime()?;
    println!("| what | result | baseline / target |\n| --- | --- | --- |");
    let args = <Args as clap::Parser>::parse();
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if wanted("one") {
        runtime.block_on(one_agent(400_000))?;
    }
    if wanted("ten") {
        runtime.block_on(ten_agents(40_000))?;
    }
    if wanted("latency") {
        runtime.block_on(tail_latency(10_000, Duration::from_secs(5)))?;
    }
    if wanted("analysis") {
        runtime.block_on(analysis_overhead(200_000, args.rounds))?;
    }
    if wanted("fanout") {
        runtime.block_on(websocket_fanout(
            args.followers,
            10_000,
            Duration::from_secs(5),
        ))?;
    }
    if wanted("rss") {
        runtime.block_on(agent_rss(50_000, Duration::from_secs(5)))?;
    }
    Ok(())
}

const QUIET_AGENT: &[(&str, &str)] = &[
    ("--dbus-address", "off"),
    ("--dpkg-status", "off"),
    ("--rpm-dbpath", "off"),
];

fn start(agents: usize) -> (TestCluster, Vec<PathBuf>) {
    start_with(agents, &[])
}

fn start_with(agents: usize, serve_flags: &[&str]) -> (TestCluster, Vec<PathBuf>) {
    let mut cluster = TestCluster::new_coordinator_only_with(serve_flags);
    let mut sockets = Vec::new();
    for index in 1..=agents {
        let name = format!("vm-{index}");
        cluster.start_agent(&name, QUIET_AGENT);
        sockets.push(cluster.path(&format!("agent-{name}/emit.sock")));
    }
    wait_for("agents online", Duration::from_secs(30), || {
        cluster.online_names().len() == agents
    });
    for socket in &sockets {
        wait_for("event sockets", Duration::from_secs(10), || socket.exists());
    }
    (cluster, sockets)
}

fn client_args(cluster: &TestCluster) -> ClientArgs {
    ClientArgs {
        coordinator: Some(cluster.quic.to_string()),
        data_dir: Some(cluster.data_dir.clone()),
        ..ClientArgs::default()
    }
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros())
        .unwrap_or(0)
}

/// Writes `count` small events as fast as the agent takes them (replies read on another thread), or at
/// `per_second` when given. Each event's data carries its send time in microseconds.
fn flood(socket: &Path, count: usize, per_second: Option<u64>) -> std::thread::JoinHandle<()> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let stream = UnixStream::connect(&socket).expect("agent socket");
        let replies = stream.try_clone().expect("clone");
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(replies);
            let mut line = String::new();
            for _ in 0..count {
                line.clear();
                if lines.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
            }
        });
        let mut writer = std::io::BufWriter::with_capacity(64 * 1024, stream);
        let started = Instant::now();
        for index in 0..count {
            if let Some(rate) = per_second {
                let due = started + Duration::from_secs_f64(index as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    writer.flush().expect("flush");
                    std::thread::sleep(due - now);
                }
            }
            writeln!(
                writer,
                r#"{{"kind":"bench","data":{{"n":{index},"sent_us":{}}}}}"#,
                now_micros()
            )
            .expect("write");
        }
        writer.flush().expect("flush");
        let _ = reader.join();
    })
}

/// Follows `--kind bench` until `count` events arrived; returns each one's arrival delay (receive time
/// minus its send time) and when the last arrived.
async fn follow(
    client: &mut OperatorClient,
    count: usize,
    measure_delays: bool,
) -> anyhow::Result<(Vec<Duration>, Instant)> {
    let query = TailQuery {
        kinds: vec!["bench".into()],
        follow: true,
        // Everything stored, then live: the follower may subscribe after the first events.
        after_id: Some(0),
        ..TailQuery::default()
    };
    let mut response = client
        .request(OperatorRequest::Tail(Box::new(query)))
        .await?;
    let mut delays = Vec::with_capacity(count);
    let mut skipped = 0;
    loop {
        match response {
            OperatorResponse::Events(events) => {
                let received = now_micros();
                for event in events {
                    // Counting only, for throughput: parsing here would take the CPU being measured.
                    let sent = if measure_delays {
                        let data: serde_json::Value = serde_json::from_str(&event.data)?;
                        data["sent_us"].as_u64().unwrap_or(0) as u128
                    } else {
                        received
                    };
                    delays.push(Duration::from_micros(received.saturating_sub(sent) as u64));
                }
                if delays.len() + skipped >= count {
                    return Ok((delays, Instant::now()));
                }
            }
            // Committed but skipped by this follower (it fell behind): counted, without a delay.
            OperatorResponse::Lagged { missed } => {
                skipped += missed as usize;
                if delays.len() + skipped >= count {
                    return Ok((delays, Instant::now()));
                }
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
        response = match tokio::time::timeout(Duration::from_secs(20), client.next()).await {
            Ok(response) => response?,
            Err(_) => anyhow::bail!(
                "no events for 20 s after {} of {count} ({} skipped as lagged)",
                delays.len() + skipped,
                skipped
            ),
        };
    }
}

/// How a throughput run learns that the events are committed.
#[derive(Clone, Copy, PartialEq)]
enum Counting {
    /// Reading the coordinator's database (a read-only connection, as any reporting tool would):
    /// commit and acknowledgement are the same moment, and nothing else loads the coordinator.
    Store,
    /// A `tail` follower: every event is also sent to an operator client, as when someone watches.
    Follower,
}

/// Polls the coordinator's database every millisecond until `count` bench events are committed;
/// returns when it saw the last of them. Each poll reads only rows newer than the last one seen.
fn committed(database: PathBuf, count: usize) -> anyhow::Result<Instant> {
    {
        let connection = rusqlite::Connection::open_with_flags(
            &database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        connection.busy_timeout(Duration::from_secs(5))?;
        let mut query = connection
            .prepare("SELECT count(*), max(id) FROM events WHERE id > ?1 AND kind = 'bench'")?;
        let (mut seen, mut after) = (0usize, 0i64);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (new, last): (i64, Option<i64>) =
                query.query_row([after], |row| Ok((row.get(0)?, row.get(1)?)))?;
            seen += new as usize;
            if seen >= count {
                return Ok(Instant::now());
            }
            after = last.unwrap_or(after);
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {seen} of {count} events committed after 120 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

async fn flood_and_count(
    cluster: &TestCluster,
    sockets: &[PathBuf],
    per_agent: usize,
    counting: Counting,
) -> anyhow::Result<(f64, f64)> {
    let total = per_agent * sockets.len();
    let follower = match counting {
        Counting::Follower => {
            let mut client = OperatorClient::connect(&client_args(cluster)).await?;
            Some(tokio::spawn(async move {
                let outcome = follow(&mut client, total, false).await;
                client.close().await;
                outcome
            }))
        }
        Counting::Store => None,
    };
    let coordinator_pid = cluster.coordinator.as_ref().map(|p| p.pid()).unwrap_or(0);
    let cpu_before = cpu_seconds(coordinator_pid);
    let started = Instant::now();
    let writers: Vec<_> = sockets
        .iter()
        .map(|socket| flood(socket, per_agent, None))
        .collect();
    let last = match follower {
        Some(follower) => follower.await??.1,
        None => {
            let database = cluster.data_dir.join("polarizer.db");
            tokio::task::spawn_blocking(move || committed(database, total)).await??
        }
    };
    for writer in writers {
        let _ = writer.join();
    }
    let elapsed = (last - started).as_secs_f64();
    let cpu = (cpu_seconds(coordinator_pid) - cpu_before) / elapsed;
    Ok(((per_agent * sockets.len()) as f64 / elapsed, cpu))
}

/// The same rows into the same table and indexes, batched in transactions of 512; WAL checkpoints as
/// SQLite does them by default (by the inserting connection, every 1,000 pages) or none at all.
fn raw_sqlite_rate(rows: usize, checkpoints: bool) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let connection = rusqlite::Connection::open(dir.path().join("raw.db"))?;
    connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    if !checkpoints {
        connection.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
    }
    connection.execute_batch(polarizer::store::migrations::EVENTS)?;
    let started = Instant::now();
    let mut index = 0;
    while index < rows {
        connection.execute_batch("BEGIN")?;
        {
            let mut insert = connection.prepare_cached(
                "INSERT INTO events (agent, seq, agent_ms, received_ms, kind, run_id, suite_id, test_id, summary, data)
                 VALUES ('vm-1', ?1, ?2, ?2, 'bench', NULL, NULL, '', ?3, ?3)",
            )?;
            for _ in 0..512.min(rows - index) {
                let data = format!(r#"{{"n":{index},"sent_us":{}}}"#, now_micros());
                insert.execute(rusqlite::params![
                    index as i64,
                    1_700_000_000_000i64 + index as i64,
                    data
                ])?;
                index += 1;
            }
        }
        connection.execute_batch("COMMIT")?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Runs of each side of the one-agent comparison; medians are compared (both sides vary run to run).
const ONE_AGENT_RUNS: usize = 3;

/// One agent's events committed per second with `[analysis] enabled` off and on, rounds taking turns.
async fn analysis_overhead(count: usize, rounds: usize) -> anyhow::Result<()> {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for enabled in [false, true] {
            let config = tempfile::NamedTempFile::new()?;
            std::fs::write(config.path(), format!("[analysis]\nenabled = {enabled}\n"))?;
            let (cluster, sockets) =
                start_with(1, &["--config", config.path().to_str().expect("UTF-8")]);
            let (rate, _) = flood_and_count(&cluster, &sockets, count, Counting::Store).await?;
            drop(cluster);
            if enabled {
                on.push(rate)
            } else {
                off.push(rate)
            }
        }
    }
    let listed = thousands;
    let (on_rate, off_rate) = (median(on.clone()), median(off.clone()));
    println!(
        "| one agent's events committed and acked with failure analysis on ({count} small events), median of {rounds} | {on_rate:.0} events/s ({}) | analysis off: {off_rate:.0} events/s ({}); on is {:+.1} % |",
        listed(&on),
        listed(&off),
        100.0 * (on_rate - off_rate) / off_rate
    );
    Ok(())
}

async fn one_agent(count: usize) -> anyhow::Result<()> {
    // Each round measures every side back to back, so a slower or faster spell of the machine falls
    // on all of them alike.
    let (mut raw, mut raw_without_checkpoints) = (Vec::new(), Vec::new());
    let (mut rates, mut cpus, mut followed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ONE_AGENT_RUNS {
        raw.push(raw_sqlite_rate(count, true)?);
        raw_without_checkpoints.push(raw_sqlite_rate(count, false)?);
        for counting in [Counting::Store, Counting::Follower] {
            // A fresh coordinator and agent each run; the last one is stopped first.
            let (cluster, sockets) = start(1);
            let (rate, cpu) = flood_and_count(&cluster, &sockets, count, counting).await?;
            drop(cluster);
            if counting == Counting::Store {
                rates.push(rate);
                cpus.push(cpu);
            } else {
                followed.push(rate);
            }
        }
    }
    let listed = thousands;
    let (rate, raw_rate, bare_rate) = (
        median(rates.clone()),
        median(raw.clone()),
        median(raw_without_checkpoints.clone()),
    );
    println!(
        "| one agent's events committed and acked ({count} small events, custom-event socket → agent → QUIC → SQLite), median of {ONE_AGENT_RUNS} | {rate:.0} events/s (runs: {}; coordinator CPU {:.0} %); with a `tail` follower also receiving every event, {:.0} events/s (runs: {}) | ≥ 200,000/s; raw batched SQLite inserts of the same rows, median {raw_rate:.0}/s (runs: {}): {:.0} % (≥ 50 %); the same inserts with no checkpoints at all {bare_rate:.0}/s (runs: {}): {:.0} % |",
        listed(&rates),
        median(cpus) * 100.0,
        median(followed.clone()),
        listed(&followed),
        listed(&raw),
        100.0 * rate / raw_rate,
        listed(&raw_without_checkpoints),
        100.0 * rate / bare_rate
    );
    Ok(())
}

async fn ten_agents(per_agent: usize) -> anyhow::Result<()> {
    let (cluster, sockets) = start(10);
    let (rate, cpu) = flood_and_count(&cluster, &sockets, per_agent, Counting::Store).await?;
    println!(
        "| ten agents at once ({per_agent} events each) | {rate:.0} events/s aggregate, coordinator CPU {:.0} % of one core | measured |",
        cpu * 100.0
    );
    Ok(())
}

async fn tail_latency(per_second: u64, duration: Duration) -> anyhow::Result<()> {
    let (cluster, sockets) = start(1);
    let count = (per_second as f64 * duration.as_secs_f64()) as usize;
    let mut client = OperatorClient::connect(&client_args(&cluster)).await?;
    let follower = tokio::spawn(async move {
        let outcome = follow(&mut client, count, true).await;
        (client, outcome)
    });
    let writer = flood(&sockets[0], count, Some(per_second));
    let (client, outcome) = follower.await?;
    let _ = writer.join();
    client.close().await;
    let (mut delays, _) = outcome?;
    delays.sort();
    let at = |p: f64| delays[((delays.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "| tail latency at {per_second} events/s ({count} events): created on the agent → received by a tail follower | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | p99 ≤ 50 ms |",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// The send time an event's JSON carries (`"sent_us":N`), found without parsing the rest: the followers
/// share the machine with the coordinator they measure.
fn sent_micros(text: &str) -> Option<u128> {
    let start = text.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `followers` WebSockets on `/api/events` (as browsers following the web view would) and one
/// `polarizer tail` over QUIC, all following while one agent emits `per_second` events for `duration`:
/// each one's delivery delays (created on the agent → received), and what the WebSockets were told they
/// missed (`lagged`).
async fn websocket_fanout(
    followers: usize,
    per_second: u64,
    duration: Duration,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let (cluster, sockets) = start(1);
    let count = (per_second as f64 * duration.as_secs_f64()) as usize;
    let token = read(&cluster.data_dir.join("operator-token"));
    let url = format!("ws://{}/api/events?kind=bench&n=0", cluster.http);
    let mut sockets_open = Vec::new();
    for _ in 0..followers {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {}", token.trim()).parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        sockets_open.push(socket);
    }
    let mut tasks = Vec::new();
    for mut socket in sockets_open {
        tasks.push(tokio::spawn(async move {
            let mut delays = Vec::with_capacity(count);
            let mut lagged = 0u64;
            while delays.len() + (lagged as usize) < count {
                let next = tokio::time::timeout(Duration::from_secs(20), socket.next()).await;
                let Ok(Some(Ok(message))) = next else { break };
                let received = now_micros();
                let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
                    continue;
                };
                match sent_micros(&text) {
                    Some(sent) => {
                        delays.push(Duration::from_micros(received.saturating_sub(sent) as u64))
                    }
                    None if text.starts_with("{\"lagged\"") => {
                        let value: serde_json::Value = serde_json::from_str(&text)?;
                        lagged += value["lagged"].as_u64().unwrap_or(0);
                    }
                    None => {}
                }
            }
            anyhow::Ok((delays, lagged))
        }));
    }
    let mut client = OperatorClient::connect(&client_args(&cluster)).await?;
    let tail = tokio::spawn(async move {
        let outcome = follow(&mut client, count, true).await;
        (client, outcome)
    });
    let pid = cluster
        .coordinator
        .as_ref()
        .map(|process| process.pid())
        .unwrap_or(0);
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let writer = flood(&sockets[0], count, Some(per_second));
    let mut all = Vec::new();
    let (mut lagged, mut short) = (0u64, 0usize);
    for task in tasks {
        let (delays, missed) = task.await??;
        short += usize::from(delays.len() + (missed as usize) < count);
        lagged += missed;
        all.extend(delays);
    }
    let (client, outcome) = tail.await?;
    let _ = writer.join();
    let cpu = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    client.close().await;
    let (mut tail_delays, _) = outcome?;
    anyhow::ensure!(!all.is_empty(), "no WebSocket follower received an event");
    all.sort();
    tail_delays.sort();
    let at = |delays: &[Duration], p: f64| {
        delays[((delays.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
    };
    println!(
        "| {followers} WebSocket followers of /api/events at {per_second} events/s ({count} events each, {} delivered in all; {lagged} skipped as lagged, {short} followers short): created on the agent → received | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; coordinator CPU {:.0} % of one core | `polarizer tail` in the same run: p50 {:.1} ms, p99 {:.1} ms |",
        all.len(),
        at(&all, 0.5),
        at(&all, 0.99),
        at(&all, 1.0),
        cpu * 100.0,
        at(&tail_delays, 0.5),
        at(&tail_delays, 0.99),
    );
    Ok(())
}

async fn agent_rss(per_second: u64, duration: Duration) -> anyhow::Result<()> {
    let (mut cluster, sockets) = start(1);
    let pid = cluster.agent("vm-1").pid();
    let idle = rss_mib(pid);
    let count = (per_second as f64 * duration.as_secs_f64()) as usize;
    let writer = flood(&sockets[0], count, Some(per_second));
    let mut peak: f64 = 0.0;
    while !writer.is_finished() {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = writer.join();
    println!(
        "| agent RSS under a {per_second} events/s flood for {:.0} s | peak {peak:.1} MiB (idle {idle:.1} MiB) | ≤ 32 MiB |",
        duration.as_secs_f64()
    );
    Ok(())
}
