//! The coordinator ships a run's tests to its agents over their own connection: a repository that is a
//! path on the coordinator's host runs on an agent that can reach neither it nor any git server; a
//! transfer cut by a coordinator restart resumes, a chunk damaged on the agent's disk is fetched again;
//! a child commit ships a thin bundle; an agent without git gets a tar; a bundle over the limit ends the
//! run with an error that says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polarizer_e2e::*;
use serde_json::Value;

use crate::netns::Link;

const DEADLINE: Duration = Duration::from_secs(120);
const CHUNK: u64 = 1024 * 1024;

/// A repository of one test that checks the shipped tree holds `data.txt` saying `marker`, beside `noise`
/// bytes of incompressible data.
fn repo_with(root: &Path, marker: &str, noise_bytes: usize) -> PathBuf {
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join("tests/blob.bin"), noise(noise_bytes, 7)).unwrap();
    git_repo(
        root,
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "/shipped:\n  test: grep -qx -- \"$(cat expected.txt)\" data.txt && test -s blob.bin\n",
            ),
            ("tests/data.txt", &format!("{marker}\n")),
            ("tests/expected.txt", &format!("{marker}\n")),
        ],
    )
}

/// A Prometheus counter of the coordinator's `/metrics`.
fn metric(cluster: &TestCluster, name: &str) -> u64 {
    let text = http_get(cluster.http, "/metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

fn trigger(cluster: &TestCluster, repo: &Path) -> String {
    ok_json(cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]))["run"]
        .as_u64()
        .expect("a run id")
        .to_string()
}

/// Waits until the run is finished and returns `runs show --json`.
fn finished(cluster: &TestCluster, run: &str) -> Value {
    let mut shown = Value::Null;
    wait_for(&format!("run {run} to finish"), DEADLINE, || {
        let output = cluster.operator(&["runs", "show", run, "--json"]);
        shown = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        matches!(shown["state"].as_str(), Some("passed" | "failed" | "error"))
    });
    shown
}

/// The tests' repository is a directory on the coordinator's host. The agent runs in a network namespace
/// whose only link leads to the coordinator, with that directory hidden from it (an empty tmpfs mounted
/// over it in its own mount namespace): it can reach neither the files nor any git server, and the
/// run passes on what the coordinator shipped.
#[test]
fn a_local_path_repository_runs_on_an_agent_that_cannot_reach_it() {
    let Some(link) = Link::new() else {
        return;
    };
    let cluster = TestCluster::new_coordinator_only_on(link.host_ip.into(), &[]);
    let upstream = cluster.path("upstream");
    let repo = repo_with(&upstream.join("tests-repo"), "shipped over QUIC", 64 * 1024);
    let run = trigger(&cluster, &repo);

    let gossip = SocketAddr::new(link.agent_ip.into(), free_udp_addr().port());
    let agent = with_args(
        cluster.agent_command("airgapped"),
        &[("--gossip", gossip.to_string().as_str())],
    );
    let mut hidden = Command::new("ip");
    hidden
        .args(["netns", "exec", &link.netns, "sh", "-c"])
        .arg("mount -t tmpfs -o size=1m polarizer-hidden \"$1\" && shift && exec \"$@\"");
    hidden
        .arg("sh")
        .arg(&upstream)
        .arg(agent.get_program())
        .args(agent.get_args());
    let _agent = Process::spawn("airgapped", hidden, cluster.path("agent-airgapped.log"));

    let shown = finished(&cluster, &run);
    assert_eq!(shown["state"], "passed", "{shown:#}");
    assert_eq!(
        tests_by_name(&shown)["/tests/shipped"]["agent"],
        "airgapped"
    );
    assert!(metric(&cluster, "polarizer_test_shipped_bytes_total") > 64 * 1024);
}

