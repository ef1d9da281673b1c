//! Benchmarks for runs, printed as Markdown for BENCHMARKS.md:
//! - results ingest: ten agents (protocol clients over real QUIC) answer their assigned suites at once;
//!   results committed and acknowledged per second, beside raw batched SQLite inserts of the same rows;
//! - lost agent: kill -9 of a real agent mid-suite → its tests running again on another agent.
//!
//! Run: `cargo build --release --workspace && ./target/release/bench-runs`
//! (POLARIZER_BENCH_RESULTS sets how many results the ingest benchmark sends; default 50,000.)
//! - failure analysis on and off: the same ingest with one result in five failing, rounds taking turns.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polarizer::cli::client::{ClientArgs, OperatorClient};
use polarizer_e2e::*;
use polarizer_shared::protocol::*;
use polarizer_shared::run::*;
use polarizer_shared::AgentFacts;
use polarizer_transport::client::{client_endpoint, connect};
use polarizer_transport::state_files::read_private;
use polarizer_transport::tls;
use polarizer_transport::CaTrust;

const AGENTS: usize = 10;
/// Records per frame, as the real agent sends them.
const BATCH: usize = 512;

/// Results ingest and recovery end to end (BENCHMARKS.md, "Runs").
#[derive(clap::Parser)]
struct Args {
    /// Only one figure.
    #[arg(long, env = "POLARIZER_BENCH_ONLY", value_parser = ["ingest", "analysis", "lost", "api"])]
    only: Option<String>,
    /// Results ingested.
    #[arg(long, env = "POLARIZER_BENCH_RESULTS", default_value_t = 50_000)]
    results: usize,
    /// Rounds of the analysis overhead, each with analysis off and on.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let runtime = bench_runtime()?;
    let args = <Args as clap::Parser>::parse();
    let results = args.results;
    println!("| what | result | baseline / target |\n| --- | --- | --- |");
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if wanted("ingest") {
        runtime.block_on(ingest(results))?;
    }
    if wanted("analysis") {
        runtime.block_on(analysis_overhead(results, args.rounds))?;
    }
    if wanted("lost") {
        runtime.block_on(lost_agent())?;
    }
    if wanted("api") {
        runtime.block_on(ingest_round(10_000, Some(5), true, true))?;
    }
    Ok(())
}

fn git(directory: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("git")
        .arg("-C")
        .arg(directory)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .status()?;
    anyhow::ensure!(status.success(), "git {args:?} failed");
    Ok(())
}

/// A committed repository of `count` tests in one fmf file, plus `extra` YAML for every test.
fn test_repo(root: &Path, count: usize, test: &str, extra: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join(".fmf"))?;
    std::fs::create_dir_all(root.join("tests"))?;
    std::fs::write(root.join(".fmf/version"), "1\n")?;
    let mut fmf = format!("test: {test}\nduration: 1m\n{extra}");
    for index in 0..count {
        fmf.push_str(&format!("/t{index:06}: {{}}\n"));
    }
    std::fs::write(root.join("tests/main.fmf"), fmf)?;
    git(root, &["init", "--quiet", "--initial-branch", "main"])?;
    git(root, &["add", "."])?;
    git(root, &["commit", "--quiet", "-m", "tests"])
}

/// A manual trigger of every test in `repo` at HEAD.
fn everything_in(repo: &Path) -> TriggerRequest {
    TriggerRequest {
        repo: repo.display().to_string(),
        git_ref: "HEAD".into(),
        kind: TriggerKind::Manual,
        changed: Vec::new(),
        features: Vec::new(),
        test_types: Vec::new(),
        artifacts: Vec::new(),
        all: true,
        context: Vec::new(),
        plan: String::new(),
    }
}

fn client_args(cluster: &TestCluster) -> ClientArgs {
    ClientArgs {
        coordinator: Some(cluster.quic.to_string()),
        data_dir: Some(cluster.data_dir.clone()),
        ..ClientArgs::default()
    }
}

struct Finished {
    results: usize,
    first_send: Instant,
    last_ack: Instant,
}

