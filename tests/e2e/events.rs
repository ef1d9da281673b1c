//! Live events end to end: a private dbus-daemon, watched directories, a dpkg status file, a real RPM
//! database, custom events through `polarizer-agent emit`, all seen through `polarizer tail` and
//! `polarizer replay`; a coordinator killed during a flood; a tail that stops reading.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use polarizer_e2e::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn wait_for_event(
    cluster: &TestCluster,
    filters: &[&str],
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let mut found = Value::Null;
    wait_for(what, DEADLINE, || {
        match cluster
            .stored_events(filters)
            .into_iter()
            .find(|event| matches(event))
        {
            Some(event) => {
                found = event;
                true
            }
            None => false,
        }
    });
    found
}

/// A private bus: `dbus-daemon --session` on a socket in `dir`.
fn dbus_daemon(dir: &Path) -> (Process, String) {
    let socket = dir.join("bus.sock");
    let address = format!("unix:path={}", socket.display());
    let mut command = Command::new("dbus-daemon");
    command
        .args(["--session", "--nofork", "--nopidfile"])
        .arg(format!("--address={address}"));
    let process = Process::spawn("dbus-daemon", command, dir.join("dbus.log"));
    wait_for("the private bus", DEADLINE, || socket.exists());
    (process, address)
}

/// A tiny noarch RPM built with rpmbuild.
fn build_rpm(dir: &Path, name: &str, version: &str) -> PathBuf {
    let top = dir.join("rpmbuild");
    let spec = dir.join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test\nLicense: MIT\nBuildArch: noarch\n\n%description\ntest\n\n%files\n"
        ),
    )
    .unwrap();
    let status = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args(["--quiet", "-bb"])
        .arg(&spec)
        .stdout(Stdio::null())
        .status()
        .expect("rpmbuild (install the rpm package)");
    assert!(status.success());
    top.join(format!("RPMS/noarch/{name}-{version}-1.noarch.rpm"))
}

fn rpm(dbpath: &Path, args: &[&str]) {
    let status = Command::new("rpm")
        .arg("--dbpath")
        .arg(dbpath)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("rpm");
    assert!(status.success(), "rpm {args:?}");
}

/// An agent with only the custom-event collector (and test output): what the flood tests need.
fn start_quiet_agent(cluster: &mut TestCluster, name: &str) {
    cluster.start_agent(
        name,
        &[
            ("--dbus-address", "off"),
            ("--dpkg-status", "off"),
            ("--rpm-dbpath", "off"),
        ],
    );
    wait_for(&format!("{name} online"), DEADLINE, || {
        cluster.online_names().iter().any(|online| online == name)
    });
}

