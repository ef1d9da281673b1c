//! Test metadata end to end: fmf trees (a directory and a real git repository) imported through the CLI
//! into the coordinator's store, queried by every filter, re-imported, and refused when bad.

use std::path::Path;
use std::process::Command;

use polarizer_e2e::*;
use serde_json::Value;

fn write_tree(root: &Path) {
    let files: &[(&str, &str)] = &[
        (".fmf/version", "1\n"),
        (
            "main.fmf",
            "/features:\n  /subscription/identity:\n    paths: [src/identity/**]\n  /subscription/register:\n    paths: [src/register.py]\n    depends: [subscription/identity]\n  /attach:\n    paths: [src/attach/**]\n    depends: [subscription/register]\n",
        ),
        ("tests/main.fmf", "framework: shell\nduration: 5m\ntype: integration\ncomponent: subscription-manager\n"),
        (
            "tests/register.fmf",
            "/basic:\n  summary: register with a username\n  test: ./register.sh\n  feature: subscription/register\n  tag: [smoke]\n  tier: 1\n  resources: {needs: [candlepin], modifies: [identity-cert]}\n  platform: {kind: container}\n  link: [{verifies: REQ-123}]\n  after: [/tests/identity/cert]\n",
        ),
        ("tests/identity.fmf", "/cert:\n  summary: identity certificate\n  test: ./cert.sh\n  type: unit\n  feature: subscription/identity\n  platform: {distro: [rhel-9]}\n"),
        (
            "tests/attach.fmf",
            "/pool:\n  summary: attach a pool\n  test: ./attach.sh\n  feature: attach\n  adjust:\n    - when: distro < rhel-9\n      enabled: false\n      because: pools are gone before RHEL 9\n",
        ),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn json(output: std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn names(cluster: &TestCluster, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["tests", "list", "--json"];
    args.extend(filters);
    let listed = json(cluster.operator(&args));
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|test| test["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn fmf_trees_import_query_reimport_and_refuse_bad_input() {
    let cluster = TestCluster::new_coordinator_only();
    let tree = cluster.path("qe-tests");
    write_tree(&tree);
    let tree_arg = tree.to_str().unwrap();

    let output = cluster.operator(&["tests", "import", tree_arg]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("3 tests (3 new, 0 changed, 0 removed), 3 features"),
        "{stdout}"
    );

    // A feature selects its own tests and those of every feature depending on it, transitively.
    assert_eq!(
        names(&cluster, &["--feature", "subscription/identity"]),
        [
            "/tests/attach/pool",
            "/tests/identity/cert",
            "/tests/register/basic"
        ]
    );
    assert_eq!(
        names(&cluster, &["--feature", "attach"]),
        ["/tests/attach/pool"]
    );
    // "Can run on a container": tests asking for one, and tests asking for no platform kind at all.
    assert_eq!(
        names(
            &cluster,
            &["--platform", "container", "--type", "integration"]
        ),
        ["/tests/attach/pool", "/tests/register/basic"]
    );
    assert_eq!(
        names(&cluster, &["--platform", "vm", "--type", "integration"]),
        ["/tests/attach/pool"]
    );
    // rhel-9.4 meets the one test asking for rhel-9; fedora does not.
    assert_eq!(names(&cluster, &["--distro", "rhel-9.4"]).len(), 3);
    assert_eq!(names(&cluster, &["--distro", "fedora-41"]).len(), 2);
    assert_eq!(
        names(
            &cluster,
            &["--resource", "candlepin", "--tag", "smoke", "--tier", "1"]
        ),
        ["/tests/register/basic"]
    );
    assert_eq!(
        names(&cluster, &["--linked", "verifies:REQ-123"]),
        ["/tests/register/basic"]
    );
    assert_eq!(
        names(&cluster, &["--linked", "REQ-123"]),
        ["/tests/register/basic"]
    );
    assert_eq!(
        names(&cluster, &["--depends-on", "/tests/identity/cert"]),
        ["/tests/register/basic"]
    );
    assert_eq!(
        names(&cluster, &["--type", "unit"]),
        ["/tests/identity/cert"]
    );
    assert_eq!(
        names(&cluster, &["--component", "subscription-manager"]).len(),
        3
    );
    let differing = json(cluster.operator(&["tests", "list", "--differs-by-distro", "--json"]));
    assert_eq!(differing[0]["name"], "/tests/attach/pool");
    assert!(
        differing[0]["differs_by"]
            .as_str()
            .unwrap()
            .contains("distro < rhel-9"),
        "{differing}"
    );

    let shown = json(cluster.operator(&["tests", "show", "/tests/register/basic", "--json"]));
    assert_eq!(shown["metadata"]["summary"], "register with a username");
    assert_eq!(shown["metadata"]["duration_seconds"], 300);
    assert_eq!(
        shown["metadata"]["resources"]["modifies"][0],
        "identity-cert"
    );
    assert_eq!(shown["source"]["location"], tree_arg);

    let features = json(cluster.operator(&["features", "--json"]));
    let identity = features
        .as_array()
        .unwrap()
        .iter()
        .find(|feature| feature["name"] == "subscription/identity")
        .unwrap();
    assert_eq!(identity["dependents"][0], "subscription/register");
    assert_eq!(identity["direct_tests"], 1);
    assert_eq!(identity["selected_tests"], 3);

    // Re-import is idempotent; a test that disappears is marked removed, not deleted.
    let again = String::from_utf8(cluster.operator(&["tests", "import", tree_arg]).stdout).unwrap();
    assert!(
        again.contains("3 tests (0 new, 0 changed, 0 removed)"),
        "{again}"
    );
    // A changed test is rewritten with its facets; the unchanged ones are left alone.
    let register = tree.join("tests/register.fmf");
    let original = std::fs::read_to_string(&register).unwrap();
    std::fs::write(
        &register,
        original.replace("tag: [smoke]", "tag: [nightly]"),
    )
    .unwrap();
    let changed =
        String::from_utf8(cluster.operator(&["tests", "import", tree_arg]).stdout).unwrap();
    assert!(
        changed.contains("3 tests (0 new, 1 changed, 0 removed)"),
        "{changed}"
    );
    assert!(names(&cluster, &["--tag", "smoke"]).is_empty());
    assert_eq!(
        names(&cluster, &["--tag", "nightly", "--resource", "candlepin"]),
        ["/tests/register/basic"]
    );
    std::fs::write(&register, original).unwrap();
    let back = String::from_utf8(cluster.operator(&["tests", "import", tree_arg]).stdout).unwrap();
    assert!(
        back.contains("3 tests (0 new, 1 changed, 0 removed)"),
        "{back}"
    );
    assert_eq!(
        names(&cluster, &["--tag", "smoke"]),
        ["/tests/register/basic"]
    );
    assert!(names(&cluster, &["--tag", "nightly"]).is_empty());
    std::fs::remove_file(tree.join("tests/attach.fmf")).unwrap();
    let fewer = String::from_utf8(cluster.operator(&["tests", "import", tree_arg]).stdout).unwrap();
    assert!(
        fewer.contains("2 tests (0 new, 0 changed, 1 removed)"),
        "{fewer}"
    );
    assert_eq!(
        names(&cluster, &["--feature", "subscription/identity"]).len(),
        2
    );
    assert_eq!(names(&cluster, &["--include-removed"]).len(), 3);
    let removed = String::from_utf8(
        cluster
            .operator(&["tests", "show", "/tests/attach/pool"])
            .stdout,
    )
    .unwrap();
    assert!(removed.contains("no longer in its source"), "{removed}");

    // Bad input: a clear error naming the place, and nothing stored.
    let refuse = |file: &str, text: &str, expected: &str| {
        let original = std::fs::read_to_string(tree.join(file)).unwrap_or_default();
        std::fs::write(tree.join(file), text).unwrap();
        let output = cluster.operator(&["tests", "import", tree_arg]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success()
                && stderr.contains("nothing stored")
                && stderr.contains(expected),
            "{expected}: {stderr}"
        );
        std::fs::write(tree.join(file), original).unwrap();
        assert_eq!(
            names(&cluster, &["--include-removed"]).len(),
            3,
            "a failed import changed the store"
        );
    };
    refuse(
        "tests/identity.fmf",
        "/cert:\n  test: [unclosed\n",
        "identity.fmf:3:1: error: invalid YAML",
    );
    refuse(
        "tests/identity.fmf",
        "/cert:\n  test: ./c\n  tag: {a: 1}\n",
        "/tests/identity/cert: key \"tag\"",
    );
    refuse(
        "tests/identity.fmf",
        "/cert:\n  test: ./c\n  resources: {needz: [x]}\n",
        "unknown key \"needz\"",
    );
    refuse(
        "tests/identity.fmf",
        "/cert:\n  test: ./c\n  after: [/tests/register/basic]\n",
        "cycle in `after`: ",
    );
    refuse(
        "main.fmf",
        "/features:\n  /subscription/identity:\n    depends: [attach]\n  /subscription/register:\n    depends: [subscription/identity]\n  /attach:\n    depends: [subscription/register]\n",
        "cycle in feature dependencies",
    );
    let output = cluster.operator(&[
        "tests",
        "import",
        cluster.path("coordinator").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(".fmf/version"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = cluster.operator(&["tests", "import", "/no/such/dir"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/dir: no such directory"));

    // A listing piped into a reader that has gone (`| head -c 100`) ends quietly, as `ls` would.
    const SIGPIPE: i32 = 13;
    for listing in [&["tests", "list", "--json"][..], &["agents"], &["features"]] {
        let mut child = cluster
            .operator_command(listing)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run polarizer");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait for polarizer");
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert!(
            output.status.success() || output.status.signal() == Some(SIGPIPE),
            "{listing:?} into a closed pipe: {:?}, {stderr}",
            output.status
        );
        assert!(
            stderr.is_empty(),
            "{listing:?} into a closed pipe said: {stderr}"
        );
    }
}

#[test]
fn git_sources_are_cloned_at_a_ref_and_their_commit_recorded() {
    let cluster = TestCluster::new_coordinator_only();
    let repository = cluster.path("repository");
    write_tree(&repository);
    git(
        &repository,
        &["init", "--quiet", "--initial-branch", "main"],
    );
    git(&repository, &["add", "."]);
    git(&repository, &["commit", "--quiet", "-m", "tests"]);
    let head = git(&repository, &["rev-parse", "HEAD"]);
    let url = format!("file://{}", repository.display());

    let imported = json(cluster.operator(&["tests", "import", &url, "--ref", "main", "--json"]));
    assert_eq!(imported["source"]["git_commit"], head.trim());
    assert_eq!(imported["summary"]["tests"], 3);
    assert!(imported["source"]["tree_path"]
        .as_str()
        .unwrap()
        .contains("git-cache"));
    // A new commit on the branch is picked up by the next import.
    std::fs::remove_file(repository.join("tests/attach.fmf")).unwrap();
    git(&repository, &["commit", "--quiet", "-am", "drop attach"]);
    let again = json(cluster.operator(&["tests", "import", &url, "--ref", "main", "--json"]));
    assert_eq!(again["summary"]["removed"], 1);

    let output = cluster.operator(&["tests", "import", "file:///no/such/repository.git"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("git fetch file:///no/such/repository.git"),
        "{stderr}"
    );
    let output = cluster.operator(&["tests", "import", &url, "--ref", "no-such-branch"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-branch"));

    // Options smuggled in as a URL or a ref run nothing: not on import, not on trigger.
    let marker = cluster.path("ran");
    let smuggled = format!("--upload-pack=touch {};:.git", marker.display());
    let smuggled_repo = format!("--repo={smuggled}");
    let upload_pack = format!("--ref=--upload-pack=touch {}", marker.display());
    let attempts: [(Vec<&str>, &str); 4] = [
        (
            vec!["tests", "import", "--ref", "main", "--", &smuggled],
            "is not a repository location",
        ),
        (
            vec!["tests", "import", &url, &upload_pack],
            "is not a git ref",
        ),
        (
            vec!["trigger", &smuggled_repo, "--changed", "src/x.py"],
            "is not a repository location",
        ),
        (
            vec![
                "tests",
                "import",
                "ext::sh -c touch% /tmp/polarizer-ext.git",
            ],
            "is not a repository location",
        ),
    ];
    for (args, expected) in attempts {
        // After `--` every word is the location: the client's own flags go before it.
        let output = match args.iter().position(|arg| *arg == "--") {
            Some(dashes) => {
                let quic = cluster.quic.to_string();
                let mut command = Command::new(binary("polarizer"));
                command
                    .args(&args[..dashes])
                    .args(["--coordinator", quic.as_str(), "--data-dir"])
                    .arg(&cluster.data_dir)
                    .args(&args[dashes..]);
                command.output().expect("run polarizer")
            }
            None => cluster.operator(&args),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!marker.exists(), "{args:?} ran a command");
    }
}
