//! `polarizer-agent` configuration: flags, then `POLARIZER_*` environment variables, then the TOML file
//! given by `--config`, then defaults. Unknown keys and bad values are errors naming the file and key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use polarizer_shared::facts::{parse_label, validate_agent_name};
use polarizer_shared::PlatformKind;
use polarizer_transport::daemon::millis_setting;
use serde::Deserialize;

/// A bad setting, naming its key.
pub use polarizer_transport::daemon::InvalidSetting as ConfigError;

/// Every key `agent.toml` may hold; each has a flag of the same name (`--label k=v` for `[labels]`).
#[derive(Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Gossip seeds (HOST:PORT of the coordinator or any agent), comma-separated or repeated
    #[arg(long, env = "POLARIZER_JOIN", value_delimiter = ',')]
    #[serde(default)]
    pub join: Vec<String>,
    /// Gossip (UDP) listen address [default: 0.0.0.0:7700]
    #[arg(long, env = "POLARIZER_GOSSIP")]
    pub gossip: Option<SocketAddr>,
    /// The address other hosts reach this one at, when listening on 0.0.0.0 [default: detected]
    #[arg(long, env = "POLARIZER_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// The enrollment token file, needed until the agent holds its own credential
    #[arg(long, env = "POLARIZER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The coordinator's CA certificate (PEM) to pin
    #[arg(long, env = "POLARIZER_CA")]
    pub ca: Option<PathBuf>,
    /// Pin the coordinator's CA by fingerprint instead (sha256:<hex>)
    #[arg(long, env = "POLARIZER_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// Where the agent keeps its credential [default: $STATE_DIRECTORY, else ~/.local/state/polarizer-agent]
    #[arg(long, env = "POLARIZER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The agent's name in the inventory [default: the host name]
    #[arg(long, env = "POLARIZER_NAME")]
    pub name: Option<String>,
    /// A label key=value (repeatable); in the file, a [labels] table
    #[arg(long = "label", value_name = "KEY=VALUE")]
    #[serde(skip)]
    pub label: Vec<String>,
    #[arg(skip)]
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Override the detected platform kind: vm, container or baremetal
    #[arg(long, env = "POLARIZER_PLATFORM")]
    pub platform: Option<PlatformKind>,
    /// Gossip cluster id [default: polarizer]
    #[arg(long, env = "POLARIZER_CLUSTER")]
    pub cluster: Option<String>,
    /// Gossip interval in milliseconds [default: 200]
    #[arg(long, env = "POLARIZER_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Longest wait between reconnection attempts, in milliseconds [default: 5000]
    #[arg(long, env = "POLARIZER_RECONNECT_MAX_MS")]
    pub reconnect_max_ms: Option<u64>,
    /// Largest disk spool of unacknowledged records, in MiB; past it the oldest output is dropped,
    /// results never are [default: 256]
    #[arg(long, env = "POLARIZER_SPOOL_MAX_MB")]
    pub spool_max_mb: Option<u64>,
}

#[derive(Clone, Debug)]
pub enum CaPin {
    File(PathBuf),
    Fingerprint(String),
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub join: Vec<String>,
    pub gossip: SocketAddr,
    pub advertise: Option<IpAddr>,
    pub token_file: Option<PathBuf>,
    pub ca: CaPin,
    pub state_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub platform: Option<PlatformKind>,
    pub cluster: String,
    pub gossip_interval: Duration,
    pub reconnect_max: Duration,
    pub spool_max_bytes: u64,
}