/// An agent speaking the protocol directly: enrolls, heartbeats, and answers an assignment with a
/// started and a finished record per test, as fast as the coordinator acknowledges.
async fn protocol_agent(
    cluster_quic: std::net::SocketAddr,
    data_dir: std::path::PathBuf,
    name: String,
    ready: Arc<tokio::sync::Barrier>,
    failing: Option<usize>,
) -> anyhow::Result<Finished> {
    let trust = CaTrust::from_pem_file(&data_dir.join("ca.pem"))?;
    let endpoint = client_endpoint(tls::client_config(&trust)?, cluster_quic)?;
    let token = read_private(&data_dir.join("agent-token"))?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        peer: Peer::Agent {
            credential: AgentCredential::Enroll {
                token,
                secret: format!("secret-{name}"),
            },
            facts: Box::new(AgentFacts::for_test(&name)),
            incarnation: rand_u64(),
        },
    };
    let session = connect(&endpoint, cluster_quic, hello, Duration::from_secs(10)).await?;
    let mut stream = session.stream;
    ready.wait().await;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(100));
    let mut seq = session.welcome.records_committed;
    let mut last_sent = 0;
    let mut first_send = None;
    let mut results = 0;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                stream.send(&ClientFrame::Agent(AgentMessage::Heartbeat)).await?;
            }
            frame = stream.recv::<ServerFrame>() => match frame? {
                Some(ServerFrame::Agent(CoordinatorMessage::Assign(assignment))) => {
                    first_send.get_or_insert_with(Instant::now);
                    let suite = assignment.suite;
                    let mut records = Vec::with_capacity(BATCH);
                    let mut push = |body: RecordBody, records: &mut Vec<Record>| {
                        seq += 1;
                        records.push(Record { seq, at_ms: 0, body });
                    };
                    let mut frames = Vec::new();
                    for test in &assignment.tests {
                        push(RecordBody::TestStarted { suite, test: test.id.clone() }, &mut records);
                        let (status, message, output_tail) = match failing {
                            Some(every) if results % every == 0 => failure(results / every),
                            _ => (TestStatus::Pass, String::new(), "ok\n".to_string()),
                        };
                        push(RecordBody::TestFinished(Box::new(TestOutcome {
                            suite,
                            test: test.id.clone(),
                            status,
                            exit: Exit::Code(0),
                            started_ms: 0,
                            duration_ms: 12,
                            message,
                            output_tail,
                            subresults: Vec::new(),
                        })), &mut records);
                        results += 1;
                        if records.len() >= BATCH {
                            frames.push(std::mem::take(&mut records));
                        }
                    }
                    push(RecordBody::SuiteFinished { suite, error: None }, &mut records);
                    frames.push(records);
                    for frame in frames {
                        stream.send(&ClientFrame::Agent(AgentMessage::Records(frame))).await?;
                    }
                    last_sent = seq;
                }
                Some(ServerFrame::Agent(CoordinatorMessage::Ack { up_to })) => {
                    if last_sent > 0 && up_to >= last_sent {
                        let finished = Finished {
                            results,
                            first_send: first_send.unwrap_or_else(Instant::now),
                            last_ack: Instant::now(),
                        };
                        session.connection.close(0u32.into(), b"done");
                        return Ok(finished);
                    }
                }
                Some(_) => {}
                None => anyhow::bail!("{name}: coordinator closed the stream"),
            }
        }
    }
}

/// The `n`th failure: one of a few kinds, each with its variable parts varying, as real failures do.
fn failure(n: usize) -> (TestStatus, String, String) {
    let (message, tail) = match n % 5 {
        0 => (format!("AssertionError: expected {} but got {}", n % 97, n % 89), String::new()),
        1 => (
            "exit code 1".into(),
            format!("starting\nError: connection refused to 10.0.{}.{}:443\n", n % 250, n % 13),
        ),
        2 => (format!("timed out after {} s", 60 + n % 30), format!("waiting for /dev/sd{}\n", n % 7)),
        3 => (
            format!("subscription-manager register failed: HTTP {} from candlepin-{}.example.com", 500 + n % 4, n % 9),
            String::new(),
        ),
        _ => (
            "exit code 2".into(),
            format!("Job for rhsmcertd-{}.service failed because the control process exited with error code.\n", n % 31),
        ),
    };
    (TestStatus::Fail, message, tail)
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(7)
}

