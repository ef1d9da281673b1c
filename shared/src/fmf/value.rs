//! Node data values: an ordered, JSON-like value with the Python semantics that fmf's merge rules rely on.
//!
//! Python fmf keeps node data in dicts loaded by ruamel.yaml, so merges behave like Python operators (`+` on
//! lists, `==` between `1` and `1.0`, `str()` of a dict). This type keeps key order and gives those semantics
//! as explicit functions, so results compare one-to-one with Python's JSON dump of the same tree.

use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A mapping with insertion order kept, as Python dicts keep it. Hashed with foldhash (seeded per map,
/// several times faster than SipHash on short keys): trees hold hundreds of thousands of small maps.
pub type FmfMap = IndexMap<FmfText, FmfValue, foldhash::fast::RandomState>;

/// Text in node data (keys and string values): shared, not copied, when a child inherits it.
pub type FmfText = Arc<str>;

/// One value in fmf node data.
///
/// Mapping keys are strings; a non-string YAML key below the node level is turned into the string Python's
/// `json.dumps` would print for it (`1`, `true`, `null`).
///
/// Strings, lists and mappings are shared (`Arc`): every node of a tree holds its parent's data merged
/// with its own, and what it inherits unchanged is the parent's, not a copy. A change copies only what
/// it changes (`Arc::make_mut`). 24 bytes a value.
#[derive(Debug, Clone, PartialEq)]
pub enum FmfValue {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(FmfText),
    List(Arc<Vec<FmfValue>>),
    Map(Arc<FmfMap>),
}

impl FmfValue {
    pub fn string(text: impl Into<FmfText>) -> FmfValue {
        FmfValue::String(text.into())
    }

    pub fn list(items: Vec<FmfValue>) -> FmfValue {
        FmfValue::List(Arc::new(items))
    }

    pub fn map(map: FmfMap) -> FmfValue {
        FmfValue::Map(Arc::new(map))
    }
}

impl FmfValue {
    /// The string value, when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FmfValue::String(text) => Some(text),
            _ => None,
        }
    }

    /// The mapping, when this is a mapping.
    pub fn as_map(&self) -> Option<&FmfMap> {
        match self {
            FmfValue::Map(map) => Some(map),
            _ => None,
        }
    }

    /// The list, when this is a list.
    pub fn as_list(&self) -> Option<&[FmfValue]> {
        match self {
            FmfValue::List(items) => Some(items),
            _ => None,
        }
    }

    /// Python's type name for the value, used in error messages so they read like fmf's.
    pub fn type_name(&self) -> &'static str {
        match self {
            FmfValue::Null => "NoneType",
            FmfValue::Bool(_) => "bool",
            FmfValue::Integer(_) => "int",
            FmfValue::Float(_) => "float",
            FmfValue::String(_) => "str",
            FmfValue::List(_) => "list",
            FmfValue::Map(_) => "dict",
        }
    }

    /// Strict equality: same variants, same map key order. `PartialEq` ignores map order (as `IndexMap` does);
    /// conformance checks want the order too.
    pub fn identical(&self, other: &FmfValue) -> bool {
        match (self, other) {
            (FmfValue::List(left), FmfValue::List(right)) => {
                left.len() == right.len()
                    && left.iter().zip(right.iter()).all(|(a, b)| a.identical(b))
            }
            (FmfValue::Map(left), FmfValue::Map(right)) => {
                left.len() == right.len()
                    && left
                        .iter()
                        .zip(right.iter())
                        .all(|((key_a, a), (key_b, b))| key_a == key_b && a.identical(b))
            }
            (FmfValue::Float(left), FmfValue::Float(right)) => {
                left == right || (left.is_nan() && right.is_nan())
            }
            _ => self == other,
        }
    }

    /// Python `==`: numbers compare by value across int, float and bool (`True == 1`), containers element-wise.
    pub fn python_eq(&self, other: &FmfValue) -> bool {
        if let (Some(left), Some(right)) = (self.as_number(), other.as_number()) {
            return left.python_eq(right);
        }
        match (self, other) {
            (FmfValue::Null, FmfValue::Null) => true,
            (FmfValue::String(left), FmfValue::String(right)) => left == right,
            (FmfValue::List(left), FmfValue::List(right)) => {
                left.len() == right.len()
                    && left.iter().zip(right.iter()).all(|(a, b)| a.python_eq(b))
            }
            (FmfValue::Map(left), FmfValue::Map(right)) => {
                left.len() == right.len()
                    && left
                        .iter()
                        .all(|(key, a)| right.get(key).is_some_and(|b| a.python_eq(b)))
            }
            _ => false,
        }
    }

    /// Python's `str(value)`: a string is itself, everything else is its `repr`.
    pub fn python_str(&self) -> String {
        match self {
            FmfValue::String(text) => text.to_string(),
            other => other.python_repr(),
        }
    }

    /// Python's `repr(value)` for the types YAML produces.
    pub fn python_repr(&self) -> String {
        match self {
            FmfValue::Null => "None".to_owned(),
            FmfValue::Bool(true) => "True".to_owned(),
            FmfValue::Bool(false) => "False".to_owned(),
            FmfValue::Integer(number) => number.to_string(),
            FmfValue::Float(number) => python_float_repr(*number),
            FmfValue::String(text) => python_string_repr(text),
            FmfValue::List(items) => {
                let inner: Vec<String> = items.iter().map(FmfValue::python_repr).collect();
                format!("[{}]", inner.join(", "))
            }
            FmfValue::Map(map) => {
                let inner: Vec<String> = map
                    .iter()
                    .map(|(key, value)| {
                        format!("{}: {}", python_string_repr(key), value.python_repr())
                    })
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
        }
    }

    pub(crate) fn as_number(&self) -> Option<PythonNumber> {
        match self {
            FmfValue::Bool(flag) => Some(PythonNumber::Integer(i64::from(*flag))),
            FmfValue::Integer(number) => Some(PythonNumber::Integer(*number)),
            FmfValue::Float(number) => Some(PythonNumber::Float(*number)),
            _ => None,
        }
    }
}

