//! Identifiers both sides use to name the units of work, below every module that carries them on the wire.
//! Field order is the wire format: append, never reorder.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One attempt at one suite of one run: the unit a lease covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SuiteRef {
    pub run: u64,
    pub suite: u64,
    pub attempt: u32,
}

impl fmt::Display for SuiteRef {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "run {} suite {} attempt {}",
            self.run, self.suite, self.attempt
        )
    }
}
