//! Polarion in SQLite: each test's work item id once an import's log named it, and every import from
//! waiting to be uploaded until Polarion's job ended. An import is stored (its file written first)
//! before any upload, so one that could not start is tried again, across restarts too.

use std::collections::BTreeMap;

use polarizer_shared::polarion::ImportRecord;
use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{sqlite_error, Reader, StoreError};

/// An import to store.
#[derive(Clone, Debug)]
pub struct NewImport {
    pub kind: &'static str,
    /// `operator` or `on-finish` (at most one set per run).
    pub origin: &'static str,
    pub run: Option<u64>,
    pub part: u32,
    pub parts: u32,
    pub file: String,
    pub dry_run: bool,
    /// The lookup value sent for each test → its id, for reading the job's log.
    pub names: BTreeMap<String, String>,
    pub now_ms: i64,
}

/// Stores an import, waiting to be uploaded; `None` when an `on-finish` import of that run and part
/// exists already.
pub fn insert(connection: &Connection, import: &NewImport) -> rusqlite::Result<Option<u64>> {
    let names = serde_json::to_string(&import.names).unwrap_or_else(|_| "{}".into());
    let inserted = connection.execute(
        "INSERT OR IGNORE INTO polarion_imports (kind, origin, run_id, part, parts, file, dry_run, names_json,
             state, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'waiting', ?9, ?9)",
        params![
            import.kind,
            import.origin,
            import.run.map(|run| run as i64),
            import.part,
            import.parts,
            import.file,
            import.dry_run,
            names,
            import.now_ms
        ],
    )?;
    Ok((inserted == 1).then(|| connection.last_insert_rowid() as u64))
}

/// An import as the worker needs it.
#[derive(Clone, Debug)]
pub struct OpenImport {
    pub id: u64,
    pub kind: String,
    pub file: String,
    pub state: String,
    pub job_ids: Vec<u64>,
    pub names: BTreeMap<String, String>,
    pub tries: u32,
    pub next_try_ms: i64,
    pub uploaded_ms: Option<i64>,
}

fn job_ids(text: &str) -> Vec<u64> {
    text.split(',')
        .filter_map(|id| id.trim().parse().ok())
        .collect()
}

/// Uploaded: Polarion gave these jobs.
pub fn uploaded(
    connection: &Connection,
    id: u64,
    jobs: &[u64],
    now_ms: i64,
) -> rusqlite::Result<()> {
    let jobs: Vec<String> = jobs.iter().map(u64::to_string).collect();
    connection.execute(
        "UPDATE polarion_imports SET state = 'queued', job_ids = ?2, uploaded_ms = ?3, updated_ms = ?3,
             message = '', next_try_ms = 0 WHERE id = ?1",
        params![id as i64, jobs.join(","), now_ms],
    )?;
    Ok(())
}

/// A new state and message; `next_try_ms` when it is looked at again.
pub fn set_state(
    connection: &Connection,
    id: u64,
    state: &str,
    message: &str,
    next_try_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE polarion_imports SET state = ?2, message = ?3, next_try_ms = ?4, updated_ms = ?5 WHERE id = ?1",
        params![id as i64, state, message, next_try_ms, now_ms],
    )?;
    Ok(())
}

/// An upload that could not start: tried again at `next_try_ms`.
pub fn upload_failed(
    connection: &Connection,
    id: u64,
    message: &str,
    next_try_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE polarion_imports SET tries = tries + 1, message = ?2, next_try_ms = ?3, updated_ms = ?4
         WHERE id = ?1",
        params![id as i64, message, next_try_ms, now_ms],
    )?;
    Ok(())
}

/// The job ended: its state, what its log said, and the work item ids it named.
pub fn finished(
    connection: &Connection,
    id: u64,
    state: &str,
    message: &str,
    testrun_url: &str,
    learnt: &[(String, String)],
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE polarion_imports SET state = ?2, message = ?3, testrun_url = ?4, updated_ms = ?5 WHERE id = ?1",
        params![id as i64, state, message, testrun_url, now_ms],
    )?;
    let mut statement = connection.prepare_cached(
        "INSERT INTO polarion_ids (test_id, polarion_id, learnt_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (test_id) DO UPDATE SET polarion_id = ?2, learnt_ms = ?3",
    )?;
    for (test, polarion_id) in learnt {
        statement.execute(params![test, polarion_id, now_ms])?;
    }
    Ok(())
}

impl Reader {
    /// Imports not ended, the next due first.
    pub fn open_imports(&self) -> Result<Vec<OpenImport>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, kind, file, state, job_ids, names_json, tries, next_try_ms, uploaded_ms
                 FROM polarion_imports WHERE state IN ('waiting', 'queued', 'running')
                 ORDER BY next_try_ms, id",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| {
                let names: String = row.get(5)?;
                Ok(OpenImport {
                    id: row.get::<_, i64>(0)? as u64,
                    kind: row.get(1)?,
                    file: row.get(2)?,
                    state: row.get(3)?,
                    job_ids: job_ids(&row.get::<_, String>(4)?),
                    names: serde_json::from_str(&names).unwrap_or_default(),
                    tries: row.get(6)?,
                    next_try_ms: row.get(7)?,
                    uploaded_ms: row.get(8)?,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// The newest `limit` imports, newest first.
    pub fn imports(&self, limit: u32) -> Result<Vec<ImportRecord>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, kind, run_id, part, parts, dry_run, state, job_ids, testrun_url, message, tries,
                        created_ms, updated_ms
                 FROM polarion_imports ORDER BY id DESC LIMIT ?1",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([limit], |row| {
                Ok(ImportRecord {
                    id: row.get::<_, i64>(0)? as u64,
                    kind: row.get(1)?,
                    run: row.get::<_, Option<i64>>(2)?.map(|run| run as u64),
                    part: row.get(3)?,
                    parts: row.get(4)?,
                    dry_run: row.get(5)?,
                    state: row.get(6)?,
                    job_ids: job_ids(&row.get::<_, String>(7)?),
                    testrun_url: row.get(8)?,
                    message: row.get(9)?,
                    tries: row.get(10)?,
                    created_ms: row.get(11)?,
                    updated_ms: row.get(12)?,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// The work item id learnt for a test, if any.
    pub fn polarion_id(&self, test: &str) -> Result<Option<String>, StoreError> {
        self.connection
            .query_row(
                "SELECT polarion_id FROM polarion_ids WHERE test_id = ?1",
                [test],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    /// Every learnt work item id, by test.
    pub fn polarion_ids(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare("SELECT test_id, polarion_id FROM polarion_ids")
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }
}
