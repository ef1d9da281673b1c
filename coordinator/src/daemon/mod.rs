//! `polarizer serve`: the data directory and config, QUIC sessions with agents and operators, the
//! scheduler loop that carries out `core`'s decisions, imports and triggers, live fan-out to `tail` and
//! `runs watch`, shipping a run's tests to its agents, pools of platforms made on demand, GitHub (webhooks in, statuses
//! and check runs out), and HTTP (`/healthz`, `/metrics`, `/hooks/github`).
//!
//! The tasks share no catch-all state: each gets the parts it needs (`context::Context` bundles them
//! for the connection tasks, which need most): the store handle, the settings, the live sessions, the
//! fan-out to watchers and followers, the metrics and the scheduler's handle.
//!
//! May import `store`, `core`, `data_dir`, `shared` and `transport`; never `cli`.

mod agent_session;
pub mod analysis;
pub mod api;
pub mod bus;
pub mod clock;
pub mod config;
pub mod context;
pub mod fanout;
pub mod github;
pub mod host_tokens;
pub mod http;
pub mod http_tls;
pub mod identity;
pub mod import;
pub mod local_agents;
#[cfg(test)]
pub(crate) mod loopback;
mod operator;
pub mod polarion;
pub mod pools;
pub mod scheduler;
pub mod serve;
pub mod server;
pub mod sessions;
pub mod shipping;
pub mod tail;
pub mod transfers;
pub mod trigger;
pub mod web;
