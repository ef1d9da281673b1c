//! A full disk: the coordinator's data dir on a small tmpfs that fills during a flood of events. Needs
//! root (mount); skipped with the reason printed otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polarizer_e2e::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const EVENTS: usize = 120;

/// A tmpfs of its own, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .ok()?;
        if !output.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.path.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn flood_events(cluster: &TestCluster) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for event in cluster.stored_events(&["--kind", "flood"]) {
        if let Some(n) = event["data"]["n"].as_u64() {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

/// `count` events of kind `flood`, numbered, each padded to 24 KiB; how many the agent refused.
fn flood(socket: &Path, count: usize) -> usize {
    let pad = "x".repeat(24 * 1024);
    (0..count)
        .filter(|n| {
            let data = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
            !emit(socket, &["--kind", "flood", "--data", &data])
                .status
                .success()
        })
        .count()
}

/// The store cannot commit while the disk is full: nothing is acknowledged, the agent keeps its
/// records, `/healthz` says why; once there is room again every event arrives, once.
#[test]
fn a_full_disk_under_a_flood_loses_nothing_and_healthz_says_why() {
    let mount_dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&mount_dir.path().join("data"), "3m") else {
        return;
    };
    let mut cluster = TestCluster::new_coordinator_only();
    // Move the coordinator's data dir onto the small disk.
    cluster.coordinator.as_mut().unwrap().terminate(DEADLINE);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", cluster.data_dir.display()))
        .arg(&disk.path)
        .status()
        .unwrap();
    assert!(copied.success());
    cluster.data_dir = disk.path.clone();
    cluster.start_coordinator(&[]);
    cluster.start_agent(
        "vm-1",
        &[
            ("--dbus-address", "off"),
            ("--dpkg-status", "off"),
            ("--rpm-dbpath", "off"),
        ],
    );
    wait_for("vm-1 online", DEADLINE, || {
        cluster.agent_state("vm-1").as_deref() == Some("online")
    });
    assert!(http_get(cluster.http, "/healthz").starts_with("HTTP/1.1 200"));

    let socket = cluster.path("agent-vm-1/emit.sock");
    assert_eq!(flood(&socket, EVENTS), 0, "the agent takes every event");

    // A small commit may still fit now and then (and say healthy until the next fails): each is
    // looked for on its own.
    let mut health = String::new();
    wait_for("/healthz to report the full disk", DEADLINE, || {
        health = http_get(cluster.http, "/healthz");
        health.starts_with("HTTP/1.1 503")
    });
    wait_for("/metrics to report it too", DEADLINE, || {
        http_get(cluster.http, "/metrics").contains("polarizer_store_healthy 0")
    });
    assert!(health.contains("full"), "{health}");
    let stored = flood_events(&cluster).len();
    assert!(stored < EVENTS, "the disk filled before all were stored");
    assert!(
        cluster.agent("vm-1").wait_exit(Duration::ZERO).is_none(),
        "the agent keeps its records and runs on"
    );

    disk.grow("64m");
    let mut seen = BTreeMap::new();
    wait_for("every event stored once there is room", DEADLINE, || {
        seen = flood_events(&cluster);
        seen.len() == EVENTS
    });
    assert!(
        seen.values().all(|&count| count == 1),
        "each stored once: {seen:?}"
    );
    wait_for("/healthz ok again", DEADLINE, || {
        http_get(cluster.http, "/healthz").starts_with("HTTP/1.1 200")
    });
    eprintln!("stored {stored} of {EVENTS} while the disk was full, all after it grew");
}

/// The agent's spool on a full disk: what cannot be written is counted and reported as dropped once it
/// can be, the agent runs on, and when there is room again events and results flow as before.
#[test]
fn an_agent_whose_spool_disk_fills_runs_on_and_reports_what_it_dropped() {
    let mount_dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&mount_dir.path().join("agent"), "1m") else {
        return;
    };
    let mut cluster = TestCluster::new_coordinator_only();
    let state_dir = disk.path.to_str().unwrap().to_string();
    cluster.start_agent(
        "vm-1",
        &[
            ("--state-dir", state_dir.as_str()),
            ("--dbus-address", "off"),
            ("--dpkg-status", "off"),
            ("--rpm-dbpath", "off"),
        ],
    );
    wait_for("vm-1 online", DEADLINE, || {
        cluster.agent_state("vm-1").as_deref() == Some("online")
    });
    // With the coordinator away, everything stays in the spool, which fills its 1 MiB disk.
    cluster.coordinator.as_mut().unwrap().kill_9();
    let socket = disk.path.join("emit.sock");
    // More than the agent holds in memory (4 MiB), so some records are on neither disk nor in memory.
    let flood_size = 200;
    let refused = flood(&socket, flood_size) as u64;
    assert!(
        cluster.agent("vm-1").wait_exit(Duration::ZERO).is_none(),
        "the agent runs on"
    );
    disk.grow("64m");
    cluster.start_coordinator(&[]);
    let after = emit(&socket, &["--kind", "after", "--data", r#"{"n":1}"#]);
    assert!(after.status.success());
    wait_for("the event sent after the disk grew", DEADLINE, || {
        !cluster.stored_events(&["--kind", "after"]).is_empty()
    });
    let stored = flood_events(&cluster);
    assert!(
        stored.values().all(|&count| count == 1),
        "each stored once: {stored:?}"
    );
    // Counted by kind where the agent still knew it, else as records.
    let dropped: u64 = cluster
        .stored_events(&["--kind", "dropped"])
        .iter()
        .filter_map(|event| event["data"]["dropped"].as_object())
        .flat_map(|counts| counts.values().filter_map(Value::as_u64))
        .sum();
    eprintln!(
        "{} flood events stored, {dropped} reported dropped",
        stored.len()
    );
    assert_eq!(
        stored.len() as u64 + dropped + refused,
        flood_size as u64,
        "every event is either stored or counted as dropped"
    );
}
