//! Platforms made on demand: a coordinator with pools and no agents installed runs every suite on a
//! platform made for it and destroys it after; a suite no pool can serve waits saying why; a platform
//! that cannot be made is retried, then counted as an infrastructure error; platforms a killed
//! coordinator left behind are destroyed when it starts again.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use polarizer_e2e::*;
use serde_json::Value;

const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// A coordinator started with `coordinator.toml` holding `pools` (kept in `config_dir`).
pub fn cluster_with_pools(config_dir: &Path, pools: &str, flags: &[&str]) -> TestCluster {
    cluster_with_pools_env(config_dir, pools, flags, Vec::new())
}

/// [`cluster_with_pools`] with these variables in the coordinator's environment.
pub fn cluster_with_pools_env(
    config_dir: &Path,
    pools: &str,
    flags: &[&str],
    env: Vec<(String, PathBuf)>,
) -> TestCluster {
    let config = config_dir.join("coordinator.toml");
    std::fs::write(&config, pools).unwrap();
    coordinator_with_config_env(&config, flags, env)
}

/// A script that appends its argument to `log`, as a destroy script that only records.
fn recording_script(dir: &Path, name: &str, log: &Path, then: &str) -> PathBuf {
    script(
        dir,
        name,
        &format!("echo \"$1\" >> {}\n{then}", log.display()),
    )
}

pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env bash\nset -eu\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub fn trigger(cluster: &TestCluster, repo: &Path) -> u64 {
    ok_json(cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]))["run"]
        .as_u64()
        .unwrap()
}

pub fn show(cluster: &TestCluster, run: u64) -> Value {
    ok_json(cluster.operator(&["runs", "show", &run.to_string(), "--json"]))
}

pub fn platforms(cluster: &TestCluster) -> Value {
    ok_json(cluster.operator(&["platforms", "--json"]))
}

/// A git repository whose fmf tree has one file, `tests/main.fmf`.
pub fn tests_repo(root: &Path, fmf: &str) -> PathBuf {
    git_repo(root, &[(".fmf/version", "1\n"), ("tests/main.fmf", fmf)])
}

