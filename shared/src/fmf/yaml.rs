//! Reading one `.fmf` file: YAML text to `FmfValue`, with file:line:column on syntax errors.
//!
//! serde_norway (a maintained serde_yaml fork) resolves scalars by the YAML 1.2 core schema as ruamel.yaml
//! does for fmf (`yes` stays a string), refuses duplicate keys as ruamel does, and reports error positions.
//! One known gap: ruamel still reads YAML 1.1 number forms (`1_000`, `017`) as ints; here they stay strings.

use std::cell::Cell;
use std::fmt;
use std::path::Path;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_norway::Value as YamlValue;

use super::error::FmfError;
use super::quote::snippet;
use super::value::{python_float_repr, FmfMap, FmfValue};

/// Parse the text of `path`. An empty or comment-only file is `Null`, as in ruamel.yaml.
pub(crate) fn parse_fmf_file(path: &Path, text: &str) -> Result<FmfValue, FmfError> {
    if text.trim().is_empty()
        || text
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        return Ok(FmfValue::Null);
    }
    // Only a file with an anchor and an alias can expand: the others skip the counting pass.
    if text.contains('&') && text.contains('*') {
        refuse_alias_bomb(path, text)?;
    }
    // Most files are string keys over plain values: read those straight into `FmfValue`. Anything else
    // (merge keys, non-string or repeated keys, tags, a syntax error) takes the general path, which
    // decides the value or the error exactly as before.
    if !text.contains("<<") {
        if let Ok(value) = serde_norway::from_str::<FmfValue>(text) {
            return Ok(value);
        }
    }
    parse_general(path, text)
}

/// Values a file may expand to through aliases: proportional to its length, with room for small files.
fn expansion_limit(text: &str) -> usize {
    text.len().saturating_mul(16).saturating_add(10_000)
}

/// Count the values `text` expands to, aliases replayed, without building them; refuse the file once the
/// count passes [`expansion_limit`]. Any other problem is left to the real parse, which reports it.
fn refuse_alias_bomb(path: &Path, text: &str) -> Result<(), FmfError> {
    let limit = expansion_limit(text);
    let counter = ValueCounter {
        remaining: Cell::new(limit),
        exceeded: Cell::new(false),
    };
    let deserializer = serde_norway::Deserializer::from_str(text);
    match (&counter).deserialize(deserializer) {
        Err(_) if counter.exceeded.get() => Err(FmfError::AliasExpansion {
            path: path.to_owned(),
            limit,
        }),
        _ => Ok(()),
    }
}

/// A serde seed and visitor that builds nothing and counts every value it visits down from `remaining`.
struct ValueCounter {
    remaining: Cell<usize>,
    /// Set when the count ran out, to tell that error from the file's own.
    exceeded: Cell<bool>,
}

