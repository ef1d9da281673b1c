//! End-to-end tests: real `polarizer` and `polarizer-agent` processes on loopback.

mod foundation;
mod operations;
