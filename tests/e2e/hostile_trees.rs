//! Hostile test trees through the real binaries: a tree's symlinks that lead out of it are refused by name,
//! and nothing of the files behind them reaches the operator.

use std::path::Path;
use std::process::Output;

use polarizer_e2e::*;

fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (relative, text) in files {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn symlink(target: &Path, link: &Path) {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Both streams of a CLI call, for searching.
fn both_streams(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stored_test_count(cluster: &TestCluster) -> usize {
    let output = cluster.operator(&["tests", "list", "--json", "--include-removed"]);
    assert!(output.status.success(), "{}", both_streams(&output));
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    listed.as_array().unwrap().len()
}

#[test]
fn a_version_file_linked_to_the_ca_key_is_refused_without_echoing_it() {
    let cluster = TestCluster::new_coordinator_only();
    let ca_key_path = cluster.data_dir.join("ca-key.pem");
    let ca_key = std::fs::read_to_string(&ca_key_path).unwrap();
    assert!(ca_key.contains("PRIVATE KEY"), "not a key: {ca_key_path:?}");
    let tree = cluster.path("hostile");
    write_files(&tree, &[("main.fmf", "test: ./run.sh\n")]);
    std::fs::create_dir_all(tree.join(".fmf")).unwrap();
    symlink(&ca_key_path, &tree.join(".fmf/version"));

    let output = cluster.operator(&["tests", "import", tree.to_str().unwrap()]);
    let streams = both_streams(&output);
    assert!(!output.status.success(), "{streams}");
    assert!(streams.contains(".fmf/version"), "{streams}");
    assert!(!streams.contains("PRIVATE KEY"), "{streams}");
    for key_line in ca_key.lines().map(str::trim).filter(|line| line.len() > 8) {
        assert!(
            !streams.contains(key_line),
            "a key line is echoed: {streams}"
        );
    }
    assert_eq!(stored_test_count(&cluster), 0);
}

#[test]
fn a_directory_linked_out_of_the_tree_is_refused_and_nothing_stored() {
    let cluster = TestCluster::new_coordinator_only();
    let outside = cluster.path("outside");
    write_files(&outside, &[("stolen.fmf", "test: ./stolen.sh\n")]);
    let tree = cluster.path("hostile");
    write_files(
        &tree,
        &[(".fmf/version", "1\n"), ("own.fmf", "test: ./own.sh\n")],
    );
    symlink(&outside, &tree.join("linked"));

    let output = cluster.operator(&["tests", "import", tree.to_str().unwrap()]);
    let streams = both_streams(&output);
    assert!(!output.status.success(), "{streams}");
    assert!(
        streams.contains("linked") && streams.contains("symlink"),
        "{streams}"
    );
    assert_eq!(stored_test_count(&cluster), 0);

    // The same tree without the link imports.
    std::fs::remove_file(tree.join("linked")).unwrap();
    let output = cluster.operator(&["tests", "import", tree.to_str().unwrap()]);
    assert!(output.status.success(), "{}", both_streams(&output));
    assert_eq!(stored_test_count(&cluster), 1);
}
