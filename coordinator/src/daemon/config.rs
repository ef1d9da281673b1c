//! `polarizer serve` configuration: flags, then `POLARIZER_*` environment variables, then the TOML file
//! given by `--config`, then defaults. Unknown keys and bad values are errors naming the file and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use polarizer_shared::metadata::TestType;
use polarizer_transport::daemon::millis_setting;
use serde::Deserialize;

use crate::core::admission::EnrollMode;

/// A bad setting, naming its key.
pub use polarizer_transport::daemon::InvalidSetting as ConfigError;

/// Every key `coordinator.toml` may hold; each has a flag of the same name (with `-` for `_`).
#[derive(Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Where the database, certificates and tokens live [default: $STATE_DIRECTORY, else ~/.local/share/polarizer]
    #[arg(long, env = "POLARIZER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Gossip (UDP) listen address [default: 0.0.0.0:7700]
    #[arg(long, env = "POLARIZER_GOSSIP")]
    pub gossip: Option<SocketAddr>,
    /// QUIC listen address for agents and operators [default: 0.0.0.0:7701]
    #[arg(long, env = "POLARIZER_QUIC")]
    pub quic: Option<SocketAddr>,
    /// HTTP listen address for /healthz, /metrics, the API and the web view [default: 127.0.0.1:7702]
    #[arg(long, env = "POLARIZER_HTTP")]
    pub http: Option<SocketAddr>,
    /// Serve HTTPS on the HTTP port with this certificate chain (PEM); needs http_key_file [default: plain HTTP]
    #[arg(long, env = "POLARIZER_HTTP_CERT_FILE")]
    pub http_cert_file: Option<PathBuf>,
    /// The key of http_cert_file (PEM, mode 0600)
    #[arg(long, env = "POLARIZER_HTTP_KEY_FILE")]
    pub http_key_file: Option<PathBuf>,
    /// Where browsers reach the HTTP port (a reverse proxy's https://… URL, say), for the links
    /// `polarizer open` prints [default: http://HTTP-ADDRESS]
    #[arg(long, env = "POLARIZER_WEB_URL")]
    pub web_url: Option<String>,
    /// The address other hosts reach this one at, when listening on 0.0.0.0 [default: detected]
    #[arg(long, env = "POLARIZER_ADVERTISE")]
    pub advertise: Option<std::net::IpAddr>,
    /// Gossip seeds to join (HOST:PORT), comma-separated or repeated
    #[arg(long, env = "POLARIZER_JOIN", value_delimiter = ',')]
    #[serde(default)]
    pub join: Vec<String>,
    /// Gossip cluster id; nodes of other clusters are ignored [default: polarizer]
    #[arg(long, env = "POLARIZER_CLUSTER")]
    pub cluster: Option<String>,
    /// Gossip cells this coordinator joins besides the default one, comma-separated or repeated; empty:
    /// any cell its agents name, up to max_cells [default: empty]
    #[arg(long, env = "POLARIZER_CELLS", value_delimiter = ',')]
    #[serde(default)]
    pub cells: Vec<String>,
    /// At most this many gossip cells (the default one included), 1..=4096 [default: 256]
    #[arg(long, env = "POLARIZER_MAX_CELLS")]
    pub max_cells: Option<usize>,
    /// Gossip interval in milliseconds [default: 200]
    #[arg(long, env = "POLARIZER_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// How often agents must send a heartbeat, in milliseconds [default: 500]
    #[arg(long, env = "POLARIZER_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Test types a `--kind commit` trigger runs by default [default: unit,integration]
    #[arg(long, env = "POLARIZER_COMMIT_TYPES", value_delimiter = ',')]
    pub commit_types: Option<Vec<String>>,
    /// Test types a `--kind build` trigger runs by default [default: functional,acceptance,performance]
    #[arg(long, env = "POLARIZER_BUILD_TYPES", value_delimiter = ',')]
    pub build_types: Option<Vec<String>>,
    /// Test types a `--kind manual` trigger runs by default; empty means every type [default: empty]
    #[arg(long, env = "POLARIZER_MANUAL_TYPES", value_delimiter = ',')]
    pub manual_types: Option<Vec<String>>,
    /// Attempts per suite when agents are lost (infrastructure failures), 1..=10 [default: 2]
    #[arg(long, env = "POLARIZER_ATTEMPTS")]
    pub attempts: Option<u32>,
    /// Packages whose versions agents record in each suite's version chain (rpm or dpkg)
    #[arg(long, env = "POLARIZER_PACKAGES", value_delimiter = ',')]
    #[serde(default)]
    pub packages: Vec<String>,
    /// A run still unfinished this many minutes after its trigger ends, its stragglers as timeout [default: 60]
    #[arg(long, env = "POLARIZER_RUN_DEADLINE_MINUTES")]
    pub run_deadline_minutes: Option<u64>,
    /// After a coordinator restart, how long agents holding leases have to reconnect, in milliseconds [default: 10000]
    #[arg(long, env = "POLARIZER_LEASE_GRACE_MS")]
    pub lease_grace_ms: Option<u64>,
    /// Start this many agent processes on this host, next to the coordinator [default: 0]
    #[arg(long, env = "POLARIZER_LOCAL_AGENTS")]
    pub local_agents: Option<u32>,
    /// Keep events this many days [default: 30]
    #[arg(long, env = "POLARIZER_EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<u64>,
    /// Trim the oldest events while the database holds more than this many MiB [default: 1024]
    #[arg(long, env = "POLARIZER_EVENT_RETENTION_MB")]
    pub event_retention_mb: Option<u64>,
    /// How new agents join: `token` (a good enrollment token is enough) or `approve` (they wait as
    /// pending until `polarizer agents approve NAME`) [default: token]
    #[arg(long, env = "POLARIZER_ENROLL")]
    pub enroll: Option<String>,
    /// Largest git bundle (or tar) of a run's tests shipped to an agent, in MiB; a larger one ends the
    /// suite with an error naming this key [default: 1024]
    #[arg(long, env = "POLARIZER_SHIP_MAX_MB")]
    pub ship_max_mb: Option<u64>,
    /// Pace each transfer of tests to an agent at most this many KiB per second; 0 for no limit
    /// [default: 0]
    #[arg(long, env = "POLARIZER_SHIP_RATE_KB_PER_S")]
    pub ship_rate_kb_per_s: Option<u64>,
    /// Pools of platforms made on demand: `[[pools]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub pools: Vec<crate::daemon::pools::config::PoolSettings>,
    /// GitHub webhooks in, commit statuses or check runs out: `[github]` and `[[github.repos]]`, in
    /// the file only.
    #[arg(skip)]
    pub github: Option<Box<crate::daemon::github::config::GithubSettings>>,
    /// Message buses: `[[bus]]` and `[[bus.rules]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub bus: Vec<crate::daemon::bus::config::BusSettings>,
    /// Polarion's importer files: `[polarion]`, in the file only.
    #[arg(skip)]
    pub polarion: Option<Box<crate::daemon::polarion::config::PolarionToml>>,
    /// Failure analysis: `[analysis]`, in the file only.
    #[arg(skip)]
    pub analysis: Option<AnalysisToml>,
}

