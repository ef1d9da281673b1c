//! Conformance: fmf trees load to the same nodes and data as Python fmf gives, and conditions decide alike.
//!
//! For each tree root (a directory holding `.fmf/version`) under `shared/corpus/fmf`, and for a set of small
//! trees written here to exercise every merge suffix, directive and adjust form, Python's `fmf.Tree` and ours
//! are loaded without adjust and adjusted for a few contexts; node names, `climb()` selection and data (key
//! order included) must agree, or both must fail. Conditions are also compared one by one against
//! `fmf.context.Context.matches`, including a few thousand generated ones. Python fmf is required:
//! `pip install fmf` (the test fails, not skips, without it).

mod common;
use common::find_tree_roots;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use polarizer_shared::fmf::{AdjustOptions, Context, Decision, FmfValue, Tree};

/// Deliberate differences from Python fmf: (tree, scenario, reason). A tree is named relative to the corpus,
/// or `synthetic/<case>` for the trees below. Every entry must still differ, so the list cannot go stale.
/// Scenario `*` stands for every scenario.
const DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "synthetic/yaml-yaml11-numbers",
        "*",
        "ruamel keeps YAML 1.1 number forms in its 1.2 mode (`1_000`, `017`, `08` are ints); serde_norway \
         follows the YAML 1.2 core schema and keeps those plain scalars as strings",
    ),
    (
        "synthetic/yaml-explicit-null-tag",
        "*",
        "serde_norway refuses `!!null ''` (an explicit null tag on an empty quoted string) that ruamel reads as \
         null; the tag is never written in fmf metadata",
    ),
    (
        "synthetic/python-aliasing-yaml-anchor",
        "*",
        "ruamel gives a YAML alias the same Python object as its anchor and deepcopy keeps that sharing, so a \
         child's `base+` also changes `copy`; we treat an alias as a copy of the anchored value",
    ),
    (
        "synthetic/python-aliasing-adjust-rule",
        "*",
        "fmf stores an adjust rule's value by reference, so a later `environment+` rule also rewrites the earlier \
         rule as shown in the node's `adjust` key; the merged `environment` is the same, we keep rules as written",
    ),
];

/// Conditions where we deliberately decide differently from Python fmf: (condition, reason).
const CONDITION_DIFFERENCES: &[(&str, &str)] = &[];

/// The adjust contexts compared, besides "no adjust". Each is (scenario name, dimension, values).
/// A scenario whose name ends with IGNORE_CASE_SUFFIX adjusts with `case_sensitive=False`, as tmt does.
const CONTEXTS: &[(&str, Dimensions)] = &[
    (
        "fedora-33",
        &[("distro", &["fedora-33"]), ("arch", &["x86_64"])],
    ),
    (
        "rhel-8.4",
        &[
            ("distro", &["rhel-8.4"]),
            ("arch", &["s390x", "ppc64le"]),
            ("trigger", &["commit"]),
        ],
    ),
    (
        "Fedora-33 ignore-case",
        &[("distro", &["Fedora-33"]), ("arch", &["X86_64"])],
    ),
];

const IGNORE_CASE_SUFFIX: &str = "ignore-case";

/// A context's dimensions and their values.
type Dimensions = &'static [(&'static str, &'static [&'static str])];

/// A context for the condition comparison: owned dimensions, and whether case is ignored.
type ConditionContext = (Vec<(&'static str, Vec<&'static str>)>, bool);

/// Loads one tree with Python fmf for every scenario and prints
/// `{scenario: {"error": text} | {"nodes": [{"name", "selected", "data"}]}}` as JSON.
const PYTHON_TREE_DUMP: &str = r#"
import json, sys
import fmf, fmf.context

root = sys.argv[1]
contexts = json.loads(sys.argv[2])

def dump_raw(name, context):
    try:
        tree = fmf.Tree(root)
        if context is not None:
            tree.adjust(fmf.context.Context(**context), case_sensitive=not name.endswith("ignore-case"))
        selected = {node.name for node in tree.climb()}
        return {"nodes": [
            {"name": node.name, "selected": node.name in selected, "data": node.data}
            for node in tree.climb(whole=True)
        ]}
    except Exception as error:
        return {"error": "%s: %s" % (type(error).__name__, error)}

