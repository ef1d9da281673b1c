//! fmf's key-suffix merging (`key+`, `key+<`, `key-`, `key~`, `key-~`), as Python fmf's `Tree._merge_*` do it.
//!
//! Used both for inheritance (a child's own data merged over a copy of its parent's) and for `adjust` rules
//! (a matching rule merged over the node's data). The failure is a key and a reason; the caller adds the file
//! and the node.

use super::pattern::PythonRegex;
use super::value::{FmfMap, FmfValue};

/// A merge that Python fmf would refuse (its `MergeError`, or a `TypeError`/`re.error` it lets escape).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MergeFailure {
    pub(crate) key: String,
    pub(crate) reason: String,
}

fn failure(key: &str, reason: impl Into<String>) -> MergeFailure {
    MergeFailure {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The operation a key suffix asks for, with the bare key.
#[derive(Debug, PartialEq, Eq)]
enum SuffixOperation<'a> {
    Append(&'a str),
    Prepend(&'a str),
    RemoveMatching(&'a str),
    Remove(&'a str),
    Substitute(&'a str),
    Set(&'a str),
}

/// Classify a key by suffix. Python strips with `str.rstrip(chars)`, which removes every trailing character
/// in the set (`a++` → `a`, `a<+<` → `a`); `trim_end_matches` with a char set does the same.
fn classify_key(key: &str) -> SuffixOperation<'_> {
    if key.ends_with('+') {
        SuffixOperation::Append(key.trim_end_matches('+'))
    } else if key.ends_with("+<") {
        SuffixOperation::Prepend(key.trim_end_matches(['+', '<']))
    } else if key.ends_with("-~") {
        SuffixOperation::RemoveMatching(key.trim_end_matches(['-', '~']))
    } else if key.ends_with('-') {
        SuffixOperation::Remove(key.trim_end_matches('-'))
    } else if key.ends_with('~') {
        SuffixOperation::Substitute(key.trim_end_matches('~'))
    } else {
        SuffixOperation::Set(key)
    }
}

/// Merge `source` into `data`, honouring key suffixes (Python fmf's `_merge_special`).
pub(crate) fn merge_special(data: &mut FmfMap, source: &FmfMap) -> Result<(), MergeFailure> {
    for (key, value) in source {
        match classify_key(key) {
            SuffixOperation::Append(bare_key) => merge_plus(data, bare_key, value, false)?,
            SuffixOperation::Prepend(bare_key) => merge_plus(data, bare_key, value, true)?,
            SuffixOperation::RemoveMatching(bare_key) => merge_minus_regexp(data, bare_key, value)?,
            SuffixOperation::Remove(bare_key) => merge_minus(data, bare_key, value)?,
            SuffixOperation::Substitute(bare_key) => merge_regexp(data, bare_key, value)?,
            SuffixOperation::Set(bare_key) => {
                data.insert(bare_key.into(), value.clone());
            }
        }
    }
    Ok(())
}

fn merge_plus(
    data: &mut FmfMap,
    key: &str,
    value: &FmfValue,
    prepend: bool,
) -> Result<(), MergeFailure> {
    let Some(current) = data.get_mut(key) else {
        data.insert(key.into(), value.clone());
        return Ok(());
    };
    match (&mut *current, value) {
        // A list of dicts extended by a dict: every item gets the dict merged in.
        (FmfValue::List(items), FmfValue::Map(addition)) => {
            for item in std::sync::Arc::make_mut(items).iter_mut() {
                let FmfValue::Map(item_map) = item else {
                    return Err(failure(
                        key,
                        format!("item '{}' must be a dictionary", item.python_str()),
                    ));
                };
                merge_special(std::sync::Arc::make_mut(item_map), addition)?;
            }
            Ok(())
        }
        // A dict extended by a list of dicts: the dict becomes one merged copy per list item.
        (FmfValue::Map(original), FmfValue::List(additions)) => {
            let mut merged_copies = Vec::with_capacity(additions.len());
            for addition in additions.iter() {
                let FmfValue::Map(addition_map) = addition else {
                    return Err(failure(
                        key,
                        format!("item '{}' must be a dictionary", addition.python_str()),
                    ));
                };
                let mut copy = FmfMap::clone(original);
                merge_special(&mut copy, addition_map)?;
                merged_copies.push(FmfValue::map(copy));
            }
            *current = FmfValue::list(merged_copies);
            Ok(())
        }
        (FmfValue::Map(original), FmfValue::Map(addition)) => {
            merge_special(std::sync::Arc::make_mut(original), addition)
        }
        (existing, _) => {
            let (left, right) = if prepend {
                (value, &*existing)
            } else {
                (&*existing, value)
            };
            let combined = python_add(left, right).ok_or_else(|| {
                failure(
                    key,
                    format!(
                        "unsupported operand type(s) for +: '{}' and '{}'",
                        left.type_name(),
                        right.type_name()
                    ),
                )
            })?;
            *existing = combined;
            Ok(())
        }
    }
}

/// Python's `left + right` for YAML values; `None` where Python raises `TypeError`.
fn python_add(left: &FmfValue, right: &FmfValue) -> Option<FmfValue> {
    if let (Some(a), Some(b)) = (left.as_number(), right.as_number()) {
        return a.combine(b, false);
    }
    match (left, right) {
        (FmfValue::String(a), FmfValue::String(b)) => Some(FmfValue::string(format!("{a}{b}"))),
        (FmfValue::List(a), FmfValue::List(b)) => {
            Some(FmfValue::list(a.iter().chain(b.iter()).cloned().collect()))
        }
        _ => None,
    }
}

fn merge_minus(data: &mut FmfMap, key: &str, value: &FmfValue) -> Result<(), MergeFailure> {
    let Some(current) = data.get_mut(key) else {
        return Ok(());
    };
    if let (Some(a), Some(b)) = (current.as_number(), value.as_number()) {
        *current = a
            .combine(b, true)
            .ok_or_else(|| failure(key, "integer result out of range"))?;
        return Ok(());
    }
    match (&mut *current, value) {
        (FmfValue::String(text), FmfValue::String(pattern)) => {
            let regex = PythonRegex::new(pattern).map_err(|reason| failure(key, reason))?;
            *text = regex
                .substitute("", text)
                .map_err(|reason| failure(key, reason))?
                .into();
            Ok(())
        }
        (FmfValue::List(items), FmfValue::List(removed)) => {
            std::sync::Arc::make_mut(items)
                .retain(|item| !removed.iter().any(|candidate| candidate.python_eq(item)));
            Ok(())
        }
        (FmfValue::Map(map), FmfValue::List(removed_keys)) => {
            for removed_key in removed_keys.iter() {
                match removed_key {
                    FmfValue::String(name) => {
                        std::sync::Arc::make_mut(map).shift_remove(&**name);
                    }
                    FmfValue::List(_) | FmfValue::Map(_) => {
                        return Err(failure(
                            key,
                            format!("unhashable type: '{}'", removed_key.type_name()),
                        ));
                    }
                    // Keys are strings here, so a number or bool names no key (as with string keys in Python).
                    _ => {}
                }
            }
            Ok(())
        }
        _ => Err(failure(key, "wrong type")),
    }
}

/// The patterns of a `~` or `-~` value: Python iterates a string as one pattern, a list by item, a dict by key.
fn pattern_values(value: &FmfValue) -> Result<Vec<FmfValue>, String> {
    match value {
        FmfValue::String(_) => Ok(vec![value.clone()]),
        FmfValue::List(items) => Ok(items.to_vec()),
        FmfValue::Map(map) => Ok(map
            .keys()
            .map(|key| FmfValue::String(key.clone()))
            .collect()),
        other => Err(format!("'{}' object is not iterable", other.type_name())),
    }
}

fn merge_regexp(data: &mut FmfMap, key: &str, value: &FmfValue) -> Result<(), MergeFailure> {
    let Some(current) = data.get_mut(key) else {
        return Ok(());
    };
    let patterns = pattern_values(value).map_err(|reason| failure(key, reason))?;
    // Python splits every pattern before applying any, so a malformed one fails the whole merge.
    let mut substitutions = Vec::with_capacity(patterns.len());
    for pattern in &patterns {
        let FmfValue::String(source) = pattern else {
            return Err(failure(
                key,
                format!(
                    "'{}' is not a pattern/replacement string",
                    pattern.python_str()
                ),
            ));
        };
        substitutions
            .push(split_pattern_replacement(source).map_err(|reason| failure(key, reason))?);
    }
    for (pattern, replacement) in substitutions {
        let regex = PythonRegex::new(&pattern).map_err(|reason| failure(key, reason))?;
        match &mut *current {
            FmfValue::List(items) => {
                let mut replaced = Vec::with_capacity(items.len());
                for item in items.iter() {
                    let FmfValue::String(text) = item else {
                        return Err(failure(key, "not a string"));
                    };
                    let substituted = regex
                        .substitute(&replacement, text)
                        .map_err(|reason| failure(key, reason))?;
                    replaced.push(FmfValue::string(substituted));
                }
                *items = std::sync::Arc::new(replaced);
            }
            FmfValue::String(text) => {
                *text = regex
                    .substitute(&replacement, text)
                    .map_err(|reason| failure(key, reason))?
                    .into();
            }
            _ => return Err(failure(key, "wrong type")),
        }
    }
    Ok(())
}

/// Split `<d>PATTERN<d>REPLACEMENT<d>` where `<d>` is the first character (fmf's `split_pattern_replacement`).
pub(crate) fn split_pattern_replacement(source: &str) -> Result<(String, String), String> {
    let Some(delimiter) = source.chars().next() else {
        return Err(format!(
            "'{source}' has to start and end with the same delimiter."
        ));
    };
    if !source.ends_with(delimiter) {
        return Err(format!("'{source}' has to end with '{delimiter}'."));
    }
    let inner = if source.len() >= 2 * delimiter.len_utf8() {
        &source[delimiter.len_utf8()..source.len() - delimiter.len_utf8()]
    } else {
        ""
    };
    let parts: Vec<&str> = inner.split(delimiter).collect();
    let [pattern, replacement] = parts.as_slice() else {
        return Err(format!("'{source}' can't be split in two parts"));
    };
    if pattern.is_empty() {
        return Err(format!("Pattern cannot be empty: '{source}'."));
    }
    Ok(((*pattern).to_owned(), (*replacement).to_owned()))
}

/// Whether any pattern finds a match in `text`; patterns are tried in order and stop at the first hit, so a
/// bad pattern after a hit is never looked at (as in fmf's `lazy_any_search`).
fn any_pattern_matches(
    patterns: &Result<Vec<FmfValue>, String>,
    text: &str,
) -> Result<bool, String> {
    let patterns = patterns.as_ref().map_err(Clone::clone)?;
    for pattern in patterns {
        let FmfValue::String(source) = pattern else {
            return Err(format!(
                "first argument must be string or compiled pattern, got '{}'",
                pattern.type_name()
            ));
        };
        if PythonRegex::new(source)?.search(text)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn merge_minus_regexp(data: &mut FmfMap, key: &str, value: &FmfValue) -> Result<(), MergeFailure> {
    let Some(current) = data.get_mut(key) else {
        return Ok(());
    };
    let patterns = pattern_values(value);
    match current {
        FmfValue::List(items) => {
            let mut kept = Vec::with_capacity(items.len());
            for item in items.iter() {
                let matched = any_pattern_matches(&patterns, &item.python_str())
                    .map_err(|reason| failure(key, reason))?;
                if !matched {
                    kept.push(item.clone());
                }
            }
            *items = std::sync::Arc::new(kept);
        }
        FmfValue::String(text) => {
            if any_pattern_matches(&patterns, text).map_err(|reason| failure(key, reason))? {
                *text = "".into();
            }
        }
        FmfValue::Map(map) => {
            let keys: Vec<super::value::FmfText> = map.keys().cloned().collect();
            for existing_key in keys {
                if any_pattern_matches(&patterns, &existing_key)
                    .map_err(|reason| failure(key, reason))?
                {
                    std::sync::Arc::make_mut(map).shift_remove(&*existing_key);
                }
            }
        }
        _ => return Err(failure(key, "wrong type")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, FmfValue)]) -> FmfMap {
        entries
            .iter()
            .map(|(key, value)| ((*key).into(), value.clone()))
            .collect()
    }

    fn text(value: &str) -> FmfValue {
        FmfValue::string(value)
    }

    fn list(values: &[&str]) -> FmfValue {
        FmfValue::list(values.iter().map(|value| text(value)).collect())
    }

    #[test]
    fn suffixes_strip_like_python_rstrip() {
        assert_eq!(classify_key("tag+"), SuffixOperation::Append("tag"));
        assert_eq!(classify_key("tag++"), SuffixOperation::Append("tag"));
        assert_eq!(classify_key("tag+<"), SuffixOperation::Prepend("tag"));
        assert_eq!(
            classify_key("tag-~"),
            SuffixOperation::RemoveMatching("tag")
        );
        assert_eq!(classify_key("tag-"), SuffixOperation::Remove("tag"));
        assert_eq!(classify_key("tag~"), SuffixOperation::Substitute("tag"));
    }

    #[test]
    fn plus_and_minus_follow_fmf_examples() {
        let mut data = map(&[
            ("tags", list(&["Tier1", "Tier2"])),
            ("time", FmfValue::Integer(10)),
        ]);
        let child = map(&[
            ("tags+<", list(&["Tier0"])),
            ("tags+", list(&["Tier3"])),
            ("time-", FmfValue::Integer(5)),
            ("tags-", list(&["Tier2"])),
        ]);
        merge_special(&mut data, &child).unwrap_or_else(|failure| panic!("{failure:?}"));
        assert_eq!(data["tags"], list(&["Tier0", "Tier1", "Tier3"]));
        assert_eq!(data["time"], FmfValue::Integer(5));
    }

    #[test]
    fn regexp_substitution_applies_in_order() {
        let mut data = map(&[("tags", list(&["Tier1", "Tier2"]))]);
        let child = map(&[("tags~", list(&["/Tier(.)/t\\1/", "/Tier2/t3/"]))]);
        merge_special(&mut data, &child).unwrap_or_else(|failure| panic!("{failure:?}"));
        assert_eq!(data["tags"], list(&["t1", "t2"]));
    }

    #[test]
    fn type_mismatch_is_a_failure() {
        let mut data = map(&[("tags", list(&["a"]))]);
        let child = map(&[("tags+", text("b"))]);
        assert!(merge_special(&mut data, &child).is_err());
    }

    #[test]
    fn pattern_replacement_split_matches_fmf() {
        assert_eq!(
            split_pattern_replacement("/a/b/"),
            Ok(("a".to_owned(), "b".to_owned()))
        );
        assert!(split_pattern_replacement("/").is_err());
        assert!(split_pattern_replacement("").is_err());
        assert!(split_pattern_replacement("//b/").is_err());
        assert!(split_pattern_replacement("/a/b").is_err());
    }
}
