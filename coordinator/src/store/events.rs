//! The event log: an append-only SQLite table of everything agents saw (D-Bus signals, file and package
//! changes, test output, custom events) and every result, each stamped with the agent's and the
//! coordinator's clock and the run / suite / test it belongs to. Written in batches by the store's one
//! writer (inside record ingest), read by `tail` and `replay`, trimmed by age and size.

use std::path::Path;

use polarizer_shared::events::{kind, EventRow, TailQuery};
use rusqlite::Savepoint;

use crate::store::sql::{sqlite_error, Reader, StoreError};

/// An event about to be stored (its id comes from the insert).
/// Owned, so the stored row moves into the one published to followers without a copy.
pub struct NewEvent<'a> {
    pub agent: &'a str,
    pub seq: u64,
    pub agent_ms: i64,
    pub received_ms: i64,
    pub kind: String,
    pub run: Option<u64>,
    pub suite: Option<u64>,
    pub test: String,
    pub summary: String,
    pub data: String,
}

impl<'a> NewEvent<'a> {
    /// An event of `kind` from `agent`'s record `seq` (made at `agent_ms`, received at `received_ms`),
    /// belonging to no run until [`in_run`](Self::in_run) says otherwise.
    pub fn new(agent: &'a str, seq: u64, agent_ms: i64, received_ms: i64, kind: String) -> Self {
        NewEvent {
            agent,
            seq,
            agent_ms,
            received_ms,
            kind,
            run: None,
            suite: None,
            test: String::new(),
            summary: String::new(),
            data: String::new(),
        }
    }

    pub fn in_run(self, run: Option<u64>, suite: Option<u64>, test: String) -> Self {
        NewEvent {
            run,
            suite,
            test,
            ..self
        }
    }

    pub fn saying(self, summary: String, data: String) -> Self {
        NewEvent {
            summary,
            data,
            ..self
        }
    }
}

impl NewEvent<'_> {
    /// The row as stored and published, with the id the caller gave it.
    pub fn with_id(self, id: u64) -> EventRow {
        EventRow {
            id,
            agent: self.agent.to_string(),
            seq: self.seq,
            agent_ms: self.agent_ms,
            received_ms: self.received_ms,
            kind: self.kind,
            run: self.run,
            suite: self.suite,
            test: self.test,
            summary: self.summary,
            data: self.data,
        }
    }
}

/// The id the next stored event gets: the writer numbers a batch's events itself, in record order, so
/// they can be inserted a few hundred rows per statement.
pub fn next_id(savepoint: &Savepoint<'_>, path: &Path) -> Result<u64, StoreError> {
    savepoint
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM events", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|id| id as u64)
        .map_err(sqlite_error(path))
}

/// Stores one agent's rows, all received at `received_ms` and numbered from [`next_id`], in order.
/// SQLite gives each row the next id itself (one more than the largest, as it does for a table only
/// ever appended to), which spares it a search per row for a given id; that they are the ids the
/// rows carry is checked, and a mismatch fails the transaction.
pub fn insert_rows(
    savepoint: &Savepoint<'_>,
    path: &Path,
    agent: &str,
    received_ms: i64,
    rows: &[&EventRow],
) -> Result<(), StoreError> {
    let Some(last) = rows.last() else {
        return Ok(());
    };
    debug_assert!(rows
        .iter()
        .all(|row| row.agent == agent && row.received_ms == received_ms));
    /// Columns as SQLite takes them: optional numbers converted once.
    struct Bound<'a> {
        row: &'a EventRow,
        seq: i64,
        run: Option<i64>,
        suite: Option<i64>,
    }
    let bound: Vec<Bound<'_>> = rows
        .iter()
        .map(|row| Bound {
            row,
            seq: row.seq as i64,
            run: row.run.map(|run| run as i64),
            suite: row.suite.map(|suite| suite as i64),
        })
        .collect();
    crate::store::sql::insert_rows_sharing(
        savepoint,
        "INSERT INTO events (agent, received_ms, seq, agent_ms, kind, run_id, suite_id, test_id, summary, data)",
        "?1, ?2, ?, ?, ?, ?, ?, ?, ?, ?",
        &[&agent, &received_ms],
        &bound,
        |bound, values| {
            values.extend([
                &bound.seq as &dyn rusqlite::ToSql,
                &bound.row.agent_ms,
                &bound.row.kind,
                &bound.run,
                &bound.suite,
                &bound.row.test,
                &bound.row.summary,
                &bound.row.data,
            ]);
        },
    )
    .map_err(sqlite_error(path))?;
    let stored = savepoint.last_insert_rowid();
    if stored != last.id as i64 {
        return Err(StoreError::Sqlite {
            path: path.to_path_buf(),
            source: rusqlite::Error::ToSqlConversionFailure(
                format!(
                    "events were numbered up to {} but stored up to id {stored}",
                    last.id
                )
                .into(),
            ),
        });
    }
    Ok(())
}

