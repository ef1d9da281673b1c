//! Conformance: a tmt plan selects the same tests here as in tmt 1.78.
//!
//! For every fmf tree under `shared/corpus/fmf` and a generated tree whose plans use every discover key
//! (`filter` with `&`, `|`, `-`, commas, regular expressions and escapes, `test`, `exclude`, `include`,
//! `link`, several phases, `adjust` on plans and tests), each plan's selection is compared with what tmt's
//! Python API gives when called the way tmt's fmf discover plugin calls it (`tmt.Tree.tests(filters=…,
//! names=…, conditions=["manual is False"], links=…, includes=…, excludes=…)`, enabled tests only), for
//! a few contexts. That harness is itself checked against `tmt run discover` on the generated tree.
//! Plans Polarizer refuses (another repository, `how: shell`, …) must be refused here and are marked so
//! by the harness. tmt from PyPI is required (the test fails, not skips, without it).

mod common;
use common::find_tree_roots;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use polarizer_shared::fmf::{Context, Tree};
use polarizer_shared::plans::{plan_names, Plan, PlanError};

/// tmt's discover, as its fmf plugin calls the Python API; plans Polarizer refuses are marked.
const HARNESS: &str = r#"
import sys, json
import tmt, tmt.log, tmt.utils
from tmt.base.links import LinkNeedle

REFUSED = ["url", "ref", "path", "modified-only", "modified-url", "modified-ref", "adjust-tests",
           "dist-git-source", "when"]

def listed(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]

root, contexts = sys.argv[1], json.loads(sys.argv[2])
out = {}
for context_name, context in contexts.items():
    logger = tmt.log.Logger.create(quiet=True)
    try:
        tree = tmt.Tree(logger=logger, path=tmt.utils.Path(root),
                        fmf_context=tmt.utils.FmfContext({k: [v] for k, v in context.items()}))
        plans = list(tree.tree.prune(keys=['execute']))
    except Exception as error:
        out[context_name] = {"error": str(error)}
        continue
    result = {}
    for node in plans:
        discover = node.get('discover')
        phases = listed(discover)
        refused = not phases or any(
            not isinstance(phase, dict) or phase.get('how', 'shell') != 'fmf'
            or any(phase.get(key) is not None for key in REFUSED)
            or any(isinstance(test, dict) and 'adjust' in test for test in listed(phase.get('test')))
            for phase in phases)
        if refused:
            result[node.name] = "refused"
            continue
        try:
            # tmt adjusts the plan's tests by the plan's context, the command line's overriding it.
            plan_context = {k: [str(v)] for k, v in (node.get('context') or {}).items()}
            plan_context.update({k: [v] for k, v in context.items()})
            tests_tree = tmt.Tree(logger=logger, path=tmt.utils.Path(root),
                                  fmf_context=tmt.utils.FmfContext(plan_context))
            selected = set()
            for phase in phases:
                names = [t if isinstance(t, str) else t['name'] for t in listed(phase.get('test'))]
                tests = tests_tree.tests(filters=[str(f) for f in listed(phase.get('filter'))], names=names,
                                   conditions=["manual is False"], unique=False,
                                   links=[LinkNeedle.from_spec(str(l)) for l in listed(phase.get('link'))],
                                   includes=listed(phase.get('include')),
                                   excludes=listed(phase.get('exclude')))
                selected.update(test.name for test in tests if test.enabled)
            # A disabled plan is not run; what it would select is still compared.
            if node.get('enabled') is False:
                result[node.name] = {"disabled": sorted(selected)}
            else:
                result[node.name] = sorted(selected)
        except Exception as error:
            result[node.name] = {"error": str(error)}
    out[context_name] = result
print(json.dumps(out))
"#;

const CONTEXTS: &[(&str, &[(&str, &str)])] = &[
    ("none", &[]),
    ("fedora", &[("distro", "fedora")]),
    ("rhel-9", &[("distro", "rhel-9"), ("arch", "x86_64")]),
];

fn contexts_json() -> String {
    let contexts: serde_json::Map<String, serde_json::Value> = CONTEXTS
        .iter()
        .map(|(name, dimensions)| {
            let dimensions: serde_json::Map<String, serde_json::Value> = dimensions
                .iter()
                .map(|(key, value)| (key.to_string(), serde_json::Value::from(*value)))
                .collect();
            (name.to_string(), serde_json::Value::Object(dimensions))
        })
        .collect();
    serde_json::Value::Object(contexts).to_string()
}

