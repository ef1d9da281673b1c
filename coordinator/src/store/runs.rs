//! Runs in SQLite: runs, their suites (each leased to one agent at a time), every selected test's result,
//! lost attempts and test output. Every change goes through the store's one writer; the functions here
//! take the writer's savepoint, so each change is all or nothing.
//!
//! A suite's lease is (agent, incarnation, attempt). Records from an agent count only for the attempt it
//! currently holds; anything else is acknowledged and dropped, so a result is never counted twice.

use std::collections::BTreeMap;
use std::path::Path;

use polarizer_shared::metadata::{PlatformNeeds, TestMetadata};
use polarizer_shared::run::*;
use rusqlite::{params, OptionalExtension, Savepoint};
use tracing::warn;

use crate::core::run::{
    self, LostHolder, RunEnd, RunTally, SuiteDecision, SuiteEnd, SuiteLease, SuiteState,
    TestDecision, TestRecord,
};
use crate::core::schedule::ActiveSuite;
use crate::store::sql::{sqlite_error, unknown_value, Cached, Reader, StoreError};

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// A JSON column decoded; a bad one is an error naming the column, never a panic.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
    })
}

fn corrupt(what: String) -> impl Fn(serde_json::Error) -> StoreError {
    move |err| StoreError::CorruptFacts {
        name: what.clone(),
        reason: err.to_string(),
    }
}

/// A planned suite: its kind ("serial" or "parallel"), platform needs, and tests with why each was selected.
pub type PlannedSuite = (String, PlatformNeeds, Vec<(TestMetadata, Vec<String>)>);

/// Suites agents must stop: (agent, attempt).
pub type StopOrders = Vec<(String, SuiteRef)>;

/// A planned run, ready to store.
pub struct NewRun {
    pub request: TriggerRequest,
    pub fetch_url: String,
    pub commit: String,
    pub tree_path: String,
    pub message: String,
    pub now_ms: i64,
    pub deadline_ms: i64,
    /// (kind, needs, tests with their reasons), in dispatch order.
    pub suites: Vec<PlannedSuite>,
}

pub fn create_run(savepoint: &Savepoint<'_>, path: &Path, run: &NewRun) -> Result<u64, StoreError> {
    let on_sqlite = sqlite_error(path);
    savepoint
        .run(
            "INSERT INTO runs (state, kind, repo, fetch_url, git_ref, git_commit, tree_path, trigger_json, message, created_ms, deadline_ms)
             VALUES ('queued', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                run.request.kind.as_str(),
                run.request.repo,
                run.fetch_url,
                run.request.git_ref,
                run.commit,
                run.tree_path,
                json(&run.request),
                run.message,
                run.now_ms,
                run.deadline_ms
            ],
        )
        .map_err(&on_sqlite)?;
    let run_id = savepoint.last_insert_rowid();
    let mut insert_suite = savepoint
        .prepare("INSERT INTO suites (run_id, ordinal, kind, needs_json, containerfile, state) VALUES (?1, ?2, ?3, ?4, ?5, 'queued')")
        .map_err(&on_sqlite)?;
    let mut insert_test = savepoint
        .prepare(
            "INSERT INTO run_tests (run_id, test_id, suite_id, position, name, reasons_json, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued')",
        )
        .map_err(&on_sqlite)?;
    let mut insert_metadata = savepoint
        .prepare(
            "INSERT INTO run_test_metadata (run_id, test_id, metadata_json) VALUES (?1, ?2, ?3)",
        )
        .map_err(&on_sqlite)?;
    for (ordinal, (kind, needs, tests)) in run.suites.iter().enumerate() {
        // Partition groups tests by how their platform is set up: the first that says, says for all.
        let containerfile = tests
            .iter()
            .map(|(test, _)| test.provision.containerfile.as_str())
            .find(|file| !file.is_empty())
            .unwrap_or_default();
        insert_suite
            .execute(params![
                run_id,
                ordinal as i64 + 1,
                kind,
                json(needs),
                containerfile
            ])
            .map_err(&on_sqlite)?;
        let suite_id = savepoint.last_insert_rowid();
        for (position, (test, reasons)) in tests.iter().enumerate() {
            insert_test
                .execute(params![
                    run_id,
                    test.id,
                    suite_id,
                    position as i64,
                    test.name,
                    json(reasons),
                ])
                .map_err(&on_sqlite)?;
            insert_metadata
                .execute(params![run_id, test.id, json(test)])
                .map_err(&on_sqlite)?;
        }
    }
    Ok(run_id as u64)
}

/// What a write changed that someone is waiting to hear about.
#[derive(Clone, Debug)]
pub enum Effect {
    Update(RunUpdate),
    /// A stored event, for live `tail` followers.
    Event(polarizer_shared::events::EventRow),
    /// The agent sent records for an attempt it no longer holds: tell it to stop.
    Stale(SuiteRef),
}

/// The `state` column of `suites`, typed.
fn suite_state(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<SuiteState> {
    let text: String = row.get(index)?;
    SuiteState::parse(&text).ok_or_else(|| unknown_value(index, "suite state", &text))
}

/// The `state` column of `runs`, typed.
fn run_state(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<RunState> {
    let text: String = row.get(index)?;
    RunState::parse(&text).ok_or_else(|| unknown_value(index, "run state", &text))
}

/// The `status` column of `run_tests`, typed.
fn test_status(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<TestStatus> {
    let text: String = row.get(index)?;
    TestStatus::parse(&text).ok_or_else(|| unknown_value(index, "test status", &text))
}

/// A suite's lease as stored, for the state machine.
fn suite_lease(
    connection: &rusqlite::Connection,
    path: &Path,
    suite: u64,
) -> Result<Option<SuiteLease>, StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT run_id, state, attempt, agent FROM suites WHERE id = ?1")
        .map_err(sqlite_error(path))?;
    statement
        .query_row([suite as i64], |row| {
            Ok(SuiteLease {
                run: row.get::<_, i64>(0)? as u64,
                suite,
                state: suite_state(row, 1)?,
                attempt: row.get(2)?,
                agent: row.get(3)?,
            })
        })
        .optional()
        .map_err(sqlite_error(path))
}

/// A test's stored status in a suite; `None` when the suite has no such test.
fn stored_test_status(
    connection: &rusqlite::Connection,
    path: &Path,
    suite: SuiteRef,
    test: &str,
) -> Result<Option<TestStatus>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT status FROM run_tests WHERE run_id = ?1 AND test_id = ?2 AND suite_id = ?3",
        )
        .map_err(sqlite_error(path))?;
    statement
        .query_row(params![suite.run as i64, test, suite.suite as i64], |row| {
            test_status(row, 0)
        })
        .optional()
        .map_err(sqlite_error(path))
}

