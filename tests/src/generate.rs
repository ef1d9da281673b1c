//! Writes large, realistic tmt-style fmf trees for benchmarking the metadata reader against Python fmf.
//!
//! The shape follows what a real test repository holds: shared keys at the top, per-directory `main.fmf`
//! files that extend tags and environment and carry `adjust` rules, tests both as their own `.fmf` files and
//! as in-file `/test-K` children, and a `features.fmf` declaring Polarizer features with an acyclic
//! dependency graph.

use std::fs;
use std::io;
use std::path::Path;

/// How many areas the features (and test directories) are spread over; each area has two sub-features.
const FEATURE_AREAS: usize = 50;
/// Sub-feature names within an area, so there are `FEATURE_AREAS * FEATURE_SUBS.len()` features.
const FEATURE_SUBS: [&str; 2] = ["core", "cli"];
/// How many features every generated tree declares.
pub const FEATURE_COUNT: usize = FEATURE_AREAS * FEATURE_SUBS.len();
/// The top-level directory holding the generated test directories.
const TESTS_DIRECTORY: &str = "tests";

/// What `write_fmf_tree` wrote: counts a reader must reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedTree {
    pub directories: usize,
    pub tests: usize,
    pub features: usize,
}

/// The name of directory `index`, zero-padded so sorted order is numeric order.
pub fn directory_name(index: usize) -> String {
    format!("dir-{index:04}")
}

/// The feature (`area-N/sub`) a test directory belongs to.
pub fn directory_feature(index: usize) -> String {
    let area = index % FEATURE_AREAS;
    let sub = FEATURE_SUBS[(index / FEATURE_AREAS) % FEATURE_SUBS.len()];
    format!("area-{area}/{sub}")
}

/// Whether directory `index` disables its tests before RHEL 9 (the others only before RHEL 8), so a
/// `distro=rhel-8.4` context disables half of the tests.
pub fn directory_disabled_before_rhel9(index: usize) -> bool {
    index.is_multiple_of(2)
}

/// Write a tree of `directories` test directories with `tests_per_directory` tests each under `root`
/// (created if missing).
pub fn write_fmf_tree(
    root: &Path,
    directories: usize,
    tests_per_directory: usize,
) -> io::Result<GeneratedTree> {
    fs::create_dir_all(root.join(".fmf"))?;
    fs::write(root.join(".fmf").join("version"), "1\n")?;
    fs::write(
        root.join("main.fmf"),
        "framework: shell\n\
         duration: 5m\n\
         tier: 1\n\
         component: [subscription-manager]\n\
         tag: [rhsm]\n\
         environment:\n    LANG: C.UTF-8\n\
         contact: rhsm-qe@example.com\n",
    )?;
    let features = write_features(root)?;
    let tests_root = root.join(TESTS_DIRECTORY);
    for directory_index in 0..directories {
        write_directory(&tests_root, directory_index, tests_per_directory)?;
    }
    Ok(GeneratedTree {
        directories,
        tests: directories * tests_per_directory,
        features,
    })
}

/// `features.fmf`: node `/features` with one child per `area-N/sub`, each depending only on features with a
/// lower index, so the graph is acyclic by construction.
fn write_features(root: &Path) -> io::Result<usize> {
    let mut names = Vec::new();
    for sub in FEATURE_SUBS {
        for area in 0..FEATURE_AREAS {
            names.push(format!("area-{area}/{sub}"));
        }
    }
    let mut text = String::from("summary: Polarizer features of subscription-manager\n");
    for (index, name) in names.iter().enumerate() {
        let area = name.split('/').next().unwrap_or(name);
        text.push_str(&format!("/{name}:\n    paths: [\"src/{area}/**\"]\n"));
        // Two earlier features at most: the previous one and one about half-way back.
        let mut depends: Vec<&str> = Vec::new();
        if index > 0 {
            depends.push(&names[index - 1]);
        }
        if index > 3 {
            depends.push(&names[index / 2]);
        }
        text.push_str(&format!("    depends: [{}]\n", depends.join(", ")));
    }
    fs::write(root.join("features.fmf"), text)?;
    Ok(names.len())
}

