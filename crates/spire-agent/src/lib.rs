//! The `spire-agent` library: everything the binary does, so tests can drive it in process.
//!
//! Start order: config -> catalog -> node attestation (or the stored SVID) -> manager (sync
//! loop and cache) -> Workload API listener (see ARCHITECTURE.md).

pub mod manager;
pub mod plugins;
pub mod workload;