impl AgentSettings {
    /// Fills every key this one leaves unset from `lower` (flags over file). Labels merge, flags winning.
    pub fn or(self, lower: AgentSettings) -> AgentSettings {
        let mut labels = lower.labels;
        labels.extend(self.labels);
        AgentSettings {
            join: if self.join.is_empty() {
                lower.join
            } else {
                self.join
            },
            gossip: self.gossip.or(lower.gossip),
            advertise: self.advertise.or(lower.advertise),
            token_file: self.token_file.or(lower.token_file),
            ca: self.ca.or(lower.ca),
            ca_fingerprint: self.ca_fingerprint.or(lower.ca_fingerprint),
            state_dir: self.state_dir.or(lower.state_dir),
            name: self.name.or(lower.name),
            label: [lower.label, self.label].concat(),
            labels,
            platform: self.platform.or(lower.platform),
            cluster: self.cluster.or(lower.cluster),
            gossip_interval_ms: self.gossip_interval_ms.or(lower.gossip_interval_ms),
            reconnect_max_ms: self.reconnect_max_ms.or(lower.reconnect_max_ms),
            spool_max_mb: self.spool_max_mb.or(lower.spool_max_mb),
        }
    }

    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        if self.join.is_empty() {
            return Err(ConfigError {
                key: "join",
                message: "give at least one gossip seed (--join HOST:7700)".into(),
            });
        }
        let ca = match (self.ca, self.ca_fingerprint) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    key: "ca",
                    message: "give either ca or ca_fingerprint, not both".into(),
                });
            }
            (Some(path), None) => CaPin::File(path),
            (None, Some(fingerprint)) => {
                polarizer_transport::tls::parse_fingerprint(&fingerprint).map_err(|err| {
                    ConfigError {
                        key: "ca_fingerprint",
                        message: err.to_string(),
                    }
                })?;
                CaPin::Fingerprint(fingerprint)
            }
            (None, None) => {
                return Err(ConfigError {
                    key: "ca",
                    message: "the agent trusts only a pinned coordinator CA: give --ca FILE or --ca-fingerprint sha256:...".into(),
                });
            }
        };
        let name = match self.name {
            Some(name) => name,
            None => sysinfo::System::host_name()
                .unwrap_or_default()
                .split('.')
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        validate_agent_name(&name).map_err(|message| ConfigError {
            key: "name",
            message,
        })?;
        let mut labels = self.labels;
        for text in &self.label {
            let (key, value) = parse_label(text).map_err(|message| ConfigError {
                key: "label",
                message,
            })?;
            labels.insert(key, value);
        }
        let gossip_interval = millis_setting(
            "gossip_interval_ms",
            self.gossip_interval_ms,
            200,
            10..=60_000,
        )?;
        let reconnect_max = millis_setting(
            "reconnect_max_ms",
            self.reconnect_max_ms,
            5_000,
            100..=600_000,
        )?;
        Ok(AgentConfig {
            join: self.join,
            gossip: self.gossip.unwrap_or(([0, 0, 0, 0], 7700).into()),
            advertise: self.advertise,
            token_file: self.token_file,
            ca,
            state_dir: self.state_dir.unwrap_or_else(default_state_dir),
            name,
            labels,
            platform: self.platform,
            cluster: self
                .cluster
                .unwrap_or_else(|| polarizer_shared::membership::DEFAULT_CLUSTER_ID.to_string()),
            gossip_interval,
            reconnect_max,
            spool_max_bytes: match self.spool_max_mb {
                None => 256 << 20,
                Some(mb @ 1..=1_048_576) => mb << 20,
                Some(_) => {
                    return Err(ConfigError {
                        key: "spool_max_mb",
                        message: "must be between 1 and 1048576 (MiB)".into(),
                    })
                }
            },
        })
    }
}

/// `$STATE_DIRECTORY` (systemd), else `~/.local/state/polarizer-agent`.
pub fn default_state_dir() -> PathBuf {
    polarizer_transport::daemon::state_directory_or(".local/state/polarizer-agent")
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_transport::daemon::read_toml;

    fn minimal() -> AgentSettings {
        AgentSettings {
            join: vec!["127.0.0.1:7700".into()],
            ca: Some("/ca.pem".into()),
            name: Some("vm-1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn file_keys_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "join = [\"c:7700\"]\n[labels]\nteam = \"rhsm\"\n").unwrap();
        let settings = read_toml::<AgentSettings>(&path).unwrap();
        assert_eq!(settings.labels["team"], "rhsm");
        std::fs::write(&path, "join = [\"c:7700\"]\nnmae = \"typo\"\n").unwrap();
        let err = read_toml::<AgentSettings>(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("nmae") && err.contains("line 2"),
            "{err}"
        );
        std::fs::write(&path, "platform = \"cloud\"\n").unwrap();
        let err = read_toml::<AgentSettings>(&path).unwrap_err().to_string();
        assert!(err.contains("platform") && err.contains("cloud"), "{err}");
    }

    #[test]
    fn trust_must_be_pinned_and_names_valid() {
        let err = AgentSettings {
            ca: None,
            ..minimal()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("--ca"), "{err}");
        let err = AgentSettings {
            ca: None,
            ca_fingerprint: Some("sha256:12".into()),
            ..minimal()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("ca_fingerprint"), "{err}");
        let err = AgentSettings {
            name: Some("bad name".into()),
            ..minimal()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("name"), "{err}");
        let err = AgentSettings {
            label: vec!["novalue".into()],
            ..minimal()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("label"), "{err}");
        assert!(AgentSettings {
            join: vec![],
            ..minimal()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn flag_labels_merge_over_file_labels() {
        let file = AgentSettings {
            labels: BTreeMap::from([("team".into(), "a".into()), ("rack".into(), "3".into())]),
            ..minimal()
        };
        let flags = AgentSettings {
            label: vec!["team=b".into()],
            ..Default::default()
        };
        let config = flags.or(file).validate().unwrap();
        assert_eq!(config.labels["team"], "b");
        assert_eq!(config.labels["rack"], "3");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        settings: AgentSettings,
    }

    /// config/agent.toml documents every key, and parses as it stands.
    #[test]
    fn the_example_config_names_every_key_and_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings: AgentSettings = polarizer_transport::daemon::read_toml(&path).unwrap();
        settings.validate().unwrap();
        for argument in Flags::command().get_arguments() {
            let key = match argument.get_id().as_str() {
                "label" => "labels".to_string(),
                id => id.to_string(),
            };
            assert!(
                text.lines()
                    .any(|line| line.trim_start_matches(['#', ' ', '[']).starts_with(&key)),
                "config/agent.toml does not document {key}"
            );
        }
    }
}
