//! Agent processes on the coordinator's own host: `polarizer serve --local-agents N` and `polarizer demo`.
//! Each is a real `polarizer-agent` (from next to this executable) with its own state directory and log,
//! joining by gossip and pinning the CA like any other agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

pub struct LocalAgents {
    children: Vec<(String, Child)>,
}

/// The agent binary installed next to this one.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let path = exe.with_file_name("polarizer-agent");
    if !path.exists() {
        bail!(
            "polarizer-agent not found next to {}: build both binaries (cargo build --workspace)",
            exe.display()
        );
    }
    Ok(path)
}

impl LocalAgents {
    /// Starts `names.len()` agents; each keeps its state in `root/NAME` and logs to `root/NAME.log`.
    pub fn start(
        names: &[String],
        root: &Path,
        data_dir: &Path,
        gossip_seed: SocketAddr,
        labels: &[&str],
    ) -> anyhow::Result<LocalAgents> {
        let binary = agent_binary()?;
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let mut children = Vec::new();
        for name in names {
            let log_path = root.join(format!("{name}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let gossip =
                polarizer_transport::gossip::concrete_udp_addr(([127, 0, 0, 1], 0).into())?;
            let mut command = Command::new(&binary);
            command
                .arg("--join")
                .arg(gossip_seed.to_string())
                .arg("--gossip")
                .arg(gossip.to_string())
                .arg("--token-file")
                .arg(data_dir.join("agent-token"))
                .arg("--ca")
                .arg(data_dir.join("ca.pem"))
                .arg("--state-dir")
                .arg(root.join(name))
                .arg("--name")
                .arg(name)
                .arg("--reconnect-max-ms")
                .arg("1000");
            for label in labels {
                command.arg("--label").arg(label);
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            children.push((name.clone(), child));
        }
        Ok(LocalAgents { children })
    }

    /// SIGTERM to every agent, then SIGKILL to any still running after 5 s.
    pub async fn stop(mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) with a pid this process spawned and has not reaped.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for (_, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
