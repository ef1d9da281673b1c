//! The Polarizer coordinator: `polarizer serve` (the daemon) and the operator's client commands.
//!
//! Four layers, arrows one way (checked by `tests/layers.rs`):
//! - [`core`]: pure decisions (selection, partition, placement, admission, the run state machine,
//!   scheduling). Inputs and `now` in, decisions out: no IO, no clock, no tokio, no rusqlite.
//! - [`store`]: SQLite, one writer thread and readers; persists what `core` decided. Imports `core`.
//! - [`daemon`]: what `polarizer serve` runs: QUIC sessions, the scheduler loop, imports and triggers,
//!   live fan-out, HTTP. Imports `store` and `core`.
//! - [`cli`]: the operator's client. Imports `shared`'s protocol and `core`'s plain parsing; `daemon` only
//!   for the subcommands that start one (`serve`, `init`, `demo`).
//!
//! [`data_dir`] is the one thing daemon and client both read: where the data directory's files are.

pub mod cli;
pub mod core;
pub mod daemon;
pub mod data_dir;
pub mod store;