/// Waits until the coordinator lists no platform: every one destroyed.
pub fn wait_platforms_gone(cluster: &TestCluster) {
    wait_for(
        "the platforms to be destroyed",
        Duration::from_secs(60),
        || {
            platforms(cluster)["platforms"]
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
}

/// Four independent tests and a serial pair (both modify `db`): three suites on a pool of two.
pub fn three_suite_repo(root: &Path) -> PathBuf {
    let mut fmf = String::from("duration: 1m\n");
    for index in 1..=4 {
        fmf.push_str(&format!(
            "/p{index}:\n  test: echo on $(hostname) p{index}; sleep 1\n"
        ));
    }
    for index in 1..=2 {
        fmf.push_str(&format!(
            "/s{index}:\n  test: sleep 1\n  extra-polarizer-resources:\n    modifies: [db]\n"
        ));
    }
    tests_repo(root, &fmf)
}

/// Polls the run to its end; on each poll also calls `each` with the run and the platforms listing.
pub fn follow(cluster: &TestCluster, run: u64, mut each: impl FnMut(&Value, &Value)) -> Value {
    let mut last = Value::Null;
    wait_for(&format!("run {run} to finish"), RUN_DEADLINE, || {
        last = show(cluster, run);
        each(&last, &platforms(cluster));
        !matches!(last["state"].as_str(), Some("queued" | "running"))
    });
    last
}

#[test]
fn a_local_pool_runs_every_suite_on_a_fresh_platform_and_destroys_it_after() {
    let config = tempfile::tempdir().unwrap();
    let cluster = cluster_with_pools(
        config.path(),
        "[[pools]]\nname = \"fresh\"\nprovisioner = \"local\"\nmax = 2\n",
        &[],
    );
    let repo = three_suite_repo(&cluster.path("repo"));
    let run = trigger(&cluster, &repo);

    let mut most_at_once = 0;
    let mut reasons = BTreeSet::new();
    let finished = follow(&cluster, run, |shown, listing| {
        let alive = listing["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|platform| platform["state"] != "failed")
            .count();
        most_at_once = most_at_once.max(alive);
        for suite in shown["suites"].as_array().unwrap() {
            if suite["state"] == "queued" {
                reasons.insert(suite["waiting_for"].as_str().unwrap().to_string());
            }
        }
    });
    assert_eq!(finished["state"], "passed", "{finished:#}");
    let suites = finished["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 3, "{finished:#}");
    let agents = suite_agents(suites);
    assert_eq!(
        agents.len(),
        3,
        "every suite had a platform of its own: {agents:?}"
    );
    assert!(
        agents.iter().all(|agent| agent.starts_with("fresh-")),
        "{agents:?}"
    );
    assert!(most_at_once <= 2, "never more than max: {most_at_once}");
    assert!(
        reasons.iter().any(|reason| reason.contains("pool fresh")),
        "a waiting suite said it waits for the pool: {reasons:?}"
    );

    // After the run: every platform destroyed, its agent forgotten, no agent process left.
    wait_platforms_gone(&cluster);
    let inventory: Vec<String> = cluster
        .inventory()
        .iter()
        .map(|agent| agent["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        inventory.iter().all(|name| !agents.contains(name.as_str())),
        "{inventory:?}"
    );
    let listing = platforms(&cluster);
    assert_eq!(listing["pools"][0]["name"], "fresh");
    assert_eq!(listing["pools"][0]["provisioner"], "local");
    let text = String::from_utf8(cluster.operator(&["platforms"]).stdout).unwrap();
    assert!(text.contains("POOL") && text.contains("fresh"), "{text}");
}

#[test]
fn a_suite_no_agent_and_no_pool_can_take_waits_saying_why() {
    let config = tempfile::tempdir().unwrap();
    let cluster = cluster_with_pools(
        config.path(),
        "[[pools]]\nname = \"boxes\"\nprovisioner = \"local\"\nplatform = \"container\"\nmax = 1\n",
        &[],
    );
    let repo = tests_repo(
        &cluster.path("repo"),
        "/vm-only:\n  test: \"true\"\n  extra-polarizer-platform:\n    kind: vm\n",
    );
    let run = trigger(&cluster, &repo);
    let mut reason = String::new();
    wait_for(
        "the suite to say why it waits",
        Duration::from_secs(20),
        || {
            reason = show(&cluster, run)["suites"][0]["waiting_for"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            reason.contains("no pool offers it")
        },
    );
    assert!(reason.contains("platform vm"), "{reason}");
    assert!(
        platforms(&cluster)["platforms"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing is made for a suite the pool cannot serve"
    );
    assert!(cluster
        .operator(&["runs", "cancel", &run.to_string()])
        .status
        .success());
}

#[test]
fn a_platform_that_cannot_be_made_is_retried_then_its_suite_ends_as_an_infrastructure_error() {
    let config = tempfile::tempdir().unwrap();
    let failing = Path::new(env!("CARGO_MANIFEST_DIR")).join("provision/failing-create");
    let destroyed = config.path().join("destroyed.log");
    let destroy = recording_script(config.path(), "destroy", &destroyed, "");
    let cluster = cluster_with_pools(
        config.path(),
        &format!(
            "[[pools]]\nname = \"cloud\"\nprovisioner = \"command\"\ncreate = \"{}\"\ndestroy = \"{}\"\ninstall = \"none\"\nlaunch_retries = 2\nmax = 2\n",
            failing.display(),
            destroy.display()
        ),
        &["--attempts", "1"],
    );
    let repo = tests_repo(&cluster.path("repo"), "/one:\n  test: \"true\"\n");
    let run = trigger(&cluster, &repo);
    let finished = follow(&cluster, run, |_, _| {});
    let test = &tests_by_name(&finished)["/tests/one"];
    assert_eq!(test["status"], "error", "{finished:#}");
    assert_eq!(test["lost_attempts"][0]["agent"], "pool cloud", "{test:#}");
    let message = test["message"].as_str().unwrap();
    assert!(
        message.contains("infrastructure error")
            && message.contains("pool cloud could not make platform cloud-1 (2 tries)")
            && message.contains("quota exceeded"),
        "{message}"
    );
    let listing = platforms(&cluster);
    let failed = &listing["platforms"][0];
    assert_eq!(failed["state"], "failed", "{listing:#}");
    assert_eq!(failed["tries"], 2);
    assert!(failed["error"].as_str().unwrap().contains("quota exceeded"));
    // Each failed try was destroyed (by name: it never had an id).
    assert_eq!(read(&destroyed), "cloud-1\ncloud-1\n");
    let metrics = http_get(cluster.http, "/metrics");
    assert!(
        metrics.contains("polarizer_platform_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_platform_left_mid_create_by_a_killed_coordinator_is_destroyed_when_it_starts_again() {
    let config = tempfile::tempdir().unwrap();
    let created = config.path().join("created.log");
    let destroyed = config.path().join("destroyed.log");
    // A cloud that takes its time: the coordinator is killed while it waits.
    let create = recording_script(config.path(), "create", &created, "exec sleep 30\n");
    let destroy = recording_script(config.path(), "destroy", &destroyed, "");
    let mut cluster = cluster_with_pools(
        config.path(),
        &format!(
            "[[pools]]\nname = \"slow\"\nprovisioner = \"command\"\ncreate = \"{}\"\ndestroy = \"{}\"\ninstall = \"none\"\nmax = 1\n",
            create.display(),
            destroy.display()
        ),
        &[],
    );
    let repo = tests_repo(&cluster.path("repo"), "/one:\n  test: \"true\"\n");
    let run = trigger(&cluster, &repo);
    wait_for(
        "the create script to start",
        Duration::from_secs(20),
        || std::fs::read_to_string(&created).is_ok_and(|text| text.contains("slow-1")),
    );
    cluster.coordinator.as_mut().unwrap().kill_9();
    assert!(
        !destroyed.exists(),
        "nothing destroyed it before the restart"
    );

    cluster.start_coordinator(&[]);
    wait_for(
        "the leaked platform to be destroyed",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&destroyed)
                .is_ok_and(|text| text.lines().any(|line| line == "slow-1"))
        },
    );
    wait_for("it to leave the listing", Duration::from_secs(20), || {
        platforms(&cluster)["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|platform| platform["name"] != "slow-1")
    });
    assert!(cluster
        .operator(&["runs", "cancel", &run.to_string()])
        .status
        .success());
}

/// The names of the containers of a pool, running or not.
fn containers_of(pool: &str) -> Vec<String> {
    let mut command = podman::podman().expect("podman was usable a moment ago");
    let output = command
        .args(["ps", "--all", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=polarizer.pool={pool}"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until no container of the pool is left, running or not.
fn wait_containers_gone(pool: &str) {
    wait_for(
        "the containers to be removed",
        Duration::from_secs(60),
        || containers_of(pool).is_empty(),
    );
}

/// The agents a run's suites ran on, each once.
pub fn suite_agents(suites: &[Value]) -> BTreeSet<&str> {
    suites
        .iter()
        .map(|suite| suite["agent"].as_str().unwrap())
        .collect()
}

/// Removes a pool's containers when dropped: a failed test leaves none behind.
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        for name in containers_of(&self.0) {
            if let Some(mut command) = podman::podman() {
                let _ = command
                    .args(["rm", "--force", "--time", "0", "--", &name])
                    .output();
            }
        }
    }
}

/// A coordinator with a podman pool of the test image, or `None` (reason printed) where podman is
/// unusable. Pool names carry the test process's id: container names are global on the host.
fn podman_cluster(config_dir: &Path, pool: &str, max: u32) -> Option<TestCluster> {
    let (key, conf) = podman::containers_conf()?;
    let image = podman::test_image()?;
    Some(cluster_with_pools_env(
        config_dir,
        &format!(
            "[[pools]]\nname = \"{pool}\"\nprovisioner = \"podman\"\nimage = \"{image}\"\nmax = {max}\nlabels = {{ distro = \"debian-12\" }}\nboot_timeout = \"2m\"\n"
        ),
        &[],
        vec![(key.to_string(), conf)],
    ))
}

#[test]
fn a_podman_pool_runs_the_demo_with_no_agent_installed_each_suite_on_a_fresh_container() {
    let config = tempfile::tempdir().unwrap();
    let pool = format!("demo{}", std::process::id());
    let _remove = RemoveContainers(pool.clone());
    let Some(cluster) = podman_cluster(config.path(), &pool, 3) else {
        return;
    };
    let examples = cluster.path("examples");
    polarizer::cli::examples::materialize(&examples).unwrap();
    let run = ok_json(cluster.operator(&[
        "trigger",
        "--repo",
        examples.to_str().unwrap(),
        "--changed",
        "src/identity/uuid.py",
        "--kind",
        "commit",
        "--type",
        "unit,integration,functional",
        "--json",
    ]))["run"]
        .as_u64()
        .unwrap();
    let mut most_at_once = 0;
    let finished = follow(&cluster, run, |_, _| {
        most_at_once = most_at_once.max(containers_of(&pool).len());
    });
    // One test fails and one times out on purpose; every other passes, each in a container.
    assert_eq!(finished["state"], "failed", "{finished:#}");
    let tests = tests_by_name(&finished);
    assert_eq!(tests.len(), 17);
    for (name, test) in &tests {
        let expected = match name.as_str() {
            "/tests/register/unregister" => "fail",
            "/tests/repos/mirror-sync" => "timeout",
            _ => "pass",
        };
        assert_eq!(test["status"], expected, "{name}: {test}");
    }
    let suites = finished["suites"].as_array().unwrap();
    let agents = suite_agents(suites);
    assert_eq!(
        agents.len(),
        suites.len(),
        "a fresh container per suite: {agents:?}"
    );
    assert!(
        agents
            .iter()
            .all(|agent| agent.starts_with(&format!("{pool}-"))),
        "{agents:?}"
    );
    assert!(most_at_once <= 3, "never more than max: {most_at_once}");
    let inventory = cluster.inventory();
    assert!(
        inventory.is_empty()
            || inventory
                .iter()
                .all(|agent| agent["facts"]["platform"] == "container")
    );
    wait_containers_gone(&pool);
}

#[test]
fn a_container_left_by_a_killed_coordinator_is_removed_when_it_starts_again() {
    let config = tempfile::tempdir().unwrap();
    let pool = format!("leak{}", std::process::id());
    let _remove = RemoveContainers(pool.clone());
    let Some(mut cluster) = podman_cluster(config.path(), &pool, 1) else {
        return;
    };
    let repo = tests_repo(
        &cluster.path("repo"),
        "/long:\n  test: sleep 60\n  duration: 5m\n",
    );
    let run = trigger(&cluster, &repo);
    wait_for(
        "the test to run in a container",
        Duration::from_secs(90),
        || tests_by_name(&show(&cluster, run))["/tests/long"]["status"] == "running",
    );
    assert_eq!(containers_of(&pool).len(), 1);
    cluster.coordinator.as_mut().unwrap().kill_9();
    assert_eq!(
        containers_of(&pool).len(),
        1,
        "the container outlives the coordinator"
    );

    cluster.start_coordinator(&[]);
    let leaked = format!("{pool}-1");
    wait_for(
        "the leaked container to be removed",
        Duration::from_secs(60),
        || !containers_of(&pool).contains(&leaked),
    );
    assert!(cluster
        .operator(&["runs", "cancel", &run.to_string()])
        .status
        .success());
    wait_for(
        "every container of the pool to be removed",
        Duration::from_secs(60),
        || containers_of(&pool).is_empty(),
    );
}

/// The ansible venv the test script makes (ansible-core), if there is one.
fn ansible_bin() -> Option<PathBuf> {
    let bin = ansible_venv().join("bin");
    if bin.join("ansible-playbook").exists() {
        Some(bin)
    } else {
        eprintln!(
            "skipped: no ansible-playbook in {} (scripts/test makes it)",
            bin.display()
        );
        None
    }
}

#[test]
fn a_tests_playbook_sets_its_platform_up_before_its_suite_and_only_for_its_suite() {
    let Some(ansible) = ansible_bin() else {
        return;
    };
    let config = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        ansible.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cluster = cluster_with_pools_env(
        config.path(),
        "[[pools]]\nname = \"played\"\nprovisioner = \"local\"\nmax = 2\n",
        &[],
        vec![("PATH".into(), PathBuf::from(path))],
    );
    let repo = git_repo(
        &cluster.path("repo"),
        &[
            (".fmf/version", "1\n"),
            (
                "setup/play.yml",
                "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: Mark the platform\n      ansible.builtin.copy:\n        content: provisioned\n        dest: \"{{ playbook_dir }}/../provisioned\"\n",
            ),
            (
                "tests/main.fmf",
                "/played:\n  test: grep -q provisioned ../provisioned\n  extra-polarizer-provision:\n    playbook: setup/play.yml\n/plain:\n  test: test ! -e ../provisioned\n",
            ),
        ],
    );
    let run = trigger(&cluster, &repo);
    let finished = follow(&cluster, run, |_, _| {});
    assert_eq!(finished["state"], "passed", "{finished:#}");
    assert_eq!(
        finished["suites"].as_array().unwrap().len(),
        2,
        "{finished:#}"
    );
}

#[test]
fn a_suites_containerfile_builds_the_image_of_its_platform_once_per_content() {
    let config = tempfile::tempdir().unwrap();
    let pool = format!("baked{}", std::process::id());
    let _remove = RemoveContainers(pool.clone());
    let Some(cluster) = podman_cluster(config.path(), &pool, 2) else {
        return;
    };
    let Some(base) = podman::test_image() else {
        return;
    };
    let repo = git_repo(
        &cluster.path("repo"),
        &[
            (".fmf/version", "1\n"),
            (
                "images/Containerfile",
                &format!("FROM {base}\nCOPY marker /etc/polarizer-baked\n"),
            ),
            // New content each time: the image is built by this test, not found from an earlier one.
            ("images/marker", &format!("baked {:?}\n", std::time::SystemTime::now())),
            (
                "tests/main.fmf",
                "/baked:\n  test: grep -q baked /etc/polarizer-baked\n  extra-polarizer-provision:\n    containerfile: images/Containerfile\n/plain:\n  test: test ! -e /etc/polarizer-baked\n",
            ),
        ],
    );
    for _ in 0..2 {
        let run = trigger(&cluster, &repo);
        let finished = follow(&cluster, run, |_, _| {});
        assert_eq!(finished["state"], "passed", "{finished:#}");
        assert_eq!(finished["suites"].as_array().unwrap().len(), 2);
    }
    let metrics = http_get(cluster.http, "/metrics");
    assert!(
        metrics.contains("polarizer_platform_images_built_total 1"),
        "the second run reuses the image: {metrics}"
    );
    wait_containers_gone(&pool);
}

#[test]
fn a_warm_platform_takes_a_suite_at_once_and_is_cleaned_and_kept_for_the_next() {
    let config = tempfile::tempdir().unwrap();
    // Under approval, the pool's own platforms are admitted as they enroll.
    let cluster = cluster_with_pools(
        config.path(),
        "[[pools]]\nname = \"warm\"\nprovisioner = \"local\"\nmin_ready = 1\nmax = 1\nreuse = \"clean\"\nclean = \"touch cleaned\"\n",
        &["--enroll", "approve"],
    );
    let ready = |cluster: &TestCluster| {
        platforms(cluster)["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|platform| platform["name"] == "warm-1" && platform["state"] == "ready")
    };
    wait_for(
        "a warm platform, made with no run asking",
        Duration::from_secs(30),
        || ready(&cluster),
    );
    let repo = tests_repo(&cluster.path("repo"), "/one:\n  test: \"true\"\n");
    let cleaned = cluster.data_dir.join("platforms/warm-1/cleaned");
    for round in 1..=2 {
        let run = trigger(&cluster, &repo);
        let finished = follow(&cluster, run, |_, _| {});
        assert_eq!(finished["state"], "passed", "round {round}: {finished:#}");
        assert_eq!(finished["suites"][0]["agent"], "warm-1", "round {round}");
        wait_for(
            "the platform to be cleaned and ready again",
            Duration::from_secs(30),
            || ready(&cluster) && cleaned.exists(),
        );
        std::fs::remove_file(&cleaned).unwrap();
    }
    assert_eq!(
        platforms(&cluster)["platforms"].as_array().unwrap().len(),
        1
    );
}
