//! Test metadata as Polarizer uses it: tmt's keys plus Polarizer's own, read from fmf nodes and checked,
//! and the feature graph (features with path globs and dependencies).
//!
//! Unknown top-level keys are kept out of the model but never rejected: a team's tmt trees carry keys
//! Polarizer does not use. A key tmt defines means what tmt says (`provision` is tmt's plan step).
//! Polarizer's own keys are read as `extra-polarizer-<key>` (tmt's `extra-` namespace, which `tmt lint`
//! accepts) or bare; its structured keys (`resources`, `platform`, `provision`, `hooks`) are strict: an
//! unknown sub-key is an error naming the node and key.
//!
//! Reading never stops at the first problem: each node gives all of its errors and warnings, and a
//! catalog all of its whole-tree ones (see [`NodeReading`], [`Catalog::problems`]).

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::facts::PlatformKind;
use crate::fmf::{FmfValue, Node, Tree};

/// The node under which features are declared: `/features/<name>` with `paths` and `depends`.
pub const FEATURES_NODE: &str = "/features";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestType {
    Unit,
    Integration,
    Functional,
    Performance,
    Acceptance,
}

impl TestType {
    pub const ALL: [TestType; 5] = [
        TestType::Unit,
        TestType::Integration,
        TestType::Functional,
        TestType::Performance,
        TestType::Acceptance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestType::Unit => "unit",
            TestType::Integration => "integration",
            TestType::Functional => "functional",
            TestType::Performance => "performance",
            TestType::Acceptance => "acceptance",
        }
    }

    pub fn parse(text: &str) -> Option<TestType> {
        TestType::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for TestType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A tmt `link`: a relation (verifies, verified-by, relates, blocks, …) to a target, with an optional note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub relation: String,
    pub target: String,
    pub note: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub needs: Vec<String>,
    pub creates: Vec<String>,
    pub modifies: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlatformNeeds {
    /// Any of these kinds (sorted, each once); empty for any kind. On the wire a `Vec` of at most one
    /// kind is encoded as the `Option` it replaced was; stored JSON of that `Option` (`null`, `"vm"`)
    /// still reads.
    #[serde(deserialize_with = "kinds_from_list_or_option")]
    pub kind: Vec<PlatformKind>,
    pub arch: Vec<String>,
    pub distro: Vec<String>,
}

impl PlatformNeeds {
    /// Whether an agent of this kind may take the test.
    pub fn accepts_kind(&self, kind: PlatformKind) -> bool {
        self.kind.is_empty() || self.kind.contains(&kind)
    }

    /// The kinds as text: `vm`, `vm|baremetal`, or empty for any.
    pub fn kind_text(&self) -> String {
        let kinds: Vec<&str> = self.kind.iter().map(|kind| kind.as_str()).collect();
        kinds.join("|")
    }
}

/// Reads `kind` as a list, or (from a self-describing format such as stored JSON) as the single
/// optional kind it was before.
fn kinds_from_list_or_option<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PlatformKind>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Kinds {
        One(PlatformKind),
        Many(Vec<PlatformKind>),
        None(()),
    }
    if !deserializer.is_human_readable() {
        return Vec::deserialize(deserializer);
    }
    Ok(match Option::<Kinds>::deserialize(deserializer)? {
        Some(Kinds::One(kind)) => vec![kind],
        Some(Kinds::Many(kinds)) => kinds,
        Some(Kinds::None(())) | None => Vec::new(),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Provision {
    pub playbook: String,
    pub containerfile: String,
}

/// One test. Field order is part of the wire format (postcard): append, never reorder.
///
/// `Default` is the empty value a missing key reads back as (see [`Compact`]), not fmf's defaults:
/// those `of_node` applies (a test is enabled, say).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TestMetadata {
    /// Stable identity: fmf `id` when present, else the node name.
    pub id: String,
    pub name: String,
    pub summary: String,
    pub description: String,
    pub test: String,
    pub path: String,
    pub framework: String,
    pub duration_seconds: u64,
    pub tags: Vec<String>,
    pub tier: String,
    pub components: Vec<String>,
    pub require: Vec<String>,
    pub recommend: Vec<String>,
    pub links: Vec<Link>,
    pub enabled: bool,
    pub environment: BTreeMap<String, String>,
    pub result: String,
    pub order: i64,
    pub test_type: Option<TestType>,
    pub feature: String,
    pub after: Vec<String>,
    pub resources: Resources,
    pub services: Vec<String>,
    pub platform: PlatformNeeds,
    pub provision: Provision,
    pub junit: String,
    pub bdd: String,
    pub hooks: Hooks,
}

/// A test's metadata as JSON without the keys that hold their type's default (an empty string, list
/// or section, no type, `false`, 0), which read back as that default: a third fewer bytes for a
/// typical test, which the coordinator stores, hashes and copies 100,000 times in a large import.
/// Every field of [`TestMetadata`] is listed here; the round-trip test fails for one left out.
pub struct Compact<'a>(pub &'a TestMetadata);

impl Serialize for Compact<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        fn is_default<T: Default + PartialEq>(value: &T) -> bool {
            *value == T::default()
        }
        let test = self.0;
        let mut map = serializer.serialize_map(None)?;
        macro_rules! unless_default {
            ($($field:ident),* $(,)?) => {
                $(if !is_default(&test.$field) {
                    map.serialize_entry(stringify!($field), &test.$field)?;
                })*
            };
        }
        unless_default!(
            id,
            name,
            summary,
            description,
            test,
            path,
            framework,
            duration_seconds,
            tags,
            tier,
            components,
            require,
            recommend,
            links,
            enabled,
            environment,
            result,
            order,
            test_type,
            feature,
            after,
            resources,
            services,
            platform,
            provision,
            junit,
            bdd,
            hooks,
        );
        map.end()
    }
}

/// Polarizer's `hooks`: shell commands around each test (`setup`, `cleanup`) and around the suite the
/// test lands in (`suite-setup`, `suite-cleanup`: each distinct command once per suite). Cleanups run
/// even when the test failed or timed out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    pub setup: Vec<String>,
    pub cleanup: Vec<String>,
    pub suite_setup: Vec<String>,
    pub suite_cleanup: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub description: String,
    /// Globs over source paths (relative to the repository root) that belong to this feature.
    pub paths: Vec<String>,
    pub depends: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("{node}: key {key:?}: expected {expected}, found {found}")]
    WrongType {
        node: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{node}: unknown key {key:?} in {section} (expected one of: {expected})")]
    UnknownKey {
        node: String,
        section: String,
        key: String,
        expected: String,
    },
    #[error("{node}: key {key:?}: {message}")]
    BadValue {
        node: String,
        key: String,
        message: String,
    },
    #[error("{node}: test {test:?} named in `after` does not exist")]
    UnknownAfter { node: String, test: String },
    #[error("feature {feature:?} depends on {depends:?}, which is not declared")]
    UnknownDependency { feature: String, depends: String },
    #[error("cycle in feature dependencies: {}", cycle.join(" -> "))]
    FeatureCycle { cycle: Vec<String> },
    #[error("cycle in `after`: {}", cycle.join(" -> "))]
    AfterCycle { cycle: Vec<String> },
    #[error("two tests have the id {id:?}: {first} and {second}")]
    DuplicateId {
        id: String,
        first: String,
        second: String,
    },
}

