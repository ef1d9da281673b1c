//! Message buses: build messages published by a real client (pika) on a real RabbitMQ (Debian's
//! rabbitmq-server) in the shapes Koji sends on Fedora Messaging start runs of the tests a rule names,
//! once per message however often it is delivered; malformed and unfinished builds start nothing; every
//! run is announced back on the bus as CI messages (queued, running, complete), read by a real consumer.

use std::time::Duration;

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

fn triggers(cluster: &TestCluster) -> Vec<Value> {
    ok_json(cluster.operator(&["triggers", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn runs(cluster: &TestCluster) -> Vec<Value> {
    ok_json(cluster.operator(&["runs", "--json"]))
        .as_array()
        .unwrap()
        .clone()
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

#[test]
fn build_messages_start_runs_once_and_runs_are_announced_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = RabbitMq::start(&dir.path().join("rabbitmq"));
    // A dashboard's queue for the CI messages, there before anything is published.
    broker.client(&["listen", "dashboard", "org.fedoraproject.prod.ci.#"]);
    let tests = dir.path().join("tests");
    std::fs::create_dir_all(&tests).unwrap();
    git_repo(
        &tests,
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "framework: shell\n/register:\n    extra-polarizer-type: functional\n    test: 'true'\n\
                 /attach:\n    extra-polarizer-type: acceptance\n    test: 'echo no pool; exit 1'\n",
            ),
        ],
    );
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[[bus]]\nname = \"fedora\"\nprotocol = \"amqp091\"\nurls = [{:?}]\nqueue = \"polarizer-rhsm\"\n\
             topics = [{STATE_CHANGE:?}, {TAG:?}]\npublish_prefix = \"org.fedoraproject.prod.ci\"\n\
             prefetch = 5\n\n\
             [[bus.rules]]\nmatch = {{ package = \"subscription-manager\" }}\ntests = {:?}\nkind = \"build\"\n\
             test_types = [\"functional\", \"acceptance\"]\nname = \"tier1\"\n",
            broker.url(),
            tests.display().to_string(),
        ),
    )
    .unwrap();
    let mut cluster = coordinator_with_config(&config);
    cluster.start_agent("vm-1", &[]);
    wait_for("the agent online", DEADLINE, || {
        cluster.online_names().len() == 1
    });
    wait_for("the consumer's queue bound", DEADLINE, || {
        cluster
            .coordinator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("bus consumer: connected")
    });

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
            let lines = triggers(&cluster);
            lines
                .iter()
                .filter(|line| line["delivery"] == "build-1")
                .count()
                == 2
                && lines.iter().any(|line| line["delivery"] == "bad-1")
        },
    );
    let lines = triggers(&cluster);
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
        triggers(&cluster)
            .iter()
            .any(|line| line["delivery"] == "build-1" && line["outcome"] == "run")
    });
    let started = runs(&cluster);
    assert_eq!(started.len(), 1, "{started:#?}");
    let run = started[0]["id"].as_u64().unwrap();
    let detail = wait_run_finished(&cluster, run, DEADLINE);
    assert_eq!(detail["state"], "failed", "{detail}");
    assert_eq!(
        detail["suites"][0]["versions"]["artifacts"][0],
        "subscription-manager-1.29.40-1.fc41"
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
