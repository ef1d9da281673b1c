//! Placement: which agent may take a suite (its facts against the suite's platform needs), and why a
//! suite still waits when none can.

use polarizer_shared::facts::AgentFacts;
use polarizer_shared::metadata::PlatformNeeds;

/// Can an agent with these facts take a suite with these needs? An agent's labels `distro` (as
/// `rhel-9.4`) and `arch`, where set, stand for what it detected: the operator (or the pool that made
/// the platform) says what it is.
pub fn facts_match(facts: &AgentFacts, needs: &PlatformNeeds) -> bool {
    let arch = facts.labels.get("arch").unwrap_or(&facts.arch);
    let (full, id) = match facts.labels.get("distro") {
        Some(label) => (
            label.clone(),
            label.rsplit_once('-').map_or(label.as_str(), |(id, _)| id),
        ),
        None => (
            format!("{}-{}", facts.distro_id, facts.distro_version),
            facts.distro_id.as_str(),
        ),
    };
    needs.accepts_kind(facts.platform)
        && (needs.arch.is_empty() || needs.arch.iter().any(|wanted| wanted == arch))
        && (needs.distro.is_empty()
            || needs.distro.iter().any(|distro| {
                distro == id || distro == &full || full.starts_with(&format!("{distro}."))
            }))
}

/// The label of a platform made for one suite alone (from the image its tests' Containerfile built).
pub const MADE_FOR_LABEL: &str = "polarizer-suite";

/// A suite with a Containerfile goes only to the platform made for it; a platform made for a suite
/// takes no other.
pub fn made_for_match(facts: &AgentFacts, suite: u64, containerfile: &str) -> bool {
    match facts.labels.get(MADE_FOR_LABEL) {
        Some(made_for) => !containerfile.is_empty() && *made_for == suite.to_string(),
        None => containerfile.is_empty(),
    }
}

/// Why no agent takes a suite with these needs right now.
pub fn waiting_reason(needs: &PlatformNeeds, online: &[&AgentFacts], busy: usize) -> String {
    let mut wanted = Vec::new();
    if !needs.kind.is_empty() {
        let kinds: Vec<&str> = needs.kind.iter().map(|kind| kind.as_str()).collect();
        wanted.push(format!("platform {}", kinds.join(" or ")));
    }
    if !needs.arch.is_empty() {
        wanted.push(format!("arch {}", needs.arch.join(" or ")));
    }
    if !needs.distro.is_empty() {
        wanted.push(format!("distro {}", needs.distro.join(" or ")));
    }
    let what = if wanted.is_empty() {
        "an agent".to_string()
    } else {
        format!("an agent with {}", wanted.join(", "))
    };
    let matching = online
        .iter()
        .filter(|facts| facts_match(facts, needs))
        .count();
    if matching == 0 {
        format!("waiting for {what}: none online")
    } else {
        format!("waiting for {what}: all {matching} busy ({busy} suites running)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::facts::PlatformKind;

    fn agent(platform: PlatformKind) -> AgentFacts {
        AgentFacts {
            platform,
            ..AgentFacts::for_test("agent")
        }
    }

    /// `kind: [vm, baremetal]`: an agent of either kind takes the suite, a container does not.
    #[test]
    fn any_of_the_platform_kinds_matches() {
        let needs = PlatformNeeds {
            kind: vec![PlatformKind::Vm, PlatformKind::Baremetal],
            ..PlatformNeeds::default()
        };
        assert!(facts_match(&agent(PlatformKind::Vm), &needs));
        assert!(facts_match(&agent(PlatformKind::Baremetal), &needs));
        assert!(!facts_match(&agent(PlatformKind::Container), &needs));
        assert!(facts_match(
            &agent(PlatformKind::Container),
            &PlatformNeeds::default()
        ));
        let container = agent(PlatformKind::Container);
        assert_eq!(
            waiting_reason(&needs, &[&container], 0),
            "waiting for an agent with platform vm or baremetal: none online"
        );
    }
}
