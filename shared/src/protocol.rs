//! The messages agents, operators and the coordinator exchange over QUIC.
//!
//! Encoding is postcard, which is not self-describing: the protocol is versioned in the hello, new enum
//! variants go at the end, and fields are never reordered. A client opens one bidirectional stream, sends
//! [`ClientFrame::Hello`] and reads one [`ServerFrame`]: `Welcome` or `Refused`. Then agents stream
//! [`AgentMessage`]s and operators send [`OperatorRequest`]s, each answered by one [`OperatorResponse`].
//! Every further stream an admitted agent opens asks for a run's tests (see [`crate::shipping`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::facts::{AgentFacts, PlatformKind};

/// Bumped whenever a message changes shape. Peers with another version are refused with
/// [`Refusal::VersionMismatch`] rather than misread.
pub const PROTOCOL_VERSION: u32 = 3;

/// QUIC application close codes, so a peer can tell why a connection ended without a frame.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const PROTOCOL_ERROR: u32 = 2;
    pub const REVOKED: u32 = 3;
    pub const SHUTTING_DOWN: u32 = 4;
    pub const REPLACED: u32 = 5;
}

/// ALPN protocol id: a coordinator refuses TLS from anything that is not a Polarizer client.
pub const ALPN: &[u8] = b"polarizer/1";
/// The DNS name in the coordinator's certificate. Agents reach the coordinator by an address learned from
/// gossip, so they verify this fixed name against the pinned CA instead of the address.
pub const COORDINATOR_SERVER_NAME: &str = "polarizer-coordinator";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Always variant 0 with the version first, in every protocol version: see [`peek_hello_version`].
    Hello(Hello),
    Agent(AgentMessage),
    Operator(OperatorRequest),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub peer: Peer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Peer {
    Agent {
        credential: AgentCredential,
        facts: Box<AgentFacts>,
        /// Random per agent process: a new value means the agent restarted, and whatever it was running
        /// is gone (its leases are revoked at once instead of waiting for a timeout).
        incarnation: u64,
    },
    Operator {
        token: String,
    },
}

/// How an agent proves who it is. A new agent generates its own secret, stores it, and only then
/// enrolls with the shared token and that secret; from then on the secret alone identifies it. Storing
/// before sending means a crash at any point leaves the agent holding the credential the coordinator has.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentCredential {
    Enroll { token: String, secret: String },
    Issued { secret: String },
}

impl fmt::Debug for AgentCredential {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        match self {
            AgentCredential::Enroll { .. } => formatter.write_str("Enroll(..)"),
            AgentCredential::Issued { .. } => formatter.write_str("Issued(..)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    Welcome(Welcome),
    Refused(Refusal),
    Operator(OperatorResponse),
    Agent(CoordinatorMessage),
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub coordinator_version: String,
    /// True when this hello enrolled the agent.
    pub enrolled: bool,
    /// How often the agent must send [`AgentMessage::Heartbeat`].
    pub heartbeat_interval_ms: u32,
    /// The highest record sequence number of this agent the coordinator has committed (0 for operators).
    pub records_committed: u64,
}

impl fmt::Debug for Welcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Welcome")
            .field("protocol_version", &self.protocol_version)
            .field("coordinator_version", &self.coordinator_version)
            .field("enrolled", &self.enrolled)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("records_committed", &self.records_committed)
            .finish()
    }
}

