//! Scheduling decisions, pure: given the active suites, the online agents with their facts, and `now`,
//! what the scheduler does next: end runs past their deadline, revoke leases whose agent is gone or
//! restarted (after a coordinator restart, agents not yet seen get a grace period to reconnect and keep
//! their suites), and assign queued suites to idle agents whose facts match. The daemon's loop assembles
//! the input, asks here, and carries out the actions in order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use polarizer_shared::facts::AgentFacts;
use polarizer_shared::metadata::PlatformNeeds;
use polarizer_shared::run::SuiteRef;

use crate::core::placement::{facts_match, made_for_match, waiting_reason};
use crate::core::run::{may_reinstate, LostHolder, SuiteLease, SuiteState};

/// A queued or running suite, as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct ActiveSuite {
    pub run: u64,
    pub suite: u64,
    pub state: SuiteState,
    pub attempt: u32,
    pub agent: String,
    pub incarnation: u64,
    pub needs: PlatformNeeds,
    pub run_deadline_ms: i64,
    /// While queued after a lost attempt: who lost it.
    pub lost: Option<LostHolder>,
    /// Its tests' Containerfile (a path in the tree), empty for none: it then runs only on a platform
    /// made for it from the image built from that file.
    pub containerfile: String,
}

impl ActiveSuite {
    pub fn lease(&self) -> SuiteLease {
        SuiteLease {
            run: self.run,
            suite: self.suite,
            state: self.state,
            attempt: self.attempt,
            agent: self.agent.clone(),
        }
    }

    pub fn suite_ref(&self) -> SuiteRef {
        SuiteRef {
            run: self.run,
            suite: self.suite,
            attempt: self.attempt,
        }
    }
}

/// An agent with a live session.
#[derive(Clone, Copy, Debug)]
pub struct AgentView<'a> {
    pub name: &'a str,
    pub incarnation: u64,
    pub facts: &'a AgentFacts,
    /// Stopping: it keeps what it holds (and may take back what it lost) but is given nothing new.
    pub draining: bool,
}

/// Everything one scheduling step looks at.
pub struct ScheduleInput<'a> {
    /// Oldest run first, suites in their order: the order assignments are made in.
    pub active: &'a [ActiveSuite],
    pub online: &'a [AgentView<'a>],
    /// Agents that have had a session with this coordinator process.
    pub seen: &'a HashSet<String>,
    /// Until then (after a coordinator restart) an agent not yet seen keeps its suites.
    pub restart_grace_until_ms: i64,
    pub now_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The run's deadline passed: its unfinished tests end as timeouts.
    EndRunAtDeadline { run: u64 },
    /// The holder of this attempt is gone: requeue or give up (the run state machine decides).
    Revoke { suite: SuiteRef, message: String },
    /// The agent that lost this queued suite's previous attempt is back as the same process: the
    /// attempt is its again (the store checks that nobody began the suite meanwhile).
    Reinstate { agent: String, incarnation: u64 },
    /// Lease this queued suite to this agent (the store refuses if someone got there first).
    Assign {
        suite: SuiteRef,
        agent: String,
        incarnation: u64,
    },
}

/// One step's decisions: actions in the order to carry them out, and why each unassigned queued suite
/// waits.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub waiting: HashMap<u64, String>,
}