/// Does `event` pass the query's filters (all but `grep`, which the caller compiles once)?
pub fn matches(query: &TailQuery, event: &EventRow) -> bool {
    (query.agents.is_empty() || query.agents.iter().any(|agent| agent == &event.agent))
        && (query.kinds.is_empty() || query.kinds.iter().any(|kind| kind == &event.kind))
        && query.run.is_none_or(|run| event.run == Some(run))
        && query.test.as_ref().is_none_or(|test| &event.test == test)
        && query
            .since_ms
            .is_none_or(|since| event.received_ms >= since)
        && query.after_id.is_none_or(|after| event.id > after)
}

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: row.get::<_, i64>(0)? as u64,
        agent: row.get(1)?,
        seq: row.get::<_, i64>(2)? as u64,
        agent_ms: row.get(3)?,
        received_ms: row.get(4)?,
        kind: row.get(5)?,
        run: row.get::<_, Option<i64>>(6)?.map(|run| run as u64),
        suite: row.get::<_, Option<i64>>(7)?.map(|suite| suite as u64),
        test: row.get(8)?,
        summary: row.get(9)?,
        data: row.get(10)?,
    })
}

const COLUMNS: &str =
    "id, agent, seq, agent_ms, received_ms, kind, run_id, suite_id, test_id, summary, data";

impl Reader {
    /// Stored events matching `query` (all but `grep`), oldest first; with a limit, the newest that many.
    pub fn events(&self, query: &TailQuery) -> Result<Vec<EventRow>, StoreError> {
        let mut conditions = vec!["1 = 1".to_string()];
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut bind = |condition: String, value: rusqlite::types::Value| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("?{}", values.len())));
        };
        if let Some(after) = query.after_id {
            bind("id > ?".into(), (after as i64).into());
        }
        if let Some(since) = query.since_ms {
            bind("received_ms >= ?".into(), since.into());
        }
        if let Some(run) = query.run {
            bind("run_id = ?".into(), (run as i64).into());
        }
        if let Some(test) = &query.test {
            bind("test_id = ?".into(), test.clone().into());
        }
        for (column, wanted) in [("agent", &query.agents), ("kind", &query.kinds)] {
            if !wanted.is_empty() {
                let start = values.len();
                values.extend(wanted.iter().map(|value| value.clone().into()));
                let placeholders: Vec<String> = (start + 1..=values.len())
                    .map(|index| format!("?{index}"))
                    .collect();
                conditions.push(format!("{column} IN ({})", placeholders.join(", ")));
            }
        }
        let limit = query.limit.map_or(i64::MAX, i64::from);
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM events WHERE {} ORDER BY id DESC LIMIT {limit}) ORDER BY id",
            conditions.join(" AND ")
        );
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self.connection.prepare(&sql).map_err(&on_sqlite)?;
        let rows = statement
            .query_map(rusqlite::params_from_iter(values), event_row)
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// A run's timeline: its results and its events, in the agents' time order.
    pub fn timeline(&self, run: u64) -> Result<Vec<EventRow>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT {COLUMNS} FROM events WHERE run_id = ?1 ORDER BY agent_ms, agent, seq"
            ))
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([run as i64], event_row)
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// The highest event id stored (0 when none).
    pub fn last_event_id(&self) -> Result<u64, StoreError> {
        self.connection
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|id| id as u64)
            .map_err(sqlite_error(&self.path))
    }
}

