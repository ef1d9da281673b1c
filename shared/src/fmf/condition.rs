//! fmf's context condition language (`distro < rhel-9 and arch != s390x`), as Python fmf's `context.py` has it.
//!
//! A `Context` maps dimensions (`distro`, `arch`, …) to values. A condition is `or`-groups of `and`-ed
//! expressions; each expression is `true`/`false`, `dim is [not] defined`, or `dim OP v1, v2` where values
//! compare version-aware: `fedora-33` splits into `fedora`, `33` and `distro == fedora` compares only as many
//! parts as the right side has. An undefined dimension makes an expression undecidable, and fmf's
//! three-valued logic decides whether the whole condition still has an answer.

use std::cmp::Ordering;
use std::sync::LazyLock;

use fancy_regex::Regex;
use indexmap::IndexMap;

use super::pattern::PythonRegex;
use super::quote::{bounded, snippet};

/// The outcome of matching a condition against a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Match,
    NoMatch,
    /// A dimension the condition needs is not in the context (fmf's `CannotDecide`).
    CannotDecide,
}

/// Why a condition could not be evaluated at all (fmf's `InvalidRule`, or a bad `~` pattern).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("invalid condition {}: {}", snippet(.condition), bounded(.reason))]
    InvalidRule { condition: String, reason: String },
    #[error("condition {}: {}", snippet(.condition), bounded(.reason))]
    InvalidPattern { condition: String, reason: String },
}

/// A dimension value split for version-aware comparison (`centos-8.3` → `centos`, `8`, `3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextValue {
    raw: String,
    parts: Vec<String>,
}

impl ContextValue {
    pub fn new(raw: impl Into<String>) -> ContextValue {
        let raw = raw.into();
        // fmf splits on any of ':', '-', '.' (`re.split(r":|-|\.", text)`), keeping empty parts.
        let parts = raw.split([':', '-', '.']).map(str::to_owned).collect();
        ContextValue { raw, parts }
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// fmf's `ContextValue.version_cmp`; `None` is `CannotDecide`. The result is -1, 0 or 1, except that an
    /// unordered comparison may still return -1 from a version part (the callers only test it against 0).
    fn version_cmp(
        &self,
        other: &ContextValue,
        minor_mode: bool,
        ordered: bool,
        case_sensitive: bool,
    ) -> Option<i8> {
        let (Some(own_name), Some(other_name)) = (self.parts.first(), other.parts.first()) else {
            return None;
        };
        if !equal_with_case(own_name, other_name, case_sensitive) {
            return if ordered { None } else { Some(1) };
        }
        if minor_mode && other.parts.len() > 1 {
            // The left side needs a major version once the right side names one.
            let own_major = self.parts.get(1)?;
            if !equal_with_case(own_major, &other.parts[1], case_sensitive) {
                if ordered {
                    if other.parts.len() > 2 {
                        return None;
                    }
                } else {
                    return Some(1);
                }
            }
        }
        for (own_part, other_part) in self.parts.iter().skip(1).zip(other.parts.iter().skip(1)) {
            let compared = compare_version_part(own_part, other_part, case_sensitive);
            if compared != 0 {
                return Some(compared);
            }
        }
        if other.parts.len() <= self.parts.len() {
            Some(0)
        } else if minor_mode {
            None
        } else if !ordered {
            Some(1)
        } else if self.parts.len() == 1 {
            None
        } else {
            Some(-1)
        }
    }
}

fn fold_case(text: &str) -> String {
    // Python uses str.casefold(); lowercasing agrees with it outside a few special letters (ß, ligatures).
    text.to_lowercase()
}

fn equal_with_case(first: &str, second: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        first == second
    } else {
        fold_case(first) == fold_case(second)
    }
}

/// fmf's `ContextValue.compare`: as integers when both parts parse with Python's `int()`, else as strings.
fn compare_version_part(first: &str, second: &str, case_sensitive: bool) -> i8 {
    let ordering = match (python_int(first), python_int(second)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ if case_sensitive => first.cmp(second),
        _ => fold_case(first).cmp(&fold_case(second)),
    };
    match ordering {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }
}