/// One ingest round: results committed and acknowledged per second, the seconds it took, and how long
/// the trigger took. `failing`: every so many results fail; `analysis`: `[analysis] enabled`; `api`:
/// then time reading the finished run through the HTTP API beside the operator protocol.
async fn ingest_round(
    results: usize,
    failing: Option<usize>,
    analysis: bool,
    api: bool,
) -> anyhow::Result<(f64, Duration, Duration, u64)> {
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), format!("[analysis]\nenabled = {analysis}\n"))?;
    let cluster = TestCluster::new_coordinator_only_with(&[
        "--gossip-interval-ms",
        "100",
        "--heartbeat-interval-ms",
        "200",
        "--config",
        config.path().to_str().expect("a UTF-8 path"),
    ]);
    let repo = cluster.path("repo");
    test_repo(&repo, results, "'true'", "")?;
    let ready = Arc::new(tokio::sync::Barrier::new(AGENTS + 1));
    let mut agents = Vec::new();
    for index in 0..AGENTS {
        agents.push(tokio::spawn(protocol_agent(
            cluster.quic,
            cluster.data_dir.clone(),
            format!("bench-{index}"),
            ready.clone(),
            failing,
        )));
    }
    ready.wait().await;
    let mut client = OperatorClient::connect(&client_args(&cluster)).await?;
    let request = everything_in(&repo);
    let planned = Instant::now();
    let OperatorResponse::Triggered(summary) = client
        .request(OperatorRequest::Trigger(Box::new(request)))
        .await?
    else {
        anyhow::bail!("no run");
    };
    let trigger_time = planned.elapsed();
    let mut finished = Vec::new();
    for agent in agents {
        finished.push(agent.await??);
    }
    let first = finished.iter().map(|f| f.first_send).min().unwrap();
    let last = finished.iter().map(|f| f.last_ack).max().unwrap();
    let total: usize = finished.iter().map(|f| f.results).sum();
    anyhow::ensure!(total == results, "{total} results sent, {results} tests");
    let detail = client
        .request(OperatorRequest::ShowRun { run: summary.run })
        .await?;
    let OperatorResponse::Run(detail) = detail else {
        anyhow::bail!("no run detail");
    };
    let expected = if failing.is_some() {
        RunState::Failed
    } else {
        RunState::Passed
    };
    let clustered = detail
        .tests
        .iter()
        .filter(|test| test.cluster.is_some())
        .count();
    anyhow::ensure!(
        analysis || clustered == 0,
        "{clustered} results clustered with analysis off"
    );
    anyhow::ensure!(
        detail.run.state == expected && detail.run.done == results as u64,
        "run {} {} with {} of {results} done",
        detail.run.id,
        detail.run.state,
        detail.run.done
    );
    if api {
        api_latency(&cluster, &mut client, summary.run, results).await?;
    }
    client.close().await;
    let elapsed = last - first;
    let rate = total as f64 / elapsed.as_secs_f64();
    Ok((
        rate,
        elapsed,
        trigger_time,
        summary.parallel_suites + summary.serial_suites,
    ))
}

async fn ingest(results: usize) -> anyhow::Result<()> {
    let (rate, elapsed, trigger_time, suites) = ingest_round(results, None, true, false).await?;
    let total = results;
    let raw = raw_sqlite_rate(results)?;
    println!(
        "| results ingest, {AGENTS} agents at once ({total} results = {} records, committed and acked) | {:.0} results/s ({:.2} s) | raw batched SQLite inserts of the same rows: {:.0} rows/s ({:.0} %) |",
        total * 2 + AGENTS,
        rate,
        elapsed.as_secs_f64(),
        raw,
        100.0 * rate / raw
    );
    println!(
        "| trigger of {results} tests (fetch, fmf, select, partition into {} suites, store) | {:.2} s | |",
        suites,
        trigger_time.as_secs_f64()
    );
    Ok(())
}