impl ValueCounter {
    fn count_one<E: de::Error>(&self) -> Result<(), E> {
        match self.remaining.get() {
            0 => {
                self.exceeded.set(true);
                Err(E::custom("too many values"))
            }
            remaining => {
                self.remaining.set(remaining - 1);
                Ok(())
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for &ValueCounter {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &ValueCounter {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.count_one()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.count_one()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.count_one()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.count_one()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.count_one()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.count_one()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.count_one()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        self.count_one()?;
        while items.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        self.count_one()?;
        while entries.next_key_seed(self)?.is_some() {
            entries.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A value with a tag (`!name value`): the tag is a variant name, the value its content.
    fn visit_enum<A: EnumAccess<'de>>(self, tagged: A) -> Result<(), A::Error> {
        self.count_one()?;
        let ((), content) = tagged.variant_seed(self)?;
        content.newtype_variant_seed(self)
    }
}

/// Through serde_norway's `Value`: merge keys, key checks and errors with their position.
fn parse_general(path: &Path, text: &str) -> Result<FmfValue, FmfError> {
    let yaml_error = |error: serde_norway::Error| {
        let (line, column) = error
            .location()
            .map_or((0, 0), |location| (location.line(), location.column()));
        FmfError::Yaml {
            path: path.to_owned(),
            line,
            column,
            message: error.to_string(),
        }
    };
    let mut parsed: YamlValue = serde_norway::from_str(text).map_err(yaml_error)?;
    // `<<` merge keys are part of ruamel's safe loader; serde_norway applies them on request.
    parsed.apply_merge().map_err(yaml_error)?;
    convert(&parsed, true).map_err(|message| FmfError::Format {
        path: path.to_owned(),
        node: "/".into(),
        message,
    })
}

/// Convert a YAML value. At node level (the file's top mapping and `/child` mappings inside it) keys must be
/// strings: Python fmf calls string methods on them. Deeper down a scalar key becomes the string
/// `json.dumps` would print, which is how node data compares with Python's output.
fn convert(value: &YamlValue, node_level: bool) -> Result<FmfValue, String> {
    Ok(match value {
        YamlValue::Null => FmfValue::Null,
        YamlValue::Bool(flag) => FmfValue::Bool(*flag),
        YamlValue::Number(number) => {
            if let Some(integer) = number.as_i64() {
                FmfValue::Integer(integer)
            } else {
                FmfValue::Float(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        YamlValue::String(text) => FmfValue::string(text.as_str()),
        YamlValue::Sequence(items) => FmfValue::list(
            items
                .iter()
                .map(|item| convert(item, false))
                .collect::<Result<_, _>>()?,
        ),
        YamlValue::Mapping(mapping) => {
            let mut map = FmfMap::with_capacity_and_hasher(mapping.len(), Default::default());
            let mut numeric_keys_seen: Vec<f64> = Vec::new();
            for (key, item) in mapping {
                // Python dict keys 1, 1.0 and True are one key, so ruamel refuses them as duplicates.
                let numeric_key = match key {
                    YamlValue::Bool(flag) => Some(f64::from(u8::from(*flag))),
                    YamlValue::Number(number) => number.as_f64(),
                    _ => None,
                };
                if let Some(numeric_key) = numeric_key {
                    if numeric_keys_seen.contains(&numeric_key) {
                        return Err(format!("found duplicate key {}", describe(key)));
                    }
                    numeric_keys_seen.push(numeric_key);
                }
                let key_text = match key {
                    YamlValue::String(text) => text.clone(),
                    YamlValue::Null if node_level => return Err("Invalid key 'None'.".to_owned()),
                    other if node_level => {
                        return Err(format!(
                            "invalid key {}: keys must be strings",
                            describe(other)
                        ))
                    }
                    YamlValue::Null => "null".to_owned(),
                    YamlValue::Bool(flag) => flag.to_string(),
                    YamlValue::Number(number) => match number.as_i64() {
                        Some(integer) => integer.to_string(),
                        None => python_float_repr(number.as_f64().unwrap_or(f64::NAN)),
                    },
                    other => return Err(format!("unhashable mapping key {}", describe(other))),
                };
                let child_is_node = node_level && key_text.starts_with('/');
                map.insert(key_text.into(), convert(item, child_is_node)?);
            }
            FmfValue::map(map)
        }
        YamlValue::Tagged(tagged) => {
            return Err(format!(
                "could not determine a constructor for the tag '{}'",
                tagged.tag
            ));
        }
    })
}

/// A key as an error quotes it: a short snippet of its YAML form.
fn describe(value: &YamlValue) -> String {
    serde_norway::to_string(value).map_or_else(|_| "?".to_owned(), |text| snippet(text.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FmfValue, FmfError> {
        parse_fmf_file(Path::new("test.fmf"), text)
    }

    #[test]
    fn scalars_resolve_like_ruamel() {
        let value = parse("a: yes\nb: 017\nc: 0o17\nd: 1e3\ne: ~\nf: On\ng: 1.5\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let map = value.as_map().unwrap_or_else(|| panic!("not a map"));
        assert_eq!(map["a"], FmfValue::String("yes".into()));
        assert_eq!(map["c"], FmfValue::Integer(15));
        assert_eq!(map["e"], FmfValue::Null);
        assert_eq!(map["f"], FmfValue::String("On".into()));
        assert_eq!(map["g"], FmfValue::Float(1.5));
    }

    #[test]
    fn empty_and_comment_only_files_are_null() {
        assert_eq!(parse("").ok(), Some(FmfValue::Null));
        assert_eq!(parse("# nothing\n\n").ok(), Some(FmfValue::Null));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error = parse("a: 1\nb: [1, 2\n")
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        let FmfError::Yaml { line, .. } = &error else {
            panic!("wrong error {error}")
        };
        assert!(*line >= 2, "{error}");
        assert!(error.to_string().starts_with("test.fmf:"), "{error}");
    }

    /// The direct read gives what the general path gives, or leaves the file to it.
    #[test]
    fn the_direct_read_agrees_with_the_general_path() {
        let cases = [
            "a: 0x10\nb: 0o17\nc: 1e3\nd: .nan\ne: -.inf\nf: 18446744073709551615\n",
            "a: yes\nb: ~\nc: null\nd: 'true'\ne: !!str 1\nf: !!int '3'\n",
            "1: a\n",
            "data:\n  1: a\n  1.0: b\n",
            "data:\n  True: 1\n  ~: 2\n  0x10: 3\n",
            "? [a]\n: b\n",
            "a: &x [1, {b: 2}]\nc: *x\n",
            "a: 1\na: 2\n",
            "/child:\n  test: ./t\n  tag+: [x]\n",
            "a: !custom 1\n",
            "---\n",
            "a: [1, 2\n",
        ];
        for text in cases {
            let general = parse_general(Path::new("test.fmf"), text);
            let direct = serde_norway::from_str::<FmfValue>(text);
            if let Ok(direct) = direct {
                let general =
                    general.unwrap_or_else(|error| panic!("{text:?}: general path fails: {error}"));
                assert!(
                    direct.identical(&general),
                    "{text:?}: {direct:?} != {general:?}"
                );
            }
            assert_eq!(
                format!("{:?}", parse(text)),
                format!("{:?}", parse_general(Path::new("test.fmf"), text)),
                "{text:?}"
            );
        }
    }

    /// An anchor of 10k items aliased 10k times: 60 KB that would expand to 10⁸ values.
    #[test]
    fn alias_bombs_are_refused_naming_the_file() {
        let items = "x,".repeat(10_000);
        let aliases = "*a,".repeat(10_000);
        let text = format!("a: &a [{items}]\nb: [{aliases}]\n");
        let error = parse_fmf_file(Path::new("bomb.fmf"), &text)
            .err()
            .unwrap_or_else(|| panic!("an alias bomb should be refused"));
        assert!(matches!(error, FmfError::AliasExpansion { .. }), "{error}");
        assert!(error.to_string().starts_with("bomb.fmf:"), "{error}");
        // A tag does not hide the expansion.
        let tagged = format!("a: &a [{items}]\nb: !t [{aliases}]\n");
        assert!(matches!(
            parse(&tagged),
            Err(FmfError::AliasExpansion { .. })
        ));
    }

    #[test]
    fn ordinary_aliases_and_ampersands_still_parse() {
        let value = parse("base: &base {a: 1, b: [x, y]}\none: *base\ntwo: {<<: *base, c: 2}\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let map = value.as_map().unwrap_or_else(|| panic!("not a map"));
        assert_eq!(map["one"], map["base"]);
        let value = parse("test: make a && make b * 2\n").unwrap_or_else(|error| panic!("{error}"));
        assert!(value.as_map().is_some_and(|map| map.contains_key("test")));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(parse("a: 1\na: 2\n").is_err());
    }

    #[test]
    fn node_level_keys_must_be_strings() {
        assert!(parse("1: a\n").is_err());
        assert!(parse("/child:\n  2: b\n").is_err());
        let nested = parse("data:\n  1: a\n").unwrap_or_else(|error| panic!("{error}"));
        assert!(nested
            .as_map()
            .and_then(|map| map["data"].as_map())
            .is_some_and(|map| map.contains_key("1")));
    }
}