/// May `agent` store output and events for `claimed`? Its current holder may (also once the suite is
/// done), and so may the agent of a lost attempt (its late lines still belong to that attempt); a
/// record for any other attempt is forged.
fn may_speak_for(
    connection: &rusqlite::Connection,
    path: &Path,
    lease: Option<&SuiteLease>,
    agent: &str,
    claimed: SuiteRef,
) -> Result<bool, StoreError> {
    let Some(lease) = lease else {
        return Ok(false);
    };
    if lease.run != claimed.run {
        return Ok(false);
    }
    if lease.attempt == claimed.attempt && lease.agent == agent {
        return Ok(true);
    }
    let mut statement = connection
        .prepare_cached(
            "SELECT 1 FROM lost_attempts JOIN run_tests
                 ON run_tests.run_id = lost_attempts.run_id AND run_tests.test_id = lost_attempts.test_id
             WHERE lost_attempts.run_id = ?1 AND run_tests.suite_id = ?2
               AND lost_attempts.attempt = ?3 AND lost_attempts.agent = ?4
             LIMIT 1",
        )
        .map_err(sqlite_error(path))?;
    statement
        .query_row(
            params![
                claimed.run as i64,
                claimed.suite as i64,
                claimed.attempt,
                agent
            ],
            |_| Ok(()),
        )
        .optional()
        .map(|found| found.is_some())
        .map_err(sqlite_error(path))
}

/// Leases a queued suite to an agent. False when it is no longer queued.
pub fn lease(
    savepoint: &Savepoint<'_>,
    path: &Path,
    suite: u64,
    agent: &str,
    incarnation: u64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let on_sqlite = sqlite_error(path);
    let Some(current) = suite_lease(savepoint, path, suite)? else {
        return Ok(false);
    };
    if !run::may_lease(current.state) {
        return Ok(false);
    }
    savepoint
        .run(
            "UPDATE suites SET state = ?5, agent = ?2, incarnation = ?3, started_ms = ?4,
                 lost_agent = '', lost_incarnation = 0, lost_attempt = 0
             WHERE id = ?1",
            params![
                suite as i64,
                agent,
                incarnation as i64,
                now_ms,
                SuiteState::Running.as_str()
            ],
        )
        .map_err(&on_sqlite)?;
    savepoint
        .run(
            "UPDATE runs SET state = 'running', started_ms = COALESCE(started_ms, ?2)
             WHERE id = ?1 AND state = 'queued'",
            params![current.run as i64, now_ms],
        )
        .map_err(&on_sqlite)?;
    Ok(true)
}

/// `agent` (process `incarnation`) is connected again: every suite whose attempt it lost and that still
/// waits for its next attempt goes back to it, as that same attempt, so what it ran and spooled meanwhile
/// counts. Its tests' lost marks for that attempt are taken back.
pub fn reinstate(
    savepoint: &Savepoint<'_>,
    path: &Path,
    agent: &str,
    incarnation: u64,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let on_sqlite = sqlite_error(path);
    let candidates: Vec<(u64, LostHolder)> = {
        let mut statement = savepoint
            .prepare_cached(
                "SELECT id, lost_attempt FROM suites
                 WHERE state = 'queued' AND lost_agent = ?1 AND lost_incarnation = ?2",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map(params![agent, incarnation as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    LostHolder {
                        agent: agent.to_string(),
                        incarnation,
                        attempt: row.get(1)?,
                    },
                ))
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)?
    };
    let mut effects = Vec::new();
    for (suite, lost) in candidates {
        let Some(lease) = suite_lease(savepoint, path, suite)? else {
            continue;
        };
        if !run::may_reinstate(&lease, &lost, agent, incarnation) {
            continue;
        }
        let id = suite as i64;
        savepoint
            .run(
                "UPDATE suites SET state = ?2, attempt = ?3, agent = ?4, incarnation = ?5, started_ms = ?6,
                     lost_agent = '', lost_incarnation = 0, lost_attempt = 0
                 WHERE id = ?1",
                params![
                    id,
                    SuiteState::Running.as_str(),
                    lost.attempt,
                    agent,
                    incarnation as i64,
                    now_ms
                ],
            )
            .map_err(&on_sqlite)?;
        savepoint
            .run(
                "DELETE FROM lost_attempts
                 WHERE run_id = ?1 AND attempt = ?3 AND agent = ?4
                   AND test_id IN (SELECT test_id FROM run_tests WHERE suite_id = ?2)",
                params![lease.run as i64, id, lost.attempt, agent],
            )
            .map_err(&on_sqlite)?;
        savepoint
            .run(
                "UPDATE run_tests SET attempt = ?2, agent = ?3
                 WHERE suite_id = ?1 AND status = 'queued' AND attempt = ?4",
                params![id, lost.attempt, agent, lease.attempt],
            )
            .map_err(&on_sqlite)?;
        effects.push(Effect::Update(RunUpdate::Reinstated {
            run: lease.run,
            suite,
            attempt: lost.attempt,
            agent: agent.to_string(),
        }));
    }
    Ok(effects)
}

/// The agent holding `suite` was lost: its unfinished tests go back to the queue as the next attempt
/// (each lost attempt recorded as an infrastructure error), or, with no attempts left, end as errors.
pub fn revoke(
    savepoint: &Savepoint<'_>,
    path: &Path,
    suite: SuiteRef,
    message: &str,
    max_attempts: u32,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let lease = suite_lease(savepoint, path, suite.suite)?;
    let decision = run::on_suite_end(
        lease.as_ref(),
        suite,
        SuiteEnd::Lost { reason: message },
        max_attempts,
    );
    let mut effects = Vec::new();
    if let Some(lease) = lease {
        effects.extend(apply_suite_decision(
            savepoint, path, &lease, decision, now_ms,
        )?);
    }
    effects.extend(maybe_finish_run(savepoint, path, suite.run, now_ms)?);
    Ok(effects)
}

