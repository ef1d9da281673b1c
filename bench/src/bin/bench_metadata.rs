//! Benchmark: importing a large generated fmf tree with our reader and with Python fmf, in the same run,
//! printed as a Markdown table for BENCHMARKS.md.
//!
//! Run: `cargo build -j 1 --release -p polarizer-bench --bin bench-metadata && ./target/release/bench-metadata`
//! (`--directories N --tests M` for a quicker run, `--tree DIR` to keep the tree; `--help` lists them).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use polarizer_e2e::generate::{write_fmf_tree, GeneratedTree, FEATURE_COUNT};
use polarizer_e2e::TestCluster;
use polarizer_shared::fmf::{Context, Tree};

/// Our reader is timed this many times and the median reported; Python once, as it takes minutes.
const OUR_RUNS: usize = 3;
const DEFAULT_DIRECTORIES: usize = 1000;
const DEFAULT_TESTS_PER_DIRECTORY: usize = 100;

/// Python's side, timed inside the interpreter so its start-up is reported apart from the import.
const PYTHON_SCRIPT: &str = r#"
import sys, time, json
started = time.perf_counter()
import fmf
import fmf.context
imported = time.perf_counter()
tree = fmf.Tree(sys.argv[1])
tree.adjust(fmf.context.Context(distro='rhel-8.4', arch='x86_64'))
tests = [node for node in tree.climb() if 'test' in node.get()]
finished = time.perf_counter()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"import_fmf": imported - started, "load": finished - imported, "tests": len(tests), "peak_rss_kib": hwm}))
"#;

/// Importing a generated fmf tree of 100,000 tests, beside Python's fmf (BENCHMARKS.md, "Test metadata").
#[derive(clap::Parser)]
struct Arguments {
    /// Directories in the generated tree.
    #[arg(long, default_value_t = DEFAULT_DIRECTORIES)]
    directories: usize,
    /// Tests in each directory.
    #[arg(long = "tests", default_value_t = DEFAULT_TESTS_PER_DIRECTORY)]
    tests_per_directory: usize,
    /// Generate the tree there (when it has none yet) and keep it, e.g. for `perf record`.
    #[arg(long)]
    tree: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let arguments = <Arguments as clap::Parser>::parse();
    let directory = tempfile::Builder::new()
        .prefix("polarizer-bench-metadata-")
        .tempdir()?;
    let root = arguments.tree.as_deref().unwrap_or(directory.path());
    let generating = Instant::now();
    // A kept tree is reused as it is: say its size with --directories and --tests.
    let generated = if root.join(".fmf").exists() {
        GeneratedTree {
            directories: arguments.directories,
            tests: arguments.directories * arguments.tests_per_directory,
            features: FEATURE_COUNT,
        }
    } else {
        write_fmf_tree(root, arguments.directories, arguments.tests_per_directory)?
    };
    eprintln!(
        "generated {} directories, {} tests, {} features in {:.1} s under {}",
        generated.directories,
        generated.tests,
        generated.features,
        generating.elapsed().as_secs_f64(),
        root.display()
    );

    let context = Context::new()
        .with_dimension("distro", ["rhel-8.4"])
        .with_dimension("arch", ["x86_64"]);
    let mut our_times = Vec::new();
    let mut our_tests = 0;
    for run in 1..=OUR_RUNS {
        let started = Instant::now();
        let mut tree = Tree::load(root)?;
        let loaded = started.elapsed();
        tree.adjust(&context)?;
        let adjusted = started.elapsed();
        let tests: Vec<_> = tree.tests().collect();
        let elapsed = started.elapsed();
        our_tests = tests.len();
        eprintln!(
            "ours, run {run}: {} (load {}, adjust {}, tests() {}), {our_tests} tests",
            seconds(elapsed),
            seconds(loaded),
            seconds(adjusted - loaded),
            seconds(elapsed - adjusted),
        );
        our_times.push(elapsed);
        // Dropping the tree is part of a real import's cost too, but is kept out of the timing: it is
        // freeing memory, which Python never does before exiting.
        drop(tests);
        drop(tree);
    }
    our_times.sort();
    let our_median = our_times[our_times.len() / 2];
    let peak_rss = peak_rss_kib().unwrap_or(0);

