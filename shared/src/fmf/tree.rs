//! Growing an fmf tree from disk and resolving inheritance, step for step as Python fmf's `Tree` does.
//!
//! Growing walks directories: `main.fmf` is the directory's own node, `x.fmf` a child `/x`, sub-directories
//! children too (one holding its own `.fmf` is a separate tree and skipped), hidden names are ignored, and a
//! directory that yields no data is dropped. Keys starting with `/` make in-file children. Inheritance then
//! merges each node's own data over a copy of its parent's, top-down.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use super::adjust::{adjust_node_data, AdjustOptions, ConditionCache};
use super::condition::Context;
use super::error::FmfError;
use super::merge::merge_special;
use super::quote::snippet;
use super::value::{FmfMap, FmfValue};
use super::yaml::parse_fmf_file;

const FMF_SUFFIX: &str = ".fmf";
const MAIN_FILE: &str = "main.fmf";
/// The deepest `/a/b/c` child key accepted, to bound recursion on hostile input.
const MAX_NAME_SEGMENTS: usize = 256;

/// One node of a loaded tree, with its data after inheritance (and after `adjust`, once applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    name: String,
    data: FmfMap,
    /// Shared with the parent's and siblings' lists: a tree has far more nodes than files.
    sources: Vec<Arc<Path>>,
    child_names: Vec<String>,
    selected: bool,
}

impl Node {
    /// The node name, `/` for the root, e.g. `/tests/register/basic`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data(&self) -> &FmfMap {
        &self.data
    }

    pub fn get(&self, key: &str) -> Option<&FmfValue> {
        self.data.get(key)
    }

    /// The files this node's data came from, parents' first (fmf's `sources`).
    pub fn sources(&self) -> &[Arc<Path>] {
        &self.sources
    }

    /// Full names of the direct children, sorted.
    pub fn child_names(&self) -> &[String] {
        &self.child_names
    }

    pub fn is_leaf(&self) -> bool {
        self.child_names.is_empty()
    }

    /// Whether fmf's `climb()` yields this node: a leaf, unless the `select` directive says otherwise.
    pub fn is_selected(&self) -> bool {
        self.selected
    }

    /// Apply the node's `adjust` rules; `context` already carries the case sensitivity.
    fn adjust(
        &mut self,
        root: &Path,
        context: &Context,
        options: &AdjustOptions,
        conditions: &mut ConditionCache,
    ) -> Result<(), FmfError> {
        let blame_path = self.blame_path(root);
        adjust_node_data(
            &mut self.data,
            context,
            options,
            &self.name,
            &blame_path,
            conditions,
        )
    }

    /// The file errors about this node name: the last one its data came from.
    fn blame_path(&self, root: &Path) -> PathBuf {
        self.sources
            .last()
            .map_or_else(|| root.to_owned(), |path| path.to_path_buf())
    }
}

/// An fmf metadata tree: every node in `climb(whole=True)` order (pre-order, children sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    root: PathBuf,
    version: u32,
    nodes: Vec<Node>,
}

impl Tree {
    /// Load the tree whose root directory (holding `.fmf/version`) is `root`.
    pub fn load(root: impl AsRef<Path>) -> Result<Tree, FmfError> {
        let grown = GrownTree::grow(root.as_ref())?;
        let nodes = grown.builder.inherit(grown.root_id)?;
        Ok(Tree {
            root: grown.builder.root,
            version: grown.version,
            nodes,
        })
    }

