//! Many agents on one coordinator (issue 21), printed as a Markdown row for BENCHMARKS.md.
//!
//! `./target/release/bench-scale --agents N` starts a real `polarizer serve` (production intervals:
//! gossip every 200 ms, heartbeats every 500 ms) and N simulated agents in a few worker processes of this
//! same binary. Each simulated agent is what the real one is on the network: a chitchat node on its own
//! loopback UDP port (seeded with the coordinator, advertising its role and name) and a QUIC session
//! speaking the real protocol (enrollment hello, facts, heartbeats; assignments answered test by test,
//! each taking `--test-seconds`). Gossip bytes are counted by a transport wrapped around chitchat's UDP
//! one. Measured:
//! - the time until the coordinator counts all N online (its `/metrics`);
//! - gossip bytes per second per agent, and at the coordinator (what agents send it and receive from
//!   it), over a 10 s window in steady state, with gossip sends the kernel refused (a datagram over
//!   64 KiB: a digest of too many nodes);
//! - the coordinator's CPU (share of one core) and RSS over that window;
//! - `polarizer agents --json` with all N online, and one page of it (`--limit 500`), on stderr;
//! - the loss of 1 % of the agents (their worker killed with SIGKILL: no goodbye, as a dead host) → the
//!   coordinator counting them offline;
//! - a run of `--tests` tests (10,000 by default) spread over the agents left: from the moment
//!   `polarizer trigger` starts to the run's end as the coordinator stored it, beside the ideal
//!   (tests × seconds ÷ agents), and results per second.
//!
//! Run: `cargo build --release --workspace && ./target/release/bench-scale --agents 500 --cell-size 100`
//! (`--help` lists the flags and their defaults).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::ChitchatEnvelope;
use polarizer_e2e::*;
use polarizer_shared::membership::*;
use polarizer_shared::protocol::*;
use polarizer_shared::run::*;
use polarizer_shared::AgentFacts;
use polarizer_transport::client::connect;
use polarizer_transport::gossip::{Gossip, GossipConfig};
use polarizer_transport::state_files::read_private;
use polarizer_transport::tls;
use polarizer_transport::CaTrust;

/// What a worker counts, printed as one line of numbers each second.
#[derive(Default)]
struct Counters {
    online: AtomicU64,
    gossip_sent: AtomicU64,
    gossip_received: AtomicU64,
    to_coordinator: AtomicU64,
    from_coordinator: AtomicU64,
    refused_sends: AtomicU64,
    results: AtomicU64,
    /// Sessions that ended with an error (the coordinator closed them: no heartbeat in time, say).
    lost_sessions: AtomicU64,
}

impl Counters {
    fn line(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "{} {} {} {} {} {} {} {}",
            load(&self.online),
            load(&self.gossip_sent),
            load(&self.gossip_received),
            load(&self.to_coordinator),
            load(&self.from_coordinator),
            load(&self.refused_sends),
            load(&self.results),
            load(&self.lost_sessions),
        )
    }
}

/// chitchat's UDP transport, counting bytes.
struct Counting {
    counters: Arc<Counters>,
    coordinator: SocketAddr,
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    counters: Arc<Counters>,
    coordinator: SocketAddr,
}

