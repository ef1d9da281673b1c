//! Partitioning, a pure function: selected tests → suites. Tests that conflict (both create or modify a
//! resource, or one changes what another needs) or are chained by `after` share one serial suite, in
//! dependency order. The rest are independent and packed into parallel suites, one per platform that can
//! take them, balanced by expected duration, longest first (LPT), with the serial suites placed first.
//!
//! Every step is linear in tests plus resources and `after` edges (up to a log factor): a resource that
//! anyone writes joins all its tests at once, never pair by pair, and the dependency order is Kahn's
//! algorithm with a heap.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use polarizer_shared::metadata::{PlatformNeeds, Provision, TestMetadata};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SuiteKind {
    Parallel,
    Serial,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Suite {
    pub kind: SuiteKind,
    pub needs: PlatformNeeds,
    /// How its platform is set up (a playbook, a Containerfile): one per suite, so tests that set
    /// their platform up differently never share one.
    pub provision: Provision,
    /// Test ids; for a serial suite, in the order they must run.
    pub tests: Vec<String>,
    pub expected_seconds: f64,
    /// Which platform slot of its group the plan put it on (suites on one slot run one after another).
    pub slot: usize,
}

/// Do two tests touch shared state in a way that forbids running them at once?
pub fn conflict(first: &TestMetadata, second: &TestMetadata) -> bool {
    let first_writes = writes(first);
    let second_writes = writes(second);
    !first_writes.is_disjoint(&second_writes)
        || !first_writes.is_disjoint(&reads(second))
        || !second_writes.is_disjoint(&reads(first))
}

fn writes(test: &TestMetadata) -> BTreeSet<&str> {
    test.resources
        .creates
        .iter()
        .chain(&test.resources.modifies)
        .map(String::as_str)
        .collect()
}

fn reads(test: &TestMetadata) -> BTreeSet<&str> {
    test.resources.needs.iter().map(String::as_str).collect()
}

struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn find(&mut self, item: usize) -> usize {
        let mut root = item;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        let mut current = item;
        while self.parent[current] != root {
            let next = self.parent[current];
            self.parent[current] = root;
            current = next;
        }
        root
    }

    fn union(&mut self, first: usize, second: usize) {
        let (first, second) = (self.find(first), self.find(second));
        if first != second {
            self.parent[second.max(first)] = second.min(first);
        }
    }
}

