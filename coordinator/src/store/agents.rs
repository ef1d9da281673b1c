//! The agent inventory in SQLite: enrollment, approval, online and offline, facts, revocation. An agent's
//! state is `online`, `offline` or `revoked` (a CHECK constraint in the table); anything else read back is
//! an error naming the column, never a guess. An agent not `approved` (enrolled under `--enroll approve`)
//! is listed as `pending` and never goes online.

use polarizer_shared::protocol::{AgentRecord, AgentState};
use polarizer_shared::AgentFacts;
use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{sqlite_error, unknown_value, Cached, Reader, StoreError};
use crate::core::admission::{HostToken, StoredAgent};

/// A new agent, as admission decided to enroll it.
pub struct Enrollment {
    pub name: String,
    pub credential_sha256: String,
    /// The digest of the per-host token it enrolls with, spent in the same transaction.
    pub host_token: Option<String>,
    /// False under `--enroll approve`: the agent waits as pending.
    pub approved: bool,
    pub facts: AgentFacts,
    pub address: String,
    pub now_ms: i64,
}

/// Inserts a newly enrolled agent: online, or offline and waiting when not `approved`. False when the
/// name is taken (nothing written).
pub(super) fn enroll(connection: &Connection, enrollment: &Enrollment) -> rusqlite::Result<bool> {
    let Enrollment {
        name,
        credential_sha256,
        approved,
        facts,
        address,
        now_ms,
        ..
    } = enrollment;
    let exists = connection
        .row("SELECT 1 FROM agents WHERE name = ?1", [name], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        return Ok(false);
    }
    connection.run(
        "INSERT INTO agents (name, credential_sha256, state, facts_json, address, first_seen_ms, last_seen_ms, approved)
         VALUES (?1, ?2, CASE WHEN ?6 THEN 'online' ELSE 'offline' END, ?3, ?4, ?5, ?5, ?6)",
        params![name, credential_sha256, facts_json(facts), address, now_ms, approved],
    )?;
    Ok(true)
}

