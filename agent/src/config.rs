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

/// The running test's time to finish after the first SIGTERM: 10 min, so that with the kill, the cleanups
/// and the last acknowledgements it stays within the unit's `TimeoutStopSec=15min`.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 600_000;

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
    /// The gossip cell this agent joins (its site, rack or pool: `brno-lab`): agents gossip only with
    /// their cell and the coordinator, so gossip does not grow with the whole fleet. Same seeds as
    /// without; letters, digits, `-`, `_`, `.` [default: none, the cluster's one cell]
    #[arg(long, env = "POLARIZER_CELL")]
    pub cell: Option<String>,
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
    /// After the first SIGTERM, how long the running test may take to finish before it is stopped, in
    /// milliseconds [default: 600000]
    #[arg(long, env = "POLARIZER_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// The same as a duration: 90s, 10m, 1h 30m (give this or drain_timeout_ms, not both)
    #[arg(long, env = "POLARIZER_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// D-Bus signals to record: system, session, a bus address, or off [default: system, when its socket exists]
    #[arg(long, env = "POLARIZER_DBUS_ADDRESS")]
    pub dbus_address: Option<String>,
    /// A D-Bus match rule (repeatable) [default: type='signal', every signal]
    #[arg(long, env = "POLARIZER_DBUS_MATCH")]
    pub dbus_match: Option<Vec<String>>,
    /// A path whose file changes to record (repeatable) [default: none]
    #[arg(long, env = "POLARIZER_WATCH", value_delimiter = ',')]
    #[serde(default)]
    pub watch: Vec<PathBuf>,
    /// Watch directories recursively [default: true]
    #[arg(long, env = "POLARIZER_WATCH_RECURSIVE")]
    pub watch_recursive: Option<bool>,
    /// Record only changed paths matching one of these globs (repeatable) [default: all]
    #[arg(long, env = "POLARIZER_WATCH_INCLUDE")]
    #[serde(default)]
    pub watch_include: Vec<String>,
    /// Never record changed paths matching these globs (repeatable)
    #[arg(long, env = "POLARIZER_WATCH_EXCLUDE")]
    #[serde(default)]
    pub watch_exclude: Vec<String>,
    /// Quiet time before a burst of changes to one file is recorded, in milliseconds [default: 200]
    #[arg(long, env = "POLARIZER_WATCH_DEBOUNCE_MS")]
    pub watch_debounce_ms: Option<u64>,
    /// The RPM database to record package changes of, or off [default: /var/lib/rpm or /usr/lib/sysimage/rpm, if present]
    #[arg(long, env = "POLARIZER_RPM_DBPATH")]
    pub rpm_dbpath: Option<PathBuf>,
    /// The dpkg status file to record package changes of, or off [default: /var/lib/dpkg/status, if present]
    #[arg(long, env = "POLARIZER_DPKG_STATUS")]
    pub dpkg_status: Option<PathBuf>,
    /// The Unix socket (mode 0660) for custom events from `polarizer-agent emit`, or off [default: STATE_DIR/emit.sock]
    #[arg(long, env = "POLARIZER_EMIT_SOCKET")]
    pub emit_socket: Option<PathBuf>,
    /// A loopback address (127.0.0.1:7703) where a web app under test sends custom events over a
    /// WebSocket, as on the emit socket: the browser bridge (clients/js) [default: off]
    #[arg(long, env = "POLARIZER_EMIT_WEBSOCKET")]
    pub emit_websocket: Option<std::net::SocketAddr>,
    /// Fetch a run's tests from their git URL directly when this host can reach it (and holds any
    /// credentials it needs), rather than have the coordinator ship them; shipping remains the fallback
    /// [default: false]
    #[arg(long, env = "POLARIZER_FETCH_TESTS_DIRECTLY")]
    pub fetch_tests_directly: Option<bool>,
    /// Largest cache of shipped tests (git repositories, tars) in MiB; the least recently used commits
    /// go first [default: 4096]
    #[arg(long, env = "POLARIZER_TEST_CACHE_MAX_MB")]
    pub test_cache_max_mb: Option<u64>,
}

/// Collectors of live events; `None` is off.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    pub dbus_address: Option<String>,
    pub dbus_match: Vec<String>,
    pub watch: Vec<PathBuf>,
    pub watch_recursive: bool,
    pub watch_include: Vec<String>,
    pub watch_exclude: Vec<String>,
    pub watch_debounce: Duration,
    pub rpm_dbpath: Option<PathBuf>,
    pub dpkg_status: Option<PathBuf>,
    pub emit_socket: Option<PathBuf>,
    /// The browser bridge's WebSocket address: loopback only.
    pub emit_websocket: Option<std::net::SocketAddr>,
}

