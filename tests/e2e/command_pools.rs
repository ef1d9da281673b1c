//! The `command` provisioner for real: a pool whose create script makes a network-namespace host with an
//! sshd of its own (tests/provision/netns-create), Polarizer's ansible play (ansible/platform.yml) run by
//! the coordinator installs and enrolls the agent there over SSH, the suite runs inside that host, and the
//! destroy script removes it after. Needs root (namespaces), a non-loopback address for the coordinator
//! to advertise, and the ansible venv scripts/test makes before `cargo test`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use polarizer_e2e::*;

use super::pools::{platforms, show, suite_agents, tests_repo, trigger, wait_platforms_gone};

/// Two ansible plays at once, each copying the 83 MB debug agent over SSH, then two short tests.
const RUN_DEADLINE: Duration = Duration::from_secs(420);

/// The ansible-playbook scripts/test installs (POLARIZER_ANSIBLE_VENV, else target/ansible-venv).
fn ansible_playbook() -> PathBuf {
    ansible_venv().join("bin/ansible-playbook")
}

/// An IPv4 address of this machine that a host in another network namespace reaches through its default
/// route: the one the kernel would use outbound (what the coordinator advertises by itself), else any
/// global one (then given as `--advertise`). `None` when there is only loopback.
fn advertisable_ip() -> Option<(std::net::IpAddr, bool)> {
    let outbound = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|addr| addr.ip());
    if let Ok(ip) = outbound {
        if !ip.is_loopback() && !ip.is_unspecified() {
            return Some((ip, false));
        }
    }
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .nth(3)?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        // Not the near ends of the test hosts' veth pairs: they come and go.
        .find(|ip: &std::net::IpAddr| !ip.to_string().starts_with("10.21"))
        .map(|ip| (ip, true))
}

fn netns_hosts_of(pool: &str) -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|netns| netns.starts_with(&format!("pzhost-{pool}-")))
        .map(str::to_string)
        .collect()
}

