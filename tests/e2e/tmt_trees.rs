//! tmt trees as they are: Polarizer's keys in tmt's `extra-` namespace pass the real `tmt lint` (tmt
//! from PyPI) and import as the bare keys did; `polarizer tests lint` checks a tree with no coordinator,
//! with exit codes for CI; a tree's errors come all at once, placed by file and line; a feature named
//! but not declared is a warning that import, trigger, lint and `features` show, and stops nothing.

use std::path::Path;
use std::process::{Command, Output};

use polarizer_e2e::*;
use serde_json::Value;

/// Every Polarizer key, written lint-clean.
const EVERY_KEY: &[(&str, &str)] = &[
    (".fmf/version", "1\n"),
    (
        "main.fmf",
        "/features:\n  /subscription/identity:\n    paths: [src/identity/**]\n  /subscription/register:\n    description: Registering a system\n    paths: [src/register.py]\n    depends: [subscription/identity]\n",
    ),
    (
        "tests/main.fmf",
        "framework: shell\nduration: 5m\nextra-polarizer-type: integration\n",
    ),
    (
        "tests/register.fmf",
        "/setup:\n  summary: Prepare the entitlement server\n  test: ./setup.sh\n  extra-polarizer-feature: subscription/identity\n/basic:\n  summary: Register with a username\n  test: ./register.sh\n  extra-polarizer-type: functional\n  extra-polarizer-feature: subscription/register\n  extra-polarizer-after: [/tests/register/setup]\n  extra-polarizer-resources:\n    needs: [candlepin]\n    creates: [consumer]\n    modifies: [identity-cert]\n  extra-polarizer-services: [rhsmcertd]\n  extra-polarizer-platform:\n    kind: [vm, baremetal]\n    arch: [x86_64]\n    distro: [rhel-9]\n  extra-polarizer-provision:\n    playbook: setup.yml\n    containerfile: Containerfile\n  extra-polarizer-junit: results.xml\n  extra-polarizer-bdd: register.feature\n  extra-polarizer-hooks:\n    setup: ./start-candlepin.sh\n    cleanup: ./stop-candlepin.sh\n    suite-setup: dnf -y install subscription-manager\n    suite-cleanup: subscription-manager clean\n",
    ),
];

fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `tmt lint` run in `root`: its output, and whether it passed without a failure or a warning.
fn tmt_lint(tmt: &mut Command, root: &Path) -> (bool, String) {
    let output = tmt.arg("lint").current_dir(root).output().expect("run tmt");
    let text = text(&output);
    let clean = output.status.success()
        && !text.lines().any(|line| {
            line.trim_start().starts_with("fail") || line.trim_start().starts_with("warn")
        });
    (clean, text)
}

/// `polarizer tests lint ARGS`, with a data dir and coordinator address that lead nowhere: the lint
/// must need neither.
fn polarizer_lint(args: &[&str]) -> Output {
    let nowhere = tempfile::tempdir().unwrap();
    Command::new(binary("polarizer"))
        .args(["tests", "lint"])
        .args(args)
        .arg("--data-dir")
        .arg(nowhere.path().join("no-data-dir"))
        .args(["--coordinator", "127.0.0.1:9"])
        .output()
        .expect("run polarizer")
}

