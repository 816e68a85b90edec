//! hostagent: a node-level backup agent.
//!
//! The library holds the engine and the agent; the binaries `agentd` (the daemon) and
//! `agentctl` (the command line) are thin layers over it. See docs/ARCHITECTURE.md for the
//! code map and docs/FORMAT.md for the repository format.

pub mod api;
pub mod backup;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod fsmeta;
pub mod maintenance;
pub mod memory;
pub mod node_restore;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod service;
pub mod store;

pub use error::{Error, Kind, Result};

mod stack;