impl MetadataError {
    /// The node the error is about (a test's name; for a feature, its name), and the key as written.
    pub fn place(&self) -> (&str, String) {
        match self {
            MetadataError::WrongType { node, key, .. }
            | MetadataError::BadValue { node, key, .. } => (node, key.clone()),
            MetadataError::UnknownKey {
                node, section, key, ..
            } => (node, format!("{section}.{key}")),
            MetadataError::UnknownAfter { node, .. } => (node, "after".into()),
            MetadataError::UnknownDependency { feature, .. } => (feature, "depends".into()),
            MetadataError::FeatureCycle { cycle } => {
                (cycle.first().map_or("", String::as_str), "depends".into())
            }
            MetadataError::AfterCycle { cycle } => {
                (cycle.first().map_or("", String::as_str), "after".into())
            }
            MetadataError::DuplicateId { second, .. } => (second, "id".into()),
        }
    }
}

/// What Polarizer can use but the tree should change: shown by import, trigger and lint, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataWarning {
    #[error(
        "{test}: names feature {feature:?}, which is not declared under {FEATURES_NODE}: a change selects this test only through `--all` or `--feature {feature}`"
    )]
    UndeclaredFeature { test: String, feature: String },
    #[error(
        "{node}: duration {text:?} is not one tmt can run (like 90, 30s, 5m, 2h, 1h 30m, 5m*2): it runs with the default, 5m"
    )]
    BadDuration { node: String, text: String },
    #[error(
        "{node}: `provision` is tmt's plan step; this one is read as Polarizer's (playbook, containerfile): write it as `extra-polarizer-provision`"
    )]
    ProvisionIsTmts { node: String },
    /// Named by its place (file and line) in a report, not by the node: many inherit it.
    #[error(
        "{key:?} is not a tmt key (`tmt lint` fails on it): write it as `extra-polarizer-{key}`"
    )]
    NotLintClean { node: String, key: String },
}

impl MetadataWarning {
    /// The node the warning is about, and the key as written.
    pub fn place(&self) -> (&str, String) {
        match self {
            MetadataWarning::UndeclaredFeature { test, .. } => (test, "feature".into()),
            MetadataWarning::ProvisionIsTmts { node } => (node, "provision".into()),
            MetadataWarning::BadDuration { node, .. } => (node, "duration".into()),
            MetadataWarning::NotLintClean { node, key } => (node, key.clone()),
        }
    }
}

/// Everything wrong with a catalog as a whole: references that do not resolve, cycles, duplicate ids
/// (errors), features named but not declared (warnings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problems {
    pub errors: Vec<MetadataError>,
    pub warnings: Vec<MetadataWarning>,
}

/// What one node of an adjusted tree is to Polarizer.
#[derive(Clone, Debug, PartialEq)]
// Not boxed: a caller gathering many before the catalog takes them can box what it gathers (the
// coordinator's import boxes each node's item with its stored row), and others need no box at all.
#[allow(clippy::large_enum_variant)]
pub enum CatalogItem {
    Test(TestMetadata),
    Feature(Feature),
}

impl CatalogItem {
    /// A test (a selected node with a `test` key, as tmt finds them) or a feature (a leaf under
    /// `/features`), read and checked; `None` for any other node. `root` is the tree's root directory.
    pub fn of_node(
        node: &Node,
        root: &std::path::Path,
    ) -> Result<Option<CatalogItem>, MetadataError> {
        CatalogItem::read(node, root).into_result()
    }

    /// [`of_node`](Self::of_node) with every error and warning of the node.
    pub fn read(node: &Node, root: &std::path::Path) -> NodeReading<Option<CatalogItem>> {
        match node.name().strip_prefix(FEATURES_NODE) {
            Some(rest) if rest.starts_with('/') => {
                if node.is_leaf() {
                    feature_from_node(node, &rest[1..])
                        .map(|feature| Some(CatalogItem::Feature(feature)))
                } else {
                    NodeReading::nothing()
                }
            }
            // tmt's rule: a node is a test when it has `test`. Plans (`discover`, `execute`, …) and
            // stories are not, and are left alone.
            _ if node.is_selected() && node.data().contains_key("test") => {
                test_from_node(node, root).map(|test| Some(CatalogItem::Test(test)))
            }
            _ => NodeReading::nothing(),
        }
    }
}

/// Everything an adjusted fmf tree says that Polarizer uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub tests: Vec<TestMetadata>,
    pub features: Vec<Feature>,
}

impl Catalog {
    /// Reads tests (leaves with a `test` key, as tmt) and features from an adjusted tree, and checks the
    /// whole: every reference resolves and neither graph has a cycle.
    pub fn from_tree(tree: &Tree) -> Result<Catalog, MetadataError> {
        Catalog::from_items(
            tree.nodes()
                .iter()
                .map(|node| CatalogItem::of_node(node, tree.root())),
        )
    }

    /// The catalog of nodes already read with [`CatalogItem::of_node`], in tree order; checked whole.
    pub fn from_items(
        items: impl IntoIterator<Item = Result<Option<CatalogItem>, MetadataError>>,
    ) -> Result<Catalog, MetadataError> {
        let catalog = Catalog::assemble(items)?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// [`from_items`](Self::from_items) without the whole-catalog checks: for a caller that runs
    /// [`validate`](Self::validate) itself, alongside other work, and acts on nothing before it passes.
    pub fn assemble(
        items: impl IntoIterator<Item = Result<Option<CatalogItem>, MetadataError>>,
    ) -> Result<Catalog, MetadataError> {
        let items = items.into_iter();
        // The upper bound (a filtered list's lower one is 0): grown by doubling, the vector of 100,000
        // tests would briefly be held twice, at 1.5 times its size.
        let (lower, upper) = items.size_hint();
        let mut catalog = Catalog {
            tests: Vec::with_capacity(upper.unwrap_or(lower)),
            features: Vec::new(),
        };
        for item in items {
            match item? {
                Some(CatalogItem::Test(test)) => catalog.tests.push(test),
                Some(CatalogItem::Feature(feature)) => catalog.features.push(feature),
                None => {}
            }
        }
        Ok(catalog)
    }

    /// The first error of [`problems`](Self::problems), if any: for a caller that acts on the catalog
    /// only when it is usable.
    pub fn validate(&self) -> Result<(), MetadataError> {
        match self.problems().errors.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(first),
        }
    }

    /// Every whole-catalog problem, in a stable order: see [`problems_of`].
    pub fn problems(&self) -> Problems {
        problems_of(&self.features, &self.tests)
    }

    /// Names of features tests name that are not declared, sorted, each once.
    pub fn undeclared_features(&self) -> Vec<String> {
        undeclared_features_of(&self.features, &self.tests)
    }

    /// Every feature that depends on `feature`, directly or transitively, including itself.
    pub fn feature_and_dependents(&self, feature: &str) -> BTreeSet<String> {
        let mut selected = BTreeSet::from([feature.to_string()]);
        loop {
            let before = selected.len();
            for candidate in &self.features {
                if candidate
                    .depends
                    .iter()
                    .any(|depends| selected.contains(depends))
                {
                    selected.insert(candidate.name.clone());
                }
            }
            if selected.len() == before {
                return selected;
            }
        }
    }
}