    /// What [`load`](Self::load) and [`adjust_with`](Self::adjust_with) give, node by node, without
    /// keeping the tree: each node, inherited and adjusted, goes to `visit` (on every core, in no set
    /// order) and is dropped; the results come back in `nodes()` order. For large trees read once, this
    /// needs a fraction of the time and memory. Errors are the ones `load` and `adjust_with` report.
    pub fn load_and_visit<T: Send>(
        root: impl AsRef<Path>,
        context: &Context,
        options: &AdjustOptions,
        visit: impl Fn(&Node) -> T + Sync,
    ) -> Result<Vec<T>, FmfError> {
        let grown = GrownTree::grow(root.as_ref())?;
        let builder = &grown.builder;
        let steps = builder.climb_order(grown.root_id);
        // Nodes with children are inherited first, in order: their children start from them.
        let mut parents: Vec<Option<Inherited>> = vec![None; steps.len()];
        let mut failed = false;
        for (position, step) in steps.iter().enumerate() {
            if !step.child_names.is_empty() {
                let parent = step.parent.and_then(|parent| parents[parent].as_ref());
                match builder.inherit_one(step, parent) {
                    Ok(inherited) => parents[position] = Some(inherited),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        let context = context.clone().case_sensitive(options.case_sensitive);
        let visited = if failed {
            Vec::new()
        } else {
            let positions: Vec<usize> = (0..steps.len()).collect();
            crate::parallel::parallel_map_with(
                &positions,
                ConditionCache::default,
                |conditions, &position| -> Result<T, FmfError> {
                    let step = &steps[position];
                    let (data, sources) = match &parents[position] {
                        Some(inherited) => inherited.clone(),
                        None => builder.inherit_one(
                            step,
                            step.parent.and_then(|parent| parents[parent].as_ref()),
                        )?,
                    };
                    let mut node = builder.node_at(step, data, sources);
                    node.adjust(&builder.root, &context, options, conditions)?;
                    Ok(visit(&node))
                },
            )
        };
        if failed || visited.iter().any(Result::is_err) {
            // Which error comes first is what the sequential reading decides: do it that way.
            drop(visited);
            let mut tree = Tree {
                nodes: builder.inherit(grown.root_id)?,
                root: grown.builder.root.clone(),
                version: grown.version,
            };
            tree.adjust_with(&context, options)?;
            return Ok(tree.nodes.iter().map(visit).collect());
        }
        let visited = visited.into_iter().collect();
        crate::parallel::drop_elsewhere(grown);
        visited
    }

    /// Every `.fmf` file of the tree at `root` that cannot be read or parsed (YAML syntax, an alias
    /// bomb, not UTF-8), in reading order: what a report lists when [`load`](Self::load) stops at the
    /// first. Reads what `load` would (no symlink, hidden name or nested tree).
    pub fn file_errors(root: impl AsRef<Path>) -> Vec<FmfError> {
        let root = std::path::absolute(root.as_ref()).unwrap_or_else(|_| root.as_ref().to_owned());
        fmf_files(&root)
            .iter()
            .filter_map(|path| read_fmf_file(path).err())
            .collect()
    }

    /// Find the tree root at or above `path` (the nearest directory holding `.fmf/version`), as fmf does.
    pub fn find_root(path: impl AsRef<Path>) -> Result<PathBuf, FmfError> {
        let start = std::path::absolute(path.as_ref()).unwrap_or_else(|_| path.as_ref().to_owned());
        start
            .ancestors()
            .find(|candidate| candidate.join(".fmf").join("version").is_file())
            .map(Path::to_owned)
            .ok_or(FmfError::MissingRoot { path: start })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The format version from `.fmf/version`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every node, root first, in fmf's `climb(whole=True)` order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node named `name`. A linear scan: for many lookups, index `nodes()` by name once.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Nodes without children.
    pub fn leaves(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.is_leaf())
    }

    /// The nodes fmf's `climb()` yields: leaves, adjusted by the `select` directive.
    pub fn selected(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.selected)
    }

    /// Test nodes as tmt finds them: selected nodes that have a `test` key.
    pub fn tests(&self) -> impl Iterator<Item = &Node> {
        self.selected()
            .filter(|node| node.data.contains_key("test"))
    }

    /// Apply every node's `adjust` rules for `context`, with fmf's defaults (case-sensitive, undecidable
    /// rules skipped).
    pub fn adjust(&mut self, context: &Context) -> Result<(), FmfError> {
        self.adjust_with(context, &AdjustOptions::default())
    }

    pub fn adjust_with(
        &mut self,
        context: &Context,
        options: &AdjustOptions,
    ) -> Result<(), FmfError> {
        let root = self.root.clone();
        let context = context.clone().case_sensitive(options.case_sensitive);
        let mut conditions = ConditionCache::default();
        for node in &mut self.nodes {
            node.adjust(&root, &context, options, &mut conditions)?;
        }
        Ok(())
    }
}

/// A tree read from disk with every node's own data, before inheritance.
struct GrownTree {
    builder: TreeBuilder,
    root_id: usize,
    version: u32,
}

impl GrownTree {
    fn grow(root: &Path) -> Result<GrownTree, FmfError> {
        let version_path = root.join(".fmf").join("version");
        if !version_path.is_file() {
            return Err(FmfError::MissingRoot {
                path: root.to_owned(),
            });
        }
        let canonical_root = fs::canonicalize(root).map_err(|source| FmfError::Read {
            path: root.to_owned(),
            source,
        })?;
        refuse_symlink_out(&canonical_root, &version_path)?;
        let version = read_version(&version_path)?;
        let absolute_root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());

        let explore_include = read_explore_include(&absolute_root, &canonical_root)?;
        let mut builder = TreeBuilder {
            root: absolute_root.clone(),
            canonical_root,
            nodes: Vec::new(),
            symlink_targets: Vec::new(),
            explore_include,
        };
        let root_id = builder.new_node("/".to_owned());
        // Files are parsed on every core while the tree grows, mostly ahead of it.
        let files = fmf_files(&absolute_root);
        crate::parallel::map_while_consuming(
            &files,
            |path| read_fmf_file(path),
            |arrivals| {
                let mut preparsed = Preparsed {
                    places: files.iter().cloned().zip(0..).collect(),
                    arrivals,
                };
                builder.grow(root_id, &absolute_root, &mut preparsed)
            },
        )?;
        Ok(GrownTree {
            builder,
            root_id,
            version,
        })
    }
}

/// A node's place in climb order, before its data is worked out.
struct Step {
    id: usize,
    /// The parent's position in the climb order.
    parent: Option<usize>,
    child_names: Vec<String>,
    selected: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Directives {
    inherit: Option<bool>,
    select: Option<bool>,
}

/// A node while the tree grows: its own data only, before inheritance.
struct GrowingNode {
    name: String,
    children: IndexMap<String, usize>,
    own_data: FmfMap,
    own_sources: Vec<Arc<Path>>,
    /// Set once any data (even an empty file) was given; directories that never get data are dropped.
    updated: bool,
    directives: Directives,
}

struct TreeBuilder {
    root: PathBuf,
    /// `root` with every symlink resolved: no file or directory outside it is read.
    canonical_root: PathBuf,
    nodes: Vec<GrowingNode>,
    /// Resolved targets of symlinked directories already entered, to stop symlink loops.
    symlink_targets: Vec<PathBuf>,
    /// Hidden names `.fmf/config` asks to explore anyway (`explore: include: [...]`). A malformed setting
    /// is an error only once a hidden name is met, which is when Python fmf reads it.
    explore_include: Result<Vec<String>, FmfError>,
}

/// Files read and parsed on other threads while the tree grows. Growing takes each when it reaches it,
/// in its own order, so errors surface exactly where a sequential read would meet them.
struct Preparsed<'p, 'a> {
    /// Each file's place among the arrivals; taken out with its result.
    places: foldhash::HashMap<PathBuf, usize>,
    arrivals: &'p mut crate::parallel::Arrivals<'a, PathBuf, Result<FmfValue, FmfError>>,
}

impl Preparsed<'_, '_> {
    /// The file's result; `None` for a file not in the list (growing reads it).
    fn take(&mut self, path: &Path) -> Option<Result<FmfValue, FmfError>> {
        let place = self.places.remove(path)?;
        self.arrivals.take(place)
    }
}

/// The `.fmf` files growing will most likely read (outside hidden names, symlinked directories and nested
/// trees), in the order it reads them: a directory's files by name with `main.fmf` first, then its
/// sub-directories by name, each in turn.
fn fmf_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut directories = vec![root.to_owned()];
    while let Some(directory) = directories.pop() {
        let Ok(entries) = fs::read_dir(&directory) else {
            continue;
        };
        let (mut file_names, mut directory_names) = (Vec::new(), Vec::new());
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match entry.file_type() {
                // A directory holding its own `.fmf` is a separate tree.
                Ok(kind) if kind.is_dir() && !entry.path().join(FMF_SUFFIX).is_dir() => {
                    directory_names.push(name);
                }
                Ok(kind) if kind.is_file() && name.ends_with(FMF_SUFFIX) => file_names.push(name),
                _ => {}
            }
        }
        file_names.sort();
        if let Some(main) = file_names.iter().position(|name| name == MAIN_FILE) {
            file_names[..=main].rotate_right(1);
        }
        files.extend(file_names.iter().map(|name| directory.join(name)));
        directory_names.sort();
        directories.extend(
            directory_names
                .iter()
                .rev()
                .map(|name| directory.join(name)),
        );
    }
    files
}