/// No platform could be made for the queued suite `suite` (its pool `pool` failed): the attempt is
/// recorded as lost to that pool, and the suite waits for its next attempt or, with none left, its
/// tests end as infrastructure errors.
pub fn platform_failed(
    savepoint: &Savepoint<'_>,
    path: &Path,
    suite: SuiteRef,
    pool: &str,
    error: &str,
    max_attempts: u32,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let Some(lease) = suite_lease(savepoint, path, suite.suite)? else {
        return Ok(Vec::new());
    };
    let decision = run::on_platform_failure(Some(&lease), suite, error, max_attempts);
    // Recorded as lost by the pool: there was no agent.
    let lease = SuiteLease {
        agent: format!("pool {pool}"),
        ..lease
    };
    let mut effects = apply_suite_decision(savepoint, path, &lease, decision, now_ms)?;
    effects.extend(maybe_finish_run(savepoint, path, suite.run, now_ms)?);
    Ok(effects)
}

/// Persists the end of a suite's attempt as the state machine decided it.
fn apply_suite_decision(
    savepoint: &Savepoint<'_>,
    path: &Path,
    lease: &SuiteLease,
    decision: SuiteDecision,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let on_sqlite = sqlite_error(path);
    let suite = lease.suite as i64;
    let record_lost = |message: &str| {
        savepoint
            .run(
                "INSERT INTO lost_attempts (run_id, test_id, attempt, agent, message, at_ms)
                 SELECT run_id, test_id, ?2, ?3, ?4, ?5 FROM run_tests
                 WHERE suite_id = ?1 AND status IN ('queued', 'running')",
                params![suite, lease.attempt, lease.agent, message, now_ms],
            )
            .map_err(&on_sqlite)
    };
    // The suite is done; its unfinished tests end as errors.
    let close = |infra: bool, message: &str| {
        savepoint
            .run(
                "UPDATE suites SET state = ?3, finished_ms = ?2 WHERE id = ?1",
                params![suite, now_ms, SuiteState::Done.as_str()],
            )
            .map_err(&on_sqlite)?;
        finish_unfinished(
            savepoint,
            path,
            "suite_id = ?1",
            suite,
            TestStatus::Error,
            infra,
            message,
        )
    };
    match decision {
        SuiteDecision::Ignore => Ok(Vec::new()),
        SuiteDecision::Close { unfinished_message } => close(false, &unfinished_message),
        SuiteDecision::Requeue {
            attempt,
            lost_message,
            holder_may_return,
        } => {
            record_lost(&lost_message)?;
            // A lost holder is remembered: back as the same process before anyone else begins the
            // suite, it takes the attempt back (`reinstate`). The right-hand sides read the old row.
            savepoint
                .run(
                    "UPDATE suites SET state = ?3, attempt = ?2, agent = '', incarnation = 0, started_ms = NULL,
                         lost_agent = CASE WHEN ?4 THEN agent ELSE '' END,
                         lost_incarnation = CASE WHEN ?4 THEN incarnation ELSE 0 END,
                         lost_attempt = CASE WHEN ?4 THEN attempt ELSE 0 END
                     WHERE id = ?1",
                    params![suite, attempt, SuiteState::Queued.as_str(), holder_may_return],
                )
                .map_err(&on_sqlite)?;
            savepoint
                .run(
                    "UPDATE run_tests SET status = 'queued', attempt = ?2, agent = '', started_ms = NULL
                     WHERE suite_id = ?1 AND status IN ('queued', 'running')",
                    params![suite, attempt],
                )
                .map_err(&on_sqlite)?;
            Ok(vec![Effect::Update(RunUpdate::Requeued {
                run: lease.run,
                suite: lease.suite,
                attempt,
                agent: lease.agent.clone(),
            })])
        }
        SuiteDecision::GiveUp {
            lost_message,
            final_message,
        } => {
            record_lost(&lost_message)?;
            close(true, &final_message)
        }
    }
}

/// Gives every unfinished test matching `filter` (with `?1` bound to `key`) a final status.
fn finish_unfinished(
    savepoint: &Savepoint<'_>,
    path: &Path,
    filter: &str,
    key: i64,
    status: TestStatus,
    infra: bool,
    message: &str,
) -> Result<Vec<Effect>, StoreError> {
    debug_assert!(status.is_final());
    let on_sqlite = sqlite_error(path);
    let ids: Vec<(i64, String)> = {
        let mut statement = savepoint
            .prepare(&format!(
                "SELECT run_id, test_id FROM run_tests WHERE {filter} AND status IN ('queued', 'running')"
            ))
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([key], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)?
    };
    let mut effects = Vec::new();
    for (run_id, test_id) in ids {
        savepoint
            .run(
                "UPDATE run_tests SET status = ?3, infra = ?4, message = ?5 WHERE run_id = ?1 AND test_id = ?2",
                params![run_id, test_id, status.as_str(), infra, message],
            )
            .map_err(&on_sqlite)?;
        if let Some(row) = run_test_row(savepoint, path, run_id as u64, &test_id)? {
            effects.push(Effect::Update(RunUpdate::TestFinished {
                run: run_id as u64,
                row: Box::new(row),
            }));
        }
    }
    Ok(effects)
}

