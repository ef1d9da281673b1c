//! The run state machine, pure: what a record from an agent, a lost agent, an operator's cancel or a
//! passed deadline does to a run's suites and tests. The store assembles the state a decision needs
//! (the suite's lease, a test's status, the run's tally), asks here, and persists the answer.
//!
//! A suite's lease is (agent, attempt): records count only for the attempt their agent currently holds.
//! A test moves `queued → running → final` once per attempt; a final status is never changed. A suite
//! whose agent is lost goes back to the queue as the next attempt (its unfinished tests with it) until
//! `max_attempts`, then its unfinished tests end as infrastructure errors. A run is final exactly when
//! all its tests are. An agent lost only to a network cut, back as the same process before its suite
//! went to anyone else, gets its attempt back (`may_reinstate`): what it ran meanwhile counts.

use polarizer_shared::run::{RunState, SuiteRef, TestStatus};

/// Where a suite is in its life. Stored as text (`as_str`); an unknown text is the store's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuiteState {
    /// Waiting for an agent (again, after a lost attempt).
    Queued,
    /// Leased to an agent for its current attempt.
    Running,
    /// Every test has a final status, or none will get one from this suite.
    Done,
    Cancelled,
}

impl SuiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SuiteState::Queued => "queued",
            SuiteState::Running => "running",
            SuiteState::Done => "done",
            SuiteState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<SuiteState> {
        [
            SuiteState::Queued,
            SuiteState::Running,
            SuiteState::Done,
            SuiteState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// A suite as stored: its current attempt and who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteLease {
    pub run: u64,
    pub suite: u64,
    pub state: SuiteState,
    pub attempt: u32,
    /// The agent holding the current attempt; empty while queued.
    pub agent: String,
}

impl SuiteLease {
    /// Does `agent` hold exactly the attempt it claims, in the run it claims?
    pub fn is_held_by(&self, agent: &str, claimed: SuiteRef) -> bool {
        self.state == SuiteState::Running
            && self.run == claimed.run
            && self.suite == claimed.suite
            && self.attempt == claimed.attempt
            && self.agent == agent
    }

    pub fn current(&self) -> SuiteRef {
        SuiteRef {
            run: self.run,
            suite: self.suite,
            attempt: self.attempt,
        }
    }
}

/// Leasing: a queued suite goes to an agent; anything else is refused (someone got there first).
pub fn may_lease(state: SuiteState) -> bool {
    state == SuiteState::Queued
}

/// Who held the attempt a suite lost, kept while the suite waits for its next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostHolder {
    pub agent: String,
    /// The agent process (it changes when the agent restarts, and with it whatever it was running).
    pub incarnation: u64,
    pub attempt: u32,
}

/// May `agent` (process `incarnation`), connected again, take back the attempt it lost? Only the same
/// process (a restarted agent no longer runs it), only while the suite still waits for its next attempt
/// (nobody else has begun it), and only the attempt right before that one.
pub fn may_reinstate(lease: &SuiteLease, lost: &LostHolder, agent: &str, incarnation: u64) -> bool {
    lease.state == SuiteState::Queued
        && lost.agent == agent
        && lost.incarnation == incarnation
        && lost.attempt + 1 == lease.attempt
}

/// What an agent said about one test of a suite it claims to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestRecord {
    Started,
    Finished(TestStatus),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestDecision {
    /// The agent does not hold this attempt: drop the record and tell the agent to stop it.
    RefuseStale(SuiteRef),
    /// Already past this point (a duplicate, or a start after the result): nothing to store.
    Ignore,
    MarkRunning,
    /// The test's final status for this attempt.
    StoreResult(TestStatus),
}

