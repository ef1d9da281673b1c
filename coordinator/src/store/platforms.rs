//! Platforms made by pools, in SQLite: a row from the moment a pool decides to make one until it is
//! destroyed, so a coordinator restarted mid-create finds what it left behind and destroys it. A name
//! comes from the row's id, which only ever grows: no two platforms (nor their agents) share a name.

use polarizer_shared::platforms::{PlatformRecord, PlatformState};
use polarizer_shared::run::SuiteRef;
use rusqlite::{params, Connection};

use super::sql::{sqlite_error, unknown_value, Reader, StoreError};

/// A new platform of `pool`, creating, named `POOL-ID`.
pub fn insert(
    connection: &Connection,
    pool: &str,
    suite: Option<SuiteRef>,
    image: &str,
    now_ms: i64,
) -> rusqlite::Result<PlatformRecord> {
    connection.execute(
        "INSERT INTO platforms (name, pool, state, run_id, suite_id, attempt, created_ms, state_ms, image)
         VALUES ('', ?1, 'creating', ?2, ?3, ?4, ?5, ?5, ?6)",
        params![
            pool,
            suite.map(|suite| suite.run as i64),
            suite.map(|suite| suite.suite as i64),
            suite.map(|suite| suite.attempt),
            now_ms,
            image
        ],
    )?;
    let id = connection.last_insert_rowid();
    let name = format!("{pool}-{id}");
    connection.execute(
        "UPDATE platforms SET name = ?2 WHERE id = ?1",
        params![id, name],
    )?;
    Ok(PlatformRecord {
        name,
        pool: pool.to_string(),
        state: PlatformState::Creating,
        provider_id: String::new(),
        address: String::new(),
        suite,
        created_ms: now_ms,
        state_ms: now_ms,
        tries: 0,
        error: String::new(),
        image: image.to_string(),
    })
}

/// Writes a platform's row as it is now.
pub fn update(connection: &Connection, platform: &PlatformRecord) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE platforms SET state = ?2, provider_id = ?3, address = ?4, run_id = ?5, suite_id = ?6,
             attempt = ?7, state_ms = ?8, tries = ?9, error = ?10
         WHERE name = ?1",
        params![
            platform.name,
            platform.state.as_str(),
            platform.provider_id,
            platform.address,
            platform.suite.map(|suite| suite.run as i64),
            platform.suite.map(|suite| suite.suite as i64),
            platform.suite.map(|suite| suite.attempt),
            platform.state_ms,
            platform.tries,
            platform.error,
        ],
    )?;
    Ok(())
}

/// A destroyed platform: its row, and its agent's inventory row and tokens (the name is never used
/// again, so its credential is dead with it).
pub fn remove(connection: &Connection, name: &str) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM platforms WHERE name = ?1", [name])?;
    forget_agent(connection, name)
}

/// Forgets an agent a platform's failed try may have enrolled, so the next try enrolls afresh.
pub fn forget_agent(connection: &Connection, name: &str) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM agents WHERE name = ?1", [name])?;
    connection.execute("DELETE FROM host_tokens WHERE name = ?1", [name])?;
    Ok(())
}

fn platform_state(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<PlatformState> {
    let text: String = row.get(index)?;
    PlatformState::parse(&text).ok_or_else(|| unknown_value(index, "platform state", &text))
}

impl Reader {
    /// Every platform, oldest first.
    pub fn platforms(&self) -> Result<Vec<PlatformRecord>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT name, pool, state, provider_id, address, run_id, suite_id, attempt,
                        created_ms, state_ms, tries, error, image
                 FROM platforms ORDER BY id",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| {
                let run: Option<i64> = row.get(5)?;
                let suite: Option<i64> = row.get(6)?;
                let attempt: Option<u32> = row.get(7)?;
                Ok(PlatformRecord {
                    name: row.get(0)?,
                    pool: row.get(1)?,
                    state: platform_state(row, 2)?,
                    provider_id: row.get(3)?,
                    address: row.get(4)?,
                    suite: match (run, suite, attempt) {
                        (Some(run), Some(suite), Some(attempt)) => Some(SuiteRef {
                            run: run as u64,
                            suite: suite as u64,
                            attempt,
                        }),
                        _ => None,
                    },
                    created_ms: row.get(8)?,
                    state_ms: row.get(9)?,
                    tries: row.get(10)?,
                    error: row.get(11)?,
                    image: row.get(12)?,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }
}
