//! Benchmark: platforms made on demand by a podman pool (issue 20). The time from a suite queued to its
//! first test running on a fresh container, cold (`min_ready = 0`: the container is made for the suite)
//! and warm (`min_ready = 1`: one is waiting), beside `podman run --rm` of the same image doing nothing
//! (the floor); then platforms created and destroyed per minute by a pool of 4, beside 4 parallel loops
//! of `podman run -d` + `podman rm -f` (the floor). Printed as a Markdown table for BENCHMARKS.md.
//!
//! Run: `cargo build -j 2 --release -p polarizer -p polarizer-agent -p polarizer-bench --bins &&
//! ./target/release/bench-pools` (`--help` lists the flags). Root only: where podman cannot run
//! containers it says why and exits 0.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use polarizer_e2e::{
    git_repo, http_get, ok_json, percentile, podman, unix_ms, wait_for, TestCluster,
};
use serde_json::Value;

const MAX: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(300);

/// A coordinator with one podman pool of `image` and no agents.
fn pool_cluster(
    config_dir: &Path,
    pool: &str,
    image: &str,
    min_ready: u32,
    containers_conf: &(&str, std::path::PathBuf),
) -> TestCluster {
    let config = config_dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[[pools]]\nname = \"{pool}\"\nprovisioner = \"podman\"\nimage = \"{image}\"\nmax = {MAX}\nmin_ready = {min_ready}\nreuse = \"never\"\nlabels = {{ distro = \"debian-12\" }}\nboot_timeout = \"2m\"\n"
        ),
    )
    .expect("write coordinator.toml");
    polarizer_e2e::coordinator_with_config_env(
        &config,
        &[],
        vec![(containers_conf.0.to_string(), containers_conf.1.clone())],
    )
}

fn platforms(cluster: &TestCluster) -> Vec<Value> {
    ok_json(cluster.operator(&["platforms", "--json"]))["platforms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn trigger(cluster: &TestCluster, repo: &Path) -> anyhow::Result<String> {
    let output = cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]);
    if !output.status.success() {
        bail!("trigger: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice::<Value>(&output.stdout)?["run"]
        .as_u64()
        .context("run id")?
        .to_string())
}

/// Waits for `run` to pass; its `runs show --json`.
fn finished(cluster: &TestCluster, run: &str) -> anyhow::Result<Value> {
    let mut shown = Value::Null;
    wait_for(&format!("run {run} to finish"), DEADLINE, || {
        shown = ok_json(cluster.operator(&["runs", "show", run, "--json"]));
        !matches!(shown["state"].as_str(), Some("queued" | "running"))
    });
    if shown["state"] != "passed" {
        bail!("run {run} ended {}: {shown:#}", shown["state"]);
    }
    Ok(shown)
}

/// Queued → assigned and queued → first test running, in ms, for one run of one one-test suite, from the
/// times Polarizer stores: the run's `created` (coordinator), the suite's `started` (assigned to the
/// platform's agent), the test's `started` (the agent, when the test process started; same kernel clock).
fn one_suite(cluster: &TestCluster, repo: &Path) -> anyhow::Result<(f64, f64)> {
    let run = trigger(cluster, repo)?;
    let shown = finished(cluster, &run)?;
    let created = unix_ms(&shown["created"])?;
    let assigned = unix_ms(&shown["suites"][0]["started"])?;
    let test_started = unix_ms(&shown["tests"][0]["started"])?;
    Ok(((assigned - created) as f64, (test_started - created) as f64))
}

/// Latencies of `count` runs one after another (plus one warm-up, not counted: the first trigger builds
/// the commit's bundle). Before each trigger `settled` must hold for the pool's platforms.
fn latencies(
    cluster: &TestCluster,
    repo: &Path,
    count: usize,
    settled: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut assigned, mut first_test) = (Vec::new(), Vec::new());
    for index in 0..=count {
        wait_for("the pool to settle", DEADLINE, || {
            settled(&platforms(cluster))
        });
        let (to_assigned, to_test) = one_suite(cluster, repo)?;
        if index > 0 {
            assigned.push(to_assigned);
            first_test.push(to_test);
        }
    }
    Ok((assigned, first_test))
}

