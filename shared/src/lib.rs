//! Polarizer's shared vocabulary: the wire protocol, its frame codec and the data both sides agree on.
//!
//! Plain data and codecs over bytes only: no sockets, no async runtime, no database.

pub mod analysis;
pub mod catalog;
pub mod events;
pub mod facts;
pub mod fmf;
pub mod frame;
pub mod ids;
pub mod junit;
pub mod lint;
pub mod membership;
pub mod metadata;
pub mod parallel;
pub mod plans;
pub mod platforms;
pub mod polarion;
pub mod protocol;
pub mod record_codec;
pub mod run;
pub mod shipping;
pub mod triggers;

pub use facts::{AgentFacts, PlatformKind};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME_BYTES};
pub use protocol::PROTOCOL_VERSION;
