//! Pools of test platforms made on demand, decided purely: which waiting suite a pool makes a platform
//! for (within its `max`), how many it keeps warm (`min_ready`), which platforms have joined, and which
//! are done with their suite. The scheduler asks here after `schedule::plan`, with the suites that found
//! no agent, and the daemon's pools carry the actions out.

use std::collections::{BTreeSet, HashMap};

use polarizer_shared::facts::AgentFacts;
use polarizer_shared::metadata::PlatformNeeds;
pub use polarizer_shared::platforms::PlatformState;
use polarizer_shared::run::SuiteRef;

use crate::core::placement::facts_match;

/// A pool as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct PoolView<'a> {
    pub name: &'a str,
    /// What its platforms are (kind, arch, labels), matched against a suite's needs.
    pub offers: &'a AgentFacts,
    pub max: u32,
    pub min_ready: u32,
    /// Whether it can make a platform from an image built from a suite's Containerfile (podman).
    pub builds_images: bool,
}

/// A platform of a pool; its agent has the platform's name.
#[derive(Clone, Copy, Debug)]
pub struct PlatformView<'a> {
    pub name: &'a str,
    pub pool: &'a str,
    pub state: PlatformState,
    /// While creating: the suite it is made for, if any (else it is one kept warm).
    pub for_suite: Option<u64>,
    /// Made from its suite's Containerfile: that suite's alone.
    pub dedicated: bool,
    /// Its provisioner has finished making it (an agent may join before, mid-install).
    pub made: bool,
    /// How long it has been ready with no suite (0 when not ready).
    pub idle_ms: i64,
}

/// A ready platform nobody took for this long, beyond its pool's `min_ready`, is destroyed (made for a
/// suite that was cancelled meanwhile, say).
pub const IDLE_LIMIT_MS: i64 = 10_000;

/// A queued suite no agent took in this step.
#[derive(Clone, Copy, Debug)]
pub struct WaitingSuite<'a> {
    pub suite: SuiteRef,
    pub needs: &'a PlatformNeeds,
    /// Pools that could not make a platform for it: tried again only when no other pool offers it.
    pub failed_pools: &'a [String],
    /// Why no agent took it (placement's words).
    pub reason: &'a str,
    /// Its tests' Containerfile, empty for none: it needs a platform made from it.
    pub containerfile: &'a str,
}

pub struct PoolInput<'a> {
    pub pools: &'a [PoolView<'a>],
    pub platforms: &'a [PlatformView<'a>],
    pub waiting: &'a [WaitingSuite<'a>],
    /// Agents with a live session.
    pub online: &'a BTreeSet<&'a str>,
    /// Agents holding a running suite (including those assigned in this step).
    pub busy: &'a BTreeSet<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolAction {
    /// Make a new platform in this pool, for this suite (or to keep the pool warm).
    Create {
        pool: String,
        for_suite: Option<SuiteRef>,
        /// The suite's Containerfile to build the platform's image from; empty: the pool's image.
        containerfile: String,
    },
    /// Made, and its agent is online: the platform is ready (and takes a suite from then on).
    Joined { platform: String },
    /// It held a suite and holds none now (the suite ended, or its agent was lost): clean it or
    /// destroy it, as its pool says.
    Release { platform: String },
}

#[derive(Debug, Default)]
pub struct PoolPlan {
    pub actions: Vec<PoolAction>,
    /// Why each waiting suite a pool could serve still waits (in place of the placement's reason).
    pub waiting: HashMap<u64, String>,
}

/// Whether a pool's platforms could take a suite with these needs.
pub fn pool_offers(pool: &PoolView<'_>, needs: &PlatformNeeds) -> bool {
    facts_match(pool.offers, needs)
}