/// `[analysis]`: failure clustering, quarantine, slow results.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisToml {
    pub enabled: Option<bool>,
    pub slow_factor: Option<f64>,
    pub slow_min_results: Option<usize>,
    #[serde(default)]
    pub quarantine: Vec<String>,
    pub quarantine_flaky: Option<bool>,
    pub release_after: Option<u32>,
}

impl AnalysisToml {
    fn validate(self) -> Result<crate::core::analysis::AnalysisSettings, ConfigError> {
        let defaults = crate::core::analysis::AnalysisSettings::default();
        let slow_factor = self.slow_factor.unwrap_or(defaults.slow_factor);
        if !(slow_factor.is_finite() && (1.0..=100.0).contains(&slow_factor)) {
            return Err(ConfigError {
                key: "analysis.slow_factor",
                message: format!("{slow_factor} is not between 1 and 100"),
            });
        }
        let release_after = self.release_after.unwrap_or(defaults.release_after);
        if !(1..=1000).contains(&release_after) {
            return Err(ConfigError {
                key: "analysis.release_after",
                message: format!("{release_after} is not between 1 and 1000"),
            });
        }
        if let Some(bad) = self.quarantine.iter().find(|name| !name.starts_with('/')) {
            return Err(ConfigError {
                key: "analysis.quarantine",
                message: format!("{bad:?} is not a test name (they start with /)"),
            });
        }
        Ok(crate::core::analysis::AnalysisSettings {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            slow_factor,
            slow_min_results: self
                .slow_min_results
                .unwrap_or(defaults.slow_min_results)
                .max(1),
            quarantine: self.quarantine,
            quarantine_flaky: self.quarantine_flaky.unwrap_or(defaults.quarantine_flaky),
            release_after,
        })
    }
}