    if std::env::var_os("POLARIZER_BENCH_SKIP_PYTHON").is_some() {
        eprintln!("ours: median {}", seconds(our_times[our_times.len() / 2]));
        return store_and_query(root, our_tests);
    }
    let python = run_python(root)?;
    if python.tests != our_tests {
        bail!(
            "test counts differ: ours {our_tests}, Python fmf {}",
            python.tests
        );
    }
    if our_tests != generated.tests {
        bail!("found {our_tests} tests, generated {}", generated.tests);
    }

    let ratio = python.load.as_secs_f64() / our_median.as_secs_f64();
    println!(
        "Import of a generated fmf tree: {} directories × {} tests = {} tests, {} features; \
         load + adjust (distro=rhel-8.4, arch=x86_64) + collect tests.\n",
        generated.directories, arguments.tests_per_directory, our_tests, generated.features
    );
    println!("| what | result | target |\n| --- | --- | --- |");
    println!(
        "| ours (Rust), median of {OUR_RUNS} | {} (peak RSS {:.0} MiB) | ≤ 3 s |",
        seconds(our_median),
        peak_rss as f64 / 1024.0
    );
    println!(
        "| Python fmf 1.7, one run | {} (+ {} interpreter start, + {} `import fmf`, + {} exit) | — |",
        seconds(python.load),
        seconds(python.interpreter_start),
        seconds(python.import_fmf),
        seconds(python.teardown)
    );
    println!("| speed ratio (Python ÷ ours) | {ratio:.1}× faster | ≥ 20× faster |");
    println!(
        "| Python fmf's peak RSS (VmHWM: load, adjust, collect tests) | {:.0} MiB | — |",
        python.peak_rss_kib as f64 / 1024.0
    );
    store_and_query(root, our_tests)?;
    Ok(())
}

