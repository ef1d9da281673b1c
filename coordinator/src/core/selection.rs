//! Test selection, a pure function: what changed (paths, features) → the features it touches → every
//! feature depending on them → their tests, filtered by type, plus the tests they must follow. Each
//! selected test says why. When changed paths match no feature, everything is selected (fail open: a
//! stale feature map must not skip tests).

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobSet, GlobSetBuilder};
use polarizer_shared::metadata::{Catalog, TestType};

/// What a trigger asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectionRequest {
    pub changed_paths: Vec<String>,
    pub features: Vec<String>,
    /// Empty: every type.
    pub test_types: Vec<TestType>,
    pub all: bool,
    /// A tmt plan's name and the names of the tests it selects: nothing outside it is selected.
    pub plan: Option<(String, BTreeSet<String>)>,
}

/// Why a test was selected.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A changed path matched its feature's globs.
    ChangedPath { path: String, feature: String },
    /// Its feature depends (through `chain`, nearest first) on a feature a changed path touched.
    Dependent { feature: String, chain: Vec<String> },
    /// Its feature was named in the trigger.
    ExplicitFeature { feature: String },
    /// A selected test must run after it.
    After { test: String },
    /// `--all`.
    All,
    /// The plan selects it (and no change narrowed the plan).
    Plan { plan: String },
    /// Changed paths matched no feature, so everything runs.
    NoFeatureMatched,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::ChangedPath { path, feature } => {
                write!(formatter, "{path} changed (feature {feature})")
            }
            Reason::Dependent { feature, chain } => write!(
                formatter,
                "feature {feature} depends on {}",
                chain.join(" → ")
            ),
            Reason::ExplicitFeature { feature } => write!(formatter, "feature {feature} requested"),
            Reason::After { test } => write!(formatter, "{test} must run after it"),
            Reason::All => formatter.write_str("all tests requested"),
            Reason::Plan { plan } => write!(formatter, "plan {plan} selects it"),
            Reason::NoFeatureMatched => {
                formatter.write_str("no feature's paths match the change: everything selected")
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Test id → why; every selected test has at least one reason.
    pub tests: BTreeMap<String, Vec<Reason>>,
    /// Features touched directly (by path or by name).
    pub touched_features: BTreeSet<String>,
    /// Features selected because they depend on a touched one.
    pub dependent_features: BTreeSet<String>,
    pub fail_open: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("feature {feature:?}: path glob {glob:?} is invalid: {message}")]
    BadGlob {
        feature: String,
        glob: String,
        message: String,
    },
    #[error("no feature named {0:?}")]
    UnknownFeature(String),
}

pub fn select(catalog: &Catalog, request: &SelectionRequest) -> Result<Selection, SelectionError> {
    let mut selection = Selection::default();
    let wanted = |test: &polarizer_shared::metadata::TestMetadata| {
        let wanted_type = request.test_types.is_empty()
            || test
                .test_type
                .is_some_and(|test_type| request.test_types.contains(&test_type));
        let in_plan = request
            .plan
            .as_ref()
            .is_none_or(|(_, names)| names.contains(&test.name));
        test.enabled && wanted_type && in_plan
    };
    let select_everything = |selection: &mut Selection, reason: Reason| {
        for test in catalog.tests.iter().filter(|test| wanted(test)) {
            selection
                .tests
                .entry(test.id.clone())
                .or_default()
                .push(reason.clone());
        }
    };
    if request.all {
        let reason = match &request.plan {
            Some((plan, _)) => Reason::Plan { plan: plan.clone() },
            None => Reason::All,
        };
        select_everything(&mut selection, reason);
        return Ok(selection);
    }

    // Feature → the reason it was touched.
    let mut touched: BTreeMap<String, Reason> = BTreeMap::new();
    for feature in &request.features {
        // A feature tests name without declaring it (a warning at import) can still be asked for.
        if !catalog.features.iter().any(|known| &known.name == feature)
            && !catalog.tests.iter().any(|test| &test.feature == feature)
        {
            return Err(SelectionError::UnknownFeature(feature.clone()));
        }
        touched.insert(
            feature.clone(),
            Reason::ExplicitFeature {
                feature: feature.clone(),
            },
        );
    }
    if !request.changed_paths.is_empty() {
        // One set for every feature's globs: compiled once, each path matched once.
        let (globs, feature_of_glob) = glob_set(catalog)?;
        for path in &request.changed_paths {
            for glob_index in globs.matches(path.as_str()) {
                let feature = &catalog.features[feature_of_glob[glob_index]].name;
                touched
                    .entry(feature.clone())
                    .or_insert(Reason::ChangedPath {
                        path: path.clone(),
                        feature: feature.clone(),
                    });
            }
        }
    }
    if touched.is_empty() && !request.changed_paths.is_empty() {
        selection.fail_open = true;
        select_everything(&mut selection, Reason::NoFeatureMatched);
        return Ok(selection);
    }

    // Breadth-first over "depends on", so every dependent feature gets its shortest chain.
    let mut feature_reasons: BTreeMap<String, Reason> = touched.clone();
    let mut frontier: Vec<(String, Vec<String>)> = touched
        .keys()
        .map(|name| (name.clone(), vec![name.clone()]))
        .collect();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for (name, chain) in frontier {
            for dependent in catalog
                .features
                .iter()
                .filter(|feature| feature.depends.contains(&name))
            {
                if feature_reasons.contains_key(&dependent.name) {
                    continue;
                }
                // `chain` runs from what the dependent depends on directly down to the touched feature.
                let reason = Reason::Dependent {
                    feature: dependent.name.clone(),
                    chain: chain.clone(),
                };
                feature_reasons.insert(dependent.name.clone(), reason);
                let longer: Vec<String> = std::iter::once(dependent.name.clone())
                    .chain(chain.iter().cloned())
                    .collect();
                next.push((dependent.name.clone(), longer));
            }
        }
        frontier = next;
    }
    selection.touched_features = touched.keys().cloned().collect();
    selection.dependent_features = feature_reasons
        .keys()
        .filter(|name| !touched.contains_key(*name))
        .cloned()
        .collect();

    for test in catalog.tests.iter().filter(|test| wanted(test)) {
        if let Some(reason) = feature_reasons.get(&test.feature) {
            selection
                .tests
                .entry(test.id.clone())
                .or_default()
                .push(reason.clone());
        }
    }
    pull_in_after(catalog, &mut selection);
    Ok(selection)
}

