//! A tree's problems in one report: every error and warning of every node and of the tree as a whole,
//! each with the file and line it comes from, the node and the key; sorted by file and line, bounded.
//! What `polarizer tests lint` prints, and what an import or a trigger refused for bad metadata says.
//!
//! Lines are found again in the files the tree was read from (the fmf reader keeps no positions): the
//! key as written, inside the node's in-file block where the file has one, else at the file's top
//! level (inherited). Only files the tree itself read are opened; nothing of them is quoted.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};

use crate::fmf::{Context, FmfError, Node, Tree};
use crate::metadata::{
    extra_key, Catalog, CatalogItem, MetadataError, MetadataWarning, FEATURES_NODE, POLARIZER_KEYS,
};

/// At most this many problems are listed; the report still counts them all.
pub const MAX_REPORTED: usize = 100;

/// The longest message kept: a message may quote a value of the tree.
const MAX_MESSAGE_BYTES: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem, placed. `file` is relative to the tree root; `line` is 1-based, 0 where unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    /// 1-based where the reader knows it (YAML syntax), else 0.
    pub column: usize,
    /// The node (a test's or feature's name), empty for a problem of a file.
    pub node: String,
    /// The key as written (`extra-polarizer-platform.kind`), empty where none applies.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(formatter, "{}: ", self.file)?,
            (line, 0) => write!(formatter, "{}:{line}: ", self.file)?,
            (line, column) => write!(formatter, "{}:{line}:{column}: ", self.file)?,
        }
        write!(formatter, "{}: {}", self.severity, self.message)
    }
}