fn podman_ok(args: &[&str]) -> anyhow::Result<()> {
    let output = podman::podman()
        .context("podman became unusable")?
        .args(args)
        .stdout(Stdio::null())
        .output()?;
    if !output.status.success() {
        bail!(
            "podman {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The containers of a pool, removed when dropped (declared before the pool's coordinator, so after it
/// stops): the warm platform it keeps, one it was destroying, any a failed bench left.
struct RemovedAfter(String);

impl Drop for RemovedAfter {
    fn drop(&mut self) {
        let Some(mut podman) = podman::podman() else {
            return;
        };
        let Ok(output) = podman
            .args(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("label=polarizer.pool={}", self.0))
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Err(err) = podman_ok(&["rm", "--force", "--ignore", "--time", "0", id]) {
                eprintln!("bench-pools: {err:#}");
            }
        }
    }
}

fn metric(cluster: &TestCluster, name: &str) -> u64 {
    http_get(cluster.http, "/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Platforms on demand: podman containers made, used and removed (BENCHMARKS.md, "Platforms on demand").
#[derive(clap::Parser)]
struct Args {
    /// Suites run on platforms made for them.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    suites: u32,
    /// Platforms made and removed one after another for the leak check.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    churn: u32,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (suites, churn) = (args.suites as usize, args.churn as usize);
    let Some(containers_conf) = podman::containers_conf() else {
        eprintln!("bench-pools: nothing measured");
        return Ok(());
    };
    let Some(image) = podman::test_image() else {
        eprintln!("bench-pools: nothing measured");
        return Ok(());
    };
    let tag = std::process::id();

    // The floor for latency: a container of the same image, run with the provisioner's --init and host
    // network, doing nothing, removed after.
    let mut floor = Vec::new();
    for _ in 0..=suites {
        let started = Instant::now();
        podman_ok(&["run", "--rm", "--init", "--network=host", &image, "true"])?;
        floor.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    floor.remove(0);
    eprintln!("podman run --rm: p50 {:.0} ms", percentile(&floor, 50.0));

    let work = tempfile::Builder::new()
        .prefix("polarizer-bench-pools-")
        .tempdir()?;
    let one_test = git_repo(
        &work.path().join("one"),
        &[
            (".fmf/version", "1\n"),
            ("main.fmf", "/t:\n  test: \"true\"\n  duration: 1m\n"),
        ],
    );

    // Cold: nothing waits; each suite's container is made for it, and the last one is gone first.
    let cold_pool = format!("cold{tag}");
    let cold_removed = RemovedAfter(cold_pool.clone());
    let cold_cluster = pool_cluster(work.path(), &cold_pool, &image, 0, &containers_conf);
    let (cold_assigned, cold) =
        latencies(&cold_cluster, &one_test, suites, |listed| listed.is_empty())?;
    drop(cold_cluster);
    drop(cold_removed);
    eprintln!("cold: p50 {:.0} ms", percentile(&cold, 50.0));

    // Warm: one ready container waits (the one the last suite used is gone).
    let warm_dir = work.path().join("warm");
    std::fs::create_dir_all(&warm_dir)?;
    let warm_pool = format!("warm{tag}");
    let warm_removed = RemovedAfter(warm_pool.clone());
    let warm_cluster = pool_cluster(&warm_dir, &warm_pool, &image, 1, &containers_conf);
    let (warm_assigned, warm) = latencies(&warm_cluster, &one_test, suites, |listed| {
        listed.len() == 1 && listed[0]["state"] == "ready"
    })?;
    drop(warm_cluster);
    drop(warm_removed);
    eprintln!("warm: p50 {:.0} ms", percentile(&warm, 50.0));

    // Churn: `churn` suites (serial pairs of `true`, one suite each) through a pool of MAX, from the
    // trigger to the last platform destroyed.
    let mut fmf = String::from("duration: 1m\n");
    for suite in 0..churn {
        for half in ["a", "b"] {
            fmf.push_str(&format!(
                "/s{suite}{half}:\n  test: \"true\"\n  extra-polarizer-resources:\n    modifies: [r{suite}]\n"
            ));
        }
    }
    let pairs = git_repo(
        &work.path().join("pairs"),
        &[(".fmf/version", "1\n"), ("main.fmf", &fmf)],
    );
    let churn_dir = work.path().join("churn");
    std::fs::create_dir_all(&churn_dir)?;
    let churn_pool = format!("churn{tag}");
    let churn_removed = RemovedAfter(churn_pool.clone());
    let churn_cluster = pool_cluster(&churn_dir, &churn_pool, &image, 0, &containers_conf);
    let started = Instant::now();
    let run = trigger(&churn_cluster, &pairs)?;
    wait_for("every platform to be destroyed", DEADLINE, || {
        metric(&churn_cluster, "polarizer_platforms_destroyed_total") >= churn as u64
    });
    let churn_time = started.elapsed();
    let shown = finished(&churn_cluster, &run)?;
    let made = shown["suites"]
        .as_array()
        .map(|suites| {
            suites
                .iter()
                .filter_map(|suite| suite["agent"].as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .unwrap_or(0);
    if made != churn {
        bail!("expected {churn} suites on {churn} platforms, saw {made}: {shown:#}");
    }
    let created = metric(&churn_cluster, "polarizer_platforms_created_total");
    drop(churn_cluster);
    drop(churn_removed);
    let per_minute = churn as f64 / churn_time.as_secs_f64() * 60.0;
    eprintln!("churn: {churn} platforms ({created} created) in {churn_time:?}");

    // The floor for churn: MAX loops of `podman run -d` + `podman rm -f --time 5` (as the provisioner
    // removes), `churn` containers in all.
    let floor_started = Instant::now();
    let loops: Vec<_> = (0..MAX as usize)
        .map(|lane| {
            let image = image.clone();
            let count = churn / MAX as usize + usize::from(lane < churn % MAX as usize);
            std::thread::spawn(move || -> anyhow::Result<()> {
                for index in 0..count {
                    let name = format!("bench-pools-{tag}-{lane}-{index}");
                    podman_ok(&[
                        "run",
                        "--detach",
                        "--init",
                        "--network=host",
                        "--name",
                        &name,
                        &image,
                        "sleep",
                        "infinity",
                    ])?;
                    podman_ok(&["rm", "--force", "--time", "5", &name])?;
                }
                Ok(())
            })
        })
        .collect();
    for lane in loops {
        lane.join().expect("a podman loop panicked")?;
    }
    let floor_churn_time = floor_started.elapsed();
    let floor_per_minute = churn as f64 / floor_churn_time.as_secs_f64() * 60.0;

    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    let ms = |samples: &[f64]| {
        format!(
            "{:.0} ms / {:.0} ms",
            percentile(samples, 50.0),
            percentile(samples, 99.0)
        )
    };
    println!("| podman pool, {cores} cores | p50 / p99 ({suites} suites) | floor: `podman run --rm --init IMAGE true` |");
    println!("|---|---|---|");
    println!(
        "| suite queued → first test running, cold (`min_ready = 0`) | {} (queued → assigned {}) | {} |",
        ms(&cold),
        ms(&cold_assigned),
        ms(&floor)
    );
    println!(
        "| suite queued → first test running, warm (`min_ready = 1`) | {} (queued → assigned {}) | {} |",
        ms(&warm),
        ms(&warm_assigned),
        ms(&floor)
    );
    println!();
    println!("| churn, max {MAX} | platforms created and destroyed per minute | floor: {MAX} loops of `podman run -d` + `podman rm -f` |");
    println!("|---|---|---|");
    println!(
        "| {churn} suites (pairs of `true`), trigger → last platform destroyed | {per_minute:.0}/min ({:.1} s) | {floor_per_minute:.0}/min ({:.1} s) |",
        churn_time.as_secs_f64(),
        floor_churn_time.as_secs_f64()
    );
    Ok(())
}