/// Limits, from `ship_max_mb` and `ship_rate_kb_per_s`.
#[derive(Clone, Copy, Debug)]
pub struct ShippingConfig {
    /// A bundle or tar larger than this is refused, and the suite ends with that error.
    pub max_bytes: u64,
    /// Per transfer; 0 for no limit.
    pub rate_bytes_per_s: u64,
}

impl Default for ShippingConfig {
    fn default() -> Self {
        ShippingConfig {
            max_bytes: 1024 * 1024 * 1024,
            rate_bytes_per_s: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub gossip: SocketAddr,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    /// `web_url` without a trailing `/`; `None`: the HTTP address as served.
    pub web_url: Option<String>,
    /// HTTPS with this certificate chain and key (files), or plain HTTP.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    pub advertise: Option<std::net::IpAddr>,
    pub join: Vec<String>,
    pub cluster: String,
    pub cells: polarizer_transport::cells::CellsConfig,
    pub gossip_interval: Duration,
    pub heartbeat_interval: Duration,
    pub runs: RunsConfig,
    pub local_agents: u32,
    pub event_retention: Duration,
    pub event_retention_bytes: u64,
    pub enroll: EnrollMode,
    pub shipping: ShippingConfig,
    pub pools: Vec<crate::daemon::pools::config::PoolConfig>,
    pub github: Option<crate::daemon::github::config::GithubConfig>,
    pub polarion: Option<crate::daemon::polarion::config::PolarionConfig>,
    pub analysis: crate::core::analysis::AnalysisSettings,
    pub buses: crate::daemon::bus::config::BusesConfig,
}

/// How runs are planned and retried.
#[derive(Clone, Debug)]
pub struct RunsConfig {
    pub commit_types: Vec<TestType>,
    pub build_types: Vec<TestType>,
    pub manual_types: Vec<TestType>,
    pub attempts: u32,
    pub packages: Vec<String>,
    pub run_deadline: Duration,
    pub lease_grace: Duration,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            commit_types: vec![TestType::Unit, TestType::Integration],
            build_types: vec![
                TestType::Functional,
                TestType::Acceptance,
                TestType::Performance,
            ],
            manual_types: Vec::new(),
            attempts: 2,
            packages: Vec::new(),
            run_deadline: Duration::from_secs(3600),
            lease_grace: Duration::from_secs(10),
        }
    }
}

impl RunsConfig {
    pub fn default_types(&self, kind: polarizer_shared::run::TriggerKind) -> &[TestType] {
        match kind {
            polarizer_shared::run::TriggerKind::Commit => &self.commit_types,
            polarizer_shared::run::TriggerKind::Build => &self.build_types,
            polarizer_shared::run::TriggerKind::Manual => &self.manual_types,
        }
    }
}

fn test_types(
    key: &'static str,
    given: Option<Vec<String>>,
    default: Vec<TestType>,
) -> Result<Vec<TestType>, ConfigError> {
    let Some(given) = given else {
        return Ok(default);
    };
    given
        .iter()
        .filter(|text| !text.is_empty())
        .map(|text| {
            TestType::parse(text).ok_or_else(|| ConfigError {
                key,
                message: format!(
                    "{text:?} is not a test type (unit, integration, functional, performance, acceptance)"
                ),
            })
        })
        .collect()
}