/// An integer of any size as Python's `int(text)` reads it, normalised so `Ord` compares by value.
#[derive(Debug, PartialEq, Eq)]
struct BigInteger {
    negative: bool,
    digits: String,
}

impl PartialOrd for BigInteger {
    fn partial_cmp(&self, other: &BigInteger) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BigInteger {
    fn cmp(&self, other: &BigInteger) -> Ordering {
        let magnitude = self
            .digits
            .len()
            .cmp(&other.digits.len())
            .then_with(|| self.digits.cmp(&other.digits));
        match (self.negative, other.negative) {
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
        }
    }
}

/// Python's `int(text)`: surrounding whitespace, an optional sign, ASCII digits with single underscores
/// between them.
fn python_int(text: &str) -> Option<BigInteger> {
    let trimmed = python_strip(text);
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    if unsigned.is_empty()
        || unsigned.starts_with('_')
        || unsigned.ends_with('_')
        || unsigned.contains("__")
    {
        return None;
    }
    if !unsigned.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    let digits: String = unsigned.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    Some(BigInteger {
        negative: negative && digits != "0",
        digits: digits.to_owned(),
    })
}

/// Python's `str.strip()`: Unicode whitespace plus the separator controls U+001C..U+001F.
pub(crate) fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// An operator of a dimension-values expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Less,
    MinorLess,
    LessOrEqual,
    MinorLessOrEqual,
    Equal,
    MinorEqual,
    NotEqual,
    MinorNotEqual,
    GreaterOrEqual,
    MinorGreaterOrEqual,
    Greater,
    MinorGreater,
    Match,
    NotMatch,
}

impl Operator {
    fn from_symbol(symbol: &str) -> Option<Operator> {
        Some(match symbol {
            "<" => Operator::Less,
            "~<" => Operator::MinorLess,
            "<=" => Operator::LessOrEqual,
            "~<=" => Operator::MinorLessOrEqual,
            "==" => Operator::Equal,
            "~=" => Operator::MinorEqual,
            "!=" => Operator::NotEqual,
            "~!=" => Operator::MinorNotEqual,
            ">=" => Operator::GreaterOrEqual,
            "~>=" => Operator::MinorGreaterOrEqual,
            ">" => Operator::Greater,
            "~>" => Operator::MinorGreater,
            "~" => Operator::Match,
            "!~" => Operator::NotMatch,
            _ => return None,
        })
    }
}

/// One expression of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expression {
    Constant(bool),
    Defined(String),
    NotDefined(String),
    Compare {
        dimension: String,
        operator: Operator,
        values: Vec<ContextValue>,
    },
}

/// A parsed condition: the outer list is `or`-ed, each inner list `and`-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    source: String,
    or_groups: Vec<Vec<Expression>>,
}

impl Condition {
    /// A `when: true` / `when: false` rule.
    pub fn constant(value: bool) -> Condition {
        Condition {
            source: value.to_string(),
            or_groups: vec![vec![Expression::Constant(value)]],
        }
    }

    /// Parse a condition string as fmf's `Context.parse_rule` does.
    pub fn parse(rule: &str) -> Result<Condition, ConditionError> {
        let invalid = |reason: String| ConditionError::InvalidRule {
            condition: rule.to_owned(),
            reason,
        };
        let normalised = double_single_equals(rule);
        let mut or_groups = Vec::new();
        for or_group in split_on_word(&normalised, &OR_SEPARATOR) {
            if or_group.is_empty() {
                return Err(invalid(format!("Empty OR expression in {normalised}.")));
            }
            let mut and_group = Vec::new();
            for part in split_on_word(or_group, &AND_SEPARATOR) {
                let part = python_strip(part);
                if part.is_empty() {
                    return Err(invalid(format!("Empty AND expression in {normalised}.")));
                }
                and_group.push(
                    parse_expression(part)
                        .ok_or_else(|| invalid(format!("Cannot parse expression '{part}'.")))?,
                );
            }
            or_groups.push(and_group);
        }
        Ok(Condition {
            source: rule.to_owned(),
            or_groups,
        })
    }

    pub fn or_groups(&self) -> &[Vec<Expression>] {
        &self.or_groups
    }
}

