//! Polarion end to end, against a fake Polarion that speaks the importers' wire (multipart uploads with
//! basic authentication, asynchronous jobs, a paged queue, job logs in the importers' line format): the
//! catalog exported as test cases (the file valid against the importer's schema), the work item ids
//! learnt from the job's log, a finished run's results uploaded in chunks by themselves, uploads Polarion
//! could not take retried, a job that fails and a lookup that finds nothing named in `polarion jobs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polarizer_e2e::fake_polarion::{FakePolarion, UploadFailure};
use polarizer_e2e::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const PASSWORD: &str = "correct horse battery staple";

fn schema(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/polarion/RedHatQE+polarize/src/main/resources")
        .join(relative)
}

/// `xmllint --schema` accepts `file`.
fn assert_valid(file: &Path, xsd: &Path) {
    let checked = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(xsd)
        .arg(file)
        .output()
        .expect("xmllint (libxml2-utils) is installed by scripts/test");
    assert!(
        checked.status.success(),
        "{} against {}: {}",
        file.display(),
        xsd.display(),
        String::from_utf8_lossy(&checked.stderr)
    );
}

fn jobs(cluster: &TestCluster) -> Vec<Value> {
    ok_json(cluster.operator(&["polarion", "jobs", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until import `id` has ended; answers it.
fn ended(cluster: &TestCluster, id: u64) -> Value {
    let mut found = Value::Null;
    wait_for(&format!("import {id} to end"), DEADLINE, || {
        found = jobs(cluster)
            .into_iter()
            .find(|job| job["id"] == id)
            .unwrap_or(Value::Null);
        matches!(found["state"].as_str(), Some("success" | "failed"))
    });
    found
}

fn queued(output: std::process::Output) -> Vec<u64> {
    ok_json(output)["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect()
}

#[test]
fn tests_become_test_cases_and_runs_go_to_polarion_with_every_job_followed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(
        &dir.path().join("tests"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "framework: shell\nextra-polarizer-type: unit\ntier: 1\ncomponent: [subscription-manager]\n\
                 /login:\n    summary: Login works\n    description: Logs in <as root> & checks.\n    test: 'true'\n    link:\n      - verifies: RHEL-9\n\
                 /expiry:\n    summary: Sessions expire\n    test: 'echo still logged in; exit 1'\n\
                 /billing:\n    summary: Billing adds up\n    test: 'true'\n",
            ),
        ],
    );
    let fake = FakePolarion::start("qe-bot", PASSWORD);
    let password = dir.path().join("polarion-password");
    write_secret(&password, PASSWORD);
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[polarion]\nurl = {:?}\nproject = \"RHEL\"\nuser = \"qe-bot\"\npassword_file = {password:?}\n\
             testrun_template = \"RHSM tier1\"\ntestrun_title = \"{{component}} {{kind}} run {{run}}\"\n\
             custom = {{ plannedin = \"RHEL-9.6\", arch = \"{{arch}}\" }}\n\
             upload_results = \"on-finish\"\nchunk = 2\npoll_interval = \"1s\"\n",
            fake.url()
        ),
    )
    .unwrap();
    let mut cluster = coordinator_with_config(&config);
    ok_json(cluster.operator(&["tests", "import", repo.to_str().unwrap(), "--json"]));

    // The catalog as an importer file: valid against the TestCase importer's schema.
    let exported = dir.path().join("testcases.xml");
    let written = cluster.operator(&["polarion", "export-tests", "-o", exported.to_str().unwrap()]);
    assert!(written.status.success(), "{written:?}");
    assert_valid(
        &exported,
        &schema("testcase_importer/testcase-importer.xsd"),
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    // HTML in the description, escaped once for HTML and once for XML.
    assert!(
        text.contains("&amp;lt;as root&amp;gt; &amp;amp; checks"),
        "the description is escaped HTML: {text}"
    );
    assert!(
        text.contains("workitem-id=\"RHEL-9\" role-id=\"verifies\""),
        "{text}"
    );

    // Uploaded: Polarion makes the work items; their ids come back from the job's log.
    let imports = queued(cluster.operator(&["polarion", "export-tests", "--json"]));
    let import = ended(&cluster, imports[0]);
    assert_eq!(import["state"], "success", "{import:#}");
    assert_eq!(fake.items().len(), 3);
    let tests = ok_json(cluster.operator(&["tests", "list", "--json"]));
    for test in tests.as_array().unwrap() {
        assert!(
            test["polarion_id"].as_str().unwrap().starts_with("RHEL-"),
            "{test:#}"
        );
    }
    let shown = ok_json(cluster.operator(&["tests", "show", "/tests/login", "--json"]));
    assert!(shown["polarion_id"].as_str().unwrap().starts_with("RHEL-"));

    // A run ends; its results go up by themselves, in two files (chunk = 2), after two uploads
    // Polarion could not take (a 500, a login page).
    fake.fail_next_upload(UploadFailure::ServerError);
    fake.fail_next_upload(UploadFailure::Html);
    cluster.start_agent("vm-1", &[]);
    let run = ok_json(cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]))
        ["run"]
        .as_u64()
        .unwrap();
    let mut results = Vec::new();
    wait_for("the run's results in Polarion", DEADLINE, || {
        results = jobs(&cluster)
            .into_iter()
            .filter(|job| job["kind"] == "xunit" && job["run"] == run)
            .collect();
        results.len() == 2 && results.iter().all(|job| job["state"] == "success")
    });
    assert!(
        results
            .iter()
            .any(|job| job["tries"].as_u64().unwrap() >= 1),
        "{results:#?}"
    );
    assert!(
        results[0]["testrun_url"]
            .as_str()
            .unwrap()
            .contains("testrun?id=polarizer-"),
        "{results:#?}"
    );
    let uploads: Vec<_> = fake
        .uploads()
        .into_iter()
        .filter(|upload| upload.kind == "xunit")
        .collect();
    assert_eq!(uploads.len(), 2);
    let all: String = uploads.iter().map(|upload| upload.xml.clone()).collect();
    assert!(
        all.contains("name=\"polarion-testrun-template-id\" value=\"RHSM tier1\""),
        "{all}"
    );
    assert!(
        all.contains("name=\"polarion-custom-plannedin\" value=\"RHEL-9.6\""),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "name=\"polarion-testrun-title\" value=\"subscription-manager manual run {run}\""
        )),
        "{all}"
    );
    assert!(
        all.contains("<failure message=\"fail"),
        "the failing test is failed: {all}"
    );

    // The same run as a file: valid against the XUnit importer's schema.
    let report = dir.path().join("run.xml");
    let written = cluster.operator(&[
        "report",
        &run.to_string(),
        "--format",
        "polarion",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(written.status.success(), "{written:?}");
    assert_valid(&report, &schema("importers/xunit.xsd"));

    // A job that fails, and a test Polarion no longer has: both named, nothing else changes.
    let billing_id = tests
        .as_array()
        .unwrap()
        .iter()
        .find(|test| test["name"] == "/tests/billing")
        .map(|test| test["id"].as_str().unwrap().to_string())
        .unwrap();
    let login_id = tests
        .as_array()
        .unwrap()
        .iter()
        .find(|test| test["name"] == "/tests/login")
        .map(|test| test["id"].as_str().unwrap().to_string())
        .unwrap();
    fake.forget(&billing_id);
    fake.add_item("Login works (copy)", &login_id);
    let imports = queued(cluster.operator(&["polarion", "upload", &run.to_string(), "--json"]));
    let mut messages = String::new();
    for id in &imports {
        let import = ended(&cluster, *id);
        messages += import["message"].as_str().unwrap();
    }
    assert!(
        messages.contains("1 not found") && messages.contains(&billing_id),
        "{messages}"
    );
    assert!(
        messages.contains("1 not unique") && messages.contains(&login_id),
        "{messages}"
    );
    fake.fail_next_job();
    let imports = queued(cluster.operator(&[
        "polarion",
        "upload",
        &run.to_string(),
        "--dry-run",
        "--json",
    ]));
    let failed = ended(&cluster, imports[0]);
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(
        failed["message"].as_str().unwrap().contains("FAILED"),
        "{failed:#}"
    );

    // A wrong password: the upload waits, saying why, and goes up once Polarion takes it again; the
    // password never shows.
    fake.set_password("rotated");
    let imports = queued(cluster.operator(&["polarion", "upload", &run.to_string(), "--json"]));
    wait_for("the refused upload to say why", DEADLINE, || {
        jobs(&cluster).iter().any(|job| {
            job["id"] == imports[0]
                && job["state"] == "waiting"
                && job["message"].as_str().unwrap().contains("401")
        })
    });
    fake.set_password(PASSWORD);
    let import = ended(&cluster, imports[0]);
    assert_eq!(import["state"], "success", "{import:#}");
    let log = cluster.coordinator.as_mut().unwrap().log_text();
    assert!(!log.contains(PASSWORD), "the password must never be logged");
    let table = String::from_utf8(cluster.operator(&["polarion", "jobs"]).stdout).unwrap();
    assert!(table.contains("testrun?id=polarizer-"), "{table}");
}

#[test]
fn a_run_without_polarion_ids_is_refused_and_an_upload_polarion_cannot_take_waits_across_a_restart()
{
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(
        &dir.path().join("tests"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "extra-polarizer-type: unit\n/one:\n    test: 'true'\n",
            ),
        ],
    );
    let password = dir.path().join("polarion-password");
    write_secret(&password, PASSWORD);
    let config = dir.path().join("coordinator.toml");
    // Nothing listens there: Polarion is down.
    let down = free_tcp_addr();
    std::fs::write(
        &config,
        format!(
            "[polarion]\nurl = \"http://{down}/polarion\"\nproject = \"RHEL\"\nuser = \"qe-bot\"\n\
             password_file = {password:?}\nlookup_method = \"id\"\n"
        ),
    )
    .unwrap();
    let mut cluster =
        TestCluster::new_coordinator_only_with(&["--config", config.to_str().unwrap()]);
    let run = ok_json(cluster.operator(&["trigger", "--repo", repo.to_str().unwrap(), "--json"]))
        ["run"]
        .as_u64()
        .unwrap();
    let refused = cluster.operator(&["polarion", "upload", &run.to_string()]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("none of its 1 tests has a Polarion id"),
        "{said}"
    );
    assert!(jobs(&cluster).is_empty(), "nothing queued");

    let imports = queued(cluster.operator(&["polarion", "export-tests", "--json"]));
    let waiting = |cluster: &TestCluster, tries: u64| {
        jobs(cluster).iter().any(|job| {
            job["id"] == imports[0]
                && job["state"] == "waiting"
                && job["tries"].as_u64().unwrap() >= tries
                && job["message"].as_str().unwrap().contains("cannot connect")
        })
    };
    wait_for("the upload to wait for Polarion", DEADLINE, || {
        waiting(&cluster, 1)
    });
    cluster.coordinator.as_mut().unwrap().kill_9();
    cluster.start_coordinator(&[]);
    wait_for("the upload tried again after the restart", DEADLINE, || {
        waiting(&cluster, 2)
    });
    let printed = cluster.operator(&["polarion", "export-tests", "-o", "/dev/stdout"]);
    assert!(printed.status.success(), "{printed:?}");
    assert!(String::from_utf8_lossy(&printed.stdout).contains("<testcases project-id=\"RHEL\">"));
}
