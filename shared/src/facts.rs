//! What an agent says about the platform it runs on: sent in its hello and again whenever it changes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of machine a test platform is. Tests ask for one in their `platform.kind` metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformKind {
    Vm,
    Container,
    Baremetal,
}

impl PlatformKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformKind::Vm => "vm",
            PlatformKind::Container => "container",
            PlatformKind::Baremetal => "baremetal",
        }
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown platform kind {0:?}: expected vm, container or baremetal")]
pub struct UnknownPlatformKind(pub String);

impl FromStr for PlatformKind {
    type Err = UnknownPlatformKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "vm" => Ok(PlatformKind::Vm),
            "container" => Ok(PlatformKind::Container),
            "baremetal" => Ok(PlatformKind::Baremetal),
            other => Err(UnknownPlatformKind(other.to_string())),
        }
    }
}

/// Facts about one agent's platform. Field order is part of the wire format: append, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFacts {
    pub name: String,
    pub hostname: String,
    /// Operating system family as the kernel reports it, e.g. `linux`.
    pub os: String,
    /// `ID` from /etc/os-release, e.g. `rhel`, `fedora`, `debian`.
    pub distro_id: String,
    /// `VERSION_ID` from /etc/os-release, e.g. `9.4`.
    pub distro_version: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
    pub platform: PlatformKind,
}

impl AgentFacts {
    /// `distro_id-distro_version`, the form fmf adjust rules and `platform.distro` use (`rhel-9.4`).
    pub fn distro(&self) -> String {
        if self.distro_version.is_empty() {
            self.distro_id.clone()
        } else {
            format!("{}-{}", self.distro_id, self.distro_version)
        }
    }

    pub fn for_test(name: &str) -> Self {
        AgentFacts {
            name: name.to_string(),
            hostname: "localhost".to_string(),
            os: "linux".to_string(),
            distro_id: "fedora".to_string(),
            distro_version: "41".to_string(),
            kernel: "6.11.0".to_string(),
            arch: "x86_64".to_string(),
            cpus: 2,
            memory_bytes: 4 << 30,
            agent_version: "0.1.0".to_string(),
            labels: BTreeMap::from([("team".to_string(), "rhsm".to_string())]),
            platform: PlatformKind::Vm,
        }
    }
}

/// Checks an agent name: it names the agent in the inventory, in gossip and on the command line.
pub fn validate_agent_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "agent name {name:?} must be 1 to 64 characters long"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.chars().all(allowed) || name.starts_with(['-', '.']) {
        return Err(format!(
            "agent name {name:?} may hold only letters, digits, '-', '_' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

/// Parses a `key=value` label as given on the command line.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("label {text:?} must be key=value"));
    };
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(format!("label key {key:?} must be non-empty and hold only letters, digits, '-', '_', '.' and '/'"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_kind_round_trips_through_text() {
        for kind in [
            PlatformKind::Vm,
            PlatformKind::Container,
            PlatformKind::Baremetal,
        ] {
            assert_eq!(kind.as_str().parse::<PlatformKind>().unwrap(), kind);
        }
        assert!("cloud".parse::<PlatformKind>().is_err());
    }

    #[test]
    fn agent_names_are_checked() {
        assert!(validate_agent_name("vm-1").is_ok());
        assert!(validate_agent_name("").is_err());
        assert!(validate_agent_name("-x").is_err());
        assert!(validate_agent_name("a b").is_err());
        assert!(validate_agent_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn labels_need_key_and_value() {
        assert_eq!(
            parse_label("team=rhsm").unwrap(),
            ("team".into(), "rhsm".into())
        );
        assert_eq!(
            parse_label("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        assert!(parse_label("noequals").is_err());
        assert!(parse_label("=v").is_err());
    }

    #[test]
    fn distro_joins_id_and_version() {
        let mut facts = AgentFacts::for_test("a");
        assert_eq!(facts.distro(), "fedora-41");
        facts.distro_version.clear();
        assert_eq!(facts.distro(), "fedora");
    }
}
