//! The coordinator's layers, checked from its source: `core` stays pure (no file system, network,
//! tokio, rusqlite or clock), arrows between folders point one way (cli → core, data_dir, and daemon only
//! where a subcommand starts one; daemon → store, core; store → core; core → nothing), and no file of
//! the coordinator or of `shared` imports a file that imports it back.
//!
//! Module paths are read from `crate::…`, `super::…` and `self::…` paths in the code (comments
//! skipped); `mod x;` declarations are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file as a module path (`store/runs.rs` → `["store", "runs"]`, `store/mod.rs` → `["store"]`).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The code without comments and string literals (a path in a string or a comment is not an import).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal or a lifetime: skip a literal like '"' so it opens no string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\") || rest.chars().nth(1) == Some('\'') {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                }
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path that starts with `root::` in `code`, expanded over `{a, b::c}` groups, as segments.
fn paths_from(code: &str, root: &str) -> Vec<Vec<String>> {
    let needle = format!("{root}::");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = code[from..].find(&needle) {
        let start = from + offset;
        from = start + needle.len();
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        expand(&code[from..], Vec::new(), &mut found);
    }
    found
}

/// Reads `a::b::{c, d::e}` at the start of `text`, pushing each full path after `prefix`.
fn expand(text: &str, prefix: Vec<String>, found: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut index = 0;
    let bytes: Vec<char> = text.chars().collect();
    loop {
        if bytes.get(index) == Some(&'{') {
            index += 1;
            loop {
                while bytes
                    .get(index)
                    .is_some_and(|c| c.is_whitespace() || *c == ',')
                {
                    index += 1;
                }
                if bytes.get(index).is_none_or(|c| *c == '}') {
                    return index + 1;
                }
                let rest: String = bytes[index..].iter().collect();
                index += expand(&rest, path.clone(), found).max(1);
            }
        }
        let start = index;
        while index < bytes.len() && is_ident(bytes[index]) {
            index += 1;
        }
        if index > start {
            path.push(bytes[start..index].iter().collect());
        }
        if bytes[index..].starts_with(&[':', ':']) {
            index += 2;
            continue;
        }
        found.push(path);
        return index;
    }
}

/// The modules a file refers to, resolved to the files that define them (the longest known prefix).
/// `self::` is the file's own module (`x` in `x/mod.rs`, `x::y` in `x/y.rs`), `super::` its parent.
fn imports(module: &[String], code: &str, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut targets = BTreeSet::new();
    let parent = &module[..module.len().saturating_sub(1)];
    let under = |base: &[String], path: Vec<String>| {
        let mut full = base.to_vec();
        full.extend(path);
        full
    };
    // Unit tests sit at the bottom, in `mod tests`: their `super::` is this file, and what they use
    // is not an arrow of the layout.
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let candidates = paths_from(code, "crate")
        .into_iter()
        .chain(
            paths_from(code, "super")
                .into_iter()
                .map(|path| under(parent, path)),
        )
        .chain(
            paths_from(code, "self")
                .into_iter()
                .map(|path| under(module, path)),
        );
    for path in candidates {
        let target = (0..=path.len())
            .rev()
            .map(|length| path[..length].to_vec())
            .find(|prefix| known.contains(prefix));
        if let Some(target) = target {
            // The crate root only declares the modules.
            if target != module && !target.is_empty() {
                targets.insert(target);
            }
        }
    }
    targets
}

struct Source {
    module: Vec<String>,
    path: PathBuf,
    code: String,
}

fn read_sources(root: &Path) -> Vec<Source> {
    let mut sources = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                let text = std::fs::read_to_string(&path).expect("read source");
                sources.push(Source {
                    module: module_of(&relative),
                    path: relative,
                    code: code_only(&text),
                });
            }
        }
    }
    sources.sort_by(|a, b| a.path.cmp(&b.path));
    sources
}

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

fn graph(sources: &[Source]) -> Graph {
    let known: BTreeSet<Vec<String>> = sources.iter().map(|source| source.module.clone()).collect();
    sources
        .iter()
        .filter(|source| source.path != Path::new("main.rs"))
        .map(|source| {
            (
                source.module.clone(),
                imports(&source.module, &source.code, &known),
            )
        })
        .collect()
}

/// One cycle of `graph`, as `a -> b -> a`, if it has any.
fn find_cycle(graph: &Graph) -> Option<String> {
    fn visit(
        node: &Vec<String>,
        graph: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|entry| entry == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new()) {
                let names: Vec<String> = cycle
                    .iter()
                    .map(|module| format!("crate::{}", module.join("::")))
                    .collect();
                return Some(names.join(" -> "));
            }
        }
    }
    None
}

/// Words a file under `core/` may not contain: IO, async runtime, SQL, the clock.
const IMPURE: [&str; 7] = [
    "std::fs",
    "std::net",
    "tokio",
    "rusqlite",
    "SystemTime::now",
    "Instant::now",
    "polarizer_transport",
];

/// Which folders each folder may import (top-level files count as folders of their own).
const ARROWS: [(&str, &[&str]); 5] = [
    ("core", &[]),
    ("store", &["core"]),
    ("daemon", &["store", "core", "data_dir"]),
    ("cli", &["core", "data_dir", "daemon"]),
    ("data_dir", &[]),
];

