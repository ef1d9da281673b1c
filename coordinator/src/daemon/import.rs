//! Importing an fmf tree: from a directory, or from a git URL cloned into a cache under the data dir
//! (system `git`). Reads and checks everything before the store sees any of it, so a bad tree changes
//! nothing stored.

use std::path::{Path, PathBuf};

use polarizer_shared::catalog::Source;
use polarizer_shared::fmf::{AdjustOptions, Context, FmfError, FmfValue, Tree};
use polarizer_shared::lint::{lint_tree, place_problems, LintOptions, Report};
use polarizer_shared::metadata::{
    undeclared_features_of, Catalog, CatalogItem, Feature, TestMetadata, TestRefs,
};
use polarizer_transport::git::{self, RepoGuard, RepoLocks};

use crate::store::catalog::{FacetPostings, Import, ImportedTest, TestRowData};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{location}: no such directory")]
    NoSuchDirectory { location: String },
    #[error("{0}")]
    Fmf(#[from] polarizer_shared::fmf::FmfError),
    /// The tree's metadata cannot be used: every error, placed, in one report.
    #[error("{}", .0.errors_text())]
    Invalid(Box<Report>),
    #[error("git {action} {location}: {message}")]
    Git {
        action: &'static str,
        location: String,
        message: String,
    },
    #[error(transparent)]
    BadContext(#[from] crate::core::source::BadContext),
}

/// Reads the tree at `location` (adjusted for `context`), ready for the store. Its catalog is not
/// checked yet: [`check`] does that, while the store starts writing (see `StoreHandle::import_checked`).
pub fn prepare(
    location: &str,
    git_ref: &str,
    context: &[(String, String)],
    data_dir: &Path,
    now_ms: i64,
) -> Result<Import, ImportError> {
    let (tree_path, git_commit, _cache_guard) = if crate::core::source::is_git_url(location) {
        let (checkout, guard) = checkout(location, git_ref, &data_dir.join("git-cache"))?;
        let commit = git(&checkout, &["rev-parse", "HEAD"], "rev-parse", location)?;
        (checkout, commit, Some(guard))
    } else {
        let path = Path::new(location);
        if !path.is_dir() {
            return Err(ImportError::NoSuchDirectory {
                location: location.to_string(),
            });
        }
        // A directory inside a git work tree records its commit too; elsewhere none.
        let commit = git(path, &["rev-parse", "HEAD"], "rev-parse", location).unwrap_or_default();
        (path.to_path_buf(), commit, None)
    };
    // Each test is made compact on the core that read it: the whole metadata of every test is never
    // held at once.
    let TreeRead {
        tests,
        features,
        warnings,
    } = read_tree(&tree_path, context, |test, row| {
        Box::new(ImportedTest::new(test, row))
    })?;
    let source = Source {
        location: location.to_string(),
        git_ref: git_ref.to_string(),
        git_commit,
        tree_path: tree_path.display().to_string(),
    };
    let mut import = Import::of_tests(source, tests, features, now_ms);
    import.warnings = warnings;
    Ok(import)
}

/// Checks a prepared import's catalog whole (references resolve, no cycles) and gathers its facets.
pub fn check(import: &Import) -> Result<FacetPostings, ImportError> {
    let problems = import.problems();
    if !problems.errors.is_empty() {
        // Placed in the files read (only now, on the way to refusing the import).
        let report = place_problems(Path::new(&import.source.tree_path), &problems.errors, &[]);
        return Err(ImportError::Invalid(Box::new(report)));
    }
    Ok(import.facet_postings())
}

/// Reads, adjusts and checks the tree at `tree_path`, with each test's stored form (which also says
/// whether its metadata differs by distro).
pub fn load_catalog(
    tree_path: &Path,
    context: &[(String, String)],
) -> Result<(Catalog, Vec<TestRowData>, Vec<String>), ImportError> {
    let (catalog, rows, warnings) = read_catalog(tree_path, context)?;
    let problems = catalog.problems();
    if !problems.errors.is_empty() {
        let report = place_problems(tree_path, &problems.errors, &[]);
        return Err(ImportError::Invalid(Box::new(report)));
    }
    Ok((catalog, rows, warnings))
}

/// [`load_catalog`] without the whole-catalog checks (each node is still checked on its own). Nodes are
/// read on every core and not kept. With the tree's warnings, placed; when a node has an error, the
/// error is the report of every problem of the tree.
pub fn read_catalog(
    tree_path: &Path,
    context: &[(String, String)],
) -> Result<(Catalog, Vec<TestRowData>, Vec<String>), ImportError> {
    let TreeRead {
        tests: read,
        features,
        warnings,
    } = read_tree(tree_path, context, |test, row| {
        Box::new(ReadTest { test, row })
    })?;
    let mut catalog = Catalog {
        tests: Vec::with_capacity(read.len()),
        features,
    };
    let mut rows = Vec::with_capacity(read.len());
    for read in read {
        let ReadTest { test, row } = *read;
        catalog.tests.push(test);
        rows.push(row);
    }
    Ok((catalog, rows, warnings))
}

/// A test read whole, with its stored form.
struct ReadTest {
    test: TestMetadata,
    row: TestRowData,
}

impl TestRefs for ReadTest {
    fn id(&self) -> &str {
        &self.test.id
    }
    fn name(&self) -> &str {
        &self.test.name
    }
    fn feature(&self) -> &str {
        &self.test.feature
    }
    fn after(&self) -> impl Iterator<Item = &str> {
        self.test.after()
    }
}

/// A tree's tests (as kept), in tree order, its features, and its warnings (placed).
struct TreeRead<K> {
    tests: Vec<K>,
    features: Vec<Feature>,
    warnings: Vec<String>,
}

/// What one node of the tree gave.
enum Kept<K> {
    Test(K),
    Feature(Box<Feature>),
    Nothing,
}

/// Reads the tree's nodes on every core, each test kept as `keep` makes it of its metadata and stored
/// form, in tree order; with the features and the tree's warnings, placed. When a node has an error,
/// the error is the report of every problem of the tree.
fn read_tree<K: TestRefs + Send>(
    tree_path: &Path,
    context: &[(String, String)],
    keep: impl Fn(TestMetadata, TestRowData) -> K + Sync,
) -> Result<TreeRead<K>, ImportError> {
    let mut fmf_context = Context::new();
    for (key, value) in context {
        fmf_context = fmf_context.with_dimension(key, [value.as_str()]);
    }
    let root = std::path::absolute(tree_path).unwrap_or_else(|_| tree_path.to_owned());
    let visited =
        Tree::load_and_visit(tree_path, &fmf_context, &AdjustOptions::default(), |node| {
            let reading = CatalogItem::read(node, &root);
            if !reading.errors.is_empty() {
                return Err(());
            }
            let warned = !reading.warnings.is_empty();
            let kept = match reading.value {
                // Adjust rules stay in each node's (inherited) data: a test differs by distro when
                // one conditions on it.
                Some(CatalogItem::Test(test)) => {
                    let row = TestRowData::new(&test, distro_conditions(node).join("; "));
                    Kept::Test(keep(test, row))
                }
                Some(CatalogItem::Feature(feature)) => Kept::Feature(Box::new(feature)),
                None => Kept::Nothing,
            };
            Ok((kept, warned))
        })
        .map_err(|err| match err {
            // A file that does not parse stops the reading: the report lists every such file.
            FmfError::Yaml { .. } | FmfError::AliasExpansion { .. } | FmfError::Read { .. } => {
                match lint_tree(tree_path, &fmf_context, LintOptions::default()) {
                    Ok(report) if report.has_errors() => ImportError::Invalid(Box::new(report)),
                    _ => ImportError::Fmf(err),
                }
            }
            other => ImportError::Fmf(other),
        })?;
    let mut tests = Vec::with_capacity(visited.len());
    let mut features = Vec::new();
    let (mut node_errors, mut node_warnings) = (false, false);
    for visited in visited {
        match visited {
            Ok((kept, warned)) => {
                node_warnings |= warned;
                match kept {
                    Kept::Test(test) => tests.push(test),
                    Kept::Feature(feature) => features.push(*feature),
                    Kept::Nothing => {}
                }
            }
            Err(()) => node_errors = true,
        }
    }
    // Problems are rare: only then is the tree read again, for the report that places each one.
    if node_errors || node_warnings || !undeclared_features_of(&features, &tests).is_empty() {
        let report = lint_tree(tree_path, &fmf_context, LintOptions::default())?;
        if report.has_errors() || node_errors {
            return Err(ImportError::Invalid(Box::new(report)));
        }
        return Ok(TreeRead {
            tests,
            features,
            warnings: report.warning_lines(),
        });
    }
    Ok(TreeRead {
        tests,
        features,
        warnings: Vec::new(),
    })
}

/// The `when` conditions of a node's adjust rules that look at the distro.
fn distro_conditions(node: &polarizer_shared::fmf::Node) -> Vec<String> {
    let rules: Vec<&FmfValue> = match node.get("adjust") {
        Some(FmfValue::List(rules)) => rules.iter().collect(),
        Some(rule @ FmfValue::Map(_)) => vec![rule],
        _ => Vec::new(),
    };
    rules
        .into_iter()
        .filter_map(|rule| rule.as_map()?.get("when")?.as_str().map(str::to_string))
        .filter(|when| when.contains("distro"))
        .collect()
}

/// How long one git command may take (a fetch of a large repository over a slow link, at most).
const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `git -C directory ARGS` through the locked-down runner; stdout on success.
pub fn git(
    directory: &Path,
    args: &[&str],
    action: &'static str,
    location: &str,
) -> Result<String, ImportError> {
    git::run_blocking(directory, args, GIT_TIMEOUT).map_err(|err| ImportError::Git {
        action,
        location: location.to_string(),
        message: err.to_string(),
    })
}

/// The cache's repository for `url` (made on first use), locked: git commands on it wait for each other.
pub fn cached_repository(url: &str, cache: &Path) -> Result<(PathBuf, RepoGuard), ImportError> {
    let key = polarizer_transport::state_files::secret_digest(url);
    let directory = cache.join(&key[..16]);
    let guard = RepoLocks::global().lock(&directory);
    std::fs::create_dir_all(cache).map_err(|err| ImportError::Git {
        action: "cache",
        location: url.into(),
        message: err.to_string(),
    })?;
    if !directory.join(".git").exists() {
        git(cache, &["init", "--quiet", "--", &key[..16]], "init", url)?;
    }
    Ok((directory, guard))
}

/// Is `git_ref` a full commit id the repository at `directory` already holds?
pub fn holds_commit(directory: &Path, git_ref: &str) -> bool {
    git_ref.len() == 40
        && git_ref.bytes().all(|byte| byte.is_ascii_hexdigit())
        && git::run_blocking(
            directory,
            ["cat-file", "-e", &format!("{git_ref}^{{commit}}")],
            GIT_TIMEOUT,
        )
        .is_ok()
}

/// Clones (once) and fetches `git_ref` with its history into a cache directory named after the URL; checks it
/// out detached. A commit id the cache already holds is not fetched again.
/// The guard keeps the checkout from changing until the caller has read it; other repositories are not
/// held up meanwhile.
pub fn checkout(
    url: &str,
    git_ref: &str,
    cache: &Path,
) -> Result<(PathBuf, RepoGuard), ImportError> {
    let refused = |err: git::GitError| ImportError::Git {
        action: "fetch",
        location: url.to_string(),
        message: err.to_string(),
    };
    git::check_url(url).map_err(refused)?;
    let wanted = if git_ref.is_empty() { "HEAD" } else { git_ref };
    git::check_ref(wanted).map_err(refused)?;
    let (directory, guard) = cached_repository(url, cache)?;
    let target = if holds_commit(&directory, wanted) {
        wanted
    } else {
        // The whole history, not the commit alone: agents get the tests shipped as bundles thin against the
        // commits they hold, and git can leave out only what a commit's ancestry shares with them. A cache
        // fetched shallow by an older version is deepened once.
        let unshallow = directory.join(".git/shallow").exists();
        let mut fetch = vec!["fetch", "--quiet"];
        if unshallow {
            fetch.push("--unshallow");
        }
        fetch.extend(["--", url, wanted]);
        git(&directory, &fetch, "fetch", url)?;
        "FETCH_HEAD"
    };
    git(
        &directory,
        &["checkout", "--quiet", "--detach", "--force", target, "--"],
        "checkout",
        url,
    )?;
    Ok((directory, guard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImportFailed, Store};
    use polarizer_shared::catalog::TestQuery;

    fn write_tree(root: &Path, tests: &str) {
        std::fs::create_dir_all(root.join(".fmf")).unwrap();
        std::fs::write(root.join(".fmf/version"), "1\n").unwrap();
        std::fs::write(root.join("main.fmf"), "/features:\n  /login: {}\n").unwrap();
        std::fs::write(root.join("tests.fmf"), tests).unwrap();
    }

    /// The writer stores a tree's tests while the whole-tree checks run; when they fail, it rolls back,
    /// the check's error is the answer, and the store is as it was.
    #[tokio::test]
    async fn an_import_failing_its_checks_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let (store, _writer) = Store::open(&dir.path().join("polarizer.db")).unwrap();
        let import = |now_ms| {
            let import = prepare(tree.to_str().unwrap(), "", &[], dir.path(), now_ms).unwrap();
            store.import_checked(import, check)
        };
        write_tree(
            &tree,
            "/a:\n  test: ./a\n  feature: login\n/b:\n  test: ./b\n  after: [/tests/a]\n",
        );
        let first = import(1).await.unwrap();
        assert_eq!((first.tests, first.added), (2, 2));
        let stored = |reader: &crate::store::Reader| {
            let query = TestQuery {
                include_removed: true,
                ..TestQuery::default()
            };
            let rows = reader.tests(&query).unwrap();
            let a = reader.test("/tests/a").unwrap().map(|(test, _, _)| test);
            (rows, a, reader.features().unwrap())
        };
        let before = stored(&store.reader().unwrap());

        // Each changes the tests' rows (a summary, a new test, a test gone) and fails a check of the whole.
        for (tests, expected) in [
            (
                "/a:\n  test: ./a\n  summary: new\n  after: [/tests/b]\n/b:\n  test: ./b\n  after: [/tests/a]\n/c:\n  test: ./c\n",
                "cycle in `after`",
            ),
            (
                "/a:\n  test: ./a\n  id: same\n/b:\n  test: ./b\n  id: same\n",
                "same",
            ),
        ] {
            write_tree(&tree, tests);
            match import(2).await {
                Err(ImportFailed::Check(err)) => {
                    assert!(err.to_string().contains(expected), "{expected}: {err}")
                }
                other => panic!("{expected}: expected a failed check, got {other:?}"),
            }
            assert_eq!(stored(&store.reader().unwrap()), before, "{expected}");
        }
    }
}