def finite(value):
    # JSON has no infinity or NaN; spell them as strings, and the Rust side does the same to its floats.
    if isinstance(value, float) and value != value:
        return "float:nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "float:inf" if value > 0 else "float:-inf"
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value

def dump(name, context):
    result = dump_raw(name, context)
    if "nodes" in result:
        for node in result["nodes"]:
            node["data"] = finite(node["data"])
    return result

result = {"plain": dump("plain", None)}
for name, context in contexts.items():
    result[name] = dump(name, context)
print(json.dumps(result, default=str))
"#;

/// Reads `{"contexts": {name: {dim: [values]}}, "rules": [...]}` on stdin and prints, per rule, per context,
/// "match", "no-match", "undecided" or "error".
const PYTHON_CONDITION_DUMP: &str = r#"
import json, sys
import fmf.context

request = json.load(sys.stdin)
contexts = []
for dims, ignore_case in zip(request["contexts"], request["ignore_case"]):
    context = fmf.context.Context(**dims)
    context.case_sensitive = not ignore_case
    contexts.append(context)
out = []
for rule in request["rules"]:
    row = []
    for context in contexts:
        try:
            row.append("match" if context.matches(rule) else "no-match")
        except fmf.context.CannotDecide:
            row.append("undecided")
        except Exception:
            row.append("error")
    out.append(row)
print(json.dumps(out))
"#;

#[derive(Debug, serde::Deserialize)]
struct PythonNode {
    name: String,
    selected: bool,
    data: FmfValue,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum PythonOutcome {
    Nodes { nodes: Vec<PythonNode> },
    Error { error: String },
}

fn corpus_directory() -> PathBuf {
    let relative = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/fmf");
    relative.canonicalize().unwrap_or(relative)
}

fn require_python_fmf() {
    let probe = Command::new("python3").args(["-c", "import fmf"]).output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 cannot import fmf, which this conformance test compares against; run `pip install fmf`\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            panic!("cannot run python3 ({error}); install Python 3 and then `pip install fmf`")
        }
    }
}

fn context_for(dimensions: &[(&str, &[&str])]) -> Context {
    dimensions
        .iter()
        .fold(Context::new(), |context, (dimension, values)| {
            context.with_dimension(*dimension, values.iter().copied())
        })
}

fn contexts_as_json() -> serde_json::Map<String, serde_json::Value> {
    CONTEXTS
        .iter()
        .map(|(name, dimensions)| {
            let dimensions: serde_json::Map<String, serde_json::Value> = dimensions
                .iter()
                .map(|(dimension, values)| {
                    (
                        (*dimension).to_owned(),
                        serde_json::Value::from(values.to_vec()),
                    )
                })
                .collect();
            ((*name).to_owned(), serde_json::Value::Object(dimensions))
        })
        .collect()
}

fn python_tree_outcomes(root: &Path) -> HashMap<String, PythonOutcome> {
    let output = Command::new("python3")
        .args(["-c", PYTHON_TREE_DUMP])
        .arg(root)
        .arg(serde_json::Value::Object(contexts_as_json()).to_string())
        .output()
        .unwrap_or_else(|error| panic!("cannot run python3: {error}"));
    assert!(
        output.status.success(),
        "python fmf dump failed for {}:\n{}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // Straight into our types: a serde_json::Value would sort the keys and lose the order being compared.
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("python output for {} is not JSON: {error}", root.display()))
}

/// Infinite and NaN floats as the Python dump spells them, since JSON cannot carry them.
fn spell_non_finite_floats(value: FmfValue) -> FmfValue {
    match value {
        FmfValue::Float(number) if number.is_nan() => FmfValue::string("float:nan"),
        FmfValue::Float(number) if number.is_infinite() => FmfValue::string(if number > 0.0 {
            "float:inf"
        } else {
            "float:-inf"
        }),
        FmfValue::List(items) => FmfValue::list(
            std::sync::Arc::unwrap_or_clone(items)
                .into_iter()
                .map(spell_non_finite_floats)
                .collect(),
        ),
        FmfValue::Map(map) => FmfValue::map(
            std::sync::Arc::unwrap_or_clone(map)
                .into_iter()
                .map(|(key, item)| (key, spell_non_finite_floats(item)))
                .collect(),
        ),
        other => other,
    }
}

