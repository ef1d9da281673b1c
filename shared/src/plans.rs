//! tmt plans: which tests a plan's `discover: how: fmf` selects, as tmt 1.78 selects them. A plan is a
//! node of the same fmf tree (one with `execute` or `discover`); each fmf discover phase selects the
//! tree's enabled, non-manual tests by `test` (names searched as regular expressions), `filter` (fmf's
//! filter expressions, evaluated the way tmt calls `fmf.utils.filter`: regular expressions, no node
//! name), `link` (`relation:target` needles), `exclude` and `include`; the plan's `context` adjusts
//! its tests under the trigger's. Pure: nodes in, names out.

use std::collections::{BTreeMap, BTreeSet};

use fancy_regex::Regex;

use crate::fmf::{FmfMap, FmfValue, Node, Tree};

/// Why a plan cannot be used: each names the plan and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no plan named {plan:?} in the tree (plans found: {})", listed(.found))]
    Unknown { plan: String, found: Vec<String> },
    #[error("plan {plan}: {key}: {message}")]
    Unsupported {
        plan: String,
        key: String,
        message: String,
    },
    #[error("plan {plan}: {key}: {message}")]
    Invalid {
        plan: String,
        key: String,
        message: String,
    },
    #[error("plan {plan}: {key}: invalid regular expression {pattern:?}: {message}")]
    BadPattern {
        plan: String,
        key: String,
        pattern: String,
        message: String,
    },
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// A link needle, `relation:target`, each a regular expression searched for.
#[derive(Debug, Clone)]
pub struct LinkNeedle {
    relation: Regex,
    target: Regex,
}

/// One `discover` phase with `how: fmf`, its patterns compiled.
#[derive(Debug, Clone, Default)]
pub struct DiscoverPhase {
    pub names: Vec<Regex>,
    pub filters: Vec<FilterExpression>,
    pub links: Vec<LinkNeedle>,
    pub excludes: Vec<Regex>,
    pub includes: Vec<Regex>,
}

/// A plan's fmf discovery: the union of its phases.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    /// `enabled: false` (after adjust): tmt does not run it, and neither does a trigger.
    pub enabled: bool,
    /// The plan's own `context`: tmt adjusts the tests it discovers by it, the trigger's context
    /// overriding it dimension by dimension (see [`Plan::test_context`]).
    pub context: Vec<(String, String)>,
    pub phases: Vec<DiscoverPhase>,
}

/// Plan nodes of a tree, as tmt finds them: selected nodes with `execute` (or `discover`).
pub fn plan_names(tree: &Tree) -> Vec<String> {
    tree.selected()
        .filter(|node| is_plan(node))
        .map(|node| node.name().to_string())
        .collect()
}

fn is_plan(node: &Node) -> bool {
    node.data().contains_key("execute") || node.data().contains_key("discover")
}

/// The discover keys of tmt's fmf plugin that Polarizer cannot honour: they fetch another repository,
/// read another tree, or decide by data Polarizer does not have.
const REFUSED_KEYS: &[(&str, &str)] = &[
    (
        "url",
        "tests from another repository are not supported: trigger that repository instead",
    ),
    (
        "ref",
        "tests at another ref are not supported: give the ref to the trigger instead",
    ),
    (
        "path",
        "a tree root other than the trigger's is not supported: trigger that directory instead",
    ),
    (
        "modified-only",
        "not supported: give the changed paths with --changed instead",
    ),
    (
        "modified-url",
        "not supported: give the changed paths with --changed instead",
    ),
    (
        "modified-ref",
        "not supported: give the changed paths with --changed instead",
    ),
    ("adjust-tests", "not supported"),
    ("dist-git-source", "not supported"),
    ("when", "conditional phases are not supported"),
];

impl Plan {
    /// Finds plan `name` in `tree` (already adjusted by the trigger's context) and reads its discover;
    /// a disabled plan is refused.
    pub fn find(tree: &Tree, name: &str) -> Result<Plan, PlanError> {
        let plan = Plan::read(tree, name)?;
        if !plan.enabled {
            return Err(PlanError::Invalid {
                plan: plan.name,
                key: "enabled".into(),
                message: "the plan is disabled".into(),
            });
        }
        Ok(plan)
    }

