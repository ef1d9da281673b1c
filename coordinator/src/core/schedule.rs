//! Scheduling decisions (to come).
