//! `polarizer serve`: the data directory and config, QUIC sessions with agents and operators, the
//! scheduler loop that carries out `core`'s decisions, imports and triggers, live fan-out to `tail` and
//! `runs watch`, and HTTP (`/healthz`, `/metrics`).
//!
//! May import `store`, `core`, `data_dir`, `shared` and `transport`; never `cli`.

pub mod config;
pub mod http;
pub mod identity;
pub mod import;
pub mod local_agents;
pub mod scheduler;
pub mod serve;
pub mod server;
pub mod tail;
pub mod trigger;

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch: the `now` the daemon hands to `core` and `store`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