pub fn plan(input: &PoolInput<'_>) -> PoolPlan {
    let mut plan = PoolPlan::default();
    let waiting_now: BTreeSet<u64> = input.waiting.iter().map(|w| w.suite.suite).collect();

    for platform in input.platforms {
        let online = input.online.contains(platform.name);
        match platform.state {
            PlatformState::Creating if online && platform.made => {
                plan.actions.push(PoolAction::Joined {
                    platform: platform.name.to_string(),
                })
            }
            PlatformState::Leased if !input.busy.contains(platform.name) => {
                plan.actions.push(PoolAction::Release {
                    platform: platform.name.to_string(),
                })
            }
            // Its agent went away while it waited for a suite (the platform died): no use keeping it.
            PlatformState::Ready if !online => plan.actions.push(PoolAction::Release {
                platform: platform.name.to_string(),
            }),
            // Made for a suite that no longer waits for it (cancelled, ended): nobody else may use it.
            PlatformState::Creating | PlatformState::Ready
                if platform.dedicated
                    && !input.busy.contains(platform.name)
                    && !platform
                        .for_suite
                        .is_some_and(|suite| waiting_now.contains(&suite)) =>
            {
                plan.actions.push(PoolAction::Release {
                    platform: platform.name.to_string(),
                })
            }
            _ => {}
        }
    }

    // Per pool: platforms that count against `max`, and those being made that no waiting suite has
    // claimed yet (made for a suite that no longer waits, or to keep the pool warm).
    let mut alive: HashMap<&str, u32> = HashMap::new();
    let mut spare: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut made_for: HashMap<u64, &PlatformView<'_>> = HashMap::new();
    for platform in input.platforms {
        if platform.state.counts() {
            *alive.entry(platform.pool).or_default() += 1;
        }
        if platform.state == PlatformState::Creating
            && (platform.for_suite.is_some() || !platform.dedicated)
        {
            match platform.for_suite {
                Some(suite) if waiting_now.contains(&suite) && !made_for.contains_key(&suite) => {
                    made_for.insert(suite, platform);
                }
                _ if platform.dedicated => {}
                _ => spare.entry(platform.pool).or_default().push(platform.name),
            }
        }
    }

    for waiting in input.waiting {
        let suite = waiting.suite.suite;
        if let Some(platform) = made_for.get(&suite) {
            plan.waiting.insert(
                suite,
                format!(
                    "waiting for platform {} from pool {} (being made)",
                    platform.name, platform.pool
                ),
            );
            continue;
        }
        let image = !waiting.containerfile.is_empty();
        let offering: Vec<&PoolView<'_>> = input
            .pools
            .iter()
            .filter(|pool| pool_offers(pool, waiting.needs) && (!image || pool.builds_images))
            .collect();
        if offering.is_empty() {
            if !input.pools.is_empty() {
                let what = if image {
                    format!(
                        "no podman pool offers it (its Containerfile {} needs one)",
                        waiting.containerfile
                    )
                } else {
                    "no pool offers it".to_string()
                };
                plan.waiting
                    .insert(suite, format!("{}; {what}", waiting.reason));
            }
            continue;
        }
        // Pools that have not failed this suite first; the failed ones only when nothing else offers.
        let fresh: Vec<&PoolView<'_>> = offering
            .iter()
            .copied()
            .filter(|pool| !waiting.failed_pools.iter().any(|name| name == pool.name))
            .collect();
        let candidates = if fresh.is_empty() { offering } else { fresh };
        if let Some((pool, name)) = candidates.iter().filter(|_| !image).find_map(|pool| {
            spare
                .get_mut(pool.name)
                .and_then(|names| names.pop())
                .map(|name| (pool, name))
        }) {
            plan.waiting.insert(
                suite,
                format!(
                    "waiting for platform {name} from pool {} (being made)",
                    pool.name
                ),
            );
            continue;
        }
        match candidates
            .iter()
            .find(|pool| alive.get(pool.name).copied().unwrap_or(0) < pool.max)
        {
            Some(pool) => {
                *alive.entry(pool.name).or_default() += 1;
                plan.actions.push(PoolAction::Create {
                    pool: pool.name.to_string(),
                    for_suite: Some(waiting.suite),
                    containerfile: waiting.containerfile.to_string(),
                });
                plan.waiting.insert(
                    suite,
                    format!("waiting for a new platform from pool {}", pool.name),
                );
            }
            None => {
                let full: Vec<String> = candidates
                    .iter()
                    .map(|pool| format!("{} ({} of max {} in use)", pool.name, pool.max, pool.max))
                    .collect();
                plan.waiting.insert(
                    suite,
                    format!("waiting for a platform: pool {} full", full.join(", ")),
                );
            }
        }
    }

    // Warm platforms: made or ready, and nobody's yet. Beyond `min_ready`, one left idle too long goes.
    for pool in input.pools {
        let idle_ready: Vec<&PlatformView<'_>> = input
            .platforms
            .iter()
            .filter(|platform| {
                platform.pool == pool.name
                    && platform.state == PlatformState::Ready
                    && !input.busy.contains(platform.name)
            })
            .collect();
        let surplus = idle_ready.len().saturating_sub(pool.min_ready as usize);
        for platform in idle_ready
            .iter()
            .filter(|platform| platform.idle_ms > IDLE_LIMIT_MS && !platform.dedicated)
            .take(surplus)
        {
            plan.actions.push(PoolAction::Release {
                platform: platform.name.to_string(),
            });
        }
        let mut idle = spare.get(pool.name).map_or(0, Vec::len) as u32
            + input
                .platforms
                .iter()
                .filter(|platform| {
                    platform.pool == pool.name
                        && !platform.dedicated
                        && platform.state == PlatformState::Ready
                        && !input.busy.contains(platform.name)
                })
                .count() as u32;
        let alive = alive.entry(pool.name).or_default();
        while idle < pool.min_ready && *alive < pool.max {
            plan.actions.push(PoolAction::Create {
                pool: pool.name.to_string(),
                for_suite: None,
                containerfile: String::new(),
            });
            idle += 1;
            *alive += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::facts::PlatformKind;

    fn offers(kind: PlatformKind) -> AgentFacts {
        AgentFacts {
            platform: kind,
            ..AgentFacts::for_test("pool")
        }
    }

    fn suite(id: u64) -> SuiteRef {
        SuiteRef {
            run: 1,
            suite: id,
            attempt: 1,
        }
    }

    fn pool<'a>(
        name: &'a str,
        offers: &'a AgentFacts,
        max: u32,
        min_ready: u32,
        builds_images: bool,
    ) -> PoolView<'a> {
        PoolView {
            name,
            offers,
            max,
            min_ready,
            builds_images,
        }
    }

    fn platform<'a>(
        name: &'a str,
        pool: &'a str,
        state: PlatformState,
        for_suite: Option<u64>,
        dedicated: bool,
    ) -> PlatformView<'a> {
        PlatformView {
            name,
            pool,
            state,
            for_suite,
            dedicated,
            made: true,
            idle_ms: 0,
        }
    }

    fn waiting<'a>(
        id: u64,
        needs: &'a PlatformNeeds,
        failed_pools: &'a [String],
        containerfile: &'a str,
    ) -> WaitingSuite<'a> {
        WaitingSuite {
            suite: suite(id),
            needs,
            failed_pools,
            reason: "",
            containerfile,
        }
    }

    fn creates(plan: &PoolPlan) -> Vec<(String, Option<u64>)> {
        plan.actions
            .iter()
            .filter_map(|action| match action {
                PoolAction::Create {
                    pool, for_suite, ..
                } => Some((pool.clone(), for_suite.map(|suite| suite.suite))),
                _ => None,
            })
            .collect()
    }

    /// Three suites waiting on a pool of max 2: two platforms are made, the third suite waits and
    /// says the pool is full; a suite needing a VM waits with the placement's reason.
    #[test]
    fn a_pool_makes_platforms_for_waiting_suites_within_max() {
        let container = offers(PlatformKind::Container);
        let pools = [pool("containers", &container, 2, 0, false)];
        let any = PlatformNeeds::default();
        let vm = PlatformNeeds {
            kind: vec![PlatformKind::Vm],
            ..PlatformNeeds::default()
        };
        let waiting = [
            waiting(1, &any, &[], ""),
            waiting(2, &vm, &[], ""),
            waiting(3, &any, &[], ""),
            waiting(4, &any, &[], ""),
        ];
        let none = BTreeSet::new();
        let plan = plan(&PoolInput {
            pools: &pools,
            platforms: &[],
            waiting: &waiting,
            online: &none,
            busy: &none,
        });
        assert_eq!(
            creates(&plan),
            [
                ("containers".to_string(), Some(1)),
                ("containers".to_string(), Some(3))
            ]
        );
        assert_eq!(plan.waiting[&2], "; no pool offers it");
        assert_eq!(
            plan.waiting[&4],
            "waiting for a platform: pool containers (2 of max 2 in use) full"
        );
    }

    /// A platform being made for a suite is not made twice; one made for a suite that no longer waits
    /// serves the next; a joined platform becomes ready; a leased one whose agent is idle is released.
    #[test]
    fn platforms_being_made_are_claimed_once_and_released_when_idle() {
        let container = offers(PlatformKind::Container);
        let pools = [pool("p", &container, 5, 1, false)];
        let platforms = [
            platform("p-1", "p", PlatformState::Creating, Some(1), false),
            platform("p-2", "p", PlatformState::Creating, Some(9), false),
            platform("p-3", "p", PlatformState::Leased, None, false),
            platform("p-4", "p", PlatformState::Creating, None, false),
        ];
        let any = PlatformNeeds::default();
        let waiting = [waiting(1, &any, &[], ""), waiting(2, &any, &[], "")];
        let online = BTreeSet::from(["p-4"]);
        let busy = BTreeSet::new();
        let plan = plan(&PoolInput {
            pools: &pools,
            platforms: &platforms,
            waiting: &waiting,
            online: &online,
            busy: &busy,
        });
        assert!(plan.waiting[&1].contains("p-1"), "{:?}", plan.waiting);
        assert!(
            plan.waiting[&2].contains("being made"),
            "{:?}",
            plan.waiting
        );
        assert!(plan.actions.contains(&PoolAction::Joined {
            platform: "p-4".into()
        }));
        assert!(plan.actions.contains(&PoolAction::Release {
            platform: "p-3".into()
        }));
        // p-4 is online and idle: the pool is warm enough.
        assert!(creates(&plan).is_empty(), "{:?}", plan.actions);
    }

    /// A suite with a Containerfile gets a platform of its own from a pool that builds images, never a
    /// warm one; a platform made for a suite that no longer waits is released.
    #[test]
    fn a_containerfile_suite_gets_a_platform_of_its_own() {
        let container = offers(PlatformKind::Container);
        let pools = [
            pool("local", &container, 5, 0, false),
            pool("podman", &container, 5, 0, true),
        ];
        let platforms = [
            platform("podman-1", "podman", PlatformState::Creating, None, false),
            platform("podman-2", "podman", PlatformState::Ready, Some(8), true),
        ];
        let any = PlatformNeeds::default();
        let waiting = [waiting(1, &any, &[], "images/Containerfile")];
        let none = BTreeSet::new();
        let plan = plan(&PoolInput {
            pools: &pools,
            platforms: &platforms,
            waiting: &waiting,
            online: &none,
            busy: &none,
        });
        assert!(plan.actions.contains(&PoolAction::Create {
            pool: "podman".into(),
            for_suite: Some(suite(1)),
            containerfile: "images/Containerfile".into(),
        }));
        assert!(plan.actions.contains(&PoolAction::Release {
            platform: "podman-2".into()
        }));
        assert_eq!(creates(&plan).len(), 1, "{:?}", plan.actions);
    }

    /// A ready platform nobody took for long goes, beyond `min_ready`; the warm ones stay.
    #[test]
    fn idle_ready_platforms_beyond_min_ready_are_released() {
        let container = offers(PlatformKind::Container);
        let mut idle = platform("p-1", "p", PlatformState::Ready, None, false);
        idle.idle_ms = IDLE_LIMIT_MS + 1;
        let online = BTreeSet::from(["p-1"]);
        let none = BTreeSet::new();
        for (min_ready, released) in [(0, true), (1, false)] {
            let pools = [pool("p", &container, 2, min_ready, false)];
            let plan = plan(&PoolInput {
                pools: &pools,
                platforms: &[idle],
                waiting: &[],
                online: &online,
                busy: &none,
            });
            assert_eq!(
                plan.actions.contains(&PoolAction::Release {
                    platform: "p-1".into()
                }),
                released,
                "min_ready {min_ready}: {:?}",
                plan.actions
            );
        }
    }

    /// A pool that failed a suite is passed over for another that offers it; with no other, it is
    /// tried again. `min_ready` keeps platforms warm within `max`.
    #[test]
    fn failed_pools_come_last_and_min_ready_stays_within_max() {
        let container = offers(PlatformKind::Container);
        let pools = [
            pool("a", &container, 3, 0, false),
            pool("b", &container, 1, 4, false),
        ];
        let any = PlatformNeeds::default();
        let failed = ["a".to_string()];
        let waiting = [waiting(1, &any, &failed, "")];
        let none = BTreeSet::new();
        let input = PoolInput {
            pools: &pools,
            platforms: &[],
            waiting: &waiting,
            online: &none,
            busy: &none,
        };
        assert_eq!(creates(&plan(&input)), [("b".to_string(), Some(1))]);
        let pools = [pools[0]];
        let input = PoolInput {
            pools: &pools,
            ..input
        };
        assert_eq!(creates(&plan(&input)), [("a".to_string(), Some(1))]);
    }
}
