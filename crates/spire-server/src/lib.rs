//! `spire-server`: the SPIRE server library behind the `spire-server` binary.
//!
//! Start order: config -> catalog -> datastore -> CA manager -> authorized-entry index ->
//! listeners (see ARCHITECTURE.md).

pub mod api;
pub mod authorized;
pub mod ca;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod datastore;
pub mod endpoints;
pub mod federation;
pub mod hostservice;
pub mod node_prune;
pub use spire_common::logging;
pub mod plugins;
pub mod reload;
pub mod server;
