//! Real podman for tests: the containers.conf this kind of machine needs (runc, cgroupfs, explicit ulimits),
//! named by `CONTAINERS_CONF` in the test's environment only, and a small Debian image built from Debian's own
//! packages (`mmdebstrap --variant=minbase`, then `podman import`), once per machine, never pulled from a registry.
//! Root only: `containers_conf` and `test_image` print why and give `None` where podman cannot run containers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The environment variable podman reads its containers.conf from.
pub const CONTAINERS_CONF: &str = "CONTAINERS_CONF";

/// Where the agent binary is mounted inside a container (read-only).
pub const AGENT_IN_CONTAINER: &str = "/usr/local/bin/polarizer-agent";

/// The engine settings podman needs here: crun is not installed and systemd does not manage cgroups in
/// this kind of machine; without explicit ulimits podman copies the host's, which the runtime may refuse.
const CONTAINERS_CONF_TEXT: &str = r#"# Written by polarizer-e2e (tests/src/podman.rs) for the tests' podman; not used by the product.
[containers]
default_ulimits = ["nofile=10000:10000", "nproc=1000:1000"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"#;

/// `target/podman`: the conf, the image's lock and its scratch rootfs tar, shared by every test process.
fn podman_dir() -> PathBuf {
    let mut dir = std::env::current_exe().expect("current exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    // `target/debug` (or `target/release`) → `target`.
    dir.pop();
    dir.join("podman")
}

/// Writes the containers.conf (atomically: several test processes may race) and checks podman runs with it.
fn prepare() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("podman tests need root (rootless podman needs subuids and slirp)".to_string());
    }
    let dir = podman_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let conf = dir.join("containers.conf");
    let temporary = dir.join(format!("containers.conf.{}", std::process::id()));
    std::fs::write(&temporary, CONTAINERS_CONF_TEXT)
        .and_then(|()| std::fs::rename(&temporary, &conf))
        .map_err(|err| format!("cannot write {}: {err}", conf.display()))?;
    let output = Command::new("podman")
        .env(CONTAINERS_CONF, &conf)
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run podman: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "podman info: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(conf)
}

/// The `(CONTAINERS_CONF, path)` pair to set on every podman command a test runs; `None` (with the reason
/// printed) where podman is unusable here: not root, podman or its runtime missing.
pub fn containers_conf() -> Option<(&'static str, PathBuf)> {
    static PREPARED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PREPARED.get_or_init(prepare) {
        Ok(conf) => Some((CONTAINERS_CONF, conf.clone())),
        Err(reason) => {
            eprintln!("skipped: podman is unusable here: {reason}");
            None
        }
    }
}

/// `podman` with the tests' containers.conf; `None` (reason printed) where podman is unusable.
pub fn podman() -> Option<Command> {
    let (key, conf) = containers_conf()?;
    let mut command = Command::new("podman");
    command.env(key, conf).stdin(Stdio::null());
    Some(command)
}

/// The host's Debian release as (suite, version): `("bookworm", "12")`. The image's glibc is then the one the
/// agent was linked against. Bookworm where the host says nothing usable.
fn debian_release() -> (String, String) {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        os_release
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim_matches('"').to_string())
            .filter(|value| !value.is_empty())
    };
    match (
        field("ID="),
        field("VERSION_CODENAME="),
        field("VERSION_ID="),
    ) {
        (Some(id), Some(codename), Some(version)) if id == "debian" => (codename, version),
        _ => ("bookworm".to_string(), "12".to_string()),
    }
}

/// An exclusive `flock` on `path`, released when the file is dropped (or the process dies).
fn lock(path: &Path) -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
    // SAFETY: the descriptor is open and owned by `file`, which outlives the lock.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        locked,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    file
}