/// A test record from `agent` for `claimed`, given the suite's lease and the test's stored status
/// (`None`: no such test in that suite).
pub fn on_test_record(
    lease: Option<&SuiteLease>,
    agent: &str,
    claimed: SuiteRef,
    current: Option<TestStatus>,
    record: TestRecord,
) -> TestDecision {
    if !lease.is_some_and(|lease| lease.is_held_by(agent, claimed)) {
        return TestDecision::RefuseStale(claimed);
    }
    let Some(current) = current else {
        return TestDecision::Ignore;
    };
    match record {
        TestRecord::Started if current == TestStatus::Queued => TestDecision::MarkRunning,
        TestRecord::Started => TestDecision::Ignore,
        TestRecord::Finished(_) if current.is_final() => TestDecision::Ignore,
        // An agent reporting a non-final status as a result is broken: the test errs, it never
        // stays open.
        TestRecord::Finished(status) if !status.is_final() => {
            TestDecision::StoreResult(TestStatus::Error)
        }
        TestRecord::Finished(status) => TestDecision::StoreResult(status),
    }
}

/// How an attempt of a suite ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuiteEnd<'a> {
    /// The agent ran the whole suite.
    Finished { agent: &'a str },
    /// The agent could not run it there (checkout, suite setup): worth another attempt elsewhere.
    CouldNotRun { agent: &'a str, error: &'a str },
    /// The agent went away (offline, restarted) or its lease was revoked.
    Lost { reason: &'a str },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuiteDecision {
    /// Not the attempt that is running (stale, or already handled): nothing changes.
    Ignore,
    /// The suite is done; tests it left without a result end as errors (not infrastructure).
    Close { unfinished_message: String },
    /// Each unfinished test's attempt is recorded as lost with `lost_message`; the suite and those
    /// tests go back to the queue as `attempt`. `holder_may_return`: the agent was lost, not done
    /// with it, so it may still be running it and take it back (`may_reinstate`); an agent that said
    /// it could not run the suite there never takes it back.
    Requeue {
        attempt: u32,
        lost_message: String,
        holder_may_return: bool,
    },
    /// No attempts left: the lost attempt is recorded, the suite is done, and its unfinished tests end
    /// as infrastructure errors with `final_message`.
    GiveUp {
        lost_message: String,
        final_message: String,
    },
}

/// The attempt after `attempt`, if the policy allows one.
pub fn next_attempt(attempt: u32, max_attempts: u32) -> Option<u32> {
    (attempt < max_attempts).then_some(attempt + 1)
}

/// The end of `claimed`'s attempt, given the suite's lease.
pub fn on_suite_end(
    lease: Option<&SuiteLease>,
    claimed: SuiteRef,
    end: SuiteEnd<'_>,
    max_attempts: u32,
) -> SuiteDecision {
    let Some(lease) = lease else {
        return SuiteDecision::Ignore;
    };
    let holds = match end {
        SuiteEnd::Finished { agent } | SuiteEnd::CouldNotRun { agent, .. } => {
            lease.is_held_by(agent, claimed)
        }
        // Whoever holds it: the caller saw the holder go.
        SuiteEnd::Lost { .. } => {
            lease.state == SuiteState::Running
                && lease.suite == claimed.suite
                && lease.attempt == claimed.attempt
        }
    };
    if !holds {
        return SuiteDecision::Ignore;
    }
    let lost_message = match end {
        SuiteEnd::Finished { .. } => {
            return SuiteDecision::Close {
                unfinished_message: "the agent finished the suite without a result for this test"
                    .into(),
            }
        }
        SuiteEnd::CouldNotRun { agent, error } => format!("agent {agent}: {error}"),
        SuiteEnd::Lost { reason } => reason.to_string(),
    };
    match next_attempt(lease.attempt, max_attempts) {
        Some(attempt) => SuiteDecision::Requeue {
            attempt,
            lost_message,
            holder_may_return: matches!(end, SuiteEnd::Lost { .. }),
        },
        None => SuiteDecision::GiveUp {
            final_message: format!(
                "infrastructure error: {lost_message}; no attempts left ({max_attempts})"
            ),
            lost_message,
        },
    }
}

/// No platform could be made for `claimed`, a queued suite (its pool's provisioner failed every try,
/// or the platform's agent never joined): an infrastructure failure, counted as a lost attempt like an
/// agent lost mid-suite. The suite waits for its next attempt, or with none left its tests end as
/// infrastructure errors. Never a test failure.
pub fn on_platform_failure(
    lease: Option<&SuiteLease>,
    claimed: SuiteRef,
    error: &str,
    max_attempts: u32,
) -> SuiteDecision {
    let Some(lease) = lease else {
        return SuiteDecision::Ignore;
    };
    if lease.state != SuiteState::Queued
        || lease.suite != claimed.suite
        || lease.attempt != claimed.attempt
    {
        return SuiteDecision::Ignore;
    }
    let lost_message = error.to_string();
    match next_attempt(lease.attempt, max_attempts) {
        Some(attempt) => SuiteDecision::Requeue {
            attempt,
            lost_message,
            holder_may_return: false,
        },
        None => SuiteDecision::GiveUp {
            final_message: format!(
                "infrastructure error: {lost_message}; no attempts left ({max_attempts})"
            ),
            lost_message,
        },
    }
}

/// A run's tests, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTally {
    /// Queued or running.
    pub unfinished: u64,
    /// Final with a status that makes the run fail (fail, error, timeout, warn).
    pub problems: u64,
    /// Ended by an infrastructure error.
    pub infra: u64,
}

