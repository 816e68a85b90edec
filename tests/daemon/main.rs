//! agentd end to end: the real daemon binary on a temporary socket, with a temporary
//! configuration and local repository, driven by the generated Rust client and by agentctl
//! (and by Python grpcio in tests/daemon_python.rs).

#[path = "../daemon_support/mod.rs"]
mod support;

mod access;
mod maintenance;
mod operations;
mod systemd;
