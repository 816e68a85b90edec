//! Maintenance tests: retention, prune (also killed at every step and beside running
//! writers), check and repair on damaged repositories, key slots, and the agentctl commands.

mod check_repair;
mod cli;
mod concurrent;
mod keys;
mod prune;
mod retention;
mod util;