/// Why the coordinator refused a peer. Each is final for the credential presented: retrying with the
/// same one gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    VersionMismatch {
        coordinator: u32,
        peer: u32,
    },
    BadEnrollmentToken,
    BadOperatorToken,
    /// The credential is not one the coordinator issued (its store was reset, or the credential is forged).
    UnknownCredential {
        name: String,
    },
    Revoked {
        name: String,
    },
    /// Another agent holds this name; enrolling again would steal its identity.
    NameTaken {
        name: String,
    },
    InvalidHello {
        reason: String,
    },
    /// Enrolled, but the coordinator enrolls by approval (`--enroll approve`) and no operator has approved
    /// this agent yet. The agent keeps trying; it is admitted once `polarizer agents approve NAME` runs.
    Pending {
        name: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::VersionMismatch { coordinator, peer } => write!(
                formatter,
                "protocol version mismatch: coordinator speaks {coordinator}, this peer speaks {peer}"
            ),
            Refusal::BadEnrollmentToken => formatter.write_str("the enrollment token is wrong"),
            Refusal::BadOperatorToken => formatter.write_str("the operator token is wrong"),
            Refusal::UnknownCredential { name } => write!(
                formatter,
                "agent {name:?} presented a credential the coordinator did not issue"
            ),
            Refusal::Revoked { name } => write!(formatter, "agent {name:?} is revoked"),
            Refusal::NameTaken { name } => write!(
                formatter,
                "agent name {name:?} is already enrolled by another agent; revoke it first or use another name"
            ),
            Refusal::InvalidHello { reason } => write!(formatter, "invalid hello: {reason}"),
            Refusal::Pending { name } => write!(
                formatter,
                "agent {name:?} waits for an operator's approval (polarizer agents approve {name})"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Heartbeat,
    FactsChanged(Box<AgentFacts>),
    /// Sequenced records, in order; acknowledged by [`CoordinatorMessage::Ack`] once committed.
    Records(Vec<crate::run::Record>),
    /// The agent is stopping: it finishes (or hands back) the suite it holds and takes no new one. Sent
    /// before the records that end its suite, again on every session until it exits.
    Draining,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    HeartbeatAck,
    /// Run this suite. The agent holds the lease while its heartbeats arrive.
    Assign(Box<crate::run::Assignment>),
    /// Every record up to and including this sequence number is committed: drop it from the spool.
    Ack {
        up_to: u64,
    },
    /// Stop this suite attempt (run cancelled, past its deadline, or the lease was revoked).
    Cancel {
        suite: crate::run::SuiteRef,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OperatorRequest {
    ListAgents,
    RevokeAgent {
        name: String,
    },
    /// Import an fmf tree: a directory on the coordinator's host, or a git URL (cloned there).
    ImportTests {
        location: String,
        git_ref: String,
        context: Vec<(String, String)>,
    },
    ListTests(Box<crate::catalog::TestQuery>),
    ShowTest {
        id: String,
    },
    ListFeatures,
    Trigger(Box<crate::run::TriggerRequest>),
    ListRuns {
        limit: u32,
    },
    ShowRun {
        run: u64,
    },
    /// Answered by a `Run` snapshot, then `Update`s until the run finishes.
    WatchRun {
        run: u64,
        output: bool,
    },
    CancelRun {
        run: u64,
    },
    /// Answered by `Events` batches: the stored events, then (when following) new ones as they commit,
    /// and `EventsEnd` when not following.
    Tail(Box<crate::events::TailQuery>),
    /// A run's timeline: results and events in time order, as `Events` batches then `EventsEnd`.
    Replay {
        run: u64,
    },
    /// A new enrollment token, written to the data dir's `agent-token` and in effect at once; the old
    /// one is refused from then on. Answered by `EnrollmentTokenRotated`.
    RotateEnrollmentToken,
    /// A per-host enrollment token: it enrolls the agent `name` once, within `ttl_ms`. Answered by
    /// `EnrollmentTokenCreated`.
    CreateEnrollmentToken {
        name: String,
        ttl_ms: u64,
    },
    /// Admit an agent waiting as `pending` (under `--enroll approve`). Answered by `Approved`.
    ApproveAgent {
        name: String,
    },
    /// The pools and their platforms. Answered by `Platforms`.
    ListPlatforms,
    /// Destroy a pool's platform now (a suite it runs goes back to the queue). Answered by
    /// `PlatformDestroyed`.
    DestroyPlatform {
        name: String,
    },
    /// The newest `limit` triggers that arrived from outside (webhooks). Answered by `Triggers`.
    ListTriggers {
        limit: u32,
    },
    /// The tests a query selects as a Polarion TestCase importer file: answered by `Text` pieces, or,
    /// with `upload`, queued for upload and answered by `PolarionQueued`.
    PolarionTestCases {
        query: Box<crate::catalog::TestQuery>,
        dry_run: bool,
        upload: bool,
    },
    /// A run's results as one Polarion XUnit importer file. Answered by `Text` pieces.
    PolarionXunit {
        run: u64,
        dry_run: bool,
    },
    /// Queue a run's results for upload to Polarion. Answered by `PolarionQueued`.
    PolarionUpload {
        run: u64,
        dry_run: bool,
    },
    /// The newest `limit` Polarion imports. Answered by `PolarionImports`.
    PolarionJobs {
        limit: u32,
    },
    /// Failure clusters with failures in one run or since a time. Answered by `Failures`.
    ListFailures {
        run: Option<u64>,
        since_ms: Option<i64>,
    },
    /// One failure cluster, its newest failures and why they matched. Answered by `Failure`.
    ShowFailure {
        id: u64,
    },
    /// Label a cluster as a known issue, or withdraw its label (`None`). Answered by `Labelled`.
    LabelFailure {
        id: u64,
        label: Option<crate::analysis::FailureLabel>,
    },
    /// Tests that passed and failed on one commit with the same needs. Answered by `Flaky`.
    ListFlaky {
        since_ms: Option<i64>,
    },
    /// Per test and per host. Answered by `Stats`.
    Stats {
        since_ms: Option<i64>,
    },
    /// A one-time link that logs a browser in to the web view and leads it to `path` (`/runs/7`).
    /// Answered by `WebLogin`.
    WebLogin {
        path: String,
    },
    /// One page of the inventory, by name: the agents named after `after` (all from the start when
    /// empty), at most `limit`. Answered by `Agents`.
    ListAgentsPage {
        after: String,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OperatorResponse {
    Agents(Vec<AgentRecord>),
    Revoked {
        name: String,
        was_online: bool,
    },
    Error {
        message: String,
    },
    Imported {
        source: crate::catalog::Source,
        summary: crate::catalog::ImportSummary,
    },
    Tests(Vec<crate::catalog::TestRow>),
    Test {
        metadata: Box<crate::metadata::TestMetadata>,
        source: crate::catalog::Source,
        removed: bool,
        /// The Polarion work item id learnt for it; empty when none.
        polarion_id: String,
    },
    Features(Vec<crate::catalog::FeatureRow>),
    Triggered(crate::run::TriggerSummary),
    Runs(Vec<crate::run::RunRow>),
    Run(Box<crate::run::RunDetail>),
    Update(crate::run::RunUpdate),
    Cancelled {
        run: u64,
        state: crate::run::RunState,
    },
    Events(Vec<crate::events::EventRow>),
    /// This follower fell `missed` events behind the live stream (counted before its filters). It
    /// catches up from the store: the events that follow include every one it missed.
    Lagged {
        missed: u64,
    },
    EventsEnd,
    /// Where the new enrollment token is (the token itself never travels).
    EnrollmentTokenRotated {
        path: String,
    },
    /// The per-host token itself (the coordinator keeps only its digest), and when it expires.
    EnrollmentTokenCreated {
        name: String,
        token: String,
        expires_ms: i64,
    },
    Approved {
        name: String,
    },
    /// The coordinator is stopping: a streamed answer (`tail`, `runs watch`, `replay`) ends here,
    /// before its own end. The last frame; everything sent before it was delivered.
    ShuttingDown,
    Platforms {
        pools: Vec<crate::platforms::PoolRecord>,
        platforms: Vec<crate::platforms::PlatformRecord>,
    },
    PlatformDestroyed {
        name: String,
    },
    Triggers(Vec<crate::triggers::TriggerRecord>),
    /// A piece of a text too large for one frame; `last` ends it.
    Text {
        text: String,
        last: bool,
    },
    /// The imports made, waiting to be uploaded.
    PolarionQueued {
        imports: Vec<u64>,
    },
    PolarionImports(Vec<crate::polarion::ImportRecord>),
    Failures(Vec<crate::analysis::FailureCluster>),
    Failure(Box<crate::analysis::FailureDetail>),
    Labelled {
        id: u64,
        label: Option<crate::analysis::FailureLabel>,
    },
    Flaky(Vec<crate::analysis::FlakyTest>),
    Stats(Box<crate::analysis::Stats>),
    /// The login link (good once) and when it expires.
    WebLogin {
        url: String,
        expires_ms: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Online,
    Offline,
    Revoked,
    /// Enrolled under `--enroll approve`, waiting for `polarizer agents approve NAME`.
    Pending,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Offline => "offline",
            AgentState::Revoked => "revoked",
            AgentState::Pending => "pending",
        }
    }
}

/// One inventory row as the operator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub state: AgentState,
    pub facts: AgentFacts,
    /// Unix milliseconds.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The address the agent's current (or last) connection came from.
    pub address: String,
    /// Whether gossip currently sees the agent alive. A hint only, never trusted for identity.
    pub gossip_live: bool,
}

impl AgentRecord {
    pub fn platform(&self) -> PlatformKind {
        self.facts.platform
    }
}

/// A whole `ClientFrame::Agent(AgentMessage::Records(..))` frame (length prefix included) from records
/// already encoded one by one (each without a prefix), as the agent's spool keeps them: sending never
/// decodes or re-encodes a record. Byte for byte what [`crate::frame::encode`] makes of the same records.
pub fn records_frame(encoded_records: &[&[u8]]) -> Vec<u8> {
    let mut body = postcard::to_stdvec(&ClientFrame::Agent(AgentMessage::Records(Vec::new())))
        .expect("a unit-like frame encodes");
    // The empty vector's length (a single 0) is replaced by the real one.
    body.pop();
    body.extend(postcard::to_stdvec(&encoded_records.len()).expect("a length encodes"));
    for record in encoded_records {
        body.extend_from_slice(record);
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// A whole `ServerFrame::Operator(OperatorResponse::Events(..))` frame from borrowed events: a tail
/// follower sends what the coordinator published without copying it. The same bytes as encoding an owned
/// vector of them.
pub fn events_frame(events: &[&crate::events::EventRow]) -> Vec<u8> {
    let mut body =
        postcard::to_stdvec(&ServerFrame::Operator(OperatorResponse::Events(Vec::new())))
            .expect("an empty listing encodes");
    body.pop();
    body.extend(postcard::to_stdvec(&events.len()).expect("a length encodes"));
    for event in events {
        body = postcard::to_extend(*event, body).expect("an event encodes");
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// Reads the protocol version of a hello frame without decoding the rest, so a peer speaking another
/// version gets [`Refusal::VersionMismatch`] instead of a decode error. Returns `None` when the frame is
/// not a hello at all.
pub fn peek_hello_version(frame: &[u8]) -> Option<u32> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(frame).ok()?;
    if variant != 0 {
        return None;
    }
    let (version, _) = postcard::take_from_bytes::<u32>(rest).ok()?;
    Some(version)
}

/// The largest hello either side sends (facts with their labels fit many times over). The first frame
/// of a connection is read with this limit, before anything is known about the peer.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// Decodes a connection's first frame as a hello and as nothing else.
pub fn decode_hello(frame: &[u8]) -> Result<Hello, String> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(frame).map_err(|err| err.to_string())?;
    if variant != 0 {
        return Err("the first frame must be a hello".into());
    }
    match postcard::take_from_bytes::<Hello>(rest) {
        Ok((hello, [])) => Ok(hello),
        Ok((_, trailing)) => Err(format!("{} bytes after the hello", trailing.len())),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_frame_decodes_as_a_hello_or_not_at_all() {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer: Peer::Operator { token: "t".into() },
        };
        let bytes = postcard::to_stdvec(&ClientFrame::Hello(hello.clone())).unwrap();
        assert_eq!(decode_hello(&bytes), Ok(hello));
        let heartbeat = postcard::to_stdvec(&ClientFrame::Agent(AgentMessage::Heartbeat)).unwrap();
        assert_eq!(
            decode_hello(&heartbeat),
            Err("the first frame must be a hello".into())
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_hello(&trailing).is_err());
        assert!(decode_hello(&[]).is_err());
    }

    #[test]
    fn hello_version_can_be_read_without_decoding_the_rest() {
        let hello = ClientFrame::Hello(Hello {
            protocol_version: 77,
            peer: Peer::Operator { token: "t".into() },
        });
        let bytes = postcard::to_stdvec(&hello).unwrap();
        assert_eq!(peek_hello_version(&bytes), Some(77));
        let not_hello = postcard::to_stdvec(&ClientFrame::Agent(AgentMessage::Heartbeat)).unwrap();
        assert_eq!(peek_hello_version(&not_hello), None);
        assert_eq!(peek_hello_version(&[]), None);
    }

    #[test]
    fn records_frames_built_from_encoded_records_are_the_same_bytes() {
        use crate::run::{OutputStream, Record, RecordBody, SuiteRef};
        for count in [0usize, 1, 3, 200] {
            let records: Vec<Record> = (0..count)
                .map(|index| Record {
                    seq: index as u64 + 1,
                    at_ms: 1_700_000_000_000 + index as i64,
                    body: RecordBody::Output {
                        suite: SuiteRef {
                            run: 1,
                            suite: 2,
                            attempt: 1,
                        },
                        test: "/t".into(),
                        stream: OutputStream::Stdout,
                        line: format!("line {index}"),
                    },
                })
                .collect();
            let encoded: Vec<Vec<u8>> = records
                .iter()
                .map(|record| postcard::to_stdvec(record).unwrap())
                .collect();
            let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            let expected =
                crate::frame::encode(&ClientFrame::Agent(AgentMessage::Records(records))).unwrap();
            assert_eq!(records_frame(&slices), expected, "{count} records");
        }
    }

    #[test]
    fn events_frames_from_borrowed_events_are_the_same_bytes() {
        use crate::events::EventRow;
        let events: Vec<EventRow> = (0..3)
            .map(|index| EventRow {
                id: index,
                agent: "vm-1".into(),
                kind: "app".into(),
                run: (index > 0).then_some(7),
                summary: format!("event {index}"),
                data: "{}".into(),
                ..EventRow::default()
            })
            .collect();
        let borrowed: Vec<&EventRow> = events.iter().collect();
        let expected = crate::frame::encode(&ServerFrame::Operator(OperatorResponse::Events(
            events.clone(),
        )))
        .unwrap();
        assert_eq!(events_frame(&borrowed), expected);
        assert_eq!(
            events_frame(&[]),
            crate::frame::encode(&ServerFrame::Operator(OperatorResponse::Events(Vec::new())))
                .unwrap()
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let credential = AgentCredential::Issued {
            secret: "hunter2".into(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
        let welcome = Welcome {
            protocol_version: 1,
            coordinator_version: "0.1.0".into(),
            enrolled: true,
            heartbeat_interval_ms: 500,
            records_committed: 0,
        };
        assert!(format!("{welcome:?}").contains("enrolled: true"));
        let enroll = AgentCredential::Enroll {
            token: "t0ken".into(),
            secret: "hunter2".into(),
        };
        assert!(
            !format!("{enroll:?}").contains("hunter2") && !format!("{enroll:?}").contains("t0ken")
        );
    }
}
