//! Length-prefixed frames: a u32 big-endian length, then that many bytes of postcard.
//!
//! The decoder is sans-IO: feed it whatever bytes arrived, take out whole frames. It checks the length
//! before buffering the body, so an oversized or hostile length costs nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame either side accepts. Large enough for an inventory listing of thousands of agents,
/// small enough that a hostile length cannot make a peer allocate much.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes is over the limit of {limit} bytes")]
    Oversize { length: usize, limit: usize },
    #[error("undecodable frame of {length} bytes: {source}")]
    Decode {
        length: usize,
        #[source]
        source: postcard::Error,
    },
    #[error("message could not be encoded: {0}")]
    Encode(#[source] postcard::Error),
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Appends one frame holding `message` to `out`. Batching many frames into one buffer is how senders
/// reach their best rate.
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    let encoded = postcard::to_extend(message, std::mem::take(out)).map_err(FrameError::Encode)?;
    *out = encoded;
    let length = out.len() - start - LENGTH_PREFIX_BYTES;
    if length > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(FrameError::Oversize {
            length,
            limit: MAX_FRAME_BYTES,
        });
    }
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(message, &mut out)?;
    Ok(out)
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out as frames; compacted lazily to avoid shifting per frame.
    consumed: usize,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_BYTES)
    }

    /// Frames longer than `limit` from now on are refused from their length alone.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn with_limit(limit: usize) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            consumed: 0,
            limit,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.buffer.len() {
            self.buffer.clear();
            self.consumed = 0;
        } else if self.consumed > 64 * 1024 && self.consumed * 2 > self.buffer.len() {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The raw bytes of the next whole frame, if one has arrived.
    pub fn next_frame_bytes(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = &self.buffer[self.consumed..];
        let Some(prefix) = pending.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(prefix.try_into().expect("prefix is 4 bytes")) as usize;
        if length > self.limit {
            return Err(FrameError::Oversize {
                length,
                limit: self.limit,
            });
        }
        if pending.len() < LENGTH_PREFIX_BYTES + length {
            return Ok(None);
        }
        let start = self.consumed + LENGTH_PREFIX_BYTES;
        self.consumed = start + length;
        Ok(Some(&self.buffer[start..start + length]))
    }

    /// Decodes the next whole frame, if one has arrived.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(bytes) = self.next_frame_bytes()? else {
            return Ok(None);
        };
        decode(bytes).map(Some)
    }

    /// Call when the stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        let buffered = self.buffer.len() - self.consumed;
        if buffered == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered })
        }
    }
}

/// Decodes one frame body (without its length prefix).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(bytes).map_err(|source| FrameError::Decode {
        length: bytes.len(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{AgentFacts, PlatformKind};
    use crate::protocol::*;
    use proptest::prelude::*;

    fn arbitrary_facts() -> impl Strategy<Value = AgentFacts> {
        (
            "[a-z0-9-]{1,20}",
            any::<String>(),
            any::<u32>(),
            any::<u64>(),
            prop::collection::btree_map("[a-z]{1,8}", any::<String>(), 0..4),
            prop_oneof![
                Just(PlatformKind::Vm),
                Just(PlatformKind::Container),
                Just(PlatformKind::Baremetal)
            ],
        )
            .prop_map(
                |(name, text, cpus, memory_bytes, labels, platform)| AgentFacts {
                    name,
                    hostname: text.clone(),
                    os: "linux".into(),
                    distro_id: text.clone(),
                    distro_version: text,
                    kernel: "6.1".into(),
                    arch: "x86_64".into(),
                    cpus,
                    memory_bytes,
                    agent_version: "0.1.0".into(),
                    labels,
                    platform,
                },
            )
    }

    fn arbitrary_client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (
                any::<u32>(),
                arbitrary_facts(),
                any::<String>(),
                any::<u64>()
            )
                .prop_map(|(version, facts, secret, incarnation)| {
                    ClientFrame::Hello(Hello {
                        protocol_version: version,
                        peer: Peer::Agent {
                            credential: AgentCredential::Issued { secret },
                            facts: Box::new(facts),
                            incarnation,
                        },
                    })
                }),
            any::<String>().prop_map(|token| ClientFrame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                peer: Peer::Operator { token },
            })),
            Just(ClientFrame::Agent(AgentMessage::Heartbeat)),
            arbitrary_facts()
                .prop_map(|facts| ClientFrame::Agent(AgentMessage::FactsChanged(Box::new(facts)))),
            Just(ClientFrame::Operator(OperatorRequest::ListAgents)),
            any::<String>()
                .prop_map(|name| ClientFrame::Operator(OperatorRequest::RevokeAgent { name })),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_whatever_the_chunking(
            frames in prop::collection::vec(arbitrary_client_frame(), 1..8),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for frame in &frames {
                encode_into(frame, &mut wire).unwrap();
            }
            let mut decoder = FrameDecoder::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame::<ClientFrame>().unwrap() {
                    decoded.push(frame);
                }
            }
            decoder.finish().unwrap();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut decoder = FrameDecoder::with_limit(1024);
            decoder.push(&bytes);
            // Any outcome but a panic is fine: a frame, an error, or waiting for more.
            for _ in 0..bytes.len() + 1 {
                match decoder.next_frame::<ClientFrame>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = decoder.finish();
            let _ = peek_hello_version(&bytes);
            let _ = decode::<ServerFrame>(&bytes);
        }
    }

    #[test]
    fn oversize_length_is_refused_before_buffering_the_body() {
        let mut decoder = FrameDecoder::with_limit(100);
        decoder.push(&1000u32.to_be_bytes());
        match decoder.next_frame::<ClientFrame>() {
            Err(FrameError::Oversize {
                length: 1000,
                limit: 100,
            }) => {}
            other => panic!("expected oversize, got {other:?}"),
        }
    }

    #[test]
    fn truncated_stream_is_reported() {
        let wire = encode(&ClientFrame::Agent(AgentMessage::Heartbeat)).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.push(&wire[..wire.len() - 1]);
        assert!(decoder.next_frame::<ClientFrame>().unwrap().is_none());
        assert!(matches!(
            decoder.finish(),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decoder.next_frame::<ClientFrame>(),
            Err(FrameError::Decode { length: 3, .. })
        ));
    }
}
