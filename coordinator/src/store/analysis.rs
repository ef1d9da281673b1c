//! Failure analysis in SQLite. At ingest, in the writer's batch: a failed result joins a cluster of
//! failures (`core::cluster`, whose state lives beside the writer and whose clusters are stored as they
//! change, so a restarted coordinator goes on with the same ids), carries its cluster's label, and a
//! quarantined test's failure is marked so it does not fail its run. Read side: clusters, one cluster
//! explained, flaky tests, per-test and per-host statistics, and what `runs show` adds to a run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use polarizer_shared::analysis::{
    ClusterRef, FailureCluster, FailureDetail, FailureExample, FailureLabel, HostStats, LabelKind,
};
use polarizer_shared::run::{RunTestRow, TestStatus};
use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{sqlite_error, Reader, StoreError};
use crate::core::analysis::{self, AnalysisSettings, ResultPoint};
use crate::core::cluster::{ClusterConfig, Clusterer};

/// Tests listed per cluster.
const TESTS_LISTED: usize = 20;
/// Durations of a test's earlier results that make its history.
const HISTORY: i64 = 200;

/// The clusterer and the settings, used by the store's one writer (the lock is never contended).
pub struct Analysis {
    pub settings: AnalysisSettings,
    clusterer: Clusterer,
    loaded: bool,
    /// Clusters changed in this batch, not stored yet, and when.
    touched: BTreeMap<u32, i64>,
    /// Labels read in this batch (labels change between batches only).
    labels: HashMap<u32, Option<FailureLabel>>,
}

pub type SharedAnalysis = Arc<Mutex<Analysis>>;

impl Analysis {
    pub fn shared(settings: AnalysisSettings) -> SharedAnalysis {
        Arc::new(Mutex::new(Analysis {
            settings,
            clusterer: Clusterer::new(ClusterConfig::default()),
            loaded: false,
            touched: BTreeMap::new(),
            labels: HashMap::new(),
        }))
    }

    /// The stored clusters, once, before the first failure after a start.
    fn load(&mut self, connection: &Connection, path: &Path) -> Result<(), StoreError> {
        if self.loaded {
            return Ok(());
        }
        let on_sqlite = sqlite_error(path);
        let mut statement = connection
            .prepare("SELECT id, template, lines, merged_into FROM failure_clusters ORDER BY id")
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(&on_sqlite)?;
        let mut clusterer = Clusterer::new(self.clusterer.config());
        for row in rows {
            let (id, template, lines, into) = row.map_err(&on_sqlite)?;
            clusterer.restore(
                id as u32,
                &template,
                lines as u64,
                into.map(|into| into as u32),
            );
        }
        self.clusterer = clusterer;
        self.loaded = true;
        Ok(())
    }

    /// A finished result, as the writer stores it: its cluster when it failed (stored with it), whether
    /// it is quarantined. Called after the result's own row was written.
    #[allow(clippy::too_many_arguments)]
    pub fn on_result(
        &mut self,
        connection: &Connection,
        path: &Path,
        run: u64,
        test: &str,
        name: Option<&str>,
        status: TestStatus,
        message: &str,
        output_tail: &str,
        now_ms: i64,
    ) -> Result<Analysed, StoreError> {
        let failed = analysis::is_failure(status);
        let mut analysed = Analysed::default();
        let watched = !self.settings.quarantine.is_empty() || self.settings.quarantine_flaky;
        if let Some(name) = name.filter(|_| watched) {
            analysed.quarantined = failed && self.quarantined(connection, path, name)?;
            if status == TestStatus::Pass || failed {
                self.track_quarantine(connection, path, run, test, name, failed, now_ms)?;
            }
        }
        if failed && self.settings.enabled {
            self.load(connection, path)?;
            let text = analysis::failure_text(message, output_tail);
            let joined = self.clusterer.join(&text);
            let id = joined.id;
            // Stored once per batch (`flush`): a batch's failures mostly fall into a few clusters.
            self.touched.insert(id, now_ms);
            if !joined.merged.is_empty() {
                // The surviving row must exist before anything points at it.
                self.flush(connection, path)?;
                for merged in joined.merged {
                    merge(connection, path, merged, id)?;
                }
                self.labels.remove(&id);
            }
            let label = match self.labels.get(&id) {
                Some(label) => label.clone(),
                None => {
                    let label = labels(connection, path, &[u64::from(id)])?.remove(&u64::from(id));
                    self.labels.insert(id, label.clone());
                    label
                }
            };
            analysed.cluster = Some(ClusterRef {
                id: u64::from(id),
                label,
            });
            analysed.text = text;
        }
        Ok(analysed)
    }

