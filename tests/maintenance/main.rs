//! Maintenance tests: retention, prune (also killed at every step and beside running
//! writers, on a local store and on a real S3 server), check and repair on damaged
//! repositories, key slots, and the agentctl commands.

mod check_repair;
mod cli;
mod concurrent;
#[path = "../garage/mod.rs"]
mod garage;
mod keys;
mod prune;
mod retention;
mod util;