/// Compare one scenario; returns mismatch descriptions and the number of nodes compared.
fn compare(ours: &Result<Tree, String>, python: &PythonOutcome) -> (Vec<String>, usize) {
    match (ours, python) {
        (Err(_), PythonOutcome::Error { .. }) => (Vec::new(), 0),
        (Err(error), PythonOutcome::Nodes { .. }) => {
            (vec![format!("we fail but python loads: {error}")], 0)
        }
        (Ok(_), PythonOutcome::Error { error }) => {
            (vec![format!("we load but python fails: {error}")], 0)
        }
        (Ok(tree), PythonOutcome::Nodes { nodes }) => {
            let mut mismatches = Vec::new();
            let our_names: Vec<&str> = tree.nodes().iter().map(|node| node.name()).collect();
            let python_names: Vec<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
            if our_names != python_names {
                mismatches.push(format!(
                    "node names differ:\n  ours:   {our_names:?}\n  python: {python_names:?}"
                ));
                return (mismatches, 0);
            }
            for (our_node, python_node) in tree.nodes().iter().zip(nodes) {
                if our_node.is_selected() != python_node.selected {
                    mismatches.push(format!(
                        "{}: selected {} vs python {}",
                        python_node.name,
                        our_node.is_selected(),
                        python_node.selected
                    ));
                }
                let our_data = spell_non_finite_floats(FmfValue::map(our_node.data().clone()));
                if !our_data.identical(&python_node.data) {
                    mismatches.push(format!(
                        "{}: data differs\n  ours:   {}\n  python: {}",
                        python_node.name,
                        serde_json::to_string(&our_data).unwrap_or_default(),
                        serde_json::to_string(&python_node.data).unwrap_or_default()
                    ));
                }
            }
            (mismatches, nodes.len())
        }
    }
}

/// Totals over every tree and scenario compared in one test.
#[derive(Default)]
struct Comparison {
    trees: usize,
    scenarios: usize,
    nodes: usize,
    both_failed: Vec<String>,
    /// Labels of trees Python fmf refused in at least one scenario.
    python_failed: BTreeSet<String>,
    mismatches: Vec<String>,
    expected_differences_seen: BTreeSet<(String, String)>,
}

impl Comparison {
    /// Load `root` with both implementations in every scenario and record what differs.
    fn compare_tree(&mut self, root: &Path, label: &str) {
        self.trees += 1;
        let mut python = python_tree_outcomes(root);
        let mut scenarios: Vec<(&str, Option<Context>)> = vec![("plain", None)];
        scenarios.extend(
            CONTEXTS
                .iter()
                .map(|(name, dimensions)| (*name, Some(context_for(dimensions)))),
        );
        for (scenario, context) in scenarios {
            let ours = Tree::load(root).and_then(|mut tree| {
                if let Some(context) = &context {
                    let options = AdjustOptions {
                        case_sensitive: !scenario.ends_with(IGNORE_CASE_SUFFIX),
                        ..AdjustOptions::default()
                    };
                    tree.adjust_with(context, &options)?;
                }
                Ok(tree)
            });
            let ours = ours.map_err(|error| format!("{error:#}"));
            if let Some(context) = &context {
                let options = AdjustOptions {
                    case_sensitive: !scenario.ends_with(IGNORE_CASE_SUFFIX),
                    ..AdjustOptions::default()
                };
                let visited =
                    Tree::load_and_visit(root, context, &options, |node| format!("{node:?}"))
                        .map_err(|error| format!("{error:#}"));
                let loaded = ours
                    .as_ref()
                    .map(|tree| {
                        tree.nodes()
                            .iter()
                            .map(|node| format!("{node:?}"))
                            .collect::<Vec<_>>()
                    })
                    .map_err(String::clone);
                if visited != loaded {
                    self.mismatches.push(format!(
                        "{label} [{scenario}]: load_and_visit differs from load + adjust_with"
                    ));
                }
            }
            let python_outcome = python
                .remove(scenario)
                .unwrap_or_else(|| panic!("python output for {label} lacks scenario {scenario}"));
            if matches!(python_outcome, PythonOutcome::Error { .. }) {
                self.python_failed.insert(label.to_owned());
            }
            if let (Err(ours), PythonOutcome::Error { error }) = (&ours, &python_outcome) {
                // ruamel's messages run over many lines; the first says enough to see both fail alike.
                let python_first_line = error.lines().next().unwrap_or_default();
                self.both_failed.push(format!(
                    "{label} [{scenario}]\n    ours:   {ours}\n    python: {python_first_line}"
                ));
            }
            let (found, compared) = compare(&ours, &python_outcome);
            self.scenarios += 1;
            self.nodes += compared;
            if found.is_empty() {
                continue;
            }
            if DIFFERENCES
                .iter()
                .any(|(tree, name, _)| *tree == label && (*name == scenario || *name == "*"))
            {
                self.expected_differences_seen
                    .insert((label.to_owned(), scenario.to_owned()));
                continue;
            }
            for mismatch in found {
                self.mismatches
                    .push(format!("{label} [{scenario}]: {mismatch}"));
            }
        }
    }