/// Failure analysis on and off, rounds taking turns, one result in five failing: results/s of each.
async fn analysis_overhead(results: usize, rounds: usize) -> anyhow::Result<()> {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    // Which goes first alternates: a round after another may find the machine busier (files of the
    // last one being removed, its memory given back).
    for round in 0..rounds {
        for analysis in [round % 2 == 0, round % 2 == 1] {
            let rate = ingest_round(results, Some(5), analysis, false).await?.0;
            if analysis {
                on.push(rate);
            } else {
                off.push(rate);
            }
        }
    }
    let list = thousands;
    let (on_median, off_median) = (median(on.clone()), median(off.clone()));
    println!(
        "| results ingest with failure analysis on, {AGENTS} agents, {results} results, 1 in 5 failing (median of {rounds} rounds) | {on_median:.0} results/s ({}) | analysis off: {off_median:.0} results/s ({}); on is {:+.1} % |",
        list(&on),
        list(&off),
        100.0 * (on_median - off_median) / off_median
    );
    Ok(())
}

/// The same result rows, inserted in transactions of one frame's worth into a WAL database.
fn raw_sqlite_rate(rows: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let connection = rusqlite_connection(&dir.path().join("raw.db"))?;
    let started = Instant::now();
    let mut remaining = rows;
    let mut index = 0;
    while remaining > 0 {
        let batch = remaining.min(BATCH / 2);
        connection.execute_batch("BEGIN")?;
        {
            let mut insert = connection.prepare_cached(
                "INSERT INTO results (run_id, test_id, status, agent, started_ms, duration_ms, message, output_tail, subresults_json)
                 VALUES (1, ?1, 'pass', 'bench-0', 0, 12, '', 'ok\n', '[]')",
            )?;
            for _ in 0..batch {
                insert.execute([format!("/tests/t{index:06}")])?;
                index += 1;
            }
        }
        connection.execute_batch("COMMIT")?;
        remaining -= batch;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

fn rusqlite_connection(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE results (run_id INTEGER, test_id TEXT, status TEXT, agent TEXT, started_ms INTEGER,
             duration_ms INTEGER, message TEXT, output_tail TEXT, subresults_json TEXT, PRIMARY KEY (run_id, test_id)) STRICT;",
    )?;
    Ok(connection)
}

/// kill -9 of the agent running a suite → the first test of the next attempt starting on another agent.
async fn lost_agent() -> anyhow::Result<()> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let mut cluster = TestCluster::builder().agents(2).start();
        let repo = cluster.path("serial");
        test_repo(&repo, 6, "sleep 1", "resources:\n  modifies: [db]\n")?;
        let mut client = OperatorClient::connect(&client_args(&cluster)).await?;
        let request = everything_in(&repo);
        let OperatorResponse::Triggered(summary) = client
            .request(OperatorRequest::Trigger(Box::new(request)))
            .await?
        else {
            anyhow::bail!("no run");
        };
        client
            .request(OperatorRequest::WatchRun {
                run: summary.run,
                output: false,
            })
            .await?;
        let mut killed: Option<Instant> = None;
        let elapsed = loop {
            let update = tokio::time::timeout(Duration::from_secs(60), client.next()).await??;
            match update {
                OperatorResponse::Update(RunUpdate::TestStarted {
                    test,
                    agent,
                    attempt,
                    ..
                }) => {
                    if attempt == 1 && test == "/tests/t000001" && killed.is_none() {
                        cluster.agent(&agent).kill_9();
                        killed = Some(Instant::now());
                    } else if attempt == 2 {
                        if let Some(killed) = killed {
                            break killed.elapsed();
                        }
                    }
                }
                OperatorResponse::Update(RunUpdate::RunFinished { .. }) => {
                    anyhow::bail!("the run finished without a second attempt")
                }
                _ => {}
            }
        };
        samples.push(elapsed);
        drop(client);
    }
    samples.sort();
    println!(
        "| lost agent (kill -9 mid-suite) → its tests running on another agent, 5 runs | median {:.2} s, max {:.2} s | ≤ 10 s (Buildkite: 4 min) |",
        samples[samples.len() / 2].as_secs_f64(),
        samples[samples.len() - 1].as_secs_f64()
    );
    Ok(())
}