#[async_trait]
impl Transport for Counting {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket {
            inner: UdpTransport.open(listen_addr).await?,
            counters: self.counters.clone(),
            coordinator: self.coordinator,
        }))
    }
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let sent = self.inner.send(to, envelope).await;
        match &sent {
            Ok(outcome) => {
                let bytes = outcome.num_bytes_sent as u64;
                self.counters
                    .gossip_sent
                    .fetch_add(bytes, Ordering::Relaxed);
                if to == self.coordinator {
                    self.counters
                        .to_coordinator
                        .fetch_add(bytes, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.counters.refused_sends.fetch_add(1, Ordering::Relaxed);
            }
        }
        sent
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let received = self.inner.recv().await?;
        let bytes = received.num_bytes_received as u64;
        self.counters
            .gossip_received
            .fetch_add(bytes, Ordering::Relaxed);
        if received.from_addr == self.coordinator {
            self.counters
                .from_coordinator
                .fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(received)
    }
}

/// Many simulated agents on one real coordinator: one row of BENCHMARKS.md's table.
#[derive(clap::Parser)]
struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Worker processes the agents are spread over (at least 2: the first holds the 1 % lost).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..))]
    processes: u16,
    /// Tests in the run.
    #[arg(long, default_value_t = 10_000)]
    tests: usize,
    /// How long each test takes.
    #[arg(long, default_value_t = 1.0)]
    test_seconds: f64,
    /// Agents per gossip cell, by index (0: all in the default cell, today's flat design).
    #[arg(long, default_value_t = 0)]
    cell_size: usize,
    /// The agents' gossip round.
    #[arg(long, default_value_t = 200)]
    gossip_ms: u64,
    /// The coordinator's `heartbeat_interval_ms`.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// How often each worker starts one agent.
    #[arg(long, default_value_t = 2)]
    arrival_ms: u64,
    /// A worker process of the benchmark (started by it): agents `--first` to `--first` + `--count`.
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    #[arg(long, hide = true, default_value_t = 1)]
    count: usize,
    #[arg(long, hide = true, default_value = "127.0.0.1:7701")]
    quic: SocketAddr,
    #[arg(long, hide = true, default_value = "127.0.0.1:7700")]
    gossip: SocketAddr,
    #[arg(long, hide = true, default_value = ".")]
    data_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    if args.worker {
        return worker(&args);
    }
    bench(&args)
}

/// Who a simulated agent is.
struct Simulated {
    name: String,
    /// Its gossip cell, "" for the default one.
    cell: String,
    /// The enrollment token.
    token: String,
    /// How long each of its tests takes.
    test_time: Duration,
    /// Its gossip round.
    gossip_interval: Duration,
}