    fn finish(self, what: &str, difference_prefix: &str) {
        println!(
            "{what}: compared {} trees, {} tree scenarios, {} nodes; {} scenarios failed on both sides",
            self.trees,
            self.scenarios,
            self.nodes,
            self.both_failed.len()
        );
        for failure in &self.both_failed {
            println!("both fail: {failure}");
        }
        for (tree, scenario, reason) in DIFFERENCES
            .iter()
            .filter(|(tree, ..)| tree.starts_with(difference_prefix))
        {
            let seen = self
                .expected_differences_seen
                .iter()
                .any(|(seen_tree, seen_scenario)| {
                    seen_tree == tree && (*scenario == "*" || seen_scenario == scenario)
                });
            assert!(
                seen,
                "DIFFERENCES lists {tree} [{scenario}] ({reason}) but it now matches python; remove the entry"
            );
        }
        assert!(
            self.mismatches.is_empty(),
            "{} mismatches with python fmf:\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
    }
}

#[test]
fn every_corpus_tree_matches_python_fmf() {
    require_python_fmf();
    let corpus = corpus_directory();
    let mut roots = Vec::new();
    find_tree_roots(&corpus, &mut roots);
    assert!(
        !roots.is_empty(),
        "no fmf trees found under {}",
        corpus.display()
    );
    let mut comparison = Comparison::default();
    for root in &roots {
        let label = root
            .strip_prefix(&corpus)
            .unwrap_or(root)
            .display()
            .to_string();
        comparison.compare_tree(root, &label);
    }
    comparison.finish("corpus", "teemtee");
}

/// Small trees for what the corpus uses little or not at all: (case name, [(path, content)]).
/// `.fmf/version` is added to each.
const SYNTHETIC_TREES: &[(&str, &[(&str, &str)])] = &[
    (
        "merge-suffixes",
        &[(
            "main.fmf",
            r#"
text: General description
words: [Tier, Test]
tags: [Tier1, Tier2, 3, {a: 1}]
number: 10
ratio: 1.5
flag: true
vars: {x: 1, y: 2, yes: 3}
items: [{name: a}, {name: b, extra: [1]}]
single: {how: fmf, summary: base}
/plus:
    text+: " more"
    text+<: "prefix "
    tags+: [Tier3]
    tags+<: [Tier0]
    number+: 2.5
    ratio+: 1
    flag+: 1
    vars+: {z: 3, x+: 10}
    items+: {extra+: [2], name~: /(.)/item-\1/}
    single+: [{summary+: " one"}, {summary: two}]
    absent+: {deeper+: {key: value}}
    "plusplus++": [x]
/minus:
    text-: desc.*
    tags-: [Tier2, 3, {a: 1}]
    number-: 10
    ratio-: 0.5
    flag-: true
    vars-: [y, nothere, 1]
    absent-: [x]
/regexp:
    text~: "/.en(.*) .*/gen\\1/"
    tags-~: ['.ier1', "'a'"]
    vars-~: {'^y$': 1}
    items~: []
/regexp-named:
    text~: ['/(?P<first>\w+) (?P<second>\w+)/\g<second> \g<first>/', '/$/!/']
    words~: /T/t/
/minus-regexp-string:
    text-~: ^Gen
/order:
    /add-first:
        tags+: [three]
        tags-: [Tier1, three]
    /remove-first:
        tags-: [Tier1, three]
        tags+: [three]
"#,
        )],
    ),
    ("merge-error-list-plus-string", &[("main.fmf", "tags: [a]\n/child:\n    tags+: b\n")]),
    ("merge-error-dict-plus-number", &[("main.fmf", "vars: {a: 1}\n/child:\n    vars+: 1\n")]),
    ("merge-error-regexp-on-number", &[("main.fmf", "n: 1\n/child:\n    n~: /1/2/\n")]),
    ("merge-error-regexp-format", &[("main.fmf", "s: abc\n/child:\n    s~: /a/b\n")]),
    ("merge-error-regexp-invalid", &[("main.fmf", "s: abc\n/child:\n    s~: /(/b/\n")]),
    ("merge-error-minus-types", &[("main.fmf", "s: abc\n/child:\n    s-: [a]\n")]),
    ("merge-error-list-items", &[("main.fmf", "l: [1, 2]\n/child:\n    l+: {a: 1}\n")]),
    (
        "layout",
        &[
            ("main.fmf", "root: yes\n"),
            ("object.fmf", "from_file: 1\nshared: file\n"),
            ("object/main.fmf", "from_dir: 2\nshared+: +dir\n"),
            ("object/leaf.fmf", "leaf: true\n"),
            ("empty.fmf", ""),
            ("comments.fmf", "# only a comment\n"),
            ("no-metadata/readme.txt", "not fmf\n"),
            ("only-empty-dir/sub/readme.txt", "nothing\n"),
            (".hidden.fmf", "hidden: true\n"),
            (".hidden/main.fmf", "hidden: true\n"),
            ("a directory/some tests.fmf", "spaces: true\n"),
            ("subtree/.fmf/version", "1\n"),
            ("subtree/main.fmf", "separate: true\n"),
            ("nested/deeper/main.fmf", "deep: 1\n"),
            ("dots.in.name.fmf", "dots: true\n"),
            ("virtual/main.fmf", "/one:\n/two:\n    x: 1\n"),
        ],
    ),
    (
        "directives",
        &[
            ("main.fmf", "contact: somebody\ntag: [a]\n"),
            ("plain.fmf", "tag+: [b]\n"),
            ("no-inherit.fmf", "/:\n    inherit: false\ntag+: [c]\n"),
            ("branch/main.fmf", "/:\n    select: true\nbranch: 1\n/leaf:\n    x: 1\n"),
            ("hidden-leaf.fmf", "/:\n    select: false\nx: 1\n"),
            ("dir-no-inherit/main.fmf", "/:\n    inherit: false\nown: 1\n"),
            ("dir-no-inherit/child.fmf", "child: 1\n"),
        ],
    ),
    ("error-directive-unknown", &[("main.fmf", "/:\n    foo: true\n")]),
    ("error-directive-not-bool", &[("main.fmf", "/:\n    inherit: 'no'\n")]),
    (
        "deep-keys",
        &[(
            "main.fmf",
            "/one/two/three:\n    key: value\n/one:\n    /two:\n        other: 1\n        /three:\n            key+: \" more\"\n//slashes:\n    x: 1\n/a/b:\n/a/c:\n    y: 2\n",
        )],
    ),
    (
        "adjust",
        &[
            (
                "main.fmf",
                r#"
tier: 1
tag: [base]
enabled: true
environment: {A: a}
adjust:
  - when: distro == fedora
    tag+: [fedora]
  - when: distro < fedora-34 and arch == x86_64
    tag+: [old-fedora-x86]
    because: testing because
  - when: distro ~< rhel-8.5
    tag+: [rhel-8-minor]
  - when: distro ~ ^rhel-8
    tag+: [rhel-regex]
  - when: arch != x86_64, s390x
    tag+: [not-both]
  - when: arch == s390x
    enabled: false
    continue: false
  - when: trigger == commit
    tag+: [after-stop]
  - when: component == bash
    tag+: [undecided]
  - when: component == bash or arch == x86_64
    tag+: [or-decided]
  - when: component is not defined and initiator is not defined
    environment+: {B: b}
  - tag+: [always]
  - when: false
    tag+: [never]
  - when: true
    tier+: 1
"#,
            ),
            (
                "single.fmf",
                "adjust:\n    when: distro = fedora-33\n    summary: only fedora\n",
            ),
            (
                "extended.fmf",
                "adjust+:\n  - when: distro >= rhel-8\n    tag+: [child-rule]\n  - when: distro == centos\n    tag: [replaced]\n",
            ),
            (
                "nested.fmf",
                "adjust:\n  - when: arch ~ x86\n    adjust+:\n      - when: distro == fedora\n        x: never-evaluated\n    y: set\n",
            ),
        ],
    ),
    ("adjust-error-not-list", &[("main.fmf", "adjust: 5\n")]),
    ("adjust-error-bad-condition", &[("main.fmf", "adjust:\n    when: distro ==\n    x: 1\n")]),
    ("adjust-error-continue", &[("main.fmf", "adjust:\n    when: distro == fedora\n    continue: 'no'\n")]),
    ("adjust-error-rule-type", &[("main.fmf", "adjust: [1]\n")]),
    ("adjust-error-when-null", &[("main.fmf", "adjust:\n    when:\n    x: 1\n")]),
    (
        "yaml-features",
        &[(
            "main.fmf",
            r#"
base: &base
    how: fmf
    filter: "tier: 1"
copy: *base
merged:
    <<: *base
    how: shell
text: |
    line one
    line two
folded: >
    folded
    text
quoted: "a\tb"
numbers: [1, -2, 1.0, 1e3, 0x10, 0o17, .5]
words: [yes, no, on, off, True, FALSE, null, ~]
date: 2020-01-01
nested: {1: one, false: no, null: none, 1.5: float, -1: minus}
"key with spaces": 1
"#,
        )],
    ),
    (
        "explore-include",
        &[
            (".fmf/config", "explore:\n    include: [.plans, .hidden.fmf]\n"),
            ("main.fmf", "x: 1\n"),
            (".plans/basic.fmf", "plan: true\n"),
            (".hidden.fmf", "hidden: included\n"),
            (".other.fmf", "hidden: ignored\n"),
        ],
    ),
    (
        "explore-config-without-hidden-files",
        &[(".fmf/config", "other: 1\n"), ("main.fmf", "x: 1\n")],
    ),
    (
        "error-explore-include-not-list",
        &[(".fmf/config", "explore:\n    include: .plans\n"), (".plans/main.fmf", "x: 1\n")],
    ),
    (
        "error-explore-config-empty",
        &[(".fmf/config", ""), (".hidden.fmf", "x: 1\n")],
    ),
    (
        "python-aliasing-yaml-anchor",
        &[("main.fmf", "base: &b {x: 1}\ncopy: *b\n/child:\n    base+: {y: 2}\n")],
    ),
    (
        "python-aliasing-adjust-rule",
        &[("main.fmf", "adjust:\n  - environment: {A: 1}\n  - environment+: {B: 2}\n")],
    ),
    (
        "yaml-documents-and-tags",
        &[
            ("main.fmf", "---\n"),
            ("marker.fmf", "--- \n# comment\na: 1\n...\n"),
            ("tags.fmf", "a: !!str 5\nb: !!float 1\nc: !!int '7'\nd: !!bool true\nf: !!seq [1]\n"),
            ("inf.fmf", "a: .inf\nb: -.INF\nd: +12\ne: 0b101\n"),
        ],
    ),
    ("yaml-yaml11-numbers", &[("main.fmf", "a: 1_000\nb: 017\nc: 08\nd: 1.5_0\n")]),
    ("yaml-explicit-null-tag", &[("main.fmf", "a: !!null ''\n")]),
    ("yaml-error-unknown-tag", &[("main.fmf", "a: !custom 5\n")]),
    ("yaml-error-syntax", &[("main.fmf", "a: [1, 2\nb: c\n")]),
    ("yaml-error-duplicate", &[("main.fmf", "a: 1\na: 2\n")]),
    ("yaml-error-multiple-documents", &[("main.fmf", "a: 1\n---\nb: 2\n")]),
    ("yaml-error-python-key-collision", &[("main.fmf", "x: {1: one, true: yes}\n")]),
    ("yaml-error-tab", &[("main.fmf", "a:\n\tb: 1\n")]),
    ("error-not-a-mapping-list", &[("main.fmf", "- a\n- b\n")]),
    ("error-not-a-mapping-number", &[("child.fmf", "5\n")]),
    ("error-non-string-key", &[("main.fmf", "1: a\n")]),
    ("error-null-key", &[("main.fmf", "~: a\n")]),
    ("error-child-list", &[("main.fmf", "/child: [1, 2]\n")]),
];

#[test]
fn synthetic_trees_match_python_fmf() {
    require_python_fmf();
    let workspace =
        tempfile::tempdir().unwrap_or_else(|error| panic!("cannot create a temp dir: {error}"));
    let mut comparison = Comparison::default();
    for (case, files) in SYNTHETIC_TREES {
        let root = workspace.path().join(case);
        let version = (".fmf/version", "1\n");
        for (relative, content) in files.iter().chain([&version]) {
            let path = root.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|error| panic!("{}: {error}", parent.display()));
            }
            std::fs::write(&path, content)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        }
        comparison.compare_tree(&root, &format!("synthetic/{case}"));
    }
    // A case meant to load must load in Python too, or it silently tests nothing but "both fail".
    for (case, _) in SYNTHETIC_TREES {
        let label = format!("synthetic/{case}");
        let python_failed = comparison.python_failed.contains(&label);
        assert_eq!(
            python_failed,
            case.contains("error"),
            "{label}: python fmf {} it; cases named *error* should fail, others load",
            if python_failed { "refuses" } else { "accepts" }
        );
    }
    comparison.finish("synthetic", "synthetic/");
}

