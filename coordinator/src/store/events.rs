//! The event log: an append-only SQLite table of everything agents saw (D-Bus signals, file and package
//! changes, test output, custom events) and every result, each stamped with the agent's and the
//! coordinator's clock and the run / suite / test it belongs to. Written in batches by the store's one
//! writer (inside record ingest), read by `tail` and `replay`, trimmed by age and size.

use std::path::Path;

use polarizer_shared::events::{kind, EventRow, TailQuery};
use rusqlite::{OptionalExtension, Savepoint};

use crate::store::sql::{sqlite_error, Cached, Reader, StoreError};

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
        .row("SELECT coalesce(max(id), 0) + 1 FROM events", [], |row| {
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

/// How much one page of events may hold: at most `rows` rows, and it ends with the row that reaches
/// `bytes` (a page holds at least one row, whatever its size). What a stream of stored events holds in
/// memory at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit {
    pub rows: usize,
    pub bytes: usize,
}

impl PageLimit {
    /// Whether `page`, read with this limit, may have stopped before the last row there was.
    pub fn filled_by(&self, page: &[EventRow]) -> bool {
        page.len() >= self.rows
            || page.iter().map(EventRow::approximate_bytes).sum::<usize>() >= self.bytes
    }
}

/// Where a run's timeline goes on: after this row. Timelines are in the agents' time order, ties in
/// the order the rows arrived (their ids), which is the order of `events_by_run`'s entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineCursor {
    pub agent_ms: i64,
    pub id: u64,
}

impl TimelineCursor {
    pub fn after(event: &EventRow) -> TimelineCursor {
        TimelineCursor {
            agent_ms: event.agent_ms,
            id: event.id,
        }
    }
}

/// SQL conditions with their values, numbered as they are added.
#[derive(Default)]
struct Conditions {
    conditions: Vec<String>,
    values: Vec<rusqlite::types::Value>,
}

impl Conditions {
    /// Adds `condition`, whose `?`s take `values` in order.
    fn add(&mut self, condition: &str, values: Vec<rusqlite::types::Value>) {
        let mut numbered = String::new();
        let mut values = values.into_iter();
        for part in condition.split_inclusive('?') {
            match part.strip_suffix('?') {
                Some(before) => {
                    self.values
                        .push(values.next().expect("a value for every ?"));
                    numbered.push_str(&format!("{before}?{}", self.values.len()));
                }
                None => numbered.push_str(part),
            }
        }
        debug_assert!(values.next().is_none(), "a ? for every value");
        self.conditions.push(numbered);
    }

    fn sql(&self) -> String {
        if self.conditions.is_empty() {
            "1 = 1".into()
        } else {
            self.conditions.join(" AND ")
        }
    }

    /// A query's filters but `grep`, `after_id` and `limit`. Indexed columns are written `+column`:
    /// pages walk the primary key in id order, where an index would sort its rows again for each page.
    fn of_query(query: &TailQuery) -> Conditions {
        let mut conditions = Conditions::default();
        if let Some(since) = query.since_ms {
            conditions.add("+received_ms >= ?", vec![since.into()]);
        }
        if let Some(run) = query.run {
            conditions.add("+run_id = ?", vec![(run as i64).into()]);
        }
        if let Some(test) = &query.test {
            conditions.add("test_id = ?", vec![test.clone().into()]);
        }
        for (column, wanted) in [("agent", &query.agents), ("kind", &query.kinds)] {
            if !wanted.is_empty() {
                let placeholders = vec!["?"; wanted.len()].join(", ");
                let values = wanted.iter().map(|value| value.clone().into()).collect();
                conditions.add(&format!("{column} IN ({placeholders})"), values);
            }
        }
        conditions
    }
}