/// One simulated agent: gossip, then its QUIC session until the connection ends.
async fn agent(
    me: Simulated,
    endpoint: quinn::Endpoint,
    coordinator_quic: SocketAddr,
    coordinator_gossip: SocketAddr,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let Simulated {
        name,
        cell,
        token,
        test_time,
        gossip_interval,
    } = me;
    // A port picked free may be taken by another agent before chitchat binds it: another, then.
    let mut tries = 0;
    let _gossip = loop {
        tries += 1;
        let listen = free_udp_addr();
        let started = Gossip::start_on(
            GossipConfig {
                node_id: agent_node_id(&name),
                listen_addr: listen,
                advertise_addr: listen,
                seeds: vec![coordinator_gossip.to_string()],
                cluster_id: cell_cluster_id(DEFAULT_CLUSTER_ID, &cell),
                interval: gossip_interval,
                advertised: vec![
                    (KEY_ROLE.into(), ROLE_AGENT.into()),
                    (KEY_AGENT_NAME.into(), name.clone()),
                ],
            },
            &Counting {
                counters: counters.clone(),
                coordinator: coordinator_gossip,
            },
        )
        .await;
        match started {
            Ok(gossip) => break gossip,
            Err(err) if tries >= 5 => return Err(err.into()),
            Err(_) => continue,
        }
    };
    // As the real agent: a lost session is reconnected after a pause, with the credential issued once
    // the coordinator took the enrollment.
    let mut enrolled = false;
    loop {
        let secret = format!("secret-{name}");
        let credential = match enrolled {
            false => AgentCredential::Enroll {
                token: token.clone(),
                secret,
            },
            true => AgentCredential::Issued { secret },
        };
        let outcome = session(
            &name,
            &endpoint,
            coordinator_quic,
            credential,
            &counters,
            test_time,
            &mut enrolled,
        )
        .await;
        if let Err(err) = outcome {
            counters.lost_sessions.fetch_add(1, Ordering::Relaxed);
            eprintln!("{name}: {err:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One QUIC session of a simulated agent, until it ends.
async fn session(
    name: &str,
    endpoint: &quinn::Endpoint,
    coordinator_quic: SocketAddr,
    credential: AgentCredential,
    counters: &Counters,
    test_time: Duration,
    enrolled: &mut bool,
) -> anyhow::Result<()> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        peer: Peer::Agent {
            credential,
            facts: Box::new(AgentFacts::for_test(name)),
            incarnation: std::process::id() as u64,
        },
    };
    let session = connect(endpoint, coordinator_quic, hello, Duration::from_secs(60)).await?;
    *enrolled = true;
    counters.online.fetch_add(1, Ordering::Relaxed);
    let mut stream = session.stream;
    // As the real agent: at the interval the coordinator's welcome names.
    let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(
        session.welcome.heartbeat_interval_ms.max(50),
    )));
    let mut seq = session.welcome.records_committed;
    let mut queue: VecDeque<(SuiteRef, String)> = VecDeque::new();
    // The test running: its suite, id, when it ends, and when it started (wall clock, as the agent's).
    let mut running: Option<(SuiteRef, String, tokio::time::Instant, i64)> = None;
    let outcome = loop {
        let due = running.as_ref().map(|(_, _, due, _)| *due);
        tokio::select! {
            _ = heartbeat.tick() => {
                stream.send(&ClientFrame::Agent(AgentMessage::Heartbeat)).await?;
            }
            () = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => {
                let (suite, test, _, started_ms) = running.take().expect("a test runs");
                seq += 1;
                let mut records = vec![Record {
                    seq,
                    at_ms: wall_ms(),
                    body: RecordBody::TestFinished(Box::new(TestOutcome {
                        suite,
                        test,
                        status: TestStatus::Pass,
                        exit: Exit::Code(0),
                        started_ms,
                        duration_ms: test_time.as_millis() as u64,
                        message: String::new(),
                        output_tail: String::new(),
                        subresults: Vec::new(),
                    })),
                }];
                counters.results.fetch_add(1, Ordering::Relaxed);
                match queue.pop_front() {
                    Some((next_suite, next)) => {
                        seq += 1;
                        records.push(Record { seq, at_ms: wall_ms(), body: RecordBody::TestStarted { suite: next_suite, test: next.clone() } });
                        running = Some((next_suite, next, tokio::time::Instant::now() + test_time, wall_ms()));
                    }
                    None => {
                        seq += 1;
                        records.push(Record { seq, at_ms: wall_ms(), body: RecordBody::SuiteFinished { suite, error: None } });
                    }
                }
                stream.send(&ClientFrame::Agent(AgentMessage::Records(records))).await?;
            }
            frame = stream.recv::<ServerFrame>() => match frame {
                Ok(Some(ServerFrame::Agent(CoordinatorMessage::Assign(assignment)))) => {
                    let suite = assignment.suite;
                    queue.extend(assignment.tests.iter().map(|test| (suite, test.id.clone())));
                    if running.is_none() {
                        if let Some((suite, test)) = queue.pop_front() {
                            seq += 1;
                            let started = Record { seq, at_ms: wall_ms(), body: RecordBody::TestStarted { suite, test: test.clone() } };
                            stream.send(&ClientFrame::Agent(AgentMessage::Records(vec![started]))).await?;
                            running = Some((suite, test, tokio::time::Instant::now() + test_time, wall_ms()));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(err) => break Err(anyhow::anyhow!("{name}: {err}")),
            }
        }
    };
    counters.online.fetch_sub(1, Ordering::Relaxed);
    outcome
}

/// `--worker --first I --count C --quic ADDR --gossip ADDR --data-dir D --test-seconds S --cell-size Z`:
/// C agents, named agent-I…, in cells of Z by index (0: the default cell), counters on stdout each second.
fn worker(args: &Args) -> anyhow::Result<()> {
    let (first, count, quic, gossip) = (args.first, args.count, args.quic, args.gossip);
    let data_dir = args.data_dir.clone();
    let test_time = Duration::from_secs_f64(args.test_seconds);
    let cell_size = args.cell_size;
    let gossip_interval = Duration::from_millis(args.gossip_ms);
    let arrival = Duration::from_millis(args.arrival_ms);
    let runtime = bench_runtime()?;
    runtime.block_on(async move {
        let counters = Arc::new(Counters::default());
        let trust = CaTrust::from_pem_file(&data_dir.join("ca.pem"))?;
        // One endpoint for the worker's agents: one UDP socket, their connections told apart by QUIC.
        // Its socket's buffers as large as the coordinator's: hundreds of agents' packets share it.
        let socket = polarizer_transport::quic_socket(
            ([127, 0, 0, 1], 0).into(),
            polarizer_transport::SERVER_RECEIVE_BUFFER,
        )?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(tls::client_config(&trust)?);
        let token = read_private(&data_dir.join("agent-token"))?;
        for index in first..first + count {
            let (endpoint, token, counters) = (endpoint.clone(), token.clone(), counters.clone());
            tokio::spawn(async move {
                let name = format!("agent-{index:05}");
                // Agents index..index+cell_size share a cell; 0: all in the default one.
                let cell = match cell_size {
                    0 => String::new(),
                    size => format!("cell-{}", index / size),
                };
                let me = Simulated {
                    name: name.clone(),
                    cell,
                    token,
                    test_time,
                    gossip_interval,
                };
                if let Err(err) = agent(me, endpoint, quic, gossip, counters).await {
                    eprintln!("{name}: {err:#}");
                }
            });
            // Arrivals spread a little, as hosts booting are.
            tokio::time::sleep(arrival).await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            println!("{}", counters.line());
        }
    })
}

/// The workers' latest counters, summed, by the workers still there.
#[derive(Clone, Copy, Default, Debug)]
struct Totals {
    gossip_sent: u64,
    gossip_received: u64,
    to_coordinator: u64,
    from_coordinator: u64,
    refused_sends: u64,
    results: u64,
    lost_sessions: u64,
}

fn totals(latest: &Mutex<Vec<Option<[u64; 8]>>>) -> Totals {
    let latest = latest.lock().expect("counters");
    let mut totals = Totals::default();
    for line in latest.iter().flatten() {
        totals.gossip_sent += line[1];
        totals.gossip_received += line[2];
        totals.to_coordinator += line[3];
        totals.from_coordinator += line[4];
        totals.refused_sends += line[5];
        totals.results += line[6];
        totals.lost_sessions += line[7];
    }
    totals
}

/// How many agents the coordinator counts online (its `/metrics`).
fn online(http: SocketAddr) -> Option<u64> {
    let mut stream = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    std::io::Write::write_all(
        &mut stream,
        format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("polarizer_agents{state=\"online\"} "))
        .and_then(|count| count.trim().parse().ok())
}

/// Polls `done` every 100 ms until it holds or `deadline` passes: the time it took, if it held.
fn time_until(deadline: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A repository of `count` tests that pass at once (each simulated agent takes `--test-seconds`).
fn tests_repo(root: &Path, count: usize) {
    let mut fmf = String::from("test: \"true\"\nduration: 1m\n");
    for index in 0..count {
        fmf.push_str(&format!("/t{index:06}: {{}}\n"));
    }
    git_repo(root, &[(".fmf/version", "1\n"), ("tests/main.fmf", &fmf)]);
}

/// The worker processes, killed however the benchmark ends.
struct Workers(Vec<std::process::Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

fn bench(args: &Args) -> anyhow::Result<()> {
    let agents = args.agents;
    let processes = usize::from(args.processes);
    let test_count = args.tests;
    let test_seconds = args.test_seconds;
    let cell_size = args.cell_size;
    let gossip_ms = args.gossip_ms;
    let heartbeat_ms = args.heartbeat_ms;
    let arrival_ms = args.arrival_ms;
    let cluster = TestCluster::new_coordinator_only_with(&[
        "--heartbeat-interval-ms",
        &heartbeat_ms.to_string(),
    ]);
    let pid = cluster
        .coordinator
        .as_ref()
        .map(|process| process.pid())
        .unwrap_or(0);
    // The first worker holds the 1 % that will be lost; the others share the rest.
    let lost = (agents / 100).max(1);
    let mut shares = vec![lost];
    let rest = agents - lost;
    for index in 0..processes - 1 {
        shares.push(rest / (processes - 1) + usize::from(index < rest % (processes - 1)));
    }
    let latest: Arc<Mutex<Vec<Option<[u64; 8]>>>> = Arc::new(Mutex::new(vec![None; shares.len()]));
    let mut workers = Workers(Vec::new());
    let started = Instant::now();
    let mut first = 0;
    for (slot, count) in shares.iter().enumerate() {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--worker",
                "--first",
                &first.to_string(),
                "--count",
                &count.to_string(),
            ])
            .args([
                "--quic",
                &cluster.quic.to_string(),
                "--gossip",
                &cluster.gossip.to_string(),
            ])
            .arg("--data-dir")
            .arg(&cluster.data_dir)
            .args(["--test-seconds", &test_seconds.to_string()])
            .args(["--cell-size", &cell_size.to_string()])
            .args(["--gossip-ms", &gossip_ms.to_string()])
            .args(["--arrival-ms", &arrival_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let latest = latest.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let numbers: Vec<u64> = line.split(' ').filter_map(|n| n.parse().ok()).collect();
                if let Ok(numbers) = <[u64; 8]>::try_from(numbers) {
                    latest.lock().expect("counters")[slot] = Some(numbers);
                }
            }
        });
        workers.0.push(child);
        first += count;
    }
    let all_online = time_until(Duration::from_secs(180), || {
        online(cluster.http) == Some(agents as u64)
    });
    let online_text = match all_online {
        Some(_) => format!("{:.1} s", started.elapsed().as_secs_f64()),
        None => format!(
            "not all: {} of {agents} after 180 s",
            online(cluster.http).unwrap_or(0)
        ),
    };

    // Steady state: 10 s of gossip and heartbeats, nothing else.
    const WINDOW: Duration = Duration::from_secs(10);
    let (before, cpu_before, window_started) = (totals(&latest), cpu_seconds(pid), Instant::now());
    std::thread::sleep(WINDOW);
    let after = totals(&latest);
    let window = window_started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu_before) / window;
    let rss = rss_mib(pid);
    let per_agent = ((after.gossip_sent - before.gossip_sent)
        + (after.gossip_received - before.gossip_received)) as f64
        / window
        / agents as f64;
    let at_coordinator = ((after.to_coordinator - before.to_coordinator)
        + (after.from_coordinator - before.from_coordinator)) as f64
        / window;
    let refused = after.refused_sends - before.refused_sends;
    let dropped = after.lost_sessions - before.lost_sessions;

    // The inventory as an operator reads it, with every agent online: all of it, then one page.
    let listed = |args: &[&str]| {
        let started = Instant::now();
        let output = cluster.operator(args);
        let rows = serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .ok()
            .and_then(|rows| rows.as_array().map(Vec::len))
            .unwrap_or(0);
        (rows, started.elapsed().as_secs_f64())
    };
    let (all_rows, all_took) = listed(&["agents", "--json"]);
    let (page_rows, page_took) = listed(&["agents", "--json", "--limit", "500"]);
    eprintln!(
        "bench-scale: `polarizer agents --json`: {all_rows} rows in {all_took:.2} s; with `--limit 500`: {page_rows} rows in {page_took:.2} s"
    );

    // 1 % lost at once, as dead hosts: their worker killed, nothing said.
    let online_before = online(cluster.http).unwrap_or(0);
    let killed = Instant::now();
    unsafe { libc::kill(workers.0[0].id() as i32, libc::SIGKILL) };
    let _ = workers.0[0].wait();
    latest.lock().expect("counters")[0] = None;
    let detected = time_until(Duration::from_secs(120), || {
        online(cluster.http).is_some_and(|now| now + lost as u64 <= online_before)
    });
    let loss_text = match detected {
        Some(_) => format!("{:.1} s", killed.elapsed().as_secs_f64()),
        None => "not within 120 s".into(),
    };

    // A run of many short tests over the agents left.
    let repo = cluster.path("scale-tests");
    tests_repo(&repo, test_count);
    let results_before = totals(&latest).results;
    let run_started = Instant::now();
    let run_started_ms = chrono::Utc::now().timestamp_millis();
    let triggered = cluster.operator(&[
        "trigger",
        "--repo",
        repo.to_str().unwrap_or_default(),
        "--all",
        "--json",
    ]);
    anyhow::ensure!(
        triggered.status.success(),
        "trigger: {}",
        String::from_utf8_lossy(&triggered.stderr)
    );
    let run = serde_json::from_slice::<serde_json::Value>(&triggered.stdout)?["run"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "bench-scale: run {run} planned and queued {:.1} s after the trigger",
        run_started.elapsed().as_secs_f64()
    );
    // The run's end as the coordinator stored it: an operator's poll waits its turn at a coordinator
    // this busy, and that wait is not the run's.
    let mut ended = None;
    time_until(Duration::from_secs(1800), || {
        let shown = cluster.operator(&["runs", "--json", "--limit", "1"]);
        let Ok(runs) = serde_json::from_slice::<serde_json::Value>(&shown.stdout) else {
            return false;
        };
        let over = runs[0]["id"] == run
            && matches!(
                runs[0]["state"].as_str(),
                Some("passed" | "failed" | "error")
            );
        if over {
            ended = unix_ms(&runs[0]["finished"]).ok();
        }
        over
    });
    if ended.is_some() {
        run_breakdown(&cluster, run, run_started_ms);
    }
    let remaining = (agents - lost) as f64;
    let ideal = test_count as f64 * test_seconds / remaining;
    let run_text = match ended {
        Some(ended) => {
            let took = (ended - run_started_ms) as f64 / 1000.0;
            format!(
                "{took:.1} s (ideal {ideal:.1} s, {:.1}×); {:.0} results/s",
                took / ideal,
                (totals(&latest).results - results_before) as f64 / took
            )
        }
        None => "not finished within 30 min".into(),
    };
    drop(workers);
    let cells = match cell_size {
        0 => format!("one, every {gossip_ms} ms"),
        size => format!("{} of {size}, every {gossip_ms} ms", agents.div_ceil(size)),
    } + &format!("; heartbeat {heartbeat_ms} ms");
    println!(
        "| {agents} | {cells} | {online_text} | {per_agent:.0} B/s | {at_coordinator:.0} B/s | {refused} | {dropped} | {:.0} % | {rss:.0} MiB | {lost} lost: offline after {loss_text} | {test_count} × {test_seconds} s tests: {run_text} |",
        cpu * 100.0
    );
    Ok(())
}

/// Where a run's time went, on stderr, counted from the trigger: when its suites were leased, when their
/// first and last tests began on the agents (their clocks, as they report them), and when the suites
/// were stored finished.
fn run_breakdown(cluster: &TestCluster, run: u64, started_ms: i64) {
    let shown = cluster.operator(&["runs", "show", &run.to_string(), "--json"]);
    let Ok(detail) = serde_json::from_slice::<serde_json::Value>(&shown.stdout) else {
        return;
    };
    let since_trigger = |time: &serde_json::Value| {
        unix_ms(time)
            .ok()
            .map(|ms| (ms - started_ms) as f64 / 1000.0)
    };
    let suites = || detail["suites"].as_array().into_iter().flatten();
    let leased: Vec<f64> = suites()
        .filter_map(|suite| since_trigger(&suite["started"]))
        .collect();
    let finished: Vec<f64> = suites()
        .filter_map(|suite| since_trigger(&suite["finished"]))
        .collect();
    let mut tests_begun: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for test in detail["tests"].as_array().into_iter().flatten() {
        let (Some(suite), Some(at)) = (test["suite"].as_u64(), since_trigger(&test["started"]))
        else {
            continue;
        };
        let (first, last) = tests_begun.entry(suite).or_insert((at, at));
        *first = first.min(at);
        *last = last.max(at);
    }
    let first: Vec<f64> = tests_begun.values().map(|(first, _)| *first).collect();
    let last: Vec<f64> = tests_begun.values().map(|(_, last)| *last).collect();
    let quantiles = |times: &[f64]| {
        format!(
            "first {:.2} s, median {:.2} s, p99 {:.2} s, last {:.2} s",
            percentile(times, 0.0),
            percentile(times, 50.0),
            percentile(times, 99.0),
            percentile(times, 100.0)
        )
    };
    eprintln!(
        "bench-scale: run {run} from the trigger: suites leased {}; their first test began on the agent {}; their last {}; suites stored finished {}",
        quantiles(&leased),
        quantiles(&first),
        quantiles(&last),
        quantiles(&finished)
    );
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
