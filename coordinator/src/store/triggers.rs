//! Triggers from outside (GitHub deliveries) and the reports they owe, in SQLite. A delivery is stored
//! before it is answered, so a coordinator stopped mid-plan plans it at its next start; a report is
//! stored before it is sent, and sent again until GitHub took its newest version.

use polarizer_shared::triggers::{TriggerOutcome, TriggerRecord};
use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{sqlite_error, unknown_value, Reader, StoreError};

/// At most this many refused deliveries are kept (anyone can send them): the oldest go first.
const REFUSED_KEPT: i64 = 1000;

/// A delivery as it arrived, before planning.
#[derive(Clone, Debug, Default)]
pub struct NewTrigger {
    pub received_ms: i64,
    pub source: String,
    pub delivery: String,
    pub repo: String,
    pub event: String,
    /// The dedup key's kind (`push`, `pull_request`); empty for deliveries never deduplicated.
    pub kind: String,
    pub sha: String,
    pub git_ref: String,
    pub outcome: Option<TriggerOutcome>,
    pub reason: String,
    /// What planning needs later (the daemon's own JSON).
    pub change_json: String,
}

/// What became of an insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    New(u64),
    /// The same delivery id, or the same change within the window: this trigger was first.
    Duplicate {
        id: u64,
        of: u64,
    },
}

fn insert(
    connection: &Connection,
    trigger: &NewTrigger,
    outcome: TriggerOutcome,
    reason: &str,
) -> rusqlite::Result<u64> {
    connection.execute(
        "INSERT INTO triggers (received_ms, source, delivery, repo, event, kind, sha, git_ref, outcome,
                               reason, change_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            trigger.received_ms,
            trigger.source,
            trigger.delivery,
            trigger.repo,
            trigger.event,
            trigger.kind,
            trigger.sha,
            trigger.git_ref,
            outcome.as_str(),
            reason,
            trigger.change_json,
        ],
    )?;
    Ok(connection.last_insert_rowid() as u64)
}

/// Records a delivery. A `Received` one is checked for duplicates first: its delivery id seen before
/// (refused ones do not count: anyone can send those), or the same repository, commit and kind
/// within `window_ms`.
pub fn record(
    connection: &Connection,
    trigger: &NewTrigger,
    window_ms: i64,
) -> rusqlite::Result<Recorded> {
    let outcome = trigger.outcome.unwrap_or(TriggerOutcome::Received);
    if outcome == TriggerOutcome::Refused {
        let id = insert(connection, trigger, outcome, &trigger.reason)?;
        connection.execute(
            "DELETE FROM triggers WHERE outcome = 'refused' AND id < (SELECT min(id) FROM
                 (SELECT id FROM triggers WHERE outcome = 'refused' ORDER BY id DESC LIMIT ?1))",
            params![REFUSED_KEPT],
        )?;
        return Ok(Recorded::New(id));
    }
    if !trigger.delivery.is_empty() {
        let seen: Option<i64> = connection
            .query_row(
                "SELECT id FROM triggers WHERE source = ?1 AND delivery = ?2
                     AND outcome NOT IN ('refused', 'duplicate') ORDER BY id LIMIT 1",
                params![trigger.source, trigger.delivery],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(of) = seen {
            let reason = format!(
                "delivery {} was received before (trigger {of})",
                trigger.delivery
            );
            let id = insert(connection, trigger, TriggerOutcome::Duplicate, &reason)?;
            return Ok(Recorded::Duplicate { id, of: of as u64 });
        }
    }
    if outcome == TriggerOutcome::Received && !trigger.kind.is_empty() && window_ms > 0 {
        let seen: Option<i64> = connection
            .query_row(
                "SELECT id FROM triggers WHERE source = ?1 AND repo = ?2 AND sha = ?3 AND kind = ?4
                     AND received_ms > ?5 AND outcome IN ('received', 'run', 'failed')
                 ORDER BY id LIMIT 1",
                params![
                    trigger.source,
                    trigger.repo,
                    trigger.sha,
                    trigger.kind,
                    trigger.received_ms - window_ms
                ],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(of) = seen {
            let reason = format!(
                "{} {} of {} was received {} (trigger {of})",
                trigger.kind,
                &trigger.sha[..trigger.sha.len().min(12)],
                trigger.repo,
                "within the dedup window"
            );
            let id = insert(connection, trigger, TriggerOutcome::Duplicate, &reason)?;
            return Ok(Recorded::Duplicate { id, of: of as u64 });
        }
    }
    Ok(Recorded::New(insert(
        connection,
        trigger,
        outcome,
        &trigger.reason,
    )?))
}

/// What planning made of a trigger.
pub fn finish(
    connection: &Connection,
    id: u64,
    outcome: TriggerOutcome,
    reason: &str,
    run: Option<u64>,
    fetch_ms: Option<u64>,
    planned_ms: Option<u64>,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE triggers SET outcome = ?2, reason = ?3, run_id = ?4, fetch_ms = ?5, planned_ms = ?6
         WHERE id = ?1",
        params![
            id as i64,
            outcome.as_str(),
            reason,
            run.map(|run| run as i64),
            fetch_ms.map(|ms| ms as i64),
            planned_ms.map(|ms| ms as i64),
        ],
    )?;
    Ok(())
}