impl Reader {
    /// The id a query's stored events start after: its `after_id`; past every row older than the first
    /// of its run or of its time window (found by their indexes, so pages need not walk those rows);
    /// and, with a `limit`, where the newest that many begin.
    pub fn events_start(&self, query: &TailQuery) -> Result<u64, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut start = query.after_id.unwrap_or(0);
        let first_of = |sql: &str, value: i64| -> Result<Option<u64>, StoreError> {
            self.connection
                .query_row(sql, [value], |row| row.get::<_, Option<i64>>(0))
                .map(|first| first.map(|id| id as u64))
                .map_err(&on_sqlite)
        };
        if let Some(run) = query.run {
            if let Some(first) =
                first_of("SELECT min(id) FROM events WHERE run_id = ?1", run as i64)?
            {
                start = start.max(first.saturating_sub(1));
            }
        }
        if let Some(since) = query.since_ms {
            if let Some(first) =
                first_of("SELECT min(id) FROM events WHERE received_ms >= ?1", since)?
            {
                start = start.max(first.saturating_sub(1));
            }
        }
        if let Some(limit) = query.limit {
            let mut conditions = Conditions::of_query(query);
            conditions.add("id > ?", vec![(start as i64).into()]);
            // The newest `limit` rows are those after the one past them.
            let sql = format!(
                "SELECT id FROM events WHERE {} ORDER BY id DESC LIMIT 1 OFFSET {limit}",
                conditions.sql()
            );
            let before_newest: Option<i64> = self
                .connection
                .query_row(&sql, rusqlite::params_from_iter(conditions.values), |row| {
                    row.get(0)
                })
                .optional()
                .map_err(&on_sqlite)?;
            if let Some(id) = before_newest {
                start = id as u64;
            }
        }
        Ok(start)
    }

    /// One page of the stored events matching `query` (all but `grep`, `after_id` and `limit`) with ids
    /// after `after_id`, oldest first. The next page starts after the last row of this one.
    pub fn events_page(
        &self,
        query: &TailQuery,
        after_id: u64,
        limit: PageLimit,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut conditions = Conditions::of_query(query);
        conditions.add("id > ?", vec![(after_id as i64).into()]);
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} ORDER BY id LIMIT {}",
            conditions.sql(),
            limit.rows
        );
        self.page(&sql, conditions.values, limit)
    }

    /// One page of a run's timeline (its results and events in the agents' time order), after `after`
    /// or from the start. Keyset pagination on `events_by_run`: each page is an index range, never a sort.
    pub fn timeline_page(
        &self,
        run: u64,
        after: Option<TimelineCursor>,
        limit: PageLimit,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut conditions = Conditions::default();
        conditions.add("run_id = ?", vec![(run as i64).into()]);
        if let Some(after) = after {
            conditions.add(
                "(agent_ms, id) > (?, ?)",
                vec![after.agent_ms.into(), (after.id as i64).into()],
            );
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} ORDER BY agent_ms, id LIMIT {}",
            conditions.sql(),
            limit.rows
        );
        self.page(&sql, conditions.values, limit)
    }

    /// The rows of `sql` up to `limit`, read one by one: a page never holds more than that.
    fn page(
        &self,
        sql: &str,
        values: Vec<rusqlite::types::Value>,
        limit: PageLimit,
    ) -> Result<Vec<EventRow>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self.connection.prepare_cached(sql).map_err(&on_sqlite)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(values))
            .map_err(&on_sqlite)?;
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(&on_sqlite)? {
            let event = event_row(row).map_err(&on_sqlite)?;
            bytes += event.approximate_bytes();
            page.push(event);
            if page.len() >= limit.rows || bytes >= limit.bytes {
                break;
            }
        }
        Ok(page)
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
        .run(
            "DELETE FROM events WHERE received_ms < ?1",
            [now_ms - max_age_ms],
        )
        .map_err(&on_sqlite)? as u64;
    let used: i64 = savepoint
        .row(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
            [],
            |row| row.get(0),
        )
        .map_err(&on_sqlite)?;
    let page_size: i64 = savepoint
        .row("SELECT page_size FROM pragma_page_size()", [], |row| {
            row.get(0)
        })
        .map_err(&on_sqlite)?;
    if (used * page_size) as u64 > max_bytes {
        deleted += savepoint
            .run(
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

    /// Pages walk the matching rows once, in id order, each within its row and byte limits; a limit
    /// starts at the newest that many; a run or a time window starts at its first row.
    #[tokio::test]
    async fn pages_cover_the_matching_events_once_within_their_limits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _writer) =
            crate::store::Store::open(&dir.path().join("polarizer.db")).expect("open");
        // 40 events: kinds a and b in turn, every fifth one large, the second half in run 3.
        let stored = store
            .write(|savepoint, path| {
                let first = next_id(savepoint, path)?;
                let rows: Vec<EventRow> = (0..40u64)
                    .map(|index| EventRow {
                        id: first + index,
                        agent: "vm-1".into(),
                        seq: index,
                        received_ms: 7,
                        kind: if index % 2 == 0 { "a" } else { "b" }.into(),
                        run: (index >= 20).then_some(3),
                        data: "x".repeat(if index % 5 == 0 { 3000 } else { 10 }),
                        ..EventRow::default()
                    })
                    .collect();
                insert_rows(savepoint, path, "vm-1", 7, &rows.iter().collect::<Vec<_>>())?;
                Ok(rows)
            })
            .await
            .expect("store");
        let reader = store.reader().expect("reader");
        let limit = PageLimit {
            rows: 4,
            bytes: 2500,
        };
        let read_all = |query: &TailQuery| {
            let mut after = reader.events_start(query).expect("start");
            let (mut all, mut pages) = (Vec::new(), 0);
            loop {
                let page = reader.events_page(query, after, limit).expect("page");
                let Some(last) = page.last() else { break };
                after = last.id;
                pages += 1;
                assert!(page.len() <= limit.rows);
                let before_last: usize = page[..page.len() - 1]
                    .iter()
                    .map(EventRow::approximate_bytes)
                    .sum();
                assert!(
                    before_last < limit.bytes,
                    "a page ends with the row that fills it"
                );
                let filled = limit.filled_by(&page);
                all.extend(page);
                if !filled {
                    break;
                }
            }
            (all, pages)
        };
        let only_a = TailQuery {
            kinds: vec!["a".into()],
            ..TailQuery::default()
        };
        let (all, pages) = read_all(&only_a);
        let expected: Vec<EventRow> = stored
            .iter()
            .filter(|event| event.kind == "a")
            .cloned()
            .collect();
        assert_eq!(all, expected);
        assert!(pages >= 5, "20 rows, 4 a page at most: {pages} pages");
        let newest = TailQuery {
            limit: Some(3),
            ..only_a.clone()
        };
        assert_eq!(read_all(&newest).0, expected[expected.len() - 3..]);
        let in_run = TailQuery {
            run: Some(3),
            ..TailQuery::default()
        };
        assert_eq!(reader.events_start(&in_run).expect("start"), stored[19].id);
        assert_eq!(read_all(&in_run).0, stored[20..]);
        let none = TailQuery {
            limit: Some(0),
            ..TailQuery::default()
        };
        assert!(read_all(&none).0.is_empty());
    }
}