impl ServeSettings {
    /// Fills every key this one leaves unset from `lower` (flags over file).
    pub fn or(self, lower: ServeSettings) -> ServeSettings {
        ServeSettings {
            data_dir: self.data_dir.or(lower.data_dir),
            gossip: self.gossip.or(lower.gossip),
            quic: self.quic.or(lower.quic),
            http: self.http.or(lower.http),
            web_url: self.web_url.or(lower.web_url),
            http_cert_file: self.http_cert_file.or(lower.http_cert_file),
            http_key_file: self.http_key_file.or(lower.http_key_file),
            advertise: self.advertise.or(lower.advertise),
            join: if self.join.is_empty() {
                lower.join
            } else {
                self.join
            },
            cluster: self.cluster.or(lower.cluster),
            cells: if self.cells.is_empty() {
                lower.cells
            } else {
                self.cells
            },
            max_cells: self.max_cells.or(lower.max_cells),
            gossip_interval_ms: self.gossip_interval_ms.or(lower.gossip_interval_ms),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(lower.heartbeat_interval_ms),
            commit_types: self.commit_types.or(lower.commit_types),
            build_types: self.build_types.or(lower.build_types),
            manual_types: self.manual_types.or(lower.manual_types),
            attempts: self.attempts.or(lower.attempts),
            packages: if self.packages.is_empty() {
                lower.packages
            } else {
                self.packages
            },
            run_deadline_minutes: self.run_deadline_minutes.or(lower.run_deadline_minutes),
            lease_grace_ms: self.lease_grace_ms.or(lower.lease_grace_ms),
            local_agents: self.local_agents.or(lower.local_agents),
            event_retention_days: self.event_retention_days.or(lower.event_retention_days),
            event_retention_mb: self.event_retention_mb.or(lower.event_retention_mb),
            enroll: self.enroll.or(lower.enroll),
            ship_max_mb: self.ship_max_mb.or(lower.ship_max_mb),
            ship_rate_kb_per_s: self.ship_rate_kb_per_s.or(lower.ship_rate_kb_per_s),
            pools: if self.pools.is_empty() {
                lower.pools
            } else {
                self.pools
            },
            github: self.github.or(lower.github),
            bus: if self.bus.is_empty() {
                lower.bus
            } else {
                self.bus
            },
            polarion: self.polarion.or(lower.polarion),
            analysis: self.analysis.or(lower.analysis),
        }
    }