/// A report as stored: its newest version, and how far sending it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    pub trigger: u64,
    /// `statuses` or `checks`.
    pub target: String,
    pub repo: String,
    pub sha: String,
    pub context: String,
    pub run: Option<u64>,
    /// `core::github::ReportState` as text.
    pub state: String,
    pub text_json: String,
    pub version: i64,
    pub sent_version: i64,
    pub check_run_id: Option<u64>,
    pub tries: u32,
    pub next_try_ms: i64,
    pub error: String,
}

/// A new report, or a new version of one: it is sent (again) until GitHub has taken this version.
#[allow(clippy::too_many_arguments)]
pub fn put_report(
    connection: &Connection,
    trigger: u64,
    target: &str,
    repo: &str,
    sha: &str,
    context: &str,
    run: Option<u64>,
    state: &str,
    text_json: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO reports (trigger_id, target, repo, sha, context, run_id, state, text_json, version,
                              sent_version, tries, next_try_ms, error, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, 0, 0, 0, '', ?9)
         ON CONFLICT (trigger_id) DO UPDATE SET run_id = ?6, state = ?7, text_json = ?8,
             version = version + 1, tries = 0, next_try_ms = 0, updated_ms = ?9",
        params![
            trigger as i64,
            target,
            repo,
            sha,
            context,
            run.map(|run| run as i64),
            state,
            text_json,
            now_ms
        ],
    )?;
    Ok(())
}

/// GitHub took `version` (and, for a check, gave it `check_run_id`).
pub fn report_sent(
    connection: &Connection,
    trigger: u64,
    version: i64,
    check_run_id: Option<u64>,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE reports SET sent_version = max(sent_version, ?2),
             check_run_id = coalesce(?3, check_run_id), tries = 0, error = ''
         WHERE trigger_id = ?1",
        params![trigger as i64, version, check_run_id.map(|id| id as i64)],
    )?;
    Ok(())
}

/// A try that failed: sent again at `next_try_ms`.
pub fn report_failed(
    connection: &Connection,
    trigger: u64,
    error: &str,
    next_try_ms: i64,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE reports SET tries = tries + 1, error = ?2, next_try_ms = ?3 WHERE trigger_id = ?1",
        params![trigger as i64, error, next_try_ms],
    )?;
    Ok(())
}

fn outcome(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<TriggerOutcome> {
    let text: String = row.get(index)?;
    TriggerOutcome::parse(&text).ok_or_else(|| unknown_value(index, "trigger outcome", &text))
}

const REPORT_SELECT: &str =
    "SELECT trigger_id, target, repo, sha, context, run_id, state, text_json,
        version, sent_version, check_run_id, tries, next_try_ms, error FROM reports";

fn report_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
        trigger: row.get::<_, i64>(0)? as u64,
        target: row.get(1)?,
        repo: row.get(2)?,
        sha: row.get(3)?,
        context: row.get(4)?,
        run: row.get::<_, Option<i64>>(5)?.map(|run| run as u64),
        state: row.get(6)?,
        text_json: row.get(7)?,
        version: row.get(8)?,
        sent_version: row.get(9)?,
        check_run_id: row.get::<_, Option<i64>>(10)?.map(|id| id as u64),
        tries: row.get(11)?,
        next_try_ms: row.get(12)?,
        error: row.get(13)?,
    })
}

