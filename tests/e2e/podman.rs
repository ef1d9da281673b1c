//! Real podman: a container of the test image runs, and an agent in one joins a coordinator on loopback as a
//! `container` platform. Skipped (reason printed) where podman is unusable: not root, podman or mmdebstrap missing.

use std::time::Duration;

use polarizer_e2e::podman::{agent_run_command, podman, test_image, Container};
use polarizer_e2e::{binary, wait_for, TestCluster};

#[test]
fn a_container_of_the_test_image_runs_and_knows_it_is_a_container() {
    let Some(image) = test_image() else {
        return;
    };
    let output = podman()
        .expect("podman, as test_image found it")
        .args(["run", "--rm", &image, "/bin/sh", "-c"])
        .arg("test -e /run/.containerenv && echo ok")
        .output()
        .expect("run podman");
    assert!(
        output.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

#[test]
fn an_agent_in_a_container_joins_as_a_container_platform_and_drains_on_podman_stop() {
    let Some(image) = test_image() else {
        return;
    };
    let cluster = TestCluster::new_coordinator_only();
    let container = Container::named(&format!("pz-e2e-agent-{}", std::process::id()));
    let output = agent_run_command(
        &image,
        &container.name,
        "in-podman",
        &binary("polarizer-agent"),
        &cluster.data_dir,
        cluster.gossip,
        &["--gossip-interval-ms", "100", "--reconnect-max-ms", "1000"],
    )
    .expect("podman, as test_image found it")
    .output()
    .expect("run podman");
    assert!(
        output.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for(
        "the containerised agent online",
        Duration::from_secs(30),
        || cluster.agent_state("in-podman").as_deref() == Some("online"),
    );
    let record = cluster.agent_record("in-podman").expect("listed");
    assert_eq!(record["platform"], "container", "{record}");

    // `podman stop` sends SIGTERM (through --init) and the agent drains and exits cleanly.
    let stopped = podman()
        .expect("podman")
        .args(["stop", "--time", "20", &container.name])
        .output()
        .expect("run podman stop");
    assert!(stopped.status.success());
    let exit_code = podman()
        .expect("podman")
        .args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &container.name,
        ])
        .output()
        .expect("run podman inspect");
    assert_eq!(
        String::from_utf8_lossy(&exit_code.stdout).trim(),
        "0",
        "{}",
        container.logs()
    );
    wait_for("the stopped agent offline", Duration::from_secs(30), || {
        cluster.agent_state("in-podman").as_deref() == Some("offline")
    });
}