    /// [`Plan::find`], disabled or not.
    pub fn read(tree: &Tree, name: &str) -> Result<Plan, PlanError> {
        let Some(node) = tree
            .selected()
            .find(|node| node.name() == name && is_plan(node))
        else {
            return Err(PlanError::Unknown {
                plan: name.to_string(),
                found: plan_names(tree),
            });
        };
        Plan::from_node(node)
    }

    pub fn from_node(node: &Node) -> Result<Plan, PlanError> {
        let plan = node.name().to_string();
        let enabled = !matches!(node.get("enabled"), Some(FmfValue::Bool(false)));
        let mut context = Vec::new();
        match node.get("context") {
            None | Some(FmfValue::Null) => {}
            Some(FmfValue::Map(map)) => {
                for (dimension, value) in map.iter() {
                    let key = format!("context.{dimension}");
                    let value = match value {
                        FmfValue::String(text) => text.to_string(),
                        FmfValue::Integer(_) | FmfValue::Float(_) | FmfValue::Bool(_) => {
                            value.python_str()
                        }
                        other => {
                            return Err(PlanError::Unsupported {
                                plan,
                                key,
                                message: format!(
                                    "only a single value per dimension is supported, found {}",
                                    other.type_name()
                                ),
                            })
                        }
                    };
                    context.push((dimension.to_string(), value));
                }
            }
            Some(other) => {
                return Err(PlanError::Invalid {
                    plan,
                    key: "context".into(),
                    message: format!("expected a mapping, found {}", other.type_name()),
                })
            }
        }
        let phases: Vec<&FmfValue> = match node.get("discover") {
            // tmt's default discover is `how: shell` with no tests.
            None => {
                return Err(PlanError::Unsupported {
                    plan,
                    key: "discover".into(),
                    message: "the plan has no discover step (tmt's default is `how: shell`, which \
                              selects no tests from the tree): add `discover: {how: fmf}`"
                        .into(),
                })
            }
            Some(FmfValue::List(items)) => items.iter().collect(),
            Some(single) => vec![single],
        };
        let mut read = Vec::new();
        for phase in phases {
            let FmfValue::Map(map) = phase else {
                return Err(PlanError::Invalid {
                    plan,
                    key: "discover".into(),
                    message: format!(
                        "expected a mapping or a list of mappings, found {}",
                        phase.type_name()
                    ),
                });
            };
            read.push(DiscoverPhase::read(&plan, map)?);
        }
        Ok(Plan {
            name: plan,
            enabled,
            context,
            phases: read,
        })
    }

    /// The context tmt adjusts this plan's tests by: the plan's `context`, then the trigger's.
    pub fn test_context(&self, trigger: &[(String, String)]) -> Vec<(String, String)> {
        let mut merged: Vec<(String, String)> = self
            .context
            .iter()
            .filter(|(dimension, _)| !trigger.iter().any(|(given, _)| given == dimension))
            .cloned()
            .collect();
        merged.extend(trigger.iter().cloned());
        merged
    }

    /// The names of the tests (nodes of `tree`, adjusted by [`Plan::test_context`]) this plan
    /// selects, sorted.
    pub fn select<'a>(&self, tree: &'a Tree) -> BTreeSet<&'a str> {
        let mut selected = BTreeSet::new();
        // A test's filter data is a map of strings: built only when some phase filters.
        let filtered = self.phases.iter().any(|phase| !phase.filters.is_empty());
        let empty = FilterData::new();
        for node in tree.tests() {
            if !is_enabled_automated(node) {
                continue;
            }
            let built = filtered.then(|| filter_data(node, tree.root()));
            let data = built.as_ref().unwrap_or(&empty);
            if self.phases.iter().any(|phase| phase.selects(node, data)) {
                selected.insert(node.name());
            }
        }
        selected
    }
}

/// tmt discovers `enabled` tests with the condition `manual is False`.
fn is_enabled_automated(node: &Node) -> bool {
    let enabled = !matches!(node.get("enabled"), Some(FmfValue::Bool(false)));
    let manual = matches!(node.get("manual"), Some(FmfValue::Bool(true)));
    enabled && !manual
}

