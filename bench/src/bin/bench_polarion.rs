//! Benchmark: Polarion importer files (issue 19). 100,000 tests' metadata (shaped like a real tree's:
//! summary, description, tags, components, links, tier, type) exported as a TestCase importer file, and
//! a 10,000-case run (a fifth of them failing with 500 bytes of output each) as an XUnit importer file;
//! each beside the floor: the same data serialised as JSON with serde_json, no XML. Each measure runs in
//! a process of its own (this binary with `--only NAME`), so its peak RSS (VmHWM) is its own; the RSS
//! before the export (the data built) is shown too.
//!
//! Run: `cargo build -j 2 --release -p polarizer-bench --bins && ./target/release/bench-polarion`
//! (`--help` lists the flags).

use std::time::Instant;

use polarizer::core::polarion::{test_cases_file, xunit_imports, PolarionSettings};
use polarizer_shared::metadata::{Link, TestMetadata, TestType};
use polarizer_shared::run::{RunDetail, RunRow, RunState, RunTestRow, TestStatus, TriggerKind};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn metadata(count: usize) -> Vec<TestMetadata> {
    (0..count)
        .map(|n| TestMetadata {
            id: format!("{:08x}-4b1d-4c5e-9a7f-{n:012x}", n * 2_654_435_761 % 0xffff_ffff),
            name: format!("/tests/area-{}/feature-{}/test-{n}", n % 50, n % 7),
            summary: format!("Feature {} behaves under condition {n}", n % 7),
            description: format!(
                "Checks that feature {} keeps working when <condition {n}> holds.\n\nSee the design notes & the bug.",
                n % 7
            ),
            test: format!("./test.sh --case {n}"),
            tier: (n % 4).to_string(),
            tags: vec!["tier1".into(), format!("area-{}", n % 50)],
            components: vec!["subscription-manager".into()],
            links: vec![Link {
                relation: "verifies".into(),
                target: format!("RHEL-{}", 1000 + n % 500),
                note: String::new(),
            }],
            test_type: Some(if n % 3 == 0 {
                TestType::Functional
            } else {
                TestType::Unit
            }),
            enabled: true,
            ..Default::default()
        })
        .collect()
}

fn run(cases: usize) -> RunDetail {
    RunDetail {
        run: RunRow {
            id: 7,
            state: RunState::Failed,
            kind: TriggerKind::Build,
            repo: "https://gitlab.example/rhsm/tests.git".into(),
            git_ref: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            created_ms: 0,
            finished_ms: Some(1),
            tests: cases as u64,
            done: cases as u64,
            problems: (cases / 5) as u64,
        },
        artifacts: vec!["subscription-manager-1.29.40-1.el9".into()],
        changed: Vec::new(),
        message: String::new(),
        infrastructure_trouble: false,
        suites: Vec::new(),
        tests: (0..cases)
            .map(|n| {
                let failed = n % 5 == 0;
                RunTestRow {
                    test: format!("test-id-{n}"),
                    name: format!("/tests/area-{}/test-{n}", n % 50),
                    suite: (n % 8) as u64,
                    position: n as u32,
                    status: if failed {
                        TestStatus::Fail
                    } else {
                        TestStatus::Pass
                    },
                    attempt: 1,
                    agent: format!("vm-{}", n % 8),
                    started_ms: Some(n as i64),
                    duration_ms: Some(1200 + n as u64 % 300),
                    message: if failed {
                        "exit status 1".into()
                    } else {
                        String::new()
                    },
                    reasons: vec!["feature area changed".into()],
                    output_tail: if failed {
                        "assertion failed: expected 200, got 503 <body>…</body>\n".repeat(9)
                    } else {
                        String::new()
                    },
                    subresults: Vec::new(),
                    lost_attempts: Vec::new(),
                    cluster: None,
                    quarantined: false,
                    slow_p95_ms: None,
                }
            })
            .collect(),
    }
}

/// One measure in this process: (seconds, output bytes, RSS before in KiB, peak RSS in KiB).
fn measure(name: &str, tests: usize, cases: usize) -> (f64, usize, u64, u64) {
    let settings = PolarionSettings {
        project: "RHEL".into(),
        ..PolarionSettings::default()
    };
    /// Times `export` over `data`, built first; the RSS before it and the peak after.
    fn timed<T>(data: T, export: impl FnOnce(&T) -> usize) -> (f64, usize, u64, u64) {
        let before = status_kib("VmRSS:");
        let started = Instant::now();
        let bytes = export(&data);
        (
            started.elapsed().as_secs_f64(),
            bytes,
            before,
            status_kib("VmHWM:"),
        )
    }
    match name {
        "testcases-xml" => timed(metadata(tests), |data| {
            test_cases_file(&settings, data, &|_| None, false).len()
        }),
        "testcases-json" => timed(metadata(tests), |data| {
            serde_json::to_string(data).map_or(0, |text| text.len())
        }),
        "xunit-xml" => timed(run(cases), |data| {
            xunit_imports(&settings, data, &[], &|_| None, false, usize::MAX)
                .iter()
                .map(|import| polarizer_shared::polarion::xunit(import).len())
                .sum()
        }),
        _ => timed(run(cases), |data| {
            serde_json::to_string(data).map_or(0, |text| text.len())
        }),
    }
}

/// Polarion importer files from large runs and catalogues (BENCHMARKS.md, "Polarion importer files").
#[derive(clap::Parser)]
struct Args {
    /// Tests in the catalogue exported as test cases.
    #[arg(long, default_value_t = 100_000)]
    tests: usize,
    /// Cases in the run exported as XUnit.
    #[arg(long, default_value_t = 10_000)]
    cases: usize,
    /// One export measured in this process (the benchmark runs each in a child of its own).
    #[arg(long, hide = true)]
    only: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let Args { tests, cases, only } = clap::Parser::parse();
    if let Some(name) = only {
        let (seconds, bytes, before, peak) = measure(&name, tests, cases);
        println!("{seconds} {bytes} {before} {peak}");
        return Ok(());
    }
    println!("| export | time | output | RSS before → peak |");
    println!("| --- | --- | --- | --- |");
    for (name, what) in [
        (
            "testcases-xml",
            format!("{tests} tests → TestCase importer XML"),
        ),
        (
            "testcases-json",
            format!("floor: the same {tests} tests' metadata → JSON (serde_json)"),
        ),
        (
            "xunit-xml",
            format!("a {cases}-case run → XUnit importer XML"),
        ),
        (
            "xunit-json",
            "floor: the same run → JSON (serde_json)".to_string(),
        ),
    ] {
        let output = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--only",
                name,
                "--tests",
                &tests.to_string(),
                "--cases",
                &cases.to_string(),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<f64> = text
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        let [seconds, bytes, before, peak] = fields[..] else {
            anyhow::bail!("{name}: {text}");
        };
        println!(
            "| {what} | {:.0} ms | {:.1} MiB | {:.0} → {:.0} MiB |",
            seconds * 1000.0,
            bytes / 1_048_576.0,
            before / 1024.0,
            peak / 1024.0
        );
    }
    Ok(())
}