/// A number as Python arithmetic sees it: `bool` is already folded into `int`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PythonNumber {
    Integer(i64),
    Float(f64),
}

impl PythonNumber {
    fn as_float(self) -> f64 {
        match self {
            PythonNumber::Integer(number) => number as f64,
            PythonNumber::Float(number) => number,
        }
    }

    fn python_eq(self, other: PythonNumber) -> bool {
        match (self, other) {
            (PythonNumber::Integer(a), PythonNumber::Integer(b)) => a == b,
            (a, b) => a.as_float() == b.as_float(),
        }
    }

    /// `a + b` (or `a - b` with `subtract`); `None` when an integer result leaves i64, which Python would keep
    /// as a big integer and we cannot represent.
    pub(crate) fn combine(self, other: PythonNumber, subtract: bool) -> Option<FmfValue> {
        match (self, other) {
            (PythonNumber::Integer(a), PythonNumber::Integer(b)) => {
                let result = if subtract {
                    a.checked_sub(b)
                } else {
                    a.checked_add(b)
                };
                result.map(FmfValue::Integer)
            }
            (a, b) => {
                let (a, b) = (a.as_float(), b.as_float());
                Some(FmfValue::Float(if subtract { a - b } else { a + b }))
            }
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16 on.
pub fn python_float_repr(number: f64) -> String {
    if number.is_nan() {
        return "nan".to_owned();
    }
    if number.is_infinite() {
        return if number > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if number == 0.0 {
        return if number.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .to_owned();
    }
    // `{:e}` gives the shortest round-trip digits, which is what Python's repr uses too.
    let scientific = format!("{number:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point_position = exponent + 1;
        let body = if point_position <= 0 {
            format!(
                "0.{}{}",
                "0".repeat(point_position.unsigned_abs() as usize),
                digits
            )
        } else {
            let point_position = point_position as usize;
            if digits.len() <= point_position {
                format!("{}{}.0", digits, "0".repeat(point_position - digits.len()))
            } else {
                format!(
                    "{}.{}",
                    &digits[..point_position],
                    &digits[point_position..]
                )
            }
        };
        format!("{sign}{body}")
    } else {
        let mantissa_text = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{mantissa_text}e{exponent_sign}{:02}",
            exponent.unsigned_abs()
        )
    }
}

/// Python's `repr(str)`: single quotes unless the text holds a single quote and no double quote.
pub fn python_string_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

impl fmt::Display for FmfValue {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.python_repr())
    }
}

impl Serialize for FmfValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FmfValue::Null => serializer.serialize_unit(),
            FmfValue::Bool(flag) => serializer.serialize_bool(*flag),
            FmfValue::Integer(number) => serializer.serialize_i64(*number),
            FmfValue::Float(number) => serializer.serialize_f64(*number),
            FmfValue::String(text) => serializer.serialize_str(text),
            FmfValue::List(items) => {
                let mut sequence = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    sequence.serialize_element(item)?;
                }
                sequence.end()
            }
            FmfValue::Map(map) => {
                let mut serialized = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map.iter() {
                    serialized.serialize_entry(&**key, value)?;
                }
                serialized.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for FmfValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FmfValueVisitor)
    }
}