pub fn plan(input: &ScheduleInput<'_>) -> Plan {
    let mut plan = Plan::default();
    let by_name: BTreeMap<&str, &AgentView<'_>> = input
        .online
        .iter()
        .map(|agent| (agent.name, agent))
        .collect();
    let in_grace = input.now_ms < input.restart_grace_until_ms;

    let mut ended = BTreeSet::new();
    for suite in input.active {
        if suite.run_deadline_ms <= input.now_ms && ended.insert(suite.run) {
            plan.actions
                .push(Action::EndRunAtDeadline { run: suite.run });
        }
    }

    let mut by_order: Vec<&AgentView<'_>> = input.online.iter().collect();
    by_order.sort_by(|a, b| a.name.cmp(b.name));
    let mut resume: HashMap<&PlatformNeeds, usize> = HashMap::new();
    let mut waiting_for: HashMap<&PlatformNeeds, String> = HashMap::new();
    let mut busy: BTreeSet<&str> = BTreeSet::new();
    for suite in input
        .active
        .iter()
        .filter(|suite| suite.state == SuiteState::Running && !ended.contains(&suite.run))
    {
        let gone = match by_name.get(suite.agent.as_str()) {
            Some(agent) if agent.incarnation == suite.incarnation => {
                busy.insert(agent.name);
                continue;
            }
            Some(_) => "restarted",
            // After a coordinator restart, agents get a moment to reconnect and keep their suites.
            None if in_grace && !input.seen.contains(&suite.agent) => continue,
            None => "went offline",
        };
        plan.actions.push(Action::Revoke {
            suite: suite.suite_ref(),
            message: format!(
                "agent {} {gone} during attempt {}",
                suite.agent, suite.attempt
            ),
        });
    }

    for suite in input
        .active
        .iter()
        .filter(|suite| suite.state == SuiteState::Queued && !ended.contains(&suite.run))
    {
        // Its lost holder is back and still running it: give it back rather than start it again.
        let back = suite.lost.as_ref().and_then(|lost| {
            by_name
                .get(lost.agent.as_str())
                .filter(|agent| may_reinstate(&suite.lease(), lost, agent.name, agent.incarnation))
        });
        if let Some(agent) = back {
            busy.insert(agent.name);
            plan.actions.push(Action::Reinstate {
                agent: agent.name.to_string(),
                incarnation: agent.incarnation,
            });
            continue;
        }
        // Suites with the same needs take agents in name order: the next one's search starts where the
        // last one's ended (those before were busy, draining or unfit, and stay so in this step), so a
        // step costs the online agents once per kind of needs, not once per queued suite.
        let shared = suite.containerfile.is_empty();
        let start = if shared {
            *resume.get(&suite.needs).unwrap_or(&0)
        } else {
            0
        };
        let found = by_order[start.min(by_order.len())..]
            .iter()
            .position(|agent| {
                !agent.draining
                    && !busy.contains(agent.name)
                    && facts_match(agent.facts, &suite.needs)
                    && made_for_match(agent.facts, suite.suite, &suite.containerfile)
            })
            .map(|offset| start + offset);
        if shared {
            resume.insert(
                &suite.needs,
                found.map_or(by_order.len(), |index| index + 1),
            );
        }
        let Some(agent) = found.map(|index| by_order[index]) else {
            let reason = match waiting_for.get(&suite.needs) {
                Some(reason) if shared => reason.clone(),
                _ => {
                    let facts: Vec<_> = input.online.iter().map(|agent| agent.facts).collect();
                    let reason = waiting_reason(&suite.needs, &facts, busy.len());
                    waiting_for.insert(&suite.needs, reason.clone());
                    reason
                }
            };
            plan.waiting.insert(suite.suite, reason);
            continue;
        };
        busy.insert(agent.name);
        plan.actions.push(Action::Assign {
            suite: suite.suite_ref(),
            agent: agent.name.to_string(),
            incarnation: agent.incarnation,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::facts::PlatformKind;

    fn facts(name: &str, platform: PlatformKind) -> AgentFacts {
        AgentFacts {
            platform,
            ..AgentFacts::for_test(name)
        }
    }

    fn suite(
        suite: u64,
        state: SuiteState,
        agent: &str,
        needs: Option<PlatformKind>,
    ) -> ActiveSuite {
        ActiveSuite {
            run: 1,
            suite,
            state,
            attempt: 1,
            agent: agent.into(),
            incarnation: 7,
            needs: PlatformNeeds {
                kind: needs.into_iter().collect(),
                ..PlatformNeeds::default()
            },
            run_deadline_ms: 1_000_000,
            lost: None,
            containerfile: String::new(),
        }
    }

    #[test]
    fn queued_suites_go_to_idle_matching_agents_in_order() {
        let vm = facts("vm-1", PlatformKind::Vm);
        let container = facts("c-1", PlatformKind::Container);
        let online = [
            AgentView {
                name: "vm-1",
                incarnation: 7,
                facts: &vm,
                draining: false,
            },
            AgentView {
                name: "c-1",
                incarnation: 7,
                facts: &container,
                draining: false,
            },
        ];
        let active = [
            suite(1, SuiteState::Running, "vm-1", None),
            suite(2, SuiteState::Queued, "", Some(PlatformKind::Vm)),
            suite(3, SuiteState::Queued, "", None),
            suite(4, SuiteState::Queued, "", None),
        ];
        let seen = HashSet::new();
        let plan = plan(&ScheduleInput {
            active: &active,
            online: &online,
            seen: &seen,
            restart_grace_until_ms: 0,
            now_ms: 10,
        });
        assert_eq!(
            plan.actions,
            vec![Action::Assign {
                suite: active[2].suite_ref(),
                agent: "c-1".into(),
                incarnation: 7
            }]
        );
        assert_eq!(
            plan.waiting.get(&2).map(String::as_str),
            Some("waiting for an agent with platform vm: all 1 busy (1 suites running)")
        );
        assert!(plan.waiting.contains_key(&4));
    }

    #[test]
    fn each_suite_gets_the_first_fitting_agent_by_name_as_a_scan_of_all_would_give() {
        // Agents of three kinds, some draining, some busy; queued suites of interleaved needs.
        let kinds = [
            PlatformKind::Vm,
            PlatformKind::Container,
            PlatformKind::Baremetal,
        ];
        let names: Vec<String> = (0..60).map(|index| format!("agent-{index:03}")).collect();
        let all_facts: Vec<AgentFacts> = names
            .iter()
            .enumerate()
            .map(|(index, name)| facts(name, kinds[(index * 7) % 3]))
            .collect();
        let online: Vec<AgentView<'_>> = names
            .iter()
            .zip(&all_facts)
            .enumerate()
            .rev()
            .map(|(index, (name, facts))| AgentView {
                name,
                incarnation: 7,
                facts,
                draining: index % 11 == 0,
            })
            .collect();
        let mut active = vec![
            suite(1, SuiteState::Running, "agent-004", None),
            suite(2, SuiteState::Running, "agent-017", None),
        ];
        let wanted = [
            Some(PlatformKind::Vm),
            None,
            Some(PlatformKind::Container),
            Some(PlatformKind::Vm),
        ];
        for suite_id in 3..70 {
            active.push(suite(
                suite_id,
                SuiteState::Queued,
                "",
                wanted[suite_id as usize % 4],
            ));
        }
        let seen = HashSet::new();
        let plan = plan(&ScheduleInput {
            active: &active,
            online: &online,
            seen: &seen,
            restart_grace_until_ms: 0,
            now_ms: 10,
        });
        // The reference: every suite scans every agent.
        let mut busy: BTreeSet<&str> = ["agent-004", "agent-017"].into();
        let mut expected = Vec::new();
        for queued in &active[2..] {
            let fit = online
                .iter()
                .filter(|agent| {
                    !agent.draining
                        && !busy.contains(agent.name)
                        && facts_match(agent.facts, &queued.needs)
                })
                .min_by(|a, b| a.name.cmp(b.name));
            match fit {
                Some(agent) => {
                    busy.insert(agent.name);
                    expected.push(Action::Assign {
                        suite: queued.suite_ref(),
                        agent: agent.name.to_string(),
                        incarnation: 7,
                    });
                }
                None => assert!(
                    plan.waiting.contains_key(&queued.suite),
                    "suite {} waits",
                    queued.suite
                ),
            }
        }
        assert!(
            expected.len() > 20 && plan.waiting.len() > 10,
            "both cases are exercised"
        );
        assert_eq!(plan.actions, expected);
    }

    #[test]
    fn a_draining_agent_keeps_its_suite_and_is_given_nothing_new() {
        let vm = facts("vm-1", PlatformKind::Vm);
        let online = [AgentView {
            name: "vm-1",
            incarnation: 7,
            facts: &vm,
            draining: true,
        }];
        let seen = HashSet::new();
        let input = |active| ScheduleInput {
            active,
            online: &online,
            seen: &seen,
            restart_grace_until_ms: 0,
            now_ms: 10,
        };
        let holding = [suite(1, SuiteState::Running, "vm-1", None)];
        assert!(plan(&input(&holding)).actions.is_empty(), "not revoked");
        let queued = [suite(2, SuiteState::Queued, "", None)];
        let idle = plan(&input(&queued));
        assert!(idle.actions.is_empty(), "not assigned");
        assert!(idle.waiting.contains_key(&2));
    }

    #[test]
    fn a_lost_attempt_goes_back_to_its_agent_when_the_same_process_returns() {
        let vm = facts("vm-1", PlatformKind::Vm);
        let other = facts("vm-0", PlatformKind::Vm);
        let lost = LostHolder {
            agent: "vm-1".into(),
            incarnation: 7,
            attempt: 1,
        };
        let mut queued = suite(1, SuiteState::Queued, "", None);
        queued.attempt = 2;
        queued.lost = Some(lost);
        let active = [queued];
        let seen = HashSet::new();
        let step = |incarnation: u64| {
            let online = [
                AgentView {
                    name: "vm-0",
                    incarnation: 3,
                    facts: &other,
                    draining: false,
                },
                AgentView {
                    name: "vm-1",
                    incarnation,
                    facts: &vm,
                    draining: false,
                },
            ];
            plan(&ScheduleInput {
                active: &active,
                online: &online,
                seen: &seen,
                restart_grace_until_ms: 0,
                now_ms: 10,
            })
            .actions
        };
        assert_eq!(
            step(7),
            vec![Action::Reinstate {
                agent: "vm-1".into(),
                incarnation: 7
            }]
        );
        // Restarted: it no longer runs the suite, which starts again elsewhere as attempt 2.
        assert_eq!(
            step(8),
            vec![Action::Assign {
                suite: active[0].suite_ref(),
                agent: "vm-0".into(),
                incarnation: 3
            }]
        );
    }

    #[test]
    fn leases_of_gone_agents_are_revoked_after_the_restart_grace() {
        let vm = facts("vm-1", PlatformKind::Vm);
        let restarted = [AgentView {
            name: "vm-1",
            incarnation: 8,
            facts: &vm,
            draining: false,
        }];
        let active = [
            suite(1, SuiteState::Running, "vm-1", None),
            suite(2, SuiteState::Running, "vm-2", None),
        ];
        let seen = HashSet::new();
        let input = |now_ms| ScheduleInput {
            active: &active,
            online: &restarted,
            seen: &seen,
            restart_grace_until_ms: 100,
            now_ms,
        };
        // In the grace period, only the agent that came back with a new incarnation loses its lease.
        let early = plan(&input(50));
        assert_eq!(early.actions.len(), 1);
        assert!(
            matches!(&early.actions[0], Action::Revoke { message, .. } if message == "agent vm-1 restarted during attempt 1")
        );
        let late = plan(&input(150));
        assert_eq!(late.actions.len(), 2);
        assert!(
            matches!(&late.actions[1], Action::Revoke { message, .. } if message == "agent vm-2 went offline during attempt 1")
        );
    }

    #[test]
    fn a_run_past_its_deadline_ends_once_and_nothing_of_it_is_scheduled() {
        let vm = facts("vm-1", PlatformKind::Vm);
        let online = [AgentView {
            name: "vm-1",
            incarnation: 7,
            facts: &vm,
            draining: false,
        }];
        let mut active = [
            suite(1, SuiteState::Running, "gone", None),
            suite(2, SuiteState::Queued, "", None),
        ];
        for suite in &mut active {
            suite.run_deadline_ms = 5;
        }
        let seen = HashSet::new();
        let plan = plan(&ScheduleInput {
            active: &active,
            online: &online,
            seen: &seen,
            restart_grace_until_ms: 0,
            now_ms: 5,
        });
        assert_eq!(plan.actions, vec![Action::EndRunAtDeadline { run: 1 }]);
    }
}