    /// Stores the clusters this batch changed; the writer calls it at the end of each batch. Until
    /// then their rows may lag (a batch is one transaction: nobody reads them in between).
    pub fn flush(&mut self, connection: &Connection, path: &Path) -> Result<(), StoreError> {
        let on_sqlite = sqlite_error(path);
        let mut upsert = connection
            .prepare_cached(
                "INSERT INTO failure_clusters (id, template, lines, first_ms, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (id) DO UPDATE SET template = ?2, lines = ?3, last_ms = MAX(last_ms, ?4)",
            )
            .map_err(&on_sqlite)?;
        for (id, at_ms) in std::mem::take(&mut self.touched) {
            let (template, lines, _) = self.clusterer.cluster(id).unwrap_or_default();
            upsert
                .execute(params![id as i64, template, lines as i64, at_ms])
                .map_err(&on_sqlite)?;
        }
        self.labels.clear();
        Ok(())
    }

    fn quarantined(
        &self,
        connection: &Connection,
        path: &Path,
        name: &str,
    ) -> Result<bool, StoreError> {
        if self.settings.quarantine.iter().any(|listed| listed == name) {
            return Ok(true);
        }
        if !self.settings.quarantine_flaky {
            return Ok(false);
        }
        connection
            .query_row("SELECT 1 FROM quarantine WHERE name = ?1", [name], |_| {
                Ok(())
            })
            .optional()
            .map(|found| found.is_some())
            .map_err(sqlite_error(path))
    }

