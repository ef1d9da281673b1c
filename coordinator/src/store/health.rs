//! Whether the store can commit. The writer records every transaction's outcome here; `/healthz` and
//! `/metrics` read it. Only failures of the storage itself count (a full disk, an I/O error, a
//! read-only or damaged file): a refused write (a constraint, a stale lease) says nothing about health.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::sql::StoreError;

#[derive(Default)]
pub struct StoreHealth {
    failing: Mutex<Option<Failing>>,
}

/// The store cannot commit: since when (Unix milliseconds) and the latest error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing {
    pub since_ms: i64,
    pub error: String,
}

impl StoreHealth {
    /// A transaction committed: whatever failed before works again.
    pub fn committed(&self) {
        self.lock().take();
    }

    /// A transaction failed with `error`.
    pub fn failed(&self, error: &StoreError) {
        if !is_storage_failure(error) {
            return;
        }
        let mut failing = self.lock();
        let since_ms = failing.as_ref().map_or_else(now_ms, |known| known.since_ms);
        *failing = Some(Failing {
            since_ms,
            error: error.to_string(),
        });
    }

    pub fn failing(&self) -> Option<Failing> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn is_storage_failure(error: &StoreError) -> bool {
    use rusqlite::ErrorCode::*;
    match error {
        StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(failure, _),
            ..
        } => matches!(
            failure.code,
            DiskFull | SystemIoFailure | ReadOnly | DatabaseCorrupt | NotADatabase | CannotOpen
        ),
        _ => false,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::Sqlite {
            path: "polarizer.db".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn a_full_disk_is_unhealthy_until_a_commit_succeeds_and_a_refused_write_never_is() {
        let health = StoreHealth::default();
        health.failed(&sqlite(rusqlite::ffi::SQLITE_CONSTRAINT));
        assert_eq!(health.failing(), None);
        health.failed(&sqlite(rusqlite::ffi::SQLITE_FULL));
        let first = health.failing().expect("failing");
        assert!(first.error.contains("full"), "{}", first.error);
        health.failed(&sqlite(rusqlite::ffi::SQLITE_IOERR));
        let second = health.failing().expect("still failing");
        assert_eq!(
            second.since_ms, first.since_ms,
            "failing since the first failure"
        );
        health.committed();
        assert_eq!(health.failing(), None);
    }
}
