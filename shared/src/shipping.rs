//! Shipping a run's tests to an agent: the coordinator, which fetched the run's commit to read its fmf tree,
//! sends that commit over the agent's own QUIC connection, so test platforms need no access to the git
//! server and no credentials for it.
//!
//! An agent opens a bidirectional stream of its own for each transfer (after its session's hello on the
//! first stream) and sends [`AgentShipFrame::Request`]: the suite it was assigned (the coordinator takes the
//! repository and commit from its store, never from the request), the format it can use, and the commits
//! it already has. The coordinator answers with an [`ShipOffer`] (or `Refused`, with a reason for the run):
//! the file's size and a digest per chunk. The agent keeps what it holds of that file from an earlier,
//! interrupted try, checks each chunk it holds against the offer, and asks for the rest with
//! [`AgentShipFrame::From`]. Chunks then follow in order, each checked on arrival: a chunk that does not
//! match its digest is refused and asked for again.

use serde::{Deserialize, Serialize};

use crate::ids::SuiteRef;

/// Bytes per chunk: a frame's worth of data, far under the frame limit.
pub const CHUNK_BYTES: u32 = 1024 * 1024;
/// Commits an agent may name as already held: enough for the nearby commits a thin bundle is built against.
pub const MAX_HAVES: usize = 32;
/// The largest request frame a coordinator reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What the agent can unpack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShipFormat {
    /// A git bundle of the commit and its history, thin against the commits the agent has: for agents
    /// with `git`, which keep a repository per test repository.
    Bundle,
    /// A tar of the tree at the commit (`git archive`): for agents without `git`.
    Tar,
}

impl ShipFormat {
    pub fn name(self) -> &'static str {
        match self {
            ShipFormat::Bundle => "bundle",
            ShipFormat::Tar => "tar",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShipRequest {
    pub suite: SuiteRef,
    pub format: ShipFormat,
    /// Full commit ids the agent holds for this repository, most recently used first.
    pub haves: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentShipFrame {
    Request(ShipRequest),
    /// Send the chunks from this byte offset (a multiple of the chunk size) on.
    From {
        offset: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShipOffer {
    /// Names the file: the SHA-256 of its chunk digests, in hex. Same file, same id, across reconnects and
    /// coordinator restarts; an agent resumes only a file of the same id.
    pub id: String,
    /// The commit the file holds; the agent checks it is the one it was assigned.
    pub commit: String,
    pub format: ShipFormat,
    pub size: u64,
    pub chunk_bytes: u32,
    /// SHA-256 of each chunk, in order.
    pub chunk_digests: Vec<[u8; 32]>,
    /// For a bundle: the commits it is thin against (the agent must have them).
    pub thin_against: Vec<String>,
}

impl ShipOffer {
    /// How many bytes chunk `index` holds.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * u64::from(self.chunk_bytes);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.chunk_bytes))
    }

    /// Whether the offer is self-consistent: an agent refuses one that is not.
    pub fn check(&self) -> Result<(), String> {
        if self.id.len() != 64 || !self.id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(format!("offer id {:?} is not a SHA-256", self.id));
        }
        if !(64 * 1024..=4 * 1024 * 1024).contains(&self.chunk_bytes) {
            return Err(format!("chunk size {} is out of range", self.chunk_bytes));
        }
        let chunks = self.size.div_ceil(u64::from(self.chunk_bytes));
        if chunks != self.chunk_digests.len() as u64 {
            return Err(format!(
                "{} chunk digests for {} bytes in chunks of {}",
                self.chunk_digests.len(),
                self.size,
                self.chunk_bytes
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorShipFrame {
    Offer(ShipOffer),
    /// The coordinator cannot ship this: the reason goes on the run (a bundle over the size limit, a
    /// suite not assigned to this agent, a commit it cannot fetch).
    Refused {
        reason: String,
    },
    Chunk {
        index: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// The ref a bundle names its commit by, on both sides.
pub fn bundle_ref(commit: &str) -> String {
    format!("refs/polarizer/ship/{commit}")
}

/// A full (40 or 64 hex digit) commit id: what a request may name as held, what a bundle holds.
pub fn is_full_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(size: u64, chunks: usize) -> ShipOffer {
        ShipOffer {
            id: "a".repeat(64),
            commit: "b".repeat(40),
            format: ShipFormat::Bundle,
            size,
            chunk_bytes: CHUNK_BYTES,
            chunk_digests: vec![[0; 32]; chunks],
            thin_against: Vec::new(),
        }
    }

    #[test]
    fn an_offer_must_have_a_digest_per_chunk_and_the_last_chunk_is_short() {
        let whole = u64::from(CHUNK_BYTES);
        assert!(offer(2 * whole + 5, 3).check().is_ok());
        assert_eq!(offer(2 * whole + 5, 3).chunk_len(2), 5);
        assert_eq!(offer(2 * whole + 5, 3).chunk_len(1), whole);
        assert!(offer(2 * whole + 5, 2).check().is_err());
        assert!(offer(0, 0).check().is_ok());
        let mut bad_id = offer(1, 1);
        bad_id.id = "../../etc".into();
        assert!(bad_id.check().is_err());
    }

    #[test]
    fn a_chunk_frame_of_a_full_chunk_stays_far_under_the_frame_limit() {
        let frame = CoordinatorShipFrame::Chunk {
            index: u32::MAX,
            bytes: vec![0xff; CHUNK_BYTES as usize],
        };
        let encoded = postcard::to_stdvec(&frame).unwrap();
        assert!(encoded.len() < CHUNK_BYTES as usize + 64);
        assert!(encoded.len() < crate::frame::MAX_FRAME_BYTES);
    }
}
