//! Message buses: build messages published by a real client (pika) on a real RabbitMQ (Debian's
//! rabbitmq-server) in the shapes Koji sends on Fedora Messaging start runs of the tests a rule names,
//! once per message however often it is delivered; malformed and unfinished builds start nothing; every
//! run is announced back on the bus as CI messages (queued, running, complete), read by a real consumer.

use std::path::Path;
use std::time::Duration;

use polarizer_e2e::pki::{Pki, Use};
use polarizer_e2e::rabbitmq::RabbitMq;
use polarizer_e2e::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const STATE_CHANGE: &str = "org.fedoraproject.prod.buildsys.build.state.change";
const TAG: &str = "org.fedoraproject.prod.buildsys.tag";

fn build_state_change(name: &str, release: &str, new: u64) -> String {
    serde_json::json!({
        "attribute": "state", "build_id": 1874070, "epoch": null, "instance": "primary",
        "name": name, "new": new, "old": 0, "owner": "packit", "release": release,
        "task_id": 80860789, "version": "1.29.40",
        "request": ["git+https://src.fedoraproject.org/rpms/subscription-manager.git#51b57ec", "f41-candidate", {}],
        "creation_time": "2026-11-08T09:54:48.493165+00:00",
        "completion_time": "2026-11-08T10:01:04.706963+00:00"
    })
    .to_string()
}

/// The keys CI messages v1 requires of every message, and of each state's.
fn check_ci_message(topic: &str, body: &Value) {
    for key in [
        "contact",
        "run",
        "artifact",
        "pipeline",
        "test",
        "generated_at",
        "version",
    ] {
        assert!(!body[key].is_null(), "{topic}: no {key}: {body}");
    }
    for key in ["name", "team", "docs", "email"] {
        assert!(
            body["contact"][key].is_string(),
            "{topic}: contact.{key}: {body}"
        );
    }
    for key in ["url", "log"] {
        assert!(body["run"][key].is_string(), "{topic}: run.{key}: {body}");
    }
    for key in ["type", "id", "issuer", "component", "nvr", "scratch"] {
        assert!(
            !body["artifact"][key].is_null(),
            "{topic}: artifact.{key}: {body}"
        );
    }
    for key in ["category", "namespace", "type"] {
        assert!(body["test"][key].is_string(), "{topic}: test.{key}: {body}");
    }
    if topic.ends_with(".complete") {
        assert!(body["test"]["result"].is_string(), "{topic}: {body}");
        assert!(body["system"].is_array(), "{topic}: {body}");
    }
}

/// A functional test that passes, as a tests tree's `tests/main.fmf`.
const ONE_TEST: &str =
    "framework: shell\n/register:\n    extra-polarizer-type: functional\n    test: 'true'\n";

/// A tests repository with `tests_fmf`, a coordinator configured by `toml` (given the repository's
/// directory) with one agent, once a bus consumer is connected.
fn bus_coordinator(dir: &Path, tests_fmf: &str, toml: impl FnOnce(&Path) -> String) -> TestCluster {
    let tests = dir.join("tests");
    std::fs::create_dir_all(&tests).unwrap();
    git_repo(
        &tests,
        &[(".fmf/version", "1\n"), ("tests/main.fmf", tests_fmf)],
    );
    let config = dir.join("coordinator.toml");
    std::fs::write(&config, toml(&tests)).unwrap();
    let mut cluster = coordinator_with_config(&config);
    cluster.start_agent("vm-1", &[]);
    wait_for("the agent online", DEADLINE, || {
        cluster.online_names().len() == 1
    });
    wait_for("a bus consumer connected", DEADLINE, || {
        cluster
            .coordinator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("bus consumer: connected")
    });
    cluster
}

/// A broker with a dashboard's queue for the CI messages (there before anything is published), and a
/// coordinator consuming the broker's Koji topics into runs of `tests_fmf`.
fn bus_cluster(dir: &Path, tests_fmf: &str) -> (RabbitMq, TestCluster) {
    let broker = RabbitMq::start(&dir.join("rabbitmq"));
    broker.client(&["listen", "dashboard", "org.fedoraproject.prod.ci.#"]);
    let cluster = bus_coordinator(dir, tests_fmf, |tests| {
        format!(
            "[[bus]]\nname = \"fedora\"\nprotocol = \"amqp091\"\nurls = [{:?}]\nqueue = \"polarizer-rhsm\"\n\
             topics = [{STATE_CHANGE:?}, {TAG:?}]\npublish_prefix = \"org.fedoraproject.prod.ci\"\n\
             prefetch = 5\n\n\
             [[bus.rules]]\nmatch = {{ package = \"subscription-manager\" }}\ntests = {:?}\nkind = \"build\"\n\
             test_types = [\"functional\", \"acceptance\"]\nname = \"tier1\"\n",
            broker.url(),
            tests.display().to_string(),
        )
    });
    (broker, cluster)
}