/// fmf rewrites a lone `=` to `==`: `re.sub(r"(?<!=|!|~|<|>)=(?!=)", "==", rule)`. The look-arounds see the
/// original text, so checking each `=` against its original neighbours is the same thing.
fn double_single_equals(rule: &str) -> String {
    let characters: Vec<char> = rule.chars().collect();
    let mut rewritten = String::with_capacity(rule.len() + 4);
    for (index, character) in characters.iter().enumerate() {
        let previous_is_operator =
            index > 0 && matches!(characters[index - 1], '=' | '!' | '~' | '<' | '>');
        let next_is_equals = characters.get(index + 1) == Some(&'=');
        if *character == '=' && !previous_is_operator && !next_is_equals {
            rewritten.push_str("==");
        } else {
            rewritten.push(*character);
        }
    }
    rewritten
}

// These patterns are constants copied from fmf's context.py; compiling them cannot fail on any input.
static OR_SEPARATOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\bor\b").expect("constant pattern"));
static AND_SEPARATOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\band\b").expect("constant pattern"));
static TRIPLE_EXPRESSION: LazyLock<Regex> = LazyLock::new(|| {
    // Same alternation order as fmf's operator_map; `[^=]` makes `<` back off so `<=` can match.
    Regex::new(r"^([\w-]+)\s*(<|~<|<=|~<=|==|~=|!=|~!=|>=|~>=|>|~>|~|!~)\s*([^=].*)")
        .expect("constant pattern")
});
static DOUBLE_EXPRESSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([\w-]+)\s*(is defined|is not defined)").expect("constant pattern")
});

/// `re.split` on a separator that never matches empty.
fn split_on_word<'t>(text: &'t str, separator: &Regex) -> Vec<&'t str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for found in separator.find_iter(text) {
        // The separators are simple enough that fancy-regex never needs to backtrack deeply on them.
        let Ok(found) = found else { break };
        pieces.push(&text[start..found.start()]);
        start = found.end();
    }
    pieces.push(&text[start..]);
    pieces
}

/// fmf's `Context.split_expression`; `None` is `InvalidRule`.
fn parse_expression(expression: &str) -> Option<Expression> {
    // fmf uses re.match(r"(true|false)"), a prefix test: "trueish" is true too.
    if expression.starts_with("true") {
        return Some(Expression::Constant(true));
    }
    if expression.starts_with("false") {
        return Some(Expression::Constant(false));
    }
    if let Ok(Some(captures)) = TRIPLE_EXPRESSION.captures(expression) {
        let dimension = captures.get(1)?.as_str().to_owned();
        let operator = Operator::from_symbol(captures.get(2)?.as_str())?;
        let values = captures
            .get(3)?
            .as_str()
            .split(',')
            .map(|value| ContextValue::new(python_strip(value)))
            .collect();
        return Some(Expression::Compare {
            dimension,
            operator,
            values,
        });
    }
    if let Ok(Some(captures)) = DOUBLE_EXPRESSION.captures(expression) {
        let dimension = captures.get(1)?.as_str().to_owned();
        return Some(if captures.get(2)?.as_str() == "is defined" {
            Expression::Defined(dimension)
        } else {
            Expression::NotDefined(dimension)
        });
    }
    None
}

/// The environment a tree is adjusted for: dimension → values.
#[derive(Debug, Clone, Default)]
pub struct Context {
    dimensions: IndexMap<String, Vec<ContextValue>>,
    case_sensitive: bool,
}

impl Context {
    /// An empty, case-sensitive context (fmf's default).
    pub fn new() -> Context {
        Context {
            dimensions: IndexMap::new(),
            case_sensitive: true,
        }
    }

