//! `[[bus]]` and `[[bus.rules]]` of the coordinator's file, checked: every error names its bus and key.
//!
//! Rules are written under a `[[bus]]` table (TOML puts `[[bus.rules]]` in the bus above it) but match
//! build messages of every bus, unless a rule names one with `bus = "NAME"`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use polarizer_shared::run::TriggerKind;
use polarizer_transport::daemon::InvalidSetting as ConfigError;
use serde::Deserialize;

use crate::core::bus::{Contact, Match};

/// One `[[bus]]` table as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    pub name: Option<String>,
    /// `amqp091` (RabbitMQ, Fedora Messaging) or `amqp1` (UMB); `stomp` is refused for now.
    pub protocol: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// AMQP 1.0: the address consumed from (UMB: `queue://Consumer.<client>.<name>.VirtualTopic.…`).
    pub subscription: Option<String>,
    /// AMQP 1.0: where a CI message of `{topic}` is sent [default: `topic://{topic}`, ActiveMQ's and
    /// Artemis' form; RabbitMQ's AMQP 1.0 plugin takes `/topic/{topic}`].
    pub publish_address: Option<String>,
    /// AMQP 0-9-1: the exchange the queue is bound to [default: amq.topic].
    pub exchange: Option<String>,
    /// AMQP 0-9-1: the durable queue consumed from, bound to each of `topics`.
    pub queue: Option<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    /// Where CI messages go: `<publish_prefix>.<artifact type>.test.<state>`; none: nothing published.
    pub publish_prefix: Option<String>,
    /// Messages taken before one is acknowledged [default: 25].
    pub prefetch: Option<u16>,
    /// CI messages' `test.namespace` start [default: polarizer]: `<namespace>.<artifact type>`.
    pub namespace: Option<String>,
    pub contact: Option<Contact>,
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
}

/// One `[[bus.rules]]` table as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    #[serde(rename = "match", default)]
    pub matching: MatchSettings,
    pub tests: Option<String>,
    pub tests_ref: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    /// CI messages' `test.type` and pipeline name [default: polarizer].
    pub name: Option<String>,
    /// Only messages of this bus [default: every bus].
    pub bus: Option<String>,
    /// A tmt plan of the tests' tree: only what it selects.
    pub plan: Option<String>,
    #[serde(default)]
    pub test_types: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSettings {
    pub package: Option<String>,
    pub tag: Option<String>,
    pub owner: Option<String>,
    pub instance: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Amqp091,
    Amqp1,
}

/// The client certificate and the broker's CA, read when the configuration is.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Option<String>,
    /// The client key (read from a 0600 file; never logged).
    pub key_pem: Option<String>,
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsFiles")
            .field("cert", &self.cert_pem.is_some())
            .field("key", &self.key_pem.as_ref().map(|_| "<secret>"))
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// A bus, checked.
#[derive(Clone, Debug)]
pub struct BusConfig {
    pub name: String,
    pub protocol: Protocol,
    pub urls: Vec<String>,
    pub tls: TlsFiles,
    pub exchange: String,
    pub queue: String,
    pub topics: Vec<String>,
    pub subscription: String,
    pub publish_address: String,
    pub publish_prefix: Option<String>,
    pub prefetch: u16,
    pub namespace: String,
    pub contact: Contact,
}

/// A rule, checked.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub bus: Option<String>,
    pub matching: Match,
    pub tests: String,
    pub tests_ref: String,
    pub kind: TriggerKind,
    pub context: Vec<(String, String)>,
    pub plan: String,
    pub test_types: Vec<String>,
}

/// Every bus and every rule.
#[derive(Clone, Debug, Default)]
pub struct BusesConfig {
    pub buses: Vec<BusConfig>,
    pub rules: Vec<Rule>,
}

fn bad(key: &'static str, bus: &str, message: String) -> ConfigError {
    ConfigError {
        key,
        message: format!("bus {bus:?}: {message}"),
    }
}