fn host_dirs(hosts_dir: &Path) -> Vec<String> {
    std::fs::read_dir(hosts_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect()
}

/// Destroys what a failed test left of the pool's hosts (the coordinator dies with SIGKILL and destroys
/// nothing); after a passing test there is nothing left to destroy.
struct LeftHosts {
    pool: String,
    hosts_dir: PathBuf,
    destroy: PathBuf,
}

impl Drop for LeftHosts {
    fn drop(&mut self) {
        for netns in netns_hosts_of(&self.pool) {
            let name = netns.trim_start_matches("pzhost-");
            let _ = Command::new(&self.destroy)
                .arg(name)
                .env("POLARIZER_TEST_HOSTS_DIR", &self.hosts_dir)
                .status();
        }
    }
}

#[test]
fn a_command_pool_makes_namespace_hosts_installs_their_agents_with_ansible_and_destroys_them() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root (network namespaces, an sshd per host)");
        return;
    }
    let ansible_playbook = ansible_playbook();
    assert!(
        ansible_playbook.is_file(),
        "{} is missing: scripts/test makes the venv before cargo test (or set POLARIZER_ANSIBLE_VENV)",
        ansible_playbook.display()
    );
    let Some((ip, must_advertise)) = advertisable_ip() else {
        println!(
            "skipped: this machine has no non-loopback IPv4 address a namespace host could reach"
        );
        return;
    };
    let started = Instant::now();

    let provision = Path::new(env!("CARGO_MANIFEST_DIR")).join("provision");
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible/platform.yml");
    let playbook = playbook.canonicalize().unwrap();
    let config = tempfile::tempdir().unwrap();
    let hosts = tempfile::Builder::new()
        .prefix("polarizer-test-hosts-")
        .tempdir()
        .unwrap();
    // Namespace names are global on the machine: the pool's name carries the test process's id.
    let pool = format!("ns{}", std::process::id());
    let host = format!("{}/{{name}}", hosts.path().display());
    let _left_hosts = LeftHosts {
        pool: pool.clone(),
        hosts_dir: hosts.path().to_path_buf(),
        destroy: provision.join("netns-destroy"),
    };
    let config_file = config.path().join("coordinator.toml");
    std::fs::write(
        &config_file,
        format!(
            r#"[[pools]]
name = "{pool}"
provisioner = "command"
create = "{create}"
destroy = "{destroy}"
install = "ansible"
playbook = "{playbook}"
ansible_playbook = "{ansible_playbook}"
max = 2
boot_timeout = "3m"

[pools.install_vars]
polarizer_agent_service = "process"
polarizer_agent_binary_dest = "{host}/agent/bin/polarizer-agent"
polarizer_agent_config_dir = "{host}/agent/etc"
polarizer_agent_state_dir = "{host}/agent/state"
ansible_python_interpreter = "/usr/bin/python3"
"#,
            create = provision.join("netns-create").display(),
            destroy = provision.join("netns-destroy").display(),
            playbook = playbook.display(),
            ansible_playbook = ansible_playbook.display(),
        ),
    )
    .unwrap();
    let advertise = ip.to_string();
    let mut serve = vec![
        "--gossip-interval-ms",
        "100",
        "--heartbeat-interval-ms",
        "200",
        "--config",
        config_file.to_str().unwrap(),
    ];
    if must_advertise {
        serve.extend(["--advertise", advertise.as_str()]);
    }
    let cluster = TestCluster::new_coordinator_only_on_every_address(
        &serve,
        vec![(
            "POLARIZER_TEST_HOSTS_DIR".to_string(),
            hosts.path().to_path_buf(),
        )],
    );

    // Each test passes only inside a host of this pool: its network namespace is pzhost-POOL-N, its one
    // global address the host end of a veth pair in 10.214.0.0/16.
    let inside = format!(
        "    echo \"in $(ip netns identify $$)\" && ip -o -4 addr show scope global && ip netns identify $$ | grep -qx 'pzhost-{pool}-[0-9]*' && ip -o -4 addr show scope global | grep -qE ' pzv[0-9]+n +inet 10\\.214\\.'\n"
    );
    let repo = tests_repo(
        &cluster.path("repo"),
        &format!("duration: 5m\n/first:\n  test: |\n{inside}/second:\n  test: |\n{inside}"),
    );
    let run = trigger(&cluster, &repo);
    let mut finished = serde_json::Value::Null;
    let mut most_at_once = 0;
    wait_for(&format!("run {run} to finish"), RUN_DEADLINE, || {
        finished = show(&cluster, run);
        most_at_once = most_at_once.max(netns_hosts_of(&pool).len());
        !matches!(finished["state"].as_str(), Some("queued" | "running"))
    });
    let ran_in = started.elapsed();
    assert_eq!(
        finished["state"],
        "passed",
        "{finished:#}\nplatforms: {:#}\ncoordinator log: {}",
        platforms(&cluster),
        cluster.path("coordinator.log").display()
    );
    let suites = finished["suites"].as_array().unwrap();
    let agents = suite_agents(suites);
    assert_eq!(
        agents.len(),
        suites.len(),
        "a fresh host per suite: {agents:?}"
    );
    for agent in &agents {
        let number = agent.strip_prefix(&format!("{pool}-"));
        assert!(
            number.is_some_and(|number| number.parse::<u32>().is_ok()),
            "{agent} is not a platform of pool {pool}"
        );
    }
    assert!(most_at_once <= 2, "never more than max: {most_at_once}");
    // Each suite's tests ran in the namespace of that suite's own platform.
    let output =
        serde_json::Value::Array(cluster.stored_events(&["--run", &run.to_string()])).to_string();
    for agent in &agents {
        assert!(
            output.contains(&format!("in pzhost-{agent}")),
            "{agent}: {output}"
        );
    }

    // After the run: every platform destroyed, its namespace, links and per-host directory gone.
    wait_platforms_gone(&cluster);
    assert_eq!(netns_hosts_of(&pool), Vec::<String>::new());
    assert_eq!(host_dirs(hosts.path()), Vec::<String>::new());
    println!(
        "{} suite(s) on {agents:?}, run passed after {ran_in:.1?}, destroyed after {:.1?}",
        suites.len(),
        started.elapsed()
    );
}