/// A small deterministic generator (64-bit LCG), so generated conditions are the same on every run.
struct ConditionGenerator {
    state: u64,
}

impl ConditionGenerator {
    fn next(&mut self, bound: usize) -> usize {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.state >> 33) as usize) % bound
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.next(choices.len())]
    }

    fn expression(&mut self) -> String {
        const DIMENSIONS: &[&str] = &["distro", "arch", "component", "trigger", "x-y", "Distro"];
        const OPERATORS: &[&str] = &[
            "==", "!=", "<", "<=", ">", ">=", "~", "!~", "~<", "~<=", "~>", "~>=", "~=", "~!=",
            "=", "===", "<>",
        ];
        const VALUES: &[&str] = &[
            "fedora",
            "fedora-33",
            "fedora-34",
            "fedora-33.1",
            "rhel",
            "rhel-8",
            "rhel-8.4",
            "rhel-8.5",
            "rhel-9",
            "rhel-9.1",
            "centos-stream-9",
            "x86_64",
            "s390x",
            "commit",
            "1",
            "^x86",
            "fed.*",
            "(",
            "Fedora-33",
            "rhel-8.4.1",
            "",
            "a:b",
        ];
        const SPACING: &[&str] = &["", " ", "  "];
        match self.next(10) {
            0 => self
                .pick(&["true", "false", "truest", "nonsense"])
                .to_owned(),
            1 => format!(
                "{} {}",
                self.pick(DIMENSIONS),
                self.pick(&["is defined", "is not defined", "is"])
            ),
            _ => {
                let mut values = vec![self.pick(VALUES).to_owned()];
                while self.next(3) == 0 {
                    values.push(self.pick(VALUES).to_owned());
                }
                format!(
                    "{}{}{}{}{}",
                    self.pick(DIMENSIONS),
                    self.pick(SPACING),
                    self.pick(OPERATORS),
                    self.pick(SPACING),
                    values.join(self.pick(&[", ", ",", " , "]))
                )
            }
        }
    }

    fn condition(&mut self) -> String {
        let mut condition = self.expression();
        while self.next(2) == 0 {
            let joiner = self.pick(&[" and ", " or ", " and ", " or ", "and ", " or", " "]);
            condition = format!("{condition}{joiner}{}", self.expression());
        }
        condition
    }
}

