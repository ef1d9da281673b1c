//! Quoting a file's text in an error: short, escaped, never the whole file (a hostile tree may point its
//! files at anyone's secrets). Below `error` and `condition`, which both quote.

/// The most characters of a file's text an error quotes.
pub(crate) const SNIPPET_CHARS: usize = 40;
/// The most characters of a message shown: messages quote node names, keys and conditions from the file.
const MESSAGE_CHARS: usize = 240;

/// The start of `text` as an error may quote it: at most [`SNIPPET_CHARS`] characters, control characters
/// escaped, in double quotes, with `…` when cut short.
pub(crate) fn snippet(text: &str) -> String {
    format!("\"{}\"", escaped_prefix(text, SNIPPET_CHARS, true))
}

/// A message part as displayed: at most [`MESSAGE_CHARS`] characters, control characters escaped. The
/// backstop behind [`snippet`] for whatever file text a message carries.
pub(crate) fn bounded(text: &str) -> String {
    escaped_prefix(text, MESSAGE_CHARS, false)
}

/// At most `limit` characters of `text`, control characters (and with `escape_quotes`, quotes and
/// backslashes) escaped, `…` when cut short.
fn escaped_prefix(text: &str, limit: usize, escape_quotes: bool) -> String {
    let mut shown = String::new();
    let mut characters = text.chars();
    for character in characters.by_ref().take(limit) {
        if escape_quotes || character.is_control() {
            shown.extend(character.escape_debug());
        } else {
            shown.push(character);
        }
    }
    if characters.next().is_some() {
        shown.push('…');
    }
    shown
}
