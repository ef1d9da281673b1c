//! `[[pools]]` in coordinator.toml: what each pool makes, how many, and what happens to a platform
//! after its suite. Every mistake names the pool and the key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use polarizer_shared::facts::{parse_label, validate_agent_name, PlatformKind};
use serde::Deserialize;

use polarizer_transport::daemon::InvalidSetting as ConfigError;

/// One `[[pools]]` table as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub name: String,
    /// `local`, `podman` or `command`.
    pub provisioner: String,
    /// podman: the image each platform runs.
    pub image: Option<String>,
    /// podman: extra arguments to `podman run`, before the image.
    #[serde(default)]
    pub podman_args: Vec<String>,
    /// command: prints `{"id", "address", "user", "ssh_key"}` for the platform named by its argument.
    pub create: Option<PathBuf>,
    /// command: destroys the platform whose id it is given.
    pub destroy: Option<PathBuf>,
    /// command: `ansible` (Polarizer's role installs and enrolls the agent over SSH) or `none` (the
    /// create script starts the agent itself, from the `POLARIZER_*` variables it is given).
    pub install: Option<String>,
    /// command, `install = "ansible"`: the playbook [default: /usr/share/polarizer/ansible/platform.yml]
    pub playbook: Option<PathBuf>,
    /// command, `install = "ansible"`: the program [default: ansible-playbook]
    pub ansible_playbook: Option<PathBuf>,
    /// command, `install = "ansible"`: more variables for the play (`{name}` in a value becomes the
    /// platform's name), e.g. `polarizer_agent_service = "process"` where the platform has no systemd.
    #[serde(default)]
    pub install_vars: BTreeMap<String, String>,
    /// What the platforms are, for placement: `distro`, `arch`, and any label of your own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// vm, container or baremetal [default: container for podman, vm otherwise]
    pub platform: Option<String>,
    #[serde(default)]
    pub min_ready: u32,
    pub max: Option<u32>,
    /// `never` (destroy after each suite) or `clean` (run `clean`, then keep it for the next suite).
    pub reuse: Option<String>,
    /// With `reuse = "clean"`: a shell command run on the platform after each suite (podman: in the
    /// container; command: given the id, on this host; local: in the agent's state dir).
    pub clean: Option<String>,
    /// How long making a platform and its agent joining may take [default: 10m]
    pub boot_timeout: Option<String>,
    /// Tries at making a platform before its suite counts an infrastructure error [default: 3]
    pub launch_retries: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reuse {
    Never,
    Clean(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Install {
    Ansible {
        playbook: PathBuf,
        program: PathBuf,
        vars: BTreeMap<String, String>,
    },
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionerConfig {
    Local,
    Podman {
        image: String,
        args: Vec<String>,
    },
    Command {
        create: PathBuf,
        destroy: PathBuf,
        install: Install,
    },
}

impl ProvisionerConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProvisionerConfig::Local => "local",
            ProvisionerConfig::Podman { .. } => "podman",
            ProvisionerConfig::Command { .. } => "command",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub provisioner: ProvisionerConfig,
    pub labels: BTreeMap<String, String>,
    pub platform: PlatformKind,
    pub min_ready: u32,
    pub max: u32,
    pub reuse: Reuse,
    pub boot_timeout: Duration,
    pub launch_retries: u32,
}

/// The longest a pool's name may be: its platforms are named `NAME-ID`, an agent name.
const MAX_POOL_NAME: usize = 40;

impl PoolSettings {
    pub fn validate(self, index: usize) -> Result<PoolConfig, ConfigError> {
        let pool = if self.name.is_empty() {
            format!("pools[{index}]")
        } else {
            format!("pool {:?}", self.name)
        };
        let fail = |message: String| ConfigError {
            key: "pools",
            message: format!("{pool}: {message}"),
        };
        validate_agent_name(&self.name).map_err(|reason| fail(format!("name: {reason}")))?;
        if self.name.len() > MAX_POOL_NAME {
            return Err(fail(format!(
                "name: longer than {MAX_POOL_NAME} characters"
            )));
        }
        let unused = |key: &str, set: bool, provisioner: &str| {
            if set {
                Err(fail(format!(
                    "{key} is not used by the {provisioner} provisioner"
                )))
            } else {
                Ok(())
            }
        };
        let provisioner = match self.provisioner.as_str() {
            "local" => {
                unused("image", self.image.is_some(), "local")?;
                unused("create", self.create.is_some(), "local")?;
                ProvisionerConfig::Local
            }
            "podman" => {
                unused("create", self.create.is_some(), "podman")?;
                unused("destroy", self.destroy.is_some(), "podman")?;
                let image = self
                    .image
                    .clone()
                    .filter(|image| !image.is_empty())
                    .ok_or_else(|| fail("image: required for the podman provisioner".into()))?;
                if image.starts_with('-') {
                    return Err(fail(format!("image: {image:?} is not an image name")));
                }
                ProvisionerConfig::Podman {
                    image,
                    args: self.podman_args.clone(),
                }
            }
            "command" => {
                unused("image", self.image.is_some(), "command")?;
                let script = |key: &str, given: &Option<PathBuf>| {
                    given
                        .clone()
                        .filter(|path| path.is_absolute())
                        .ok_or_else(|| {
                            fail(format!("{key}: an absolute path to a script is required"))
                        })
                };
                let install = match self.install.as_deref().unwrap_or("ansible") {
                    "ansible" => Install::Ansible {
                        playbook: self.playbook.clone().unwrap_or_else(|| {
                            PathBuf::from("/usr/share/polarizer/ansible/platform.yml")
                        }),
                        program: self
                            .ansible_playbook
                            .clone()
                            .unwrap_or_else(|| PathBuf::from("ansible-playbook")),
                        vars: self.install_vars.clone(),
                    },
                    "none" if self.install_vars.is_empty() => Install::None,
                    "none" => {
                        return Err(fail(
                            "install_vars: only used with install = \"ansible\"".into(),
                        ))
                    }
                    other => {
                        return Err(fail(format!("install: {other:?} is not ansible or none")))
                    }
                };
                ProvisionerConfig::Command {
                    create: script("create", &self.create)?,
                    destroy: script("destroy", &self.destroy)?,
                    install,
                }
            }
            other => {
                return Err(fail(format!(
                    "provisioner: {other:?} is not local, podman or command"
                )))
            }
        };
        for (key, value) in &self.labels {
            parse_label(&format!("{key}={value}"))
                .map_err(|reason| fail(format!("labels.{key}: {reason}")))?;
        }
        let platform = match self.platform.as_deref() {
            Some(text) => text
                .parse::<PlatformKind>()
                .map_err(|err| fail(format!("platform: {err}")))?,
            None if matches!(provisioner, ProvisionerConfig::Podman { .. }) => {
                PlatformKind::Container
            }
            None => PlatformKind::Vm,
        };
        let max = self.max.unwrap_or(4);
        if !(1..=1000).contains(&max) {
            return Err(fail(format!("max: {max} is not between 1 and 1000")));
        }
        if self.min_ready > max {
            return Err(fail(format!(
                "min_ready: {} is more than max ({max})",
                self.min_ready
            )));
        }
        let reuse = match (self.reuse.as_deref().unwrap_or("never"), self.clean) {
            ("never", None) => Reuse::Never,
            ("never", Some(_)) => {
                return Err(fail("clean: only used with reuse = \"clean\"".into()))
            }
            ("clean", Some(command)) if !command.trim().is_empty() => Reuse::Clean(command),
            ("clean", _) => {
                return Err(fail(
                    "reuse = \"clean\" needs clean, the command that cleans a platform".into(),
                ))
            }
            (other, _) => return Err(fail(format!("reuse: {other:?} is not never or clean"))),
        };
        let boot_timeout = match self.boot_timeout.as_deref() {
            None => Duration::from_secs(600),
            Some(text) => {
                let seconds =
                    polarizer_shared::metadata::parse_duration_seconds(text).ok_or_else(|| {
                        fail(format!(
                            "boot_timeout: {text:?} is not a duration (like 90s, 10m, 1h)"
                        ))
                    })?;
                if !(1..=86_400).contains(&seconds) {
                    return Err(fail(format!(
                        "boot_timeout: {text:?} is not between 1 s and a day"
                    )));
                }
                Duration::from_secs(seconds)
            }
        };
        let launch_retries = self.launch_retries.unwrap_or(3);
        if !(1..=10).contains(&launch_retries) {
            return Err(fail(format!(
                "launch_retries: {launch_retries} is not between 1 and 10"
            )));
        }
        Ok(PoolConfig {
            name: self.name,
            provisioner,
            labels: self.labels,
            platform,
            min_ready: self.min_ready,
            max,
            reuse,
            boot_timeout,
            launch_retries,
        })
    }
}

/// Every pool checked, and no two with one name.
pub fn validate_pools(pools: Vec<PoolSettings>) -> Result<Vec<PoolConfig>, ConfigError> {
    let mut configs: Vec<PoolConfig> = Vec::new();
    for (index, settings) in pools.into_iter().enumerate() {
        let config = settings.validate(index)?;
        if configs.iter().any(|other| other.name == config.name) {
            return Err(ConfigError {
                key: "pools",
                message: format!("pool {:?} is defined twice", config.name),
            });
        }
        configs.push(config);
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman() -> PoolSettings {
        PoolSettings {
            name: "containers".into(),
            provisioner: "podman".into(),
            image: Some("localhost/rhel9-test:latest".into()),
            max: Some(8),
            min_ready: 1,
            ..PoolSettings::default()
        }
    }

    #[test]
    fn a_podman_pool_takes_its_defaults() {
        let config = validate_pools(vec![podman()]).unwrap().remove(0);
        assert_eq!(config.platform, PlatformKind::Container);
        assert_eq!(config.reuse, Reuse::Never);
        assert_eq!(config.boot_timeout, Duration::from_secs(600));
        assert_eq!(config.launch_retries, 3);
    }

    /// The issue's own example, as users write it, reads and validates.
    #[test]
    fn the_documented_pools_read_from_coordinator_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(
            &path,
            r#"
[[pools]]
name = "containers"
provisioner = "podman"
image = "localhost/rhel9-test:latest"
labels = { distro = "rhel-9.4" }
platform = "container"
min_ready = 1
max = 8
reuse = "never"
podman_args = []

[[pools]]
name = "openstack-rhel9"
provisioner = "command"
create = "/etc/polarizer/provision/openstack-create"
destroy = "/etc/polarizer/provision/openstack-destroy"
install = "ansible"
max = 20
boot_timeout = "10m"
"#,
        )
        .unwrap();
        let settings: crate::daemon::config::ServeSettings =
            polarizer_transport::daemon::read_toml(&path).unwrap();
        let config = settings.validate().unwrap();
        assert_eq!(config.pools.len(), 2);
        assert_eq!(config.pools[0].labels["distro"], "rhel-9.4");
        assert_eq!(config.pools[1].boot_timeout, Duration::from_secs(600));
        assert!(matches!(
            config.pools[1].provisioner,
            ProvisionerConfig::Command {
                install: Install::Ansible { .. },
                ..
            }
        ));
        std::fs::write(
            &path,
            "[[pools]]\nname = \"x\"\nprovisioner = \"podman\"\nimage = \"i\"\nmaxx = 3\n",
        )
        .unwrap();
        let err =
            polarizer_transport::daemon::read_toml::<crate::daemon::config::ServeSettings>(&path)
                .unwrap_err()
                .to_string();
        assert!(err.contains("maxx") && err.contains("line 5"), "{err}");
    }

    /// Each mistake names the pool and the key.
    #[test]
    fn mistakes_name_the_pool_and_key() {
        let cases: Vec<(PoolSettings, &str)> = vec![
            (
                PoolSettings {
                    image: None,
                    ..podman()
                },
                "image: required",
            ),
            (
                PoolSettings {
                    provisioner: "openstack".into(),
                    ..podman()
                },
                "provisioner: \"openstack\"",
            ),
            (
                PoolSettings {
                    min_ready: 9,
                    ..podman()
                },
                "min_ready: 9 is more than max (8)",
            ),
            (
                PoolSettings {
                    reuse: Some("clean".into()),
                    ..podman()
                },
                "needs clean",
            ),
            (
                PoolSettings {
                    boot_timeout: Some("soon".into()),
                    ..podman()
                },
                "boot_timeout: \"soon\"",
            ),
            (
                PoolSettings {
                    provisioner: "command".into(),
                    image: None,
                    create: Some("relative/create".into()),
                    ..podman()
                },
                "create: an absolute path",
            ),
            (
                PoolSettings {
                    name: "bad name".into(),
                    ..podman()
                },
                "name:",
            ),
        ];
        for (settings, expected) in cases {
            let err = validate_pools(vec![settings]).unwrap_err().to_string();
            assert!(err.contains("pools") && err.contains(expected), "{err}");
        }
        let err = validate_pools(vec![podman(), podman()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("defined twice"), "{err}");
    }
}
