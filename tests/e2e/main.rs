//! End-to-end tests: real `polarizer` and `polarizer-agent` processes on loopback.

mod api;
mod bus;
mod catalog;
mod command_pools;
mod discovery;
mod disk;
mod events;
mod failures;
mod foundation;
mod github;
mod hostile_trees;
mod netns;
mod network;
mod operations;
mod plans;
mod podman;
mod polarion;
mod pools;
mod runs;
mod shipping;
mod tmt_trees;
mod web;