/// `cli` may reach into `daemon` only to start one (`serve`, `init`, `demo`), from these files, and
/// only these modules of it.
const DAEMON_STARTERS: [&str; 3] = ["cli/mod.rs", "cli/args.rs", "cli/demo.rs"];
const DAEMON_ENTRY_POINTS: [&str; 3] = ["serve", "config", "local_agents"];

fn has_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    }) || (word.starts_with("std::") && {
        // `use std::{fs, …}` and the like.
        let leaf = &word["std::".len()..];
        paths_from(code, "std")
            .iter()
            .any(|path| path.first().is_some_and(|first| first == leaf))
    })
}

/// Every broken rule of the coordinator's layout, one line each.
fn layer_violations(sources: &[Source]) -> Vec<String> {
    let mut problems = Vec::new();
    let graph = graph(sources);
    for source in sources {
        let folder = source.module.first().cloned().unwrap_or_default();
        let path = source.path.display().to_string();
        if folder == "core" {
            for word in IMPURE {
                if has_word(&source.code, word) {
                    problems.push(format!("{path}: core is pure, but this file uses {word}"));
                }
            }
        }
        let Some(targets) = graph.get(&source.module) else {
            continue;
        };
        for target in targets {
            let target_folder = target.first().cloned().unwrap_or_default();
            if target_folder == folder || folder.is_empty() {
                continue;
            }
            let allowed = ARROWS
                .iter()
                .find(|(from, _)| *from == folder)
                .is_some_and(|(_, to)| to.contains(&target_folder.as_str()));
            let name = format!("crate::{}", target.join("::"));
            if !allowed {
                problems.push(format!("{path}: {folder} may not import {name}"));
            } else if folder == "cli" && target_folder == "daemon" {
                let entry = target.get(1).map(String::as_str).unwrap_or("");
                if !DAEMON_STARTERS.contains(&path.as_str())
                    || !DAEMON_ENTRY_POINTS.contains(&entry)
                {
                    problems.push(format!(
                        "{path}: cli reaches {name}; only {DAEMON_STARTERS:?} may, to start a daemon"
                    ));
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("import circle: {cycle}"));
    }
    problems
}

fn crate_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn the_coordinator_keeps_its_layers() {
    let problems = layer_violations(&read_sources(&crate_dir("coordinator")));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn shared_has_no_import_circles() {
    let sources = read_sources(&crate_dir("shared"));
    assert_eq!(find_cycle(&graph(&sources)), None);
}

/// The checks themselves catch what they are for.
#[test]
fn each_rule_fires_on_a_file_that_breaks_it() {
    let source = |path: &str, code: &str| Source {
        module: module_of(Path::new(path)),
        path: PathBuf::from(path),
        code: code_only(code),
    };
    let base = || {
        vec![
            source("core/mod.rs", "pub mod run;"),
            source("core/run.rs", "use polarizer_shared::run::TestStatus;"),
            source("store/mod.rs", "mod runs;"),
            source("store/runs.rs", "use crate::core::run::SuiteState;"),
            source("daemon/mod.rs", "pub mod serve; pub mod scheduler;"),
            source("daemon/serve.rs", "use crate::store::runs;"),
            source("daemon/scheduler.rs", "use crate::core::run;"),
            source("cli/mod.rs", "use crate::daemon::serve::run;"),
            source("cli/runs.rs", "// crate::store::runs in a comment is no import\nfn f() { let _ = \"crate::daemon::x\"; }"),
        ]
    };
    assert_eq!(layer_violations(&base()), Vec::<String>::new());
    let broken = [
        (
            "core/run.rs",
            "fn now() { std::time::SystemTime::now(); }",
            "uses SystemTime::now",
        ),
        (
            "core/run.rs",
            "use std::{collections::BTreeMap, fs};",
            "uses std::fs",
        ),
        (
            "core/run.rs",
            "async fn f() { tokio::task::yield_now().await }",
            "uses tokio",
        ),
        ("core/run.rs", "use rusqlite::Connection;", "uses rusqlite"),
        (
            "core/run.rs",
            "fn f() { std::time::Instant::now(); }",
            "uses Instant::now",
        ),
        (
            "core/run.rs",
            "use crate::store::runs;",
            "core may not import crate::store::runs",
        ),
        (
            "store/runs.rs",
            "use crate::daemon::scheduler;",
            "store may not import crate::daemon::scheduler",
        ),
        (
            "cli/runs.rs",
            "use crate::store::runs::Effect;",
            "cli may not import crate::store::runs",
        ),
        (
            "cli/runs.rs",
            "use crate::daemon::{scheduler, serve};",
            "cli reaches crate::daemon::scheduler",
        ),
        (
            "cli/runs.rs",
            "fn f() { crate::daemon::serve::run(); }",
            "cli reaches crate::daemon::serve",
        ),
        (
            "daemon/scheduler.rs",
            "use crate::daemon::serve::X;",
            "import circle",
        ),
    ];
    for (path, code, expected) in broken {
        let mut sources = base();
        if path == "daemon/scheduler.rs" {
            // serve imports scheduler, scheduler imports serve.
            sources.retain(|source| source.path != Path::new("daemon/serve.rs"));
            sources.push(source("daemon/serve.rs", "use super::scheduler::step;"));
        }
        sources.retain(|source| source.path != Path::new(path));
        sources.push(source(path, code));
        let problems = layer_violations(&sources);
        assert!(
            problems.iter().any(|problem| problem.contains(expected)),
            "{path}: {code:?} should report {expected:?}, got {problems:?}"
        );
    }
}
