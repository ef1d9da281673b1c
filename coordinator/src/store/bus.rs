//! Message buses in SQLite: the runs build messages started (what their CI messages say of the build,
//! and how far they were announced) and every CI message from stored to sent. A message is stored in
//! the same transaction that moves its run's announced state, and sent until the broker confirms it.

use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{sqlite_error, Reader, StoreError};

/// A run a build message started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusRun {
    pub run: u64,
    pub trigger: u64,
    pub bus: String,
    pub build_json: String,
    pub rule_name: String,
    /// The last state announced (`queued`, `running`, `complete`, `error`), empty before the first.
    pub announced: String,
    /// The run's state now.
    pub run_state: String,
    pub message: String,
}

/// A CI message waiting to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub id: u64,
    pub topic: String,
    pub message_id: String,
    pub body: String,
    pub tries: u64,
}

pub fn record_run(
    connection: &Connection,
    run: u64,
    trigger: u64,
    bus: &str,
    build_json: &str,
    rule_name: &str,
) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT OR IGNORE INTO bus_runs (run_id, trigger_id, bus, build_json, rule_name)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run as i64, trigger as i64, bus, build_json, rule_name],
    )?;
    Ok(())
}

/// Moves a run's announced state and stores its messages (topic, message id, body), at once.
pub fn announce(
    connection: &Connection,
    run: u64,
    bus: &str,
    state: &str,
    messages: &[(String, String, String)],
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE bus_runs SET announced = ?2 WHERE run_id = ?1",
        params![run as i64, state],
    )?;
    let mut insert = connection.prepare_cached(
        "INSERT INTO bus_outbox (bus, topic, message_id, body, run_id, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (topic, message_id, body) in messages {
        insert.execute(params![bus, topic, message_id, body, run as i64, now_ms])?;
    }
    Ok(())
}

pub fn sent(connection: &Connection, id: u64, now_ms: i64) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE bus_outbox SET sent_ms = ?2, error = '' WHERE id = ?1",
        params![id as i64, now_ms],
    )?;
    Ok(())
}

pub fn not_sent(connection: &Connection, id: u64, error: &str) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE bus_outbox SET tries = tries + 1, error = ?2 WHERE id = ?1",
        params![id as i64, error],
    )?;
    Ok(())
}

impl Reader {
    /// Runs started by build messages whose end has not been announced, with their state now.
    pub fn open_bus_runs(&self) -> Result<Vec<BusRun>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT bus_runs.run_id, trigger_id, bus, build_json, rule_name, announced, runs.state,
                        runs.message
                 FROM bus_runs JOIN runs ON runs.id = bus_runs.run_id
                 WHERE announced NOT IN ('complete', 'error') ORDER BY bus_runs.run_id",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| {
                Ok(BusRun {
                    run: row.get::<_, i64>(0)? as u64,
                    trigger: row.get::<_, i64>(1)? as u64,
                    bus: row.get(2)?,
                    build_json: row.get(3)?,
                    rule_name: row.get(4)?,
                    announced: row.get(5)?,
                    run_state: row.get(6)?,
                    message: row.get(7)?,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// A run's tests by type (`functional`, …; empty when a test has none) and status, counted.
    pub fn run_types(&self, run: u64) -> Result<Vec<(String, String, u64)>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT coalesce(json_extract(m.metadata_json, '$.test_type'), ''), t.status, count(*)
                 FROM run_tests t JOIN run_test_metadata m ON m.run_id = t.run_id AND m.test_id = t.test_id
                 WHERE t.run_id = ?1 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([run as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// The platforms a run's suites ran on, as (os, architecture).
    pub fn run_systems(&self, run: u64) -> Result<Vec<(String, String)>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT DISTINCT trim(coalesce(json_extract(agents.facts_json, '$.distro_id'), '') || '-'
                        || coalesce(json_extract(agents.facts_json, '$.distro_version'), ''), '-'),
                        coalesce(json_extract(agents.facts_json, '$.arch'), '')
                 FROM suites JOIN agents ON agents.name = suites.agent
                 WHERE suites.run_id = ?1 AND suites.agent != '' ORDER BY 1, 2",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([run as i64], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// A bus's messages not sent yet, oldest first.
    pub fn unsent_bus_messages(&self, bus: &str, limit: u32) -> Result<Vec<Outgoing>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, topic, message_id, body, tries FROM bus_outbox
                 WHERE bus = ?1 AND sent_ms IS NULL ORDER BY id LIMIT ?2",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map(params![bus, limit], |row| {
                Ok(Outgoing {
                    id: row.get::<_, i64>(0)? as u64,
                    topic: row.get(1)?,
                    message_id: row.get(2)?,
                    body: row.get(3)?,
                    tries: row.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// The build message that started a run, as (bus, build JSON), if one did.
    pub fn bus_run(&self, run: u64) -> Result<Option<(String, String)>, StoreError> {
        self.connection
            .query_row(
                "SELECT bus, build_json FROM bus_runs WHERE run_id = ?1",
                [run as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }
}