/// What the whole-catalog checks read of a test: a catalog's tests, or the compact form an import
/// keeps of them.
pub trait TestRefs {
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn feature(&self) -> &str;
    fn after(&self) -> impl Iterator<Item = &str>;
}

impl TestRefs for TestMetadata {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn feature(&self) -> &str {
        &self.feature
    }
    fn after(&self) -> impl Iterator<Item = &str> {
        self.after.iter().map(String::as_str)
    }
}

impl<T: TestRefs> TestRefs for Box<T> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn feature(&self) -> &str {
        (**self).feature()
    }
    fn after(&self) -> impl Iterator<Item = &str> {
        (**self).after()
    }
}

/// Every whole-catalog problem, in a stable order: undeclared `depends`, duplicate ids, `after`
/// naming no test, cycles (errors); features named by tests but not declared (warnings).
pub fn problems_of<T: TestRefs>(features: &[Feature], tests: &[T]) -> Problems {
    let mut problems = Problems::default();
    // Membership only: hash sets (a catalog has 100,000 tests); graphs stay ordered so the cycle
    // named is always the same one.
    let feature_names: HashSet<&str> = features
        .iter()
        .map(|feature| feature.name.as_str())
        .collect();
    for feature in features {
        for depends in &feature.depends {
            if !feature_names.contains(depends.as_str()) {
                problems.errors.push(MetadataError::UnknownDependency {
                    feature: feature.name.clone(),
                    depends: depends.clone(),
                });
            }
        }
    }
    let mut ids: HashMap<&str, &str> = HashMap::with_capacity(tests.len());
    for test in tests {
        if let Some(first) = ids.insert(test.id(), test.name()) {
            problems.errors.push(MetadataError::DuplicateId {
                id: test.id().to_string(),
                first: first.to_string(),
                second: test.name().to_string(),
            });
        }
        if !test.feature().is_empty() && !feature_names.contains(test.feature()) {
            problems.warnings.push(MetadataWarning::UndeclaredFeature {
                test: test.name().to_string(),
                feature: test.feature().to_string(),
            });
        }
    }
    // `after` may name a test by id or by node name; resolve to names for the graph.
    let mut name_of: HashMap<&str, &str> = HashMap::with_capacity(2 * tests.len());
    name_of.extend(
        tests
            .iter()
            .flat_map(|test| [(test.id(), test.name()), (test.name(), test.name())]),
    );
    for test in tests {
        for after in test.after() {
            if !name_of.contains_key(after) {
                problems.errors.push(MetadataError::UnknownAfter {
                    node: test.name().to_string(),
                    test: after.to_string(),
                });
            }
        }
    }
    let feature_edges: BTreeMap<&str, Vec<&str>> = features
        .iter()
        .map(|feature| {
            (
                feature.name.as_str(),
                feature.depends.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    if let Some(cycle) = find_cycle(&feature_edges) {
        problems.errors.push(MetadataError::FeatureCycle { cycle });
    }
    // A test that follows none cannot be in a cycle: only tests with `after` are searched from.
    let after_edges: BTreeMap<&str, Vec<&str>> = tests
        .iter()
        .filter(|test| test.after().next().is_some())
        .map(|test| {
            (
                test.name(),
                test.after()
                    .filter_map(|after| name_of.get(after).copied())
                    .collect(),
            )
        })
        .collect();
    if let Some(cycle) = find_cycle(&after_edges) {
        problems.errors.push(MetadataError::AfterCycle { cycle });
    }
    problems
}

/// Names of features tests name that are not declared, sorted, each once.
pub fn undeclared_features_of<T: TestRefs>(features: &[Feature], tests: &[T]) -> Vec<String> {
    let declared: HashSet<&str> = features
        .iter()
        .map(|feature| feature.name.as_str())
        .collect();
    let undeclared: BTreeSet<&str> = tests
        .iter()
        .map(|test| test.feature())
        .filter(|feature| !feature.is_empty() && !declared.contains(feature))
        .collect();
    undeclared.into_iter().map(str::to_string).collect()
}

/// A cycle in a directed graph, named from its first node back to it, if there is one.
fn find_cycle(edges: &BTreeMap<&str, Vec<&str>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    for &start in edges.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Iterative depth-first search: (node, index of the next edge to follow).
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Active);
        while let Some((node, next_edge)) = stack.last_mut() {
            let targets = edges.get(*node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&target) = targets.get(*next_edge) {
                *next_edge += 1;
                match marks.get(target) {
                    Some(Mark::Active) => {
                        let from = stack
                            .iter()
                            .position(|(name, _)| *name == target)
                            .unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|(name, _)| name.to_string())
                            .collect();
                        cycle.push(target.to_string());
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(target, Mark::Active);
                        stack.push((target, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

/// Polarizer's own keys, each also readable as `extra-polarizer-<key>`: the lint-clean spelling, which
/// tmt's schema accepts (`^extra-`) and which wins over the bare key where both are set.
pub const POLARIZER_KEYS: [&str; 10] = [
    "type",
    "feature",
    "after",
    "resources",
    "services",
    "platform",
    "provision",
    "junit",
    "bdd",
    "hooks",
];

/// [`POLARIZER_KEYS`] in their lint-clean spelling, in the same order.
const EXTRA_KEYS: [&str; 10] = [
    "extra-polarizer-type",
    "extra-polarizer-feature",
    "extra-polarizer-after",
    "extra-polarizer-resources",
    "extra-polarizer-services",
    "extra-polarizer-platform",
    "extra-polarizer-provision",
    "extra-polarizer-junit",
    "extra-polarizer-bdd",
    "extra-polarizer-hooks",
];

/// The prefix of Polarizer's keys in tmt's `extra-` namespace: `extra-polarizer-type`, ….
pub const EXTRA_PREFIX: &str = "extra-polarizer-";

/// The lint-clean spelling of one of Polarizer's keys.
pub fn extra_key(key: &str) -> String {
    format!("{EXTRA_PREFIX}{key}")
}

/// Reads keys of one node with errors that name it. Every problem is recorded, not only the first: a
/// key that cannot be read reads as empty and the node is refused at the end with all of them.
struct Reader<'a> {
    node: &'a Node,
    errors: std::cell::RefCell<Vec<MetadataError>>,
    warnings: std::cell::RefCell<Vec<MetadataWarning>>,
}

impl<'a> Reader<'a> {
    fn new(node: &'a Node) -> Reader<'a> {
        Reader {
            node,
            errors: Default::default(),
            warnings: Default::default(),
        }
    }

    fn error(&self, error: MetadataError) {
        self.errors.borrow_mut().push(error);
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &FmfValue) {
        self.error(MetadataError::WrongType {
            node: self.node.name().to_string(),
            key: key.to_string(),
            expected,
            found: found.type_name().to_string(),
        })
    }

    fn bad_value(&self, key: &str, message: String) {
        self.error(MetadataError::BadValue {
            node: self.node.name().to_string(),
            key: key.to_string(),
            message,
        })
    }

    /// One of Polarizer's keys: its `extra-polarizer-` form if set, else the bare key; with the key as
    /// written, for errors. tmt's `provision` is Polarizer's only as a mapping of Polarizer's sub-keys
    /// (see [`is_polarizer_provision`]), and then with a warning.
    fn polarizer(&self, key: &'static str) -> Option<(&'static str, &'a FmfValue)> {
        // Looked up for every key of every test (a million times in a large import): no allocation.
        let extra = EXTRA_KEYS[POLARIZER_KEYS.iter().position(|known| *known == key)?];
        if let Some(value) = self.node.get(extra) {
            return Some((extra, value));
        }
        let value = self.node.get(key)?;
        if key == "provision" {
            match value {
                FmfValue::Map(map) if is_polarizer_provision(map) => {
                    self.warnings
                        .borrow_mut()
                        .push(MetadataWarning::ProvisionIsTmts {
                            node: self.node.name().to_string(),
                        });
                }
                _ => return None,
            }
        }
        Some((key, value))
    }

    fn string_value(&self, key: &str, value: Option<&FmfValue>) -> String {
        match value {
            None | Some(FmfValue::Null) => String::new(),
            Some(FmfValue::String(text)) => text.to_string(),
            Some(FmfValue::Integer(number)) => number.to_string(),
            Some(FmfValue::Float(number)) => number.to_string(),
            Some(other) => {
                self.wrong(key, "a string", other);
                String::new()
            }
        }
    }

    fn string(&self, key: &str) -> String {
        self.string_value(key, self.node.get(key))
    }

    fn polarizer_string(&self, key: &'static str) -> String {
        match self.polarizer(key) {
            Some((written, value)) => self.string_value(written, Some(value)),
            None => String::new(),
        }
    }

    /// A string or a list of strings (tmt accepts both for `tag`, `component`, `require`, …).
    fn strings_value(&self, key: &str, value: Option<&FmfValue>) -> Vec<String> {
        strings_of(value).unwrap_or_else(|found| {
            self.wrong(key, "a string or a list of strings", &found);
            Vec::new()
        })
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.strings_value(key, self.node.get(key))
    }

    fn polarizer_strings(&self, key: &'static str) -> Vec<String> {
        match self.polarizer(key) {
            Some((written, value)) => self.strings_value(written, Some(value)),
            None => Vec::new(),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> bool {
        match self.node.get(key) {
            None | Some(FmfValue::Null) => default,
            Some(FmfValue::Bool(value)) => *value,
            Some(other) => {
                self.wrong(key, "true or false", other);
                default
            }
        }
    }

    /// One of Polarizer's sections: a sub-map with only the given keys allowed. Each unknown sub-key
    /// is an error; the known ones are still read.
    fn section(&self, key: &'static str, allowed: &'static [&'static str]) -> Section<'a> {
        let Some((written, value)) = self.polarizer(key) else {
            return Section {
                written: key,
                map: None,
            };
        };
        let map = match value {
            FmfValue::Null => None,
            FmfValue::Map(map) => {
                for sub_key in map.keys() {
                    if !allowed.contains(&sub_key.as_ref()) {
                        self.error(MetadataError::UnknownKey {
                            node: self.node.name().to_string(),
                            section: written.to_string(),
                            key: sub_key.to_string(),
                            expected: allowed.join(", "),
                        });
                    }
                }
                Some(&**map)
            }
            other => {
                self.wrong(written, "a mapping", other);
                None
            }
        };
        Section { written, map }
    }

    fn section_strings(&self, section: &Section<'_>, sub_key: &str) -> Vec<String> {
        self.strings_value(
            &format!("{}.{sub_key}", section.written),
            section.map.and_then(|map| map.get(sub_key)),
        )
    }

    fn section_string(&self, section: &Section<'_>, sub_key: &str) -> String {
        let field = format!("{}.{sub_key}", section.written);
        match section.map.and_then(|map| map.get(sub_key)) {
            None | Some(FmfValue::Null) => String::new(),
            Some(FmfValue::String(text)) => text.to_string(),
            Some(other) => {
                self.wrong(&field, "a string", other);
                String::new()
            }
        }
    }

    /// A file of the tree named by a section's sub-key: relative to the tree's root, inside it (no `..`,
    /// not absolute), in plain characters (it reaches a shell and other programs as it is written).
    fn section_tree_path(&self, section: &Section<'_>, sub_key: &str) -> String {
        let path = self.section_string(section, sub_key);
        if path.is_empty() {
            return path;
        }
        let plain = path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/+@".contains(c));
        let inside = !path.starts_with('/')
            && path
                .split('/')
                .all(|part| !part.is_empty() && part != ".." && part != ".");
        if !(plain && inside) {
            self.bad_value(
                &format!("{}.{sub_key}", section.written),
                format!(
                    "{path:?} must be a path inside the tree, relative to its root, of letters, digits and . _ - / + @"
                ),
            );
            return String::new();
        }
        path
    }

    /// What the node's reading found wrong, or `value` when nothing was.
    fn finish<T>(self, value: T) -> NodeReading<T> {
        NodeReading {
            value,
            errors: self.errors.into_inner(),
            warnings: self.warnings.into_inner(),
        }
    }
}

/// A Polarizer section as read: the key as written (for errors) and its mapping, if it is one.
struct Section<'a> {
    written: &'static str,
    map: Option<&'a crate::fmf::FmfMap>,
}

/// One node read: what it is, and every error and warning found in it. With errors, `value` holds
/// what could be read and must not be used.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeReading<T> {
    pub value: T,
    pub errors: Vec<MetadataError>,
    pub warnings: Vec<MetadataWarning>,
}

impl<T> NodeReading<T> {
    /// The value if the node had no error, else its first error.
    pub fn into_result(self) -> Result<T, MetadataError> {
        match self.errors.into_iter().next() {
            None => Ok(self.value),
            Some(first) => Err(first),
        }
    }

    fn map<U>(self, transform: impl FnOnce(T) -> U) -> NodeReading<U> {
        NodeReading {
            value: transform(self.value),
            errors: self.errors,
            warnings: self.warnings,
        }
    }
}

impl NodeReading<Option<CatalogItem>> {
    fn nothing() -> Self {
        NodeReading {
            value: None,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

fn strings_of(value: Option<&FmfValue>) -> Result<Vec<String>, FmfValue> {
    match value {
        None | Some(FmfValue::Null) => Ok(Vec::new()),
        Some(FmfValue::String(text)) => Ok(vec![text.to_string()]),
        Some(FmfValue::List(items)) => items
            .iter()
            .map(|item| match item {
                FmfValue::String(text) => Ok(text.to_string()),
                FmfValue::Integer(number) => Ok(number.to_string()),
                other => Err(other.clone()),
            })
            .collect(),
        Some(other) => Err(other.clone()),
    }
}

/// tmt durations, by tmt's own grammar (`tmt.utils.duration_to_seconds`): `90`, `30s`, `5m`, `2h`,
/// `1d`, sums like `1h 30m` or `1h1m`, and factors like `5m*2` or `1m * 2.5` (what an adjust rule's
/// `duration+: '*2'` makes), rounded up; factors alone multiply tmt's default of 5 minutes.
pub fn parse_duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim().as_bytes();
    let is_word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    // A token must end at a word boundary: at the end, or before a character that is not a word's.
    let at_boundary = |position: usize| position >= text.len() || !is_word(text[position]);
    let skip_spaces = |mut position: usize| {
        while position < text.len() && text[position].is_ascii_whitespace() {
            position += 1;
        }
        position
    };
    let digits_end = |mut position: usize| {
        while position < text.len() && text[position].is_ascii_digit() {
            position += 1;
        }
        position
    };
    let (mut total, mut factor, mut position) = (0f64, 1f64, 0usize);
    if text.is_empty() {
        return None;
    }
    while position < text.len() {
        if text[position] == b'*' {
            let start = skip_spaces(position + 1);
            let mut end = digits_end(start);
            if end == start {
                return None;
            }
            if end + 1 < text.len() && text[end] == b'.' && text[end + 1].is_ascii_digit() {
                end = digits_end(end + 1);
            }
            if !at_boundary(end) {
                return None;
            }
            factor *= std::str::from_utf8(&text[start..end])
                .ok()?
                .parse::<f64>()
                .ok()?;
            position = skip_spaces(end);
            continue;
        }
        let digits = digits_end(position);
        if digits == position {
            return None;
        }
        let number: f64 = std::str::from_utf8(&text[position..digits])
            .ok()?
            .parse()
            .ok()?;
        let suffix_at = skip_spaces(digits);
        let unit = text.get(suffix_at).and_then(|suffix| match suffix {
            b's' => Some(1.0),
            b'm' => Some(60.0),
            b'h' => Some(3600.0),
            b'd' => Some(86400.0),
            _ => None,
        });
        match unit {
            Some(unit) if at_boundary(suffix_at + 1) || text[suffix_at + 1].is_ascii_digit() => {
                total += number * unit;
                position = skip_spaces(suffix_at + 1);
            }
            _ if at_boundary(digits) => {
                total += number;
                position = skip_spaces(digits);
            }
            _ => return None,
        }
    }
    if total == 0.0 && factor != 1.0 {
        total = DEFAULT_DURATION_SECONDS as f64;
    }
    let seconds = (total * factor).ceil();
    (seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64).then_some(seconds as u64)
}

pub const DEFAULT_DURATION_SECONDS: u64 = 300;

/// Whether a `provision` mapping is Polarizer's (`playbook`, `containerfile`) rather than tmt's plan
/// step: it has at least one key and every key is one of Polarizer's, which no tmt provision plugin has.
fn is_polarizer_provision(map: &crate::fmf::FmfMap) -> bool {
    !map.is_empty()
        && map
            .keys()
            .all(|key| matches!(key.as_ref(), "playbook" | "containerfile"))
}

/// `kind: vm` or `kind: [vm, baremetal]`: the platform kinds a test can run on, sorted, each once.
fn platform_kinds(reader: &Reader<'_>, section: &Section<'_>) -> Vec<PlatformKind> {
    let field = format!("{}.kind", section.written);
    let texts = reader.strings_value(&field, section.map.and_then(|map| map.get("kind")));
    let mut kinds = Vec::with_capacity(texts.len());
    for text in texts {
        match text.parse::<PlatformKind>() {
            Ok(kind) => kinds.push(kind),
            Err(err) => reader.bad_value(&field, err.to_string()),
        }
    }
    kinds.sort();
    kinds.dedup();
    kinds
}

/// tmt's `require` and `recommend`: package names, or mappings (a library as an fmf id, files by
/// pattern), each mapping kept as its text.
fn requirements(reader: &Reader<'_>, key: &str) -> Vec<String> {
    let item = |value: &FmfValue| match value {
        FmfValue::String(text) => Some(text.to_string()),
        FmfValue::Integer(number) => Some(number.to_string()),
        FmfValue::Map(_) => Some(value.python_repr()),
        _ => None,
    };
    let expected = "a package, a library or file mapping, or a list of them";
    match reader.node.get(key) {
        None | Some(FmfValue::Null) => Vec::new(),
        Some(FmfValue::List(items)) => items
            .iter()
            .filter_map(|value| {
                let read = item(value);
                if read.is_none() {
                    reader.wrong(key, expected, value);
                }
                read
            })
            .collect(),
        Some(value) => match item(value) {
            Some(read) => vec![read],
            None => {
                reader.wrong(key, expected, value);
                Vec::new()
            }
        },
    }
}

fn feature_from_node(node: &Node, default_name: &str) -> NodeReading<Feature> {
    let reader = Reader::new(node);
    let name = match reader.string("name") {
        name if name.is_empty() => default_name.to_string(),
        name => name,
    };
    let feature = Feature {
        name,
        description: reader.string("description"),
        paths: reader.strings("paths"),
        depends: reader.strings("depends"),
    };
    reader.finish(feature)
}

fn links_of(reader: &Reader<'_>) -> Vec<Link> {
    let mut links = Vec::new();
    let items: Vec<&FmfValue> = match reader.node.get("link") {
        None | Some(FmfValue::Null) => return links,
        Some(FmfValue::List(items)) => items.iter().collect(),
        Some(other) => vec![other],
    };
    for item in items {
        match item {
            // A bare link is `relates`, as in tmt.
            FmfValue::String(target) => links.push(Link {
                relation: "relates".into(),
                target: target.to_string(),
                note: String::new(),
            }),
            FmfValue::Map(map) => {
                let note = map
                    .get("note")
                    .and_then(FmfValue::as_str)
                    .unwrap_or_default()
                    .to_string();
                let mut relations = map.iter().filter(|(key, _)| key.as_ref() != "note");
                let (Some((relation, target)), None) = (relations.next(), relations.next()) else {
                    reader.wrong(
                        "link",
                        "one relation: target pair per link (and an optional note)",
                        item,
                    );
                    continue;
                };
                let Some(target) = target.as_str() else {
                    reader.wrong("link", "a string target", target);
                    continue;
                };
                links.push(Link {
                    relation: relation.to_string(),
                    target: target.to_string(),
                    note,
                });
            }
            other => reader.wrong("link", "a string or a mapping", other),
        }
    }
    links
}

fn test_from_node(node: &Node, root: &std::path::Path) -> NodeReading<TestMetadata> {
    let reader = Reader::new(node);
    let name = node.name().to_string();
    let id = match reader.string("id") {
        id if id.is_empty() => name.clone(),
        id => id,
    };
    let duration_text = reader.string("duration");
    let duration_seconds = if duration_text.is_empty() {
        DEFAULT_DURATION_SECONDS
    } else {
        // tmt accepts such a tree (`tmt lint` only warns) and fails the test when it runs it; here
        // it runs with the default, and the tree is told.
        parse_duration_seconds(&duration_text).unwrap_or_else(|| {
            reader
                .warnings
                .borrow_mut()
                .push(MetadataWarning::BadDuration {
                    node: node.name().to_string(),
                    text: duration_text.clone(),
                });
            DEFAULT_DURATION_SECONDS
        })
    };
    let test_type = match reader.polarizer("type") {
        None | Some((_, FmfValue::Null)) => None,
        Some((written, value)) => {
            let text = reader.string_value(written, Some(value));
            let parsed = TestType::parse(&text);
            if parsed.is_none() && !text.is_empty() {
                reader.bad_value(
                    written,
                    format!(
                        "{text:?} is not one of unit, integration, functional, performance, acceptance"
                    ),
                );
            }
            parsed
        }
    };
    let environment = match node.get("environment") {
        None | Some(FmfValue::Null) => BTreeMap::new(),
        Some(FmfValue::Map(map)) => map
            .iter()
            .map(|(key, value)| (key.to_string(), value.python_str()))
            .collect(),
        Some(other) => {
            reader.wrong("environment", "a mapping", other);
            BTreeMap::new()
        }
    };
    let resources = reader.section("resources", &["needs", "creates", "modifies"]);
    let platform = reader.section("platform", &["kind", "arch", "distro"]);
    // `provision` is tmt's plan step (`how`, `image`, `hardware`, …) and means what tmt says; see
    // `Reader::polarizer`.
    let provision = reader.section("provision", &["playbook", "containerfile"]);
    let hooks = reader.section(
        "hooks",
        &["setup", "cleanup", "suite-setup", "suite-cleanup"],
    );
    // As in tmt, a test without `path` runs in the directory its metadata file is in.
    let path = match reader.string("path") {
        path if path.is_empty() => node
            .sources()
            .last()
            .and_then(|file| file.parent())
            .and_then(|directory| directory.strip_prefix(root).ok())
            .map(|relative| format!("/{}", relative.display()))
            .unwrap_or_else(|| "/".into()),
        path => path,
    };
    let order = match node.get("order") {
        None | Some(FmfValue::Null) => 50,
        Some(FmfValue::Integer(order)) => *order,
        Some(other) => {
            reader.wrong("order", "an integer", other);
            50
        }
    };
    let test = TestMetadata {
        summary: reader.string("summary"),
        description: reader.string("description"),
        test: reader.string("test"),
        path,
        framework: reader.string("framework"),
        duration_seconds,
        tags: reader.strings("tag"),
        tier: reader.string("tier"),
        components: reader.strings("component"),
        require: requirements(&reader, "require"),
        recommend: requirements(&reader, "recommend"),
        links: links_of(&reader),
        enabled: reader.boolean("enabled", true),
        environment,
        result: reader.string("result"),
        order,
        test_type,
        feature: reader.polarizer_string("feature"),
        after: reader.polarizer_strings("after"),
        resources: Resources {
            needs: reader.section_strings(&resources, "needs"),
            creates: reader.section_strings(&resources, "creates"),
            modifies: reader.section_strings(&resources, "modifies"),
        },
        services: reader.polarizer_strings("services"),
        platform: PlatformNeeds {
            kind: platform_kinds(&reader, &platform),
            arch: reader.section_strings(&platform, "arch"),
            distro: reader.section_strings(&platform, "distro"),
        },
        provision: Provision {
            playbook: reader.section_tree_path(&provision, "playbook"),
            containerfile: reader.section_tree_path(&provision, "containerfile"),
        },
        junit: reader.polarizer_string("junit"),
        bdd: reader.polarizer_string("bdd"),
        hooks: Hooks {
            setup: reader.section_strings(&hooks, "setup"),
            cleanup: reader.section_strings(&hooks, "cleanup"),
            suite_setup: reader.section_strings(&hooks, "suite-setup"),
            suite_cleanup: reader.section_strings(&hooks, "suite-cleanup"),
        },
        id,
        name,
    };
    reader.finish(test)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field set to something other than its default. No `..Default::default()`: a new field
    /// must be added here, and then the round trip shows whether `Compact` writes it.
    fn full_test() -> TestMetadata {
        let list = |item: &str| vec![item.to_string()];
        TestMetadata {
            id: "id".into(),
            name: "/name".into(),
            summary: "summary".into(),
            description: "description".into(),
            test: "./run".into(),
            path: "/path".into(),
            framework: "shell".into(),
            duration_seconds: 7,
            tags: list("tag"),
            tier: "1".into(),
            components: list("component"),
            require: list("require"),
            recommend: list("recommend"),
            links: vec![Link {
                relation: "verifies".into(),
                target: "REQ-1".into(),
                note: "note".into(),
            }],
            enabled: true,
            environment: BTreeMap::from([("A".to_string(), "1".to_string())]),
            result: "xfail".into(),
            order: -3,
            test_type: Some(TestType::Unit),
            feature: "feature".into(),
            after: list("/other"),
            resources: Resources {
                needs: list("needs"),
                creates: list("creates"),
                modifies: list("modifies"),
            },
            services: list("service"),
            platform: PlatformNeeds {
                kind: vec![PlatformKind::Vm, PlatformKind::Baremetal],
                arch: list("x86_64"),
                distro: list("rhel-9"),
            },
            provision: Provision {
                playbook: "play.yml".into(),
                containerfile: "Containerfile".into(),
            },
            junit: "junit.xml".into(),
            bdd: "bdd".into(),
            hooks: Hooks {
                setup: list("setup"),
                cleanup: list("cleanup"),
                suite_setup: list("suite-setup"),
                suite_cleanup: list("suite-cleanup"),
            },
        }
    }

    #[test]
    fn the_compact_form_reads_back_as_the_test_it_was_written_from() {
        let full = full_test();
        let json = serde_json::to_string(&Compact(&full)).unwrap();
        assert_eq!(serde_json::from_str::<TestMetadata>(&json).unwrap(), full);
        assert_eq!(
            json.len(),
            serde_json::to_string(&full).unwrap().len(),
            "nothing to leave out of a full test"
        );
        // A sparse test leaves out what is empty, and reads back the same.
        let sparse = TestMetadata {
            id: "/t".into(),
            name: "/t".into(),
            test: "./t".into(),
            enabled: true,
            order: 50,
            ..TestMetadata::default()
        };
        let json = serde_json::to_string(&Compact(&sparse)).unwrap();
        assert_eq!(
            json,
            r#"{"id":"/t","name":"/t","test":"./t","enabled":true,"order":50}"#
        );
        assert_eq!(serde_json::from_str::<TestMetadata>(&json).unwrap(), sparse);
        // The wire form still carries every field, in order.
        let wire = postcard::to_stdvec(&full).unwrap();
        assert_eq!(postcard::from_bytes::<TestMetadata>(&wire).unwrap(), full);
    }

    fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".fmf")).unwrap();
        std::fs::write(dir.path().join(".fmf/version"), "1\n").unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let tree = Tree::load(dir.path()).unwrap();
        (dir, tree)
    }

    const FEATURES: &str = "/features:\n  /subscription/identity:\n    paths: [src/identity/**]\n  /subscription/register:\n    paths: [src/register.py]\n    depends: [subscription/identity]\n  /attach:\n    paths: [src/attach/**]\n    depends: [subscription/register]\n";

    #[test]
    fn tests_and_features_are_read_with_inheritance() {
        let (_dir, tree) = load(&[
            ("main.fmf", FEATURES),
            ("tests/main.fmf", "framework: shell\nduration: 10m\ntag: [smoke]\ntype: integration\n"),
            (
                "tests/register.fmf",
                "/basic:\n  test: ./basic.sh\n  feature: subscription/register\n  tier: 1\n  resources: {needs: [candlepin], modifies: [identity-cert]}\n  platform: {kind: container, arch: x86_64}\n  link: [{verifies: REQ-123}, https://bugzilla/1]\n  after: [/tests/register/setup]\n/setup:\n  test: ./setup.sh\n  id: register-setup\n",
            ),
        ]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        assert_eq!(catalog.features.len(), 3);
        assert_eq!(catalog.tests.len(), 2);
        let basic = catalog
            .tests
            .iter()
            .find(|test| test.name == "/tests/register/basic")
            .unwrap();
        assert_eq!(basic.duration_seconds, 600);
        assert_eq!(basic.test_type, Some(TestType::Integration));
        assert_eq!(basic.tags, vec!["smoke"]);
        assert_eq!(basic.resources.modifies, vec!["identity-cert"]);
        assert_eq!(basic.platform.kind, vec![PlatformKind::Container]);
        assert_eq!(
            basic.links[0],
            Link {
                relation: "verifies".into(),
                target: "REQ-123".into(),
                note: String::new()
            }
        );
        assert_eq!(basic.links[1].relation, "relates");
        let setup = catalog
            .tests
            .iter()
            .find(|test| test.name == "/tests/register/setup")
            .unwrap();
        assert_eq!(setup.id, "register-setup");
        let dependents = catalog.feature_and_dependents("subscription/identity");
        assert_eq!(
            dependents.into_iter().collect::<Vec<_>>(),
            vec!["attach", "subscription/identity", "subscription/register"]
        );
    }

    #[test]
    fn wrong_types_and_unknown_polarizer_keys_name_node_and_key() {
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\nresources: {needz: [a]}\n")]);
        let err = Catalog::from_tree(&tree).unwrap_err().to_string();
        assert!(
            err.contains("/t") && err.contains("needz") && err.contains("needs, creates, modifies"),
            "{err}"
        );
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\ntag: {a: 1}\n")]);
        let err = Catalog::from_tree(&tree).unwrap_err().to_string();
        assert!(
            err.contains("/t: key \"tag\": expected a string or a list of strings, found"),
            "{err}"
        );
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\ntype: smoke\n")]);
        assert!(Catalog::from_tree(&tree)
            .unwrap_err()
            .to_string()
            .contains("\"smoke\" is not one of"));
        // A duration tmt cannot run is a warning (tmt's lint only warns too); the default is used.
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\nduration: 1s+10s\n")]);
        let reading = CatalogItem::read(tree.node("/t").unwrap(), tree.root());
        assert!(reading.errors.is_empty());
        assert!(reading.warnings[0]
            .to_string()
            .contains("\"1s+10s\" is not one tmt can run"));
    }

    /// Every problem of a node at once, not the first one only.
    #[test]
    fn a_node_gives_all_its_errors() {
        let (_dir, tree) = load(&[(
            "t.fmf",
            "test: ./x\ntype: smoke\nduration: soon\nresources: {needz: [a]}\nplatform: {kind: [vm, moon]}\ntag: {a: 1}\n",
        )]);
        let reading = CatalogItem::read(tree.node("/t").unwrap(), tree.root());
        let fields: Vec<String> = reading.errors.iter().map(|err| err.place().1).collect();
        assert_eq!(
            fields,
            ["type", "resources.needz", "tag", "platform.kind"],
            "{:?}",
            reading.errors
        );
    }

    /// A feature a test names but `/features` does not declare is a warning: the test is imported
    /// with it. Errors stay errors where the data can't be used.
    #[test]
    fn an_undeclared_feature_is_a_warning() {
        let (_dir, tree) = load(&[
            ("main.fmf", FEATURES),
            (
                "t.fmf",
                "/a:\n  test: ./a\n  feature: nowhere\n/b:\n  test: ./b\n  feature: attach\n",
            ),
        ]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        assert_eq!(catalog.tests[0].feature, "nowhere");
        assert_eq!(
            catalog.problems().warnings,
            vec![MetadataWarning::UndeclaredFeature {
                test: "/t/a".into(),
                feature: "nowhere".into()
            }]
        );
        assert_eq!(catalog.undeclared_features(), vec!["nowhere"]);
        // Two errors of the whole tree, both reported.
        let (_dir, tree) = load(&[(
            "t.fmf",
            "/a:\n  test: ./a\n  after: [/ghost]\n/b:\n  test: ./b\n  id: same\n/c:\n  test: ./c\n  id: same\n",
        )]);
        let catalog = Catalog::from_tree(&tree).unwrap_err();
        assert!(catalog.to_string().contains("same"), "{catalog}");
        let (_dir, tree) = load(&[(
            "t.fmf",
            "/a:\n  test: ./a\n  after: [/ghost]\n/b:\n  test: ./b\n  id: same\n/c:\n  test: ./c\n  id: same\n",
        )]);
        let catalog = Catalog::assemble(
            tree.nodes()
                .iter()
                .map(|node| CatalogItem::of_node(node, tree.root())),
        )
        .unwrap();
        assert_eq!(catalog.problems().errors.len(), 2);
    }

    /// `kind` takes a list like `arch` and `distro`; a single kind still reads.
    #[test]
    fn platform_kind_takes_a_list_or_one_kind() {
        let (_dir, tree) = load(&[(
            "t.fmf",
            "/many:\n  test: ./a\n  platform: {kind: [vm, baremetal, vm]}\n/one:\n  test: ./b\n  platform: {kind: container}\n/any:\n  test: ./c\n",
        )]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        let kinds: Vec<&[PlatformKind]> = catalog
            .tests
            .iter()
            .map(|test| test.platform.kind.as_slice())
            .collect();
        assert_eq!(
            kinds,
            [
                &[][..],
                &[PlatformKind::Vm, PlatformKind::Baremetal],
                &[PlatformKind::Container],
            ]
        );
        assert!(catalog.tests[1]
            .platform
            .accepts_kind(PlatformKind::Baremetal));
        assert!(!catalog.tests[1]
            .platform
            .accepts_kind(PlatformKind::Container));
        assert!(catalog.tests[0]
            .platform
            .accepts_kind(PlatformKind::Container));
        // Stored JSON from before lists (`"kind":"vm"`, `null`) still reads.
        let old: PlatformNeeds =
            serde_json::from_str(r#"{"kind":"vm","arch":[],"distro":[]}"#).unwrap();
        assert_eq!(old.kind, vec![PlatformKind::Vm]);
        let old: PlatformNeeds =
            serde_json::from_str(r#"{"kind":null,"arch":[],"distro":[]}"#).unwrap();
        assert!(old.kind.is_empty());
        // On the wire, zero or one kind is encoded exactly as the `Option` it replaced.
        #[derive(Serialize)]
        struct Before {
            kind: Option<PlatformKind>,
            arch: Vec<String>,
            distro: Vec<String>,
        }
        let before = Before {
            kind: Some(PlatformKind::Container),
            arch: vec![],
            distro: vec![],
        };
        assert_eq!(
            postcard::to_stdvec(&before).unwrap(),
            postcard::to_stdvec(&catalog.tests[2].platform).unwrap()
        );
    }

    /// Polarizer's keys in tmt's `extra-` namespace read as the bare ones, inherit the same way, and
    /// win where both are set; errors name the key as written.
    #[test]
    fn extra_keys_are_the_polarizer_keys_prefixed() {
        for (key, extra) in POLARIZER_KEYS.iter().zip(EXTRA_KEYS) {
            assert_eq!(extra_key(key), extra);
        }
    }

    #[test]
    fn extra_polarizer_keys_read_as_the_bare_ones() {
        let (_dir, tree) = load(&[
            ("main.fmf", "extra-polarizer-type: unit\ntype: functional\n/features:\n  /login: {}\n"),
            (
                "t.fmf",
                "/a:\n  test: ./a\n  extra-polarizer-feature: login\n  extra-polarizer-after: [/t/b]\n  extra-polarizer-resources: {needs: [db]}\n  extra-polarizer-services: [sshd]\n  extra-polarizer-platform: {kind: [vm, baremetal], arch: x86_64}\n  extra-polarizer-provision: {playbook: p.yml}\n  extra-polarizer-junit: r.xml\n  extra-polarizer-bdd: f.feature\n  extra-polarizer-hooks: {setup: ./s}\n/b:\n  test: ./b\n",
            ),
        ]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        let a = &catalog.tests[0];
        assert_eq!(a.test_type, Some(TestType::Unit));
        assert_eq!(a.feature, "login");
        assert_eq!(a.after, ["/t/b"]);
        assert_eq!(a.resources.needs, ["db"]);
        assert_eq!(a.services, ["sshd"]);
        assert_eq!(a.platform.kind, [PlatformKind::Vm, PlatformKind::Baremetal]);
        assert_eq!(a.platform.arch, ["x86_64"]);
        assert_eq!(a.provision.playbook, "p.yml");
        assert_eq!((a.junit.as_str(), a.bdd.as_str()), ("r.xml", "f.feature"));
        assert_eq!(a.hooks.setup, ["./s"]);
        assert_eq!(catalog.tests[1].test_type, Some(TestType::Unit));
        let (_dir, tree) = load(&[(
            "t.fmf",
            "test: ./x\nextra-polarizer-platform: {kind: moon}\n",
        )]);
        let err = Catalog::from_tree(&tree).unwrap_err();
        assert_eq!(err.place().1, "extra-polarizer-platform.kind");
    }

    /// A provisioning file is a path inside the tree: a hostile tree cannot point outside it, nor put
    /// shell syntax where a command line is built from it.
    #[test]
    fn provisioning_files_are_paths_inside_the_tree() {
        for bad in [
            "/etc/shadow",
            "../up.yml",
            "a/../../b",
            "p.yml; rm -rf /",
            "$(id).yml",
        ] {
            let (_dir, tree) = load(&[(
                "t.fmf",
                &*format!("test: ./x\nextra-polarizer-provision: {{playbook: '{bad}'}}\n"),
            )]);
            let err = Catalog::from_tree(&tree).unwrap_err();
            assert_eq!(err.place().1, "extra-polarizer-provision.playbook", "{bad}");
        }
        let (_dir, tree) = load(&[(
            "t.fmf",
            "test: ./x\nextra-polarizer-provision: {containerfile: images/Containerfile.rhel9}\n",
        )]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        assert_eq!(
            catalog.tests[0].provision.containerfile,
            "images/Containerfile.rhel9"
        );
    }

    #[test]
    fn cycles_are_named() {
        let (_dir, tree) = load(&[("main.fmf", "/features:\n  /a:\n    depends: [b]\n  /b:\n    depends: [c]\n  /c:\n    depends: [a]\n")]);
        let err = Catalog::from_tree(&tree).unwrap_err().to_string();
        assert_eq!(err, "cycle in feature dependencies: a -> b -> c -> a");
        let (_dir, tree) = load(&[(
            "t.fmf",
            "/one:\n  test: ./1\n  after: [/t/two]\n/two:\n  test: ./2\n  after: [/t/one]\n",
        )]);
        let err = Catalog::from_tree(&tree).unwrap_err().to_string();
        assert_eq!(err, "cycle in `after`: /t/one -> /t/two -> /t/one");
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\nafter: [/ghost]\n")]);
        assert!(Catalog::from_tree(&tree)
            .unwrap_err()
            .to_string()
            .contains("\"/ghost\" named in `after` does not exist"));
    }

    /// tmt's `require` may name libraries and files by mapping (fmf ids), not only packages.
    #[test]
    fn requirements_may_be_libraries() {
        let (_dir, tree) = load(&[(
            "t.fmf",
            "test: ./x\nrequire:\n  - make\n  - {url: https://github.com/beakerlib/openssl, name: /certgen}\n  - {type: file, pattern: /files}\nrecommend: {url: https://x, name: /y}\n",
        )]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        assert_eq!(
            catalog.tests[0].require,
            [
                "make",
                "{'url': 'https://github.com/beakerlib/openssl', 'name': '/certgen'}",
                "{'type': 'file', 'pattern': '/files'}"
            ]
        );
        assert_eq!(catalog.tests[0].recommend.len(), 1);
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\nrequire: [[nested]]\n")]);
        assert!(Catalog::from_tree(&tree).is_err());
    }

    /// tmt's own repository has test nodes that are also plans: their `provision` is tmt's plan step.
    #[test]
    fn tmt_provision_steps_are_tmts_not_polarizers() {
        let (_dir, tree) = load(&[(
            "plan.fmf",
            "/local:\n  test: ./run\n  provision: {how: local}\n  discover: {how: fmf}\n  execute: {how: tmt}\n/multihost:\n  test: ./run\n  provision: [{how: container, image: fedora}, {how: virtual}]\n/hardware:\n  test: ./run\n  provision:\n    how: virtual\n    hardware: {memory: '>= 4 GB'}\n/ours:\n  test: ./run\n  provision: {playbook: setup.yml}\n",
        )]);
        let catalog = Catalog::from_tree(&tree).unwrap();
        assert_eq!(catalog.tests.len(), 4);
        for test in &catalog.tests[..3] {
            assert_eq!(test.provision, Provision::default(), "{}", test.name);
        }
        assert_eq!(catalog.tests[3].provision.playbook, "setup.yml");
    }

    #[test]
    fn durations_follow_tmt() {
        assert_eq!(parse_duration_seconds("90"), Some(90));
        assert_eq!(parse_duration_seconds("5m"), Some(300));
        assert_eq!(parse_duration_seconds("1h 30m"), Some(5400));
        assert_eq!(parse_duration_seconds("2d"), Some(172800));
        assert_eq!(parse_duration_seconds("5 minutes"), None);
        assert_eq!(parse_duration_seconds(""), None);
        // As tmt's `duration_to_seconds` says (checked against tmt 1.78 by hand): its own tree has these.
        for (text, seconds) in [
            ("1s1h1m", Some(3661)),
            ("10 *2", Some(20)),
            ("5 m", Some(300)),
            ("1m*2.5", Some(150)),
            ("5m*2", Some(600)),
            ("5m * 2", Some(600)),
            ("2 1m 4", Some(66)),
            ("*2", Some(600)),
            ("1s+10s", None),
            ("5m +5m", None),
            ("1.5m", None),
            ("5x", None),
            ("*2m", None),
        ] {
            assert_eq!(parse_duration_seconds(text), seconds, "{text:?}");
        }
    }
}