fn require_tmt() {
    let probe = Command::new("python3")
        .args(["-c", "import tmt, fmf"])
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 cannot import tmt, which this conformance test compares against; run the pip lines of scripts/test\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("cannot run python3 ({error})"),
    }
}

/// Python's answer: context → plan → selected names, "refused", or an error.
fn python_selection(root: &Path) -> serde_json::Value {
    let output = Command::new("python3")
        .args(["-c", HARNESS])
        .arg(root)
        .arg(contexts_json())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the tmt harness failed on {}:\n{}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the harness prints JSON")
}

/// What `plan` selects, its tests adjusted by its own context under the trigger's (`dimensions`):
/// `tree` as it is when the plan has no context, else the tree read again.
fn selection_in_context(
    root: &Path,
    tree: &Tree,
    plan: &Plan,
    dimensions: &[(&str, &str)],
) -> Result<BTreeSet<String>, String> {
    let owned = |set: BTreeSet<&str>| set.into_iter().map(str::to_string).collect();
    if plan.context.is_empty() {
        return Ok(owned(plan.select(tree)));
    }
    let trigger: Vec<(String, String)> = dimensions
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let context = plan
        .test_context(&trigger)
        .iter()
        .fold(Context::new(), |context, (key, value)| {
            context.with_dimension(key.as_str(), [value.as_str()])
        });
    let mut tests_tree = Tree::load(root).map_err(|err| err.to_string())?;
    tests_tree.adjust(&context).map_err(|err| err.to_string())?;
    Ok(owned(plan.select(&tests_tree)))
}