/// A coordinator killed mid-transfer comes back; the agent, still running, resumes from the chunks it
/// holds. One of them was damaged on its disk meanwhile: it is refused and sent again, with every chunk
/// after it, and nothing before it. The rate limit keeps the transfer slow enough to cut.
#[test]
fn a_transfer_cut_by_a_coordinator_restart_resumes_and_a_damaged_chunk_is_sent_again() {
    let mut cluster = TestCluster::new_coordinator_only_with(&["--ship-rate-kb-per-s", "1024"]);
    cluster.start_agent("resumer", &[]);
    wait_for("the agent online", DEADLINE, || {
        cluster.agent_state("resumer").as_deref() == Some("online")
    });
    let repo = repo_with(&cluster.path("repo"), "resumed", 6 * CHUNK as usize);
    let run = trigger(&cluster, &repo);

    let incoming = cluster.path("agent-resumer/repos/incoming");
    let partial = || -> Option<(PathBuf, u64)> {
        let entry = std::fs::read_dir(&incoming).ok()?.flatten().find(|entry| {
            entry
                .path()
                .extension()
                .is_some_and(|extension| extension == "part")
        })?;
        Some((entry.path(), entry.metadata().ok()?.len()))
    };
    wait_for("three chunks received", DEADLINE, || {
        partial().is_some_and(|(_, len)| len >= 3 * CHUNK)
    });
    cluster.coordinator.as_mut().unwrap().kill_9();
    let (part, held) = partial().unwrap();
    assert!(held < 7 * CHUNK, "the transfer finished before the cut");

    // A bit flipped in the second chunk on the agent's disk.
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[CHUNK as usize + 100] ^= 0x40;
    std::fs::write(&part, &bytes).unwrap();

    cluster.start_coordinator(&[]);
    let shown = finished(&cluster, &run);
    assert_eq!(shown["state"], "passed", "{shown:#}");
    let test = &tests_by_name(&shown)["/tests/shipped"];
    assert_eq!(test["attempt"], 1, "{test:#}");

    let bundle = std::fs::read_dir(cluster.data_dir.join("shipping"))
        .unwrap()
        .flatten()
        .find(|entry| {
            entry
                .path()
                .extension()
                .is_some_and(|extension| extension == "bundle")
        })
        .expect("the coordinator keeps the bundle")
        .metadata()
        .unwrap()
        .len();
    // The restarted coordinator sent everything from the damaged chunk on, once, and nothing before it.
    assert_eq!(
        metric(&cluster, "polarizer_test_shipped_bytes_total"),
        bundle - CHUNK,
        "bundle of {bundle} bytes"
    );
    assert_eq!(metric(&cluster, "polarizer_test_transfers_total"), 1);
}

/// A second run at a child commit (one small file changed) ships a bundle thin against the commit the
/// agent already holds: under a tenth of the first. The test checks it runs the child's tree.
#[test]
fn a_suite_at_a_child_commit_ships_under_a_tenth_of_the_first() {
    let cluster = TestCluster::builder().agents(1).start();
    let repo = repo_with(&cluster.path("repo"), "first", 2 * CHUNK as usize);
    let first_run = trigger(&cluster, &repo);
    assert_eq!(finished(&cluster, &first_run)["state"], "passed");
    let first = metric(&cluster, "polarizer_test_shipped_bytes_total");
    assert!(first > 2 * CHUNK, "{first}");

    std::fs::write(repo.join("tests/data.txt"), "second\n").unwrap();
    std::fs::write(repo.join("tests/expected.txt"), "second\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "a small change"]);
    let second_run = trigger(&cluster, &repo);
    let shown = finished(&cluster, &second_run);
    assert_eq!(shown["state"], "passed", "{shown:#}");
    let second = metric(&cluster, "polarizer_test_shipped_bytes_total") - first;
    eprintln!("first run shipped {first} bytes, the child commit {second}");
    assert!(second > 0 && second * 10 < first, "{second} of {first}");
}

/// A PATH with every command of this host but git.
fn path_without_git(root: &Path) -> PathBuf {
    let bin = root.join("bin-without-git");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("git") || bin.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), bin.join(&name));
        }
    }
    bin
}