/// A Debian minbase image (`localhost/polarizer-test-debian:12` on bookworm): bash, coreutils, dpkg, apt; no git (the
/// agent then takes its tests as tars), no docs. Built once per machine (about 30 s, from
/// deb.debian.org or `POLARIZER_TEST_DEBIAN_MIRROR`, e.g. a `file:` mirror for offline builds), reused after;
/// concurrent test processes wait on a lock rather than build it twice. `None` (reason printed) where podman or
/// mmdebstrap is unusable; a build that fails on a machine that has both fails the test.
pub fn test_image() -> Option<String> {
    let (suite, version) = debian_release();
    let image = format!("localhost/polarizer-test-debian:{version}");
    let exists = |command: &mut Command| {
        command
            .args(["image", "exists", &image])
            .status()
            .is_ok_and(|status| status.success())
    };
    if exists(&mut podman()?) {
        return Some(image);
    }
    if Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .map_or(true, |output| !output.status.success())
    {
        eprintln!("skipped: mmdebstrap is not installed: it builds the podman test image");
        return None;
    }
    let dir = podman_dir();
    let _lock = lock(&dir.join("image.lock"));
    // Another test process may have built it while this one waited for the lock.
    if exists(&mut podman()?) {
        return Some(image);
    }
    eprintln!("building podman image {image} with mmdebstrap (once per machine)");
    let rootfs = dir.join(format!("rootfs-{suite}.tar"));
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=minbase", "--quiet"])
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        ])
        .arg(&suite)
        .arg(&rootfs);
    // Without a mirror mmdebstrap uses deb.debian.org, adding the updates and security suites of a stable
    // release, as this machine's apt sources do.
    if let Some(mirror) = std::env::var_os("POLARIZER_TEST_DEBIAN_MIRROR") {
        mmdebstrap.arg(mirror);
    }
    let output = mmdebstrap.output().expect("run mmdebstrap");
    assert!(
        output.status.success(),
        "mmdebstrap --variant=minbase {suite}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = podman()?
        .args(["import", "--change", r#"CMD ["/bin/bash"]"#])
        .arg(&rootfs)
        .arg(&image)
        .output()
        .expect("run podman import");
    let _ = std::fs::remove_file(&rootfs);
    assert!(
        output.status.success(),
        "podman import {}: {}",
        rootfs.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(image)
}

/// A container a test started, removed (killed at once: `-t 0`) when dropped, whatever the test's outcome.
pub struct Container {
    pub name: String,
}

impl Container {
    /// Takes charge of removing `name` (running or not).
    pub fn named(name: &str) -> Container {
        Container {
            name: name.to_string(),
        }
    }

    /// The container's output so far (stdout and stderr), for a failing test's message.
    pub fn logs(&self) -> String {
        let Some(mut podman) = podman() else {
            return String::new();
        };
        podman
            .args(["logs", &self.name])
            .output()
            .map(|output| {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                text
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut podman) = podman() {
            let _ = podman
                .args(["rm", "--force", "--time", "0", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `podman run -d` of an agent in `image` that joins the coordinator whose data dir and gossip seed are
/// given: host networking (the coordinator listens on loopback), the host's agent binary, enrollment token and
/// CA mounted read-only, state in the container's own writable layer, `--init` so that orphaned test
/// processes are reaped and SIGTERM reaches the agent (which drains). `extra_agent_args` follow the agent's own.
pub fn agent_run_command(
    image: &str,
    container: &str,
    agent_name: &str,
    agent_binary: &Path,
    data_dir: &Path,
    gossip_seed: std::net::SocketAddr,
    extra_agent_args: &[&str],
) -> Option<Command> {
    let mount = |host: &Path, inside: &str| format!("{}:{inside}:ro", host.display());
    let mut command = podman()?;
    command
        .args([
            "run",
            "--detach",
            "--init",
            "--name",
            container,
            "--network",
            "host",
        ])
        .arg("--volume")
        .arg(mount(agent_binary, AGENT_IN_CONTAINER))
        .arg("--volume")
        .arg(mount(
            &data_dir.join("agent-token"),
            "/etc/polarizer/agent-token",
        ))
        .arg("--volume")
        .arg(mount(&data_dir.join("ca.pem"), "/etc/polarizer/ca.pem"))
        .arg(image)
        .arg(AGENT_IN_CONTAINER)
        .arg("--join")
        .arg(gossip_seed.to_string())
        .args([
            "--gossip",
            "127.0.0.1:0",
            "--token-file",
            "/etc/polarizer/agent-token",
            "--ca",
            "/etc/polarizer/ca.pem",
            "--state-dir",
            "/var/lib/polarizer-agent",
            "--name",
            agent_name,
        ])
        .args(extra_agent_args);
    Some(command)
}
