//! Benchmark: a run's tests shipped to many agents at once, beside `git clone` of the same repository from a
//! local bare repository by as many clients at once (the floor: git's own transfer, no coordinator, no
//! QUIC); then the incremental transfer for a one-file change. Printed as a Markdown table for
//! BENCHMARKS.md.
//!
//! Run: `cargo build -j 2 --release -p polarizer -p polarizer-agent -p polarizer-bench --bins &&
//! ./target/release/bench-shipping` (`--help` lists the flags).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use polarizer_e2e::{git, git_repo, http_get, noise, wait_for, TestCluster};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn metric(cluster: &TestCluster, name: &str) -> u64 {
    http_get(cluster.http, "/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn size_of(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|entry| size_of(&entry.path())).sum())
        .unwrap_or(0)
}

/// Triggers a run of every test and waits for it; the time from the trigger to the run's end.
fn timed_run(cluster: &TestCluster, repo: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]);
    if !output.status.success() {
        bail!("trigger: {}", String::from_utf8_lossy(&output.stderr));
    }
    let run = serde_json::from_slice::<Value>(&output.stdout)?["run"]
        .as_u64()
        .context("run id")?
        .to_string();
    let mut state = String::new();
    wait_for("the run to finish", Duration::from_secs(600), || {
        let shown = cluster.operator(&["runs", "show", &run, "--json"]);
        state = serde_json::from_slice::<Value>(&shown.stdout)
            .ok()
            .and_then(|shown| shown["state"].as_str().map(str::to_string))
            .unwrap_or_default();
        matches!(state.as_str(), "passed" | "failed" | "error")
    });
    if state != "passed" {
        bail!("run {run} {state}");
    }
    Ok(started.elapsed())
}

/// Tests shipped from the coordinator to agents (BENCHMARKS.md, "Shipping tests to agents").
#[derive(clap::Parser)]
struct Args {
    /// Agents the tree is shipped to at once.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// The size of the test tree.
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
}

fn main() -> anyhow::Result<()> {
    let Args { agents, megabytes } = clap::Parser::parse();
    let work = tempfile::Builder::new()
        .prefix("polarizer-bench-shipping-")
        .tempdir()?;
    let repo = work.path().join("repo");
    let mut fmf = String::new();
    for test in 1..=agents {
        fmf.push_str(&format!(
            "/t{test}:\n  test: test -s data/00.bin\n  duration: 1m\n"
        ));
    }
    std::fs::create_dir_all(repo.join("data"))?;
    for file in 0..megabytes {
        std::fs::write(
            repo.join(format!("data/{file:02}.bin")),
            noise(MIB as usize, 2 * file as u64 + 1),
        )?;
    }
    git_repo(
        &repo,
        &[
            (".fmf/version", "1\n"),
            ("main.fmf", &fmf),
            ("notes.txt", "one\n"),
        ],
    );

    // Packed, as a server's repository is: both sides start from the same pack.
    git(&repo, &["repack", "-a", "-d", "-q"]);
    // The floor: as many `git clone`s at once from a local bare repository over git's pack protocol.
    let bare = work.path().join("bare.git");
    let cloned = Command::new("git")
        .args(["clone", "--quiet", "--bare", "--"])
        .arg(&repo)
        .arg(&bare)
        .status()?;
    if !cloned.success() {
        bail!("git clone --bare failed");
    }
    let pack = size_of(&bare.join("objects"));
    let started = Instant::now();
    let clones: Vec<_> = (0..agents)
        .map(|index| {
            Command::new("git")
                .args(["clone", "--quiet", "--"])
                .arg(format!("file://{}", bare.display()))
                .arg(work.path().join(format!("clone-{index}")))
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut clone in clones {
        if !clone.wait()?.success() {
            bail!("git clone failed");
        }
    }
    let clone_time = started.elapsed();
    eprintln!("{agents} × git clone file://: {clone_time:?}, pack {pack} bytes");

    let cluster = TestCluster::builder().agents(agents).start();
    let first = timed_run(&cluster, &repo)?;
    let first_bytes = metric(&cluster, "polarizer_test_shipped_bytes_total");
    let built = metric(&cluster, "polarizer_test_bundles_built_total");
    eprintln!("polarizer: {first:?}, {first_bytes} bytes shipped, {built} bundles built");

    std::fs::write(repo.join("notes.txt"), "two\n")?;
    git(&repo, &["commit", "--quiet", "-am", "one file changed"]);
    let second = timed_run(&cluster, &repo)?;
    let second_bytes = metric(&cluster, "polarizer_test_shipped_bytes_total") - first_bytes;
    eprintln!("polarizer, one file changed: {second:?}, {second_bytes} bytes shipped");

    println!("| {agents} agents, a {megabytes} MiB repository | time | bytes moved |");
    println!("|---|---|---|");
    println!(
        "| `git clone file://` of the bare repository with checkout, {agents} at once (floor) | {:.2} s | {:.1} MiB × {agents} |",
        clone_time.as_secs_f64(),
        pack as f64 / MIB as f64
    );
    println!(
        "| Polarizer: trigger → run passed, the commit shipped to {agents} agents ({built} bundle built) | {:.2} s | {:.1} MiB in all |",
        first.as_secs_f64(),
        first_bytes as f64 / MIB as f64
    );
    println!(
        "| Polarizer: a one-file change, trigger → run passed | {:.2} s | {} bytes in all ({} per agent) |",
        second.as_secs_f64(),
        second_bytes,
        second_bytes / agents as u64
    );
    Ok(())
}
