//! Benchmarks for the foundation, printed as a Markdown table for BENCHMARKS.md:
//! agent start → online, kill -9 → offline, idle agent RSS, frame codec rate, QUIC frames/s.
//!
//! Run: `cargo build --release --workspace && cargo run --release -p polarizer-bench --bin bench`

use std::time::{Duration, Instant};

use polarizer_e2e::*;
use polarizer_shared::frame::{self, FrameDecoder};
use polarizer_shared::protocol::*;
use polarizer_shared::AgentFacts;
use polarizer_transport::client::{client_endpoint, connect};
use polarizer_transport::state_files::read_private;
use polarizer_transport::{tls, CaTrust, FramedStream};

const RUNS: usize = 10;

fn main() -> anyhow::Result<()> {
    let runtime = bench_runtime()?;
    println!("| what | result | target |\n| --- | --- | --- |");
    liveness(&runtime)?;
    codec();
    runtime.block_on(quic_rates())?;
    Ok(())
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

/// An operator connection held open, polled every few milliseconds (a CLI per poll would dominate).
struct Watcher {
    session: polarizer_transport::client::Session,
}

impl Watcher {
    async fn connect(cluster: &TestCluster) -> anyhow::Result<Watcher> {
        let trust = CaTrust::from_pem_file(&cluster.data_dir.join("ca.pem"))?;
        let endpoint = client_endpoint(tls::client_config(&trust)?, cluster.quic)?;
        let token = read_private(&cluster.data_dir.join("operator-token"))?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Operator { token },
        };
        let session = connect(&endpoint, cluster.quic, hello, Duration::from_secs(5)).await?;
        Ok(Watcher { session })
    }

    async fn state(&mut self, name: &str) -> anyhow::Result<Option<AgentState>> {
        self.session
            .stream
            .send(&ClientFrame::Operator(OperatorRequest::ListAgents))
            .await?;
        match self.session.stream.expect::<ServerFrame>().await? {
            ServerFrame::Operator(OperatorResponse::Agents(agents)) => Ok(agents
                .into_iter()
                .find(|agent| agent.name == name)
                .map(|agent| agent.state)),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    async fn time_until_state(
        &mut self,
        name: &str,
        wanted: AgentState,
        since: Instant,
    ) -> anyhow::Result<Duration> {
        while self.state(name).await? != Some(wanted) {
            anyhow::ensure!(
                since.elapsed() < Duration::from_secs(30),
                "{name} never became {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(since.elapsed())
    }
}

/// Default settings (gossip 200 ms, heartbeat 500 ms), release binaries.
fn liveness(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let mut cluster = TestCluster::new_coordinator_only_with(&[]);
    let mut watcher = runtime.block_on(Watcher::connect(&cluster))?;
    let (mut enroll, mut restart, mut offline, mut rss_kib) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let name = format!("bench-{run}");
        let spawn_agent = |cluster: &mut TestCluster| {
            let command = with_args(
                cluster.agent_command(&name),
                &[
                    ("--gossip-interval-ms", "200"),
                    ("--reconnect-max-ms", "5000"),
                ],
            );
            let process = Process::spawn(&name, command, cluster.path(&format!("{name}.log")));
            cluster.agents.push((name.clone(), process));
        };
        // On a miss, say what the agent and the coordinator logged.
        let wait = |cluster: &TestCluster,
                    watcher: &mut Watcher,
                    wanted: AgentState,
                    since: Instant| {
            runtime.block_on(watcher.time_until_state(&name, wanted, since)).map_err(|err| {
                let agent_log = read(&cluster.path(&format!("{name}.log")));
                let coordinator_log = cluster.coordinator.as_ref().map(Process::log_text).unwrap_or_default();
                anyhow::anyhow!("{err}\n--- agent log ---\n{agent_log}\n--- coordinator log ---\n{coordinator_log}")
            })
        };
        let started = Instant::now();
        spawn_agent(&mut cluster);
        enroll.push(wait(&cluster, &mut watcher, AgentState::Online, started)?);
        let killed = Instant::now();
        cluster.agent(&name).kill_9();
        offline.push(wait(&cluster, &mut watcher, AgentState::Offline, killed)?);
        let restarted = Instant::now();
        cluster.agents.retain(|(existing, _)| *existing != name);
        spawn_agent(&mut cluster);
        restart.push(wait(&cluster, &mut watcher, AgentState::Online, restarted)?);
        if run == 0 {
            // Idle RSS after a few heartbeat rounds.
            std::thread::sleep(Duration::from_secs(5));
            let pid = cluster.agent(&name).pid();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let kib: u64 = status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            rss_kib.push(kib);
        }
        cluster.agent(&name).kill_9();
    }
    println!(
        "| agent start → listed online, first start (enrolls), {RUNS} runs | p50 {} · max {} | ≤ 1 s |",
        ms(percentile(&mut enroll, 0.5)),
        ms(percentile(&mut enroll, 1.0))
    );
    println!(
        "| agent start → listed online, restart (credential), {RUNS} runs | p50 {} · max {} | ≤ 1 s |",
        ms(percentile(&mut restart, 0.5)),
        ms(percentile(&mut restart, 1.0))
    );
    println!(
        "| `kill -9` of an agent → offline, {RUNS} runs | p50 {} · max {} | ≤ 5 s |",
        ms(percentile(&mut offline, 0.5)),
        ms(percentile(&mut offline, 1.0))
    );
    println!(
        "| agent idle RSS (release, online, 5 s idle) | {:.1} MiB | ≤ 8 MiB |",
        rss_kib[0] as f64 / 1024.0
    );
    Ok(())
}

fn codec() {
    let heartbeat = ClientFrame::Agent(AgentMessage::Heartbeat);
    let facts = ClientFrame::Agent(AgentMessage::FactsChanged(Box::new(AgentFacts::for_test(
        "vm-1",
    ))));
    for (label, message, count) in [
        ("heartbeat", &heartbeat, 5_000_000usize),
        ("facts (typical hello payload)", &facts, 1_000_000),
    ] {
        let started = Instant::now();
        let mut wire = Vec::new();
        for _ in 0..count {
            frame::encode_into(message, &mut wire).expect("encode");
        }
        let mut decoder = FrameDecoder::new();
        decoder.push(&wire);
        let mut decoded = 0usize;
        while let Some(frame) = decoder.next_frame::<ClientFrame>().expect("decode") {
            std::hint::black_box(frame);
            decoded += 1;
        }
        assert_eq!(decoded, count);
        let rate = count as f64 / started.elapsed().as_secs_f64();
        let bytes = wire.len() / count;
        println!("| frame codec: encode + decode, {label} ({bytes} B/frame) | {:.2} M frames/s | (measured) |", rate / 1e6);
    }
}

/// One QUIC stream on loopback: frames written one by one and decoded by the receiver, versus the same
/// bytes written in 64 KiB chunks and only counted by the receiver (the codec-free ceiling).
async fn quic_rates() -> anyhow::Result<()> {
    let (server_config, trust, _cluster) = coordinator_certificates()?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let client = client_endpoint(tls::client_config(&trust)?, addr)?;
    const FRAMES: usize = 1_000_000;
    let frame_bytes = frame::encode(&ClientFrame::Agent(AgentMessage::Heartbeat))?;

    for mode in ["framed", "batched", "raw"] {
        let server_task = {
            let server = server.clone();
            tokio::spawn(async move {
                let connection = server
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("connection");
                let (_send, mut recv) = connection.accept_bi().await.expect("stream");
                let mut decoder = FrameDecoder::new();
                let (mut frames, mut bytes) = (0usize, 0usize);
                while let Some(chunk) = recv.read_chunk(1 << 20, true).await.expect("read") {
                    bytes += chunk.bytes.len();
                    if mode != "raw" {
                        decoder.push(&chunk.bytes);
                        while let Some(frame) = decoder.next_frame::<ClientFrame>().expect("decode")
                        {
                            std::hint::black_box(frame);
                            frames += 1;
                        }
                    }
                }
                (frames, bytes)
            })
        };
        let connection = client.connect(addr, tls::server_name())?.await?;
        let (send, recv) = connection.open_bi().await?;
        let started = Instant::now();
        if mode == "framed" {
            let mut stream = FramedStream::new(send, recv);
            for _ in 0..FRAMES {
                stream
                    .send(&ClientFrame::Agent(AgentMessage::Heartbeat))
                    .await?;
            }
            stream.finish().await;
        } else if mode == "batched" {
            let mut stream = FramedStream::new(send, recv);
            let mut batch = Vec::new();
            for _ in 0..FRAMES / 1000 {
                batch.clear();
                for _ in 0..1000 {
                    frame::encode_into(&ClientFrame::Agent(AgentMessage::Heartbeat), &mut batch)?;
                }
                stream.send_encoded(&batch).await?;
            }
            stream.finish().await;
        } else {
            let mut send = send;
            let blob: Vec<u8> = frame_bytes
                .iter()
                .copied()
                .cycle()
                .take(frame_bytes.len() * FRAMES)
                .collect();
            for chunk in blob.chunks(64 * 1024) {
                send.write_all(chunk).await?;
            }
            send.finish()?;
            let _ = send.stopped().await;
        }
        let (frames, bytes) = server_task.await?;
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(bytes, frame_bytes.len() * FRAMES);
        if mode != "raw" {
            assert_eq!(frames, FRAMES);
        }
        println!(
            "| QUIC loopback, agent → coordinator, {} ({} B frames) | {:.2} M frames/s ({:.0} MB/s) | side by side |",
            match mode {
                "framed" => "frames encoded and written one by one, decoded by the receiver",
                "batched" => "frames encoded 1,000 per write, decoded by the receiver",
                _ => "the same bytes raw, no codec (ceiling)",
            },
            frame_bytes.len(),
            FRAMES as f64 / elapsed / 1e6,
            bytes as f64 / elapsed / 1e6
        );
        connection.close(0u32.into(), b"done");
    }
    Ok(())
}

/// The CA and server certificate of a real coordinator data dir (created by starting one and stopping it).
fn coordinator_certificates() -> anyhow::Result<(quinn::ServerConfig, CaTrust, TestCluster)> {
    use rustls_pki_types::pem::PemObject;
    let mut cluster = TestCluster::new_coordinator_only_with(&[]);
    cluster
        .coordinator
        .as_mut()
        .expect("started")
        .terminate(Duration::from_secs(10));
    let pem = |name: &str| cluster.data_dir.join(name);
    let chain = vec![
        rustls_pki_types::CertificateDer::from_pem_file(pem("server.pem"))?,
        rustls_pki_types::CertificateDer::from_pem_file(pem("ca.pem"))?,
    ];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(pem("server-key.pem"))?;
    let trust = CaTrust::from_pem_file(&pem("ca.pem"))?;
    Ok((tls::server_config(chain, key)?, trust, cluster))
}
