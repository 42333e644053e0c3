//! Built-in plugins, one folder per plugin type, chosen by name in the `plugins { }` block.

pub mod keymanager;
pub mod nodeattestor;
pub mod notifier;
pub mod upstreamauthority;