/// An agent without git gets the tree as a tar; a bundle over `--ship-max-mb` ends the run with an error
/// that names the limit.
#[test]
fn an_agent_without_git_gets_a_tar_and_an_oversize_bundle_is_refused_by_name() {
    let cluster = TestCluster::new_coordinator_only_with(&["--ship-max-mb", "1"]);
    let bin = path_without_git(&cluster.path(""));
    let mut agent = cluster.agent_command("no-git");
    agent.env("PATH", &bin);
    let _agent = Process::spawn("no-git", agent, cluster.path("agent-no-git.log"));
    wait_for("the agent online", DEADLINE, || {
        cluster.agent_state("no-git").as_deref() == Some("online")
    });

    let small = repo_with(&cluster.path("small"), "from a tar", 16 * 1024);
    let run = trigger(&cluster, &small);
    let shown = finished(&cluster, &run);
    assert_eq!(shown["state"], "passed", "{shown:#}");
    assert!(
        read(&cluster.path("agent-no-git.log")).contains("as a tar"),
        "the agent says how it got the tests"
    );

    let large = repo_with(&cluster.path("large"), "too large", 2 * CHUNK as usize);
    let run = trigger(&cluster, &large);
    let shown = finished(&cluster, &run);
    assert_eq!(shown["state"], "error", "{shown:#}");
    let text = shown.to_string();
    assert!(
        text.contains("over the limit of 1 MiB (ship_max_mb)"),
        "{shown:#}"
    );
}

/// `fetch_tests_directly`: an agent that can reach the repository's URL fetches the commit itself and
/// nothing is shipped; without it (the default), the same URL is shipped.
#[test]
fn an_agent_allowed_to_fetch_directly_takes_the_tests_from_the_url() {
    let mut cluster = TestCluster::new_coordinator_only();
    cluster.start_agent("direct", &[("--fetch-tests-directly", "true")]);
    wait_for("the agent online", DEADLINE, || {
        cluster.agent_state("direct").as_deref() == Some("online")
    });
    let repo = repo_with(&cluster.path("repo"), "fetched directly", 64 * 1024);
    let url = format!("file://{}", repo.display());
    let run = ok_json(cluster.operator(&["trigger", "--repo", &url, "--json"]))["run"]
        .as_u64()
        .unwrap()
        .to_string();
    let shown = finished(&cluster, &run);
    assert_eq!(shown["state"], "passed", "{shown:#}");
    assert_eq!(metric(&cluster, "polarizer_test_shipped_bytes_total"), 0);
    assert_eq!(metric(&cluster, "polarizer_test_transfers_total"), 0);
}

/// A chunk of the coordinator's bundle damaged on its disk during a transfer is never sent: the
/// coordinator checks each chunk against its digest as it reads it, drops the file, builds it again, and
/// the agent, asking again, gets a sound one.
#[test]
fn a_chunk_damaged_on_the_coordinators_disk_is_never_sent_and_the_file_is_built_again() {
    use std::io::{Seek, Write};
    let mut cluster = TestCluster::new_coordinator_only_with(&["--ship-rate-kb-per-s", "1024"]);
    cluster.start_agent("receiver", &[]);
    wait_for("the agent online", DEADLINE, || {
        cluster.agent_state("receiver").as_deref() == Some("online")
    });
    let repo = repo_with(&cluster.path("repo"), "built again", 6 * CHUNK as usize);
    let run = trigger(&cluster, &repo);

    let shipping = cluster.data_dir.join("shipping");
    let bundle = || {
        std::fs::read_dir(&shipping)
            .ok()?
            .flatten()
            .find_map(|entry| {
                let path = entry.path();
                (path.extension()? == "bundle").then_some(path)
            })
    };
    let incoming = cluster.path("agent-receiver/repos/incoming");
    wait_for("the first chunk received", DEADLINE, || {
        std::fs::read_dir(&incoming)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                entry
                    .metadata()
                    .is_ok_and(|metadata| metadata.len() >= CHUNK)
            })
    });
    let path = bundle().expect("the bundle being sent");
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(std::io::SeekFrom::Start(5 * CHUNK + 10)).unwrap();
    file.write_all(b"damage").unwrap();
    drop(file);

    let shown = finished(&cluster, &run);
    assert_eq!(shown["state"], "passed", "{shown:#}");
    let log = read(&cluster.path("coordinator.log"));
    assert!(
        log.contains("the tests' file is damaged on disk; building it again"),
        "{log}"
    );
    let rebuilt = std::fs::read(bundle().expect("the bundle built again")).unwrap();
    assert_ne!(&rebuilt[5 * CHUNK as usize + 10..][..6], b"damage");
}