/// When every test of the run has a final status, the run gets its own (the state machine's verdict).
pub fn maybe_finish_run(
    savepoint: &Savepoint<'_>,
    path: &Path,
    run: u64,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let on_sqlite = sqlite_error(path);
    // Called after every result: one index probe, and the counting only once nothing is left.
    let unfinished = savepoint
        .row(
            "SELECT 1 FROM run_tests WHERE run_id = ?1 AND status IN ('queued', 'running') LIMIT 1",
            [run as i64],
            |_| Ok(()),
        )
        .optional()
        .map_err(&on_sqlite)?
        .is_some();
    if unfinished {
        return Ok(Vec::new());
    }
    let (problems, infra, current): (i64, i64, RunState) = savepoint
        .row(
            "SELECT
                (SELECT COUNT(*) FROM run_tests WHERE run_id = ?1 AND status IN ('fail', 'error', 'timeout', 'warn') AND quarantined = 0),
                (SELECT COUNT(*) FROM run_tests WHERE run_id = ?1 AND infra = 1),
                state FROM runs WHERE id = ?1",
            [run as i64],
            |row| Ok((row.get(0)?, row.get(1)?, run_state(row, 2)?)),
        )
        .map_err(&on_sqlite)?;
    let tally = RunTally {
        unfinished: 0,
        problems: problems as u64,
        infra: infra as u64,
    };
    let Some(final_state) = run::verdict(current, tally) else {
        return Ok(Vec::new());
    };
    savepoint
        .run(
            "UPDATE runs SET state = ?2, finished_ms = ?3 WHERE id = ?1",
            params![run as i64, final_state.as_str(), now_ms],
        )
        .map_err(&on_sqlite)?;
    savepoint
        .run(
            "UPDATE suites SET state = ?3, finished_ms = COALESCE(finished_ms, ?2)
             WHERE run_id = ?1 AND state IN ('queued', 'running')",
            params![run as i64, now_ms, SuiteState::Done.as_str()],
        )
        .map_err(&on_sqlite)?;
    Ok(vec![Effect::Update(RunUpdate::RunFinished {
        run,
        state: final_state,
    })])
}

/// Ends a run early: cancelled by an operator, or past its deadline (stragglers end as timeout).
/// Returns the suites that agents must stop, and the effects; nothing when the run is final already.
pub fn end_run(
    savepoint: &Savepoint<'_>,
    path: &Path,
    run: u64,
    end: RunEnd,
    now_ms: i64,
) -> Result<(StopOrders, Vec<Effect>), StoreError> {
    let on_sqlite = sqlite_error(path);
    let current = savepoint
        .row(
            "SELECT state FROM runs WHERE id = ?1",
            [run as i64],
            |row| run_state(row, 0),
        )
        .optional()
        .map_err(&on_sqlite)?;
    let Some(decision) = current.and_then(|current| run::on_run_end(current, end)) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let running: Vec<(String, SuiteRef)> = {
        let mut statement = savepoint
            .prepare(
                "SELECT agent, id, attempt FROM suites WHERE run_id = ?1 AND state = 'running'",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([run as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    SuiteRef {
                        run,
                        suite: row.get::<_, i64>(1)? as u64,
                        attempt: row.get(2)?,
                    },
                ))
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)?
    };
    let mut effects = finish_unfinished(
        savepoint,
        path,
        "run_id = ?1",
        run as i64,
        decision.unfinished_status,
        false,
        &decision.message,
    )?;
    match decision.state {
        Some(state) => {
            savepoint
                .run(
                    "UPDATE runs SET state = ?4, finished_ms = ?2, message = ?3 WHERE id = ?1",
                    params![run as i64, now_ms, decision.message, state.as_str()],
                )
                .map_err(&on_sqlite)?;
            savepoint
                .run(
                    "UPDATE suites SET state = ?3, finished_ms = ?2 WHERE run_id = ?1 AND state IN ('queued', 'running')",
                    params![run as i64, now_ms, SuiteState::Cancelled.as_str()],
                )
                .map_err(&on_sqlite)?;
            effects.push(Effect::Update(RunUpdate::RunFinished { run, state }));
        }
        None => {
            savepoint
                .run(
                    "UPDATE runs SET message = ?2 WHERE id = ?1",
                    params![run as i64, decision.message],
                )
                .map_err(&on_sqlite)?;
            effects.extend(maybe_finish_run(savepoint, path, run, now_ms)?);
        }
    }
    Ok((running, effects))
}

/// Outcome of ingesting one batch of an agent's records.
pub struct Ingested {
    /// The highest sequence number committed for this agent (acknowledge up to here).
    pub committed: u64,
    pub effects: Vec<Effect>,
}

