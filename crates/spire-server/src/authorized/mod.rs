//! The authorized-entry index: every entry and agent in memory, kept fresh from the
//! datastore's change events, answering "which entries may this agent obtain" without SQL.
//!
//! INTERFACE (owned by the index helper; the API layer calls exactly these).

use std::sync::Arc;

use crate::datastore::{AttestedNode, RegistrationEntry};

/// A read-only snapshot answer for one agent.
pub type AuthorizedEntries = Vec<Arc<RegistrationEntry>>;

/// The in-memory index.
pub struct AuthorizedIndex {
    _private: (),
}

impl AuthorizedIndex {
    /// Entries the agent may obtain: those parented by the agent, by node-alias entries whose
    /// selectors the agent's node selectors satisfy, and recursively their descendants.
    pub fn authorized_entries(&self, _agent_id: &str) -> AuthorizedEntries {
        Vec::new()
    }

    /// The cached agent record (serials, ban state, selectors) used to authorize agent calls.
    pub fn agent(&self, _agent_id: &str) -> Option<Arc<AttestedNode>> {
        None
    }

    /// The cached entry with this ID.
    pub fn entry(&self, _entry_id: &str) -> Option<Arc<RegistrationEntry>> {
        None
    }

    /// Applies pending datastore events now, so a write is visible to the next read.
    pub async fn refresh(&self) -> Result<(), crate::datastore::DataStoreError> {
        Ok(())
    }
}