/// One test directory: `main.fmf` with inherited keys, adjust rules and the second half of the tests as
/// in-file children; the first half as their own `test-K.fmf` files.
fn write_directory(
    tests_root: &Path,
    directory_index: usize,
    tests_per_directory: usize,
) -> io::Result<()> {
    let name = directory_name(directory_index);
    let directory = tests_root.join(&name);
    fs::create_dir_all(&directory)?;
    let feature = directory_feature(directory_index);
    let area = feature.split('/').next().unwrap_or(&feature);
    let oldest_distro = if directory_disabled_before_rhel9(directory_index) {
        "rhel-9"
    } else {
        "rhel-8"
    };
    let mut main = format!(
        "summary: Tests of {feature} ({name})\n\
         tag+: [{area}, {name}]\n\
         environment+:\n    AREA: {area}\n    DIRECTORY: {name}\n\
         feature: {feature}\n\
         resources:\n    needs: [candlepin]\n    modifies: [{name}-state]\n\
         adjust:\n\
         \x20 - when: distro < {oldest_distro}\n\
         \x20   enabled: false\n\
         \x20   because: the feature needs {oldest_distro} or later\n\
         \x20 - when: arch == s390x\n\
         \x20   duration: 10m\n\
         \x20   because: s390x machines are slow\n"
    );
    let in_file_start = tests_per_directory / 2;
    for test_index in 0..tests_per_directory {
        let body = test_body(directory_index, test_index);
        if test_index < in_file_start {
            fs::write(directory.join(format!("test-{test_index:03}.fmf")), body)?;
        } else {
            main.push_str(&format!("/test-{test_index:03}:\n"));
            for line in body.lines() {
                main.push_str("    ");
                main.push_str(line);
                main.push('\n');
            }
        }
    }
    fs::write(directory.join("main.fmf"), main)
}

/// One test's own keys, as a top-level mapping (indented by the caller when it becomes an in-file child).
fn test_body(directory_index: usize, test_index: usize) -> String {
    let mut body = format!(
        "summary: Check case {test_index} of {directory}\n\
         test: ./run.sh {test_index}\n\
         tag+: [{speed}, case-{test_index}]\n\
         link:\n  - verifies: REQ-{requirement}\n",
        directory = directory_name(directory_index),
        speed = if test_index.is_multiple_of(3) {
            "slow"
        } else {
            "fast"
        },
        requirement = directory_index * 10 + test_index % 10,
    );
    // Every fifth test runs after its predecessor, as ordering links do in real suites.
    if test_index > 0 && test_index.is_multiple_of(5) {
        // Polarizer resolves `after` by node name (or fmf id).
        body.push_str(&format!(
            "after: [/{TESTS_DIRECTORY}/{}/test-{:03}]\n",
            directory_name(directory_index),
            test_index - 1
        ));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::fmf::{Context, FmfValue, Tree};

    #[test]
    fn a_tiny_tree_loads_with_inheritance_and_adjust() {
        let directory = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
        let generated = write_fmf_tree(directory.path(), 3, 4)
            .unwrap_or_else(|error| panic!("write tree: {error}"));
        assert_eq!(
            generated,
            GeneratedTree {
                directories: 3,
                tests: 12,
                features: 100
            }
        );
        let mut tree =
            Tree::load(directory.path()).unwrap_or_else(|error| panic!("load tree: {error}"));
        tree.adjust(
            &Context::new()
                .with_dimension("distro", ["rhel-8.4"])
                .with_dimension("arch", ["s390x"]),
        )
        .unwrap_or_else(|error| panic!("adjust: {error}"));
        assert_eq!(tree.tests().count(), 12);
        assert_eq!(
            tree.selected()
                .filter(|node| node.name().starts_with("/features/"))
                .count(),
            100
        );

        // A file-backed test in directory 0 (disabled before RHEL 9) and an in-file one in directory 1.
        let text = |node: &str, key: &str| {
            tree.node(node)
                .unwrap_or_else(|| panic!("no node {node}"))
                .get(key)
                .map(FmfValue::python_str)
                .unwrap_or_default()
        };
        let file_test = "/tests/dir-0000/test-000";
        assert_eq!(text(file_test, "test"), "./run.sh 0");
        assert_eq!(
            text(file_test, "tag"),
            "['rhsm', 'area-0', 'dir-0000', 'slow', 'case-0']"
        );
        assert_eq!(text(file_test, "enabled"), "False");
        assert_eq!(text(file_test, "duration"), "10m");
        assert_eq!(text(file_test, "feature"), "area-0/core");
        assert_eq!(text(file_test, "component"), "['subscription-manager']");
        let in_file_test = "/tests/dir-0001/test-003";
        assert_eq!(text(in_file_test, "test"), "./run.sh 3");
        assert_eq!(text(in_file_test, "enabled"), "");
        assert_eq!(
            text(in_file_test, "environment"),
            "{'LANG': 'C.UTF-8', 'AREA': 'area-1', 'DIRECTORY': 'dir-0001'}"
        );
    }
}