/// What a lint found: the first [`MAX_REPORTED`] problems, and how many there were in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub root: String,
    pub tests: usize,
    pub features: usize,
    pub errors: usize,
    pub warnings: usize,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    /// `3 errors, 1 warning in 12 tests and 4 features`, and how many are not listed.
    pub fn summary(&self) -> String {
        let plural = |count: usize, word: &str| {
            format!("{count} {word}{}", if count == 1 { "" } else { "s" })
        };
        let mut summary = format!(
            "{}, {} in {} and {}",
            plural(self.errors, "error"),
            plural(self.warnings, "warning"),
            plural(self.tests, "test"),
            plural(self.features, "feature"),
        );
        let unlisted = self.errors + self.warnings - self.diagnostics.len();
        if unlisted > 0 {
            summary.push_str(&format!(
                " (the first {} listed, {unlisted} more)",
                self.diagnostics.len()
            ));
        }
        summary
    }

    /// Only the errors' lines, then the summary: what a refused import answers.
    pub fn errors_text(&self) -> String {
        let mut text = String::new();
        for diagnostic in &self.diagnostics {
            if diagnostic.severity == Severity::Error {
                text.push_str(&format!("\n  {diagnostic}"));
            }
        }
        format!("{}{text}", self.summary())
    }

    /// Each warning's line.
    pub fn warning_lines(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .filter(|diagnostic| diagnostic.severity == Severity::Warning)
            .map(ToString::to_string)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.diagnostics {
            writeln!(formatter, "{diagnostic}")?;
        }
        write!(formatter, "{}", self.summary())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LintOptions {
    /// Also warn where a Polarizer key is written bare (`type`) instead of lint-clean
    /// (`extra-polarizer-type`): what `polarizer tests lint` does, an import does not.
    pub suggest_extra_keys: bool,
}

/// Reads, adjusts and checks the tree at `root` and reports everything wrong with it. Only a directory
/// that is not a tree root at all is an `Err`; any other problem of reading is a diagnostic.
pub fn lint_tree(root: &Path, context: &Context, options: LintOptions) -> Result<Report, FmfError> {
    let mut report = Report {
        root: root.display().to_string(),
        ..Report::default()
    };
    let mut tree = match Tree::load(root) {
        Ok(tree) => tree,
        Err(err @ FmfError::MissingRoot { .. }) => return Err(err),
        Err(err) => {
            let first = fmf_diagnostic(root, &err);
            // A file that does not parse stops the tree's reading: list every such file at once.
            if matches!(
                err,
                FmfError::Yaml { .. } | FmfError::AliasExpansion { .. } | FmfError::Read { .. }
            ) {
                for other in Tree::file_errors(root) {
                    let other = fmf_diagnostic(root, &other);
                    if other != first {
                        report.push(other);
                    }
                }
            }
            report.push(first);
            return Ok(report.finish());
        }
    };
    if let Err(err) = tree.adjust(context) {
        report.push(fmf_diagnostic(root, &err));
        return Ok(report.finish());
    }
    Ok(lint_adjusted(&tree, options))
}

/// [`lint_tree`] over a tree already loaded and adjusted.
pub fn lint_adjusted(tree: &Tree, options: LintOptions) -> Report {
    let root = std::path::absolute(tree.root()).unwrap_or_else(|_| tree.root().to_owned());
    let mut errors: Vec<MetadataError> = Vec::new();
    let mut warnings: Vec<MetadataWarning> = Vec::new();
    let mut catalog = Catalog::default();
    // A feature's name, as errors give it, to its node.
    let mut feature_nodes: HashMap<String, String> = HashMap::new();
    for node in tree.nodes() {
        let reading = CatalogItem::read(node, &root);
        errors.extend(reading.errors);
        warnings.extend(reading.warnings);
        // What could be read takes part in the whole-tree checks even where the node had errors: a
        // test's bad `type` should not also make every `after` naming it an error.
        match reading.value {
            Some(CatalogItem::Test(test)) => {
                if options.suggest_extra_keys {
                    for key in POLARIZER_KEYS {
                        let bare_is_polarizers = match (key, node.get(key)) {
                            (_, None) => false,
                            ("provision", Some(crate::fmf::FmfValue::Map(map))) => {
                                !map.is_empty()
                                    && map
                                        .keys()
                                        .all(|sub| matches!(&**sub, "playbook" | "containerfile"))
                            }
                            ("provision", Some(_)) => false,
                            _ => true,
                        };
                        // The provision warning already says it; say it once.
                        if bare_is_polarizers && key != "provision" {
                            warnings.push(MetadataWarning::NotLintClean {
                                node: node.name().to_string(),
                                key: key.to_string(),
                            });
                        }
                    }
                }
                catalog.tests.push(test);
            }
            Some(CatalogItem::Feature(feature)) => {
                feature_nodes.insert(feature.name.clone(), node.name().to_string());
                catalog.features.push(feature);
            }
            None => {}
        }
    }
    let problems = catalog.problems();
    errors.extend(problems.errors);
    warnings.extend(problems.warnings);

    let mut report = Report {
        root: tree.root().display().to_string(),
        tests: catalog.tests.len(),
        features: catalog.features.len(),
        ..Report::default()
    };
    let nodes: HashMap<&str, &Node> = tree
        .nodes()
        .iter()
        .map(|node| (node.name(), node))
        .collect();
    let mut locator = Locator {
        root: &root,
        texts: HashMap::new(),
    };
    let mut place = |severity: Severity, node_name: &str, field: String, message: String| {
        let node_name = feature_nodes
            .get(node_name)
            .map(String::as_str)
            .unwrap_or(node_name);
        locator.diagnostic(
            severity,
            nodes.get(node_name).copied(),
            node_name,
            field,
            message,
        )
    };
    for error in &errors {
        let (node, field) = error.place();
        report.push(place(Severity::Error, node, field, error.to_string()));
    }
    // A bare key inherited by many tests is one place to change: warn once per place.
    let mut seen: BTreeSet<(String, usize, String)> = BTreeSet::new();
    for warning in &warnings {
        let (node, field) = warning.place();
        let diagnostic = place(Severity::Warning, node, field, warning.to_string());
        if let MetadataWarning::NotLintClean { key, .. } = warning {
            if !seen.insert((diagnostic.file.clone(), diagnostic.line, key.clone())) {
                continue;
            }
        }
        report.push(diagnostic);
    }
    report.finish()
}

/// Places problems found without the tree at hand (an import's checks): loads the tree at `root`
/// again, unadjusted (adjust never changes where a node comes from), to find their files and lines.
pub fn place_problems(
    root: &Path,
    errors: &[MetadataError],
    warnings: &[MetadataWarning],
) -> Report {
    let tree = Tree::load(root).ok();
    let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
    let nodes: HashMap<&str, &Node> = tree
        .iter()
        .flat_map(|tree| tree.nodes())
        .map(|node| (node.name(), node))
        .collect();
    let mut locator = Locator {
        root: &absolute,
        texts: HashMap::new(),
    };
    let mut report = Report {
        root: root.display().to_string(),
        ..Report::default()
    };
    let mut place = |severity, node_name: &str, field: String, message: String| {
        // Feature errors name the feature: its node is usually `/features/<name>`.
        let feature_node = format!("{FEATURES_NODE}/{node_name}");
        let node = nodes
            .get(node_name)
            .or_else(|| nodes.get(feature_node.as_str()));
        let node_name = node.map_or(node_name, |node| node.name());
        locator.diagnostic(severity, node.copied(), node_name, field, message)
    };
    for error in errors {
        let (node, field) = error.place();
        report.push(place(Severity::Error, node, field, error.to_string()));
    }
    for warning in warnings {
        let (node, field) = warning.place();
        report.push(place(Severity::Warning, node, field, warning.to_string()));
    }
    report.finish()
}

impl Report {
    fn push(&mut self, mut diagnostic: Diagnostic) {
        // Messages may quote a value from the tree (a hostile one's): never at length.
        if diagnostic.message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !diagnostic.message.is_char_boundary(cut) {
                cut -= 1;
            }
            diagnostic.message.truncate(cut);
            diagnostic.message.push('…');
        }
        match diagnostic.severity {
            Severity::Error => self.errors += 1,
            Severity::Warning => self.warnings += 1,
        }
        self.diagnostics.push(diagnostic);
    }

    /// Sorted by file and line (errors first where they share one), then bounded.
    fn finish(mut self) -> Report {
        self.diagnostics.sort_by(|a, b| {
            (&a.file, a.line, a.severity, &a.node, &a.field, &a.message)
                .cmp(&(&b.file, b.line, b.severity, &b.node, &b.field, &b.message))
        });
        self.diagnostics.dedup();
        self.diagnostics.truncate(MAX_REPORTED);
        self
    }
}

