//! Provisioners: how a pool makes, cleans and destroys a platform, and starts (or has installed) the
//! platform's agent with a one-time enrollment token made for that platform's name.
//! - `local`: an agent process on this host, with a state directory of its own.
//! - `podman`: a container from the pool's image, the agent binary mounted read-only, host network.
//! - `command`: the operator's create/destroy scripts, then Polarizer's ansible role over SSH.
//!
//! Every value that reaches another program comes after `--` where the program takes one; a script's
//! answer is checked before anything uses it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use polarizer_shared::facts::PlatformKind;
use polarizer_shared::platforms::PlatformRecord;
use serde::Deserialize;
use tokio::process::Command;

use super::config::{Install, ProvisionerConfig};

/// What a new platform's agent needs to join, and where the platform keeps its files here.
pub struct Enrollment {
    pub name: String,
    pub pool: String,
    /// The coordinator's gossip address: the agent's seed.
    pub join: SocketAddr,
    /// The coordinator's gossip cluster and interval: the agent gossips as it does.
    pub cluster: String,
    pub gossip_interval_ms: u64,
    pub ca: PathBuf,
    /// The one-time token for this platform's name (0600).
    pub token_file: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub platform: PlatformKind,
    pub agent_binary: PathBuf,
    /// `DATA_DIR/platforms/NAME`: logs, the token, a local agent's state.
    pub work_dir: PathBuf,
    /// podman: the image built for this platform's suite, in place of the pool's.
    pub image: Option<String>,
}

/// A platform made: what its provisioner calls it, and where it is.
#[derive(Debug, Default)]
pub struct Made {
    pub id: String,
    pub address: String,
}

/// Runs a program to its end, at most `timeout`; its stderr's last lines make the error.
async fn run(command: &mut Command, what: &str, timeout: Duration) -> Result<String, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Err(_) => return Err(format!("{what} did not finish within {timeout:?}")),
        Ok(Err(err)) => return Err(format!("{what} could not start: {err}")),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .rev()
        .take(3)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({}){}{}",
        output.status,
        if tail.is_empty() { "" } else { ": " },
        tail.join(" / ")
    ))
}

/// What a create script prints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Created {
    id: String,
    address: String,
    #[serde(default = "root")]
    user: String,
    #[serde(default)]
    ssh_key: String,
}

fn root() -> String {
    "root".into()
}

/// A value a script gave that goes on to other programs: printable, no leading `-`, bounded.
fn plain(field: &str, value: &str, extra: &[char]) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c) || extra.contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the create script's {field} {value:?} is not a plain name (letters, digits, - . _{})",
            extra.iter().collect::<String>()
        ))
    }
}

fn parse_created(stdout: &str) -> Result<Created, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .ok_or("the create script printed nothing (it must print {\"id\", \"address\", \"user\", \"ssh_key\"})")?;
    let created: Created = serde_json::from_str(line.trim())
        .map_err(|err| format!("the create script's output is not the JSON expected: {err}"))?;
    plain("id", &created.id, &[':', '/'])?;
    plain("address", &created.address, &[':'])?;
    plain("user", &created.user, &[])?;
    if !created.ssh_key.is_empty() && !Path::new(&created.ssh_key).is_absolute() {
        return Err(format!(
            "the create script's ssh_key {:?} is not an absolute path",
            created.ssh_key
        ));
    }
    Ok(created)
}

pub struct Provisioner {
    config: ProvisionerConfig,
    /// Local agents started by this process, reaped when they end.
    local: std::sync::Mutex<BTreeMap<String, tokio::process::Child>>,
}