    /// Quarantines a test seen passing and failing on one commit with the same needs; counts a
    /// quarantined test's passes and releases it after `release_after` in a row.
    #[allow(clippy::too_many_arguments)]
    fn track_quarantine(
        &self,
        connection: &Connection,
        path: &Path,
        run: u64,
        test: &str,
        name: &str,
        failed: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.settings.quarantine_flaky {
            return Ok(());
        }
        let on_sqlite = sqlite_error(path);
        let held = connection
            .query_row(
                "SELECT passes FROM quarantine WHERE name = ?1",
                [name],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map_err(&on_sqlite)?;
        match held {
            Some(_) if failed => {
                connection
                    .execute("UPDATE quarantine SET passes = 0 WHERE name = ?1", [name])
                    .map_err(&on_sqlite)?;
            }
            Some(passes) => {
                if passes + 1 >= i64::from(self.settings.release_after) {
                    tracing::info!(test = %name, passes = passes + 1, "released from quarantine");
                    connection
                        .execute("DELETE FROM quarantine WHERE name = ?1", [name])
                        .map_err(&on_sqlite)?;
                } else {
                    connection
                        .execute(
                            "UPDATE quarantine SET passes = passes + 1 WHERE name = ?1",
                            [name],
                        )
                        .map_err(&on_sqlite)?;
                }
            }
            None => {
                // The other outcome, on this run's commit, with this suite's needs, in another run.
                let opposite: &[&str] = if failed {
                    &["pass"]
                } else {
                    &["fail", "error", "timeout"]
                };
                let placeholders = opposite
                    .iter()
                    .map(|status| format!("'{status}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let seen = connection
                    .query_row(
                        &format!(
                            "SELECT other.run_id FROM run_tests this
                             JOIN runs this_run ON this_run.id = this.run_id
                             JOIN suites this_suite ON this_suite.id = this.suite_id
                             JOIN run_tests other ON other.test_id = this.test_id AND other.run_id != this.run_id
                             JOIN runs other_run ON other_run.id = other.run_id
                             JOIN suites other_suite ON other_suite.id = other.suite_id
                             WHERE this.run_id = ?1 AND this.test_id = ?2
                               AND other.status IN ({placeholders})
                               AND other_run.git_commit = this_run.git_commit
                               AND other_suite.needs_json = this_suite.needs_json
                             LIMIT 1"
                        ),
                        params![run as i64, test],
                        |row| row.get::<_, i64>(0),
                    )
                    .optional()
                    .map_err(&on_sqlite)?;
                if let Some(other) = seen {
                    tracing::info!(test = %name, run, other, "quarantined: passed and failed on one commit");
                    connection
                        .execute(
                            "INSERT OR IGNORE INTO quarantine (name, reason, since_ms) VALUES (?1, ?2, ?3)",
                            params![
                                name,
                                format!("flaky: runs {run} and {other}, same commit and needs"),
                                now_ms
                            ],
                        )
                        .map_err(&on_sqlite)?;
                }
            }
        }
        Ok(())
    }
}

/// What analysis made of one result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysed {
    pub cluster: Option<ClusterRef>,
    pub quarantined: bool,
    /// The text the failure was clustered by.
    pub text: String,
}

/// Cluster `from` converged into `into`: its failures and label go there.
fn merge(connection: &Connection, path: &Path, from: u32, into: u32) -> Result<(), StoreError> {
    let on_sqlite = sqlite_error(path);
    connection
        .execute(
            "UPDATE run_tests SET cluster_id = ?2 WHERE cluster_id = ?1",
            params![from, into],
        )
        .map_err(&on_sqlite)?;
    // The label follows when the surviving cluster has none; its own wins otherwise.
    connection
        .execute(
            "UPDATE failure_clusters SET
                (issue, kind, note, labelled_ms) = (SELECT issue, kind, note, labelled_ms FROM failure_clusters WHERE id = ?1),
                first_ms = MIN(first_ms, (SELECT first_ms FROM failure_clusters WHERE id = ?1))
             WHERE id = ?2 AND kind = '' AND EXISTS (SELECT 1 FROM failure_clusters WHERE id = ?1 AND kind != '')",
            params![from, into],
        )
        .map_err(&on_sqlite)?;
    connection
        .execute(
            "UPDATE failure_clusters SET merged_into = ?2 WHERE id = ?1",
            params![from, into],
        )
        .map_err(&on_sqlite)?;
    Ok(())
}

fn label_of(
    issue: String,
    kind: &str,
    note: String,
    labelled_ms: Option<i64>,
) -> Option<FailureLabel> {
    Some(FailureLabel {
        issue,
        kind: LabelKind::parse(kind)?,
        note,
        labelled_ms: labelled_ms.unwrap_or_default(),
    })
}

/// The labels of these clusters (those labelled).
pub fn labels(
    connection: &Connection,
    path: &Path,
    ids: &[u64],
) -> Result<HashMap<u64, FailureLabel>, StoreError> {
    let on_sqlite = sqlite_error(path);
    let mut statement = connection
        .prepare_cached(
            "SELECT issue, kind, note, labelled_ms FROM failure_clusters WHERE id = ?1 AND kind != ''",
        )
        .map_err(&on_sqlite)?;
    let mut out = HashMap::new();
    for id in ids {
        let found = statement
            .query_row([*id as i64], |row| {
                Ok(label_of(
                    row.get(0)?,
                    &row.get::<_, String>(1)?,
                    row.get(2)?,
                    row.get(3)?,
                ))
            })
            .optional()
            .map_err(&on_sqlite)?;
        if let Some(Some(label)) = found {
            out.insert(*id, label);
        }
    }
    Ok(out)
}

/// Puts a label on a cluster (or withdraws it with `None`). `false` when there is no such cluster.
pub fn label(
    connection: &Connection,
    path: &Path,
    id: u64,
    label: Option<&FailureLabel>,
) -> Result<bool, StoreError> {
    let (issue, kind, note, at) = match label {
        Some(label) => (
            label.issue.as_str(),
            label.kind.as_str(),
            label.note.as_str(),
            Some(label.labelled_ms),
        ),
        None => ("", "", "", None),
    };
    let changed = connection
        .execute(
            "UPDATE failure_clusters SET issue = ?2, kind = ?3, note = ?4, labelled_ms = ?5
             WHERE id = ?1 AND merged_into IS NULL",
            params![id as i64, issue, kind, note, at],
        )
        .map_err(sqlite_error(path))?;
    Ok(changed == 1)
}

/// Fills in the labels of rows' clusters.
pub fn fill_labels(
    connection: &Connection,
    path: &Path,
    rows: &mut [RunTestRow],
) -> Result<(), StoreError> {
    let ids: Vec<u64> = rows
        .iter()
        .filter_map(|row| row.cluster.as_ref().map(|cluster| cluster.id))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels = labels(connection, path, &ids)?;
    for row in rows.iter_mut() {
        if let Some(cluster) = row.cluster.as_mut() {
            cluster.label = labels.get(&cluster.id).cloned();
        }
    }
    Ok(())
}

/// Flags results slower than their history: above the p95 of the test's earlier durations × `slow_factor`.
pub fn flag_slow(
    connection: &Connection,
    path: &Path,
    run: u64,
    rows: &mut [RunTestRow],
    slow_factor: f64,
    min_results: usize,
) -> Result<(), StoreError> {
    let on_sqlite = sqlite_error(path);
    let mut history = connection
        .prepare_cached(
            "SELECT duration_ms FROM run_tests
             WHERE test_id = ?1 AND run_id < ?2 AND status IN ('pass', 'fail') AND duration_ms IS NOT NULL
             ORDER BY run_id DESC LIMIT ?3",
        )
        .map_err(&on_sqlite)?;
    for row in rows.iter_mut() {
        let Some(duration) = row.duration_ms else {
            continue;
        };
        if !matches!(row.status, TestStatus::Pass | TestStatus::Fail) {
            continue;
        }
        let earlier: Vec<u64> = history
            .query_map(params![row.test, run as i64, HISTORY], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(&on_sqlite)?
            .map(|ms| ms.map(|ms| ms.max(0) as u64))
            .collect::<Result<_, _>>()
            .map_err(&on_sqlite)?;
        row.slow_p95_ms = analysis::slower_than(duration, &earlier, slow_factor, min_results);
    }
    Ok(())
}

impl Reader {
    /// Clusters with failures in the window (or in one run), most failures first.
    pub fn failures(
        &self,
        run: Option<u64>,
        since_ms: Option<i64>,
    ) -> Result<Vec<FailureCluster>, StoreError> {
        self.clusters_where(run, since_ms, None)
    }

    fn clusters_where(
        &self,
        run: Option<u64>,
        since_ms: Option<i64>,
        only: Option<u64>,
    ) -> Result<Vec<FailureCluster>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT rt.cluster_id, rt.name, COALESCE(rt.started_ms, r.created_ms)
                 FROM run_tests rt JOIN runs r ON r.id = rt.run_id
                 WHERE rt.cluster_id IS NOT NULL
                   AND (?1 IS NULL OR rt.run_id = ?1)
                   AND (?2 IS NULL OR COALESCE(rt.started_ms, r.created_ms) >= ?2)
                   AND (?3 IS NULL OR rt.cluster_id = ?3)",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map(
                params![
                    run.map(|run| run as i64),
                    since_ms,
                    only.map(|id| id as i64)
                ],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)? as u64,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                },
            )
            .map_err(&on_sqlite)?;
        struct Tally {
            failures: u64,
            tests: std::collections::BTreeSet<String>,
            first: i64,
            last: i64,
        }
        let mut tallies: BTreeMap<u64, Tally> = BTreeMap::new();
        for row in rows {
            let (id, name, at) = row.map_err(&on_sqlite)?;
            let tally = tallies.entry(id).or_insert(Tally {
                failures: 0,
                tests: Default::default(),
                first: at,
                last: at,
            });
            tally.failures += 1;
            tally.tests.insert(name);
            tally.first = tally.first.min(at);
            tally.last = tally.last.max(at);
        }
        let mut out = Vec::new();
        for (id, tally) in tallies {
            let Some(mut cluster) = self.cluster_row(id)? else {
                continue;
            };
            cluster.failures = tally.failures;
            cluster.test_count = tally.tests.len() as u64;
            cluster.tests = tally.tests.into_iter().take(TESTS_LISTED).collect();
            cluster.first_ms = tally.first;
            cluster.last_ms = tally.last;
            out.push(cluster);
        }
        out.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn cluster_row(&self, id: u64) -> Result<Option<FailureCluster>, StoreError> {
        self.connection
            .query_row(
                "SELECT template, first_ms, last_ms, issue, kind, note, labelled_ms
                 FROM failure_clusters WHERE id = ?1",
                [id as i64],
                |row| {
                    Ok(FailureCluster {
                        id,
                        template: row.get(0)?,
                        failures: 0,
                        tests: Vec::new(),
                        test_count: 0,
                        first_ms: row.get(1)?,
                        last_ms: row.get(2)?,
                        label: label_of(
                            row.get(3)?,
                            &row.get::<_, String>(4)?,
                            row.get(5)?,
                            row.get(6)?,
                        ),
                    })
                },
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    /// One cluster (a merged one answers for the cluster it went into): its newest failures, each
    /// with why it matched.
    pub fn failure(&self, id: u64) -> Result<Option<FailureDetail>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut id = id;
        for _ in 0..64 {
            let into: Option<Option<i64>> = self
                .connection
                .query_row(
                    "SELECT merged_into FROM failure_clusters WHERE id = ?1",
                    [id as i64],
                    |row| row.get(0),
                )
                .optional()
                .map_err(&on_sqlite)?;
            match into {
                None => return Ok(None),
                Some(Some(into)) => id = into as u64,
                Some(None) => break,
            }
        }
        let found = self.clusters_where(None, None, Some(id))?.pop();
        let Some(mut cluster) =
            found.map_or_else(|| self.cluster_row(id), |found| Ok(Some(found)))?
        else {
            return Ok(None);
        };
        let mut merged = Vec::new();
        {
            let mut statement = self
                .connection
                .prepare("SELECT id FROM failure_clusters WHERE merged_into = ?1 ORDER BY id")
                .map_err(&on_sqlite)?;
            for row in statement
                .query_map([id as i64], |row| row.get::<_, i64>(0))
                .map_err(&on_sqlite)?
            {
                merged.push(row.map_err(&on_sqlite)? as u64);
            }
        }
        let config = ClusterConfig::default();
        let mut statement = self
            .connection
            .prepare(
                "SELECT rt.run_id, rt.name, rt.status, COALESCE(rt.started_ms, 0), rt.failure_text
                 FROM run_tests rt WHERE rt.cluster_id = ?1
                 ORDER BY rt.run_id DESC, rt.name LIMIT 5",
            )
            .map_err(&on_sqlite)?;
        let examples = statement
            .query_map([id as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })
            .map_err(&on_sqlite)?
            .map(|row| {
                row.map(|(run, test, status, at_ms, text)| {
                    let (masked, matched, tokens) =
                        crate::core::cluster::explain(&cluster.template, &text, config.max_tokens);
                    FailureExample {
                        run,
                        test,
                        status,
                        at_ms,
                        text,
                        masked,
                        matched,
                        tokens,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(&on_sqlite)?;
        if cluster.failures == 0 {
            cluster.failures = examples.len() as u64;
        }
        Ok(Some(FailureDetail {
            cluster,
            merged,
            examples,
            similarity: config.similarity,
        }))
    }

    /// Every pass and failure (quarantined or not) since `since_ms`, one test at a time (in name
    /// order), for flakiness and statistics: only one test's results are in memory at once.
    pub fn each_test_results(
        &self,
        since_ms: Option<i64>,
        mut visit: impl FnMut(Vec<ResultPoint>),
    ) -> Result<(), StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT rt.name, rt.run_id, r.git_commit, s.needs_json, rt.status,
                        COALESCE(rt.started_ms, r.created_ms), rt.duration_ms
                 FROM run_tests rt JOIN runs r ON r.id = rt.run_id JOIN suites s ON s.id = rt.suite_id
                 WHERE rt.status IN ('pass', 'fail', 'error', 'timeout')
                   AND (?1 IS NULL OR COALESCE(rt.started_ms, r.created_ms) >= ?1)
                 ORDER BY rt.name",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([since_ms], |row| {
                Ok(ResultPoint {
                    test: row.get(0)?,
                    run: row.get::<_, i64>(1)? as u64,
                    commit: row.get(2)?,
                    needs: row.get(3)?,
                    passed: row.get::<_, String>(4)? == "pass",
                    at_ms: row.get(5)?,
                    duration_ms: row.get::<_, Option<i64>>(6)?.map(|ms| ms.max(0) as u64),
                })
            })
            .map_err(&on_sqlite)?;
        let mut group: Vec<ResultPoint> = Vec::new();
        for row in rows {
            let point = row.map_err(&on_sqlite)?;
            if group.first().is_some_and(|first| first.test != point.test) {
                visit(std::mem::take(&mut group));
            }
            group.push(point);
        }
        if !group.is_empty() {
            visit(group);
        }
        Ok(())
    }

    /// Tests quarantined for being flaky, with why.
    pub fn quarantine(&self) -> Result<Vec<(String, String)>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare("SELECT name, reason FROM quarantine ORDER BY name")
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Infrastructure errors per agent (lost attempts) against all its attempts, since `since_ms`;
    /// the pool that made it, when one did.
    pub fn host_stats(&self, since_ms: Option<i64>) -> Result<Vec<HostStats>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "WITH attempts(agent, lost) AS (
                    SELECT rt.agent, 0 FROM run_tests rt JOIN runs r ON r.id = rt.run_id
                     WHERE rt.agent != '' AND rt.status NOT IN ('queued', 'running')
                       AND (?1 IS NULL OR COALESCE(rt.started_ms, r.created_ms) >= ?1)
                    UNION ALL
                    SELECT agent, 1 FROM lost_attempts WHERE agent != '' AND (?1 IS NULL OR at_ms >= ?1)
                 )
                 SELECT a.agent, COALESCE(p.pool, ''), COUNT(*), SUM(a.lost)
                 FROM attempts a LEFT JOIN platforms p ON p.name = a.agent
                 GROUP BY a.agent ORDER BY a.agent",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([since_ms], |row| {
                let attempts = row.get::<_, i64>(2)? as u64;
                let infra_errors = row.get::<_, i64>(3)? as u64;
                Ok(HostStats {
                    agent: row.get(0)?,
                    pool: row.get(1)?,
                    attempts,
                    infra_errors,
                    infra_rate: infra_errors as f64 / attempts.max(1) as f64,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Runs finished in the window, and the ids of their runs' failures' clusters, for flagging those
    /// whose failures were all known system issues.
    pub fn runs_since(&self, since_ms: Option<i64>) -> Result<Vec<u64>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT id FROM runs WHERE finished_ms IS NOT NULL AND (?1 IS NULL OR created_ms >= ?1)",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([since_ms], |row| row.get::<_, i64>(0).map(|id| id as u64))
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Whether a run's failures were all known system issues.
    pub fn flag_slow(
        &self,
        detail: &mut polarizer_shared::run::RunDetail,
        settings: &AnalysisSettings,
    ) -> Result<(), StoreError> {
        flag_slow(
            &self.connection,
            &self.path,
            detail.run.id,
            &mut detail.tests,
            settings.slow_factor,
            settings.slow_min_results,
        )
    }

    pub fn infrastructure_run(&self, run: u64) -> Result<bool, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let (failures, system): (i64, i64) = self
            .connection
            .query_row(
                "SELECT COUNT(*), COUNT(fc.id) FROM run_tests rt
                 LEFT JOIN failure_clusters fc ON fc.id = rt.cluster_id AND fc.kind = 'system'
                 WHERE rt.run_id = ?1 AND rt.quarantined = 0 AND rt.status IN ('fail', 'error', 'timeout')",
                [run as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(&on_sqlite)?;
        Ok(failures > 0 && failures == system)
    }
}
