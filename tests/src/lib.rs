//! `TestCluster`: boots a real coordinator and real agents (the built binaries) on loopback, each in its
//! own temp dir with fresh certificates, and keeps their logs when a test fails.
pub mod fake_github;
pub mod fake_polarion;
pub mod generate;
pub mod pki;
pub mod podman;
pub mod rabbitmq;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `condition` until it holds or `timeout` passes; panics naming `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `wait_for`, returning how long it took (for benchmarks).
pub fn time_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(start.elapsed())
}

/// The directory holding the built `polarizer` and `polarizer-agent` binaries (next to the test binary).
pub fn binary(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("current exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Runs git in `directory` as a fixed author; its stdout, trimmed. Fails the test with git's complaint.
pub fn git(directory: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(directory)
        .args([
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@example.invalid",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A git repository at `root` with `files` (path, text) written and committed on `main`.
pub fn git_repo(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a directory")).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(root, &["init", "--quiet", "--initial-branch", "main"]);
    git(root, &["add", "."]);
    git(root, &["commit", "--quiet", "-m", "tests"]);
    root.to_path_buf()
}

/// A command's stdout as JSON; fails the test with its output when it failed.
pub fn ok_json(output: Output) -> Value {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// A run's tests (`runs show --json`) by name.
pub fn tests_by_name(run: &Value) -> std::collections::BTreeMap<String, Value> {
    run["tests"]
        .as_array()
        .expect("a run's tests")
        .iter()
        .map(|test| {
            (
                test["name"].as_str().unwrap_or_default().to_string(),
                test.clone(),
            )
        })
        .collect()
}

/// `polarizer-agent emit ARGS --socket SOCKET`: one custom event into an agent.
pub fn emit(socket: &Path, args: &[&str]) -> Output {
    Command::new(binary("polarizer-agent"))
        .arg("emit")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run polarizer-agent emit")
}

/// `GET path` over plain HTTP/1.1: the whole response, status line and headers included.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("free udp port")
}

pub fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free tcp port")
}

/// A child process that is killed when dropped, with its output in a log file.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Process {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        command.stdin(Stdio::null()).stdout(out).stderr(err).env(
            "POLARIZER_LOG",
            "info,polarizer=debug,polarizer_agent=debug",
        );
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill_9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_9();
    }
}

pub struct TestClusterBuilder {
    agents: usize,
}

impl TestClusterBuilder {
    pub fn agents(mut self, agents: usize) -> Self {
        self.agents = agents;
        self
    }

    /// Starts the coordinator, waits until it answers, then starts the agents and waits until all are online.
    pub fn start(self) -> TestCluster {
        let mut cluster = TestCluster::new_coordinator_only();
        for index in 1..=self.agents {
            cluster.start_agent(&format!("vm-{index}"), &[]);
        }
        let expected = self.agents;
        wait_for(
            &format!("{expected} agents online"),
            Duration::from_secs(30),
            || cluster.online_names().len() == expected,
        );
        cluster
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub gossip: SocketAddr,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub coordinator: Option<Process>,
    pub agents: Vec<(String, Process)>,
    restarts: usize,
    serve_flags: Vec<String>,
    /// Set in the coordinator's environment at each start (e.g. `CONTAINERS_CONF` for its podman).
    pub coordinator_env: Vec<(String, PathBuf)>,
    /// Where the coordinator's gossip and QUIC listen when not on the addresses above (0.0.0.0: hosts
    /// in other network namespaces reach it at its advertised address, operators still on loopback).
    listen_ip: Option<std::net::IpAddr>,
}

/// Rebuilds `command` with each `(flag, value)` replacing that flag's value, or appended when absent.
pub fn with_args(command: Command, overrides: &[(&str, &str)]) -> Command {
    let mut args: Vec<String> = command
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    for (flag, value) in overrides {
        match args.iter().position(|arg| arg == flag) {
            Some(index) if value.is_empty() => {
                args.drain(index..index + 2);
            }
            Some(index) => args[index + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    let mut rebuilt = Command::new(command.get_program());
    rebuilt.args(args);
    rebuilt
}

impl TestCluster {
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder { agents: 0 }
    }

    pub fn new_coordinator_only() -> TestCluster {
        Self::new_coordinator_only_with(&[
            "--gossip-interval-ms",
            "100",
            "--heartbeat-interval-ms",
            "200",
        ])
    }

    /// A coordinator with these extra `serve` flags (none: the production defaults).
    pub fn new_coordinator_only_with(serve_flags: &[&str]) -> TestCluster {
        Self::new_coordinator_only_on(std::net::Ipv4Addr::LOCALHOST.into(), serve_flags)
    }

    /// A coordinator with these extra `serve` flags and these variables in its environment.
    pub fn new_coordinator_only_with_env(
        serve_flags: &[&str],
        env: Vec<(String, PathBuf)>,
    ) -> TestCluster {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), serve_flags, env)
    }

    /// A coordinator whose gossip and QUIC listen on `ip` (the host end of a veth pair, say), so agents
    /// in other network namespaces reach it; operators reach it there too.
    pub fn new_coordinator_only_on(ip: std::net::IpAddr, serve_flags: &[&str]) -> TestCluster {
        Self::start_on(ip, serve_flags, Vec::new())
    }

    /// A coordinator whose gossip and QUIC listen on 0.0.0.0, so it advertises its outbound IP (or the
    /// `--advertise` among `serve_flags`) to agents elsewhere; operators reach it on loopback.
    pub fn new_coordinator_only_on_every_address(
        serve_flags: &[&str],
        env: Vec<(String, PathBuf)>,
    ) -> TestCluster {
        Self::start_listening(
            std::net::Ipv4Addr::LOCALHOST.into(),
            Some(std::net::Ipv4Addr::UNSPECIFIED.into()),
            serve_flags,
            env,
        )
    }

    fn start_on(
        ip: std::net::IpAddr,
        serve_flags: &[&str],
        coordinator_env: Vec<(String, PathBuf)>,
    ) -> TestCluster {
        Self::start_listening(ip, None, serve_flags, coordinator_env)
    }

    fn start_listening(
        ip: std::net::IpAddr,
        listen_ip: Option<std::net::IpAddr>,
        serve_flags: &[&str],
        coordinator_env: Vec<(String, PathBuf)>,
    ) -> TestCluster {
        let on = |addr: SocketAddr| SocketAddr::new(ip, addr.port());
        let dir = tempfile::Builder::new()
            .prefix("polarizer-e2e-")
            .tempdir()
            .expect("temp dir");
        let data_dir = dir.path().join("coordinator");
        let mut cluster = TestCluster {
            data_dir,
            gossip: on(free_udp_addr()),
            quic: on(free_udp_addr()),
            http: free_tcp_addr(),
            coordinator: None,
            agents: Vec::new(),
            restarts: 0,
            dir,
            serve_flags: serve_flags.iter().map(|flag| flag.to_string()).collect(),
            coordinator_env,
            listen_ip,
        };
        cluster.start_coordinator(&[]);
        cluster
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn start_coordinator(&mut self, extra: &[&str]) {
        let listen = |addr: SocketAddr| match self.listen_ip {
            Some(ip) => SocketAddr::new(ip, addr.port()),
            None => addr,
        };
        let mut command = Command::new(binary("polarizer"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--gossip")
            .arg(listen(self.gossip).to_string())
            .arg("--quic")
            .arg(listen(self.quic).to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .args(&self.serve_flags)
            .args(extra)
            .envs(self.coordinator_env.iter().map(|(key, value)| (key, value)));
        self.coordinator = Some(Process::spawn(
            "coordinator",
            command,
            self.path("coordinator.log"),
        ));
        wait_for(
            "the coordinator to answer operators",
            Duration::from_secs(20),
            || self.operator(&["agents", "--json"]).status.success(),
        );
    }

    pub fn agent_command(&self, name: &str) -> Command {
        let mut command = Command::new(binary("polarizer-agent"));
        command
            .arg("--join")
            .arg(self.gossip.to_string())
            .arg("--gossip")
            .arg(free_udp_addr().to_string())
            .arg("--token-file")
            .arg(self.data_dir.join("agent-token"))
            .arg("--ca")
            .arg(self.data_dir.join("ca.pem"))
            .arg("--state-dir")
            .arg(self.path(&format!("agent-{name}")))
            .arg("--name")
            .arg(name)
            .args([
                "--label",
                "team=rhsm",
                "--platform",
                "vm",
                "--gossip-interval-ms",
                "100",
                "--reconnect-max-ms",
                "1000",
            ]);
        command
    }

    /// Starts an agent; `overrides` replace the value of a flag `agent_command` sets, or are appended.
    pub fn start_agent(&mut self, name: &str, overrides: &[(&str, &str)]) {
        let command = with_args(self.agent_command(name), overrides);
        // Each start gets its own log, so a restarted agent's log says only what that run did.
        let starts = self
            .agents
            .iter()
            .filter(|(existing, _)| existing == name)
            .count()
            + self.restarts;
        self.restarts += 1;
        let process = Process::spawn(
            name,
            command,
            self.path(&format!("agent-{name}.{starts}.log")),
        );
        self.agents.retain(|(existing, _)| existing != name);
        self.agents.push((name.to_string(), process));
    }

    /// Starts an agent inside network namespace `netns` (`ip netns exec`), gossiping on `gossip` there.
    pub fn start_agent_in_netns(&mut self, netns: &str, name: &str, gossip: SocketAddr) {
        let inner = with_args(
            self.agent_command(name),
            &[("--gossip", gossip.to_string().as_str())],
        );
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(inner.get_program())
            .args(inner.get_args());
        let process = Process::spawn(name, command, self.path(&format!("agent-{name}.log")));
        self.agents.retain(|(existing, _)| existing != name);
        self.agents.push((name.to_string(), process));
    }

    pub fn agent(&mut self, name: &str) -> &mut Process {
        &mut self
            .agents
            .iter_mut()
            .find(|(existing, _)| existing == name)
            .expect("agent started")
            .1
    }

    /// Runs `polarizer ARGS --data-dir DATA --coordinator QUIC` and returns its output.
    pub fn operator(&self, args: &[&str]) -> Output {
        self.operator_command(args).output().expect("run polarizer")
    }

    /// `polarizer ARGS --data-dir DATA --coordinator QUIC`, to start as the test needs.
    pub fn operator_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("polarizer"));
        command
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--coordinator")
            .arg(self.quic.to_string());
        command
    }

    /// Every stored event matching `filters` (`tail` flags), oldest first; none while the coordinator
    /// cannot answer.
    pub fn stored_events(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["tail", "--no-follow", "--json", "--since", "0"];
        args.extend(filters);
        let output = self.operator(&args);
        if !output.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The inventory as `polarizer agents --json` prints it (empty when the coordinator is unreachable).
    pub fn inventory(&self) -> Vec<Value> {
        let output = self.operator(&["agents", "--json"]);
        if !output.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Value>(&output.stdout)
            .ok()
            .and_then(|value| value.as_array().cloned())
            .unwrap_or_default()
    }

    /// The agent's row in `polarizer agents --json`, if listed.
    pub fn agent_record(&self, name: &str) -> Option<Value> {
        self.inventory()
            .into_iter()
            .find(|agent| agent["name"] == name)
    }

    pub fn agent_state(&self, name: &str) -> Option<String> {
        self.agent_record(name)
            .and_then(|agent| agent["state"].as_str().map(String::from))
    }

    /// `polarizer triggers --json`: what arrived from outside, newest first.
    pub fn triggers(&self) -> Vec<Value> {
        ok_json(self.operator(&["triggers", "--json"]))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `polarizer runs --json`.
    pub fn runs(&self) -> Vec<Value> {
        ok_json(self.operator(&["runs", "--json"]))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn online_names(&self) -> Vec<String> {
        self.inventory()
            .into_iter()
            .filter(|agent| agent["state"] == "online")
            .filter_map(|agent| agent["name"].as_str().map(String::from))
            .collect()
    }

    fn dump_logs(&self) {
        let mut logs: Vec<&Process> = self.agents.iter().map(|(_, process)| process).collect();
        logs.extend(self.coordinator.iter());
        for process in logs {
            let text = process.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "----- {} ({}) last lines -----",
                process.name,
                process.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.agents.clear();
        self.coordinator = None;
    }
}

/// Writes a secret file the way Polarizer expects one: mode 0600.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// What the benchmark binaries run on: two worker threads (the machine has two cores), the crypto
/// provider installed.
pub fn bench_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    polarizer_transport::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// tmt's version the tests lint with: the one `scripts/test` installs from PyPI.
pub const TMT_VERSION: &str = "1.78.0";

/// `python3 -m tmt`, installing tmt from PyPI first when it is missing (as `scripts/test` does:
/// pinned, `--break-system-packages` where the system Python needs it). `Err` says why tmt cannot be
/// had: the only reason a test that needs it may skip.
pub fn tmt_command() -> Result<Command, String> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import tmt"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !importable() {
        let spec = format!("tmt=={TMT_VERSION}");
        let mut complaint = String::new();
        for extra in [&[][..], &["--break-system-packages"][..]] {
            let output = Command::new("python3")
                .args(["-m", "pip", "install", "-q"])
                .args(extra)
                .arg(&spec)
                .output()
                .map_err(|err| format!("cannot run python3 -m pip: {err}"))?;
            if output.status.success() {
                break;
            }
            complaint = String::from_utf8_lossy(&output.stderr).into_owned();
        }
        if !importable() {
            let tail: Vec<&str> = complaint.lines().rev().take(3).collect();
            return Err(format!(
                "tmt {TMT_VERSION} cannot be installed from PyPI: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ));
        }
    }
    let mut command = Command::new("python3");
    command.args(["-m", "tmt"]);
    Ok(command)
}

/// The Python that has `polarizer_client` (`clients/python`) installed, as its README says (`pip install
/// ./clients/python`, which brings `websockets` from PyPI), in a venv under `target/`; the package is
/// reinstalled every call so it is this tree's. `Err` says why it cannot be had: the only reason a test
/// that needs it may skip.
pub fn python_client() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join("target").join("python-client");
    let python = venv.join("bin").join("python");
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        let output = command
            .output()
            .map_err(|err| format!("cannot run {what}: {err}"))?;
        if output.status.success() {
            return Ok(());
        }
        let complaint = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = complaint.lines().rev().take(3).collect();
        Err(format!(
            "{what} failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    };
    if !python.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    let package = root.join("clients").join("python");
    let has_websockets = Command::new(&python)
        .args(["-c", "import websockets.sync.client"])
        .output()
        .is_ok_and(|output| output.status.success());
    let mut install = Command::new(&python);
    install.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    if has_websockets {
        // Only this tree's client again: no trip to PyPI.
        install.args(["--no-deps", "--force-reinstall"]);
    }
    run(install.arg(&package), "pip install ./clients/python")?;
    Ok(python)
}

/// `bytes` of noise that git cannot compress (xorshift), the same for the same seed.
pub fn noise(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The nearest-rank percentile of `samples` (sorted here); with 20 samples p99 is the slowest. NaN for
/// no samples.
pub fn percentile(samples: &[f64], percent: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds since the epoch of an RFC 3339 time as `runs show --json` prints it.
pub fn unix_ms(field: &Value) -> anyhow::Result<i64> {
    use anyhow::Context;
    let text = field.as_str().context("a time")?;
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("time {text:?}"))?
        .timestamp_millis())
}

/// The ansible venv scripts/test makes (as root): `POLARIZER_ANSIBLE_VENV`, else `target/ansible-venv`.
pub fn ansible_venv() -> PathBuf {
    std::env::var_os("POLARIZER_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ansible-venv"))
}

