//! Pure decisions: which tests a change selects, how they split into suites, which agent may take a
//! suite, who may connect, how a run moves from queued to final, and what the scheduler does next.
//! Inputs and `now` come in as values, decisions go out as values.
//!
//! May import `shared` and plain-data crates only: no `std::fs`, `std::net`, tokio, rusqlite or clock
//! reads (`SystemTime::now`, `Instant::now`), and nothing from `store`, `daemon` or `cli`
//! (checked by `tests/layers.rs`).

pub mod admission;
pub mod analysis;
pub mod bus;
pub mod cluster;
pub mod github;
pub mod pages;
pub mod partition;
pub mod placement;
pub mod polarion;
pub mod pools;
pub mod reports;
pub mod run;
pub mod schedule;
pub mod selection;
pub mod source;
pub mod views;