/// A reading problem as a diagnostic: its file (relative to the root) and, for YAML, its line.
pub fn fmf_diagnostic(root: &Path, error: &FmfError) -> Diagnostic {
    let (path, line, column, node) = match error {
        FmfError::MissingRoot { path }
        | FmfError::InvalidVersion { path, .. }
        | FmfError::SymlinkOutsideTree { path }
        | FmfError::AliasExpansion { path, .. }
        | FmfError::Read { path, .. } => (path, 0, 0, ""),
        FmfError::Yaml {
            path, line, column, ..
        } => (path, *line, *column, ""),
        FmfError::Format { path, node, .. }
        | FmfError::Merge { path, node, .. }
        | FmfError::Adjust { path, node, .. }
        | FmfError::Condition { path, node, .. }
        | FmfError::Undecided { path, node, .. } => (path, 0, 0, node.as_str()),
    };
    let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
    Diagnostic {
        severity: Severity::Error,
        file: relative(&absolute, path),
        line,
        column,
        node: node.to_string(),
        field: match error {
            FmfError::Merge { key, .. } => key.clone(),
            FmfError::Adjust { .. } | FmfError::Condition { .. } | FmfError::Undecided { .. } => {
                "adjust".into()
            }
            _ => String::new(),
        },
        // The message names the file itself; the diagnostic's line says it once.
        message: {
            let text = format!("{error:#}");
            let prefix = format!("{}:", path.display());
            match text.strip_prefix(&prefix) {
                Some(rest) => rest
                    .trim_start_matches(|c: char| c.is_ascii_digit() || c == ':')
                    .trim_start()
                    .to_string(),
                None => text,
            }
        },
    }
}