/// Applies an agent's records in order, skipping every sequence number already committed.
pub fn ingest(
    savepoint: &Savepoint<'_>,
    path: &Path,
    agent: &str,
    records: Vec<Record>,
    max_attempts: u32,
    now_ms: i64,
    analysis: &crate::store::analysis::SharedAnalysis,
) -> Result<Ingested, StoreError> {
    let on_sqlite = sqlite_error(path);
    let mut committed: u64 = savepoint
        .row(
            "SELECT records_committed FROM agents WHERE name = ?1",
            [agent],
            |row| row.get::<_, i64>(0),
        )
        .optional()
        .map_err(&on_sqlite)?
        .unwrap_or(0) as u64;
    let mut effects = Vec::new();
    // Within one batch a lease only changes through this batch's own SuiteFinished records, which
    // update this cache as they are applied.
    let mut leases: BTreeMap<u64, Option<SuiteLease>> = BTreeMap::new();
    let lease_of = |savepoint: &Savepoint<'_>,
                    leases: &mut BTreeMap<u64, Option<SuiteLease>>,
                    suite: u64|
     -> Result<Option<SuiteLease>, StoreError> {
        if let Some(known) = leases.get(&suite) {
            return Ok(known.clone());
        }
        let lease = suite_lease(savepoint, path, suite)?;
        leases.insert(suite, lease.clone());
        Ok(lease)
    };
    let mut finished_runs = std::collections::BTreeSet::new();
    let mut next_event = crate::store::events::next_id(savepoint, path)?;
    for record in records {
        if record.seq <= committed {
            continue;
        }
        committed = record.seq;
        let event_of = |kind: String| {
            crate::store::events::NewEvent::new(agent, record.seq, record.at_ms, now_ms, kind)
        };
        let mut number = |event: crate::store::events::NewEvent<'_>| {
            next_event += 1;
            event.with_id(next_event - 1)
        };
        match record.body {
            RecordBody::Output {
                suite,
                test,
                stream,
                line,
            } => {
                if suite.run > 0 {
                    let lease = lease_of(savepoint, &mut leases, suite.suite)?;
                    if !may_speak_for(savepoint, path, lease.as_ref(), agent, suite)? {
                        warn!(%agent, %suite, "refused output for an attempt this agent never held");
                        effects.push(Effect::Stale(suite));
                        continue;
                    }
                }
                let data =
                    serde_json::json!({ "stream": stream.as_str(), "attempt": suite.attempt })
                        .to_string();
                let row = number(
                    event_of(crate::store::events::OUTPUT.to_string())
                        .in_run(
                            (suite.run > 0).then_some(suite.run),
                            (suite.run > 0).then_some(suite.suite),
                            test.clone(),
                        )
                        .saying(line.clone(), data),
                );
                effects.push(Effect::Event(row));
                if suite.run > 0 {
                    effects.push(Effect::Update(RunUpdate::Output {
                        run: suite.run,
                        test,
                        stream,
                        line,
                    }));
                }
            }
            RecordBody::Event { correlation, event } => {
                if let Some(claimed) = correlation.as_ref().map(|correlation| correlation.suite) {
                    let lease = lease_of(savepoint, &mut leases, claimed.suite)?;
                    if !may_speak_for(savepoint, path, lease.as_ref(), agent, claimed)? {
                        warn!(%agent, suite = %claimed, "refused an event for an attempt this agent never held");
                        effects.push(Effect::Stale(claimed));
                        continue;
                    }
                }
                let row = number(
                    event_of(event.kind)
                        .in_run(
                            correlation.as_ref().map(|c| c.suite.run),
                            correlation.as_ref().map(|c| c.suite.suite),
                            correlation.map(|c| c.test).unwrap_or_default(),
                        )
                        .saying(event.summary, event.data),
                );
                effects.push(Effect::Event(row));
            }
            RecordBody::SuiteStarted { suite, versions } => {
                let lease = lease_of(savepoint, &mut leases, suite.suite)?;
                if !lease.is_some_and(|lease| lease.is_held_by(agent, suite)) {
                    effects.push(Effect::Stale(suite));
                    continue;
                }
                savepoint
                    .run(
                        "UPDATE suites SET versions_json = ?2 WHERE id = ?1",
                        params![suite.suite as i64, json(&versions)],
                    )
                    .map_err(&on_sqlite)?;
            }
            RecordBody::TestStarted { suite, test } => {
                let lease = lease_of(savepoint, &mut leases, suite.suite)?;
                let current = stored_test_status(savepoint, path, suite, &test)?;
                match run::on_test_record(
                    lease.as_ref(),
                    agent,
                    suite,
                    current,
                    TestRecord::Started,
                ) {
                    TestDecision::RefuseStale(suite) => effects.push(Effect::Stale(suite)),
                    TestDecision::MarkRunning => {
                        savepoint
                            .run(
                                "UPDATE run_tests SET status = 'running', agent = ?3, started_ms = ?4
                                 WHERE run_id = ?1 AND test_id = ?2",
                                params![suite.run as i64, test, agent, record.at_ms],
                            )
                            .map_err(&on_sqlite)?;
                        effects.push(Effect::Update(RunUpdate::TestStarted {
                            run: suite.run,
                            test: test.clone(),
                            agent: agent.to_string(),
                            attempt: suite.attempt,
                        }));
                    }
                    TestDecision::Ignore | TestDecision::StoreResult(_) => {}
                }
            }
            RecordBody::TestFinished(outcome) => {
                let suite = outcome.suite;
                let lease = lease_of(savepoint, &mut leases, suite.suite)?;
                // The row as it is: its status decides, and it becomes the row watchers get.
                let row = test_in_suite(savepoint, path, suite, &outcome.test)?;
                let current = row.as_ref().map(|row| row.status);
                let status = match run::on_test_record(
                    lease.as_ref(),
                    agent,
                    suite,
                    current,
                    TestRecord::Finished(outcome.status),
                ) {
                    TestDecision::RefuseStale(suite) => {
                        effects.push(Effect::Stale(suite));
                        continue;
                    }
                    TestDecision::StoreResult(status) => status,
                    TestDecision::Ignore | TestDecision::MarkRunning => continue,
                };
                let analysed = analysis
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .on_result(
                        savepoint,
                        path,
                        suite.run,
                        &outcome.test,
                        row.as_ref().map(|row| row.name.as_str()),
                        status,
                        &outcome.message,
                        &outcome.output_tail,
                        now_ms,
                    )?;
                savepoint
                    .run(
                        "UPDATE run_tests SET status = ?3, agent = ?4, started_ms = ?5, duration_ms = ?6, message = ?7,
                                output_tail = ?8, subresults_json = ?9, cluster_id = ?10, quarantined = ?11,
                                failure_text = ?12
                         WHERE run_id = ?1 AND test_id = ?2",
                        params![
                            suite.run as i64,
                            outcome.test,
                            status.as_str(),
                            agent,
                            outcome.started_ms,
                            outcome.duration_ms as i64,
                            outcome.message,
                            outcome.output_tail,
                            json(&outcome.subresults),
                            analysed.cluster.as_ref().map(|cluster| cluster.id as i64),
                            analysed.quarantined,
                            analysed.text,
                        ],
                    )
                    .map_err(&on_sqlite)?;
                let summary = crate::store::events::result_summary(
                    &outcome.test,
                    status.as_str(),
                    outcome.duration_ms,
                    &outcome.message,
                );
                let data = serde_json::json!({
                    "status": status.as_str(),
                    "attempt": suite.attempt,
                    "duration_ms": outcome.duration_ms,
                    "message": outcome.message,
                })
                .to_string();
                let event = number(
                    event_of(crate::store::events::RESULT.to_string())
                        .in_run(Some(suite.run), Some(suite.suite), outcome.test.clone())
                        .saying(summary, data),
                );
                effects.push(Effect::Event(event));
                if let Some(mut row) = row {
                    // Lost attempts exist only for a test that went on to a later attempt.
                    if row.attempt > 1 {
                        row.lost_attempts =
                            lost_attempts_of(savepoint, path, suite.run, &row.test)?;
                    }
                    let outcome = *outcome;
                    row.status = status;
                    row.agent = agent.to_string();
                    row.started_ms = Some(outcome.started_ms);
                    row.duration_ms = Some(outcome.duration_ms);
                    row.message = outcome.message;
                    row.output_tail = outcome.output_tail;
                    row.subresults = outcome.subresults;
                    row.cluster = analysed.cluster;
                    row.quarantined = analysed.quarantined;
                    effects.push(Effect::Update(RunUpdate::TestFinished {
                        run: suite.run,
                        row: Box::new(row),
                    }));
                }
                finished_runs.insert(suite.run);
            }
            RecordBody::SuiteFinished { suite, error } => {
                let Some(lease) = lease_of(savepoint, &mut leases, suite.suite)? else {
                    continue;
                };
                let end = match &error {
                    // Could not run here (checkout, suite setup): another attempt, elsewhere.
                    Some(error) => SuiteEnd::CouldNotRun { agent, error },
                    None => SuiteEnd::Finished { agent },
                };
                let decision = run::on_suite_end(Some(&lease), suite, end, max_attempts);
                if decision == SuiteDecision::Ignore {
                    continue;
                }
                effects.extend(apply_suite_decision(
                    savepoint, path, &lease, decision, now_ms,
                )?);
                // Whatever it decided, this attempt is no longer running: later results for it are
                // stale, while its late output still counts.
                leases.insert(suite.suite, suite_lease(savepoint, path, suite.suite)?);
                effects.extend(maybe_finish_run(savepoint, path, suite.run, now_ms)?);
            }
        }
    }
    analysis
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .flush(savepoint, path)?;
    for run in finished_runs {
        effects.extend(maybe_finish_run(savepoint, path, run, now_ms)?);
    }
    let events: Vec<&polarizer_shared::events::EventRow> = effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Event(row) => Some(row),
            _ => None,
        })
        .collect();
    crate::store::events::insert_rows(savepoint, path, agent, now_ms, &events)?;
    savepoint
        .run(
            "UPDATE agents SET records_committed = ?2 WHERE name = ?1",
            params![agent, committed as i64],
        )
        .map_err(&on_sqlite)?;
    Ok(Ingested { committed, effects })
}