fn off_or<T>(
    value: Option<T>,
    is_off: impl Fn(&T) -> bool,
    default: impl FnOnce() -> Option<T>,
) -> Option<T> {
    match value {
        Some(value) if is_off(&value) => None,
        Some(value) => Some(value),
        None => default(),
    }
}

fn is_off(path: &std::path::Path) -> bool {
    path.as_os_str() == "off"
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
    /// Empty: the default cell.
    pub cell: String,
    pub gossip_interval: Duration,
    pub reconnect_max: Duration,
    pub spool_max_bytes: u64,
    /// From the first SIGTERM: the running test's time to finish before it is stopped.
    pub drain_timeout: Duration,
    pub events: EventsConfig,
    pub fetch_tests_directly: bool,
    pub test_cache_max_bytes: u64,
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
            cell: self.cell.or(lower.cell),
            gossip_interval_ms: self.gossip_interval_ms.or(lower.gossip_interval_ms),
            reconnect_max_ms: self.reconnect_max_ms.or(lower.reconnect_max_ms),
            spool_max_mb: self.spool_max_mb.or(lower.spool_max_mb),
            drain_timeout_ms: self.drain_timeout_ms.or(lower.drain_timeout_ms),
            drain_timeout: self.drain_timeout.or(lower.drain_timeout),
            dbus_address: self.dbus_address.or(lower.dbus_address),
            dbus_match: self.dbus_match.or(lower.dbus_match),
            watch: if self.watch.is_empty() {
                lower.watch
            } else {
                self.watch
            },
            watch_recursive: self.watch_recursive.or(lower.watch_recursive),
            watch_include: if self.watch_include.is_empty() {
                lower.watch_include
            } else {
                self.watch_include
            },
            watch_exclude: if self.watch_exclude.is_empty() {
                lower.watch_exclude
            } else {
                self.watch_exclude
            },
            watch_debounce_ms: self.watch_debounce_ms.or(lower.watch_debounce_ms),
            rpm_dbpath: self.rpm_dbpath.or(lower.rpm_dbpath),
            dpkg_status: self.dpkg_status.or(lower.dpkg_status),
            emit_socket: self.emit_socket.or(lower.emit_socket),
            emit_websocket: self.emit_websocket.or(lower.emit_websocket),
            fetch_tests_directly: self.fetch_tests_directly.or(lower.fetch_tests_directly),
            test_cache_max_mb: self.test_cache_max_mb.or(lower.test_cache_max_mb),
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
        let cell = self.cell.clone().unwrap_or_default();
        if !cell.is_empty() {
            polarizer_shared::membership::check_cell_name(&cell).map_err(|message| {
                ConfigError {
                    key: "cell",
                    message,
                }
            })?;
        }
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
        let drain_timeout_ms = match (self.drain_timeout.as_deref(), self.drain_timeout_ms) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    key: "drain_timeout",
                    message: "give drain_timeout or drain_timeout_ms, not both".into(),
                })
            }
            (Some(text), None) => Some(
                polarizer_shared::metadata::parse_duration_seconds(text)
                    .map(|seconds| seconds.saturating_mul(1000))
                    .ok_or_else(|| ConfigError {
                        key: "drain_timeout",
                        message: format!("{text:?} is not a duration such as 90s, 10m or 1h 30m"),
                    })?,
            ),
            (None, milliseconds) => milliseconds,
        };
        let drain_timeout = millis_setting(
            "drain_timeout_ms",
            drain_timeout_ms,
            DEFAULT_DRAIN_TIMEOUT_MS,
            0..=86_400_000,
        )?;
        let state_dir = self.state_dir.unwrap_or_else(default_state_dir);
        let events = EventsConfig {
            dbus_address: off_or(
                self.dbus_address,
                |address| address == "off",
                || {
                    std::path::Path::new("/run/dbus/system_bus_socket")
                        .exists()
                        .then(|| "system".to_string())
                },
            ),
            dbus_match: self.dbus_match.unwrap_or_default(),
            watch: self.watch,
            watch_recursive: self.watch_recursive.unwrap_or(true),
            watch_include: crate::collectors::files::checked_globs(
                "watch_include",
                self.watch_include,
            )?,
            watch_exclude: crate::collectors::files::checked_globs(
                "watch_exclude",
                self.watch_exclude,
            )?,
            watch_debounce: millis_setting(
                "watch_debounce_ms",
                self.watch_debounce_ms,
                200,
                0..=60_000,
            )?,
            rpm_dbpath: off_or(
                self.rpm_dbpath,
                |path: &PathBuf| is_off(path),
                crate::collectors::packages::detect_rpm_dbpath,
            ),
            dpkg_status: off_or(
                self.dpkg_status,
                |path: &PathBuf| is_off(path),
                || {
                    let status = PathBuf::from("/var/lib/dpkg/status");
                    status.exists().then_some(status)
                },
            ),
            emit_socket: off_or(
                self.emit_socket,
                |path: &PathBuf| is_off(path),
                || Some(state_dir.join("emit.sock")),
            ),
            emit_websocket: match self.emit_websocket {
                Some(address) if !address.ip().is_loopback() => {
                    return Err(ConfigError {
                        key: "emit_websocket",
                        message: format!(
                            "{address} is not a loopback address: the bridge takes events from this host only (127.0.0.1:7703)"
                        ),
                    })
                }
                address => address,
            },
        };
        let test_cache_max_mb = self.test_cache_max_mb.unwrap_or(4096);
        if !(16..=16_777_216).contains(&test_cache_max_mb) {
            return Err(ConfigError {
                key: "test_cache_max_mb",
                message: format!("{test_cache_max_mb} is not between 16 and 16777216"),
            });
        }
        Ok(AgentConfig {
            events,
            fetch_tests_directly: self.fetch_tests_directly.unwrap_or(false),
            test_cache_max_bytes: test_cache_max_mb << 20,
            join: self.join,
            gossip: self.gossip.unwrap_or(([0, 0, 0, 0], 7700).into()),
            advertise: self.advertise,
            token_file: self.token_file,
            ca,
            state_dir,
            name,
            labels,
            platform: self.platform,
            cluster: self
                .cluster
                .unwrap_or_else(|| polarizer_shared::membership::DEFAULT_CLUSTER_ID.to_string()),
            cell,
            gossip_interval,
            reconnect_max,
            drain_timeout,
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
        let err = AgentSettings {
            cell: Some("brno lab".into()),
            ..minimal()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("cell") && err.contains("brno lab"), "{err}");
        assert!(AgentSettings {
            join: vec![],
            ..minimal()
        }
        .validate()
        .is_err());
    }

    /// systemd gives a stopping agent more than its default drain, with minutes left for the kill, the
    /// cleanups and the last acknowledgements, and signals only the agent: otherwise the tests it drains
    /// would be killed under it.
    #[test]
    fn the_browser_bridge_listens_on_loopback_only() {
        let bridge = |address: &str| {
            AgentSettings {
                emit_websocket: Some(address.parse().unwrap()),
                ..minimal()
            }
            .validate()
            .map(|config| config.events.emit_websocket)
        };
        assert_eq!(
            bridge("127.0.0.1:7703").unwrap(),
            Some("127.0.0.1:7703".parse().unwrap())
        );
        assert!(bridge("[::1]:7703").is_ok());
        let err = bridge("0.0.0.0:7703").unwrap_err().to_string();
        assert!(
            err.contains("emit_websocket") && err.contains("loopback"),
            "{err}"
        );
        assert_eq!(minimal().validate().unwrap().events.emit_websocket, None);
    }

    #[test]
    fn the_drain_timeout_is_given_in_milliseconds_or_as_a_duration_never_both() {
        let validate =
            |settings: AgentSettings| settings.validate().map(|config| config.drain_timeout);
        let base = minimal;
        let as_duration = AgentSettings {
            drain_timeout: Some("1h 30m".into()),
            ..base()
        };
        assert_eq!(validate(as_duration).unwrap(), Duration::from_secs(5400));
        let in_ms = AgentSettings {
            drain_timeout_ms: Some(1500),
            ..base()
        };
        assert_eq!(validate(in_ms).unwrap(), Duration::from_millis(1500));
        let both = AgentSettings {
            drain_timeout: Some("5m".into()),
            drain_timeout_ms: Some(1),
            ..base()
        };
        assert!(validate(both).unwrap_err().to_string().contains("not both"));
        let bad = AgentSettings {
            drain_timeout: Some("soon".into()),
            ..base()
        };
        assert!(validate(bad)
            .unwrap_err()
            .to_string()
            .contains("drain_timeout"));
    }

    #[test]
    fn the_unit_lets_the_default_drain_finish() {
        let unit = include_str!("../../systemd/polarizer-agent.service");
        let setting = |key: &str| {
            unit.lines()
                .find_map(|line| line.trim().strip_prefix(key))
                .unwrap_or_else(|| panic!("systemd/polarizer-agent.service sets no {key}"))
        };
        let timeout = setting("TimeoutStopSec=");
        let stop_seconds: u64 = match timeout.strip_suffix("min") {
            Some(minutes) => minutes.parse::<u64>().unwrap() * 60,
            None => timeout.trim_end_matches('s').parse().unwrap(),
        };
        let after_drain = Duration::from_secs(stop_seconds)
            .checked_sub(Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS));
        assert!(
            after_drain.is_some_and(|left| left >= Duration::from_secs(4 * 60)),
            "TimeoutStopSec={timeout} leaves less than 4 min after the default drain"
        );
        assert_eq!(setting("KillMode="), "mixed");
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