/// Approves an agent that waits for it; a clear error when there is none such.
pub(super) fn approve(
    connection: &Connection,
    name: &str,
) -> rusqlite::Result<Result<(), StoreError>> {
    let row: Option<(String, bool)> = connection
        .row(
            "SELECT state, approved FROM agents WHERE name = ?1",
            [name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let name = name.to_string();
    Ok(match row {
        None => Err(StoreError::NoSuchAgent { name }),
        Some((state, _)) if state == "revoked" => Err(StoreError::NotPending {
            name,
            state: "revoked",
        }),
        Some((_, true)) => Err(StoreError::NotPending {
            name,
            state: "approved",
        }),
        Some((_, false)) => {
            connection.run("UPDATE agents SET approved = 1 WHERE name = ?1", [&name])?;
            Ok(())
        }
    })
}

/// Records a per-host enrollment token (its digest only).
pub(super) fn create_host_token(
    connection: &Connection,
    digest: &str,
    name: &str,
    now_ms: i64,
    expires_ms: i64,
) -> rusqlite::Result<()> {
    connection.run(
        "INSERT INTO host_tokens (digest, name, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
        params![digest, name, now_ms, expires_ms],
    )?;
    Ok(())
}

/// Spends a per-host token on its agent's enrollment; false when it is spent, expired or another's.
pub(super) fn spend_host_token(
    connection: &Connection,
    digest: &str,
    name: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let changed = connection.run(
        "UPDATE host_tokens SET used_ms = ?3
         WHERE digest = ?1 AND name = ?2 AND used_ms IS NULL AND expires_ms > ?3",
        params![digest, name, now_ms],
    )?;
    Ok(changed == 1)
}

/// A known agent's session began: online, with the facts and address of its hello.
pub(super) fn connected(
    connection: &Connection,
    name: &str,
    facts: &AgentFacts,
    address: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.run(
        "UPDATE agents SET state = 'online', facts_json = ?2, address = ?3, last_seen_ms = ?4
         WHERE name = ?1 AND state != 'revoked'",
        params![name, facts_json(facts), address, now_ms],
    )?;
    Ok(())
}

pub(super) fn facts_changed(
    connection: &Connection,
    name: &str,
    facts: &AgentFacts,
) -> rusqlite::Result<()> {
    connection.run(
        "UPDATE agents SET facts_json = ?2 WHERE name = ?1",
        params![name, facts_json(facts)],
    )?;
    Ok(())
}

pub(super) fn disconnected(
    connection: &Connection,
    name: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection.run(
        "UPDATE agents SET state = 'offline', last_seen_ms = ?2 WHERE name = ?1 AND state = 'online'",
        params![name, now_ms],
    )?;
    Ok(())
}

/// Marks an agent revoked; false when there is no such agent.
pub(super) fn revoke(connection: &Connection, name: &str, now_ms: i64) -> rusqlite::Result<bool> {
    let changed = connection.run(
        "UPDATE agents SET state = 'revoked', revoked_at_ms = ?2 WHERE name = ?1",
        params![name, now_ms],
    )?;
    Ok(changed > 0)
}

/// At start: no connection survives a coordinator restart.
pub(super) fn all_offline(connection: &Connection) -> rusqlite::Result<()> {
    connection.run(
        "UPDATE agents SET state = 'offline' WHERE state = 'online'",
        [],
    )?;
    Ok(())
}

/// The `state` column, typed.
fn agent_state(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<AgentState> {
    let text: String = row.get(index)?;
    match text.as_str() {
        "online" => Ok(AgentState::Online),
        "offline" => Ok(AgentState::Offline),
        "revoked" => Ok(AgentState::Revoked),
        _ => Err(unknown_value(index, "agent state", &text)),
    }
}

fn facts_json(facts: &AgentFacts) -> String {
    serde_json::to_string(&FactsJson::from(facts)).expect("facts serialize")
}

/// The stored form of facts: JSON with named fields, so the database stays readable with `sqlite3`.
#[derive(serde::Serialize, serde::Deserialize)]
struct FactsJson {
    name: String,
    hostname: String,
    os: String,
    distro_id: String,
    distro_version: String,
    kernel: String,
    arch: String,
    cpus: u32,
    memory_bytes: u64,
    agent_version: String,
    labels: std::collections::BTreeMap<String, String>,
    platform: String,
}

impl From<&AgentFacts> for FactsJson {
    fn from(facts: &AgentFacts) -> Self {
        FactsJson {
            name: facts.name.clone(),
            hostname: facts.hostname.clone(),
            os: facts.os.clone(),
            distro_id: facts.distro_id.clone(),
            distro_version: facts.distro_version.clone(),
            kernel: facts.kernel.clone(),
            arch: facts.arch.clone(),
            cpus: facts.cpus,
            memory_bytes: facts.memory_bytes,
            agent_version: facts.agent_version.clone(),
            labels: facts.labels.clone(),
            platform: facts.platform.as_str().to_string(),
        }
    }
}

impl FactsJson {
    fn into_facts(self) -> Result<AgentFacts, String> {
        Ok(AgentFacts {
            platform: self
                .platform
                .parse()
                .map_err(|err: polarizer_shared::facts::UnknownPlatformKind| err.to_string())?,
            name: self.name,
            hostname: self.hostname,
            os: self.os,
            distro_id: self.distro_id,
            distro_version: self.distro_version,
            kernel: self.kernel,
            arch: self.arch,
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            agent_version: self.agent_version,
            labels: self.labels,
        })
    }
}

impl Reader {
    /// A per-host enrollment token by its digest.
    pub fn host_token(&self, digest: &str) -> Result<Option<HostToken>, StoreError> {
        self.connection
            .row(
                "SELECT name, expires_ms, used_ms IS NOT NULL FROM host_tokens WHERE digest = ?1",
                [digest],
                |row| {
                    Ok(HostToken {
                        name: row.get(0)?,
                        expires_ms: row.get(1)?,
                        used: row.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    pub fn agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError> {
        self.connection
            .row(
                "SELECT credential_sha256, state, approved FROM agents WHERE name = ?1",
                [name],
                |row| {
                    Ok(StoredAgent {
                        credential_sha256: row.get(0)?,
                        revoked: agent_state(row, 1)? == AgentState::Revoked,
                        pending: !row.get::<_, bool>(2)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    /// Every agent, by name. `gossip_live` is left false: the caller knows gossip, the store does not.
    /// How many agents are revoked, pending approval, and neither (online or offline), without reading
    /// their facts: `/metrics` with thousands of agents.
    pub fn agent_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.connection
            .row(
                "SELECT COALESCE(SUM(state = 'revoked'), 0),
                        COALESCE(SUM(state != 'revoked' AND NOT approved), 0),
                        COALESCE(SUM(state != 'revoked' AND approved), 0)
                 FROM agents",
                [],
                |row| {
                    let count = |index| row.get::<_, i64>(index).map(|count| count.max(0) as u64);
                    Ok((count(0)?, count(1)?, count(2)?))
                },
            )
            .map_err(sqlite_error(&self.path))
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents_page("", None)
    }

    /// The agents named after `after` in name order, at most `limit` of them.
    pub fn agents_page(
        &self,
        after: &str,
        limit: Option<u32>,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT name, state, facts_json, address, first_seen_ms, last_seen_ms, approved FROM agents WHERE name > ?1 ORDER BY name LIMIT ?2")
            .map_err(sqlite_error(&self.path))?;
        let limit = limit.map_or(-1, i64::from);
        let rows = statement
            .query_map(rusqlite::params![after, limit], |row| {
                let state = match agent_state(row, 1)? {
                    AgentState::Revoked => AgentState::Revoked,
                    _ if !row.get::<_, bool>(6)? => AgentState::Pending,
                    state => state,
                };
                Ok((
                    row.get::<_, String>(0)?,
                    state,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .map_err(sqlite_error(&self.path))?;
        let mut records = Vec::new();
        for row in rows {
            let (name, state, facts, address, first_seen_ms, last_seen_ms) =
                row.map_err(sqlite_error(&self.path))?;
            let facts = serde_json::from_str::<FactsJson>(&facts)
                .map_err(|err| err.to_string())
                .and_then(FactsJson::into_facts)
                .map_err(|reason| StoreError::CorruptFacts {
                    name: name.clone(),
                    reason,
                })?;
            records.push(AgentRecord {
                name,
                state,
                facts,
                first_seen_ms,
                last_seen_ms,
                address,
                gossip_live: false,
            });
        }
        Ok(records)
    }
}