/// A coordinator started with the `coordinator.toml` at `config` (fast gossip, as the other tests).
pub fn coordinator_with_config(config: &Path) -> TestCluster {
    coordinator_with_config_env(config, &[], Vec::new())
}

/// [`coordinator_with_config`] with more `serve` flags and these variables in its environment.
pub fn coordinator_with_config_env(
    config: &Path,
    flags: &[&str],
    env: Vec<(String, PathBuf)>,
) -> TestCluster {
    let mut serve = vec![
        "--gossip-interval-ms",
        "100",
        "--heartbeat-interval-ms",
        "200",
        "--config",
        config.to_str().expect("a UTF-8 path"),
    ];
    serve.extend(flags);
    TestCluster::new_coordinator_only_with_env(&serve, env)
}

/// The middle value (the upper of the two middle ones for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Rates as "24.6k, 30.6k": a benchmark's rounds, listed beside their median.
pub fn thousands(values: &[f64]) -> String {
    values
        .iter()
        .map(|value| format!("{:.1}k", value / 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls `runs show` until run `run` has a final state, and returns it as JSON; tolerates a coordinator
/// that is down for a while.
pub fn wait_run_finished(cluster: &TestCluster, run: u64, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(&format!("run {run} to finish"), timeout, || {
        let output = cluster.operator(&["runs", "show", &run.to_string(), "--json"]);
        if !output.status.success() {
            return false;
        }
        last = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        !matches!(last["state"].as_str(), None | Some("queued" | "running"))
    });
    last
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    fields
        .get(11..13)
        .map(|both| {
            both.iter()
                .filter_map(|t| t.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0)
        / 100.0
}

/// Process `pid`'s resident memory now (VmRSS), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