/// The run's final state once every test has one; `None` while any is open or the run is final
/// already. Infrastructure trouble outranks test failures.
pub fn verdict(current: RunState, tally: RunTally) -> Option<RunState> {
    if current.is_final() || tally.unfinished > 0 {
        return None;
    }
    Some(if tally.infra > 0 {
        RunState::Error
    } else if tally.problems > 0 {
        RunState::Failed
    } else {
        RunState::Passed
    })
}

/// Why a run ends before its tests do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    Cancel,
    Deadline,
}

impl RunEnd {
    /// Why, as the tests it ends and the agents it stops are told.
    pub fn message(self) -> &'static str {
        match self {
            RunEnd::Cancel => "cancelled by an operator",
            RunEnd::Deadline => "the run's deadline passed before this test finished",
        }
    }
}

/// How to end a run early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndRun {
    /// Every unfinished test gets this status (not an infrastructure error)…
    pub unfinished_status: TestStatus,
    pub message: String,
    /// …and the run this state at once (a cancel); `None`: the verdict decides, as for any run whose
    /// tests are all final (a deadline).
    pub state: Option<RunState>,
}

/// Ending a run early; `None` when it is final already (nothing changes, nothing is stopped).
pub fn on_run_end(current: RunState, end: RunEnd) -> Option<EndRun> {
    if current.is_final() {
        return None;
    }
    Some(match end {
        RunEnd::Cancel => EndRun {
            unfinished_status: TestStatus::Cancelled,
            message: end.message().into(),
            state: Some(RunState::Cancelled),
        },
        RunEnd::Deadline => EndRun {
            unfinished_status: TestStatus::Timeout,
            message: end.message().into(),
            state: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn suite_ref(run: u64, suite: u64, attempt: u32) -> SuiteRef {
        SuiteRef {
            run,
            suite,
            attempt,
        }
    }

    fn running(agent: &str, attempt: u32) -> SuiteLease {
        SuiteLease {
            run: 1,
            suite: 2,
            state: SuiteState::Running,
            attempt,
            agent: agent.into(),
        }
    }

    #[test]
    fn only_the_same_agent_process_takes_back_its_lost_attempt_while_the_suite_waits() {
        let queued = SuiteLease {
            state: SuiteState::Queued,
            agent: String::new(),
            ..running("a", 2)
        };
        let lost = LostHolder {
            agent: "a".into(),
            incarnation: 7,
            attempt: 1,
        };
        assert!(may_reinstate(&queued, &lost, "a", 7));
        assert!(!may_reinstate(&queued, &lost, "a", 8), "restarted");
        assert!(!may_reinstate(&queued, &lost, "b", 7), "another agent");
        let taken = running("b", 2);
        assert!(!may_reinstate(&taken, &lost, "a", 7), "given to another");
        let older = LostHolder {
            attempt: 0,
            ..lost.clone()
        };
        assert!(
            !may_reinstate(&queued, &older, "a", 7),
            "not the attempt before"
        );
        let done = SuiteLease {
            state: SuiteState::Done,
            ..queued
        };
        assert!(!may_reinstate(&done, &lost, "a", 7));
    }

    #[test]
    fn records_count_only_for_the_attempt_held() {
        let lease = running("a", 2);
        let held = suite_ref(1, 2, 2);
        let finished = TestRecord::Finished(TestStatus::Pass);
        for (agent, claimed) in [
            ("b", held),
            ("a", suite_ref(1, 2, 1)),
            ("a", suite_ref(9, 2, 2)),
            ("a", suite_ref(1, 3, 2)),
        ] {
            assert_eq!(
                on_test_record(
                    Some(&lease),
                    agent,
                    claimed,
                    Some(TestStatus::Running),
                    finished
                ),
                TestDecision::RefuseStale(claimed)
            );
        }
        assert_eq!(
            on_test_record(None, "a", held, None, finished),
            TestDecision::RefuseStale(held)
        );
        assert_eq!(
            on_test_record(Some(&lease), "a", held, Some(TestStatus::Running), finished),
            TestDecision::StoreResult(TestStatus::Pass)
        );
        assert_eq!(
            on_test_record(Some(&lease), "a", held, Some(TestStatus::Fail), finished),
            TestDecision::Ignore
        );
        assert_eq!(
            on_test_record(
                Some(&lease),
                "a",
                held,
                Some(TestStatus::Queued),
                TestRecord::Finished(TestStatus::Running)
            ),
            TestDecision::StoreResult(TestStatus::Error)
        );
    }

    #[test]
    fn a_lost_suite_is_retried_until_the_attempts_run_out() {
        let lost = SuiteEnd::Lost { reason: "gone" };
        assert_eq!(
            on_suite_end(Some(&running("a", 1)), suite_ref(1, 2, 1), lost, 2),
            SuiteDecision::Requeue {
                attempt: 2,
                lost_message: "gone".into(),
                holder_may_return: true,
            }
        );
        let could_not = SuiteEnd::CouldNotRun {
            agent: "a",
            error: "checkout failed",
        };
        assert_eq!(
            on_suite_end(Some(&running("a", 1)), suite_ref(1, 2, 1), could_not, 2),
            SuiteDecision::Requeue {
                attempt: 2,
                lost_message: "agent a: checkout failed".into(),
                holder_may_return: false,
            },
            "it said it cannot run it: never handed back to it"
        );
        assert_eq!(
            on_suite_end(Some(&running("a", 2)), suite_ref(1, 2, 2), lost, 2),
            SuiteDecision::GiveUp {
                lost_message: "gone".into(),
                final_message: "infrastructure error: gone; no attempts left (2)".into()
            }
        );
        // An older attempt's loss, or a suite no longer running, changes nothing.
        assert_eq!(
            on_suite_end(Some(&running("a", 2)), suite_ref(1, 2, 1), lost, 3),
            SuiteDecision::Ignore
        );
        let mut queued = running("", 2);
        queued.state = SuiteState::Queued;
        assert_eq!(
            on_suite_end(Some(&queued), suite_ref(1, 2, 2), lost, 3),
            SuiteDecision::Ignore
        );
    }

    /// A platform that could not be made costs the queued suite an attempt; a suite already leased
    /// elsewhere, or at another attempt, is not touched.
    #[test]
    fn a_platform_failure_costs_a_queued_suite_an_attempt() {
        let lease = SuiteLease {
            run: 1,
            suite: 4,
            state: SuiteState::Queued,
            attempt: 1,
            agent: String::new(),
        };
        let claimed = SuiteRef {
            run: 1,
            suite: 4,
            attempt: 1,
        };
        assert_eq!(
            on_platform_failure(Some(&lease), claimed, "pool p: create failed", 2),
            SuiteDecision::Requeue {
                attempt: 2,
                lost_message: "pool p: create failed".into(),
                holder_may_return: false
            }
        );
        assert!(matches!(
            on_platform_failure(Some(&lease), claimed, "x", 1),
            SuiteDecision::GiveUp { .. }
        ));
        let running = SuiteLease {
            state: SuiteState::Running,
            ..lease.clone()
        };
        assert_eq!(
            on_platform_failure(Some(&running), claimed, "x", 2),
            SuiteDecision::Ignore
        );
        let later = SuiteRef {
            attempt: 2,
            ..claimed
        };
        assert_eq!(
            on_platform_failure(Some(&lease), later, "x", 2),
            SuiteDecision::Ignore
        );
    }

    #[test]
    fn infrastructure_trouble_outranks_failures_and_open_tests_keep_the_run_open() {
        let tally = |unfinished, problems, infra| RunTally {
            unfinished,
            problems,
            infra,
        };
        assert_eq!(verdict(RunState::Running, tally(1, 0, 0)), None);
        assert_eq!(
            verdict(RunState::Running, tally(0, 0, 0)),
            Some(RunState::Passed)
        );
        assert_eq!(
            verdict(RunState::Running, tally(0, 2, 0)),
            Some(RunState::Failed)
        );
        assert_eq!(
            verdict(RunState::Queued, tally(0, 2, 1)),
            Some(RunState::Error)
        );
        assert_eq!(verdict(RunState::Cancelled, tally(0, 0, 0)), None);
        assert_eq!(on_run_end(RunState::Passed, RunEnd::Cancel), None);
    }

    /// An in-memory store that applies decisions the way `store::runs` persists them.
    #[derive(Debug)]
    struct Model {
        run: RunState,
        suites: Vec<SuiteLease>,
        /// (suite index, status, attempt, infra)
        tests: Vec<(usize, TestStatus, u32, bool)>,
        /// Final statuses as first stored, per test: they must never change.
        first_final: Vec<Option<TestStatus>>,
        max_attempts: u32,
    }

    #[derive(Clone, Debug)]
    enum Input {
        Lease {
            suite: usize,
            agent: u8,
        },
        Started {
            test: usize,
            agent: u8,
            skew: i8,
        },
        Finished {
            test: usize,
            agent: u8,
            skew: i8,
            status: u8,
        },
        SuiteFinished {
            suite: usize,
            agent: u8,
            skew: i8,
            error: bool,
        },
        AgentLost {
            suite: usize,
            skew: i8,
        },
        Cancel,
        Deadline,
    }

    fn input(suites: usize, tests: usize) -> impl Strategy<Value = Input> {
        let agent = 0u8..3;
        let skew = prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)];
        prop_oneof![
            6 => (0..suites, agent.clone()).prop_map(|(suite, agent)| Input::Lease { suite, agent }),
            6 => (0..tests, agent.clone(), skew.clone())
                .prop_map(|(test, agent, skew)| Input::Started { test, agent, skew }),
            10 => (0..tests, agent.clone(), skew.clone(), 0u8..10).prop_map(
                |(test, agent, skew, status)| Input::Finished { test, agent, skew, status }
            ),
            3 => (0..suites, agent, skew.clone(), any::<bool>()).prop_map(
                |(suite, agent, skew, error)| Input::SuiteFinished { suite, agent, skew, error }
            ),
            3 => (0..suites, skew).prop_map(|(suite, skew)| Input::AgentLost { suite, skew }),
            1 => Just(Input::Cancel),
            1 => Just(Input::Deadline),
        ]
    }

    /// Every status an agent could report, final or not.
    fn reported_status(index: u8) -> TestStatus {
        let all: Vec<TestStatus> = [TestStatus::Queued, TestStatus::Running]
            .into_iter()
            .chain(TestStatus::FINAL)
            .collect();
        all[index as usize % all.len()]
    }

    impl Model {
        fn new(suite_sizes: &[usize], max_attempts: u32) -> Model {
            let suites = (0..suite_sizes.len())
                .map(|index| SuiteLease {
                    run: 1,
                    suite: index as u64 + 10,
                    state: SuiteState::Queued,
                    attempt: 1,
                    agent: String::new(),
                })
                .collect();
            let tests: Vec<_> = suite_sizes
                .iter()
                .enumerate()
                .flat_map(|(suite, size)| {
                    (0..*size).map(move |_| (suite, TestStatus::Queued, 1, false))
                })
                .collect();
            Model {
                run: RunState::Queued,
                first_final: vec![None; tests.len()],
                suites,
                tests,
                max_attempts,
            }
        }

        fn claimed(&self, suite: usize, skew: i8) -> SuiteRef {
            let mut claimed = self.suites[suite].current();
            claimed.attempt = (claimed.attempt as i64 + skew as i64).max(0) as u32;
            claimed
        }

        fn finish_unfinished(&mut self, suite: Option<usize>, status: TestStatus, infra: bool) {
            for test in &mut self.tests {
                if suite.is_none_or(|suite| test.0 == suite) && !test.1.is_final() {
                    test.1 = status;
                    test.3 = infra;
                }
            }
        }

        fn apply_suite_decision(&mut self, suite: usize, decision: SuiteDecision) {
            match decision {
                SuiteDecision::Ignore => {}
                SuiteDecision::Close { .. } => {
                    self.suites[suite].state = SuiteState::Done;
                    self.finish_unfinished(Some(suite), TestStatus::Error, false);
                }
                SuiteDecision::Requeue { attempt, .. } => {
                    let lease = &mut self.suites[suite];
                    lease.state = SuiteState::Queued;
                    lease.attempt = attempt;
                    lease.agent.clear();
                    for test in &mut self.tests {
                        if test.0 == suite && !test.1.is_final() {
                            test.1 = TestStatus::Queued;
                            test.2 = attempt;
                        }
                    }
                }
                SuiteDecision::GiveUp { .. } => {
                    self.suites[suite].state = SuiteState::Done;
                    self.finish_unfinished(Some(suite), TestStatus::Error, true);
                }
            }
        }

        fn apply(&mut self, input: &Input) {
            let agent_name = |agent: u8| format!("agent-{agent}");
            match *input {
                Input::Lease { suite, agent } => {
                    if self.run.is_final() || !may_lease(self.suites[suite].state) {
                        return;
                    }
                    let lease = &mut self.suites[suite];
                    lease.state = SuiteState::Running;
                    lease.agent = agent_name(agent);
                    if self.run == RunState::Queued {
                        self.run = RunState::Running;
                    }
                }
                Input::Started { test, agent, skew }
                | Input::Finished {
                    test, agent, skew, ..
                } => {
                    let suite = self.tests[test].0;
                    let record = match *input {
                        Input::Finished { status, .. } => {
                            TestRecord::Finished(reported_status(status))
                        }
                        _ => TestRecord::Started,
                    };
                    let claimed = self.claimed(suite, skew);
                    let decision = on_test_record(
                        Some(&self.suites[suite]),
                        &agent_name(agent),
                        claimed,
                        Some(self.tests[test].1),
                        record,
                    );
                    match decision {
                        TestDecision::RefuseStale(_) | TestDecision::Ignore => {}
                        TestDecision::MarkRunning => self.tests[test].1 = TestStatus::Running,
                        TestDecision::StoreResult(status) => self.tests[test].1 = status,
                    }
                }
                Input::SuiteFinished {
                    suite,
                    agent,
                    skew,
                    error,
                } => {
                    let name = agent_name(agent);
                    let end = if error {
                        SuiteEnd::CouldNotRun {
                            agent: &name,
                            error: "checkout failed",
                        }
                    } else {
                        SuiteEnd::Finished { agent: &name }
                    };
                    let claimed = self.claimed(suite, skew);
                    let decision =
                        on_suite_end(Some(&self.suites[suite]), claimed, end, self.max_attempts);
                    self.apply_suite_decision(suite, decision);
                }
                Input::AgentLost { suite, skew } => {
                    let claimed = self.claimed(suite, skew);
                    let end = SuiteEnd::Lost { reason: "offline" };
                    let decision =
                        on_suite_end(Some(&self.suites[suite]), claimed, end, self.max_attempts);
                    self.apply_suite_decision(suite, decision);
                }
                Input::Cancel | Input::Deadline => {
                    let end = if matches!(input, Input::Cancel) {
                        RunEnd::Cancel
                    } else {
                        RunEnd::Deadline
                    };
                    let Some(end) = on_run_end(self.run, end) else {
                        return;
                    };
                    self.finish_unfinished(None, end.unfinished_status, false);
                    if let Some(state) = end.state {
                        self.run = state;
                        for suite in &mut self.suites {
                            if matches!(suite.state, SuiteState::Queued | SuiteState::Running) {
                                suite.state = SuiteState::Cancelled;
                            }
                        }
                    }
                }
            }
            let tally = RunTally {
                unfinished: self.tests.iter().filter(|test| !test.1.is_final()).count() as u64,
                problems: self.tests.iter().filter(|test| test.1.is_problem()).count() as u64,
                infra: self.tests.iter().filter(|test| test.3).count() as u64,
            };
            if let Some(state) = verdict(self.run, tally) {
                self.run = state;
                for suite in &mut self.suites {
                    if matches!(suite.state, SuiteState::Queued | SuiteState::Running) {
                        suite.state = SuiteState::Done;
                    }
                }
            }
        }

        fn check(&mut self) -> Result<(), TestCaseError> {
            for (index, test) in self.tests.iter().enumerate() {
                prop_assert!(
                    test.2 >= 1 && test.2 <= self.max_attempts,
                    "attempt {test:?}"
                );
                match self.first_final[index] {
                    // Final once means final for good: never retried, never rewritten.
                    Some(first) => prop_assert_eq!(first, test.1, "test {} changed", index),
                    None if test.1.is_final() => self.first_final[index] = Some(test.1),
                    None => {}
                }
            }
            for suite in &self.suites {
                prop_assert!(suite.attempt >= 1 && suite.attempt <= self.max_attempts);
            }
            let all_final = self.tests.iter().all(|test| test.1.is_final());
            prop_assert_eq!(self.run.is_final(), all_final, "run {:?}", self.run);
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_test_ends_once_and_the_run_with_them(
            sizes in proptest::collection::vec(1usize..5, 1..4),
            max_attempts in 1u32..4,
            inputs in proptest::collection::vec(input(3, 12), 0..80),
        ) {
            let mut model = Model::new(&sizes, max_attempts);
            let suites = model.suites.len();
            let tests = model.tests.len();
            for input in &inputs {
                // Indices are drawn for the largest shape; fold them into this one.
                let input = match input.clone() {
                    Input::Lease { suite, agent } => Input::Lease { suite: suite % suites, agent },
                    Input::Started { test, agent, skew } => Input::Started { test: test % tests, agent, skew },
                    Input::Finished { test, agent, skew, status } =>
                        Input::Finished { test: test % tests, agent, skew, status },
                    Input::SuiteFinished { suite, agent, skew, error } =>
                        Input::SuiteFinished { suite: suite % suites, agent, skew, error },
                    Input::AgentLost { suite, skew } => Input::AgentLost { suite: suite % suites, skew },
                    other => other,
                };
                model.apply(&input);
                model.check()?;
            }
            // Whatever happened, the deadline ends it: every test final exactly once, the run final.
            model.apply(&Input::Deadline);
            model.check()?;
            prop_assert!(model.run.is_final());
            prop_assert!(model.tests.iter().all(|test| test.1.is_final()));
        }
    }
}
