//! Benchmark: GitHub webhooks (issue 17), against a release coordinator and the tests' fake GitHub.
//!
//! 1. Latency: 200 signed push deliveries, one after another, each of a new commit of a repository the
//!    coordinator's cache already holds: from sending the delivery to the `pending` status arriving at
//!    the fake GitHub (the run created before it), and within it the `git fetch` of the change, reported
//!    apart (the coordinator's own `fetch_ms` per trigger); the goal is p99 ≤ 200 ms beyond the fetch.
//! 2. Throughput at the endpoint: the coordinator pinned to one core, a client on the other sending the
//!    same signed delivery again and again (each is read, its signature checked, its body parsed and
//!    recorded as a duplicate), beside a bare HMAC-SHA256 (ring) over the same body on one core.
//!
//! Run: `cargo build -j 2 --release -p polarizer -p polarizer-agent -p polarizer-bench --bins &&
//! ./target/release/bench-github` (`--help` lists the flags).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use polarizer_e2e::fake_github::{push_payload, sign, FakeGithub};
use polarizer_e2e::{git, git_repo, ok_json, percentile, wait_for, write_secret, TestCluster};
use serde_json::Value;

const SECRET: &str = "bench-secret";
const REPO: &str = "octo/bench";

/// GitHub deliveries into the coordinator (BENCHMARKS.md, "GitHub webhooks").
#[derive(clap::Parser)]
struct Args {
    /// Deliveries sent, one commit each.
    #[arg(long, default_value_t = 200)]
    deliveries: usize,
    /// Over how many seconds they are sent.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let Args {
        deliveries,
        seconds,
    } = clap::Parser::parse();
    let dir = tempfile::tempdir()?;
    // The repository: a small fmf tree, and one commit per delivery (each touches a source file).
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    git_repo(
        &work,
        &[
            (".fmf/version", "1\n"),
            ("features/main.fmf", "/core:\n    paths: [src/**]\n"),
            (
                "tests/main.fmf",
                "framework: shell\nextra-polarizer-type: unit\nextra-polarizer-feature: core\n/one:\n    test: 'true'\n/two:\n    test: 'true'\n",
            ),
            ("src/lib.py", "0\n"),
        ],
    );
    let mut commits = vec![git(&work, &["rev-parse", "HEAD"])];
    for n in 1..=deliveries {
        std::fs::write(work.join("src/lib.py"), format!("{n}\n"))?;
        git(&work, &["commit", "--quiet", "-am", &format!("change {n}")]);
        commits.push(git(&work, &["rev-parse", "HEAD"]));
    }
    let bare = dir.path().join("origin.git");
    let cloned = std::process::Command::new("git")
        .args(["clone", "--quiet", "--bare", "--"])
        .arg(&work)
        .arg(&bare)
        .status()?;
    if !cloned.success() {
        bail!("git clone --bare failed");
    }
    let fake = FakeGithub::start();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);
    let token = dir.path().join("token");
    write_secret(&token, &fake.token);
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[github]\nwebhook_secret_file = {secret:?}\ntoken_file = {token:?}\napi_url = {:?}\n\n[[github.repos]]\nname = {REPO:?}\nclone_url = \"file://{}\"\n",
            fake.api_url(),
            bare.display()
        ),
    )?;
    let cluster = TestCluster::new_coordinator_only_with(&["--config", config.to_str().unwrap()]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder().build()?;
    let url = format!("http://{}/hooks/github", cluster.http);
    let send = {
        let (client, url) = (client.clone(), url.clone());
        move |delivery: String, body: Vec<u8>| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let signature = sign(SECRET, &body);
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("user-agent", "GitHub-Hookshot/bench")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", delivery)
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
            }
        }
    };

    // Warm the cache: the first delivery fetches the whole history.
    let warm = push_payload(REPO, "refs/heads/main", &commits[0], &commits[0]);
    let status = runtime.block_on(send("warm".into(), warm.to_string().into_bytes()))?;
    if status != 202 {
        bail!("the warm-up delivery was answered {status}");
    }
    wait_for("the warm-up status", Duration::from_secs(60), || {
        !fake.statuses(&commits[0]).is_empty()
    });

    let mut total = Vec::new();
    for n in 1..=deliveries {
        let body = push_payload(REPO, "refs/heads/main", &commits[n - 1], &commits[n]);
        let sent = Instant::now();
        let status = runtime.block_on(send(format!("bench-{n}"), body.to_string().into_bytes()))?;
        if status != 202 {
            bail!("delivery {n} was answered {status}");
        }
        let sha = &commits[n];
        let mut arrived = None;
        wait_for("the pending status", Duration::from_secs(60), || {
            arrived = fake
                .accepted(&format!("/statuses/{sha}"))
                .first()
                .map(|call| call.at);
            arrived.is_some()
        });
        total.push(
            arrived
                .context("status")?
                .duration_since(sent)
                .as_secs_f64()
                * 1000.0,
        );
    }
    let triggers = ok_json(cluster.operator(&["triggers", "--json", "--limit", "100000"]));
    let listed: Vec<&Value> = triggers
        .as_array()
        .context("triggers")?
        .iter()
        .filter(|trigger| {
            trigger["delivery"]
                .as_str()
                .is_some_and(|id| id.starts_with("bench-"))
        })
        .collect();
    let fetch: Vec<f64> = listed
        .iter()
        .filter_map(|trigger| trigger["fetch_ms"].as_f64())
        .collect();
    let mut beyond = Vec::new();
    for n in 1..=deliveries {
        let fetched = listed
            .iter()
            .find(|trigger| trigger["delivery"] == format!("bench-{n}"))
            .and_then(|trigger| trigger["fetch_ms"].as_f64())
            .context("fetch_ms")?;
        beyond.push((total[n - 1] - fetched).max(0.0));
    }

    // Throughput: the coordinator on core 0, this process on core 1.
    let pid = cluster.coordinator.as_ref().context("coordinator")?.pid();
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-pc", "0", &pid.to_string()])
        .output()?;
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-pc", "1", &std::process::id().to_string()])
        .output();
    let body = {
        let mut payload = push_payload(REPO, "refs/heads/main", &commits[0], &commits[1]);
        // A push of 20 commits, as GitHub lists them: a body of the usual size.
        let commit = payload["commits"][0].clone();
        payload["commits"] = Value::Array(vec![commit; 20]);
        payload.to_string().into_bytes()
    };
    let status = runtime.block_on(send("dup".into(), body.clone()))?;
    if status != 202 && status != 200 {
        bail!("the duplicate's original was answered {status}");
    }
    // 16 senders for `seconds`; counts the answers that were `expect`.
    let flood = |signature: Option<String>, expect: u16| {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        runtime.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let client = client.clone();
                let url = url.clone();
                let body = body.clone();
                let signature = signature.clone().unwrap_or_else(|| sign(SECRET, &body));
                tasks.push(tokio::spawn(async move {
                    let mut count = 0u64;
                    while Instant::now() < deadline {
                        let answer = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("user-agent", "GitHub-Hookshot/bench")
                            .header("x-github-event", "push")
                            .header("x-github-delivery", "dup")
                            .header("x-hub-signature-256", &signature)
                            .body(body.clone())
                            .send()
                            .await
                            .map(|response| response.status().as_u16());
                        match answer {
                            Ok(status) if status == expect => count += 1,
                            other => return Err(format!("answered {other:?}")),
                        }
                    }
                    Ok(count)
                }));
            }
            let mut total = 0;
            for task in tasks {
                total += task.await.map_err(|err| err.to_string())??;
            }
            Ok::<u64, String>(total)
        })
    };
    let answered = flood(None, 200).map_err(anyhow::Error::msg)?;
    let forged = flood(Some(sign("not the secret", &body)), 401).map_err(anyhow::Error::msg)?;
    let forged_rate = forged as f64 / seconds as f64;
    let endpoint_rate = answered as f64 / seconds as f64;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let started = Instant::now();
    let mut macs = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..1000 {
            std::hint::black_box(ring::hmac::sign(&key, std::hint::black_box(&body)));
        }
        macs += 1000;
    }
    let hmac_rate = macs as f64 / started.elapsed().as_secs_f64();

    println!("| measure | p50 | p99 | goal |");
    println!("|---|---|---|---|");
    println!(
        "| delivery → run created → `pending` at GitHub, {deliveries} deliveries | {:.1} ms | {:.1} ms | |",
        percentile(&total, 50.0),
        percentile(&total, 99.0)
    );
    println!(
        "| of which `git fetch` of the change (the coordinator's `fetch_ms`) | {:.1} ms | {:.1} ms | reported apart |",
        percentile(&fetch, 50.0),
        percentile(&fetch, 99.0)
    );
    println!(
        "| beyond the fetch | {:.1} ms | {:.1} ms | p99 ≤ 200 ms |",
        percentile(&beyond, 50.0),
        percentile(&beyond, 99.0)
    );
    println!();
    println!("| on one core, a {}-byte body | deliveries/s |", body.len());
    println!("|---|---|");
    println!(
        "| `POST /hooks/github`: read, signature checked, parsed, recorded as a duplicate{} | {endpoint_rate:.0} |",
        if pinned.status.success() {
            ""
        } else {
            " (taskset failed: not pinned)"
        }
    );
    println!(
        "| `POST /hooks/github` with a forged signature: read, refused (401) | {forged_rate:.0} |"
    );
    println!("| bare HMAC-SHA256 (ring) over the same body | {hmac_rate:.0} |");
    let metrics = polarizer_e2e::http_get(cluster.http, "/metrics");
    for line in metrics
        .lines()
        .filter(|line| line.starts_with("polarizer_github_"))
    {
        eprintln!("{line}");
    }
    Ok(())
}