fn strings(plan: &str, key: &str, value: Option<&FmfValue>) -> Result<Vec<String>, PlanError> {
    let items: Vec<&FmfValue> = match value {
        None | Some(FmfValue::Null) => return Ok(Vec::new()),
        Some(FmfValue::List(items)) => items.iter().collect(),
        Some(other) => vec![other],
    };
    items
        .into_iter()
        .map(|item| match item {
            FmfValue::String(text) => Ok(text.to_string()),
            FmfValue::Integer(_) | FmfValue::Float(_) | FmfValue::Bool(_) => Ok(item.python_str()),
            other => Err(PlanError::Invalid {
                plan: plan.to_string(),
                key: key.to_string(),
                message: format!(
                    "expected a string or a list of strings, found {}",
                    other.type_name()
                ),
            }),
        })
        .collect()
}

fn compile(plan: &str, key: &str, pattern: &str) -> Result<Regex, PlanError> {
    Regex::new(pattern).map_err(|err| PlanError::BadPattern {
        plan: plan.to_string(),
        key: key.to_string(),
        pattern: pattern.to_string(),
        message: err.to_string(),
    })
}

impl DiscoverPhase {
    fn read(plan: &str, map: &FmfMap) -> Result<DiscoverPhase, PlanError> {
        let key = |name: &str| format!("discover.{name}");
        // A phase without `how` is a shell phase in tmt.
        let how = match map.get("how") {
            Some(FmfValue::String(how)) => how.as_ref(),
            _ => "shell",
        };
        if how != "fmf" {
            return Err(PlanError::Unsupported {
                plan: plan.to_string(),
                key: key("how"),
                message: format!(
                    "discover `how: {how}` is not supported: Polarizer selects tests from the fmf tree, use `how: fmf`"
                ),
            });
        }
        for (refused, message) in REFUSED_KEYS {
            if map
                .get(*refused)
                .is_some_and(|value| !matches!(value, FmfValue::Null))
            {
                return Err(PlanError::Unsupported {
                    plan: plan.to_string(),
                    key: key(refused),
                    message: message.to_string(),
                });
            }
        }
        // `test` items are names, or `{name, adjust}` mappings (adjust is refused).
        let mut names = Vec::new();
        let tests: Vec<&FmfValue> = match map.get("test") {
            None | Some(FmfValue::Null) => Vec::new(),
            Some(FmfValue::List(items)) => items.iter().collect(),
            Some(other) => vec![other],
        };
        for item in tests {
            let name = match item {
                FmfValue::String(name) => name.to_string(),
                FmfValue::Map(entry) => {
                    if entry.contains_key("adjust") {
                        return Err(PlanError::Unsupported {
                            plan: plan.to_string(),
                            key: key("test.adjust"),
                            message: "adjust rules per test are not supported".into(),
                        });
                    }
                    match entry.get("name").and_then(FmfValue::as_str) {
                        Some(name) => name.to_string(),
                        None => {
                            return Err(PlanError::Invalid {
                                plan: plan.to_string(),
                                key: key("test"),
                                message: "a mapping needs a string `name`".into(),
                            })
                        }
                    }
                }
                other => {
                    return Err(PlanError::Invalid {
                        plan: plan.to_string(),
                        key: key("test"),
                        message: format!("expected a test name, found {}", other.type_name()),
                    })
                }
            };
            names.push(compile(plan, &key("test"), &name)?);
        }
        // tmt calls fmf's filter case-sensitively.
        let filters = strings(plan, &key("filter"), map.get("filter"))?
            .iter()
            .map(|filter| {
                FilterExpression::parse(filter, true).map_err(|message| PlanError::Invalid {
                    plan: plan.to_string(),
                    key: key("filter"),
                    message: format!("{filter:?}: {message}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut links = Vec::new();
        for spec in strings(plan, &key("link"), map.get("link"))? {
            let (relation, target) = match spec.split_once(':') {
                Some((relation, target)) => (relation, target),
                None => (".*", spec.as_str()),
            };
            links.push(LinkNeedle {
                relation: compile(plan, &key("link"), relation)?,
                target: compile(plan, &key("link"), target)?,
            });
        }
        let patterns = |name: &str| -> Result<Vec<Regex>, PlanError> {
            strings(plan, &key(name), map.get(name))?
                .iter()
                .map(|pattern| compile(plan, &key(name), pattern))
                .collect()
        };
        Ok(DiscoverPhase {
            names,
            filters,
            links,
            excludes: patterns("exclude")?,
            includes: patterns("include")?,
        })
    }

    fn selects(&self, node: &Node, data: &FilterData) -> bool {
        let name = node.name();
        let search = |regex: &Regex| regex.is_match(name).unwrap_or(false);
        if !self.names.is_empty() && !self.names.iter().any(search) {
            return false;
        }
        // tmt passes no node name to the filter, so a name literal fails the filter.
        if !self
            .filters
            .iter()
            .all(|filter| filter.matches(data, None).unwrap_or(false))
        {
            return false;
        }
        if !self.links.is_empty() {
            let links = links_of(node);
            let linked = self.links.iter().any(|needle| {
                links.iter().any(|(relation, target)| {
                    needle.relation.is_match(relation).unwrap_or(false)
                        && target
                            .as_deref()
                            .is_some_and(|target| needle.target.is_match(target).unwrap_or(false))
                })
            });
            if !linked {
                return false;
            }
        }
        if self.excludes.iter().any(search) {
            return false;
        }
        if !self.includes.is_empty() && !self.includes.iter().any(search) {
            return false;
        }
        true
    }
}

/// A test's links as tmt normalises them: (relation, target); a target that is an fmf id is its `name`.
fn links_of(node: &Node) -> Vec<(String, Option<String>)> {
    let items: Vec<&FmfValue> = match node.get("link") {
        None | Some(FmfValue::Null) => return Vec::new(),
        Some(FmfValue::List(items)) => items.iter().collect(),
        Some(other) => vec![other],
    };
    let mut links = Vec::new();
    for item in items {
        match item {
            FmfValue::String(target) => {
                links.push(("relates".to_string(), Some(target.to_string())))
            }
            FmfValue::Map(map) => {
                for (relation, target) in map.iter().filter(|(key, _)| key.as_ref() != "note") {
                    let target = match target {
                        FmfValue::String(text) => Some(text.to_string()),
                        FmfValue::Map(id) => id
                            .get("name")
                            .and_then(FmfValue::as_str)
                            .map(str::to_string),
                        _ => None,
                    };
                    links.push((relation.to_string(), target));
                }
            }
            _ => {}
        }
    }
    links
}

/// What a filter sees of a test: each key's values as strings (Python's `str()` of each item).
pub type FilterData = BTreeMap<String, Vec<String>>;

/// tmt's exported test keys with their defaults: a filter on a key the test leaves out sees these.
const TMT_TEST_DEFAULTS: &[(&str, &[&str])] = &[
    ("summary", &["None"]),
    ("description", &["None"]),
    ("author", &[]),
    ("contact", &[]),
    ("enabled", &["True", "true"]),
    ("order", &["50"]),
    ("link", &[]),
    ("id", &["None"]),
    ("tag", &[]),
    ("tier", &["None"]),
    ("component", &[]),
    ("framework", &["shell"]),
    ("manual", &["False", "false"]),
    ("tty", &["False", "false"]),
    ("require", &[]),
    ("recommend", &[]),
    ("environment", &["{}"]),
    ("duration", &["5m"]),
    ("result", &["respect"]),
    ("where", &["None"]),
    ("check", &[]),
    ("restart-on-exit-code", &[]),
    ("restart-max-count", &["1"]),
    ("restart-with-reboot", &["False", "false"]),
];

/// The data tmt filters a test by: its node data over tmt's defaults, its `name`, and booleans also
/// in lower case. `path` defaults, as in tmt, to the directory of the node's last source file, from
/// the tree's `root`.
pub fn filter_data(node: &Node, root: &std::path::Path) -> FilterData {
    let mut data: FilterData = TMT_TEST_DEFAULTS
        .iter()
        .map(|(key, values)| {
            (
                key.to_string(),
                values.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    let directory = node
        .sources()
        .last()
        .and_then(|source| source.parent())
        .and_then(|directory| directory.strip_prefix(root).ok())
        .map(|relative| relative.display().to_string())
        .unwrap_or_default();
    data.insert("path".into(), vec![format!("/{directory}")]);
    for (key, value) in node.data() {
        let values = match value {
            FmfValue::List(items) => items.iter().map(FmfValue::python_str).collect(),
            FmfValue::Bool(flag) => vec![value.python_str(), flag.to_string()],
            other => vec![other.python_str()],
        };
        data.insert(key.to_string(), values);
    }
    data.insert("name".into(), vec![node.name().to_string()]);
    data
}

/// A parsed fmf filter: clauses joined by `|`, each literals joined by `&`, every pattern compiled once.
#[derive(Debug, Clone)]
pub struct FilterExpression {
    clauses: Vec<Clause>,
    case_sensitive: bool,
}

/// One `&`-joined clause: its name searches in the order written, then each dimension with its values
/// (every value must match; a value is comma-separated atoms, any of which may match).
#[derive(Debug, Clone)]
struct Clause {
    names: Vec<Regex>,
    dimensions: Vec<(String, Vec<Vec<Atom>>)>,
}

/// `pattern` or `-pattern`, matched against a whole datum.
#[derive(Debug, Clone)]
struct Atom {
    negated: bool,
    regex: Regex,
}

/// Why a filter failed to decide (fmf's `FilterError`): tmt treats it as "does not match".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterFailure {
    UnknownDimension(String),
    NameNotGiven,
}

fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    // fmf splits on `\s*(?<!\\)SEP\s*` and then unescapes `\SEP` in each part.
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut previous: Option<char> = None;
    for character in text.chars() {
        if character == separator && previous != Some('\\') {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(character);
        }
        previous = Some(character);
    }
    parts.push(current);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(index, part)| {
            let part = if index + 1 < count {
                part.trim_end().to_string()
            } else {
                part
            };
            let part = if index > 0 {
                part.trim_start().to_string()
            } else {
                part
            };
            part.replace(&format!("\\{separator}"), &separator.to_string())
        })
        .collect()
}

impl FilterExpression {
    /// Parses and compiles as fmf does (`sensitive=False` lowercases the filter and the data); an empty
    /// filter matches everything. A pattern that is not a regular expression is an error.
    pub fn parse(filter: &str, case_sensitive: bool) -> Result<FilterExpression, String> {
        let mut expression = FilterExpression {
            clauses: Vec::new(),
            case_sensitive,
        };
        if filter.is_empty() {
            return Ok(expression);
        }
        let filter = if case_sensitive {
            filter.to_string()
        } else {
            filter.to_lowercase()
        };
        let compile = |pattern: &str| {
            Regex::new(pattern)
                .map_err(|err| format!("invalid regular expression {pattern:?}: {err}"))
        };
        for clause_text in split_unescaped(&filter, '|') {
            let mut clause = Clause {
                names: Vec::new(),
                dimensions: Vec::new(),
            };
            for literal in split_unescaped(&clause_text, '&') {
                // fmf's `^([^:]*)\s*:\s*(.*)$`: the dimension keeps any space before the colon.
                let Some((dimension, value)) =
                    literal.split_once(':').filter(|_| !literal.contains('\n'))
                else {
                    clause.names.push(compile(&literal)?);
                    continue;
                };
                let mut atoms = Vec::new();
                for atom in split_commas(value.trim_start()) {
                    let (negated, pattern) = match atom.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, atom.as_str()),
                    };
                    // Python's `re.match("^{pattern}$", text)`: anchored at the start whatever the
                    // alternation inside.
                    let regex = Regex::new(&format!(r"\A(?:^{pattern}$)"))
                        .map_err(|err| format!("invalid regular expression {pattern:?}: {err}"))?;
                    atoms.push(Atom { negated, regex });
                }
                match clause
                    .dimensions
                    .iter_mut()
                    .find(|(known, _)| known == dimension)
                {
                    Some((_, values)) => values.push(atoms),
                    None => clause.dimensions.push((dimension.to_string(), vec![atoms])),
                }
            }
            expression.clauses.push(clause);
        }
        Ok(expression)
    }

    /// fmf's `filter(…, regexp=True)`: any clause true, every clause decided (an unknown dimension
    /// or a name search without a name anywhere fails the whole filter, as fmf evaluates all clauses).
    pub fn matches(&self, data: &FilterData, name: Option<&str>) -> Result<bool, FilterFailure> {
        if self.clauses.is_empty() {
            return Ok(true);
        }
        let lowered;
        let data = if self.case_sensitive {
            data
        } else {
            lowered = data
                .iter()
                .map(|(key, values)| {
                    (
                        key.to_lowercase(),
                        values.iter().map(|v| v.to_lowercase()).collect(),
                    )
                })
                .collect::<FilterData>();
            &lowered
        };
        let mut any = false;
        for clause in &self.clauses {
            if clause.matches(data, name)? {
                any = true;
            }
        }
        Ok(any)
    }
}

impl Clause {
    fn matches(&self, data: &FilterData, name: Option<&str>) -> Result<bool, FilterFailure> {
        if !self.names.is_empty() {
            let Some(name) = name else {
                return Err(FilterFailure::NameNotGiven);
            };
            // A name that does not match ends the clause before its dimensions are looked up.
            if !self
                .names
                .iter()
                .all(|regex| regex.is_match(name).unwrap_or(false))
            {
                return Ok(false);
            }
        }
        let mut all = true;
        for (dimension, values) in &self.dimensions {
            let Some(data_values) = data.get(dimension) else {
                return Err(FilterFailure::UnknownDimension(dimension.clone()));
            };
            if !values.iter().all(|atoms| value_matches(atoms, data_values)) {
                all = false;
            }
        }
        Ok(all)
    }
}

/// fmf's `check_value`: any atom true; `-atom` is true when no datum matches it.
fn value_matches(atoms: &[Atom], data_values: &[String]) -> bool {
    atoms.iter().any(|atom| {
        let found = data_values
            .iter()
            .any(|datum| atom.regex.is_match(datum).unwrap_or(false));
        found != atom.negated
    })
}

fn split_commas(value: &str) -> Vec<String> {
    let parts: Vec<&str> = value.split(',').collect();
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(index, part)| {
            let part = if index + 1 < count {
                part.trim_end()
            } else {
                part
            };
            let part = if index > 0 { part.trim_start() } else { part };
            part.to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &[&str])]) -> FilterData {
        pairs
            .iter()
            .map(|(key, values)| {
                (
                    key.to_string(),
                    values.iter().map(|v| v.to_string()).collect(),
                )
            })
            .collect()
    }

    /// The filter's answer; Err for a filter that does not parse or does not decide.
    fn check(filter: &str, data: &FilterData) -> Result<bool, String> {
        FilterExpression::parse(filter, true)?
            .matches(data, None)
            .map_err(|failure| format!("{failure:?}"))
    }

    #[test]
    fn filters_decide_like_fmf() {
        let tier1 = data(&[("tag", &["Tier1", "fast"]), ("component", &["sub"])]);
        assert_eq!(check("tag: Tier1", &tier1), Ok(true));
        assert_eq!(check("tag: Tier2 | tag: Tier1", &tier1), Ok(true));
        assert_eq!(check("tag: Tier1 & tag: -fast", &tier1), Ok(false));
        assert_eq!(check("tag: Tier1 & tag: -slow", &tier1), Ok(true));
        assert_eq!(check("tag: Tier2, Tier1", &tier1), Ok(true));
        assert_eq!(check("tag: Tier.*", &tier1), Ok(true));
        assert_eq!(check("tag: Tier", &tier1), Ok(false), "values match whole");
        assert_eq!(check("tag: tier1", &tier1), Ok(false), "case sensitive");
        assert_eq!(
            FilterExpression::parse("tag: tier1", false)
                .unwrap()
                .matches(&tier1, None),
            Ok(true)
        );
        assert_eq!(check("tag: -Tier1, fast", &tier1), Ok(true));
        assert!(check("tier: 1", &tier1).is_err(), "unknown dimension");
        assert!(
            check("tag: Tier1 | tier: 1", &tier1).is_err(),
            "every clause is decided"
        );
        assert!(check("/tests/a", &tier1).is_err(), "no name given");
        assert_eq!(
            FilterExpression::parse("/tests & tag: fast", true)
                .unwrap()
                .matches(&tier1, Some("/tests/a")),
            Ok(true)
        );
        assert_eq!(check("", &tier1), Ok(true));
        let escaped = data(&[("text", &["Q&A", "a|b"])]);
        assert_eq!(check(r"text: Q\&A", &escaped), Ok(true));
        assert_eq!(
            check(r"text: a\|b", &escaped),
            Ok(true),
            "`^a|b$` under re.match: starts with a"
        );
        assert_eq!(check(r"text: a\\\|b", &escaped), Ok(false));
        assert!(check("tag: fast|x", &tier1).is_err(), "`x` searches a name");
        // `^a|x$` under re.match: starts with a, or is x.
        let alternation = data(&[("v", &["xa"])]);
        assert_eq!(check(r"v: a\|x", &alternation), Ok(false));
    }

    fn tree(plans: &str) -> (tempfile::TempDir, Tree) {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        std::fs::create_dir_all(root.join(".fmf")).unwrap();
        std::fs::write(root.join(".fmf/version"), "1\n").unwrap();
        std::fs::write(
            root.join("tests.fmf"),
            "test: ./run.sh\n/a:\n  tag: fast\n/b:\n  tag: slow\n/c:\n  tag: fast\n  enabled: false\n",
        )
        .unwrap();
        std::fs::write(root.join("plans.fmf"), plans).unwrap();
        let tree = Tree::load(root).unwrap();
        (directory, tree)
    }

    #[test]
    fn plans_select_refuse_and_name_what_is_wrong() {
        let (_directory, tree) = tree(
            "execute: {how: tmt}\n/fast:\n  discover: {how: fmf, filter: 'tag: fast'}\n\
             /shell:\n  discover: {how: shell}\n/remote:\n  discover: {how: fmf, url: 'https://x'}\n\
             /bad:\n  discover: {how: fmf, test: '('}\n",
        );
        let fast = Plan::find(&tree, "/plans/fast").unwrap();
        assert_eq!(
            fast.select(&tree).into_iter().collect::<Vec<_>>(),
            ["/tests/a"]
        );
        let shell = Plan::find(&tree, "/plans/shell").unwrap_err().to_string();
        assert!(
            shell.contains("/plans/shell") && shell.contains("discover.how"),
            "{shell}"
        );
        let remote = Plan::find(&tree, "/plans/remote").unwrap_err().to_string();
        assert!(remote.contains("discover.url"), "{remote}");
        let bad = Plan::find(&tree, "/plans/bad").unwrap_err().to_string();
        assert!(
            bad.contains("discover.test") && bad.contains("\"(\""),
            "{bad}"
        );
        let unknown = Plan::find(&tree, "/plans/nope").unwrap_err().to_string();
        assert!(
            unknown.contains("/plans/nope") && unknown.contains("/plans/fast, /plans/remote"),
            "{unknown}"
        );
        assert!(
            Plan::find(&tree, "/tests/a").is_err(),
            "a test is not a plan"
        );
    }

    #[test]
    fn bad_patterns_fail_to_decide_without_panicking() {
        let tags = data(&[("tag", &["a"])]);
        assert!(check("tag: (", &tags)
            .unwrap_err()
            .contains("invalid regular expression \"(\""));
        assert!(check("(", &tags).is_err());
        assert!(check(":::", &tags).is_err());
        let (_directory, tree) = tree(
            "execute: {how: tmt}\n/bad:\n  discover: {how: fmf, filter: 'tag: a & tag: [x'}\n",
        );
        let refused = Plan::find(&tree, "/plans/bad").unwrap_err().to_string();
        assert!(
            refused.starts_with("plan /plans/bad: discover.filter: \"tag: a & tag: [x\": invalid"),
            "{refused}"
        );
    }
}
