//! The Polarizer coordinator: `polarizer serve` (the daemon) and the operator's client commands.

pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod data_dir;
pub mod demo;
pub mod http;
pub mod import;
pub mod inventory;
pub mod partition;
pub mod selection;
pub mod serve;
pub mod server;
pub mod store;