/// `expected` gives a test's expected seconds (history mean, else its fmf duration); `slots` how many
/// platforms can take a suite with these needs (at least one is assumed, so nothing is dropped: a suite
/// with no matching platform waits in the queue).
pub fn partition(
    tests: &[&TestMetadata],
    expected: &dyn Fn(&TestMetadata) -> f64,
    slots: &dyn Fn(&PlatformNeeds) -> usize,
) -> Vec<Suite> {
    let index_of: BTreeMap<&str, usize> = tests
        .iter()
        .enumerate()
        .flat_map(|(index, test)| [(test.id.as_str(), index), (test.name.as_str(), index)])
        .collect();
    let mut groups = UnionFind {
        parent: (0..tests.len()).collect(),
    };
    // Conflicts by resource. Two tests conflict exactly when they share a resource that one of them
    // writes; so a resource that anyone writes joins every test on it (each is joined to a writer, and
    // the writer to the rest), and one that is only needed joins none.
    let mut by_resource: BTreeMap<&str, (Vec<usize>, bool)> = BTreeMap::new();
    for (index, test) in tests.iter().enumerate() {
        let resources = &test.resources;
        for resource in &resources.needs {
            by_resource.entry(resource).or_default().0.push(index);
        }
        for resource in resources.creates.iter().chain(&resources.modifies) {
            let (members, written) = by_resource.entry(resource).or_default();
            members.push(index);
            *written = true;
        }
    }
    for (members, written) in by_resource.values() {
        if *written {
            for pair in members.windows(2) {
                groups.union(pair[0], pair[1]);
            }
        }
    }
    for (index, test) in tests.iter().enumerate() {
        for after in &test.after {
            if let Some(&before) = index_of.get(after.as_str()) {
                groups.union(index, before);
            }
        }
    }
    let mut components: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for index in 0..tests.len() {
        let root = groups.find(index);
        components.entry(root).or_default().push(index);
    }

    // Tests are grouped by what their platform must be and how it is set up.
    type Group = (PlatformNeeds, Provision);
    let mut serial: Vec<(Group, Vec<usize>)> = Vec::new();
    let mut independent: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
    for members in components.into_values() {
        if members.len() == 1 {
            let test = tests[members[0]];
            independent
                .entry((test.platform.clone(), test.provision.clone()))
                .or_default()
                .push(members[0]);
        } else {
            // The most specific needs in the component stand for all of it.
            let needs = members
                .iter()
                .map(|&index| tests[index].platform.clone())
                .max_by_key(|needs| {
                    (
                        !needs.kind.is_empty(),
                        needs.arch.len() + needs.distro.len(),
                    )
                })
                .unwrap_or_default();
            // Tests chained together share one platform: the first that sets it up says how.
            let provision = members
                .iter()
                .map(|&index| &tests[index].provision)
                .find(|provision| **provision != Provision::default())
                .cloned()
                .unwrap_or_default();
            serial.push((
                (needs, provision),
                in_after_order(tests, &members, &index_of),
            ));
        }
    }

    let mut suites = Vec::new();
    let groups_here: BTreeSet<Group> = serial
        .iter()
        .map(|(group, _)| group.clone())
        .chain(independent.keys().cloned())
        .collect();
    for group in groups_here {
        let (needs, provision) = &group;
        let slot_count = slots(needs).max(1);
        let mut load = vec![0.0f64; slot_count];
        let least_loaded = |load: &[f64]| {
            load.iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(slot, _)| slot)
                .unwrap_or(0)
        };
        let mut serial_here: Vec<(f64, Vec<usize>)> = serial
            .iter()
            .filter(|(suite_group, _)| *suite_group == group)
            .map(|(_, members)| {
                (
                    members.iter().map(|&index| expected(tests[index])).sum(),
                    members.clone(),
                )
            })
            .collect();
        serial_here.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (seconds, members) in serial_here {
            let slot = least_loaded(&load);
            load[slot] += seconds;
            suites.push(Suite {
                kind: SuiteKind::Serial,
                needs: needs.clone(),
                provision: provision.clone(),
                tests: members
                    .iter()
                    .map(|&index| tests[index].id.clone())
                    .collect(),
                expected_seconds: seconds,
                slot,
            });
        }
        let mut singles: Vec<usize> = independent.remove(&group).unwrap_or_default();
        singles.sort_by(|&a, &b| {
            expected(tests[b])
                .total_cmp(&expected(tests[a]))
                .then_with(|| tests[a].name.cmp(&tests[b].name))
        });
        let mut bins: Vec<Vec<usize>> = vec![Vec::new(); slot_count];
        for index in singles {
            let slot = least_loaded(&load);
            load[slot] += expected(tests[index]);
            bins[slot].push(index);
        }
        for (slot, members) in bins
            .into_iter()
            .enumerate()
            .filter(|(_, members)| !members.is_empty())
        {
            let expected_seconds = members.iter().map(|&index| expected(tests[index])).sum();
            suites.push(Suite {
                kind: SuiteKind::Parallel,
                needs: needs.clone(),
                provision: provision.clone(),
                tests: members
                    .iter()
                    .map(|&index| tests[index].id.clone())
                    .collect(),
                expected_seconds,
                slot,
            });
        }
    }
    suites
}

/// Kahn's algorithm over `after` within one component (`members` ascending); ties broken by fmf
/// `order`, then name.
fn in_after_order(
    tests: &[&TestMetadata],
    members: &[usize],
    index_of: &BTreeMap<&str, usize>,
) -> Vec<usize> {
    let position: BTreeMap<usize, usize> = members
        .iter()
        .enumerate()
        .map(|(position, &index)| (index, position))
        .collect();
    let mut waiting = vec![0usize; members.len()];
    let mut unblocks: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
    for (position_of_test, &index) in members.iter().enumerate() {
        let befores: BTreeSet<usize> = tests[index]
            .after
            .iter()
            .filter_map(|after| index_of.get(after.as_str()))
            .filter_map(|before| position.get(before).copied())
            .collect();
        waiting[position_of_test] = befores.len();
        for before in befores {
            unblocks[before].push(position_of_test);
        }
    }
    let key = |position: usize| {
        let test = tests[members[position]];
        Reverse((test.order, test.name.as_str(), position))
    };
    let mut ready: BinaryHeap<_> = (0..members.len())
        .filter(|&position| waiting[position] == 0)
        .map(key)
        .collect();
    let mut done = vec![false; members.len()];
    let mut ordered = Vec::with_capacity(members.len());
    let mut fallback = 0;
    while ordered.len() < members.len() {
        let next = match ready.pop() {
            Some(Reverse((_, _, position))) => position,
            // Metadata validation rejects `after` cycles; should one slip through, break it at the first
            // member still waiting, so the rest keep their order.
            None => {
                while done[fallback] {
                    fallback += 1;
                }
                fallback
            }
        };
        if done[next] {
            continue;
        }
        done[next] = true;
        ordered.push(members[next]);
        for &after in &unblocks[next] {
            waiting[after] = waiting[after].saturating_sub(1);
            if waiting[after] == 0 && !done[after] {
                ready.push(key(after));
            }
        }
    }
    ordered
}