#[test]
fn build_messages_start_runs_once_and_runs_are_announced_back() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, cluster) = bus_cluster(
        dir.path(),
        "framework: shell\n/register:\n    extra-polarizer-type: functional\n    test: 'true'\n\
         /attach:\n    extra-polarizer-type: acceptance\n    test: 'echo no pool; exit 1'\n",
    );

    // What starts nothing: not JSON, a failed build, another package.
    broker.publish(STATE_CHANGE, "bad-1", "{not json");
    broker.publish(
        STATE_CHANGE,
        "failed-1",
        &build_state_change("subscription-manager", "1.fc41", 3),
    );
    broker.publish(
        STATE_CHANGE,
        "other-1",
        &build_state_change("dnf", "1.fc41", 1),
    );
    // A finished build, delivered twice (at-least-once): one run.
    let complete = build_state_change("subscription-manager", "1.fc41", 1);
    broker.publish(STATE_CHANGE, "build-1", &complete);
    broker.publish(STATE_CHANGE, "build-1", &complete);

    wait_for(
        "the refused message and both deliveries recorded",
        DEADLINE,
        || {
            let lines = cluster.triggers();
            lines
                .iter()
                .filter(|line| line["delivery"] == "build-1")
                .count()
                == 2
                && lines.iter().any(|line| line["delivery"] == "bad-1")
        },
    );
    let lines = cluster.triggers();
    let bad = lines
        .iter()
        .find(|line| line["delivery"] == "bad-1")
        .unwrap();
    assert_eq!(bad["source"], "bus:fedora");
    assert_eq!(bad["outcome"], "refused");
    assert!(
        bad["reason"].as_str().unwrap().contains("not JSON"),
        "{bad}"
    );
    assert!(
        lines
            .iter()
            .all(|line| line["delivery"] != "failed-1" && line["delivery"] != "other-1"),
        "{lines:#?}"
    );
    let duplicate = lines
        .iter()
        .find(|line| line["delivery"] == "build-1" && line["outcome"] == "duplicate")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(duplicate["reason"]
        .as_str()
        .unwrap()
        .contains("received before"));

    wait_for("the build's run", DEADLINE, || {
        cluster
            .triggers()
            .iter()
            .any(|line| line["delivery"] == "build-1" && line["outcome"] == "run")
    });
    let started = cluster.runs();
    assert_eq!(started.len(), 1, "{started:#?}");
    let run = started[0]["id"].as_u64().unwrap();
    let detail = wait_run_finished(&cluster, run, DEADLINE);
    assert_eq!(detail["state"], "failed", "{detail}");
    assert_eq!(
        detail["suites"][0]["versions"]["artifacts"][0],
        "subscription-manager-1.29.40-1.fc41"
    );
    // The run names the message that started it.
    let message = detail["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("build-1")
            && message.contains(STATE_CHANGE)
            && message.contains("bus fedora"),
        "{detail}"
    );

    // The run announced on the bus: queued, running, complete, one per category of its tests.
    let mut announced = Vec::new();
    wait_for("the complete CI messages", DEADLINE, || {
        announced.extend(broker.drain("dashboard"));
        announced
            .iter()
            .filter(|(topic, _, _)| topic.ends_with(".test.complete"))
            .count()
            == 2
    });
    let topics: Vec<&str> = announced
        .iter()
        .map(|(topic, _, _)| topic.as_str())
        .collect();
    for state in ["queued", "running", "complete"] {
        assert_eq!(
            topics
                .iter()
                .filter(
                    |topic| **topic == format!("org.fedoraproject.prod.ci.koji-build.test.{state}")
                )
                .count(),
            2,
            "{topics:#?}"
        );
    }
    for (topic, message_id, body) in &announced {
        check_ci_message(topic, body);
        assert!(
            message_id.starts_with(&format!("polarizer-run-{run}-")),
            "{message_id}"
        );
        assert_eq!(
            body["artifact"]["nvr"],
            "subscription-manager-1.29.40-1.fc41"
        );
        assert_eq!(body["artifact"]["id"], 80860789);
        assert_eq!(body["artifact"]["type"], "koji-build");
        assert_eq!(body["test"]["namespace"], "polarizer.koji-build");
        assert_eq!(body["test"]["type"], "tier1");
    }
    let result = |category: &str| {
        announced
            .iter()
            .find(|(topic, _, body)| {
                topic.ends_with(".complete") && body["test"]["category"] == category
            })
            .map(|(_, _, body)| body["test"]["result"].clone())
            .unwrap_or_else(|| panic!("no complete message of {category}: {announced:#?}"))
    };
    assert_eq!(result("functional"), "passed");
    assert_eq!(result("validation"), "failed");
}