    pub fn validate(self) -> Result<ServeConfig, ConfigError> {
        let gossip_interval = millis_setting(
            "gossip_interval_ms",
            self.gossip_interval_ms,
            200,
            10..=60_000,
        )?;
        let heartbeat_interval = millis_setting(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            500,
            50..=60_000,
        )?;
        let cluster = self
            .cluster
            .unwrap_or_else(|| polarizer_shared::membership::DEFAULT_CLUSTER_ID.to_string());
        if cluster.is_empty() {
            return Err(ConfigError {
                key: "cluster",
                message: "must not be empty".into(),
            });
        }
        for cell in &self.cells {
            polarizer_shared::membership::check_cell_name(cell).map_err(|message| ConfigError {
                key: "cells",
                message,
            })?;
        }
        let max_cells = self.max_cells.unwrap_or(256);
        if !(1..=4096).contains(&max_cells) {
            return Err(ConfigError {
                key: "max_cells",
                message: format!("{max_cells} is not between 1 and 4096"),
            });
        }
        let cells = polarizer_transport::cells::CellsConfig {
            allowed: self.cells.clone(),
            max: max_cells,
        };
        let defaults = RunsConfig::default();
        let attempts = self.attempts.unwrap_or(defaults.attempts);
        if !(1..=10).contains(&attempts) {
            return Err(ConfigError {
                key: "attempts",
                message: format!("{attempts} is not between 1 and 10"),
            });
        }
        let run_deadline_minutes = self.run_deadline_minutes.unwrap_or(60);
        if !(1..=10_080).contains(&run_deadline_minutes) {
            return Err(ConfigError {
                key: "run_deadline_minutes",
                message: format!("{run_deadline_minutes} is not between 1 and 10080 (a week)"),
            });
        }
        let runs = RunsConfig {
            commit_types: test_types("commit_types", self.commit_types, defaults.commit_types)?,
            build_types: test_types("build_types", self.build_types, defaults.build_types)?,
            manual_types: test_types("manual_types", self.manual_types, defaults.manual_types)?,
            attempts,
            packages: self.packages,
            run_deadline: Duration::from_secs(run_deadline_minutes * 60),
            lease_grace: millis_setting(
                "lease_grace_ms",
                self.lease_grace_ms,
                10_000,
                0..=600_000,
            )?,
        };
        let local_agents = self.local_agents.unwrap_or(0);
        if local_agents > 64 {
            return Err(ConfigError {
                key: "local_agents",
                message: format!("{local_agents} is more than 64"),
            });
        }
        let retention_days = self.event_retention_days.unwrap_or(30);
        if !(1..=3650).contains(&retention_days) {
            return Err(ConfigError {
                key: "event_retention_days",
                message: format!("{retention_days} is not between 1 and 3650"),
            });
        }
        let retention_mb = self.event_retention_mb.unwrap_or(1024);
        if !(16..=1_048_576).contains(&retention_mb) {
            return Err(ConfigError {
                key: "event_retention_mb",
                message: format!("{retention_mb} is not between 16 and 1048576"),
            });
        }
        let enroll = match self.enroll.as_deref() {
            None => EnrollMode::default(),
            Some(text) => EnrollMode::parse(text).map_err(|message| ConfigError {
                key: "enroll",
                message,
            })?,
        };
        let ship_max_mb = self.ship_max_mb.unwrap_or(1024);
        if !(1..=1_048_576).contains(&ship_max_mb) {
            return Err(ConfigError {
                key: "ship_max_mb",
                message: format!("{ship_max_mb} is not between 1 and 1048576"),
            });
        }
        let shipping = ShippingConfig {
            max_bytes: ship_max_mb << 20,
            rate_bytes_per_s: self.ship_rate_kb_per_s.unwrap_or(0).saturating_mul(1024),
        };
        let http_tls = match (self.http_cert_file, self.http_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                // Checked now, so `--check-config` and a start say what is wrong with them.
                crate::daemon::http_tls::server_config(&cert, &key).map_err(|message| {
                    ConfigError {
                        key: "http_cert_file",
                        message,
                    }
                })?;
                Some((cert, key))
            }
            (Some(_), None) => {
                return Err(ConfigError {
                    key: "http_key_file",
                    message: "http_cert_file needs http_key_file (the certificate's key)".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    key: "http_cert_file",
                    message: "http_key_file needs http_cert_file (the certificate)".into(),
                })
            }
        };
        let web_url = match self.web_url {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim_end_matches('/').to_string())
            }
            Some(url) => {
                return Err(ConfigError {
                    key: "web_url",
                    message: format!("{url:?} is not an http:// or https:// URL"),
                })
            }
        };
        let pools = crate::daemon::pools::config::validate_pools(self.pools)?;
        let github = self
            .github
            .map(|settings| crate::daemon::github::config::validate(*settings))
            .transpose()?;
        let polarion = self
            .polarion
            .map(|settings| crate::daemon::polarion::config::validate(*settings))
            .transpose()?;
        let analysis = self.analysis.unwrap_or_default().validate()?;
        let buses = crate::daemon::bus::config::validate(self.bus)?;
        Ok(ServeConfig {
            buses,
            analysis,
            pools,
            github,
            polarion,
            enroll,
            shipping,
            runs,
            local_agents,
            event_retention: Duration::from_secs(retention_days * 86_400),
            event_retention_bytes: retention_mb << 20,
            data_dir: self
                .data_dir
                .unwrap_or_else(crate::data_dir::default_data_dir),
            gossip: self.gossip.unwrap_or(([0, 0, 0, 0], 7700).into()),
            quic: self.quic.unwrap_or(([0, 0, 0, 0], 7701).into()),
            http: self.http.unwrap_or(([127, 0, 0, 1], 7702).into()),
            web_url,
            http_tls,
            advertise: self.advertise,
            join: self.join,
            cluster,
            cells,
            gossip_interval,
            heartbeat_interval,
        })
    }
}

