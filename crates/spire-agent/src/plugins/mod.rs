//! Built-in agent plugins, one folder per plugin type.

pub mod keymanager;
pub mod nodeattestor;
pub mod svidstore;
pub mod workloadattestor;
