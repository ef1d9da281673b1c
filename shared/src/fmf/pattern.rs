//! Python `re` compatibility for the regular expressions fmf metadata carries (`~` merges, `-~`, `~` conditions).
//!
//! fmf hands user patterns straight to Python's `re.search` / `re.sub`. fancy-regex accepts nearly the same
//! syntax (lookaround, backreferences); the few spellings that differ are rewritten here, and `re.sub`'s
//! replacement template (`\1`, `\g<name>`) is expanded by hand because its syntax is Python's own.

use fancy_regex::{Captures, Regex};

/// A compiled pattern with Python `re` semantics.
#[derive(Debug)]
pub(crate) struct PythonRegex {
    compiled: Regex,
}

impl PythonRegex {
    /// Compile a Python pattern; the error is a readable reason.
    pub(crate) fn new(pattern: &str) -> Result<PythonRegex, String> {
        let translated = translate_pattern(pattern);
        Regex::new(&translated)
            .map(|compiled| PythonRegex { compiled })
            .map_err(|error| format!("invalid regular expression {pattern:?}: {error}"))
    }

    /// `re.search(pattern, text) is not None`.
    pub(crate) fn search(&self, text: &str) -> Result<bool, String> {
        self.compiled
            .is_match(text)
            .map_err(|error| format!("regular expression failed on {text:?}: {error}"))
    }

    /// `re.sub(pattern, template, text)`, including Python 3.7+'s handling of empty matches.
    pub(crate) fn substitute(&self, template: &str, text: &str) -> Result<String, String> {
        let pieces = parse_template(template, self)?;
        let mut output = String::with_capacity(text.len());
        let mut copied_up_to = 0;
        let mut search_from = 0;
        // Python allows an empty match right after a non-empty one, but never two empty matches at one spot.
        let mut last_empty_match_at: Option<usize> = None;
        while search_from <= text.len() {
            let captures = self
                .compiled
                .captures_from_pos(text, search_from)
                .map_err(|error| format!("regular expression failed on {text:?}: {error}"))?;
            let Some(captures) = captures else { break };
            let Some(whole) = captures.get(0) else { break };
            if whole.start() == whole.end() && last_empty_match_at == Some(whole.start()) {
                match text[search_from..].chars().next() {
                    Some(character) => search_from += character.len_utf8(),
                    None => break,
                }
                continue;
            }
            output.push_str(&text[copied_up_to..whole.start()]);
            expand_template(&pieces, &captures, &mut output);
            copied_up_to = whole.end();
            search_from = whole.end();
            last_empty_match_at = (whole.start() == whole.end()).then_some(whole.end());
        }
        output.push_str(&text[copied_up_to..]);
        Ok(output)
    }
}

/// Rewrite the Python spellings fancy-regex reads differently: `\Z` (end of text) and a bare `$`, which in
/// Python also matches before a final newline.
fn translate_pattern(pattern: &str) -> String {
    let multiline = has_multiline_flag(pattern);
    let mut translated = String::with_capacity(pattern.len() + 8);
    let mut characters = pattern.chars();
    let mut in_class = false;
    while let Some(character) = characters.next() {
        match character {
            '\\' => match characters.next() {
                Some('Z') if !in_class => translated.push_str("\\z"),
                Some(escaped) => {
                    translated.push('\\');
                    translated.push(escaped);
                }
                None => translated.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                translated.push('[');
                // A `]` right after `[` or `[^` is a literal in both dialects; copy it so it does not close.
                let rest = characters.as_str();
                if let Some(stripped) = rest.strip_prefix("^]") {
                    translated.push_str("^]");
                    characters = stripped.chars();
                } else if let Some(stripped) = rest.strip_prefix(']') {
                    translated.push(']');
                    characters = stripped.chars();
                }
            }
            ']' if in_class => {
                in_class = false;
                translated.push(']');
            }
            '$' if !in_class && !multiline => translated.push_str("(?=\\n?\\z)"),
            other => translated.push(other),
        }
    }
    translated
}