#[test]
fn polarizer_keys_in_their_lint_clean_form_pass_tmt_lint_and_import_as_bare_ones_did() {
    let tmt = match tmt_command() {
        Ok(tmt) => tmt,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let fresh = || {
        let mut command = Command::new(tmt.get_program());
        command.args(tmt.get_args());
        command
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (clean, output) = tmt_lint(&mut fresh(), &examples);
    assert!(clean, "tmt lint on examples/:\n{output}");

    let dir = tempfile::tempdir().unwrap();
    let every_key = dir.path().join("every-key");
    write_files(&every_key, EVERY_KEY);
    let (clean, output) = tmt_lint(&mut fresh(), &every_key);
    assert!(
        clean,
        "tmt lint on a tree with every Polarizer key:\n{output}"
    );
    // The check has teeth: the same key bare fails tmt's schema.
    let bare = dir.path().join("bare");
    write_files(
        &bare,
        &[
            (".fmf/version", "1\n"),
            (
                "main.fmf",
                "summary: One test\ntest: ./run.sh\ntype: unit\n",
            ),
        ],
    );
    let (clean, output) = tmt_lint(&mut fresh(), &bare);
    assert!(!clean && output.contains("type"), "{output}");

    // Polarizer's own lint agrees, on both; and suggests the lint-clean form for the bare key.
    for tree in [&examples, &every_key] {
        let output = polarizer_lint(&[tree.to_str().unwrap(), "--strict"]);
        assert!(output.status.success(), "{}", text(&output));
        assert!(
            text(&output).contains("0 errors, 0 warnings"),
            "{}",
            text(&output)
        );
    }
    let output = polarizer_lint(&[bare.to_str().unwrap()]);
    assert!(
        output.status.success()
            && text(&output).contains(
                "main.fmf:3: warning: \"type\" is not a tmt key (`tmt lint` fails on it): write it as `extra-polarizer-type`"
            ),
        "{}",
        text(&output)
    );

    // Imported, every lint-clean key means what its bare form meant.
    let cluster = TestCluster::new_coordinator_only();
    let imported = cluster.operator(&["tests", "import", every_key.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", text(&imported));
    let shown = ok_json(cluster.operator(&["tests", "show", "/tests/register/basic", "--json"]));
    let metadata = &shown["metadata"];
    assert_eq!(metadata["test_type"], "functional");
    assert_eq!(metadata["feature"], "subscription/register");
    assert_eq!(
        metadata["after"],
        serde_json::json!(["/tests/register/setup"])
    );
    assert_eq!(
        metadata["resources"]["creates"],
        serde_json::json!(["consumer"])
    );
    assert_eq!(metadata["services"], serde_json::json!(["rhsmcertd"]));
    assert_eq!(
        metadata["platform"],
        serde_json::json!({"kind": ["vm", "baremetal"], "arch": ["x86_64"], "distro": ["rhel-9"]})
    );
    assert_eq!(metadata["provision"]["containerfile"], "Containerfile");
    assert_eq!(metadata["junit"], "results.xml");
    assert_eq!(metadata["bdd"], "register.feature");
    assert_eq!(
        metadata["hooks"]["suite_cleanup"],
        serde_json::json!(["subscription-manager clean"])
    );
    let setup = ok_json(cluster.operator(&["tests", "show", "/tests/register/setup", "--json"]));
    assert_eq!(setup["metadata"]["test_type"], "integration", "inherited");
    // `--platform` finds a test by any of its kinds.
    for (kind, expected) in [("vm", 2), ("baremetal", 2), ("container", 1)] {
        let listed = ok_json(cluster.operator(&["tests", "list", "--platform", kind, "--json"]));
        assert_eq!(
            listed.as_array().unwrap().len(),
            expected,
            "{kind}: {listed}"
        );
    }
}

#[test]
fn tests_lint_needs_no_coordinator_and_exits_as_ci_needs() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_files(
        &tree,
        &[
            (".fmf/version", "1\n"),
            (
                "main.fmf",
                "/features:\n  /login:\n    paths: [src/login/**]\n    depends: [ghost]\n",
            ),
            (
                "tests/main.fmf",
                "/a:\n  test: ./a\n  extra-polarizer-type: smoke\n  extra-polarizer-resources: {needz: [db]}\n/b:\n  test: ./b\n  extra-polarizer-after: [/nowhere]\n  extra-polarizer-feature: logn\n",
            ),
            (
                "tests/c.fmf",
                "test: ./c\nduration: soon\nextra-polarizer-platform:\n  kind: [vm, moon]\n",
            ),
        ],
    );
    let tree_arg = tree.to_str().unwrap();
    // Every error at once, sorted by file and line; the warning too. Exit 1.
    let output = polarizer_lint(&[tree_arg]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let placed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split(": ").next())
        .filter(|place| place.contains(".fmf:"))
        .collect();
    assert_eq!(
        placed,
        [
            "main.fmf:4",
            "tests/c.fmf:2",
            "tests/c.fmf:4",
            "tests/main.fmf:3",
            "tests/main.fmf:4",
            "tests/main.fmf:7",
            "tests/main.fmf:8",
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("5 errors, 2 warnings in 3 tests and 1 feature"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tests/main.fmf:8: warning: /tests/b: names feature \"logn\", which is not declared under /features"),
        "{stdout}"
    );

    // The same as JSON, for a CI job to read.
    let output = polarizer_lint(&[tree_arg, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (report["errors"].as_u64(), report["warnings"].as_u64()),
        (Some(5), Some(2))
    );
    let first = &report["diagnostics"][0];
    assert_eq!(first["file"], "main.fmf");
    assert_eq!(first["line"], 4);
    assert_eq!(first["severity"], "error");
    assert_eq!(first["node"], "/features/login");
    assert_eq!(first["field"], "depends");
    let kind = &report["diagnostics"][2];
    assert_eq!(
        (kind["node"].as_str(), kind["field"].as_str()),
        (Some("/tests/c"), Some("extra-polarizer-platform.kind"))
    );

    // Warnings alone pass, unless --strict.
    write_files(
        &tree,
        &[
            (
                "main.fmf",
                "/features:\n  /login:\n    paths: [src/login/**]\n",
            ),
            (
                "tests/main.fmf",
                "/b:\n  test: ./b\n  extra-polarizer-feature: logn\n",
            ),
            ("tests/c.fmf", "test: ./c\n"),
        ],
    );
    let output = polarizer_lint(&[tree_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("0 errors, 1 warning"),
        "{}",
        text(&output)
    );
    let output = polarizer_lint(&[tree_arg, "--strict"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));

    // Nothing to read: 2, as for a usage error.
    for missing in [dir.path().join("none"), dir.path().to_path_buf()] {
        let output = polarizer_lint(&[missing.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(text(&output).starts_with("error: "), "{}", text(&output));
    }
    let output = polarizer_lint(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[test]
fn an_undeclared_feature_warns_everywhere_and_a_trees_errors_come_at_once() {
    let cluster = TestCluster::new_coordinator_only();
    let repo = git_repo(
        &cluster.path("repo"),
        &[
            (".fmf/version", "1\n"),
            ("main.fmf", "/features:\n  /login:\n    paths: [src/login/**]\n"),
            (
                "tests.fmf",
                "/a:\n  test: echo a\n  extra-polarizer-feature: login\n/b:\n  test: echo b\n  extra-polarizer-feature: logn\n",
            ),
        ],
    );
    let repo_arg = repo.to_str().unwrap();
    let warning = "tests.fmf:6: warning: /tests/b: names feature \"logn\", which is not declared under /features";

    // Import: the tree is stored, the test with its feature, and the warning is shown.
    let output = cluster.operator(&["tests", "import", repo_arg]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("2 tests (2 new"),
        "{}",
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(warning),
        "{}",
        text(&output)
    );
    let shown = ok_json(cluster.operator(&["tests", "show", "/tests/b", "--json"]));
    assert_eq!(shown["metadata"]["feature"], "logn");
    let features = ok_json(cluster.operator(&["features", "--json"]));
    let undeclared: Vec<(&str, bool, u64)> = features
        .as_array()
        .unwrap()
        .iter()
        .map(|feature| {
            (
                feature["name"].as_str().unwrap(),
                feature["declared"].as_bool().unwrap(),
                feature["direct_tests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(undeclared, [("login", true, 1), ("logn", false, 1)]);
    let table = String::from_utf8_lossy(&cluster.operator(&["features"]).stdout).into_owned();
    assert!(table.contains("logn (undeclared)"), "{table}");

    // Trigger: the run is planned, with the warning shown and kept in the run's note.
    let output = cluster.operator(&["trigger", "--repo", repo_arg, "--all", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let triggered: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(triggered["tests"], 2);
    let warnings = triggered["warnings"].as_array().unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().starts_with(warning),
        "{triggered}"
    );
    let output = cluster.operator(&["trigger", "--repo", repo_arg, "--feature", "logn"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(warning),
        "{}",
        text(&output)
    );

    // Errors where the data cannot be used stay errors: all of them, placed, and nothing stored.
    write_files(
        &repo,
        &[(
            "tests.fmf",
            "/a:\n  test: echo a\n  extra-polarizer-type: smoke\n/b:\n  test: echo b\n  extra-polarizer-after: [/tests/c]\n/c:\n  test: echo c\n  extra-polarizer-after: [/tests/b]\n  tag: {not: a list}\n",
        )],
    );
    let output = cluster.operator(&["tests", "import", repo_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("nothing stored"), "{stderr}");
    for expected in [
        "3 errors",
        "tests.fmf:3: error: /tests/a: key \"extra-polarizer-type\": \"smoke\" is not one of",
        "tests.fmf:6: error: cycle in `after`: /tests/b -> /tests/c -> /tests/b",
        "tests.fmf:10: error: /tests/c: key \"tag\"",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // With the nodes' errors fixed, the cycle is what is left, placed too.
    write_files(
        &repo,
        &[(
            "tests.fmf",
            "/a:\n  test: echo a\n/b:\n  test: echo b\n  extra-polarizer-after: [/tests/c]\n/c:\n  test: echo c\n  extra-polarizer-after: [/tests/b]\n",
        )],
    );
    let output = cluster.operator(&["tests", "import", repo_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr
                .contains("tests.fmf:5: error: cycle in `after`: /tests/b -> /tests/c -> /tests/b"),
        "{stderr}"
    );
    // Two files whose YAML does not parse: both, with line and column.
    write_files(
        &repo,
        &[
            ("tests.fmf", "/a:\n  test: [unclosed\n"),
            ("more.fmf", "test: ./m\n  oops: 1\n"),
        ],
    );
    let output = cluster.operator(&["tests", "import", repo_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for expected in [
        "2 errors",
        "more.fmf:2:7: error: invalid YAML",
        "tests.fmf:3:1: error: invalid YAML",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    let listed = ok_json(cluster.operator(&["tests", "list", "--json"]));
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "a refused import stored nothing"
    );
}

/// Each fmf tree under the roots given, as Python fmf finds its tests (selected nodes with `test`, as
/// tmt's `Tree.tests()`): root → name → [test, summary, enabled, tags]; `null` for a tree fmf refuses.
const PYTHON_TESTS: &str = r#"
import json, sys, fmf
out = {}
for root in sys.argv[1:]:
    try:
        tree = fmf.Tree(root)
        tests = {}
        for node in tree.prune(keys=["test"]):
            data = node.data
            tags = data.get("tag", [])
            if isinstance(tags, str):
                tags = [tags]
            tests[node.name] = [str(data["test"]), str(data.get("summary", "") or ""),
                                data.get("enabled", True) is not False, [str(tag) for tag in tags]]
        out[root] = tests
    except Exception:
        out[root] = None
print(json.dumps(out))
"#;

type TestView = (String, String, bool, Vec<String>);

/// tmt's own sdist from PyPI, fetched once into `target/tmt-sdist/` (or `$POLARIZER_TMT_SDIST`).
fn tmt_sdist() -> Result<std::path::PathBuf, String> {
    if let Some(path) = std::env::var_os("POLARIZER_TMT_SDIST") {
        return Ok(path.into());
    }
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmt-sdist");
    let archive = directory.join(format!("tmt-{TMT_VERSION}.tar.gz"));
    if !archive.is_file() {
        let output = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
            ])
            .arg(format!("tmt=={TMT_VERSION}"))
            .arg("-d")
            .arg(&directory)
            .output()
            .map_err(|err| format!("cannot run python3 -m pip: {err}"))?;
        if !archive.is_file() {
            return Err(format!(
                "pip download tmt=={TMT_VERSION}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    Ok(archive)
}

fn tree_roots(directory: &Path, roots: &mut Vec<std::path::PathBuf>) {
    if directory.join(".fmf/version").is_file() {
        roots.push(directory.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let mut children: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .collect();
    children.sort();
    for child in children {
        tree_roots(&child, roots);
    }
}

/// A large real tmt tree as it is: every fmf tree in tmt's own sdist (its tests, plans and stories,
/// and the ~200 trees its tests run on: tests that are plans, `provision` steps with `how` and
/// `hardware`, libraries in `require`, durations like `1m*2.5`). Each tree Python fmf reads and
/// `tmt lint` accepts imports with the same tests (name, test, summary, enabled, tags) as Python
/// fmf finds; a tree Polarizer refuses must be one `tmt lint` refuses too.
#[test]
fn tmts_own_trees_import_with_the_tests_python_fmf_finds() {
    let (archive, mut tmt) = match (tmt_sdist(), tmt_command()) {
        (Ok(archive), Ok(tmt)) => (archive, tmt),
        (Err(reason), _) | (_, Err(reason)) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "cannot unpack {}", archive.display());
    let mut roots = Vec::new();
    tree_roots(unpacked.path(), &mut roots);
    assert!(roots.len() > 100, "{} trees", roots.len());

    let output = Command::new("python3")
        .args(["-c", PYTHON_TESTS])
        .args(&roots)
        .output()
        .expect("run python3");
    assert!(output.status.success(), "{}", text(&output));
    let python: std::collections::BTreeMap<
        String,
        Option<std::collections::BTreeMap<String, TestView>>,
    > = serde_json::from_slice(&output.stdout).unwrap();

    let (mut compared, mut tests, mut refused_by_both) = (0, 0, Vec::new());
    for root in &roots {
        let Some(Some(expected)) = python.get(root.to_str().unwrap()) else {
            continue;
        };
        let relative = root
            .strip_prefix(unpacked.path())
            .unwrap()
            .display()
            .to_string();
        let tree = polarizer_shared::fmf::Tree::load(root)
            .unwrap_or_else(|err| panic!("{relative}: Python fmf reads it, Polarizer: {err}"));
        let catalog = match polarizer_shared::metadata::Catalog::from_tree(&tree) {
            Ok(catalog) => catalog,
            Err(err) => {
                // Only a tree tmt refuses too (its lint fails on it: duplicate ids, `test: false`).
                let lint = tmt.arg("lint").current_dir(root).output().expect("run tmt");
                tmt = tmt_command().expect("tmt was there a moment ago");
                assert!(
                    !lint.status.success(),
                    "{relative}: tmt lint passes, Polarizer refuses it: {err}"
                );
                refused_by_both.push(relative);
                continue;
            }
        };
        let ours: std::collections::BTreeMap<String, TestView> = catalog
            .tests
            .iter()
            .map(|test| {
                let view = (
                    test.test.clone(),
                    test.summary.clone(),
                    test.enabled,
                    test.tags.clone(),
                );
                (test.name.clone(), view)
            })
            .collect();
        assert_eq!(&ours, expected, "{relative}");
        // tmt's `provision` steps are never read as Polarizer's.
        assert!(
            catalog
                .tests
                .iter()
                .all(|test| test.provision.playbook.is_empty()),
            "{relative}"
        );
        compared += 1;
        tests += ours.len();
    }
    eprintln!(
        "tmt {TMT_VERSION}: {compared} trees, {tests} tests as Python fmf finds them; refused by tmt lint and Polarizer alike: {refused_by_both:?}"
    );
    assert!(
        compared > 150 && tests > 600,
        "{compared} trees, {tests} tests"
    );
}