/// The longest `.fmf/version` read: a version is a small number.
const VERSION_MAX_BYTES: u64 = 1024;

/// Refuse `path` when, with every symlink on the way resolved, it lies outside the tree whose resolved root
/// is `canonical_root`; else its resolved form. A path that does not resolve (a dangling link) is `None`,
/// left to the read that follows, which fails on it without reading anything.
fn refuse_symlink_out(canonical_root: &Path, path: &Path) -> Result<Option<PathBuf>, FmfError> {
    match fs::canonicalize(path) {
        Ok(target) if !target.starts_with(canonical_root) => Err(FmfError::SymlinkOutsideTree {
            path: path.to_owned(),
        }),
        Ok(target) => Ok(Some(target)),
        Err(_) => Ok(None),
    }
}

/// The format version in `.fmf/version`. An error quotes only the start of the file.
fn read_version(version_path: &Path) -> Result<u32, FmfError> {
    let read_error = |source| FmfError::Read {
        path: version_path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    fs::File::open(version_path)
        .and_then(|file| file.take(VERSION_MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    let invalid = |text: &str| FmfError::InvalidVersion {
        path: version_path.to_owned(),
        snippet: snippet(text),
    };
    if bytes.len() as u64 > VERSION_MAX_BYTES {
        return Err(invalid(&String::from_utf8_lossy(&bytes)));
    }
    let text = String::from_utf8(bytes)
        .map_err(|error| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, error)))?;
    super::condition::python_strip(&text)
        .parse::<u32>()
        .map_err(|_| invalid(&text))
}

/// Read and parse one `.fmf` file.
fn read_fmf_file(path: &Path) -> Result<FmfValue, FmfError> {
    let text = fs::read(path).map_err(|source| FmfError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(text).map_err(|error| FmfError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    })?;
    parse_fmf_file(path, &text)
}

/// Read `explore.include` from the tree's `.fmf/config`, if there is one.
fn read_explore_include(
    root: &Path,
    canonical_root: &Path,
) -> Result<Result<Vec<String>, FmfError>, FmfError> {
    let config_path = root.join(".fmf").join("config");
    refuse_symlink_out(canonical_root, &config_path)?;
    let text = match fs::read(&config_path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|error| FmfError::Read {
            path: config_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(Vec::new())),
        Err(source) => {
            return Err(FmfError::Read {
                path: config_path,
                source,
            })
        }
    };
    let config = parse_fmf_file(&config_path, &text)?;
    let invalid = |message: &str| {
        Err(FmfError::Format {
            path: config_path.clone(),
            node: "/".to_owned(),
            message: message.to_owned(),
        })
    };
    let FmfValue::Map(config) = config else {
        return Ok(invalid("the config should be a mapping"));
    };
    let include = match config.get("explore") {
        None => return Ok(Ok(Vec::new())),
        Some(FmfValue::Map(explore)) => explore.get("include"),
        Some(_) => return Ok(invalid("the 'explore' config section should be a mapping")),
    };
    Ok(match include {
        None => Ok(Vec::new()),
        Some(FmfValue::List(names)) if names.iter().any(|name| name.as_str() == Some(".fmf")) => {
            invalid("The '.fmf' directory cannot be used for storing fmf metadata.")
        }
        Some(FmfValue::List(names)) => Ok(names
            .iter()
            .filter_map(FmfValue::as_str)
            .map(str::to_owned)
            .collect()),
        Some(other) => invalid(&format!(
            "The 'include' config section should be a list, found {}.",
            snippet(&other.python_str())
        )),
    })
}

/// A parent's final data and sources, handed down to a child during inheritance.
type Inherited = (FmfMap, Vec<Arc<Path>>);

/// Python's `os.path.join(parent, name)` for node names.
fn join_node_name(parent: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_owned()
    } else if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

impl TreeBuilder {
    fn new_node(&mut self, name: String) -> usize {
        self.nodes.push(GrowingNode {
            name,
            children: IndexMap::new(),
            own_data: FmfMap::default(),
            own_sources: Vec::new(),
            updated: false,
            directives: Directives::default(),
        });
        self.nodes.len() - 1
    }

    fn format_error(&self, node_id: usize, path: &Path, message: impl Into<String>) -> FmfError {
        FmfError::Format {
            path: path.to_owned(),
            node: self.nodes[node_id].name.clone(),
            message: message.into(),
        }
    }

    /// Child `name` of `parent_id`, created if new.
    fn child_id(&mut self, parent_id: usize, name: &str) -> usize {
        match self.nodes[parent_id].children.get(name) {
            Some(existing) => *existing,
            None => {
                let full_name = join_node_name(&self.nodes[parent_id].name, name);
                let created = self.new_node(full_name);
                self.nodes[parent_id]
                    .children
                    .insert(name.to_owned(), created);
                created
            }
        }
    }

    /// Create or extend child `name` of `parent_id` with `data` (fmf's `Tree.child`; a directory's
    /// child is grown instead).
    fn child(
        &mut self,
        parent_id: usize,
        name: &str,
        data: FmfValue,
        source: Option<&Path>,
        blame_path: &Path,
    ) -> Result<(), FmfError> {
        let child_id = self.child_id(parent_id, name);
        self.update(child_id, data, blame_path)?;
        if let Some(source) = source {
            self.nodes[child_id].own_sources.push(Arc::from(source));
        }
        Ok(())
    }

    /// Add data to a node, creating in-file children for `/key`s (fmf's `Tree.update`).
    fn update(
        &mut self,
        node_id: usize,
        data: FmfValue,
        blame_path: &Path,
    ) -> Result<(), FmfError> {
        self.nodes[node_id].updated = true;
        let mut data = match data {
            FmfValue::Null => return Ok(()),
            FmfValue::Map(map) => std::sync::Arc::unwrap_or_clone(map),
            // Python fmf fails on a list or number here; a bare string it would even take for a directory
            // path relative to its working directory. Both are refused.
            other => {
                return Err(self.format_error(
                    node_id,
                    blame_path,
                    format!("node data must be a mapping, got a '{}'", other.type_name()),
                ))
            }
        };
        if let Some(directives) = data.shift_remove("/") {
            self.process_directives(node_id, directives, blame_path)?;
        }
        for (key, value) in data {
            let Some(child_name) = key.strip_prefix('/') else {
                self.nodes[node_id].own_data.insert(key, value);
                continue;
            };
            // fmf strips every leading slash, then splits `/one/two/three` at its first slash into a child
            // `one` holding `{"/two/three": value}` (its regex `(/.*)` stops at a newline).
            let child_name = child_name.trim_start_matches('/');
            // Each level recurses through child() and update(); Python runs out of recursion far sooner.
            if child_name.matches('/').count() > MAX_NAME_SEGMENTS {
                return Err(self.format_error(
                    node_id,
                    blame_path,
                    format!("child key nests more than {MAX_NAME_SEGMENTS} levels deep"),
                ));
            }
            match child_name.find('/') {
                Some(slash) if slash > 0 => {
                    let rest = &child_name[slash..];
                    let rest = rest.split('\n').next().unwrap_or(rest);
                    let mut nested = FmfMap::default();
                    nested.insert(rest.into(), value);
                    let name = child_name[..slash].to_owned();
                    self.child(node_id, &name, FmfValue::map(nested), None, blame_path)?;
                }
                _ => self.child(node_id, child_name, value, None, blame_path)?,
            }
        }
        Ok(())
    }

    /// Check and store `/:` directives (`inherit`, `select`, both booleans).
    fn process_directives(
        &mut self,
        node_id: usize,
        directives: FmfValue,
        blame_path: &Path,
    ) -> Result<(), FmfError> {
        let FmfValue::Map(directives) = directives else {
            return Err(self.format_error(
                node_id,
                blame_path,
                format!(
                    "Invalid fmf directive: Should be a 'dict', got a '{}' instead.",
                    directives.type_name()
                ),
            ));
        };
        let mut parsed = self.nodes[node_id].directives;
        for (key, value) in directives.iter() {
            let FmfValue::Bool(flag) = value else {
                if &**key == "inherit" || &**key == "select" {
                    return Err(self.format_error(
                        node_id,
                        blame_path,
                        format!("Invalid fmf directive '{key}': Should be a 'bool', got a '{}' instead.", value.type_name()),
                    ));
                }
                return Err(self.format_error(
                    node_id,
                    blame_path,
                    format!("Unknown fmf directive {}.", snippet(key)),
                ));
            };
            match &**key {
                "inherit" => parsed.inherit = Some(*flag),
                "select" => parsed.select = Some(*flag),
                _ => {
                    return Err(self.format_error(
                        node_id,
                        blame_path,
                        format!("Unknown fmf directive {}.", snippet(key)),
                    ))
                }
            }
        }
        self.nodes[node_id].directives = parsed;
        Ok(())
    }

    /// Hidden names (a leading dot) are skipped unless `.fmf/config` includes them.
    fn is_ignored_hidden(&self, name: &str) -> Result<bool, FmfError> {
        if !name.starts_with('.') {
            return Ok(false);
        }
        match &self.explore_include {
            Ok(included) => Ok(!included.iter().any(|included_name| included_name == name)),
            Err(FmfError::Format {
                path,
                node,
                message,
            }) => Err(FmfError::Format {
                path: path.clone(),
                node: node.clone(),
                message: message.clone(),
            }),
            Err(other) => Err(FmfError::Format {
                path: self.root.join(".fmf").join("config"),
                node: "/".to_owned(),
                message: other.to_string(),
            }),
        }
    }

    /// Read a directory into `node_id` (fmf's `Tree.grow`).
    fn grow(
        &mut self,
        node_id: usize,
        directory: &Path,
        preparsed: &mut Preparsed<'_, '_>,
    ) -> Result<(), FmfError> {
        // fmf skips a directory it cannot list rather than failing.
        let Ok(entries) = fs::read_dir(directory) else {
            return Ok(());
        };
        // Each name with whether it is a symlink (from the directory listing: no extra system call).
        let mut file_names: Vec<(String, bool)> = Vec::new();
        let mut directory_names: Vec<(String, bool)> = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                // A name that is not UTF-8 cannot be a node name; fmf metadata never has one.
                continue;
            };
            // An entry of unknown type is checked as a symlink would be.
            let is_symlink = entry.file_type().map_or(true, |kind| kind.is_symlink());
            // Like os.walk, classify through symlinks: a link to a directory is a directory.
            let is_directory = match entry.file_type() {
                Ok(kind) if !kind.is_symlink() => kind.is_dir(),
                _ => entry.path().is_dir(),
            };
            if is_directory {
                directory_names.push((name, is_symlink));
            } else {
                file_names.push((name, is_symlink));
            }
        }
        let mut fmf_files: Vec<(String, bool)> = file_names
            .into_iter()
            .filter(|(name, _)| name.ends_with(FMF_SUFFIX))
            .collect();
        fmf_files.sort();
        // main.fmf first, so the directory's own data is there before any child inherits from it.
        if let Some(position) = fmf_files.iter().position(|(name, _)| name == MAIN_FILE) {
            let main = fmf_files.remove(position);
            fmf_files.insert(0, main);
        }
        for (file_name, is_symlink) in fmf_files {
            if self.is_ignored_hidden(&file_name)? {
                continue;
            }
            let full_path = directory.join(&file_name);
            // A directory reached here lies inside the tree, so only a symlink can lead out of it.
            if is_symlink {
                refuse_symlink_out(&self.canonical_root, &full_path)?;
            }
            let data = match preparsed.take(&full_path) {
                Some(parsed) => parsed?,
                None => read_fmf_file(&full_path)?,
            };
            if file_name == MAIN_FILE {
                self.nodes[node_id]
                    .own_sources
                    .push(Arc::from(full_path.as_path()));
                self.update(node_id, data, &full_path)?;
            } else {
                let stem = &file_name[..file_name.len() - FMF_SUFFIX.len()];
                self.child(node_id, stem, data, Some(&full_path), &full_path)?;
            }
        }

        directory_names.sort();
        for (directory_name, is_symlink) in directory_names {
            if self.is_ignored_hidden(&directory_name)? {
                continue;
            }
            let full_directory = directory.join(&directory_name);
            if is_symlink {
                // Refused rather than skipped: a tree that silently loses the tests behind a link is worse
                // than one that says which link to fix.
                let target = refuse_symlink_out(&self.canonical_root, &full_directory)?
                    .unwrap_or_else(|| full_directory.clone());
                if self.symlink_targets.contains(&target) {
                    continue;
                }
                self.symlink_targets.push(target);
            }
            // A directory with its own .fmf is a separate tree.
            if full_directory.join(FMF_SUFFIX).is_dir() {
                continue;
            }
            let child_id = self.child_id(node_id, &directory_name);
            self.grow(child_id, &full_directory, preparsed)?;
        }

        // Drop children that got neither data nor children (directories without metadata).
        let child_ids: Vec<(String, usize)> = self.nodes[node_id]
            .children
            .iter()
            .map(|(name, id)| (name.clone(), *id))
            .collect();
        for (name, child_id) in child_ids {
            let child = &self.nodes[child_id];
            if child.children.is_empty() && !child.updated {
                self.nodes[node_id].children.shift_remove(&name);
            }
        }
        Ok(())
    }

    /// Every node in `climb(whole=True)` order (pre-order, children sorted by name), with its parent.
    fn climb_order(&self, root_id: usize) -> Vec<Step> {
        let mut steps = Vec::with_capacity(self.nodes.len());
        // An explicit stack keeps deep trees off the call stack.
        let mut pending: Vec<(usize, Option<usize>)> = vec![(root_id, None)];
        while let Some((node_id, parent)) = pending.pop() {
            let growing = &self.nodes[node_id];
            let mut children: Vec<(&String, &usize)> = growing.children.iter().collect();
            children.sort_by(|a, b| a.0.cmp(b.0));
            let position = steps.len();
            // Pushed in reverse so the stack pops children in sorted order.
            for (_, child_id) in children.iter().rev() {
                pending.push((**child_id, Some(position)));
            }
            steps.push(Step {
                id: node_id,
                parent,
                child_names: children
                    .iter()
                    .map(|(_, id)| self.nodes[**id].name.clone())
                    .collect(),
                selected: growing.directives.select.unwrap_or(children.is_empty()),
            });
        }
        steps
    }

    /// A node's data and sources after inheritance: its own merged over its parent's (unless it says
    /// `inherit: false`).
    fn inherit_one(&self, step: &Step, parent: Option<&Inherited>) -> Result<Inherited, FmfError> {
        let growing = &self.nodes[step.id];
        let (mut data, mut sources) = match parent {
            Some(parent) if growing.directives.inherit != Some(false) => parent.clone(),
            _ => (FmfMap::default(), Vec::new()),
        };
        sources.extend(growing.own_sources.iter().cloned());
        merge_special(&mut data, &growing.own_data).map_err(|failure| FmfError::Merge {
            path: sources
                .last()
                .map_or_else(|| self.root.clone(), |path| path.to_path_buf()),
            node: growing.name.clone(),
            key: failure.key,
            reason: failure.reason,
        })?;
        Ok((data, sources))
    }

    fn node_at(&self, step: &Step, data: FmfMap, sources: Vec<Arc<Path>>) -> Node {
        Node {
            name: self.nodes[step.id].name.clone(),
            data,
            sources,
            child_names: step.child_names.clone(),
            selected: step.selected,
        }
    }

    /// Resolve inheritance top-down and lay the nodes out in `climb(whole=True)` order.
    fn inherit(&self, root_id: usize) -> Result<Vec<Node>, FmfError> {
        let steps = self.climb_order(root_id);
        let mut inherited: Vec<Inherited> = Vec::with_capacity(steps.len());
        for step in &steps {
            let parent = step.parent.map(|parent| &inherited[parent]);
            let own = self.inherit_one(step, parent)?;
            inherited.push(own);
        }
        Ok(steps
            .iter()
            .zip(inherited)
            .map(|(step, (data, sources))| self.node_at(step, data, sources))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_join_like_os_path_join() {
        assert_eq!(join_node_name("/", "tests"), "/tests");
        assert_eq!(join_node_name("/tests", "basic"), "/tests/basic");
        assert_eq!(join_node_name("/tests", ""), "/tests/");
    }

    fn write_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
        for (relative, content) in files.iter().chain(&[(".fmf/version", "1\n")]) {
            let path = directory.path().join(relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).unwrap_or_else(|error| panic!("{error}"));
            }
            fs::write(&path, content).unwrap_or_else(|error| panic!("{error}"));
        }
        directory
    }

    #[test]
    fn inheritance_directives_and_tests() {
        let directory = write_tree(&[
            ("main.fmf", "tag: [a]\ntest: ./run.sh\n"),
            ("one.fmf", "tag+: [b]\n/deep:\n    tag+: [c]\n"),
            ("alone.fmf", "/:\n    inherit: false\nsummary: alone\n"),
            ("empty-dir/notes.txt", "x"),
        ]);
        let tree = Tree::load(directory.path()).unwrap_or_else(|error| panic!("{error}"));
        let names: Vec<&str> = tree.nodes().iter().map(Node::name).collect();
        assert_eq!(names, ["/", "/alone", "/one", "/one/deep"]);
        let deep = tree
            .node("/one/deep")
            .unwrap_or_else(|| panic!("no /one/deep"));
        let tags: Vec<String> = deep
            .get("tag")
            .map(FmfValue::python_str)
            .into_iter()
            .collect();
        assert_eq!(tags, ["['a', 'b', 'c']"]);
        let tests: Vec<&str> = tree.tests().map(Node::name).collect();
        assert_eq!(tests, ["/one/deep"]);
        assert!(tree
            .node("/alone")
            .is_some_and(|node| node.get("tag").is_none()));
    }

    #[test]
    fn errors_name_the_file_and_node() {
        let directory = write_tree(&[("main.fmf", "tag: [a]\n"), ("bad.fmf", "tag+: text\n")]);
        let error = Tree::load(directory.path())
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        let message = error.to_string();
        assert!(
            message.contains("bad.fmf") && message.contains("/bad"),
            "{message}"
        );
        let directory = write_tree(&[("main.fmf", "a: [\n")]);
        let message = Tree::load(directory.path())
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(message.contains("main.fmf:2:1"), "{message}");
    }

    /// A tree big enough to be read on several threads: every node and every error as the sequential
    /// path (load, then adjust_with) gives them.
    #[test]
    fn load_and_visit_matches_load_then_adjust() {
        let mut files: Vec<(String, String)> =
            vec![("main.fmf".into(), "tag: [all]\nduration: 5m\n".into())];
        for directory in 0..30 {
            files.push((
                format!("d{directory:02}/main.fmf"),
                format!(
                    "tag+: [d{directory}]\nadjust:\n  - when: distro < rhel-9\n    enabled: false\n  - when: arch == x86_64\n    tag+: [x86]\n"
                ),
            ));
            for test in 0..20 {
                files.push((
                    format!("d{directory:02}/t{test:02}.fmf"),
                    format!("test: ./t{test}.sh\ntag+: [t{test}]\n/sub:\n    summary: s{test}\n"),
                ));
            }
        }
        let context = Context::new()
            .with_dimension("distro", ["rhel-8.4"])
            .with_dimension("arch", ["x86_64"]);
        let options = AdjustOptions::default();
        let compare = |files: &[(String, String)]| {
            let borrowed: Vec<(&str, &str)> = files
                .iter()
                .map(|(path, text)| (path.as_str(), text.as_str()))
                .collect();
            let directory = write_tree(&borrowed);
            let sequential = Tree::load(directory.path())
                .and_then(|mut tree| {
                    tree.adjust_with(&context, &options)?;
                    Ok(tree)
                })
                .map(|tree| {
                    tree.nodes()
                        .iter()
                        .map(|node| format!("{node:?}"))
                        .collect::<Vec<_>>()
                })
                .map_err(|error| error.to_string());
            let visited = Tree::load_and_visit(directory.path(), &context, &options, |node| {
                format!("{node:?}")
            })
            .map_err(|error| error.to_string());
            assert_eq!(visited, sequential);
            visited
        };
        let nodes = compare(&files).unwrap_or_else(|error| panic!("{error}"));
        assert!(nodes.len() > 1200, "{} nodes", nodes.len());
        // A bad condition in one leaf and a bad merge in a later one: the merge error wins, as inheritance
        // runs over the whole tree before any adjusting.
        let mut broken = files.clone();
        broken[200].1.push_str("adjust:\n  when: 'distro ='\n");
        let adjust_error = compare(&broken).err().unwrap_or_default();
        assert!(adjust_error.contains("/t"), "{adjust_error}");
        broken[500].1.push_str("duration+: [1]\n");
        let merge_error = compare(&broken).err().unwrap_or_default();
        assert_ne!(merge_error, adjust_error);
    }

    #[test]
    fn overly_deep_child_keys_are_refused() {
        let key = "/a".repeat(MAX_NAME_SEGMENTS + 2);
        let directory = write_tree(&[("main.fmf", &format!("{key}: {{x: 1}}\n"))]);
        assert!(Tree::load(directory.path()).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        #[test]
        fn arbitrary_file_contents_never_panic(
            main in "[ -~\n]{0,80}",
            child in r"(/[a-z]{1,3}:\n)?([a-z+~<-]{1,4}: (\[a\]|[a-z0-9]{0,3}|\{[a-z]: 1\}|/a/b/)\n){0,4}",
        ) {
            let directory = write_tree(&[("main.fmf", &main), ("child.fmf", &child)]);
            if let Ok(mut tree) = Tree::load(directory.path()) {
                let context = Context::new().with_dimension("distro", ["fedora-33"]);
                let _ = tree.adjust(&context);
            }
        }
    }

    /// A secret outside the tree, as a coordinator's data directory holds one.
    const SECRET: &str =
        "-----BEGIN PRIVATE KEY-----\nMIIEvSECRETLINE\n-----END PRIVATE KEY-----\n";

    fn secret_outside() -> (tempfile::TempDir, PathBuf) {
        let outside = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
        let secret = outside.path().join("ca-key.pem");
        fs::write(&secret, SECRET).unwrap_or_else(|error| panic!("{error}"));
        (outside, secret)
    }

    fn symlink(target: &Path, link: &Path) {
        let _ = fs::remove_file(link);
        std::os::unix::fs::symlink(target, link).unwrap_or_else(|error| panic!("{error}"));
    }

    fn load_error(root: &Path) -> String {
        Tree::load(root)
            .err()
            .map(|error| format!("{error:#}"))
            .unwrap_or_else(|| panic!("{} should not load", root.display()))
    }

    #[test]
    fn a_version_file_linked_out_of_the_tree_is_refused_unread() {
        let (_outside, secret) = secret_outside();
        let directory = write_tree(&[("main.fmf", "test: ./t\n")]);
        let version_path = directory.path().join(".fmf/version");
        symlink(&secret, &version_path);
        let message = load_error(directory.path());
        assert!(message.contains(".fmf/version"), "{message}");
        assert!(message.contains("symlink"), "{message}");
        assert!(
            !message.contains("PRIVATE") && !message.contains("SECRETLINE"),
            "{message}"
        );
        // The whole `.fmf` directory linked out is refused the same way.
        let directory = write_tree(&[("main.fmf", "test: ./t\n")]);
        let fmf_directory = directory.path().join(".fmf");
        fs::remove_dir_all(&fmf_directory).unwrap_or_else(|error| panic!("{error}"));
        let outside_fmf = secret.with_file_name(".fmf");
        fs::create_dir(&outside_fmf).unwrap_or_else(|error| panic!("{error}"));
        symlink(&secret, &outside_fmf.join("version"));
        symlink(&outside_fmf, &fmf_directory);
        let message = load_error(directory.path());
        assert!(message.contains("symlink"), "{message}");
        assert!(!message.contains("PRIVATE"), "{message}");
    }

    #[test]
    fn links_out_of_the_tree_are_refused_naming_the_link() {
        let (outside, secret) = secret_outside();
        let outside_tests = outside.path().join("tests");
        fs::create_dir(&outside_tests).unwrap_or_else(|error| panic!("{error}"));
        fs::write(outside_tests.join("stolen.fmf"), "test: ./stolen\n")
            .unwrap_or_else(|error| panic!("{error}"));

        let directory = write_tree(&[
            ("main.fmf", "summary: root\n"),
            ("own.fmf", "test: ./own\n"),
        ]);
        symlink(&outside_tests, &directory.path().join("linked"));
        let message = load_error(directory.path());
        assert!(message.contains("linked"), "{message}");
        assert!(!message.contains("stolen"), "{message}");
        let visited = Tree::load_and_visit(
            directory.path(),
            &Context::new(),
            &AdjustOptions::default(),
            |node| node.name().to_owned(),
        );
        assert!(visited.is_err(), "{visited:?}");

        for (link, target) in [("key.fmf", &secret), (".fmf/config", &secret)] {
            let directory = write_tree(&[("main.fmf", "test: ./t\n")]);
            symlink(target, &directory.path().join(link));
            let message = load_error(directory.path());
            assert!(message.contains(link), "{message}");
            assert!(!message.contains("PRIVATE"), "{message}");
        }
    }

    #[test]
    fn links_inside_the_tree_still_work() {
        let directory = write_tree(&[
            ("real/main.fmf", "test: ./real\n"),
            ("shared/common.fmf", "test: ./common\n"),
        ]);
        symlink(Path::new("real"), &directory.path().join("alias"));
        symlink(
            Path::new("shared/common.fmf"),
            &directory.path().join("linked.fmf"),
        );
        let tree = Tree::load(directory.path()).unwrap_or_else(|error| panic!("{error:#}"));
        let tests: Vec<&str> = tree.tests().map(Node::name).collect();
        assert_eq!(tests, ["/alias", "/linked", "/real", "/shared/common"]);
    }

    #[test]
    fn a_bad_version_is_quoted_short_and_escaped() {
        let long_version = format!("\u{1b}[31m{}", "9".repeat(5000));
        let directory = write_tree(&[("main.fmf", "test: ./t\n")]);
        fs::write(directory.path().join(".fmf/version"), &long_version)
            .unwrap_or_else(|error| panic!("{error}"));
        let message = load_error(directory.path());
        assert!(message.contains(".fmf/version"), "{message}");
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(message.contains("\\u{1b}[31m999"), "{message}");
        assert!(!message.contains(&"9".repeat(41)), "{message}");
    }

    /// File text inside other errors (a directive's name, an adjust condition) is cut short and escaped too.
    #[test]
    fn errors_quote_file_text_short_and_escaped() {
        // `\a` in a double-quoted YAML string is the BEL control character.
        let long_text = format!("\\a{}", "x".repeat(1000));
        let directive = format!("/:\n    \"{long_text}\": true\n");
        let undecided = format!("adjust:\n  when: \"arch == {long_text}\"\n  enabled: false\n");
        let invalid = format!("adjust:\n  when: \"distro ~ ({long_text}\"\n  enabled: false\n");
        for main in [directive, undecided, invalid] {
            let directory = write_tree(&[("main.fmf", &main)]);
            let message = Tree::load(directory.path())
                .and_then(|mut tree| {
                    tree.adjust_with(
                        &Context::new().with_dimension("distro", ["fedora"]),
                        &AdjustOptions {
                            fail_on_undecided: true,
                            ..AdjustOptions::default()
                        },
                    )
                })
                .err()
                .map(|error| {
                    // As the CLI prints it: the error and its sources.
                    let mut message = error.to_string();
                    let mut source = std::error::Error::source(&error);
                    while let Some(cause) = source {
                        message.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    message
                })
                .unwrap_or_else(|| panic!("{main:.40} should fail"));
            assert!(message.contains("main.fmf"), "{message}");
            assert!(!message.contains('\u{7}'), "{message}");
            assert!(!message.contains(&"x".repeat(241)), "{message}");
        }
    }

    #[test]
    fn missing_root_is_an_error_naming_the_path() {
        let error = Tree::load("/nonexistent/fmf/tree")
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        assert!(
            error.to_string().contains("/nonexistent/fmf/tree"),
            "{error}"
        );
    }
}