/// Compares every plan of `root`; returns (plans compared, differences).
fn compare_tree(root: &Path) -> (usize, Vec<String>) {
    let python = python_selection(root);
    let mut compared = 0;
    let mut differences = Vec::new();
    for (context_name, dimensions) in CONTEXTS {
        let expected = &python[*context_name];
        if expected.get("error").is_some() {
            // tmt cannot read this tree at all; nothing to compare.
            continue;
        }
        let context = dimensions
            .iter()
            .fold(Context::new(), |context, (key, value)| {
                context.with_dimension(*key, [*value])
            });
        let mut tree = match Tree::load(root) {
            Ok(tree) => tree,
            Err(err) => {
                differences.push(format!("{}: ours fails to load: {err}", root.display()));
                continue;
            }
        };
        if let Err(err) = tree.adjust(&context) {
            differences.push(format!("{}: ours fails to adjust: {err}", root.display()));
            continue;
        }
        let ours_plans: BTreeSet<String> = plan_names(&tree).into_iter().collect();
        let Some(plans) = expected.as_object() else {
            panic!("unexpected harness output {expected}");
        };
        for (plan_name, want) in plans {
            let place = format!("{} {plan_name} [{context_name}]", root.display());
            if !ours_plans.contains(plan_name) {
                differences.push(format!("{place}: not found as a plan here"));
                continue;
            }
            if want.get("error").is_some() {
                continue;
            }
            let ours = Plan::find(&tree, plan_name);
            compared += 1;
            match (want, ours) {
                (serde_json::Value::String(refused), Err(PlanError::Unsupported { .. }))
                    if refused == "refused" => {}
                (serde_json::Value::Object(disabled), Err(PlanError::Invalid { key, .. }))
                    if key == "enabled" =>
                {
                    let want: BTreeSet<String> = disabled["disabled"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect();
                    let got = Plan::read(&tree, plan_name)
                        .map_err(|err| err.to_string())
                        .and_then(|plan| selection_in_context(root, &tree, &plan, dimensions));
                    match got {
                        Ok(got) if got == want => {}
                        Ok(got) => differences.push(format!(
                            "{place} (disabled): tmt selects {want:?}, ours {got:?}"
                        )),
                        Err(err) => differences.push(format!("{place} (disabled): {err}")),
                    }
                }
                (serde_json::Value::String(_), Ok(_)) => {
                    differences.push(format!("{place}: Polarizer should refuse it"))
                }
                (serde_json::Value::Array(names), Ok(plan)) => {
                    let want: BTreeSet<&str> = names.iter().filter_map(|n| n.as_str()).collect();
                    let got = match selection_in_context(root, &tree, &plan, dimensions) {
                        Ok(got) => got,
                        Err(err) => {
                            differences.push(format!("{place}: {err}"));
                            continue;
                        }
                    };
                    let got: BTreeSet<&str> = got.iter().map(String::as_str).collect();
                    if want != got {
                        differences.push(format!("{place}: tmt selects {want:?}, ours {got:?}"));
                    }
                }
                (want, Err(err)) => {
                    differences.push(format!("{place}: tmt gives {want}, ours refuses: {err}"))
                }
                (want, Ok(_)) => differences.push(format!("{place}: unexpected {want}")),
            }
        }
    }
    (compared, differences)
}

#[test]
fn corpus_plans_select_what_tmt_selects() {
    require_tmt();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/fmf");
    let mut roots = Vec::new();
    find_tree_roots(&corpus, &mut roots);
    assert!(!roots.is_empty(), "no fmf trees under {}", corpus.display());
    let mut compared = 0;
    let mut differences = Vec::new();
    for root in &roots {
        let (count, found) = compare_tree(root);
        compared += count;
        differences.extend(found);
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(
        compared >= 10,
        "only {compared} plans compared in the corpus"
    );
}

/// A tree whose plans use every discover key Polarizer honours, and some it refuses.
fn write_generated_tree(root: &Path) {
    let files: &[(&str, &str)] = &[
        (".fmf/version", "1\n"),
        ("smoke.fmf", "test: ./smoke.sh\ntag: [fast]\n"),
        (
            "tests/main.fmf",
            r#"test: ./run.sh
/login:
    tag: [fast, Tier1]
    tier: 1
    component: [subscription-manager]
    link:
      - verifies: https://issues.example.com/RHEL-1
/register:
    tag: [slow, Tier2]
    tier: 2
    link: https://issues.example.com/RHEL-2
    /basic:
        summary: Q&A pipe|d
    /proxy:
        tag+: [network]
/attach:
    tag: fast
    link:
      - relates: https://issues.example.com/RHEL-3
      - blocks:
            url: https://github.com/x/y
            name: /tests/other
/disabled:
    enabled: false
    tag: fast
/manual:
    manual: true
    tag: fast
/fedora-off:
    tag: [fast, Tier1]
    adjust:
      - when: distro == fedora
        enabled: false
      - when: arch == x86_64
        tag+: [x86]
/flags:
    tty: true
    tier: 3
    order: 10
"#,
        ),
        (
            "plans/main.fmf",
            r#"execute:
    how: tmt
provision:
    how: local
/default: {}
/disabled-plan:
    enabled: false
    discover:
        how: fmf
        filter: 'tag: slow'
/no-how:
    discover:
        filter: 'tag: fast'
/fast:
    discover:
        how: fmf
        filter: 'tag: fast'
/fast-not-tier1:
    discover:
        how: fmf
        filter: 'tag: fast & tag: -Tier1'
/tiers:
    discover:
        how: fmf
        filter: ['tier: 1 | tier: 2', 'tag: -slow, network']
/commas:
    discover:
        how: fmf
        filter: 'tag: Tier2, x86'
/regexp:
    discover:
        how: fmf
        filter: 'tag: Tier[12] & component: -sub.*'
/missing-key:
    discover:
        how: fmf
        filter: 'foo: bar | tag: fast'
/defaults:
    discover:
        how: fmf
        filter: 'tier: None & enabled: true & manual: false'
/bools:
    discover:
        how: fmf
        filter: 'tty: True'
/escape:
    discover:
        how: fmf
        filter: 'summary: Q\&A.*'
/name-literal:
    discover:
        how: fmf
        filter: '/tests/login'
/with-context:
    context:
        distro: fedora
    discover:
        how: fmf
        filter: 'tag: Tier1'
/path:
    discover:
        how: fmf
        filter: 'path: /tests'
/case:
    discover:
        how: fmf
        filter: 'tag: FAST'
/names:
    discover:
        how: fmf
        test: [/tests/register, login$]
/names-and-filter:
    discover:
        how: fmf
        test: /tests/register
        filter: 'tag: network'
/exclude:
    discover:
        how: fmf
        exclude: [register, attach]
/include:
    discover:
        how: fmf
        include: 'o'
/link:
    discover:
        how: fmf
        link: verifies:RHEL-1$
/link-target-only:
    discover:
        how: fmf
        link: ['issues.example.com/RHEL-[23]']
/link-fmf-id:
    discover:
        how: fmf
        link: 'blocks:/tests/other'
/phases:
    discover:
      - name: first
        how: fmf
        test: login
      - name: second
        how: fmf
        filter: 'tier: 2'
/adjusted:
    discover:
        how: fmf
        filter: 'tag: fast'
    adjust:
      - when: distro == fedora
        discover:
            how: fmf
            filter: 'tag: slow'
/shell:
    discover:
        how: shell
        tests:
          - name: /x
            test: 'true'
/remote:
    discover:
        how: fmf
        url: https://github.com/teemtee/tmt
"#,
        ),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

#[test]
fn generated_plans_select_what_tmt_selects() {
    require_tmt();
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path();
    write_generated_tree(root);
    let (compared, differences) = compare_tree(root);
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // Every plan, in every context.
    assert_eq!(compared, 27 * CONTEXTS.len());
}

/// The harness against tmt itself: `tmt run discover` on the generated tree (without the plans tmt would
/// refuse to run here) selects what the harness says.
#[test]
fn the_harness_agrees_with_tmt_run_discover() {
    require_tmt();
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path().join("tree");
    write_generated_tree(&root);
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(args)
            .current_dir(&root)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success());
    };
    git(&["init", "-q", "."]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "tree"]);
    let run_directory = directory.path().join("run");
    let output = Command::new("tmt")
        .current_dir(&root)
        .args(["-c", "distro=fedora", "run", "--scratch", "-i"])
        .arg(&run_directory)
        .args([
            "discover",
            "plans",
            "--name",
            "^/plans/(?!shell$|remote$|default$|no-how$)",
        ])
        .output()
        .expect("tmt runs");
    assert!(
        output.status.success(),
        "tmt run discover failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let python = python_selection(&root);
    let expected = &python["fedora"];
    let mut checked = 0;
    for (plan, want) in expected.as_object().unwrap() {
        let Some(names) = want.as_array() else {
            continue;
        };
        let tests_yaml = run_directory
            .join(plan.trim_start_matches('/'))
            .join("discover/tests.yaml");
        let text = std::fs::read_to_string(&tests_yaml)
            .unwrap_or_else(|err| panic!("{}: {err}", tests_yaml.display()));
        // With several phases tmt prefixes each test's name with `/<phase>`. A test's own keys sit at
        // the entry's first indentation level.
        let mut entries: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let key_line = if let Some(first) = line.strip_prefix("- ") {
                entries.push(Default::default());
                first
            } else if let Some(rest) = line.strip_prefix("  ") {
                rest
            } else {
                continue;
            };
            let Some(entry) = entries.last_mut() else {
                continue;
            };
            if let Some(value) = key_line.strip_prefix("discover-phase: ") {
                entry.0 = value.to_string();
            } else if let Some(value) = key_line.strip_prefix("name: ") {
                entry.1 = value.to_string();
            }
        }
        let discovered: BTreeSet<String> = entries
            .into_iter()
            .map(|(phase, name)| {
                let prefix = format!("/{phase}/");
                match name.strip_prefix(&prefix) {
                    Some(rest) if !phase.is_empty() => format!("/{rest}"),
                    _ => name,
                }
            })
            .collect();
        let want: BTreeSet<String> = names
            .iter()
            .filter_map(|name| name.as_str().map(str::to_string))
            .collect();
        assert_eq!(want, discovered, "plan {plan}");
        checked += 1;
    }
    assert!(
        checked >= 20,
        "only {checked} plans checked against tmt run"
    );
}

/// tmt's own repository (its PyPI sdist, which ships `plans/` and `tests/`): every plan it has. The
/// archive is the one the e2e suite downloads (`target/tmt-sdist/`) or `POLARIZER_TMT_SDIST`; without
/// it the test says so and passes, as this crate's tests do not download.
#[test]
fn tmts_own_plans_select_what_tmt_selects() {
    require_tmt();
    let archive = std::env::var_os("POLARIZER_TMT_SDIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmt-sdist/tmt-1.78.0.tar.gz")
        });
    if !archive.is_file() {
        eprintln!(
            "skipped: no tmt sdist at {} (the e2e suite downloads it)",
            archive.display()
        );
        return;
    }
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "cannot unpack {}", archive.display());
    let root = std::fs::read_dir(unpacked.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.join(".fmf/version").is_file())
        .expect("the sdist's tree root");
    let (compared, differences) = compare_tree(&root);
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(
        compared > 50,
        "only {compared} plans compared in tmt's tree"
    );
}