impl ServeConfig {
    /// Loopback on ephemeral ports, fast gossip: for tests.
    pub fn for_test(data_dir: &Path) -> ServeConfig {
        ServeConfig {
            data_dir: data_dir.to_path_buf(),
            gossip: ([127, 0, 0, 1], 0).into(),
            quic: ([127, 0, 0, 1], 0).into(),
            http: ([127, 0, 0, 1], 0).into(),
            web_url: None,
            http_tls: None,
            advertise: None,
            join: Vec::new(),
            cluster: polarizer_shared::membership::DEFAULT_CLUSTER_ID.to_string(),
            cells: Default::default(),
            gossip_interval: Duration::from_millis(100),
            heartbeat_interval: Duration::from_millis(200),
            runs: RunsConfig::default(),
            local_agents: 0,
            event_retention: Duration::from_secs(30 * 86_400),
            event_retention_bytes: 1 << 30,
            enroll: EnrollMode::Token,
            shipping: ShippingConfig::default(),
            pools: Vec::new(),
            github: None,
            polarion: None,
            buses: Default::default(),
            analysis: crate::core::analysis::AnalysisSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_transport::daemon::read_toml;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let (_dir, path) = write("quic = \"127.0.0.1:1\"\nbogus = 1\n");
        let err = read_toml::<ServeSettings>(&path).unwrap_err().to_string();
        assert!(
            err.contains("coordinator.toml") && err.contains("bogus") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let (_dir, path) = write("\nquic = \"not an address\"\n");
        let err = read_toml::<ServeSettings>(&path).unwrap_err().to_string();
        assert!(err.contains("quic") && err.contains("line 2"), "{err}");
        let err = ServeSettings {
            gossip_interval_ms: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("gossip_interval_ms"), "{err}");
        let err = ServeSettings {
            enroll: Some("auto".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("enroll") && err.contains("token or approve"),
            "{err}"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let (_dir, path) = write("quic = \"127.0.0.1:1\"\nhttp = \"127.0.0.1:2\"\n");
        let file = read_toml::<ServeSettings>(&path).unwrap();
        let flags = ServeSettings {
            quic: Some("127.0.0.1:9".parse().unwrap()),
            ..Default::default()
        };
        let config = flags.or(file).validate().unwrap();
        assert_eq!(config.quic.port(), 9);
        assert_eq!(config.http.port(), 2);
        assert_eq!(config.gossip.port(), 7700);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        settings: ServeSettings,
    }

    /// `[analysis]`: a bad value names its key, an unknown key its file and line.
    #[test]
    fn analysis_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, "[analysis]\nslow_factor = 0.5\n").unwrap();
        let settings: ServeSettings = polarizer_transport::daemon::read_toml(&path).unwrap();
        let error = settings.validate().unwrap_err();
        assert_eq!(error.key, "analysis.slow_factor");
        std::fs::write(&path, "[analysis]\nquarantine = [\"tests/x\"]\n").unwrap();
        let settings: ServeSettings = polarizer_transport::daemon::read_toml(&path).unwrap();
        assert_eq!(settings.validate().unwrap_err().key, "analysis.quarantine");
        std::fs::write(&path, "[analysis]\nquarantine_flakey = true\n").unwrap();
        let error = polarizer_transport::daemon::read_toml::<ServeSettings>(&path)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("coordinator.toml") && error.contains("quarantine_flakey"),
            "{error}"
        );
        std::fs::write(
            &path,
            "[analysis]\nquarantine_flaky = true\nrelease_after = 3\n",
        )
        .unwrap();
        let settings: ServeSettings = polarizer_transport::daemon::read_toml(&path).unwrap();
        let config = settings.validate().unwrap();
        assert!(config.analysis.quarantine_flaky && config.analysis.enabled);
        assert_eq!(config.analysis.release_after, 3);
    }

    /// config/coordinator.toml documents every key, and parses as it stands.
    #[test]
    fn the_example_config_names_every_key_and_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/coordinator.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings: ServeSettings = polarizer_transport::daemon::read_toml(&path).unwrap();
        settings.validate().unwrap();
        for argument in Flags::command().get_arguments() {
            let key = argument.get_id().as_str();
            assert!(
                text.lines()
                    .any(|line| line.trim_start_matches(['#', ' ']).starts_with(key)),
                "config/coordinator.toml does not document {key}"
            );
        }
    }
}
