//! The SVIDStore service (upstream's `pkg/agent/svid/store`): every few seconds it puts the
//! X509-SVIDs of `store_svid` entries into the SVIDStore their selectors name, puts them again
//! when they are renewed or their entry changes, and deletes them when the entry goes away (or
//! from the old store, when the entry's selectors changed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::manager::{Manager, StoreRecord};
use crate::plugins::svidstore::{
    PutX509Svid, SvidStoreError, SvidStores, store_name_with_metadata,
};

/// How often the records are looked at (upstream's `defaultInterval`).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What was last stored for an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handled {
    selectors: Vec<(String, String)>,
    leaf: Vec<u8>,
}

/// Puts and deletes stored SVIDs as the manager's entries change.
pub struct SvidStoreService {
    stores: SvidStores,
    handled: BTreeMap<String, Handled>,
}

impl SvidStoreService {
    /// A service over the configured `stores`, having stored nothing yet.
    pub fn new(stores: SvidStores) -> Self {
        Self {
            stores,
            handled: BTreeMap::new(),
        }
    }

    /// Processes the manager's records every [`INTERVAL`] until `cancel`.
    pub async fn run(mut self, manager: Arc<Manager>, cancel: CancellationToken) {
        loop {
            self.process(manager.svids_to_store()).await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }

    /// One pass: deletes what no longer has an entry, stores what is new or renewed.
    pub async fn process(&mut self, records: Vec<StoreRecord>) {
        let started = std::time::Instant::now();
        let gone: Vec<String> = self
            .handled
            .keys()
            .filter(|id| !records.iter().any(|r| &r.entry_id == *id))
            .cloned()
            .collect();
        for entry_id in gone {
            let Some(handled) = self.handled.get(&entry_id).cloned() else {
                continue;
            };
            if self.delete(&entry_id, &handled.selectors).await {
                self.handled.remove(&entry_id);
            }
        }
        for record in records {
            self.store(record).await;
        }
        spire_common::telemetry::agent::store_svid_updates(started);
    }

    /// Deletes the SVID stored for `entry_id` under `selectors`; true when it is gone (or
    /// the store calls the metadata malformed, as upstream counts it).
    async fn delete(&self, entry_id: &str, selectors: &[(String, String)]) -> bool {
        let (name, metadata) = match store_name_with_metadata(selectors) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(entry = entry_id, error = %e, "Invalid store name in selectors");
                return false;
            }
        };
        let Some(store) = self.stores.get(&name) else {
            tracing::error!(entry = entry_id, svid_store = %name, "Error deleting SVID: SVIDStore not found");
            return false;
        };
        match store.delete_x509_svid(&metadata).await {
            Ok(()) => {
                tracing::debug!(entry = entry_id, svid_store = %name, "SVID deleted successfully");
                true
            }
            Err(SvidStoreError::InvalidArgument(e)) => {
                tracing::debug!(entry = entry_id, svid_store = %name, error = %e, "Failed to delete SVID because of malformed selectors");
                true
            }
            Err(SvidStoreError::Failed(e)) => {
                tracing::error!(entry = entry_id, svid_store = %name, error = %e, "Failed to delete SVID");
                false
            }
        }
    }

    async fn store(&mut self, record: StoreRecord) {
        let Some(svid) = &record.svid else {
            return;
        };
        let leaf = svid.chain.first().cloned().unwrap_or_default();
        let previous = self.handled.get(&record.entry_id).cloned();
        if previous
            .as_ref()
            .is_some_and(|h| h.leaf == leaf && h.selectors == record.selectors)
        {
            return;
        }
        if let Some(previous) = &previous
            && previous.selectors != record.selectors
        {
            // The entry now names another store or other metadata: the old copy goes.
            self.delete(&record.entry_id, &previous.selectors).await;
        }
        let entry_id = record.entry_id.as_str();
        let spiffe_id = record.spiffe_id.to_string();
        let (name, metadata) = match store_name_with_metadata(&record.selectors) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(entry = entry_id, spiffe_id = %spiffe_id, error = %e, "Invalid store name in selectors");
                return;
            }
        };
        let Some(store) = self.stores.get(&name) else {
            tracing::error!(entry = entry_id, spiffe_id = %spiffe_id, svid_store = %name, "Error storing SVID: SVIDStore not found");
            return;
        };
        let own_td = record.spiffe_id.trust_domain().name().to_owned();
        let request = PutX509Svid {
            spiffe_id: record.spiffe_id.clone(),
            cert_chain: svid.chain.clone(),
            key: Arc::clone(&svid.key),
            bundle: record.bundle.x509_authorities.clone(),
            expires_at: svid.not_after,
            metadata,
            federated_bundles: record
                .federated_bundles
                .iter()
                .filter(|(td, _)| **td != own_td)
                .map(|(td, bundle)| (format!("spiffe://{td}"), bundle.x509_authorities.clone()))
                .collect(),
        };
        match store.put_x509_svid(request).await {
            Ok(()) => {
                tracing::debug!(entry = entry_id, spiffe_id = %spiffe_id, svid_store = %name, "SVID stored successfully");
                self.handled.insert(
                    record.entry_id.clone(),
                    Handled {
                        selectors: record.selectors.clone(),
                        leaf,
                    },
                );
            }
            Err(e) => {
                tracing::error!(entry = entry_id, spiffe_id = %spiffe_id, svid_store = %name, error = %e, "Failed to put X509-SVID");
            }
        }
    }
}