fn run_test_row(
    connection: &rusqlite::Connection,
    path: &Path,
    run: u64,
    test: &str,
) -> Result<Option<RunTestRow>, StoreError> {
    let mut rows = run_test_rows(connection, path, run, Some(test))?;
    Ok(rows.pop())
}

/// A test's row as stored, if it belongs to `suite` (its lost attempts left out).
fn test_in_suite(
    connection: &rusqlite::Connection,
    path: &Path,
    suite: SuiteRef,
    test: &str,
) -> Result<Option<RunTestRow>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT test_id, name, suite_id, position, status, attempt, agent, started_ms, duration_ms, message,
                    reasons_json, output_tail, subresults_json, cluster_id, quarantined
             FROM run_tests WHERE run_id = ?1 AND test_id = ?2 AND suite_id = ?3",
        )
        .map_err(sqlite_error(path))?;
    statement
        .query_row(
            params![suite.run as i64, test, suite.suite as i64],
            test_row,
        )
        .optional()
        .map_err(sqlite_error(path))
}

/// The attempts of a test that were lost, oldest first.
fn lost_attempts_of(
    connection: &rusqlite::Connection,
    path: &Path,
    run: u64,
    test: &str,
) -> Result<Vec<LostAttempt>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT attempt, agent, message, at_ms FROM lost_attempts
             WHERE run_id = ?1 AND test_id = ?2 ORDER BY at_ms",
        )
        .map_err(sqlite_error(path))?;
    let rows = statement
        .query_map(params![run as i64, test], |row| {
            Ok(LostAttempt {
                attempt: row.get(0)?,
                agent: row.get(1)?,
                message: row.get(2)?,
                at_ms: row.get(3)?,
            })
        })
        .map_err(sqlite_error(path))?;
    rows.collect::<Result<_, _>>().map_err(sqlite_error(path))
}

/// A `run_tests` row in the column order every query here selects it.
fn test_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunTestRow> {
    Ok(RunTestRow {
        test: row.get(0)?,
        name: row.get(1)?,
        suite: row.get::<_, i64>(2)? as u64,
        position: row.get::<_, i64>(3)? as u32,
        status: test_status(row, 4)?,
        attempt: row.get(5)?,
        agent: row.get(6)?,
        started_ms: row.get(7)?,
        duration_ms: row.get::<_, Option<i64>>(8)?.map(|ms| ms as u64),
        message: row.get(9)?,
        reasons: json_column(row, 10)?,
        output_tail: row.get(11)?,
        subresults: json_column(row, 12)?,
        lost_attempts: Vec::new(),
        cluster: row
            .get::<_, Option<i64>>(13)?
            .map(|id| polarizer_shared::analysis::ClusterRef {
                id: id as u64,
                label: None,
            }),
        quarantined: row.get(14)?,
        slow_p95_ms: None,
    })
}

fn run_test_rows(
    connection: &rusqlite::Connection,
    path: &Path,
    run: u64,
    only: Option<&str>,
) -> Result<Vec<RunTestRow>, StoreError> {
    let on_sqlite = sqlite_error(path);
    let mut lost: BTreeMap<String, Vec<LostAttempt>> = BTreeMap::new();
    {
        let mut statement = connection
            .prepare_cached(if only.is_some() {
                "SELECT test_id, attempt, agent, message, at_ms FROM lost_attempts
                     WHERE run_id = ?1 AND test_id = ?2 ORDER BY at_ms"
            } else {
                "SELECT test_id, attempt, agent, message, at_ms FROM lost_attempts
                     WHERE run_id = ?1 AND ?2 IS NULL ORDER BY at_ms"
            })
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map(params![run as i64, only], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    LostAttempt {
                        attempt: row.get(1)?,
                        agent: row.get(2)?,
                        message: row.get(3)?,
                        at_ms: row.get(4)?,
                    },
                ))
            })
            .map_err(&on_sqlite)?;
        for row in rows {
            let (test, attempt) = row.map_err(&on_sqlite)?;
            lost.entry(test).or_default().push(attempt);
        }
    }
    let mut statement = connection
        .prepare_cached(
            if only.is_some() {
                "SELECT test_id, name, suite_id, position, status, attempt, agent, started_ms, duration_ms, message,
                        reasons_json, output_tail, subresults_json, cluster_id, quarantined
                 FROM run_tests WHERE run_id = ?1 AND test_id = ?2"
            } else {
                "SELECT run_tests.test_id, run_tests.name, run_tests.suite_id, run_tests.position, run_tests.status,
                        run_tests.attempt, run_tests.agent, run_tests.started_ms, run_tests.duration_ms, run_tests.message,
                        run_tests.reasons_json, run_tests.output_tail, run_tests.subresults_json,
                        run_tests.cluster_id, run_tests.quarantined
                 FROM run_tests JOIN suites ON suites.id = run_tests.suite_id
                 WHERE run_tests.run_id = ?1 AND ?2 IS NULL
                 ORDER BY suites.ordinal, run_tests.position"
            },
        )
        .map_err(&on_sqlite)?;
    let rows = statement
        .query_map(params![run as i64, only], test_row)
        .map_err(&on_sqlite)?;
    let mut out = Vec::new();
    for row in rows {
        let mut row = row.map_err(&on_sqlite)?;
        row.lost_attempts = lost.remove(&row.test).unwrap_or_default();
        out.push(row);
    }
    Ok(out)
}

