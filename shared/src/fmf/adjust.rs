//! fmf `adjust` rules: merge a rule's keys into a node when its `when` condition holds for a context.
//!
//! Rules come from the node's own (inherited) `adjust` key, a dict or a list of dicts, and run in order.
//! `continue: false` stops after the first rule that applies; a rule whose condition cannot be decided
//! (a dimension missing from the context) is skipped, as fmf's `undecided='skip'` does.

use std::collections::hash_map::Entry;
use std::path::Path;

use super::condition::{Condition, Context, Decision};
use super::error::FmfError;
use super::merge::merge_special;
use super::value::{FmfMap, FmfValue};

/// The key holding the rules, and the rule keys that control a rule rather than being merged.
const ADJUST_KEY: &str = "adjust";
const CONTROL_KEYS: [&str; 3] = ["because", "continue", "when"];

/// Parsed `when` conditions by their text, kept across the nodes of one tree.
pub(crate) type ConditionCache = foldhash::HashMap<super::value::FmfText, Condition>;

/// How to adjust, beyond the context itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdjustOptions {
    /// Compare dimension values with case (fmf's default) or ignoring it (what tmt asks for).
    pub case_sensitive: bool,
    /// Fail instead of skipping a rule whose condition cannot be decided (fmf's `undecided='raise'`).
    pub fail_on_undecided: bool,
}

impl Default for AdjustOptions {
    fn default() -> AdjustOptions {
        AdjustOptions {
            case_sensitive: true,
            fail_on_undecided: false,
        }
    }
}

/// Apply the `adjust` rules found in `data` to `data` itself. `context` already carries the case sensitivity
/// from `options` (the tree sets it once for all nodes).
pub(crate) fn adjust_node_data(
    data: &mut FmfMap,
    context: &Context,
    options: &AdjustOptions,
    node_name: &str,
    blame_path: &Path,
    conditions: &mut ConditionCache,
) -> Result<(), FmfError> {
    let invalid = |message: String| FmfError::Adjust {
        path: blame_path.to_owned(),
        node: node_name.to_owned(),
        message,
    };
    // The rules are read once up front: a rule that extends `adjust+` changes the data, not this pass.
    let rules: Vec<FmfValue> = match data.get(ADJUST_KEY) {
        None => return Ok(()),
        Some(FmfValue::Map(rule)) => vec![FmfValue::Map(rule.clone())],
        Some(FmfValue::List(rules)) => rules.to_vec(),
        Some(other) => {
            return Err(invalid(format!(
                "Should be a dictionary or a list of dictionaries, got '{}'.",
                other.type_name()
            )))
        }
    };
    for rule in &rules {
        let FmfValue::Map(rule) = rule else {
            return Err(invalid("Adjust rule should be a dictionary.".to_owned()));
        };
        let constant;
        let condition = match rule.get("when") {
            // A rule without `when` always applies.
            None => {
                constant = Condition::constant(true);
                &constant
            }
            Some(FmfValue::Bool(flag)) => {
                constant = Condition::constant(*flag);
                &constant
            }
            // Inherited rules repeat the same few conditions over thousands of nodes: parse each once.
            Some(FmfValue::String(text)) => match conditions.entry(text.clone()) {
                Entry::Occupied(parsed) => &*parsed.into_mut(),
                Entry::Vacant(slot) => {
                    &*slot.insert(
                        Condition::parse(text).map_err(|source| FmfError::Condition {
                            path: blame_path.to_owned(),
                            node: node_name.to_owned(),
                            source,
                        })?,
                    )
                }
            },
            Some(other) => {
                return Err(invalid(format!(
                    "'when' should be a string or a bool, got '{}'.",
                    other.type_name()
                )))
            }
        };
        let continue_after = match rule.get("continue") {
            None => true,
            Some(FmfValue::Bool(flag)) => *flag,
            Some(other) => {
                return Err(invalid(format!(
                    "The 'continue' value should be bool, got '{}'.",
                    other.python_str()
                )))
            }
        };
        let decision = context
            .evaluate(condition)
            .map_err(|source| FmfError::Condition {
                path: blame_path.to_owned(),
                node: node_name.to_owned(),
                source,
            })?;
        match decision {
            Decision::Match => {
                let to_merge: FmfMap = rule
                    .iter()
                    .filter(|(key, _)| !CONTROL_KEYS.contains(&key.as_ref()))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                merge_special(data, &to_merge).map_err(|failure| FmfError::Merge {
                    path: blame_path.to_owned(),
                    node: node_name.to_owned(),
                    key: failure.key,
                    reason: failure.reason,
                })?;
                if !continue_after {
                    break;
                }
            }
            Decision::NoMatch => {}
            Decision::CannotDecide if options.fail_on_undecided => {
                return Err(FmfError::Undecided {
                    path: blame_path.to_owned(),
                    node: node_name.to_owned(),
                    condition: rule
                        .get("when")
                        .map(FmfValue::python_str)
                        .unwrap_or_default(),
                });
            }
            Decision::CannotDecide => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fmf::yaml::parse_fmf_file;

    fn adjusted(yaml: &str, context: &Context) -> Result<FmfMap, FmfError> {
        let parsed = parse_fmf_file(Path::new("rules.fmf"), yaml)?;
        let mut data = parsed.as_map().cloned().unwrap_or_default();
        adjust_node_data(
            &mut data,
            context,
            &AdjustOptions::default(),
            "/node",
            Path::new("rules.fmf"),
            &mut ConditionCache::default(),
        )?;
        Ok(data)
    }

    fn fedora() -> Context {
        Context::new()
            .with_dimension("distro", ["fedora-33"])
            .with_dimension("arch", ["x86_64"])
    }

    #[test]
    fn matching_rules_merge_and_continue_false_stops() {
        let yaml = "tag: [a]\nadjust:\n  - when: distro == fedora\n    tag+: [b]\n    continue: false\n  - when: arch == x86_64\n    tag+: [c]\n";
        let data = adjusted(yaml, &fedora()).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            data["tag"],
            FmfValue::list(vec![FmfValue::string("a"), FmfValue::string("b")])
        );
    }

    #[test]
    fn undecidable_rules_are_skipped_and_can_fail() {
        let yaml = "enabled: true\nadjust:\n  when: component == bash\n  enabled: false\n";
        let data = adjusted(yaml, &fedora()).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(data["enabled"], FmfValue::Bool(true));
        let mut data = parse_fmf_file(Path::new("x.fmf"), yaml)
            .ok()
            .and_then(|value| value.as_map().cloned())
            .unwrap_or_default();
        let strict = AdjustOptions {
            fail_on_undecided: true,
            ..AdjustOptions::default()
        };
        let result = adjust_node_data(
            &mut data,
            &fedora(),
            &strict,
            "/node",
            Path::new("x.fmf"),
            &mut ConditionCache::default(),
        );
        assert!(matches!(result, Err(FmfError::Undecided { .. })));
    }

    #[test]
    fn malformed_rules_are_errors_naming_the_file() {
        for yaml in [
            "adjust: 5\n",
            "adjust: [5]\n",
            "adjust:\n  when: 'distro ='\n",
            "adjust:\n  when: x == y\n  continue: 1\n",
        ] {
            let error = adjusted(yaml, &fedora())
                .err()
                .unwrap_or_else(|| panic!("{yaml:?} should fail"));
            assert!(error.to_string().contains("rules.fmf"), "{error}");
        }
    }
}