impl Provisioner {
    pub fn new(config: ProvisionerConfig) -> Provisioner {
        Provisioner {
            config,
            local: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The agent's own arguments, as it runs on the platform (paths as the platform sees them).
    fn agent_args(
        enrollment: &Enrollment,
        gossip: &str,
        token: &Path,
        ca: &Path,
        state: &Path,
    ) -> Vec<String> {
        let mut args = vec![
            "--join".into(),
            enrollment.join.to_string(),
            "--gossip".into(),
            gossip.to_string(),
            "--token-file".into(),
            token.display().to_string(),
            "--ca".into(),
            ca.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--name".into(),
            enrollment.name.clone(),
            "--platform".into(),
            enrollment.platform.as_str().into(),
            "--reconnect-max-ms".into(),
            "1000".into(),
            "--cluster".into(),
            enrollment.cluster.clone(),
            "--gossip-interval-ms".into(),
            enrollment.gossip_interval_ms.to_string(),
        ];
        for (key, value) in &enrollment.labels {
            args.push("--label".into());
            args.push(format!("{key}={value}"));
        }
        args
    }

    pub async fn create(&self, enrollment: &Enrollment, timeout: Duration) -> Result<Made, String> {
        match &self.config {
            ProvisionerConfig::Local => self.create_local(enrollment),
            ProvisionerConfig::Podman { image, args } => {
                let gossip =
                    polarizer_transport::gossip::concrete_udp_addr(([127, 0, 0, 1], 0).into())
                        .map_err(|err| format!("no free gossip port: {err}"))?;
                let mut command = Command::new("podman");
                command
                    // --init: a process 1 that reaps what tests leave and passes SIGTERM on.
                    .args(["run", "--detach", "--init", "--name", &enrollment.name])
                    .arg(format!("--label=polarizer.platform={}", enrollment.name))
                    .arg(format!("--label=polarizer.pool={}", enrollment.pool))
                    .arg("--network=host")
                    .arg(format!(
                        "--volume={}:/usr/local/bin/polarizer-agent:ro",
                        enrollment.agent_binary.display()
                    ))
                    .arg(format!(
                        "--volume={}:/etc/polarizer/agent-token:ro",
                        enrollment.token_file.display()
                    ))
                    .arg(format!(
                        "--volume={}:/etc/polarizer/ca.pem:ro",
                        enrollment.ca.display()
                    ))
                    .args(args)
                    .arg("--")
                    .arg(enrollment.image.as_ref().unwrap_or(image))
                    .arg("/usr/local/bin/polarizer-agent")
                    .args(Self::agent_args(
                        enrollment,
                        &gossip.to_string(),
                        Path::new("/etc/polarizer/agent-token"),
                        Path::new("/etc/polarizer/ca.pem"),
                        Path::new("/var/lib/polarizer-agent"),
                    ));
                let id = run(&mut command, "podman run", timeout).await?;
                Ok(Made {
                    id: id.trim().chars().take(64).collect(),
                    address: String::new(),
                })
            }
            ProvisionerConfig::Command {
                create, install, ..
            } => {
                let mut command = Command::new(create);
                command
                    .arg(&enrollment.name)
                    .current_dir(&enrollment.work_dir)
                    .env("POLARIZER_PLATFORM", &enrollment.name)
                    .env("POLARIZER_POOL", &enrollment.pool);
                if *install == Install::None {
                    command
                        .env("POLARIZER_JOIN", enrollment.join.to_string())
                        .env("POLARIZER_CLUSTER", &enrollment.cluster)
                        .env("POLARIZER_CA", &enrollment.ca)
                        .env("POLARIZER_TOKEN_FILE", &enrollment.token_file)
                        .env("POLARIZER_AGENT_BINARY", &enrollment.agent_binary)
                        .env("POLARIZER_PLATFORM_KIND", enrollment.platform.as_str())
                        .env(
                            "POLARIZER_LABELS",
                            enrollment
                                .labels
                                .iter()
                                .map(|(key, value)| format!("{key}={value}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                }
                let started = tokio::time::Instant::now();
                let stdout = run(&mut command, &format!("{}", create.display()), timeout).await?;
                let created = parse_created(&stdout)?;
                let made = Made {
                    id: created.id.clone(),
                    address: created.address.clone(),
                };
                if let Install::Ansible {
                    playbook,
                    program,
                    vars,
                } = install
                {
                    let left = timeout.saturating_sub(started.elapsed());
                    if let Err(err) =
                        ansible(enrollment, &created, playbook, program, vars, left).await
                    {
                        // Made but not usable: destroy it here, the caller only knows its name.
                        let _ = self.destroy_id(&made.id).await;
                        return Err(err);
                    }
                }
                Ok(made)
            }
        }
    }

    fn create_local(&self, enrollment: &Enrollment) -> Result<Made, String> {
        let binary = &enrollment.agent_binary;
        let log_path = enrollment.work_dir.join("agent.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|err| format!("cannot open {}: {err}", log_path.display()))?;
        let gossip = polarizer_transport::gossip::concrete_udp_addr(([127, 0, 0, 1], 0).into())
            .map_err(|err| format!("no free gossip port: {err}"))?;
        let mut command = Command::new(binary);
        command
            .args(Self::agent_args(
                enrollment,
                &gossip.to_string(),
                &enrollment.token_file,
                &enrollment.ca,
                &enrollment.work_dir.join("state"),
            ))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a terminal's Ctrl-C stops the coordinator, which destroys it.
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", binary.display()))?;
        let pid = child.id().unwrap_or_default();
        self.local
            .lock()
            .expect("local agents lock")
            .insert(enrollment.name.clone(), child);
        Ok(Made {
            id: pid.to_string(),
            address: String::new(),
        })
    }

    /// Destroys a platform; one already gone is destroyed.
    pub async fn destroy(&self, platform: &PlatformRecord) -> Result<(), String> {
        match &self.config {
            ProvisionerConfig::Local => {
                let child = self
                    .local
                    .lock()
                    .expect("local agents lock")
                    .remove(&platform.name);
                match child {
                    Some(child) => stop_child(child).await,
                    // Started by an earlier coordinator process: only if that pid is still this
                    // platform's agent.
                    None => match platform.provider_id.parse::<i32>() {
                        Ok(pid) if pid > 1 && is_agent_named(pid, &platform.name) => {
                            stop_pid(pid).await
                        }
                        _ => {}
                    },
                }
                Ok(())
            }
            ProvisionerConfig::Podman { .. } => {
                let mut command = Command::new("podman");
                command.args([
                    "rm",
                    "--force",
                    "--ignore",
                    "--time",
                    "5",
                    "--",
                    &platform.name,
                ]);
                run(&mut command, "podman rm", Duration::from_secs(60))
                    .await
                    .map(drop)
            }
            ProvisionerConfig::Command { .. } => {
                let id = if platform.provider_id.is_empty() {
                    &platform.name
                } else {
                    &platform.provider_id
                };
                self.destroy_id(id).await
            }
        }
    }

    async fn destroy_id(&self, id: &str) -> Result<(), String> {
        let ProvisionerConfig::Command { destroy, .. } = &self.config else {
            return Ok(());
        };
        let mut command = Command::new(destroy);
        command.arg(id);
        run(
            &mut command,
            &format!("{}", destroy.display()),
            Duration::from_secs(600),
        )
        .await
        .map(drop)
    }

    /// Runs the pool's clean command for a platform after its suite.
    pub async fn clean(
        &self,
        platform: &PlatformRecord,
        clean: &str,
        work_dir: &Path,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut command = match &self.config {
            ProvisionerConfig::Podman { .. } => {
                let mut command = Command::new("podman");
                command.args(["exec", "--", &platform.name, "/bin/sh", "-c", clean]);
                command
            }
            ProvisionerConfig::Local | ProvisionerConfig::Command { .. } => {
                let mut command = Command::new("/bin/sh");
                command
                    .args(["-c", clean])
                    .current_dir(work_dir)
                    .env("POLARIZER_PLATFORM", &platform.name)
                    .env("POLARIZER_PLATFORM_ID", &platform.provider_id)
                    .env("POLARIZER_PLATFORM_ADDRESS", &platform.address);
                command
            }
        };
        run(&mut command, "the clean command", timeout)
            .await
            .map(drop)
    }
}

/// Installs and enrolls the agent on a made host with Polarizer's ansible role.
async fn ansible(
    enrollment: &Enrollment,
    created: &Created,
    playbook: &Path,
    program: &Path,
    extra: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), String> {
    let mut vars = serde_json::json!({
        "polarizer_agent_binary_src": enrollment.agent_binary,
        "polarizer_agent_join": [enrollment.join.to_string()],
        "polarizer_agent_ca_src": enrollment.ca,
        "polarizer_agent_token_src": enrollment.token_file,
        "polarizer_agent_name": enrollment.name,
        "polarizer_agent_labels": enrollment.labels,
        "polarizer_agent_platform": enrollment.platform.as_str(),
        "polarizer_agent_cluster": enrollment.cluster,
        "polarizer_agent_gossip_interval_ms": enrollment.gossip_interval_ms,
        // A fresh platform's host key is unknown; remember it for this platform only.
        "ansible_ssh_common_args": format!(
            "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
            enrollment.work_dir.join("known_hosts").display()
        ),
    });
    for (key, value) in extra {
        vars[key] = serde_json::Value::String(value.replace("{name}", &enrollment.name));
    }
    let vars_path = enrollment.work_dir.join("ansible-vars.json");
    polarizer_transport::state_files::write_private(&vars_path, vars.to_string().as_bytes())
        .map_err(|err| format!("cannot write {}: {err}", vars_path.display()))?;
    let log_path = enrollment.work_dir.join("ansible.log");
    let mut command = Command::new(program);
    command
        .arg("-i")
        .arg(format!("{},", created.address))
        .arg("-u")
        .arg(&created.user)
        .arg("-e")
        .arg(format!("@{}", vars_path.display()));
    if !created.ssh_key.is_empty() {
        command.arg("--private-key").arg(&created.ssh_key);
    }
    command
        .arg("--")
        .arg(playbook)
        // The playbook's own ansible.cfg (roles_path), never one where the coordinator happens to run.
        .current_dir(playbook.parent().unwrap_or(Path::new("/")))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOG_PATH", &log_path);
    run(&mut command, "ansible-playbook", timeout)
        .await
        .map(drop)
        .map_err(|err| format!("{err} (log: {})", log_path.display()))
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_child(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Whether `pid` is a polarizer-agent started with `--name NAME`.
fn is_agent_named(pid: i32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
    args.first()
        .is_some_and(|program| program.ends_with(b"polarizer-agent"))
        && args
            .windows(2)
            .any(|pair| pair[0] == b"--name" && pair[1] == name.as_bytes())
}

/// An agent of an earlier coordinator process: SIGTERM, then SIGKILL once 5 s have passed.
async fn stop_pid(pid: i32) {
    // SAFETY: kill(2) on a pid just checked to be this platform's agent.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A create script's answer is checked before anything uses it.
    #[test]
    fn create_output_is_checked() {
        let created = parse_created(
            "booting…\n{\"id\": \"srv-1\", \"address\": \"10.0.0.5\", \"user\": \"cloud-user\", \"ssh_key\": \"/k\"}\n",
        )
        .unwrap();
        assert_eq!(
            (created.id.as_str(), created.address.as_str()),
            ("srv-1", "10.0.0.5")
        );
        for (output, expected) in [
            ("", "printed nothing"),
            ("{\"id\": \"x\"}", "not the JSON expected"),
            (
                "{\"id\": \"-oProxyCommand=x\", \"address\": \"h\"}",
                "id \"-oProxyCommand=x\"",
            ),
            (
                "{\"id\": \"a\", \"address\": \"h; rm -rf /\"}",
                "address \"h; rm -rf /\"",
            ),
            (
                "{\"id\": \"a\", \"address\": \"h\", \"ssh_key\": \"key\"}",
                "not an absolute path",
            ),
        ] {
            let err = parse_created(output).unwrap_err();
            assert!(err.contains(expected), "{output}: {err}");
        }
    }
}
