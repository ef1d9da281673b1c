//! The Polarizer coordinator: `polarizer serve` (the daemon) and the operator's client commands.

pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod data_dir;
pub mod demo;
pub mod events;
pub mod examples;
pub mod http;
pub mod import;
pub mod inventory;
pub mod local_agents;
pub mod partition;
pub mod reports;
pub mod runs;
pub mod runs_cli;
pub mod scheduler;
pub mod selection;
pub mod serve;
pub mod server;
pub mod store;
pub mod tail;
pub mod tail_cli;
pub mod trigger;