fn file(
    key: &'static str,
    bus: &str,
    path: Option<&PathBuf>,
    private: bool,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let text = if private {
        polarizer_transport::state_files::read_private(path)
            .map_err(|err| bad(key, bus, err.to_string()))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|err| bad(key, bus, format!("{}: {err}", path.display())))?
    };
    if !text.contains("-----BEGIN ") {
        return Err(bad(
            key,
            bus,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(Some(text))
}

fn validate_bus(settings: BusSettings, names: &[String]) -> Result<BusConfig, ConfigError> {
    let name = settings.name.unwrap_or_default();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(bad(
            "bus.name",
            &name,
            "give each bus a name of letters, digits, - and _ (up to 64)".into(),
        ));
    }
    if names.contains(&name) {
        return Err(bad("bus.name", &name, "two buses have this name".into()));
    }
    let protocol = match settings.protocol.as_deref() {
        Some("amqp091") => Protocol::Amqp091,
        Some("amqp1") => Protocol::Amqp1,
        Some(other @ "stomp") => {
            return Err(bad(
                "bus.protocol",
                &name,
                format!("{other:?} is not supported yet (amqp091 and amqp1 are)"),
            ))
        }
        Some(other) => {
            return Err(bad(
                "bus.protocol",
                &name,
                format!("{other:?} is not one of amqp091, amqp1, stomp"),
            ))
        }
        None => return Err(bad("bus.protocol", &name, "missing".into())),
    };
    if settings.urls.is_empty() {
        return Err(bad(
            "bus.urls",
            &name,
            "give at least one broker URL".into(),
        ));
    }
    for url in &settings.urls {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(bad(
                "bus.urls",
                &name,
                format!("{url:?} is not an amqp:// or amqps:// URL"),
            ));
        }
    }
    let tls = TlsFiles {
        cert_pem: file("bus.cert_file", &name, settings.cert_file.as_ref(), false)?,
        key_pem: file("bus.key_file", &name, settings.key_file.as_ref(), true)?,
        ca_pem: file("bus.ca_file", &name, settings.ca_file.as_ref(), false)?,
    };
    if tls.cert_pem.is_some() != tls.key_pem.is_some() {
        return Err(bad(
            "bus.key_file",
            &name,
            "cert_file and key_file go together".into(),
        ));
    }
    let queue = settings.queue.unwrap_or_default();
    let subscription = settings.subscription.unwrap_or_default();
    match protocol {
        Protocol::Amqp091 if queue.is_empty() => {
            return Err(bad(
                "bus.queue",
                &name,
                "amqp091 consumes from a durable queue: name it".into(),
            ))
        }
        Protocol::Amqp091 if !subscription.is_empty() => {
            return Err(bad(
                "bus.subscription",
                &name,
                "amqp091 consumes from `queue` bound to `topics`".into(),
            ))
        }
        Protocol::Amqp1 if subscription.is_empty() => {
            return Err(bad(
                "bus.subscription",
                &name,
                "amqp1 consumes from an address: name it (UMB: queue://Consumer.<client>.<name>.VirtualTopic.…)".into(),
            ))
        }
        Protocol::Amqp1 if !queue.is_empty() || !settings.topics.is_empty() => {
            return Err(bad(
                "bus.queue",
                &name,
                "amqp1 consumes from `subscription`; queue and topics are amqp091's".into(),
            ))
        }
        _ => {}
    }
    let publish_address = settings
        .publish_address
        .unwrap_or_else(|| "topic://{topic}".into());
    if !publish_address.contains("{topic}") {
        return Err(bad(
            "bus.publish_address",
            &name,
            format!("{publish_address:?} does not say where the topic goes ({{topic}})"),
        ));
    }
    Ok(BusConfig {
        protocol,
        urls: settings.urls,
        tls,
        exchange: settings
            .exchange
            .filter(|exchange| !exchange.is_empty())
            .unwrap_or_else(|| "amq.topic".into()),
        queue,
        topics: settings.topics,
        subscription,
        publish_address,
        publish_prefix: settings
            .publish_prefix
            .filter(|prefix| !prefix.trim_matches('.').is_empty()),
        prefetch: settings.prefetch.unwrap_or(25).max(1),
        namespace: settings
            .namespace
            .filter(|namespace| !namespace.is_empty())
            .unwrap_or_else(|| "polarizer".into()),
        contact: settings.contact.unwrap_or_else(|| Contact {
            name: "Polarizer".into(),
            ..Contact::default()
        }),
        name,
    })
}

