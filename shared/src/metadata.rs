//! Test metadata as Polarizer uses it: tmt's keys plus Polarizer's own, read from fmf nodes and checked,
//! and the feature graph (features with path globs and dependencies).
//!
//! Unknown top-level keys are kept out of the model but never rejected: a team's tmt trees carry keys
//! Polarizer does not use. Polarizer's own structured keys (`resources`, `platform`, `provision`) are
//! strict: an unknown sub-key is an error naming the node and key.

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
    pub kind: Option<PlatformKind>,
    pub arch: Vec<String>,
    pub distro: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        section: &'static str,
        key: String,
        expected: &'static str,
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
    #[error(
        "test {test:?} names feature {feature:?}, which is not declared under {FEATURES_NODE}"
    )]
    UnknownFeature { test: String, feature: String },
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
        match node.name().strip_prefix(FEATURES_NODE) {
            Some(rest) if rest.starts_with('/') => {
                if node.is_leaf() {
                    Ok(Some(CatalogItem::Feature(feature_from_node(
                        node,
                        &rest[1..],
                    )?)))
                } else {
                    Ok(None)
                }
            }
            _ if node.is_selected() && node.data().contains_key("test") => {
                Ok(Some(CatalogItem::Test(test_from_node(node, root)?)))
            }
            _ => Ok(None),
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
        let mut catalog = Catalog {
            tests: Vec::with_capacity(items.size_hint().0),
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

    pub fn validate(&self) -> Result<(), MetadataError> {
        // Membership only: hash sets (a catalog has 100,000 tests); graphs stay ordered so the cycle
        // named is always the same one.
        let feature_names: HashSet<&str> = self
            .features
            .iter()
            .map(|feature| feature.name.as_str())
            .collect();
        for feature in &self.features {
            for depends in &feature.depends {
                if !feature_names.contains(depends.as_str()) {
                    return Err(MetadataError::UnknownDependency {
                        feature: feature.name.clone(),
                        depends: depends.clone(),
                    });
                }
            }
        }
        let mut ids: HashMap<&str, &str> = HashMap::with_capacity(self.tests.len());
        for test in &self.tests {
            if let Some(first) = ids.insert(&test.id, &test.name) {
                return Err(MetadataError::DuplicateId {
                    id: test.id.clone(),
                    first: first.to_string(),
                    second: test.name.clone(),
                });
            }
            if !test.feature.is_empty() && !feature_names.contains(test.feature.as_str()) {
                return Err(MetadataError::UnknownFeature {
                    test: test.name.clone(),
                    feature: test.feature.clone(),
                });
            }
        }
        // `after` may name a test by id or by node name; resolve to names for the graph.
        let mut name_of: HashMap<&str, &str> = HashMap::with_capacity(2 * self.tests.len());
        name_of.extend(self.tests.iter().flat_map(|test| {
            [
                (test.id.as_str(), test.name.as_str()),
                (test.name.as_str(), test.name.as_str()),
            ]
        }));
        for test in &self.tests {
            for after in &test.after {
                if !name_of.contains_key(after.as_str()) {
                    return Err(MetadataError::UnknownAfter {
                        node: test.name.clone(),
                        test: after.clone(),
                    });
                }
            }
        }
        let feature_edges: BTreeMap<&str, Vec<&str>> = self
            .features
            .iter()
            .map(|feature| {
                (
                    feature.name.as_str(),
                    feature.depends.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        if let Some(cycle) = find_cycle(&feature_edges) {
            return Err(MetadataError::FeatureCycle { cycle });
        }
        // A test that follows none cannot be in a cycle: only tests with `after` are searched from.
        let after_edges: BTreeMap<&str, Vec<&str>> = self
            .tests
            .iter()
            .filter(|test| !test.after.is_empty())
            .map(|test| {
                (
                    test.name.as_str(),
                    test.after
                        .iter()
                        .filter_map(|after| name_of.get(after.as_str()).copied())
                        .collect(),
                )
            })
            .collect();
        if let Some(cycle) = find_cycle(&after_edges) {
            return Err(MetadataError::AfterCycle { cycle });
        }
        Ok(())
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

/// Reads keys of one node with errors that name it.
struct Reader<'a> {
    node: &'a Node,
}

impl<'a> Reader<'a> {
    fn wrong(&self, key: &str, expected: &'static str, found: &FmfValue) -> MetadataError {
        MetadataError::WrongType {
            node: self.node.name().to_string(),
            key: key.to_string(),
            expected,
            found: found.type_name().to_string(),
        }
    }

    fn string(&self, key: &str) -> Result<String, MetadataError> {
        match self.node.get(key) {
            None | Some(FmfValue::Null) => Ok(String::new()),
            Some(FmfValue::String(text)) => Ok(text.clone()),
            Some(FmfValue::Integer(number)) => Ok(number.to_string()),
            Some(FmfValue::Float(number)) => Ok(number.to_string()),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    /// A string or a list of strings (tmt accepts both for `tag`, `component`, `require`, …).
    fn strings(&self, key: &str) -> Result<Vec<String>, MetadataError> {
        strings_of(self.node.get(key))
            .map_err(|found| self.wrong(key, "a string or a list of strings", &found))
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, MetadataError> {
        match self.node.get(key) {
            None | Some(FmfValue::Null) => Ok(default),
            Some(FmfValue::Bool(value)) => Ok(*value),
            Some(other) => Err(self.wrong(key, "true or false", other)),
        }
    }

    /// A sub-map with only the given keys allowed.
    fn section(
        &self,
        key: &str,
        section: &'static str,
        allowed: &'static [&'static str],
        expected: &'static str,
    ) -> Result<Option<&'a crate::fmf::FmfMap>, MetadataError> {
        match self.node.get(key) {
            None | Some(FmfValue::Null) => Ok(None),
            Some(FmfValue::Map(map)) => {
                for sub_key in map.keys() {
                    if !allowed.contains(&sub_key.as_str()) {
                        return Err(MetadataError::UnknownKey {
                            node: self.node.name().to_string(),
                            section,
                            key: sub_key.clone(),
                            expected,
                        });
                    }
                }
                Ok(Some(map))
            }
            Some(other) => Err(self.wrong(key, "a mapping", other)),
        }
    }

    fn section_strings(
        &self,
        map: Option<&crate::fmf::FmfMap>,
        key: &str,
        sub_key: &str,
    ) -> Result<Vec<String>, MetadataError> {
        strings_of(map.and_then(|map| map.get(sub_key))).map_err(|found| {
            self.wrong(
                &format!("{key}.{sub_key}"),
                "a string or a list of strings",
                &found,
            )
        })
    }
}

fn strings_of(value: Option<&FmfValue>) -> Result<Vec<String>, FmfValue> {
    match value {
        None | Some(FmfValue::Null) => Ok(Vec::new()),
        Some(FmfValue::String(text)) => Ok(vec![text.clone()]),
        Some(FmfValue::List(items)) => items
            .iter()
            .map(|item| match item {
                FmfValue::String(text) => Ok(text.clone()),
                FmfValue::Integer(number) => Ok(number.to_string()),
                other => Err(other.clone()),
            })
            .collect(),
        Some(other) => Err(other.clone()),
    }
}

/// tmt durations: `90`, `30s`, `5m`, `2h`, `1d`, and sums like `1h 30m`; tmt's default is 5 minutes.
pub fn parse_duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = 0u64;
    for part in text.split_whitespace() {
        let (number, unit) = match part.find(|c: char| !c.is_ascii_digit() && c != '.') {
            Some(split) => part.split_at(split),
            None => (part, "s"),
        };
        let number: f64 = number.parse().ok()?;
        let multiplier = match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total = total.checked_add((number * multiplier).round() as u64)?;
    }
    Some(total)
}

pub const DEFAULT_DURATION_SECONDS: u64 = 300;

fn feature_from_node(node: &Node, default_name: &str) -> Result<Feature, MetadataError> {
    let reader = Reader { node };
    let name = match reader.string("name")? {
        name if name.is_empty() => default_name.to_string(),
        name => name,
    };
    Ok(Feature {
        name,
        description: reader.string("description")?,
        paths: reader.strings("paths")?,
        depends: reader.strings("depends")?,
    })
}

fn links_of(reader: &Reader<'_>) -> Result<Vec<Link>, MetadataError> {
    let mut links = Vec::new();
    let items: Vec<FmfValue> = match reader.node.get("link") {
        None | Some(FmfValue::Null) => return Ok(links),
        Some(FmfValue::List(items)) => items.clone(),
        Some(other) => vec![other.clone()],
    };
    for item in items {
        match item {
            // A bare link is `relates`, as in tmt.
            FmfValue::String(target) => links.push(Link {
                relation: "relates".into(),
                target,
                note: String::new(),
            }),
            FmfValue::Map(map) => {
                let note = map
                    .get("note")
                    .and_then(FmfValue::as_str)
                    .unwrap_or_default()
                    .to_string();
                let mut relations = map.iter().filter(|(key, _)| key.as_str() != "note");
                let (Some((relation, target)), None) = (relations.next(), relations.next()) else {
                    return Err(reader.wrong(
                        "link",
                        "one relation: target pair per link (and an optional note)",
                        &FmfValue::Map(map.clone()),
                    ));
                };
                let Some(target) = target.as_str() else {
                    return Err(reader.wrong("link", "a string target", target));
                };
                links.push(Link {
                    relation: relation.clone(),
                    target: target.to_string(),
                    note,
                });
            }
            other => return Err(reader.wrong("link", "a string or a mapping", &other)),
        }
    }
    Ok(links)
}

fn test_from_node(node: &Node, root: &std::path::Path) -> Result<TestMetadata, MetadataError> {
    let reader = Reader { node };
    let name = node.name().to_string();
    let id = match reader.string("id")? {
        id if id.is_empty() => name.clone(),
        id => id,
    };
    let duration_text = reader.string("duration")?;
    let duration_seconds = if duration_text.is_empty() {
        DEFAULT_DURATION_SECONDS
    } else {
        parse_duration_seconds(&duration_text).ok_or_else(|| MetadataError::BadValue {
            node: name.clone(),
            key: "duration".into(),
            message: format!("{duration_text:?} is not a duration (like 90, 30s, 5m, 2h, 1h 30m)"),
        })?
    };
    let test_type = match reader.string("type")? {
        text if text.is_empty() => None,
        text => Some(
            TestType::parse(&text).ok_or_else(|| MetadataError::BadValue {
                node: name.clone(),
                key: "type".into(),
                message: format!(
                    "{text:?} is not one of unit, integration, functional, performance, acceptance"
                ),
            })?,
        ),
    };
    let environment = match node.get("environment") {
        None | Some(FmfValue::Null) => BTreeMap::new(),
        Some(FmfValue::Map(map)) => map
            .iter()
            .map(|(key, value)| (key.clone(), value.python_str()))
            .collect(),
        Some(other) => return Err(reader.wrong("environment", "a mapping", other)),
    };
    let resources = reader.section(
        "resources",
        "resources",
        &["needs", "creates", "modifies"],
        "needs, creates, modifies",
    )?;
    let platform = reader.section(
        "platform",
        "platform",
        &["kind", "arch", "distro"],
        "kind, arch, distro",
    )?;
    let provision = reader.section(
        "provision",
        "provision",
        &["playbook", "containerfile"],
        "playbook, containerfile",
    )?;
    let platform_kind = match platform.and_then(|map| map.get("kind")) {
        None | Some(FmfValue::Null) => None,
        Some(FmfValue::String(text)) => {
            Some(
                text.parse::<PlatformKind>()
                    .map_err(|err| MetadataError::BadValue {
                        node: name.clone(),
                        key: "platform.kind".into(),
                        message: err.to_string(),
                    })?,
            )
        }
        Some(other) => {
            return Err(reader.wrong("platform.kind", "vm, container or baremetal", other))
        }
    };
    let provision_string = |sub_key: &str| -> Result<String, MetadataError> {
        match provision.and_then(|map| map.get(sub_key)) {
            None | Some(FmfValue::Null) => Ok(String::new()),
            Some(FmfValue::String(text)) => Ok(text.clone()),
            Some(other) => Err(reader.wrong(&format!("provision.{sub_key}"), "a string", other)),
        }
    };
    let hooks = reader.section(
        "hooks",
        "hooks",
        &["setup", "cleanup", "suite-setup", "suite-cleanup"],
        "setup, cleanup, suite-setup, suite-cleanup",
    )?;
    // As in tmt, a test without `path` runs in the directory its metadata file is in.
    let path = match reader.string("path")? {
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
        Some(other) => return Err(reader.wrong("order", "an integer", other)),
    };
    Ok(TestMetadata {
        summary: reader.string("summary")?,
        description: reader.string("description")?,
        test: reader.string("test")?,
        path,
        framework: reader.string("framework")?,
        duration_seconds,
        tags: reader.strings("tag")?,
        tier: reader.string("tier")?,
        components: reader.strings("component")?,
        require: reader.strings("require")?,
        recommend: reader.strings("recommend")?,
        links: links_of(&reader)?,
        enabled: reader.boolean("enabled", true)?,
        environment,
        result: reader.string("result")?,
        order,
        test_type,
        feature: reader.string("feature")?,
        after: reader.strings("after")?,
        resources: Resources {
            needs: reader.section_strings(resources, "resources", "needs")?,
            creates: reader.section_strings(resources, "resources", "creates")?,
            modifies: reader.section_strings(resources, "resources", "modifies")?,
        },
        services: reader.strings("services")?,
        platform: PlatformNeeds {
            kind: platform_kind,
            arch: reader.section_strings(platform, "platform", "arch")?,
            distro: reader.section_strings(platform, "platform", "distro")?,
        },
        provision: Provision {
            playbook: provision_string("playbook")?,
            containerfile: provision_string("containerfile")?,
        },
        junit: reader.string("junit")?,
        bdd: reader.string("bdd")?,
        hooks: Hooks {
            setup: reader.section_strings(hooks, "hooks", "setup")?,
            cleanup: reader.section_strings(hooks, "hooks", "cleanup")?,
            suite_setup: reader.section_strings(hooks, "hooks", "suite-setup")?,
            suite_cleanup: reader.section_strings(hooks, "hooks", "suite-cleanup")?,
        },
        id,
        name,
    })
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
                kind: Some(PlatformKind::Container),
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
        assert_eq!(basic.platform.kind, Some(PlatformKind::Container));
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
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\nduration: soon\n")]);
        assert!(Catalog::from_tree(&tree)
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
        let (_dir, tree) = load(&[("t.fmf", "test: ./x\nfeature: nowhere\n")]);
        assert!(Catalog::from_tree(&tree)
            .unwrap_err()
            .to_string()
            .contains("\"nowhere\""));
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

    #[test]
    fn durations_follow_tmt() {
        assert_eq!(parse_duration_seconds("90"), Some(90));
        assert_eq!(parse_duration_seconds("5m"), Some(300));
        assert_eq!(parse_duration_seconds("1h 30m"), Some(5400));
        assert_eq!(parse_duration_seconds("2d"), Some(172800));
        assert_eq!(parse_duration_seconds("5 minutes"), None);
        assert_eq!(parse_duration_seconds(""), None);
    }
}