const RUN_ROW_SELECT: &str = "SELECT runs.id, runs.state, runs.kind, runs.repo, runs.git_ref, runs.git_commit,
        runs.created_ms, runs.finished_ms,
        (SELECT COUNT(*) FROM run_tests WHERE run_id = runs.id),
        (SELECT COUNT(*) FROM run_tests WHERE run_id = runs.id AND status NOT IN ('queued', 'running')),
        (SELECT COUNT(*) FROM run_tests WHERE run_id = runs.id AND status IN ('fail', 'error', 'timeout', 'warn'))
     FROM runs";

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: row.get::<_, i64>(0)? as u64,
        state: run_state(row, 1)?,
        kind: {
            let text: String = row.get(2)?;
            TriggerKind::parse(&text).ok_or_else(|| unknown_value(2, "trigger kind", &text))?
        },
        repo: row.get(3)?,
        git_ref: row.get(4)?,
        commit: row.get(5)?,
        created_ms: row.get(6)?,
        finished_ms: row.get(7)?,
        tests: row.get::<_, i64>(8)? as u64,
        done: row.get::<_, i64>(9)? as u64,
        problems: row.get::<_, i64>(10)? as u64,
    })
}

impl Reader {
    /// The highest record sequence number of `agent` already committed.
    pub fn records_committed(&self, agent: &str) -> Result<u64, StoreError> {
        self.connection
            .row(
                "SELECT records_committed FROM agents WHERE name = ?1",
                [agent],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|found| found.unwrap_or(0) as u64)
            .map_err(sqlite_error(&self.path))
    }