#[test]
fn a_broker_that_restarts_loses_nothing_and_starts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("broker-restarting");
    let (mut broker, cluster) = bus_cluster(
        dir.path(),
        &format!(
            "framework: shell\n/register:\n    extra-polarizer-type: functional\n    \
             test: 'while [ ! -e {} ]; do sleep 0.1; done'\n",
            gate.display()
        ),
    );
    let complete = build_state_change("subscription-manager", "1.fc41", 1);
    broker.publish(STATE_CHANGE, "build-1", &complete);
    wait_for("the build's run", DEADLINE, || {
        cluster
            .triggers()
            .iter()
            .any(|line| line["delivery"] == "build-1" && line["outcome"] == "run")
    });
    let run = cluster.runs()[0]["id"].as_u64().unwrap();

    // The broker goes down while the run goes on; the run ends while it is down.
    broker.kill();
    std::fs::write(&gate, "").unwrap();
    let detail = wait_run_finished(&cluster, run, DEADLINE);
    assert_eq!(detail["state"], "passed", "{detail}");
    wait_for("the publisher to find the broker gone", DEADLINE, || {
        cluster
            .coordinator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("bus publisher: cannot send")
    });

    // Back: the complete message stored meanwhile is sent, a new build starts a run, and build-1,
    // delivered again, does not.
    broker.restart();
    broker.publish(STATE_CHANGE, "build-1", &complete);
    broker.publish(
        STATE_CHANGE,
        "build-2",
        &build_state_change("subscription-manager", "2.fc41", 1),
    );
    let mut announced = Vec::new();
    wait_for("the complete CI message of the run", DEADLINE, || {
        announced.extend(broker.drain("dashboard"));
        announced.iter().any(|(topic, message_id, _)| {
            topic.ends_with(".test.complete")
                && message_id.starts_with(&format!("polarizer-run-{run}-"))
        })
    });
    wait_for("the second build's run", DEADLINE, || {
        cluster
            .triggers()
            .iter()
            .any(|line| line["delivery"] == "build-2" && line["outcome"] == "run")
    });
    let started = cluster.runs();
    assert_eq!(started.len(), 2, "{started:#?}");
    let lines = cluster.triggers();
    assert_eq!(
        lines
            .iter()
            .filter(|line| line["delivery"] == "build-1" && line["outcome"] == "run")
            .count(),
        1,
        "{lines:#?}"
    );
    let (_, _, body) = announced
        .iter()
        .find(|(topic, _, _)| topic.ends_with(".test.complete"))
        .unwrap();
    assert_eq!(body["test"]["result"], "passed");
    assert_eq!(
        body["artifact"]["nvr"],
        "subscription-manager-1.29.40-1.fc41"
    );
}

#[test]
fn a_brew_build_on_amqp1_starts_a_run_announced_back_over_amqp1() {
    let dir = tempfile::tempdir().unwrap();
    let broker = RabbitMq::start_with(&dir.path().join("rabbitmq"), &["rabbitmq_amqp1_0"]);
    // UMB's consumer queue, and a dashboard's, before anything is sent.
    broker.client(&[
        "listen",
        "umb-builds",
        "VirtualTopic.eng.brew.build.complete",
    ]);
    broker.client(&["listen", "dashboard", "VirtualTopic.eng.ci.#"]);
    let cluster = bus_coordinator(dir.path(), ONE_TEST, |tests| {
        format!(
            "[[bus]]\nname = \"umb\"\nprotocol = \"amqp1\"\nurls = [\"amqp://guest:guest@127.0.0.1:{}\"]\n\
             subscription = \"/queue/umb-builds\"\npublish_prefix = \"VirtualTopic.eng.ci\"\n\
             publish_address = \"/topic/{{topic}}\"\n\n\
             [[bus.rules]]\nmatch = {{ package = \"subscription-manager\", owner = \"jdoe\" }}\ntests = {:?}\n\
             test_types = [\"functional\"]\n",
            broker.port,
            tests.display().to_string(),
        )
    });

    // As Koji's protonmsg sends it: the JSON as a text value; `info` is the build before the change.
    let umb = serde_json::json!({
        "attribute": "state", "old": 0, "new": 1,
        "info": {"id": 3215436, "build_id": 3215436, "nvr": "subscription-manager-1.29.40-1.el9",
                 "name": "subscription-manager", "version": "1.29.40", "release": "1.el9",
                 "owner_name": "jdoe", "task_id": 65432101, "state": 0, "completion_time": null,
                 "source": "git://pkgs.example/rpms/subscription-manager#0a1b2c"}
    })
    .to_string();
    let address = "/topic/VirtualTopic.eng.brew.build.complete";
    broker.client1(&["send", address, "umb-bad", "{nope"]);
    broker.client1(&["send", address, "umb-1", &umb]);
    wait_for("the build's run", DEADLINE, || {
        cluster
            .triggers()
            .iter()
            .any(|line| line["delivery"] == "umb-1" && line["outcome"] == "run")
    });
    let lines = cluster.triggers();
    let bad = lines
        .iter()
        .find(|line| line["delivery"] == "umb-bad")
        .unwrap();
    assert_eq!(
        (bad["source"].as_str(), bad["outcome"].as_str()),
        (Some("bus:umb"), Some("refused"))
    );
    let run = cluster.runs()[0]["id"].as_u64().unwrap();
    let detail = wait_run_finished(&cluster, run, DEADLINE);
    assert_eq!(detail["state"], "passed", "{detail}");

    let mut announced = Vec::new();
    wait_for("the complete CI message", DEADLINE, || {
        announced.extend(broker.drain1("/queue/dashboard"));
        announced
            .iter()
            .any(|(topic, _, _)| topic.ends_with(".test.complete"))
    });
    let (topic, message_id, body) = announced
        .iter()
        .find(|(topic, _, _)| topic.ends_with(".test.complete"))
        .unwrap();
    assert_eq!(topic, "VirtualTopic.eng.ci.brew-build.test.complete");
    assert!(
        message_id.starts_with(&format!("polarizer-run-{run}-")),
        "{message_id}"
    );
    check_ci_message(topic, body);
    assert_eq!(body["artifact"]["type"], "brew-build");
    assert_eq!(
        body["artifact"]["nvr"],
        "subscription-manager-1.29.40-1.el9"
    );
    assert_eq!(body["artifact"]["id"], 65432101);
    assert_eq!(body["artifact"]["issuer"], "jdoe");
    assert_eq!(body["test"]["result"], "passed");
}

