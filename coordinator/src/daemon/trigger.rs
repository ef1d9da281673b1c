//! Triggers: a change (or a build, or an operator) names a repository and a ref; the coordinator fetches
//! that commit, reads its fmf tree, selects the tests the change touches, partitions them into suites and
//! stores the planned run. Everything here runs before the store sees anything: a bad trigger stores
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use polarizer_shared::facts::AgentFacts;
use polarizer_shared::fmf::{Context, Tree};
use polarizer_shared::metadata::{TestMetadata, TestType};
use polarizer_shared::plans::{Plan, PlanError};

use crate::core::placement::facts_match;
use polarizer_shared::run::TriggerRequest;

use crate::core::partition::{self, SuiteKind};
use crate::core::selection::{self, SelectionRequest};
use crate::daemon::config::RunsConfig;
use crate::daemon::import::{self, ImportError};
use crate::store::catalog::Import;
use crate::store::runs::NewRun;

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{repo}: {message}")]
    Repo { repo: String, message: String },
    #[error("{repo} at {git_ref}: {source}")]
    Tree {
        repo: String,
        git_ref: String,
        #[source]
        source: Box<ImportError>,
    },
    #[error("{repo} at {git_ref}: {source}")]
    Plan {
        repo: String,
        git_ref: String,
        #[source]
        source: Box<PlanError>,
    },
    #[error("{0}")]
    Import(#[from] Box<ImportError>),
    #[error("{0}")]
    Selection(#[from] selection::SelectionError),
    #[error("unknown test type {0:?} (unit, integration, functional, performance, acceptance)")]
    UnknownType(String),
    #[error("the trigger selects no tests: {0}")]
    NothingSelected(String),
}

/// A trigger ready to store: the catalog import of that commit, and the planned run.
pub struct Planned {
    pub import: Import,
    pub run: NewRun,
    pub touched_features: Vec<String>,
    pub dependent_features: Vec<String>,
    pub fail_open: bool,
}

/// Where agents fetch the tests from, and where the fmf tree is inside that repository.
fn resolve(repo: &str) -> Result<(String, String), TriggerError> {
    if crate::core::source::is_git_url(repo) {
        return Ok((repo.to_string(), String::new()));
    }
    let path = Path::new(repo);
    if !path.is_dir() {
        return Err(TriggerError::Repo {
            repo: repo.into(),
            message: "no such directory (give a directory in a git work tree, or a git URL)".into(),
        });
    }
    let top = import::git(
        path,
        &["rev-parse", "--show-toplevel"],
        "rev-parse",
        repo,
    )
    .map_err(|_| TriggerError::Repo {
        repo: repo.into(),
        message: "not in a git repository: agents fetch the tests at a commit, so commit them to git first".into(),
    })?;
    let canonical = |p: &Path| {
        std::fs::canonicalize(p).map_err(|err| TriggerError::Repo {
            repo: repo.into(),
            message: err.to_string(),
        })
    };
    let top = canonical(Path::new(&top))?;
    let inside = canonical(path)?;
    let tree_path = inside
        .strip_prefix(&top)
        .map(|relative| relative.display().to_string())
        .unwrap_or_default();
    Ok((top.display().to_string(), tree_path))
}

/// A plan's test names, and the context its tests are adjusted by.
type PlanTests = (BTreeSet<String>, Vec<(String, String)>);

/// The names of the tests plan `plan` of the tree at `tree_root` selects, and the context its tests are
/// adjusted by (the plan's own `context` under the trigger's). The plan itself is found in the tree
/// adjusted by the trigger's `context`, as tmt does.
fn plan_tests(
    tree_root: &Path,
    context: &[(String, String)],
    plan: &str,
) -> Result<PlanTests, PlanLookupError> {
    let adjusted = |context: &[(String, String)]| -> Result<Tree, PlanLookupError> {
        let mut tree =
            Tree::load(tree_root).map_err(|err| PlanLookupError::Tree(ImportError::Fmf(err)))?;
        let mut fmf_context = Context::new();
        for (key, value) in context {
            fmf_context = fmf_context.with_dimension(key, [value.as_str()]);
        }
        tree.adjust(&fmf_context)
            .map_err(|err| PlanLookupError::Tree(ImportError::Fmf(err)))?;
        Ok(tree)
    };
    let tree = adjusted(context)?;
    let plan = Plan::find(&tree, plan).map_err(PlanLookupError::Plan)?;
    let test_context = plan.test_context(context);
    let tests_tree = if test_context.as_slice() == context {
        tree
    } else {
        adjusted(&test_context)?
    };
    let names = plan
        .select(&tests_tree)
        .into_iter()
        .map(str::to_string)
        .collect();
    Ok((names, test_context))
}

enum PlanLookupError {
    Tree(ImportError),
    Plan(PlanError),
}

/// Fetches, reads, selects and partitions. `agents` is the inventory, each with whether it can take a
/// suite now (online, or a slot a pool may make): a group of tests is split over the platforms ready for
/// it, and over the whole inventory only when none is (an offline agent counted as a slot would leave
/// its share waiting until another finishes, doubling the run); `history` gives a test's mean past
/// duration in seconds.
pub fn plan(
    request: TriggerRequest,
    config: &RunsConfig,
    data_dir: &Path,
    agents: &[(AgentFacts, bool)],
    history: &dyn Fn(&[&str]) -> BTreeMap<String, f64>,
    now_ms: i64,
) -> Result<Planned, TriggerError> {
    let (fetch_url, tree_path) = resolve(&request.repo)?;
    let git_ref = if request.git_ref.is_empty() {
        "HEAD".to_string()
    } else {
        request.git_ref.clone()
    };
    let (checkout, _guard) = import::checkout(&fetch_url, &git_ref, &data_dir.join("git-cache"))
        .map_err(|err| TriggerError::Repo {
            repo: request.repo.clone(),
            message: match err {
                ImportError::Git { message, .. } => {
                    format!("cannot fetch ref {git_ref:?}: {message}")
                }
                other => other.to_string(),
            },
        })?;
    let commit = import::git(&checkout, &["rev-parse", "HEAD"], "rev-parse", &fetch_url)
        .map_err(Box::new)?;
    let tree_root = checkout.join(&tree_path);
    // The plan is read from the same commit's tree; a plan Polarizer cannot honour refuses the trigger.
    let (plan, test_context) = if request.plan.is_empty() {
        (None, request.context.clone())
    } else {
        let (names, test_context) = plan_tests(&tree_root, &request.context, &request.plan)
            .map_err(|err| match err {
                // A tree that does not read: the catalog's report places every error.
                PlanLookupError::Tree(source) => TriggerError::Tree {
                    repo: request.repo.clone(),
                    git_ref: git_ref.clone(),
                    source: Box::new(
                        import::load_catalog(&tree_root, &request.context)
                            .err()
                            .unwrap_or(source),
                    ),
                },
                PlanLookupError::Plan(source) => TriggerError::Plan {
                    repo: request.repo.clone(),
                    git_ref: git_ref.clone(),
                    source: Box::new(source),
                },
            })?;
        (Some((request.plan.clone(), names)), test_context)
    };

    let (catalog, rows, warnings) =
        import::load_catalog(&tree_root, &test_context).map_err(|source| TriggerError::Tree {
            repo: request.repo.clone(),
            git_ref: git_ref.clone(),
            source: Box::new(source),
        })?;

    let test_types: Vec<TestType> = if request.test_types.is_empty() {
        config.default_types(request.kind).to_vec()
    } else {
        request
            .test_types
            .iter()
            .map(|text| {
                TestType::parse(text).ok_or_else(|| TriggerError::UnknownType(text.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let everything = request.all || (request.changed.is_empty() && request.features.is_empty());
    let selection = selection::select(
        &catalog,
        &SelectionRequest {
            changed_paths: request.changed.clone(),
            features: request.features.clone(),
            test_types: test_types.clone(),
            all: everything,
            plan,
        },
    )?;
    if selection.tests.is_empty() {
        let types: Vec<&str> = test_types.iter().map(|t| t.as_str()).collect();
        return Err(TriggerError::NothingSelected(format!(
            "{} tests in the tree at {}, none {}{}{}",
            catalog.tests.len(),
            &commit[..commit.len().min(12)],
            if types.is_empty() {
                "enabled".to_string()
            } else {
                format!("enabled and of type {}", types.join(", "))
            },
            if request.plan.is_empty() {
                String::new()
            } else {
                format!(" in plan {}", request.plan)
            },
            if everything {
                String::new()
            } else {
                " among those the change selects".to_string()
            }
        )));
    }

    let by_id: BTreeMap<&str, &TestMetadata> = catalog
        .tests
        .iter()
        .map(|test| (test.id.as_str(), test))
        .collect();
    let selected: Vec<&TestMetadata> = selection
        .tests
        .keys()
        .filter_map(|id| by_id.get(id.as_str()).copied())
        .collect();
    let ids: Vec<&str> = selected.iter().map(|test| test.id.as_str()).collect();
    let means = history(&ids);
    let suites = partition::partition(
        &selected,
        &|test| {
            means
                .get(&test.id)
                .copied()
                .unwrap_or(test.duration_seconds as f64)
        },
        &|needs| {
            let matching = || agents.iter().filter(|(facts, _)| facts_match(facts, needs));
            match matching().filter(|(_, ready)| *ready).count() {
                0 => matching().count(),
                ready => ready,
            }
            .max(1)
        },
    );
    let reasons = |id: &str| -> Vec<String> {
        selection
            .tests
            .get(id)
            .map(|reasons| reasons.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    let planned_suites = suites
        .into_iter()
        .map(|suite| {
            let kind = match suite.kind {
                SuiteKind::Serial => "serial",
                SuiteKind::Parallel => "parallel",
            };
            let tests = suite
                .tests
                .iter()
                .filter_map(|id| by_id.get(id.as_str()))
                .map(|test| ((*test).clone(), reasons(&test.id)))
                .collect();
            (kind.to_string(), suite.needs, tests)
        })
        .collect();
    // The run's note: why everything was selected, and what the tree should change (one per line).
    let mut notes: Vec<String> = Vec::new();
    if selection.fail_open {
        notes.push("no feature's paths match the changed paths: everything selected".to_string());
    }
    notes.extend(warnings);
    let message = notes.join("\n");
    let import = Import::new(
        polarizer_shared::catalog::Source {
            location: request.repo.clone(),
            git_ref: git_ref.clone(),
            git_commit: commit.clone(),
            tree_path: tree_root.display().to_string(),
        },
        catalog,
        rows,
        now_ms,
    );
    Ok(Planned {
        touched_features: selection.touched_features.into_iter().collect(),
        dependent_features: selection.dependent_features.into_iter().collect(),
        fail_open: selection.fail_open,
        import,
        run: NewRun {
            request: TriggerRequest { git_ref, ..request },
            fetch_url,
            commit,
            tree_path,
            message,
            now_ms,
            deadline_ms: now_ms + config.run_deadline.as_millis() as i64,
            suites: planned_suites,
        },
    })
}

/// Why a trigger made no run.
#[derive(Debug)]
pub struct StartFailure {
    pub message: String,
    pub kind: FailureKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The tree at that commit is at fault (fmf, plan, types): its author can fix it.
    Tree,
    /// The tree is fine, the change selects no test.
    NothingSelected,
    /// Anything else (git, the store).
    Other,
}

/// Plans a run off the async runtime (git, fmf, selection, partition), then stores it in one step.
/// `note` goes first in the run's message (why everything was selected, say).
pub async fn start(
    context: &crate::daemon::context::Context,
    request: TriggerRequest,
    note: Option<String>,
) -> Result<polarizer_shared::run::TriggerSummary, StartFailure> {
    use polarizer_shared::protocol::AgentState;
    let other = |message: String| StartFailure {
        message,
        kind: FailureKind::Other,
    };
    let agents = context
        .store
        .read(|reader| reader.agents())
        .await
        .map_err(|err| other(err.to_string()))?
        .into_iter()
        .filter(|agent| agent.state != AgentState::Revoked)
        .map(|agent| (agent.facts, agent.state == AgentState::Online))
        // A pool's platforms count as platforms a suite may go to, as many as it may make.
        .chain(
            context
                .pools
                .slot_facts()
                .into_iter()
                .map(|facts| (facts, true)),
        )
        .collect::<Vec<_>>();
    let store = context.store.clone();
    let config = context.settings.runs.clone();
    let data_dir = context.settings.data_dir.clone();
    let planned = tokio::task::spawn_blocking(move || {
        let reader = store
            .reader()
            .map_err(|err| (FailureKind::Other, err.to_string()))?;
        plan(
            request,
            &config,
            &data_dir,
            &agents,
            &|ids| reader.duration_history(ids).unwrap_or_default(),
            crate::daemon::clock::now_ms(),
        )
        .map_err(|err| {
            let kind = match &err {
                TriggerError::Tree { .. }
                | TriggerError::Plan { .. }
                | TriggerError::Import(_)
                | TriggerError::UnknownType(_)
                | TriggerError::Selection(_) => FailureKind::Tree,
                TriggerError::NothingSelected(_) => FailureKind::NothingSelected,
                TriggerError::Repo { .. } => FailureKind::Other,
            };
            (kind, err.to_string())
        })
    })
    .await;
    let mut planned = match planned {
        Ok(Ok(planned)) => planned,
        Ok(Err((kind, message))) => {
            return Err(StartFailure {
                message: format!("trigger failed, no run created: {message}"),
                kind,
            })
        }
        Err(err) => return Err(other(format!("trigger failed: {err}"))),
    };
    if let Some(note) = note.filter(|note| !note.is_empty()) {
        planned.run.message = if planned.run.message.is_empty() {
            note
        } else {
            format!("{note}\n{}", planned.run.message)
        };
    }
    if let Err(err) = context.store.import_catalog(planned.import).await {
        return Err(other(format!("trigger failed, no run created: {err}")));
    }
    let run = planned.run;
    let tests: usize = run.suites.iter().map(|(_, _, tests)| tests.len()).sum();
    let serial = run
        .suites
        .iter()
        .filter(|(kind, _, _)| kind == "serial")
        .count();
    let parallel = run.suites.len() - serial;
    let commit = run.commit.clone();
    let id = context
        .store
        .write(move |savepoint, path| crate::store::runs::create_run(savepoint, path, &run))
        .await
        .map_err(|err| other(format!("trigger failed, no run created: {err}")))?;
    tracing::info!(run = id, tests, serial, parallel, commit = %commit, "run triggered");
    context.scheduler.wake();
    Ok(polarizer_shared::run::TriggerSummary {
        run: id,
        tests: tests as u64,
        touched_features: planned.touched_features,
        dependent_features: planned.dependent_features,
        fail_open: planned.fail_open,
        parallel_suites: parallel as u64,
        serial_suites: serial as u64,
        commit,
    })
}