/// Deletes events older than `max_age_ms`, then the oldest tenth while the database's used pages exceed
/// `max_bytes`. Returns how many were deleted.
pub fn trim(
    savepoint: &Savepoint<'_>,
    path: &Path,
    now_ms: i64,
    max_age_ms: i64,
    max_bytes: u64,
) -> Result<u64, StoreError> {
    let on_sqlite = sqlite_error(path);
    let mut deleted = savepoint
        .execute(
            "DELETE FROM events WHERE received_ms < ?1",
            [now_ms - max_age_ms],
        )
        .map_err(&on_sqlite)? as u64;
    let used: i64 = savepoint
        .query_row(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
            [],
            |row| row.get(0),
        )
        .map_err(&on_sqlite)?;
    let page_size: i64 = savepoint
        .query_row("SELECT page_size FROM pragma_page_size()", [], |row| {
            row.get(0)
        })
        .map_err(&on_sqlite)?;
    if (used * page_size) as u64 > max_bytes {
        deleted += savepoint
            .execute(
                "DELETE FROM events WHERE id <= (SELECT MIN(id) + (MAX(id) - MIN(id)) / 10 FROM events)",
                [],
            )
            .map_err(&on_sqlite)? as u64;
    }
    Ok(deleted)
}

/// A result as a timeline entry.
pub fn result_summary(test: &str, status: &str, duration_ms: u64, message: &str) -> String {
    let mut summary = format!("{status} {test} ({:.1} s)", duration_ms as f64 / 1000.0);
    if !message.is_empty() {
        summary.push_str(": ");
        summary.push_str(message);
    }
    summary
}

pub const OUTPUT: &str = kind::OUTPUT;
pub const RESULT: &str = kind::RESULT;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, seq: u64) -> EventRow {
        EventRow {
            id,
            agent: "vm-1".into(),
            seq,
            received_ms: 7,
            kind: "app".into(),
            ..EventRow::default()
        }
    }

    /// SQLite numbers the rows; the ids ingest gave them are checked against that, and a batch
    /// numbered otherwise is refused.
    #[test]
    fn rows_keep_the_ids_they_were_numbered_with_or_are_refused() {
        let path = Path::new("events.db");
        let mut connection = rusqlite::Connection::open_in_memory().expect("open");
        connection
            .execute_batch(crate::store::migrations::EVENTS)
            .expect("migrate");
        let savepoint = connection.savepoint().expect("savepoint");
        let first = next_id(&savepoint, path).expect("next id");
        let rows = [row(first, 1), row(first + 1, 2)];
        insert_rows(
            &savepoint,
            path,
            "vm-1",
            7,
            &rows.iter().collect::<Vec<_>>(),
        )
        .expect("insert");
        let stored: Vec<(i64, i64)> = savepoint
            .prepare("SELECT id, seq FROM events ORDER BY id")
            .expect("prepare")
            .query_map([], |found| Ok((found.get(0)?, found.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(stored, vec![(first as i64, 1), (first as i64 + 1, 2)]);
        // Numbered as if the table were empty: refused, naming the database.
        let stale = [row(first, 3)];
        let error = insert_rows(
            &savepoint,
            path,
            "vm-1",
            7,
            &stale.iter().collect::<Vec<_>>(),
        )
        .expect_err("a mismatched id is refused");
        assert!(error.to_string().contains("events.db"), "{error}");
    }
}