struct FmfValueVisitor;

impl<'de> Visitor<'de> for FmfValueVisitor {
    type Value = FmfValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON-like value")
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<FmfValue, E> {
        Ok(FmfValue::Bool(flag))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<FmfValue, E> {
        Ok(FmfValue::Integer(number))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<FmfValue, E> {
        // Integers past i64 are kept approximately rather than refused; fmf metadata never holds them.
        Ok(i64::try_from(number).map_or(FmfValue::Float(number as f64), FmfValue::Integer))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<FmfValue, E> {
        Ok(FmfValue::Float(number))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<FmfValue, E> {
        Ok(FmfValue::string(text))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<FmfValue, E> {
        Ok(FmfValue::string(text))
    }

    fn visit_unit<E: de::Error>(self) -> Result<FmfValue, E> {
        Ok(FmfValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<FmfValue, E> {
        Ok(FmfValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<FmfValue, D::Error> {
        FmfValue::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<FmfValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = access.next_element()? {
            items.push(item);
        }
        Ok(FmfValue::list(items))
    }

    /// Keys must be strings (as the format resolves them: YAML's `1` or `true` is refused, not read as
    /// text), and appear once.
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<FmfValue, A::Error> {
        let mut map =
            FmfMap::with_capacity_and_hasher(access.size_hint().unwrap_or(0), Default::default());
        while let Some(key) = access.next_key_seed(StringKey)? {
            let value = access.next_value::<FmfValue>()?;
            match map.entry(key) {
                indexmap::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                indexmap::map::Entry::Occupied(slot) => {
                    return Err(de::Error::custom(format!("duplicate key {:?}", slot.key())))
                }
            }
        }
        Ok(FmfValue::map(map))
    }
}

/// A mapping key that the format itself resolves to a string.
struct StringKey;

impl<'de> de::DeserializeSeed<'de> for StringKey {
    type Value = FmfText;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<FmfText, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringKey {
    type Value = FmfText;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<FmfText, E> {
        Ok(text.into())
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<FmfText, E> {
        Ok(text.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1500.0, "1500.0"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (123456789.125, "123456789.125"),
        ];
        for (number, expected) in cases {
            assert_eq!(python_float_repr(number), expected, "repr of {number}");
        }
    }

    #[test]
    fn repr_of_containers_matches_python() {
        let mut map = FmfMap::default();
        map.insert(
            "a".into(),
            FmfValue::list(vec![FmfValue::Integer(1), FmfValue::Bool(true)]),
        );
        map.insert("it's".into(), FmfValue::Null);
        assert_eq!(
            FmfValue::map(map).python_repr(),
            "{'a': [1, True], \"it's\": None}"
        );
    }

    #[test]
    fn python_equality_crosses_numeric_types() {
        assert!(FmfValue::Integer(1).python_eq(&FmfValue::Float(1.0)));
        assert!(FmfValue::Bool(true).python_eq(&FmfValue::Integer(1)));
        assert!(!FmfValue::String("1".into()).python_eq(&FmfValue::Integer(1)));
    }
}