/// Whether an inline flag group turns on multi-line mode, where `$` already means "before a newline".
fn has_multiline_flag(pattern: &str) -> bool {
    let mut rest = pattern;
    while let Some(start) = rest.find("(?") {
        let flags: String = rest[start + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if flags.contains('m') {
            return true;
        }
        rest = &rest[start + 2..];
    }
    false
}

/// One part of a parsed `re.sub` replacement template.
#[derive(Debug, PartialEq)]
enum TemplatePiece {
    Literal(String),
    Group(usize),
}

/// Parse a replacement template the way Python's `re._parser.parse_template` does.
fn parse_template(template: &str, regex: &PythonRegex) -> Result<Vec<TemplatePiece>, String> {
    let group_count = regex.compiled.captures_len().saturating_sub(1);
    let characters: Vec<char> = template.chars().collect();
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut index = 0;
    let push_group = |literal: &mut String, pieces: &mut Vec<TemplatePiece>, group: usize| {
        if !literal.is_empty() {
            pieces.push(TemplatePiece::Literal(std::mem::take(literal)));
        }
        pieces.push(TemplatePiece::Group(group));
    };
    while index < characters.len() {
        let character = characters[index];
        index += 1;
        if character != '\\' {
            literal.push(character);
            continue;
        }
        let Some(&escaped) = characters.get(index) else {
            return Err(format!(
                "bad escape (end of pattern) in replacement {template:?}"
            ));
        };
        index += 1;
        match escaped {
            'g' => {
                if characters.get(index) != Some(&'<') {
                    return Err(format!("missing < in replacement {template:?}"));
                }
                let name_start = index + 1;
                let Some(name_length) = characters[name_start..].iter().position(|c| *c == '>')
                else {
                    return Err(format!(
                        "missing >, unterminated name in replacement {template:?}"
                    ));
                };
                let name: String = characters[name_start..name_start + name_length]
                    .iter()
                    .collect();
                index = name_start + name_length + 1;
                let group = if let Ok(number) = name.parse::<usize>() {
                    number
                } else {
                    regex
                        .compiled
                        .capture_names()
                        .position(|candidate| candidate == Some(name.as_str()))
                        .ok_or_else(|| {
                            format!("unknown group name {name:?} in replacement {template:?}")
                        })?
                };
                if group > group_count {
                    return Err(format!(
                        "invalid group reference {group} in replacement {template:?}"
                    ));
                }
                push_group(&mut literal, &mut pieces, group);
            }
            '0' => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match characters.get(index).and_then(|c| c.to_digit(8)) {
                        Some(digit) => {
                            value = value * 8 + digit;
                            index += 1;
                        }
                        None => break,
                    }
                }
                literal.push(char::from_u32(value & 0xff).unwrap_or('\0'));
            }
            first if first.is_ascii_digit() => {
                let mut digits = String::from(first);
                if let Some(&second) = characters.get(index).filter(|c| c.is_ascii_digit()) {
                    digits.push(second);
                    index += 1;
                    let third = characters.get(index).filter(|c| c.is_digit(8));
                    if let (true, true, Some(&third)) =
                        (first.is_digit(8), second.is_digit(8), third)
                    {
                        digits.push(third);
                        index += 1;
                        let value = u32::from_str_radix(&digits, 8).unwrap_or(u32::MAX);
                        if value > 0o377 {
                            return Err(format!(
                                "octal escape value \\{digits} outside of range 0-0o377"
                            ));
                        }
                        literal.push(char::from_u32(value).unwrap_or('\0'));
                        continue;
                    }
                }
                let group: usize = digits.parse().unwrap_or(usize::MAX);
                if group > group_count {
                    return Err(format!(
                        "invalid group reference {group} in replacement {template:?}"
                    ));
                }
                push_group(&mut literal, &mut pieces, group);
            }
            'a' => literal.push('\x07'),
            'b' => literal.push('\x08'),
            'f' => literal.push('\x0c'),
            'n' => literal.push('\n'),
            'r' => literal.push('\r'),
            't' => literal.push('\t'),
            'v' => literal.push('\x0b'),
            '\\' => literal.push('\\'),
            letter if letter.is_ascii_alphabetic() => {
                return Err(format!("bad escape \\{letter} in replacement {template:?}"));
            }
            // Python keeps an unknown non-letter escape as written, backslash included.
            other => {
                literal.push('\\');
                literal.push(other);
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(TemplatePiece::Literal(literal));
    }
    Ok(pieces)
}

fn expand_template(pieces: &[TemplatePiece], captures: &Captures<'_, str>, output: &mut String) {
    for piece in pieces {
        match piece {
            TemplatePiece::Literal(text) => output.push_str(text),
            // A group that did not take part in the match expands to nothing, as in Python 3.5+.
            TemplatePiece::Group(group) => {
                if let Some(matched) = captures.get(*group) {
                    output.push_str(matched.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn substitute(pattern: &str, template: &str, text: &str) -> String {
        PythonRegex::new(pattern)
            .and_then(|regex| regex.substitute(template, text))
            .unwrap_or_else(|error| panic!("substitute failed: {error}"))
    }

    #[test]
    fn substitution_uses_python_group_syntax() {
        assert_eq!(
            substitute(".en(.*) .*", "gen\\1", "General description"),
            "general"
        );
        assert_eq!(substitute("Tier(.)", "t\\1", "Tier1"), "t1");
        assert_eq!(substitute("(?P<x>a)", "\\g<x>\\g<1>\\g<0>", "a"), "aaa");
        assert_eq!(substitute("a", "\\n\\-", "a"), "\n\\-");
    }

    #[test]
    fn empty_matches_follow_python() {
        // re.sub('x*', '-', 'abxd') == '-a-b--d-'
        assert_eq!(substitute("x*", "-", "abxd"), "-a-b--d-");
        assert_eq!(substitute("", "-", "ab"), "-a-b-");
    }

    #[test]
    fn dollar_matches_before_final_newline() {
        assert_eq!(substitute("b$", "X", "ab\n"), "aX\n");
        assert!(PythonRegex::new("a\\Z")
            .and_then(|regex| regex.search("a"))
            .unwrap_or(false));
    }

    #[test]
    fn bad_templates_are_errors() {
        let regex = PythonRegex::new("(a)").unwrap_or_else(|error| panic!("{error}"));
        assert!(regex.substitute("\\2", "a").is_err());
        assert!(regex.substitute("\\q", "a").is_err());
        assert!(regex.substitute("\\", "a").is_err());
    }
}
