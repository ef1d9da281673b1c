//! What every table module uses: the store's error, the read connection, typed reads of text columns,
//! and multi-row inserts. Below the writer and the table modules, so none of them imports another's
//! parent.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this polarizer understands ({supported}); upgrade polarizer")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database {path} has schema version {found}, this polarizer uses {expected}: run the polarizer that matches the coordinator (a coordinator migrates at start)")]
    SchemaMismatch {
        path: PathBuf,
        found: i64,
        expected: i64,
    },
    #[error("agent {name:?} is already enrolled")]
    NameTaken { name: String },
    #[error("the enrollment token for {name:?} is spent, expired or another agent's")]
    HostTokenRefused { name: String },
    #[error("no agent named {name:?} in the inventory")]
    NoSuchAgent { name: String },
    #[error("agent {name:?} is not waiting for approval: it is {state}")]
    NotPending { name: String, state: &'static str },
    #[error("stored facts of agent {name:?} are unreadable: {reason}")]
    CorruptFacts { name: String, reason: String },
    #[error("store transaction failed: {reason}")]
    Transaction { reason: String },
    #[error("the store has shut down")]
    Closed,
}

/// Inserts `rows` with multi-row `INSERT`s (`head` is `INSERT INTO t (a, b, …)`, `width` its column
/// count): one statement step per few hundred rows instead of one per row. `bind` adds a row's values.
pub fn insert_rows<R>(
    connection: &Connection,
    head: &str,
    width: usize,
    rows: &[R],
    bind: impl for<'a> Fn(&'a R, &mut Vec<&'a dyn rusqlite::ToSql>),
) -> rusqlite::Result<()> {
    insert_rows_sharing(
        connection,
        head,
        &vec!["?"; width].join(", "),
        &[],
        rows,
        bind,
    )
}

/// [`insert_rows`] where some values are the same in every row and bound once: `shared` are `?1`,
/// `?2`, … and `row` spells one row's values, e.g. `?1, ?, ?` for a shared first column and two that
/// `bind` adds per row.
pub fn insert_rows_sharing<R>(
    connection: &Connection,
    head: &str,
    row: &str,
    shared: &[&dyn rusqlite::ToSql],
    rows: &[R],
    bind: impl for<'a> Fn(&'a R, &mut Vec<&'a dyn rusqlite::ToSql>),
) -> rusqlite::Result<()> {
    let width = row
        .split(',')
        .filter(|value| value.trim() == "?")
        .count()
        .max(1);
    // SQLite binds at most 32,766 parameters per statement.
    let per_statement = ((32_766 - shared.len()) / width).clamp(1, 256);
    let mut values: Vec<&dyn rusqlite::ToSql> =
        Vec::with_capacity(shared.len() + per_statement * width);
    let row = format!("({row})");
    for chunk in rows.chunks(per_statement) {
        let sql = format!(
            "{head} VALUES {}",
            vec![row.as_str(); chunk.len()].join(", ")
        );
        let mut statement = connection.prepare_cached(&sql)?;
        values.clear();
        values.extend_from_slice(shared);
        for row in chunk {
            bind(row, &mut values);
        }
        statement.execute(values.as_slice())?;
    }
    Ok(())
}

/// A text column holding a value its enum does not know: the database was written by something else.
pub fn unknown_value(index: usize, what: &str, text: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        format!("unknown {what} {text:?}").into(),
    )
}

pub fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Statements kept prepared per connection: the writer's every statement, and then some. (sqlite's
/// default of 16 thrashed: with thousands of agents' small batches, parsing SQL was a third of the
/// writer's time.)
pub const STATEMENT_CACHE: usize = 256;

/// `execute` and `query_row` through the connection's statement cache: what the writer runs for every
/// batch is parsed once.
pub trait Cached {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, read)
    }
}

pub struct Reader {
    pub(crate) connection: Connection,
    pub(crate) path: PathBuf,
}

impl Reader {
    /// A read-only connection to a coordinator's database, for tools and benchmarks beside a running
    /// coordinator (WAL lets them read while it writes).
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let connection = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error(path))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite_error(path))?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Reader {
            connection,
            path: path.to_path_buf(),
        })
    }
}
