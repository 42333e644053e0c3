//! The `spire-agent` library: everything the binary does, so tests can drive it in process.
//!
//! Start order: config -> catalog -> node attestation (or the stored SVID) -> manager (sync
//! loop and cache) -> Workload API listener (see ARCHITECTURE.md).

pub mod admin;
pub mod agent;
pub mod attestation;
pub mod cli;
pub mod client;
pub mod config;
pub mod health;
pub use spire_common::logging;
pub mod manager;
pub mod plugins;
pub mod reload;
pub mod rotation_strategy;
pub mod sds;
pub mod storage;
pub mod svid_store;
pub mod workload;
