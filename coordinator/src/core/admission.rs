//! Admission as pure functions: who may connect (a hello's credential against the inventory), and when
//! a silent connection counts as gone. Secrets are compared as digests; the digest function is given.

use std::time::Duration;

use polarizer_shared::protocol::{AgentCredential, Refusal};

/// An agent row as admission needs it.
#[derive(Clone, Debug)]
pub struct StoredAgent {
    pub credential_sha256: String,
    pub revoked: bool,
    /// Enrolled under [`EnrollMode::Approve`] and not approved yet.
    pub pending: bool,
}

/// How a new agent with a good enrollment token joins: at once, or after an operator approves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnrollMode {
    /// The token is enough (the default).
    #[default]
    Token,
    /// The agent is recorded as `pending` and admitted once `polarizer agents approve NAME` runs.
    Approve,
}

impl EnrollMode {
    pub fn parse(text: &str) -> Result<EnrollMode, String> {
        match text {
            "token" => Ok(EnrollMode::Token),
            "approve" => Ok(EnrollMode::Approve),
            _ => Err(format!(
                "{text:?} is not an enrollment mode (token or approve)"
            )),
        }
    }

    /// Whether an agent that just enrolled may work at once.
    pub fn approves_on_enrollment(self) -> bool {
        self == EnrollMode::Token
    }
}

/// A per-host enrollment token as stored (found by the digest of what the agent presented).
#[derive(Clone, Debug)]
pub struct HostToken {
    /// The one agent it enrolls.
    pub name: String,
    pub expires_ms: i64,
    pub used: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// A known agent presenting the credential it was issued.
    Known,
    /// A new agent with the right enrollment token: record the digest of the secret it chose.
    Enroll {
        credential_sha256: String,
        /// The digest of the per-host token it enrolls with, to be spent with the enrollment.
        host_token: Option<String>,
    },
    Refuse(Refusal),
}

/// Decides whether an agent's hello is admitted. Comparisons are of sha256 digests, so the time they
/// take says nothing about the secret. An agent that proves who it is but waits for approval is
/// refused as pending, only after its proof: a pending refusal tells nothing to an impostor. An enrollment token is the shared one, or a per-host one
/// (`host_token`, looked up by the digest of what was presented) naming this agent, unspent and
/// unexpired at `now_ms`.
pub fn admit_agent(
    name: &str,
    credential: &AgentCredential,
    stored: Option<&StoredAgent>,
    enrollment_token_digest: &str,
    host_token: Option<&HostToken>,
    now_ms: i64,
    secret_digest: impl Fn(&str) -> String,
) -> Admission {
    let names_this_agent = |token: &HostToken| token.name == name;
    let shared = |token: &str| secret_digest(token) == enrollment_token_digest;
    let token_names_agent = |token: &str| shared(token) || host_token.is_some_and(names_this_agent);
    let token_admits = |token: &str| {
        shared(token)
            || host_token.is_some_and(|host| {
                names_this_agent(host) && !host.used && now_ms < host.expires_ms
            })
    };
    let name = name.to_string();
    match (credential, stored) {
        (_, Some(stored)) if stored.revoked => Admission::Refuse(Refusal::Revoked { name }),
        (AgentCredential::Issued { secret }, Some(stored))
            if secret_digest(secret) == stored.credential_sha256 =>
        {
            known(stored, name)
        }
        (AgentCredential::Issued { .. }, _) => {
            Admission::Refuse(Refusal::UnknownCredential { name })
        }
        // The same agent enrolling again with the secret it already enrolled (its first welcome was
        // lost): its per-host token is spent by then, and that is fine.
        (AgentCredential::Enroll { token, secret }, Some(stored))
            if token_names_agent(token) && secret_digest(secret) == stored.credential_sha256 =>
        {
            known(stored, name)
        }
        (AgentCredential::Enroll { token, .. }, _) if !token_admits(token) => {
            Admission::Refuse(Refusal::BadEnrollmentToken)
        }
        (AgentCredential::Enroll { .. }, Some(_)) => Admission::Refuse(Refusal::NameTaken { name }),
        (AgentCredential::Enroll { token, secret }, None) => Admission::Enroll {
            credential_sha256: secret_digest(secret),
            host_token: (!shared(token)).then(|| secret_digest(token)),
        },
    }
}