    /// Add (or replace) a dimension with its values, e.g. `("distro", ["fedora-33"])`.
    pub fn with_dimension<I, V>(mut self, dimension: impl Into<String>, values: I) -> Context
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        let values = values
            .into_iter()
            .map(|value| ContextValue::new(value))
            .collect();
        self.dimensions.insert(dimension.into(), values);
        self
    }

    /// Compare dimension values ignoring case (tmt adjusts this way); regular expressions are unaffected.
    pub fn case_sensitive(mut self, case_sensitive: bool) -> Context {
        self.case_sensitive = case_sensitive;
        self
    }

    pub fn dimensions(&self) -> impl Iterator<Item = (&str, &[ContextValue])> {
        self.dimensions
            .iter()
            .map(|(name, values)| (name.as_str(), values.as_slice()))
    }

    /// Parse and evaluate a condition string.
    pub fn matches(&self, rule: &str) -> Result<Decision, ConditionError> {
        self.evaluate(&Condition::parse(rule)?)
    }

    /// Evaluate a parsed condition with fmf's three-valued `and`/`or`.
    pub fn evaluate(&self, condition: &Condition) -> Result<Decision, ConditionError> {
        // None stands for CannotDecide while combining, as in fmf's Context.matches.
        let mut final_outcome: Option<bool> = None;
        let mut any_group_seen = false;
        for and_group in &condition.or_groups {
            let mut and_outcome: Option<bool> = None;
            let mut and_started = false;
            for expression in and_group {
                let result = self.evaluate_expression(expression, condition)?;
                if and_started {
                    and_outcome = if and_outcome == Some(false) || result == Some(false) {
                        Some(false)
                    } else if result == Some(true) && and_outcome == Some(true) {
                        Some(true)
                    } else {
                        None
                    };
                } else {
                    and_started = true;
                    and_outcome = result;
                }
                if and_outcome == Some(false) {
                    break;
                }
            }
            if and_outcome == Some(true) {
                return Ok(Decision::Match);
            }
            if any_group_seen {
                final_outcome = if and_outcome.is_none() || final_outcome.is_none() {
                    None
                } else {
                    Some(false)
                };
            } else {
                final_outcome = and_outcome;
                any_group_seen = true;
            }
        }
        Ok(if final_outcome == Some(false) {
            Decision::NoMatch
        } else {
            Decision::CannotDecide
        })
    }

    fn evaluate_expression(
        &self,
        expression: &Expression,
        condition: &Condition,
    ) -> Result<Option<bool>, ConditionError> {
        match expression {
            Expression::Constant(value) => Ok(Some(*value)),
            Expression::Defined(dimension) => Ok(Some(self.dimensions.contains_key(dimension))),
            Expression::NotDefined(dimension) => Ok(Some(!self.dimensions.contains_key(dimension))),
            Expression::Compare {
                dimension,
                operator,
                values,
            } => {
                let Some(dimension_values) = self.dimensions.get(dimension) else {
                    return Ok(None);
                };
                let mut decided = false;
                for dimension_value in dimension_values {
                    for value in values {
                        match self.compare(dimension_value, *operator, value, condition)? {
                            Some(true) => return Ok(Some(true)),
                            Some(false) => decided = true,
                            None => {}
                        }
                    }
                }
                Ok(if decided { Some(false) } else { None })
            }
        }
    }

    /// One operator applied to one (dimension value, rule value) pair; `None` is `CannotDecide`.
    fn compare(
        &self,
        dimension_value: &ContextValue,
        operator: Operator,
        value: &ContextValue,
        condition: &Condition,
    ) -> Result<Option<bool>, ConditionError> {
        let case_sensitive = self.case_sensitive;
        let cmp = |minor_mode: bool, ordered: bool| {
            dimension_value.version_cmp(value, minor_mode, ordered, case_sensitive)
        };
        let decision = match operator {
            Operator::Equal => cmp(false, false).map(|c| c == 0),
            Operator::NotEqual => cmp(false, false).map(|c| c != 0),
            Operator::MinorEqual => cmp(true, false).map(|c| c == 0),
            Operator::MinorNotEqual => cmp(true, false).map(|c| c != 0),
            Operator::Less => cmp(false, true).map(|c| c < 0),
            Operator::LessOrEqual => cmp(false, true).map(|c| c <= 0),
            Operator::Greater => cmp(false, true).map(|c| c > 0),
            Operator::GreaterOrEqual => cmp(false, true).map(|c| c >= 0),
            Operator::MinorLess => cmp(true, true).map(|c| c < 0),
            Operator::MinorLessOrEqual => cmp(true, true).map(|c| c <= 0),
            Operator::MinorGreater => cmp(true, true).map(|c| c > 0),
            Operator::MinorGreaterOrEqual => cmp(true, true).map(|c| c >= 0),
            Operator::Match | Operator::NotMatch => {
                let pattern_error = |reason: String| ConditionError::InvalidPattern {
                    condition: condition.source.clone(),
                    reason,
                };
                let regex = PythonRegex::new(value.raw()).map_err(pattern_error)?;
                let found = regex.search(dimension_value.raw()).map_err(pattern_error)?;
                Some(found == (operator == Operator::Match))
            }
        };
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn context() -> Context {
        Context::new()
            .with_dimension("distro", ["fedora-33"])
            .with_dimension("arch", ["x86_64"])
    }

    fn decide(context: &Context, rule: &str) -> Decision {
        context
            .matches(rule)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn equality_compares_only_the_parts_the_rule_names() {
        let context = context();
        assert_eq!(decide(&context, "distro == fedora"), Decision::Match);
        assert_eq!(decide(&context, "distro == fedora-33"), Decision::Match);
        assert_eq!(decide(&context, "distro == fedora-33.1"), Decision::NoMatch);
        assert_eq!(decide(&context, "distro = fedora"), Decision::Match);
        assert_eq!(decide(&context, "distro != centos"), Decision::Match);
        assert_eq!(
            decide(&context, "distro == centos, fedora"),
            Decision::Match
        );
    }

    #[test]
    fn ordering_needs_the_same_name() {
        let context = context();
        assert_eq!(decide(&context, "distro < fedora-34"), Decision::Match);
        assert_eq!(decide(&context, "distro >= fedora-33"), Decision::Match);
        assert_eq!(decide(&context, "distro < rhel-9"), Decision::CannotDecide);
        let rhel = Context::new().with_dimension("distro", ["rhel-8.4"]);
        assert_eq!(decide(&rhel, "distro < rhel-9"), Decision::Match);
        assert_eq!(decide(&rhel, "distro ~< rhel-8.5"), Decision::Match);
        assert_eq!(decide(&rhel, "distro ~< rhel-9.1"), Decision::CannotDecide);
    }

    #[test]
    fn undefined_dimensions_follow_three_valued_logic() {
        let context = context();
        assert_eq!(
            decide(&context, "component == bash"),
            Decision::CannotDecide
        );
        assert_eq!(
            decide(&context, "component == bash and arch == s390x"),
            Decision::NoMatch
        );
        assert_eq!(
            decide(&context, "component == bash or arch == x86_64"),
            Decision::Match
        );
        assert_eq!(
            decide(&context, "component == bash or arch == s390x"),
            Decision::CannotDecide
        );
        assert_eq!(
            decide(&context, "initiator is not defined or initiator != packit"),
            Decision::Match
        );
        assert_eq!(decide(&context, "arch is defined"), Decision::Match);
    }

    #[test]
    fn regex_operators_search() {
        let context = context();
        assert_eq!(decide(&context, "arch ~ ^x86"), Decision::Match);
        assert_eq!(decide(&context, "arch !~ ^x86"), Decision::NoMatch);
        assert!(context.matches("arch ~ (").is_err());
    }

    #[test]
    fn malformed_rules_are_errors() {
        for rule in [
            "",
            "or",
            "distro",
            "distro ==",
            "and distro == x",
            "distro === x",
        ] {
            assert!(Condition::parse(rule).is_err(), "{rule:?} should not parse");
        }
        assert_eq!(decide(&context(), "true"), Decision::Match);
        assert_eq!(decide(&context(), "false"), Decision::NoMatch);
    }

    #[test]
    fn case_insensitive_context_folds_names() {
        let context = Context::new()
            .with_dimension("distro", ["Fedora-33"])
            .case_sensitive(false);
        assert_eq!(decide(&context, "distro == fedora"), Decision::Match);
    }

    proptest! {
        #[test]
        fn random_conditions_never_panic(rule in any::<String>()) {
            let _ = context().matches(&rule);
        }

        #[test]
        fn condition_like_strings_never_panic(
            rule in r"[a-z_ -]{0,8}(==|!=|<|<=|>|>=|~|!~|~<|~=|=| is defined| is not defined| and | or |,)[a-z0-9.:, ()\[\]*+?-]{0,12}( and | or )?[a-z =<>~!-]{0,10}"
        ) {
            let _ = context().matches(&rule);
        }
    }
}
