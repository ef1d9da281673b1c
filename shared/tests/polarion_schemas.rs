//! The Polarion importer files `shared::polarion` writes are valid against the importers' own schemas
//! from the corpus (polarize's `xunit.xsd` and `testcase-importer.xsd`), checked by `xmllint`: every
//! outcome, output with characters XML cannot carry, parameters, steps, custom fields and links.

use std::path::{Path, PathBuf};
use std::process::Command;

use polarizer_shared::polarion::{
    testcases, xunit, TestCaseImport, TestCaseItem, Verdict, XunitCase, XunitImport,
};

fn schema(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/polarion/RedHatQE+polarize/src/main/resources")
        .join(relative)
}

fn assert_valid(xml: &str, xsd: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("import.xml");
    std::fs::write(&file, xml).unwrap();
    let checked = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(xsd)
        .arg(&file)
        .output()
        .expect("xmllint (libxml2-utils) is installed by scripts/test");
    assert!(
        checked.status.success(),
        "{}: {}\n{xml}",
        xsd.display(),
        String::from_utf8_lossy(&checked.stderr)
    );
}

fn case(name: &str, verdict: Verdict) -> XunitCase {
    XunitCase {
        name: name.into(),
        classname: "polarizer".into(),
        time_seconds: Some(0.25),
        verdict,
        system_out: "line 1\n\u{1b}[31mred\u{1b}[0m <&>\n".into(),
        testcase_id: format!("RHEL-{}", name.len()),
        comment: "a comment".into(),
        parameters: vec![("arch".into(), "x86_64".into())],
    }
}

#[test]
fn xunit_files_are_valid_against_the_importer_schema() {
    let import = XunitImport {
        properties: vec![
            ("polarion-project-id".into(), "RHEL".into()),
            ("polarion-testrun-id".into(), "polarizer-7".into()),
            ("polarion-custom-plannedin".into(), "RHEL-9.6".into()),
        ],
        suite_name: "polarizer run 7".into(),
        cases: vec![
            case("/tests/passes", Verdict::Passed),
            case(
                "/tests/fails",
                Verdict::Failed {
                    message: "fail: exit 1".into(),
                    detail: "tail of the output".into(),
                },
            ),
            case(
                "/tests/blocked",
                Verdict::Blocked {
                    message: "timeout".into(),
                },
            ),
            case(
                "/tests/waits",
                Verdict::Waiting {
                    message: "skipped".into(),
                },
            ),
        ],
    };
    assert_valid(&xunit(&import), &schema("importers/xunit.xsd"));
    let empty = XunitImport {
        cases: Vec::new(),
        ..import
    };
    assert_valid(&xunit(&empty), &schema("importers/xunit.xsd"));
}

#[test]
fn testcase_files_are_valid_against_the_importer_schema() {
    let item = TestCaseItem {
        id: Some("RHEL-7".into()),
        title: "Login <works>".into(),
        description: "<p>a &amp; b</p>".into(),
        steps: vec![
            ("run ${arch}".into(), "exits 0".into()),
            ("check".into(), String::new()),
        ],
        parameters: vec!["arch".into()],
        custom_fields: vec![
            ("caseautomation".into(), "automated".into()),
            ("testCaseID".into(), "5f0c".into()),
        ],
        links: vec![("RHEL-1".into(), "verifies".into())],
    };
    let bare = TestCaseItem {
        id: None,
        title: "Bare".into(),
        ..Default::default()
    };
    let import = TestCaseImport {
        project: "RHEL".into(),
        response: vec![("polarizer".into(), "testcases".into())],
        properties: vec![
            ("lookup-method".into(), "custom".into()),
            ("dry-run".into(), "false".into()),
        ],
        items: vec![item, bare],
    };
    assert_valid(
        &testcases(&import),
        &schema("testcase_importer/testcase-importer.xsd"),
    );
}
