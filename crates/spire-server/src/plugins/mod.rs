//! Built-in plugins, one folder per plugin type, chosen by name in the `plugins { }` block.

pub mod bundlepublisher;
pub mod credentialcomposer;
pub mod keymanager;
pub mod nodeattestor;
pub mod notifier;
pub mod sdk_types;
pub mod upstreamauthority;