#[test]
fn collectors_record_dbus_files_packages_and_custom_events() {
    let mut cluster = TestCluster::new_coordinator_only();
    let (_bus, bus_address) = dbus_daemon(cluster.dir.path());
    let watched = cluster.path("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let dpkg_status = cluster.path("dpkg-status");
    std::fs::write(
        &dpkg_status,
        "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2\n",
    )
    .unwrap();
    let rpmdb = cluster.path("rpmdb");
    std::fs::create_dir_all(&rpmdb).unwrap();
    rpm(&rpmdb, &["--initdb"]);
    let package = build_rpm(cluster.dir.path(), "polarizer-probe", "1.0");
    let socket = cluster.path("agent-vm-1/emit.sock");
    cluster.start_agent(
        "vm-1",
        &[
            ("--dbus-address", &bus_address),
            ("--watch", watched.to_str().unwrap()),
            ("--dpkg-status", dpkg_status.to_str().unwrap()),
            ("--rpm-dbpath", rpmdb.to_str().unwrap()),
        ],
    );
    wait_for("vm-1 online", DEADLINE, || {
        cluster.online_names() == ["vm-1"]
    });
    wait_for("the event socket", DEADLINE, || socket.exists());

    // Custom events, good and bad.
    let sent = emit(
        &socket,
        &["--kind", "app", "--data", r#"{"state":"registered"}"#],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let app = wait_for_event(&cluster, &["--kind", "app"], "the custom event", |_| true);
    assert_eq!(app["data"]["state"], "registered");
    assert_eq!(app["agent"], "vm-1");
    let bad = emit(&socket, &["--kind", "app", "--data", "{not json"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--data is not JSON"));
    let big = "x".repeat(70_000);
    let too_big = emit(&socket, &["--kind", "app", "--data", &format!("\"{big}\"")]);
    assert_eq!(too_big.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&too_big.stderr).contains("over the limit"),
        "{}",
        String::from_utf8_lossy(&too_big.stderr)
    );

    // A D-Bus signal.
    let status = Command::new("dbus-send")
        .arg(format!("--bus={bus_address}"))
        .args([
            "--type=signal",
            "/com/redhat/RHSM1",
            "com.redhat.RHSM1.Registered",
            "string:consumer-42",
        ])
        .status()
        .expect("dbus-send");
    assert!(status.success());
    let signal = wait_for_event(&cluster, &["--kind", "dbus"], "the D-Bus signal", |event| {
        event["data"]["member"] == "Registered"
    });
    assert_eq!(signal["data"]["interface"], "com.redhat.RHSM1");
    assert_eq!(signal["data"]["path"], "/com/redhat/RHSM1");
    assert!(
        signal["data"]["body"]
            .as_str()
            .unwrap()
            .contains("consumer-42"),
        "{signal}"
    );

    // A file appearing.
    std::fs::write(watched.join("entitlement.pem"), "CERT").unwrap();
    let file = wait_for_event(
        &cluster,
        &["--kind", "file", "--grep", "entitlement"],
        "the file event",
        |event| event["data"]["action"] == "created",
    );
    assert_eq!(file["data"]["size"], 4);

    // dpkg: a package installed.
    let mut text = std::fs::read_to_string(&dpkg_status).unwrap();
    text.push_str("\nPackage: subscription-manager\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.29.40-1\n");
    let replacement = cluster.path("dpkg-status.new");
    std::fs::write(&replacement, text).unwrap();
    std::fs::rename(&replacement, &dpkg_status).unwrap();
    let installed = wait_for_event(
        &cluster,
        &["--kind", "package"],
        "the dpkg install",
        |event| event["data"]["name"] == "subscription-manager",
    );
    assert_eq!(installed["data"]["action"], "installed");

    // RPM: installed, then erased, in a real database.
    rpm(
        &rpmdb,
        &["-i", "--justdb", "--nodeps", package.to_str().unwrap()],
    );
    wait_for_event(
        &cluster,
        &["--kind", "package"],
        "the rpm install",
        |event| {
            event["data"]["name"] == "polarizer-probe" && event["data"]["action"] == "installed"
        },
    );
    rpm(&rpmdb, &["-e", "--justdb", "--nodeps", "polarizer-probe"]);
    let removed = wait_for_event(&cluster, &["--kind", "package"], "the rpm erase", |event| {
        event["data"]["name"] == "polarizer-probe" && event["data"]["action"] == "removed"
    });
    assert_eq!(removed["data"]["arch"], "noarch");
    // Reads of the database never count as changes: exactly one install and one erase.
    let probe_events = cluster.stored_events(&["--kind", "package", "--grep", "polarizer-probe"]);
    assert_eq!(probe_events.len(), 2, "{probe_events:?}");

    // Human output: time, agent, kind, summary; no colour when not on a terminal.
    let human = cluster.operator(&["tail", "--no-follow", "--agent", "vm-1", "--kind", "dbus"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("vm-1")
            && text.contains("dbus")
            && text.contains("com.redhat.RHSM1.Registered"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colour on a pipe: {text:?}");
    // The agent's log names what it could not do, and it keeps running.
    assert!(cluster
        .agent("vm-1")
        .wait_exit(Duration::from_millis(10))
        .is_none());
}

#[test]
fn events_are_correlated_with_the_test_running_and_replayed_with_results() {
    let mut cluster = TestCluster::new_coordinator_only();
    start_quiet_agent(&mut cluster, "vm-1");
    let agent = binary("polarizer-agent");
    let repo = cluster.path("repo");
    let fmf = format!(
        "/emits:\n  test: echo before; {agent} emit --kind app --data '{{\"step\":1}}'; echo after\n/quiet:\n  test: echo quiet\n  after: [/tests/emits]\n",
        agent = agent.display()
    );
    test_repo(&repo, &fmf);
    let triggered = cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--wait"]);
    assert!(
        triggered.status.success(),
        "{}",
        String::from_utf8_lossy(&triggered.stderr)
    );

    let during = cluster.stored_events(&["--run", "1", "--test", "/tests/emits"]);
    let kinds: Vec<&str> = during
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["output", "app", "output", "result"], "{during:?}");
    assert_eq!(during[1]["data"]["step"], 1);

    let replay = cluster.operator(&["replay", "1", "--json"]);
    assert!(replay.status.success());
    let timeline: Vec<Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let order: Vec<String> = timeline
        .iter()
        .map(|event| {
            format!(
                "{} {}",
                event["kind"].as_str().unwrap(),
                event["test"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "output /tests/emits",
            "app /tests/emits",
            "output /tests/emits",
            "result /tests/emits",
            "output /tests/quiet",
            "result /tests/quiet"
        ]
    );
}

/// Writes `count` numbered custom events straight to the agent's socket, reading each `ok`.
fn flood(socket: &Path, from: usize, count: usize) {
    let stream = UnixStream::connect(socket).expect("agent socket");
    let mut writer = stream.try_clone().unwrap();
    let mut replies = BufReader::new(stream);
    let mut line = String::new();
    for index in from..from + count {
        writeln!(writer, r#"{{"kind":"flood","data":{{"n":{index}}}}}"#).unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
        assert_eq!(line, "ok\n");
    }
}

fn flood_numbers(cluster: &TestCluster) -> Vec<u64> {
    cluster
        .stored_events(&["--kind", "flood"])
        .iter()
        .map(|event| event["data"]["n"].as_u64().unwrap())
        .collect()
}

#[test]
fn kill_9_of_the_coordinator_during_a_flood_keeps_every_event_exactly_once() {
    let mut cluster = TestCluster::new_coordinator_only();
    start_quiet_agent(&mut cluster, "vm-1");
    let socket = cluster.path("agent-vm-1/emit.sock");
    wait_for("the event socket", DEADLINE, || socket.exists());
    let total = 20_000;
    let flooding = {
        let socket = socket.clone();
        std::thread::spawn(move || flood(&socket, 0, total))
    };
    wait_for("some events stored", DEADLINE, || {
        !cluster.stored_events(&["--kind", "flood"]).is_empty()
    });
    cluster.coordinator.as_mut().unwrap().kill_9();
    flooding.join().unwrap();
    cluster.start_coordinator(&[]);
    wait_for("every event stored", DEADLINE, || {
        flood_numbers(&cluster).len() >= total
    });
    let mut numbers = flood_numbers(&cluster);
    assert_eq!(numbers.len(), total, "nothing counted twice");
    numbers.sort_unstable();
    assert!(
        numbers
            .iter()
            .enumerate()
            .all(|(index, n)| *n == index as u64),
        "nothing lost"
    );
}

/// `polarizer tail ARGS` following, its output piped to the test.
fn follower(cluster: &TestCluster, args: &[&str]) -> std::process::Child {
    Command::new(binary("polarizer"))
        .arg("tail")
        .args(args)
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .arg("--coordinator")
        .arg(cluster.quic.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start polarizer tail")
}

#[test]
fn a_tail_that_stops_reading_does_not_slow_ingest_or_other_tails() {
    let mut cluster = TestCluster::new_coordinator_only();
    start_quiet_agent(&mut cluster, "vm-1");
    start_quiet_agent(&mut cluster, "vm-2");
    let sockets = [
        cluster.path("agent-vm-1/emit.sock"),
        cluster.path("agent-vm-2/emit.sock"),
    ];
    wait_for("the event sockets", DEADLINE, || {
        sockets.iter().all(|socket| socket.exists())
    });
    // A follower whose output nobody reads: its pipe fills, then its QUIC stream stops.
    let mut stuck = follower(&cluster, &["--kind", "flood"]);
    // A follower that reads everything.
    let mut reading = follower(&cluster, &["--kind", "flood", "--json", "--since", "0"]);
    let reader_out = reading.stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for line in BufReader::new(reader_out).lines() {
            if line.is_err() {
                break;
            }
            seen += 1;
            if seen == 30_000 {
                break;
            }
        }
        let _ = seen_tx.send(seen);
    });
    // Two agents at once: their batches commit interleaved, and a follower that skips the ids it has
    // seen must still see every event (they are published in commit order).
    let floods: Vec<_> = sockets
        .iter()
        .enumerate()
        .map(|(index, socket)| {
            let socket = socket.clone();
            std::thread::spawn(move || flood(&socket, index * 15_000, 15_000))
        })
        .collect();
    for flooding in floods {
        flooding.join().unwrap();
    }
    wait_for("every event stored", DEADLINE, || {
        flood_numbers(&cluster).len() == 30_000
    });
    let seen = seen_rx
        .recv_timeout(DEADLINE)
        .expect("the reading tail to see every event");
    assert_eq!(seen, 30_000, "the reading tail saw every event");
    let _ = stuck.kill();
    let _ = reading.kill();
    let _ = stuck.wait();
    let _ = reading.wait();
}

/// Writes `count` custom events of kind `big`, numbered, each padded to `pad_bytes`, reading each `ok`.
fn emit_big(socket: &Path, count: usize, pad_bytes: usize) {
    let stream = UnixStream::connect(socket).expect("agent socket");
    let mut writer = stream.try_clone().unwrap();
    let mut replies = BufReader::new(stream);
    let pad = "x".repeat(pad_bytes);
    let mut line = String::new();
    for index in 0..count {
        writeln!(
            writer,
            r#"{{"kind":"big","data":{{"n":{index},"pad":"{pad}"}}}}"#
        )
        .unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
        assert_eq!(line, "ok\n");
    }
}

/// The number in the newest stored event of `kind`, if any is stored.
fn newest_number(cluster: &TestCluster, kind: &str) -> Option<u64> {
    let output = cluster.operator(&["tail", "--no-follow", "--json", "--kind", kind, "-n", "1"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .next_back()
        .and_then(|event| event["data"]["n"].as_u64())
}

/// A git repository at `dir` whose fmf tree holds `tests/main.fmf` = `fmf`.
fn test_repo(dir: &Path, fmf: &str) {
    git_repo(dir, &[(".fmf/version", "1\n"), ("tests/main.fmf", fmf)]);
}

#[test]
fn a_backlog_larger_than_a_frame_is_delivered_in_bounded_batches() {
    let mut cluster = TestCluster::new_coordinator_only();
    start_quiet_agent(&mut cluster, "vm-1");
    let socket = cluster.path("agent-vm-1/emit.sock");
    wait_for("the event socket", DEADLINE, || socket.exists());
    // With the coordinator away, 300 events of 60 KiB pile up in the spool: 18 MB, more than the
    // 16 MiB a frame may hold.
    cluster.coordinator.as_mut().unwrap().kill_9();
    let total = 300;
    emit_big(&socket, total, 60 * 1024);
    let coordinator_log = cluster.path("coordinator.log");
    let log_before_restart = read(&coordinator_log).len();
    cluster.start_coordinator(&[]);
    // Records commit in order: the last one stored means all are.
    wait_for("the last big event stored", DEADLINE, || {
        newest_number(&cluster, "big") == Some(total as u64 - 1)
    });
    let stored = cluster.stored_events(&["--kind", "big"]);
    let mut numbers: Vec<u64> = stored
        .iter()
        .map(|event| event["data"]["n"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..total as u64).collect::<Vec<_>>());
    assert!(
        stored
            .iter()
            .all(|event| event["data"]["pad"].as_str().unwrap().len() == 60 * 1024),
        "events of 60 KiB are stored whole"
    );
    // One session carried it all: heartbeats went on between the batches, nothing was refused.
    let since_restart = read(&coordinator_log)[log_before_restart..].to_string();
    assert_eq!(
        since_restart.matches("agent online").count(),
        1,
        "{since_restart}"
    );
    // The agent is not stuck behind its backlog: a test run afterwards reports its result.
    let repo = cluster.path("repo");
    test_repo(&repo, "/after:\n  test: echo after\n");
    let triggered = cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--wait"]);
    assert!(
        triggered.status.success(),
        "{}",
        String::from_utf8_lossy(&triggered.stderr)
    );
    let results = cluster.stored_events(&["--kind", "result"]);
    assert_eq!(
        results.len(),
        1,
        "{:?}",
        cluster.stored_events(&["--run", "1"])
    );
}

#[test]
fn a_damaged_spool_record_is_reported_dropped_and_the_records_after_it_delivered() {
    let mut cluster = TestCluster::new_coordinator_only();
    start_quiet_agent(&mut cluster, "vm-1");
    let socket = cluster.path("agent-vm-1/emit.sock");
    wait_for("the event socket", DEADLINE, || socket.exists());
    cluster.coordinator.as_mut().unwrap().kill_9();
    for index in 0..3 {
        let data = format!(r#"{{"n":{index},"mark":"spooled-record-{index}"}}"#);
        let sent = emit(&socket, &["--kind", "spooled", "--data", &data]);
        assert!(sent.status.success(), "{sent:?}");
    }
    // Once the three are written through, the agent is killed and one byte of the second changes.
    let log = cluster.path("agent-vm-1/spool/spool.log");
    wait_for("the records written through", DEADLINE, || {
        String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
            .contains("spooled-record-2")
    });
    cluster.agent("vm-1").kill_9();
    let mut bytes = std::fs::read(&log).unwrap();
    let mark = b"spooled-record-1";
    let at = bytes
        .windows(mark.len())
        .position(|window| window == mark)
        .expect("the second record in the spool");
    bytes[at] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();

    cluster.start_coordinator(&[]);
    start_quiet_agent(&mut cluster, "vm-1");
    let dropped = wait_for_event(&cluster, &["--kind", "dropped"], "a dropped record", |_| {
        true
    });
    assert!(
        dropped["summary"].as_str().unwrap().contains("damaged"),
        "{dropped}"
    );
    wait_for("the third record stored", DEADLINE, || {
        newest_number(&cluster, "spooled") == Some(2)
    });
    let numbers: Vec<u64> = cluster
        .stored_events(&["--kind", "spooled"])
        .iter()
        .map(|event| event["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        [0, 2],
        "the first and third kept, the damaged second dropped"
    );
}