/// A known agent proved who it is: admitted, unless it still waits for approval.
fn known(stored: &StoredAgent, name: String) -> Admission {
    if stored.pending {
        Admission::Refuse(Refusal::Pending { name })
    } else {
        Admission::Known
    }
}

/// How long an agent may be silent before its connection counts as gone: three heartbeats. Gossip is
/// only a hint: while it still sees the agent alive, the wait is longer by as much again, but by half a
/// second at most (a retransmission or two on a lossy path; frames QUIC has received count as the
/// agent's word even before the session reads them, so a busy coordinator needs no more). Gossip's
/// own failure detector takes many rounds to call a node dead, so with thousands of agents gossiping
/// slowly in cells its hint would otherwise only lengthen the wait. Never without silence on the
/// authenticated connection itself.
pub fn silence_allowed(heartbeat_interval: Duration, gossip_sees_alive: bool) -> Duration {
    let silence = heartbeat_interval * 3;
    if gossip_sees_alive {
        silence + silence.min(GOSSIP_PATIENCE)
    } else {
        silence
    }
}

/// The most that gossip's word that an agent is alive adds to the wait for its heartbeat.
const GOSSIP_PATIENCE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    /// Any one-way function does for the decisions; the daemon gives sha256.
    fn secret_digest(secret: &str) -> String {
        format!("digest of {secret}")
    }

    fn admit(
        name: &str,
        credential: &AgentCredential,
        stored: Option<&StoredAgent>,
        enrollment_token_digest: &str,
    ) -> Admission {
        admit_agent(
            name,
            credential,
            stored,
            enrollment_token_digest,
            None,
            0,
            secret_digest,
        )
    }

    fn stored(secret: &str, revoked: bool) -> StoredAgent {
        StoredAgent {
            credential_sha256: secret_digest(secret),
            revoked,
            pending: false,
        }
    }

    #[test]
    fn a_pending_agent_is_told_so_only_after_it_proves_who_it_is() {
        let token = secret_digest("enroll");
        let pending = StoredAgent {
            pending: true,
            ..stored("s", false)
        };
        let issued = |secret: &str| AgentCredential::Issued {
            secret: secret.into(),
        };
        let pending_refusal = Admission::Refuse(Refusal::Pending { name: "a".into() });
        assert_eq!(
            admit("a", &issued("s"), Some(&pending), &token),
            pending_refusal
        );
        // Its next try after enrolling presents the token and the secret it enrolled with.
        let again = AgentCredential::Enroll {
            token: "enroll".into(),
            secret: "s".into(),
        };
        assert_eq!(admit("a", &again, Some(&pending), &token), pending_refusal);
        assert_eq!(
            admit("a", &issued("x"), Some(&pending), &token),
            Admission::Refuse(Refusal::UnknownCredential { name: "a".into() })
        );
        let revoked = StoredAgent {
            revoked: true,
            ..pending
        };
        assert_eq!(
            admit("a", &issued("s"), Some(&revoked), &token),
            Admission::Refuse(Refusal::Revoked { name: "a".into() })
        );
        assert!(EnrollMode::Token.approves_on_enrollment());
        assert!(!EnrollMode::Approve.approves_on_enrollment());
        assert_eq!(EnrollMode::parse("approve"), Ok(EnrollMode::Approve));
        assert!(EnrollMode::parse("auto")
            .unwrap_err()
            .contains("token or approve"));
    }

    #[test]
    fn admission_covers_every_case() {
        let token = secret_digest("enroll");
        let issued = |secret: &str| AgentCredential::Issued {
            secret: secret.into(),
        };
        let enroll = |token: &str| AgentCredential::Enroll {
            token: token.into(),
            secret: "new".into(),
        };
        assert_eq!(
            admit("a", &issued("s"), Some(&stored("s", false)), &token),
            Admission::Known
        );
        assert_eq!(
            admit("a", &issued("x"), Some(&stored("s", false)), &token),
            Admission::Refuse(Refusal::UnknownCredential { name: "a".into() })
        );
        assert_eq!(
            admit("a", &issued("s"), None, &token),
            Admission::Refuse(Refusal::UnknownCredential { name: "a".into() })
        );
        assert_eq!(
            admit("a", &issued("s"), Some(&stored("s", true)), &token),
            Admission::Refuse(Refusal::Revoked { name: "a".into() })
        );
        assert_eq!(
            admit("a", &enroll("enroll"), None, &token),
            Admission::Enroll {
                credential_sha256: secret_digest("new"),
                host_token: None
            }
        );
        assert_eq!(
            admit("a", &enroll("wrong"), None, &token),
            Admission::Refuse(Refusal::BadEnrollmentToken)
        );
        assert_eq!(
            admit("a", &enroll("enroll"), Some(&stored("s", false)), &token),
            Admission::Refuse(Refusal::NameTaken { name: "a".into() })
        );
        assert_eq!(
            admit("a", &enroll("enroll"), Some(&stored("s", true)), &token),
            Admission::Refuse(Refusal::Revoked { name: "a".into() })
        );
    }

    #[test]
    fn enrolling_again_with_the_same_secret_is_idempotent() {
        let token = secret_digest("enroll");
        let again = AgentCredential::Enroll {
            token: "enroll".into(),
            secret: "s".into(),
        };
        assert_eq!(
            admit("a", &again, Some(&stored("s", false)), &token),
            Admission::Known
        );
        let wrong_token = AgentCredential::Enroll {
            token: "nope".into(),
            secret: "s".into(),
        };
        assert_eq!(
            admit("a", &wrong_token, Some(&stored("s", false)), &token),
            Admission::Refuse(Refusal::BadEnrollmentToken)
        );
    }

    #[test]
    fn a_host_token_admits_its_agent_once_before_it_expires() {
        let enroll = |token: &str, secret: &str| AgentCredential::Enroll {
            token: token.into(),
            secret: secret.into(),
        };
        let host = |name: &str, used: bool| HostToken {
            name: name.into(),
            expires_ms: 100,
            used,
        };
        fn admit_at(
            name: &str,
            credential: &AgentCredential,
            stored: Option<&StoredAgent>,
            token: &HostToken,
            now_ms: i64,
        ) -> Admission {
            let shared = secret_digest("enroll");
            admit_agent(
                name,
                credential,
                stored,
                &shared,
                Some(token),
                now_ms,
                secret_digest,
            )
        }
        assert_eq!(
            admit_at("vm-1", &enroll("host", "s"), None, &host("vm-1", false), 50),
            Admission::Enroll {
                credential_sha256: secret_digest("s"),
                host_token: Some(secret_digest("host"))
            }
        );
        let refused = Admission::Refuse(Refusal::BadEnrollmentToken);
        // Another agent's, spent, or expired: refused.
        assert_eq!(
            admit_at("vm-2", &enroll("host", "s"), None, &host("vm-1", false), 50),
            refused
        );
        assert_eq!(
            admit_at("vm-1", &enroll("host", "s"), None, &host("vm-1", true), 50),
            refused
        );
        assert_eq!(
            admit_at(
                "vm-1",
                &enroll("host", "s"),
                None,
                &host("vm-1", false),
                100
            ),
            refused
        );
        // Its agent again, with the secret it enrolled (the first welcome was lost): known.
        assert_eq!(
            admit_at(
                "vm-1",
                &enroll("host", "s"),
                Some(&stored("s", false)),
                &host("vm-1", true),
                150
            ),
            Admission::Known
        );
    }

    #[test]
    fn gossip_only_shortens_the_wait_for_a_silent_agent() {
        let beat = Duration::from_millis(500);
        assert!(silence_allowed(beat, false) < silence_allowed(beat, true));
        assert!(silence_allowed(beat, false) > beat * 2);
        // A dead host of thousands is offline within 5 s at a heartbeat a second, gossip or not.
        let beat = Duration::from_secs(1);
        assert_eq!(silence_allowed(beat, true), Duration::from_millis(3500));
        assert_eq!(silence_allowed(beat, false), Duration::from_secs(3));
        // Fast heartbeats keep the wait of twice three beats.
        let beat = Duration::from_millis(50);
        assert_eq!(silence_allowed(beat, true), Duration::from_millis(300));
    }
}