impl Reader {
    /// The newest `limit` triggers, newest first, with their reports.
    pub fn triggers(&self, limit: u32) -> Result<Vec<TriggerRecord>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT t.id, t.received_ms, t.source, t.delivery, t.repo, t.event, t.sha, t.git_ref,
                        t.outcome, t.reason, t.run_id, t.fetch_ms, t.planned_ms,
                        r.state, r.version, r.sent_version, r.tries, r.error, r.target
                 FROM triggers t LEFT JOIN reports r ON r.trigger_id = t.id
                 ORDER BY t.id DESC LIMIT ?1",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([limit], |row| {
                let state: Option<String> = row.get(13)?;
                let report = match state {
                    None => "none".to_string(),
                    Some(state) => {
                        let version: i64 = row.get(14)?;
                        let sent: i64 = row.get(15)?;
                        let tries: u32 = row.get(16)?;
                        let error: String = row.get(17)?;
                        let target: String = row.get(18)?;
                        if sent >= version {
                            format!("{target} {state} delivered")
                        } else if tries == 0 {
                            format!("{target} {state} sending")
                        } else {
                            format!(
                                "{target} {state} not delivered ({tries} {}): {error}",
                                if tries == 1 { "try" } else { "tries" }
                            )
                        }
                    }
                };
                Ok(TriggerRecord {
                    id: row.get::<_, i64>(0)? as u64,
                    received_ms: row.get(1)?,
                    source: row.get(2)?,
                    delivery: row.get(3)?,
                    repo: row.get(4)?,
                    event: row.get(5)?,
                    sha: row.get(6)?,
                    git_ref: row.get(7)?,
                    outcome: outcome(row, 8)?,
                    reason: row.get(9)?,
                    run: row.get::<_, Option<i64>>(10)?.map(|run| run as u64),
                    fetch_ms: row.get::<_, Option<i64>>(11)?.map(|ms| ms as u64),
                    planned_ms: row.get::<_, Option<i64>>(12)?.map(|ms| ms as u64),
                    report,
                })
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Triggers recorded and not yet planned, oldest first, with what planning needs.
    /// Triggers of a source (`github`, `bus:NAME`) recorded and not planned yet.
    pub fn received_triggers(&self, source: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, change_json FROM triggers WHERE outcome = 'received' AND source = ?1
                 ORDER BY id",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([source], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get(1)?))
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Reports whose run had not ended when they were last written, with the run's state now.
    pub fn reports_of_open_runs(&self) -> Result<Vec<(ReportRow, String)>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT r.trigger_id, r.target, r.repo, r.sha, r.context, r.run_id, r.state, r.text_json,
                        r.version, r.sent_version, r.check_run_id, r.tries, r.next_try_ms, r.error,
                        runs.state
                 FROM reports r JOIN runs ON runs.id = r.run_id
                 WHERE r.state IN ('queued', 'running')",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| Ok((report_row(row)?, row.get(14)?)))
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Reports with a version GitHub has not taken yet, the next to try first.
    pub fn unsent_reports(&self) -> Result<Vec<ReportRow>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(&format!(
                "{REPORT_SELECT} WHERE sent_version < version ORDER BY next_try_ms, trigger_id"
            ))
            .map_err(&on_sqlite)?;
        let rows = statement.query_map([], report_row).map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    pub fn report(&self, trigger: u64) -> Result<Option<ReportRow>, StoreError> {
        self.connection
            .query_row(
                &format!("{REPORT_SELECT} WHERE trigger_id = ?1"),
                [trigger as i64],
                report_row,
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        for migration in super::super::migrations::MIGRATIONS {
            connection.execute_batch(migration).unwrap();
        }
        connection
    }

    fn push(delivery: &str, sha: &str, at: i64) -> NewTrigger {
        NewTrigger {
            received_ms: at,
            source: "github".into(),
            delivery: delivery.into(),
            repo: "octo/hello".into(),
            event: "push".into(),
            kind: "push".into(),
            sha: sha.into(),
            git_ref: "refs/heads/main".into(),
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_by_delivery_and_by_change_within_the_window() {
        let connection = connection();
        let sha = "a".repeat(40);
        assert_eq!(
            record(&connection, &push("d1", &sha, 1000), 60_000).unwrap(),
            Recorded::New(1)
        );
        // GitHub's redelivery: same id.
        assert_eq!(
            record(&connection, &push("d1", &sha, 2000), 60_000).unwrap(),
            Recorded::Duplicate { id: 2, of: 1 }
        );
        // An org hook and a repository hook: other id, same change.
        assert_eq!(
            record(&connection, &push("d2", &sha, 3000), 60_000).unwrap(),
            Recorded::Duplicate { id: 3, of: 1 }
        );
        // The window has passed.
        assert_eq!(
            record(&connection, &push("d3", &sha, 70_000), 60_000).unwrap(),
            Recorded::New(4)
        );
        // A refused delivery does not claim its id.
        let mut forged = push("d9", &"b".repeat(40), 80_000);
        forged.outcome = Some(TriggerOutcome::Refused);
        record(&connection, &forged, 60_000).unwrap();
        assert!(matches!(
            record(&connection, &push("d9", &"b".repeat(40), 81_000), 60_000).unwrap(),
            Recorded::New(_)
        ));
    }

    #[test]
    fn refused_deliveries_are_bounded() {
        let connection = connection();
        for n in 0..(REFUSED_KEPT + 20) {
            let mut forged = push(&format!("x{n}"), "", n);
            forged.outcome = Some(TriggerOutcome::Refused);
            record(&connection, &forged, 0).unwrap();
        }
        let count: i64 = connection
            .query_row("SELECT count(*) FROM triggers", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, REFUSED_KEPT);
    }
}