/// Tests a selected test must follow are selected too (transitively), whatever their type.
fn pull_in_after(catalog: &Catalog, selection: &mut Selection) {
    let by_id: BTreeMap<&str, &polarizer_shared::metadata::TestMetadata> = catalog
        .tests
        .iter()
        .map(|test| (test.id.as_str(), test))
        .collect();
    // `after` may name a test by id or by node name.
    let by_reference: BTreeMap<&str, &str> = catalog
        .tests
        .iter()
        .flat_map(|test| {
            [
                (test.id.as_str(), test.id.as_str()),
                (test.name.as_str(), test.id.as_str()),
            ]
        })
        .collect();
    let mut pending: Vec<String> = selection.tests.keys().cloned().collect();
    while let Some(id) = pending.pop() {
        let Some(test) = by_id.get(id.as_str()) else {
            continue;
        };
        for after in &test.after {
            let Some(&after_id) = by_reference.get(after.as_str()) else {
                continue;
            };
            let newly = !selection.tests.contains_key(after_id);
            selection
                .tests
                .entry(after_id.to_string())
                .or_default()
                .push(Reason::After {
                    test: test.name.clone(),
                });
            if newly {
                pending.push(after_id.to_string());
            }
        }
    }
}

/// Every feature's path globs in one set, with the feature index of each glob.
fn glob_set(catalog: &Catalog) -> Result<(GlobSet, Vec<usize>), SelectionError> {
    let mut builder = GlobSetBuilder::new();
    let mut feature_of_glob = Vec::new();
    for (feature_index, feature) in catalog.features.iter().enumerate() {
        for pattern in &feature.paths {
            let glob = Glob::new(pattern).map_err(|err| SelectionError::BadGlob {
                feature: feature.name.clone(),
                glob: pattern.clone(),
                message: err.to_string(),
            })?;
            builder.add(glob);
            feature_of_glob.push(feature_index);
        }
    }
    let set = builder.build().map_err(|err| SelectionError::BadGlob {
        feature: String::new(),
        glob: String::new(),
        message: err.to_string(),
    })?;
    Ok((set, feature_of_glob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::metadata::{Feature, TestMetadata};

    fn test(
        name: &str,
        feature: &str,
        test_type: Option<TestType>,
        after: &[&str],
    ) -> TestMetadata {
        let json = serde_json::json!({
            "id": name, "name": name, "summary": "", "description": "", "test": "true", "path": "", "framework": "shell",
            "duration_seconds": 60, "tags": [], "tier": "", "components": [], "require": [], "recommend": [],
            "links": [], "enabled": true, "environment": {}, "result": "", "order": 50, "test_type": test_type,
            "feature": feature, "after": after, "resources": {"needs": [], "creates": [], "modifies": []},
            "services": [], "platform": {"kind": null, "arch": [], "distro": []},
            "provision": {"playbook": "", "containerfile": ""}, "junit": "", "bdd": ""
        });
        serde_json::from_value(json).unwrap()
    }

    fn feature(name: &str, paths: &[&str], depends: &[&str]) -> Feature {
        Feature {
            name: name.into(),
            description: String::new(),
            paths: paths.iter().map(|path| path.to_string()).collect(),
            depends: depends.iter().map(|name| name.to_string()).collect(),
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            features: vec![
                feature("identity", &["src/identity/**"], &[]),
                feature("register", &["src/register.py"], &["identity"]),
                feature("attach", &["src/attach/**"], &["register"]),
                feature("docs", &["docs/**"], &[]),
            ],
            tests: vec![
                test("/identity", "identity", Some(TestType::Unit), &[]),
                test(
                    "/register",
                    "register",
                    Some(TestType::Integration),
                    &["/setup"],
                ),
                test("/setup", "", Some(TestType::Functional), &[]),
                test("/attach", "attach", Some(TestType::Integration), &[]),
                test("/docs", "docs", Some(TestType::Unit), &[]),
            ],
        }
    }

    fn request(paths: &[&str], types: &[TestType]) -> SelectionRequest {
        SelectionRequest {
            changed_paths: paths.iter().map(|path| path.to_string()).collect(),
            test_types: types.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_change_selects_its_features_dependents_and_their_prerequisites() {
        let selection = select(&catalog(), &request(&["src/register.py"], &[])).unwrap();
        assert_eq!(
            selection.tests.keys().collect::<Vec<_>>(),
            ["/attach", "/register", "/setup"]
        );
        assert_eq!(
            selection.tests["/register"],
            [Reason::ChangedPath {
                path: "src/register.py".into(),
                feature: "register".into()
            }]
        );
        assert_eq!(
            selection.tests["/attach"],
            [Reason::Dependent {
                feature: "attach".into(),
                chain: vec!["register".into()]
            }]
        );
        assert_eq!(
            selection.tests["/setup"],
            [Reason::After {
                test: "/register".into()
            }]
        );
        let deep = select(&catalog(), &request(&["src/identity/cert.py"], &[])).unwrap();
        assert_eq!(
            deep.tests["/attach"],
            [Reason::Dependent {
                feature: "attach".into(),
                chain: vec!["register".into(), "identity".into()]
            }]
        );
        assert_eq!(
            deep.tests["/attach"][0].to_string(),
            "feature attach depends on register → identity"
        );
    }

    #[test]
    fn types_filter_but_prerequisites_still_come() {
        let selection = select(
            &catalog(),
            &request(&["src/identity/x"], &[TestType::Integration]),
        )
        .unwrap();
        assert_eq!(
            selection.tests.keys().collect::<Vec<_>>(),
            ["/attach", "/register", "/setup"]
        );
    }

    #[test]
    fn unmatched_changes_fail_open_and_explicit_features_are_checked() {
        let selection = select(&catalog(), &request(&["README.md"], &[])).unwrap();
        assert!(selection.fail_open);
        assert_eq!(selection.tests.len(), 5);
        assert!(selection
            .tests
            .values()
            .all(|reasons| reasons == &[Reason::NoFeatureMatched]));
        let named = SelectionRequest {
            features: vec!["docs".into()],
            ..Default::default()
        };
        assert_eq!(
            select(&catalog(), &named)
                .unwrap()
                .tests
                .keys()
                .collect::<Vec<_>>(),
            ["/docs"]
        );
        let unknown = SelectionRequest {
            features: vec!["nope".into()],
            ..Default::default()
        };
        assert_eq!(
            select(&catalog(), &unknown).unwrap_err(),
            SelectionError::UnknownFeature("nope".into())
        );
        // An undeclared feature some test names is selectable by name (it was a warning at import).
        let mut undeclared = catalog();
        undeclared.tests[0].feature = "nope".into();
        let named_test = undeclared.tests[0].id.clone();
        assert_eq!(
            select(&undeclared, &unknown)
                .unwrap()
                .tests
                .keys()
                .collect::<Vec<_>>(),
            [&named_test]
        );
        let mut bad = catalog();
        bad.features[0].paths = vec!["src/[".into()];
        assert!(matches!(
            select(&bad, &request(&["x"], &[])),
            Err(SelectionError::BadGlob { .. })
        ));
    }

    #[test]
    fn a_plan_bounds_the_selection_and_a_change_narrows_it() {
        let plan = Some((
            "/plans/smoke".to_string(),
            ["/identity", "/attach", "/docs"]
                .iter()
                .map(|name| name.to_string())
                .collect(),
        ));
        let whole_plan = SelectionRequest {
            all: true,
            plan: plan.clone(),
            ..Default::default()
        };
        let selection = select(&catalog(), &whole_plan).unwrap();
        assert_eq!(
            selection.tests.keys().collect::<Vec<_>>(),
            ["/attach", "/docs", "/identity"]
        );
        assert_eq!(
            selection.tests["/docs"][0].to_string(),
            "plan /plans/smoke selects it"
        );
        let narrowed = SelectionRequest {
            plan: plan.clone(),
            ..request(&["src/register.py"], &[])
        };
        assert_eq!(
            select(&catalog(), &narrowed)
                .unwrap()
                .tests
                .keys()
                .collect::<Vec<_>>(),
            ["/attach"],
            "the change's /register and /setup are outside the plan"
        );
        let unmatched = SelectionRequest {
            plan,
            ..request(&["README.md"], &[])
        };
        let fail_open = select(&catalog(), &unmatched).unwrap();
        assert!(fail_open.fail_open);
        assert_eq!(
            fail_open.tests.len(),
            3,
            "failing open stays inside the plan"
        );
    }
}
