//! The run state machine (to come).