/// `GET /api/runs/{id}` of the finished run of `tests` tests, timed from this process (HTTP/1.1 on
/// loopback, a kept-alive connection), beside the same run read over the operator protocol (QUIC,
/// postcard) from the same process: p50 and p99 of 50 each, after 5 not counted.
async fn api_latency(
    cluster: &TestCluster,
    client: &mut OperatorClient,
    run: u64,
    tests: usize,
) -> anyhow::Result<()> {
    const TIMED: usize = 50;
    let token = read_private(&cluster.data_dir.join("operator-token"))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{}/api/runs/{run}", cluster.http);
    let mut api = Vec::new();
    let mut bytes = 0;
    for round in 0..TIMED + 5 {
        let started = Instant::now();
        let response = http.get(&url).bearer_auth(token.trim()).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let body = response.bytes().await?;
        if round >= 5 {
            api.push(started.elapsed());
        }
        bytes = body.len();
    }
    let mut quic = Vec::new();
    for round in 0..TIMED + 5 {
        let started = Instant::now();
        let OperatorResponse::Run(_) = client.request(OperatorRequest::ShowRun { run }).await?
        else {
            anyhow::bail!("no run detail");
        };
        if round >= 5 {
            quic.push(started.elapsed());
        }
    }
    let percentile = |times: &mut Vec<Duration>, p: f64| {
        times.sort();
        let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
        times[rank - 1].as_secs_f64() * 1000.0
    };
    println!(
        "| `GET /api/runs/{{id}}` of a {tests}-test run ({:.1} MB of JSON), {TIMED} requests | p50 {:.1} ms, p99 {:.1} ms | `runs show` over QUIC, same run: p50 {:.1} ms, p99 {:.1} ms |",
        bytes as f64 / 1e6,
        percentile(&mut api, 0.5),
        percentile(&mut api, 0.99),
        percentile(&mut quic, 0.5),
        percentile(&mut quic, 0.99),
    );

    // The web view's run page of the same run: the whole page, and its weight before data (the page
    // with its test rows left out, plus the script, style sheet and icon it loads).
    let base = format!("http://{}", cluster.http);
    let mut page = Vec::new();
    let mut html = String::new();
    for round in 0..TIMED + 5 {
        let started = Instant::now();
        let response = http
            .get(format!("{base}/runs/{run}"))
            .bearer_auth(token.trim())
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET /runs/{run}: {}",
            response.status()
        );
        html = response.text().await?;
        if round >= 5 {
            page.push(started.elapsed());
        }
    }
    let rows_start = html
        .find("<table id=\"tests\">")
        .and_then(|table| {
            html[table..]
                .find("<tbody>")
                .map(|at| table + at + "<tbody>".len())
        })
        .ok_or_else(|| anyhow::anyhow!("no tests table in the run page"))?;
    let rows_end = rows_start
        + html[rows_start..]
            .find("</tbody>")
            .ok_or_else(|| anyhow::anyhow!("no end to the tests table"))?;
    let mut assets = 0;
    for asset in ["/static/app.js", "/static/style.css", "/static/icon.svg"] {
        assets += http
            .get(format!("{base}{asset}"))
            .send()
            .await?
            .bytes()
            .await?
            .len();
    }
    let shell = html.len() - (rows_end - rows_start);
    println!(
        "| the web view's run page of the same run: weight before data (HTML without its {tests} test rows {:.1} KB + script, style, icon {:.1} KB); the whole page {:.1} MB, served in | {:.1} KB before data; whole page p50 {:.1} ms, p99 {:.1} ms | goal: under 100 KB before data |",
        shell as f64 / 1e3,
        assets as f64 / 1e3,
        html.len() as f64 / 1e6,
        (shell + assets) as f64 / 1e3,
        percentile(&mut page, 0.5),
        percentile(&mut page, 0.99),
    );
    Ok(())
}