#[test]
fn conditions_decide_like_python_fmf() {
    require_python_fmf();
    let mut rules: Vec<String> = [
        "distro == fedora",
        "distro < fedora-33",
        "distro >= fedora-44",
        "arch != x86_64",
        "initiator is not defined or initiator != packit",
        "how == full or trigger == commit",
        "xfail == true",
        "distro = fedora",
        "distro == fedora and",
        "or distro == fedora",
        "distro==fedora-33 and arch==x86_64",
        "distro ~= rhel-8",
        "distro ~!= rhel-9",
        "distro ~> rhel-8.3",
        "distro ~>= rhel-8",
        "distro < rhel-9",
        "distro <= rhel-8.4.0",
        "distro ~ rhel|fedora",
        "distro !~ ^fedora$",
        "arch == x86_64\nand distro == fedora",
        "distro == fedora # comment",
        "",
        "   ",
        "distro",
        "distro == rhel-8.4, fedora",
        "distro == fedora-33.0",
        "distro > fedora-32.9",
        "distro == fed",
        "trigger is defined and trigger != commit",
    ]
    .iter()
    .map(|rule| (*rule).to_owned())
    .collect();
    let mut generator = ConditionGenerator { state: 0x5eed };
    rules.extend((0..3000).map(|_| generator.condition()));

    // (dimensions, ignore case) for every context a rule is decided against.
    let mut context_values: Vec<ConditionContext> = CONTEXTS
        .iter()
        .map(|(name, dimensions)| {
            let dimensions = dimensions
                .iter()
                .map(|(dimension, values)| (*dimension, values.to_vec()))
                .collect();
            (dimensions, name.ends_with(IGNORE_CASE_SUFFIX))
        })
        .collect();
    let mixed = vec![
        ("distro", vec!["Fedora-33", "centos-8"]),
        ("component", vec![]),
    ];
    context_values.push((mixed.clone(), false));
    context_values.push((mixed, true));
    let contexts: Vec<Context> = context_values
        .iter()
        .map(|(dimensions, ignore_case)| {
            dimensions
                .iter()
                .fold(Context::new(), |context, (name, values)| {
                    context.with_dimension(*name, values.iter().copied())
                })
                .case_sensitive(!ignore_case)
        })
        .collect();
    let request = serde_json::json!({
        "contexts": context_values
            .iter()
            .map(|(dimensions, _)| {
                dimensions
                    .iter()
                    .map(|(name, values)| ((*name).to_owned(), serde_json::json!(values)))
                    .collect::<serde_json::Map<_, _>>()
            })
            .collect::<Vec<_>>(),
        "ignore_case": context_values.iter().map(|(_, ignore_case)| *ignore_case).collect::<Vec<_>>(),
        "rules": rules,
    });

    let mut child = Command::new("python3")
        .args(["-c", PYTHON_CONDITION_DUMP])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run python3: {error}"));
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(request.to_string().as_bytes())
            .unwrap_or_else(|error| panic!("cannot write to python3: {error}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("python3 failed: {error}"));
    assert!(
        output.status.success(),
        "python3 failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python: Vec<Vec<String>> = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("python output is not JSON: {error}"));

    let mut mismatches = Vec::new();
    let mut outcomes_seen: HashMap<&str, usize> = HashMap::new();
    for (rule, python_row) in rules.iter().zip(&python) {
        for (context, python_outcome) in contexts.iter().zip(python_row) {
            let ours = match context.matches(rule) {
                Ok(Decision::Match) => "match",
                Ok(Decision::NoMatch) => "no-match",
                Ok(Decision::CannotDecide) => "undecided",
                Err(_) => "error",
            };
            *outcomes_seen.entry(ours).or_default() += 1;
            if ours != python_outcome
                && !CONDITION_DIFFERENCES.iter().any(|(known, _)| known == rule)
            {
                mismatches.push(format!(
                    "{rule:?} with {context:?}: ours {ours}, python {python_outcome}"
                ));
            }
        }
    }
    println!(
        "conditions: {} rules x {} contexts, outcomes {outcomes_seen:?}",
        rules.len(),
        contexts.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