fn relative(root: &Path, path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    absolute
        .strip_prefix(root)
        .map(|relative| relative.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

/// Finds keys in the files a tree was read from, each file read once.
struct Locator<'a> {
    root: &'a Path,
    texts: HashMap<Arc<Path>, Option<String>>,
}

impl Locator<'_> {
    /// A problem of `node_name` at the place `field` is written (no place when the node is not found).
    fn diagnostic(
        &mut self,
        severity: Severity,
        node: Option<&Node>,
        node_name: &str,
        field: String,
        message: String,
    ) -> Diagnostic {
        let (file, line) = match node {
            Some(node) => self.locate(node, &field),
            None => (String::new(), 0),
        };
        Diagnostic {
            severity,
            file,
            line,
            column: 0,
            node: node_name.to_string(),
            field,
            message,
        }
    }

    /// The file and line where `field` (`key` or `key.sub-key`) is written for `node`: the most
    /// specific of its files first. Else the node's own file, at its block if found.
    fn locate(&mut self, node: &Node, field: &str) -> (String, usize) {
        let (key, sub_key) = match field.split_once('.') {
            Some((key, sub_key)) => (key, Some(sub_key)),
            None => (field, None),
        };
        let root = self.root;
        let mut fallback: Option<(String, usize)> = None;
        for source in node.sources().iter().rev() {
            let file_node = file_node_name(root, source);
            let Some(text) = self.text(source) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let blocks = node_blocks(&lines, node.name(), &file_node);
            if fallback.is_none() {
                let line = blocks.last().map_or(1, |block| block.header + 1);
                fallback = Some((relative(root, source), line));
            }
            if key.is_empty() {
                continue;
            }
            // Whole-tree problems name Polarizer's keys bare: look for the lint-clean spelling too.
            let spellings = if POLARIZER_KEYS.contains(&key) {
                vec![extra_key(key), key.to_string()]
            } else {
                vec![key.to_string()]
            };
            // Innermost block first: the node's own lines, then what it inherits in the same file.
            for block in blocks.iter().rev() {
                let found = spellings
                    .iter()
                    .find_map(|spelling| find_key(&lines, block, spelling));
                if let Some(index) = found {
                    let index = sub_key
                        .and_then(|sub_key| {
                            let inner = Block::under(&lines, index);
                            find_key(&lines, &inner, sub_key)
                        })
                        .unwrap_or(index);
                    return (relative(root, source), index + 1);
                }
            }
        }
        fallback.unwrap_or_default()
    }

    fn text(&mut self, source: &Arc<Path>) -> Option<&str> {
        self.texts
            .entry(source.clone())
            .or_insert_with(|| std::fs::read_to_string(source).ok())
            .as_deref()
    }
}