#[test]
fn tls_pins_the_broker_s_ca_and_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "broker");
    let (server, server_key) = pki.issue("server", &["127.0.0.1"], Use::Server);
    let (client, client_key) = pki.issue("client", &["polarizer"], Use::Client);
    let (expired, expired_key) = pki.issue("expired", &["polarizer"], Use::ExpiredClient);
    let stranger = Pki::new(&dir.path().join("stranger"), "stranger");
    let broker = RabbitMq::start_tls(&dir.path().join("rabbitmq"), &pki.ca, &server, &server_key);
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2F", broker.tls_port);
    // Three buses on one broker: the right CA and certificate, an expired certificate, another CA.
    let bus = |name: &str, ca: &Path, cert: &Path, key: &Path| {
        format!(
            "[[bus]]\nname = {name:?}\nprotocol = \"amqp091\"\nurls = [{url:?}]\nqueue = \"polarizer-{name}\"\n\
             topics = [{STATE_CHANGE:?}]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n\n"
        )
    };
    let cluster = bus_coordinator(dir.path(), ONE_TEST, |tests| {
        format!(
            "{}{}{}[[bus.rules]]\nbus = \"fedora\"\nmatch = {{ package = \"subscription-manager\" }}\ntests = {:?}\n\
             test_types = [\"functional\"]\n",
            bus("fedora", &pki.ca, &client, &client_key),
            bus("expired", &pki.ca, &expired, &expired_key),
            bus("stranger", &stranger.ca, &client, &client_key),
            tests.display().to_string(),
        )
    });
    let log = || cluster.coordinator.as_ref().unwrap().log_text();
    wait_for("the three buses tried", DEADLINE, || {
        let log = log();
        log.contains("bus consumer: connected bus=fedora")
            && log.lines().any(|line| {
                line.contains("bus=expired") && line.contains("connection lost or refused")
            })
            && log.lines().any(|line| {
                line.contains("bus=stranger") && line.contains("connection lost or refused")
            })
    });
    let text = log();
    let stranger_line = text
        .lines()
        .find(|line| line.contains("bus=stranger") && line.contains("refused"))
        .unwrap();
    assert!(stranger_line.contains("UnknownIssuer"), "{stranger_line}");
    let expired_line = text
        .lines()
        .find(|line| line.contains("bus=expired") && line.contains("refused"))
        .unwrap();
    assert!(
        expired_line.contains("CertificateExpired"),
        "{expired_line}"
    );
    assert!(
        !text.contains("bus consumer: connected bus=expired")
            && !text.contains("bus consumer: connected bus=stranger"),
        "{text}"
    );
    assert!(!text.contains("BEGIN PRIVATE KEY"), "a key in the log");

    // Over the pinned, mutually authenticated connection, a build starts its run.
    broker.publish(
        STATE_CHANGE,
        "tls-1",
        &build_state_change("subscription-manager", "1.fc41", 1),
    );
    wait_for("the build's run", DEADLINE, || {
        cluster
            .triggers()
            .iter()
            .any(|line| line["delivery"] == "tls-1" && line["outcome"] == "run")
    });
}