fn validate_rule(settings: RuleSettings, bus: &str, names: &[String]) -> Result<Rule, ConfigError> {
    let matching = Match::new(
        settings.matching.package.as_deref(),
        settings.matching.tag.as_deref(),
        settings.matching.owner.as_deref(),
        settings.matching.instance.as_deref(),
    )
    .map_err(|message| bad("bus.rules.match", bus, message))?;
    let tests = settings.tests.unwrap_or_default();
    if tests.trim().is_empty() {
        return Err(bad(
            "bus.rules.tests",
            bus,
            "a rule names the tests' repository (a git URL or a directory)".into(),
        ));
    }
    let kind = match settings.kind.as_deref() {
        None => TriggerKind::Build,
        Some(text) => TriggerKind::parse(text).ok_or_else(|| {
            bad(
                "bus.rules.kind",
                bus,
                format!("{text:?} is not one of build, commit, manual"),
            )
        })?,
    };
    if let Some(only) = &settings.bus {
        if !names.contains(only) {
            return Err(bad(
                "bus.rules.bus",
                bus,
                format!("no [[bus]] is named {only:?}"),
            ));
        }
    }
    Ok(Rule {
        name: settings
            .name
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "polarizer".into()),
        bus: settings.bus,
        matching,
        tests,
        tests_ref: settings.tests_ref.unwrap_or_default(),
        kind,
        context: settings.context.into_iter().collect(),
        plan: settings.plan.unwrap_or_default(),
        test_types: settings.test_types,
    })
}

pub fn validate(settings: Vec<BusSettings>) -> Result<BusesConfig, ConfigError> {
    let mut config = BusesConfig::default();
    let mut names = Vec::new();
    let mut rules = Vec::new();
    for mut bus in settings {
        let bus_rules = std::mem::take(&mut bus.rules);
        let checked = validate_bus(bus, &names)?;
        names.push(checked.name.clone());
        rules.push((checked.name.clone(), bus_rules));
        config.buses.push(checked);
    }
    for (bus, bus_rules) in rules {
        for rule in bus_rules {
            config.rules.push(validate_rule(rule, &bus, &names)?);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BusesConfig, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            bus: Vec<BusSettings>,
        }
        let file: File = toml::from_str(text).unwrap();
        validate(file.bus)
    }

    #[test]
    fn the_issue_s_fedora_example_reads_and_its_rules_serve_every_bus() {
        let config = parse(
            r#"
            [[bus]]
            name = "fedora"
            protocol = "amqp091"
            urls = ["amqp://127.0.0.1:5672/%2F"]
            exchange = "amq.topic"
            queue = "polarizer-rhsm"
            topics = ["org.fedoraproject.prod.buildsys.build.state.change", "org.fedoraproject.prod.buildsys.tag"]
            publish_prefix = "org.fedoraproject.prod.ci"

            [[bus.rules]]
            match = { package = "subscription-manager", tag = "rhel-9.*-candidate" }
            tests = "https://gitlab.example/rhsm/tests.git"
            tests_ref = "main"
            kind = "build"
            context = { distro = "rhel-9" }
            "#,
        )
        .unwrap();
        assert_eq!(config.buses[0].exchange, "amq.topic");
        assert_eq!(config.buses[0].prefetch, 25);
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.rules[0].bus, None);
        assert_eq!(
            config.rules[0].context,
            [("distro".into(), "rhel-9".into())]
        );
    }

    #[test]
    fn errors_name_the_bus_and_key() {
        for (text, key, words) in [
            ("[[bus]]\nname = \"a\"\nprotocol = \"mqtt\"\nurls = [\"amqp://x\"]\nqueue = \"q\"", "bus.protocol", "mqtt"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"stomp\"\nurls = [\"amqp://x\"]", "bus.protocol", "not supported yet"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp1\"\nurls = [\"amqp://x\"]", "bus.subscription", "address"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp1\"\nurls = [\"amqps://x\"]\nsubscription = \"q\"\nca_file = \"/nonexistent/ca.pem\"", "bus.ca_file", "/nonexistent/ca.pem"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp091\"\nurls = [\"http://x\"]\nqueue = \"q\"", "bus.urls", "http://x"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp091\"\nurls = [\"amqp://x\"]", "bus.queue", "durable queue"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp091\"\nurls = [\"amqp://x\"]\nqueue = \"q\"\n[[bus.rules]]\ntests = \"t\"\nmatch = { package = \"[\" }", "bus.rules.match", "match.package"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp091\"\nurls = [\"amqp://x\"]\nqueue = \"q\"\n[[bus.rules]]\nmatch = { package = \"x\" }", "bus.rules.tests", "repository"),
            ("[[bus]]\nname = \"a\"\nprotocol = \"amqp091\"\nurls = [\"amqp://x\"]\nqueue = \"q\"\nkey_file = \"/nonexistent/key.pem\"", "bus.key_file", "/nonexistent/key.pem"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err:?}");
            assert!(err.message.contains(words) && err.message.contains("bus \"a\""), "{text}: {}", err.message);
        }
    }
}