/// The node a file is: `a/b/main.fmf` is `/a/b`, `a/b.fmf` is `/a/b`, the root's `main.fmf` is `/`.
fn file_node_name(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file);
    let mut parts: Vec<String> = relative
        .parent()
        .map(|parent| {
            parent
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match relative.file_stem().map(|stem| stem.to_string_lossy()) {
        Some(stem) if stem != "main" => parts.push(stem.into_owned()),
        _ => {}
    }
    format!("/{}", parts.join("/"))
}

/// Lines `start..end` of a file whose direct keys are indented by `indent` (`header` is the line
/// that opens the block, or 0 for the whole file).
#[derive(Clone, Copy, Debug)]
struct Block {
    header: usize,
    start: usize,
    end: usize,
}

impl Block {
    fn whole(lines: &[&str]) -> Block {
        Block {
            header: 0,
            start: 0,
            end: lines.len(),
        }
    }

    /// The lines under line `header`: those after it indented deeper (or blank, or comments).
    fn under(lines: &[&str], header: usize) -> Block {
        let header_indent = indent(lines[header]);
        let mut end = header + 1;
        while end < lines.len() && (is_blank(lines[end]) || indent(lines[end]) > header_indent) {
            end += 1;
        }
        Block {
            header,
            start: header + 1,
            end,
        }
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The smallest indentation of a key line in the block: its direct keys.
fn direct_indent(lines: &[&str], block: &Block) -> Option<usize> {
    lines[block.start..block.end]
        .iter()
        .filter(|line| !is_blank(line))
        .map(|line| indent(line))
        .min()
}

/// The blocks from the file's top level down to the node's own, as far as the file has them.
fn node_blocks(lines: &[&str], node_name: &str, file_node: &str) -> Vec<Block> {
    let mut blocks = vec![Block::whole(lines)];
    let rest = if file_node == "/" {
        node_name
    } else {
        match node_name.strip_prefix(file_node) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return blocks,
        }
    };
    let mut rest = rest;
    while !rest.is_empty() {
        let block = *blocks.last().expect("starts with one");
        let Some(child_indent) = direct_indent(lines, &block) else {
            break;
        };
        // The longest `/a/b` child key that `rest` starts with.
        let found = (block.start..block.end)
            .filter(|&index| indent(lines[index]) == child_indent)
            .filter_map(|index| {
                let (name, _) = key_of(lines[index])?;
                let name = name.strip_suffix('+').unwrap_or(name);
                let matches = name.starts_with('/')
                    && rest.starts_with(name)
                    && (rest.len() == name.len() || rest[name.len()..].starts_with('/'));
                matches.then_some((index, name.len()))
            })
            .max_by_key(|&(_, length)| length);
        let Some((index, length)) = found else {
            break;
        };
        blocks.push(Block::under(lines, index));
        rest = &rest[length..];
    }
    blocks
}

/// `key: …` or `"key": …` at the start of a line: the key, and what follows the colon.
fn key_of(line: &str) -> Option<(&str, &str)> {
    let trimmed = line.trim_start().trim_start_matches("- ");
    let (key, rest) = trimmed.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.contains(' ')).then_some((key, rest))
}

/// The line of `key` (with any merge suffix: `key+`, `key-`, `key~`, …) among the block's direct keys.
fn find_key(lines: &[&str], block: &Block, key: &str) -> Option<usize> {
    let child_indent = direct_indent(lines, block)?;
    (block.start..block.end).find(|&index| {
        indent(lines[index]) == child_indent
            && key_of(lines[index]).is_some_and(|(written, _)| {
                written
                    .strip_prefix(key)
                    .is_some_and(|suffix| ["", "+", "+<", "-", "~", "-~"].contains(&suffix))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".fmf")).unwrap();
        std::fs::write(dir.path().join(".fmf/version"), "1\n").unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn lines(report: &Report) -> Vec<String> {
        report
            .diagnostics
            .iter()
            .map(|diagnostic| {
                format!(
                    "{}:{} {} {} {}",
                    diagnostic.file,
                    diagnostic.line,
                    diagnostic.severity,
                    diagnostic.node,
                    diagnostic.field
                )
            })
            .collect()
    }

    /// Ten problems in one tree, in one report: sorted by file and line, each with node and key.
    #[test]
    fn every_problem_of_a_tree_is_reported_at_once_with_file_and_line() {
        let dir = tree(&[
            (
                "main.fmf",
                "framework: shell\ntype: integration\n/features:\n  /login:\n    depends: [ghost]\n",
            ),
            (
                "tests/main.fmf",
                "# defaults\nduration: 5m\n/a:\n  test: ./a\n  type: smoke\n  resources:\n    needs: [db]\n    needz: [x]\n/b:\n  test: ./b\n  after: [/nowhere]\n  feature: undeclared\n",
            ),
            (
                "tests/c.fmf",
                "test: ./c\nextra-polarizer-platform:\n  kind: [vm, moon]\nid: same\n",
            ),
            ("tests/d.fmf", "test: ./d\nid: same\nduration: soon\n"),
        ]);
        let report = lint_tree(dir.path(), &Context::new(), LintOptions::default()).unwrap();
        assert_eq!(
            lines(&report),
            [
                "main.fmf:5 error /features/login depends",
                "tests/c.fmf:3 error /tests/c extra-polarizer-platform.kind",
                "tests/d.fmf:2 error /tests/d id",
                "tests/d.fmf:3 warning /tests/d duration",
                "tests/main.fmf:5 error /tests/a type",
                "tests/main.fmf:8 error /tests/a resources.needz",
                "tests/main.fmf:11 error /tests/b after",
                "tests/main.fmf:12 warning /tests/b feature",
            ],
            "{report}"
        );
        assert_eq!((report.errors, report.warnings), (6, 2));
        assert_eq!((report.tests, report.features), (4, 1));
        assert!(report
            .to_string()
            .ends_with("6 errors, 2 warnings in 4 tests and 1 feature"));
        let line = report.diagnostics[1].to_string();
        assert!(
            line.starts_with(
                "tests/c.fmf:3: error: /tests/c: key \"extra-polarizer-platform.kind\""
            ),
            "{line}"
        );
    }

    /// Bare keys are suggested in their lint-clean form once per place they are written.
    #[test]
    fn bare_keys_are_suggested_once_per_place() {
        let dir = tree(&[
            ("main.fmf", "type: unit\n/one:\n  test: ./1\n/two:\n  test: ./2\n  extra-polarizer-feature: f\n  hooks: {setup: ./s}\n/features:\n  /f: {}\n"),
        ]);
        let options = LintOptions {
            suggest_extra_keys: true,
        };
        let report = lint_tree(dir.path(), &Context::new(), options).unwrap();
        assert_eq!(
            lines(&report),
            [
                "main.fmf:1 warning /one type",
                "main.fmf:7 warning /two hooks",
            ],
            "{report}"
        );
        assert!(report.diagnostics[0]
            .message
            .contains("write it as `extra-polarizer-type`"));
        let clean = lint_tree(dir.path(), &Context::new(), LintOptions::default()).unwrap();
        assert_eq!(clean.diagnostics, []);
    }

    /// Never more than the bound, but every problem counted.
    #[test]
    fn the_report_is_bounded() {
        let mut text = String::new();
        for index in 0..150 {
            text.push_str(&format!("/t{index:03}:\n  test: ./x\n  type: smoke\n"));
        }
        let dir = tree(&[("main.fmf", &text)]);
        let report = lint_tree(dir.path(), &Context::new(), LintOptions::default()).unwrap();
        assert_eq!(report.errors, 150);
        assert_eq!(report.diagnostics.len(), MAX_REPORTED);
        assert_eq!(report.diagnostics[0].line, 3);
        assert!(report.summary().contains("50 more"), "{}", report.summary());
    }

    /// A YAML error is placed by the reader itself, every file's at once; a directory that is no
    /// tree is an `Err`.
    #[test]
    fn unreadable_trees() {
        let dir = tree(&[
            ("tests/main.fmf", "test: ./x\n  bad: [\n"),
            ("tests/other.fmf", "test: ./y\n"),
            ("zzz.fmf", "a: 1\na: 2\n"),
        ]);
        let report = lint_tree(dir.path(), &Context::new(), LintOptions::default()).unwrap();
        assert_eq!(report.errors, 2, "{report}");
        assert_eq!(report.diagnostics[0].file, "tests/main.fmf");
        assert!(report.diagnostics[0].line > 0, "{report}");
        assert_eq!(report.diagnostics[1].file, "zzz.fmf", "{report}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            lint_tree(empty.path(), &Context::new(), LintOptions::default()),
            Err(FmfError::MissingRoot { .. })
        ));
    }
}
