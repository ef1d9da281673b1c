//! Planning benchmark: select + partition 100,000 tests over 1,000 platforms, and the plan's makespan
//! against the lower bound max(total / platforms, longest chain), beside round-robin assignment.
//!
//! Then partition where many tests share resources: 10,000 that all `need` one resource and 1,000 that
//! modify another (one serial suite of 1,000, the rest parallel).
//!
//! Run: `cargo bench -p polarizer --bench plan`

use std::time::Instant;

use polarizer::core::partition::{makespan, partition, SuiteKind};
use polarizer::core::selection::{select, SelectionRequest};
use polarizer_shared::metadata::{Catalog, Feature, TestMetadata};
use rand::{Rng, SeedableRng};

const TESTS: usize = 100_000;
const PLATFORMS: usize = 1_000;
const FEATURES: usize = 1_000;

fn test(index: usize, seconds: u64, feature: usize) -> TestMetadata {
    let json = serde_json::json!({
        "id": format!("/t{index:06}"), "name": format!("/t{index:06}"), "summary": "", "description": "", "test": "true",
        "path": "", "framework": "shell", "duration_seconds": seconds, "tags": [], "tier": "", "components": [],
        "require": [], "recommend": [], "links": [], "enabled": true, "environment": {}, "result": "", "order": 50,
        "test_type": "integration", "feature": format!("f{feature}"), "after": [],
        "resources": {"needs": [], "creates": [], "modifies": []}, "services": [],
        "platform": {"kind": null, "arch": [], "distro": []}, "provision": {"playbook": "", "containerfile": ""},
        "junit": "", "bdd": ""
    });
    serde_json::from_value(json).expect("valid test")
}

/// Log-normal seconds (median ~60 s, long tail), from a fixed seed.
fn log_normal(rng: &mut rand::rngs::StdRng) -> u64 {
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    let standard_normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (60f64.ln() + 1.0 * standard_normal).exp().round().max(1.0) as u64
}

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let features: Vec<Feature> = (0..FEATURES)
        .map(|index| Feature {
            name: format!("f{index}"),
            description: String::new(),
            paths: vec![format!("src/f{index}/**")],
            // A chain of dependencies every 10 features, so a change selects a tenth of the tree and more.
            depends: if index % 10 == 0 {
                Vec::new()
            } else {
                vec![format!("f{}", index - 1)]
            },
        })
        .collect();
    let mut tests: Vec<TestMetadata> = (0..TESTS)
        .map(|index| test(index, log_normal(&mut rng), index % FEATURES))
        .collect();
    // A few serial chains through shared resources, as real suites have.
    // 20 resources, 10 tests each: serial suites of ~10 minutes, shorter than total / platforms.
    for index in (0..TESTS).step_by(500) {
        tests[index].resources.modifies = vec![format!("db{}", (index / 500) % 20)];
    }
    let catalog = Catalog { tests, features };

    let all = SelectionRequest {
        all: true,
        ..Default::default()
    };
    let started = Instant::now();
    let selection = select(&catalog, &all).expect("selects");
    let selected: Vec<&TestMetadata> = catalog
        .tests
        .iter()
        .filter(|test| selection.tests.contains_key(&test.id))
        .collect();
    let suites = partition(&selected, &|test| test.duration_seconds as f64, &|_| {
        PLATFORMS
    });
    let plan_time = started.elapsed();

    let total: f64 = selected
        .iter()
        .map(|test| test.duration_seconds as f64)
        .sum();
    let longest_chain = suites
        .iter()
        .filter(|suite| suite.kind == SuiteKind::Serial)
        .map(|suite| suite.expected_seconds)
        .fold(0.0, f64::max);
    let longest_test = selected
        .iter()
        .map(|test| test.duration_seconds as f64)
        .fold(0.0, f64::max);
    let lower_bound = (total / PLATFORMS as f64)
        .max(longest_chain)
        .max(longest_test);
    let plan_makespan = makespan(&suites);
    // Round-robin: tests dealt to platforms in turn, in catalog order (what a static CI matrix does);
    // a serial suite goes whole to the platform whose turn its first test comes on.
    let mut round_robin = vec![0.0f64; PLATFORMS];
    let serial_of: std::collections::HashMap<&str, usize> = suites
        .iter()
        .enumerate()
        .filter(|(_, suite)| suite.kind == SuiteKind::Serial)
        .flat_map(|(index, suite)| suite.tests.iter().map(move |id| (id.as_str(), index)))
        .collect();
    let mut placed_serial = std::collections::HashSet::new();
    let mut next_platform = 0;
    for test in &selected {
        let seconds = match serial_of.get(test.id.as_str()) {
            Some(&suite) if !placed_serial.insert(suite) => continue,
            Some(&suite) => suites[suite].expected_seconds,
            None => test.duration_seconds as f64,
        };
        round_robin[next_platform % PLATFORMS] += seconds;
        next_platform += 1;
    }
    let round_robin_makespan = round_robin.iter().copied().fold(0.0, f64::max);

    let changed = SelectionRequest {
        changed_paths: vec!["src/f500/x.py".into()],
        ..Default::default()
    };
    let started = Instant::now();
    let narrow = select(&catalog, &changed).expect("selects");
    let narrow_time = started.elapsed();

    println!("| what | result | target |\n| --- | --- | --- |");
    println!(
        "| select + partition + assign {TESTS} tests over {PLATFORMS} platforms ({} suites) | {:.0} ms | ≤ 1 s |",
        suites.len(),
        plan_time.as_secs_f64() * 1000.0
    );
    println!(
        "| select from one changed path ({} tests via {} features) | {:.1} ms | (measured) |",
        narrow.tests.len(),
        narrow.touched_features.len() + narrow.dependent_features.len(),
        narrow_time.as_secs_f64() * 1000.0
    );
    println!(
        "| plan makespan / lower bound (log-normal durations, median 60 s) | {:.3} | ≤ 1.05 |",
        plan_makespan / lower_bound
    );
    println!(
        "| round-robin makespan / lower bound, same tests | {:.3} | (baseline) |",
        round_robin_makespan / lower_bound
    );
    shared_resources();
}

fn shared_resources() {
    const NEED: usize = 10_000;
    const MODIFY: usize = 1_000;
    let tests: Vec<TestMetadata> = (0..NEED + MODIFY)
        .map(|index| {
            let mut test = test(index, 60, 0);
            if index < NEED {
                test.resources.needs = vec!["candlepin".into()];
            } else {
                test.resources.modifies = vec!["database".into()];
            }
            test
        })
        .collect();
    let refs: Vec<&TestMetadata> = tests.iter().collect();
    let started = Instant::now();
    let suites = partition(&refs, &|test| test.duration_seconds as f64, &|_| 100);
    let elapsed = started.elapsed();
    let serial = suites
        .iter()
        .filter(|suite| suite.kind == SuiteKind::Serial)
        .map(|suite| suite.tests.len())
        .collect::<Vec<_>>();
    assert_eq!(
        serial,
        [MODIFY],
        "one serial suite of the tests that modify"
    );
    println!(
        "| partition {NEED} tests that need one resource + {MODIFY} that modify another ({} suites) | {:.0} ms | linear |",
        suites.len(),
        elapsed.as_secs_f64() * 1000.0
    );
}