/// The import as a user runs it (`polarizer tests import` against a release coordinator: read, check,
/// store in one transaction) on a fresh coordinator, `IMPORT_RUNS` times; re-imports unchanged and with
/// one test changed; then `tests list --feature` timed server-side (the coordinator's own read path on
/// its database) and end to end through the CLI.
fn store_and_query(root: &std::path::Path, expected_tests: usize) -> anyhow::Result<()> {
    let root_text = root.to_str().unwrap_or_default();
    let import = |cluster: &TestCluster| -> anyhow::Result<(Duration, String)> {
        // Each run starts with nothing left to write back from the one before (a 100k-test database
        // is ~250 MB through the WAL): runs measure the import, not the kernel's writeback of the last.
        Command::new("sync").status().context("run sync")?;
        let started = Instant::now();
        let output = cluster.operator(&[
            "tests",
            "import",
            root_text,
            "--context",
            "distro=rhel-8.4",
            "--context",
            "arch=x86_64",
        ]);
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!("import failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok((
            elapsed,
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        ))
    };
    let mut times = Vec::new();
    let mut peaks = Vec::new();
    let mut cluster = None;
    for _ in 0..IMPORT_RUNS {
        // The last run's coordinator stops first: its checkpointing must not overlap this run.
        drop(cluster.take());
        let fresh = TestCluster::new_coordinator_only_with(&[]);
        let (elapsed, _) = import(&fresh)?;
        let log = fresh
            .coordinator
            .as_ref()
            .map(|process| process.log_text())
            .unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains("catalog imported")) {
            eprintln!("{} s; coordinator: {line}", elapsed.as_secs_f64());
        }
        // The coordinator's high-water mark: everything it held at once to read, check and store.
        let coordinator_peak = fresh
            .coordinator
            .as_ref()
            .and_then(|process| process_peak_rss_kib(process.pid()))
            .unwrap_or(0);
        peaks.push(coordinator_peak);
        times.push(elapsed);
        cluster = Some(fresh);
    }
    let cluster = cluster.context("no import ran")?;
    let mut sorted = times.clone();
    sorted.sort();
    println!(
        "| `polarizer tests import` end to end (CLI → coordinator: read, check, store), {expected_tests} tests, fresh coordinator, median of {IMPORT_RUNS} | {} (runs: {}) | ≤ 3 s |",
        seconds(sorted[IMPORT_RUNS / 2]),
        times.iter().map(|time| seconds(*time)).collect::<Vec<_>>().join(", ")
    );
    peaks.sort();
    println!(
        "| coordinator peak RSS (VmHWM) after that import, median of {IMPORT_RUNS} | {:.0} MiB (runs: {}) | ≤ Python fmf's |",
        peaks[IMPORT_RUNS / 2] as f64 / 1024.0,
        peaks
            .iter()
            .map(|kib| format!("{:.0} MiB", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (unchanged, said) = import(&cluster)?;
    eprintln!("{said}");
    println!(
        "| the same tree imported again, nothing changed | {} | — |",
        seconds(unchanged)
    );
    // One test edited, as a commit touching one file would: only it is rewritten.
    let edited = root
        .join("tests")
        .join(polarizer_e2e::generate::directory_name(0))
        .join("test-000.fmf");
    let original = std::fs::read_to_string(&edited)?;
    std::fs::write(&edited, original.replace("summary: ", "summary: Edited "))?;
    let changed = import(&cluster);
    std::fs::write(&edited, &original)?;
    let (changed, said) = changed?;
    if !said.contains("1 changed") {
        bail!("editing one test should change one: {said}");
    }
    println!(
        "| the same tree with one test edited | {} | — |",
        seconds(changed)
    );
    let reader = polarizer::store::Reader::open(&cluster.data_dir.join("polarizer.db"))?;
    // The last feature selects only its own tests; a middle one pulls in every feature after it.
    for feature in ["area-49/cli", "area-25/core"] {
        let query = polarizer::store::catalog::TestQuery {
            feature: Some(feature.to_string()),
            ..Default::default()
        };
        let mut server_side = Vec::new();
        let mut selected = 0;
        for _ in 0..QUERY_RUNS {
            let started = Instant::now();
            selected = reader.tests(&query)?.len();
            server_side.push(started.elapsed());
        }
        server_side.sort();
        let mut end_to_end = Vec::new();
        for _ in 0..CLI_RUNS {
            let started = Instant::now();
            let output = cluster.operator(&["tests", "list", "--feature", feature, "--json"]);
            end_to_end.push(started.elapsed());
            if !output.status.success() {
                bail!(
                    "tests list failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        end_to_end.sort();
        println!(
            "| `tests list --feature {feature}` ({selected} tests): server-side query, median of {QUERY_RUNS} | {:.2} ms | ≤ 5 ms |",
            server_side[QUERY_RUNS / 2].as_secs_f64() * 1000.0
        );
        println!(
            "| same, end to end through the CLI (process start, QUIC, TLS, JSON), median of {CLI_RUNS} | {:.0} ms | reported |",
            end_to_end[CLI_RUNS / 2].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

const QUERY_RUNS: usize = 21;
/// Imports of the whole tree, each into a fresh coordinator.
const IMPORT_RUNS: usize = 3;
const CLI_RUNS: usize = 11;

struct PythonTiming {
    interpreter_start: Duration,
    /// Wall time not accounted for by start, `import fmf` and the timed work: mostly freeing the tree.
    teardown: Duration,
    import_fmf: Duration,
    load: Duration,
    tests: usize,
    /// The interpreter's VmHWM once the tree is loaded, adjusted and its tests collected.
    peak_rss_kib: u64,
}

fn run_python(root: &std::path::Path) -> anyhow::Result<PythonTiming> {
    let started = Instant::now();
    let output = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_SCRIPT)
        .arg(root)
        .output()
        .context("run python3")?;
    let wall = started.elapsed();
    // A bare interpreter's start and exit, measured on its own: the wall time left over from the real run
    // also holds freeing the whole tree at exit, which is reported apart.
    let bare_started = Instant::now();
    Command::new("python3")
        .args(["-c", "pass"])
        .output()
        .context("run python3")?;
    let interpreter_start = bare_started.elapsed();
    if !output.status.success() {
        bail!(
            "python fmf failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("python output: {}", String::from_utf8_lossy(&output.stdout)))?;
    let field = |name: &str| {
        report[name]
            .as_f64()
            .context(format!("no {name} in {report}"))
    };
    let import_fmf = Duration::from_secs_f64(field("import_fmf")?);
    let load = Duration::from_secs_f64(field("load")?);
    let tests = field("tests")? as usize;
    let peak_rss_kib = field("peak_rss_kib")? as u64;
    Ok(PythonTiming {
        peak_rss_kib,
        interpreter_start,
        teardown: wall.saturating_sub(interpreter_start + import_fmf + load),
        import_fmf,
        load,
        tests,
    })
}

/// Our process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    vm_hwm_kib("/proc/self/status")
}

fn process_peak_rss_kib(pid: u32) -> Option<u64> {
    vm_hwm_kib(&format!("/proc/{pid}/status"))
}

fn vm_hwm_kib(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", duration.as_secs_f64())
    }
}