/// The plan's makespan: the busiest slot of any platform group.
pub fn makespan(suites: &[Suite]) -> f64 {
    let mut per_slot: BTreeMap<(PlatformNeeds, usize), f64> = BTreeMap::new();
    for suite in suites {
        *per_slot
            .entry((suite.needs.clone(), suite.slot))
            .or_default() += suite.expected_seconds;
    }
    per_slot.into_values().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::metadata::{Resources, TestMetadata};
    use proptest::prelude::*;

    fn test(name: &str, seconds: u64) -> TestMetadata {
        let json = serde_json::json!({
            "id": name, "name": name, "summary": "", "description": "", "test": "true", "path": "", "framework": "shell",
            "duration_seconds": seconds, "tags": [], "tier": "", "components": [], "require": [], "recommend": [],
            "links": [], "enabled": true, "environment": {}, "result": "", "order": 50, "test_type": null,
            "feature": "", "after": [], "resources": {"needs": [], "creates": [], "modifies": []}, "services": [],
            "platform": {"kind": null, "arch": [], "distro": []}, "provision": {"playbook": "", "containerfile": ""},
            "junit": "", "bdd": ""
        });
        serde_json::from_value(json).unwrap()
    }

    fn plan(tests: &[TestMetadata], slots: usize) -> Vec<Suite> {
        let refs: Vec<&TestMetadata> = tests.iter().collect();
        partition(&refs, &|test| test.duration_seconds as f64, &|_| slots)
    }

    /// Tests that set their platform up differently never share a suite; those set up alike do.
    #[test]
    fn tests_are_grouped_by_how_their_platform_is_set_up() {
        let mut tests: Vec<TestMetadata> = (0..4)
            .map(|index| test(&format!("/t{index}"), 10))
            .collect();
        for test in &mut tests[..2] {
            test.provision.playbook = "setup/rhel.yml".into();
        }
        let suites = plan(&tests, 1);
        assert_eq!(suites.len(), 2, "{suites:?}");
        for suite in &suites {
            let with_playbook = suite.tests.iter().any(|id| id == "/t0" || id == "/t1");
            assert_eq!(
                suite.provision.playbook.is_empty(),
                !with_playbook,
                "{suite:?}"
            );
            assert_eq!(suite.tests.len(), 2, "{suite:?}");
        }
    }

    #[test]
    fn conflicting_and_chained_tests_share_a_serial_suite_in_order() {
        let mut tests: Vec<TestMetadata> = (0..6)
            .map(|index| test(&format!("/t{index}"), 10 + index))
            .collect();
        tests[0].resources = Resources {
            needs: vec!["candlepin".into()],
            ..Default::default()
        };
        tests[1].resources = Resources {
            modifies: vec!["candlepin".into()],
            ..Default::default()
        };
        tests[2].after = vec!["/t3".into()];
        let suites = plan(&tests, 2);
        let serial: Vec<&Suite> = suites
            .iter()
            .filter(|suite| suite.kind == SuiteKind::Serial)
            .collect();
        assert_eq!(serial.len(), 2);
        assert!(
            serial.iter().any(|suite| suite.tests == ["/t3", "/t2"]),
            "{serial:?}"
        );
        assert!(serial
            .iter()
            .any(|suite| suite.tests.len() == 2 && suite.tests.contains(&"/t0".to_string())));
        assert_eq!(
            suites.iter().map(|suite| suite.tests.len()).sum::<usize>(),
            6
        );
        // Two readers of the same resource do not conflict.
        let mut readers = vec![test("/a", 1), test("/b", 1)];
        readers[0].resources.needs = vec!["db".into()];
        readers[1].resources.needs = vec!["db".into()];
        assert!(plan(&readers, 2)
            .iter()
            .all(|suite| suite.kind == SuiteKind::Parallel));
    }

    #[test]
    fn independent_tests_are_balanced_longest_first() {
        let tests: Vec<TestMetadata> = [50, 40, 30, 20, 10, 10]
            .iter()
            .enumerate()
            .map(|(index, seconds)| test(&format!("/t{index}"), *seconds))
            .collect();
        let suites = plan(&tests, 2);
        assert_eq!(suites.len(), 2);
        assert_eq!(makespan(&suites), 80.0);
    }

    fn arbitrary_tests() -> impl Strategy<Value = Vec<TestMetadata>> {
        prop::collection::vec(
            (
                1u64..600,
                prop::collection::vec(0usize..6, 0..3),
                0u8..3,
                prop::option::of(0usize..40),
            ),
            1..40,
        )
        .prop_map(|specs| {
            let mut tests = Vec::new();
            for (index, (seconds, resources, usage, after)) in specs.into_iter().enumerate() {
                let mut metadata = test(&format!("/t{index:02}"), seconds);
                let names: Vec<String> = resources
                    .iter()
                    .map(|resource| format!("r{resource}"))
                    .collect();
                match usage {
                    0 => metadata.resources.needs = names,
                    1 => metadata.resources.creates = names,
                    _ => metadata.resources.modifies = names,
                }
                // Only earlier tests: `after` stays acyclic, as validation guarantees.
                if let Some(before) = after.filter(|before| *before < index) {
                    metadata.after = vec![format!("/t{before:02}")];
                }
                tests.push(metadata);
            }
            tests
        })
    }

    proptest! {
        #[test]
        fn every_test_once_conflicts_together_after_respected(tests in arbitrary_tests(), slots in 1usize..6) {
            let suites = plan(&tests, slots);
            let mut seen = BTreeMap::new();
            for (suite_index, suite) in suites.iter().enumerate() {
                for (position, id) in suite.tests.iter().enumerate() {
                    prop_assert!(seen.insert(id.clone(), (suite_index, position)).is_none(), "{id} scheduled twice");
                }
            }
            prop_assert_eq!(seen.len(), tests.len());
            for first in &tests {
                for second in &tests {
                    if first.id != second.id && conflict(first, second) {
                        prop_assert_eq!(seen[&first.id].0, seen[&second.id].0, "{} and {} conflict but are apart", first.id, second.id);
                    }
                }
                for after in &first.after {
                    let (suite, position) = seen[&first.id];
                    let (before_suite, before_position) = seen[after];
                    prop_assert_eq!(suite, before_suite);
                    prop_assert!(before_position < position, "{} must run after {}", first.id, after);
                    prop_assert_eq!(suites[suite].kind, SuiteKind::Serial);
                }
            }
            // Nothing is joined without a reason: tests share a serial suite only when a chain of
            // pairwise conflicts and `after` links connects them (checked pair by pair, as defined).
            let mut reference = UnionFind { parent: (0..tests.len()).collect() };
            for (first_index, first) in tests.iter().enumerate() {
                for (second_index, second) in tests.iter().enumerate() {
                    if first.id != second.id && (conflict(first, second) || first.after.contains(&second.id)) {
                        reference.union(first_index, second_index);
                    }
                }
            }
            let index_of: BTreeMap<&str, usize> = tests.iter().enumerate().map(|(index, test)| (test.id.as_str(), index)).collect();
            for suite in suites.iter().filter(|suite| suite.kind == SuiteKind::Serial) {
                let roots: BTreeSet<usize> = suite.tests.iter().map(|id| reference.find(index_of[id.as_str()])).collect();
                prop_assert_eq!(roots.len(), 1, "unrelated tests joined in {:?}", suite.tests);
                prop_assert!(suite.tests.len() > 1);
            }
            // No suite is placed on a slot that does not exist.
            prop_assert!(suites.iter().all(|suite| suite.slot < slots.max(1)));
        }
    }
}