    pub fn runs(&self, limit: u32) -> Result<Vec<RunRow>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(&format!("{RUN_ROW_SELECT} ORDER BY runs.id DESC LIMIT ?1"))
            .map_err(&on_sqlite)?;
        let rows = statement.query_map([limit], run_row).map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Whether run `run` exists (one indexed lookup, nothing read of it).
    pub fn run_exists(&self, run: u64) -> Result<bool, StoreError> {
        self.connection
            .row(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1)",
                [run as i64],
                |row| row.get(0),
            )
            .map_err(sqlite_error(&self.path))
    }

    pub fn run(&self, run: u64) -> Result<Option<RunDetail>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let found = self
            .connection
            .row(
                &format!("{RUN_ROW_SELECT} WHERE runs.id = ?1"),
                [run as i64],
                run_row,
            )
            .optional()
            .map_err(&on_sqlite)?;
        let Some(row) = found else {
            return Ok(None);
        };
        let (trigger_json, message): (String, String) = self
            .connection
            .row(
                "SELECT trigger_json, message FROM runs WHERE id = ?1",
                [run as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(&on_sqlite)?;
        let request: TriggerRequest =
            serde_json::from_str(&trigger_json).map_err(corrupt(format!("run {run}")))?;
        let mut suites = Vec::new();
        {
            let mut statement = self
                .connection
                .prepare(
                    "SELECT id, ordinal, kind, needs_json, state, attempt, agent, versions_json, started_ms, finished_ms
                     FROM suites WHERE run_id = ?1 ORDER BY ordinal",
                )
                .map_err(&on_sqlite)?;
            let rows = statement
                .query_map([run as i64], |row| {
                    let needs: PlatformNeeds = json_column(row, 3)?;
                    let versions: String = row.get(7)?;
                    Ok(SuiteRow {
                        id: row.get::<_, i64>(0)? as u64,
                        ordinal: row.get(1)?,
                        kind: row.get(2)?,
                        // The row has room for one kind: the first of a suite's alternatives.
                        platform: needs.kind.first().copied(),
                        arch: needs.arch,
                        distro: needs.distro,
                        state: suite_state(row, 4)?.as_str().to_string(),
                        attempt: row.get(5)?,
                        agent: row.get(6)?,
                        waiting_for: String::new(),
                        versions: if versions.is_empty() {
                            VersionChain::default()
                        } else {
                            json_column(row, 7)?
                        },
                        started_ms: row.get(8)?,
                        finished_ms: row.get(9)?,
                    })
                })
                .map_err(&on_sqlite)?;
            for row in rows {
                suites.push(row.map_err(&on_sqlite)?);
            }
        }
        let mut tests = run_test_rows(&self.connection, &self.path, run, None)?;
        crate::store::analysis::fill_labels(&self.connection, &self.path, &mut tests)?;
        Ok(Some(RunDetail {
            run: row,
            artifacts: request.artifacts,
            changed: request.changed,
            message,
            suites,
            infrastructure_trouble: crate::core::analysis::infrastructure_trouble(&tests),
            tests,
        }))
    }

    /// Every queued or running suite, oldest run first.
    pub fn active_suites(&self) -> Result<Vec<ActiveSuite>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT suites.run_id, suites.id, suites.state, suites.attempt, suites.agent, suites.incarnation,
                        suites.needs_json, runs.deadline_ms, suites.lost_agent, suites.lost_incarnation,
                        suites.lost_attempt, suites.containerfile
                 FROM suites JOIN runs ON runs.id = suites.run_id
                 WHERE suites.state IN ('queued', 'running')
                 ORDER BY suites.run_id, suites.ordinal",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    suite_state(row, 2)?,
                    row.get::<_, u32>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, i64>(7)?,
                    LostHolder {
                        agent: row.get(8)?,
                        incarnation: row.get::<_, i64>(9)? as u64,
                        attempt: row.get(10)?,
                    },
                    row.get::<_, String>(11)?,
                ))
            })
            .map_err(&on_sqlite)?;
        let mut out = Vec::new();
        for row in rows {
            let (
                run,
                suite,
                state,
                attempt,
                agent,
                incarnation,
                needs,
                run_deadline_ms,
                lost,
                containerfile,
            ) = row.map_err(&on_sqlite)?;
            out.push(ActiveSuite {
                run: run as u64,
                suite: suite as u64,
                state,
                attempt,
                agent,
                incarnation: incarnation as u64,
                needs: serde_json::from_str(&needs)
                    .map_err(corrupt(format!("run {run} suite {suite}")))?,
                run_deadline_ms,
                containerfile,
                lost: (!lost.agent.is_empty()).then_some(lost),
            });
        }
        Ok(out)
    }

    /// Where the tests of `suite` come from (the repository as fetched, the commit), if that attempt is
    /// running on `agent`: what an agent may have shipped to it.
    pub fn shipment(
        &self,
        suite: SuiteRef,
        agent: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.connection
            .row(
                "SELECT runs.fetch_url, runs.git_commit FROM suites JOIN runs ON runs.id = suites.run_id
                 WHERE suites.run_id = ?1 AND suites.id = ?2 AND suites.attempt = ?3 AND suites.agent = ?4
                       AND suites.state = 'running'",
                rusqlite::params![suite.run as i64, suite.suite as i64, suite.attempt, agent],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    /// Where a run's tests come from: (repository, commit, the fmf tree's path in it).
    pub fn run_source(&self, run: u64) -> Result<Option<(String, String, String)>, StoreError> {
        self.connection
            .row(
                "SELECT fetch_url, git_commit, tree_path FROM runs WHERE id = ?1",
                [run as i64],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    /// The assignment for a suite's current attempt: its unfinished tests, in order.
    pub fn assignment(
        &self,
        suite: SuiteRef,
        packages: &[String],
    ) -> Result<Option<Assignment>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let run: Option<(String, String, String, String)> = self
            .connection
            .row(
                "SELECT fetch_url, git_ref, git_commit, tree_path FROM runs WHERE id = ?1",
                [suite.run as i64],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(&on_sqlite)?;
        let Some((repo, git_ref, commit, tree_path)) = run else {
            return Ok(None);
        };
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT run_test_metadata.metadata_json FROM run_tests
                 JOIN run_test_metadata ON run_test_metadata.run_id = run_tests.run_id
                      AND run_test_metadata.test_id = run_tests.test_id
                 WHERE run_tests.suite_id = ?1 AND run_tests.status IN ('queued', 'running')
                 ORDER BY run_tests.position",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([suite.suite as i64], |row| row.get::<_, String>(0))
            .map_err(&on_sqlite)?;
        let mut tests = Vec::new();
        let mut suite_setup: Vec<String> = Vec::new();
        let mut suite_cleanup: Vec<String> = Vec::new();
        // Playbooks run first, in the order of the tests that name them.
        let mut playbooks = 0;
        for row in rows {
            let json = row.map_err(&on_sqlite)?;
            let metadata: TestMetadata =
                serde_json::from_str(&json).map_err(corrupt(format!("{suite}")))?;
            // A test's playbook sets its platform up before the suite, on the platform itself (a
            // pull request's playbook never runs on the coordinator's host). The path was checked at
            // import: inside the tree, plain characters.
            let playbook = &metadata.provision.playbook;
            if !playbook.is_empty() {
                let command = playbook_command(playbook);
                if !suite_setup.contains(&command) {
                    suite_setup.insert(playbooks, command);
                    playbooks += 1;
                }
            }
            for (hooks, wanted) in [
                (&mut suite_setup, &metadata.hooks.suite_setup),
                (&mut suite_cleanup, &metadata.hooks.suite_cleanup),
            ] {
                for command in wanted {
                    if !hooks.contains(command) {
                        hooks.push(command.clone());
                    }
                }
            }
            tests.push(assigned_test(metadata));
        }
        Ok(Some(Assignment {
            suite,
            repo,
            git_ref,
            commit,
            tree_path,
            tests,
            packages: packages.to_vec(),
            suite_setup,
            suite_cleanup,
        }))
    }

    /// A run's stored output lines, in the order agents produced them: (agent, test, line).
    pub fn output(&self, run: u64) -> Result<Vec<(String, String, String)>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT agent, test_id, summary FROM events WHERE run_id = ?1 AND kind = 'output' ORDER BY agent, seq",
            )
            .map_err(&on_sqlite)?;
        let rows = statement
            .query_map([run as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(&on_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(&on_sqlite)
    }

    /// Mean duration of each test's past passing or failing runs, in seconds.
    pub fn duration_history(&self, tests: &[&str]) -> Result<BTreeMap<String, f64>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT AVG(duration_ms) FROM run_tests WHERE test_id = ?1 AND status IN ('pass', 'fail') AND duration_ms IS NOT NULL",
            )
            .map_err(&on_sqlite)?;
        let mut out = BTreeMap::new();
        for test in tests {
            let mean: Option<f64> = statement
                .query_row([test], |row| row.get(0))
                .map_err(&on_sqlite)?;
            if let Some(mean) = mean {
                out.insert(test.to_string(), mean / 1000.0);
            }
        }
        Ok(out)
    }
}

fn assigned_test(metadata: TestMetadata) -> AssignedTest {
    AssignedTest {
        id: metadata.id,
        name: metadata.name,
        test: metadata.test,
        path: metadata.path,
        environment: metadata.environment.into_iter().collect(),
        duration_seconds: metadata.duration_seconds,
        result: metadata.result,
        junit: metadata.junit,
        setup: metadata.hooks.setup,
        cleanup: metadata.hooks.cleanup,
    }
}

/// The suite setup command that applies a test's `provision.playbook` to the platform it runs on,
/// from the tree's root, with the Python that runs ansible itself. Needs `ansible-playbook` on the
/// platform.
pub fn playbook_command(playbook: &str) -> String {
    format!(
        "ansible-playbook --connection=local --inventory=localhost, -e 'ansible_python_interpreter={{{{ ansible_playbook_python }}}}' -- {playbook}"
    )
}
