//! Agent SVIDStore plugins: where the agent puts the X509-SVIDs of entries registered with
//! `store_svid` (`-storeSVID`), for workloads that cannot call the Workload API (upstream's
//! `pkg/agent/plugin/svidstore`). An entry names its store by the type of its selectors
//! (`<store name>:<key>:<value>`, all of one type); the selector values are the metadata the
//! store receives. External (`plugin_cmd`) stores and the built-in [`aws_secretsmanager`] are
//! available; the built-in `gcp_secretmanager` is refused by name in the configuration.

pub mod aws_secretsmanager;
pub mod external;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use spire_core::keys::PrivateKey;
use spire_core::spiffe_id::SpiffeId;

/// One X509-SVID to store, as upstream's `svidstore.X509SVID`.
#[derive(Clone)]
pub struct PutX509Svid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates (DER).
    pub cert_chain: Vec<Vec<u8>>,
    /// The SVID's private key.
    pub key: Arc<PrivateKey>,
    /// The X.509 authorities of the agent's trust domain (DER).
    pub bundle: Vec<Vec<u8>>,
    /// The leaf's expiry, Unix seconds.
    pub expires_at: i64,
    /// The entry's selector values (e.g. `name:web`), telling the store where to write.
    pub metadata: Vec<String>,
    /// X.509 authorities of the trust domains the entry federates with, by trust domain ID
    /// (`spiffe://domain`), as upstream keys them.
    pub federated_bundles: BTreeMap<String, Vec<Vec<u8>>>,
}

impl std::fmt::Debug for PutX509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutX509Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// Why a store refused or failed a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidStoreError {
    /// The metadata (selectors) is malformed for this store: a delete is then considered done,
    /// as upstream treats `InvalidArgument`.
    #[error("{0}")]
    InvalidArgument(String),
    /// Anything else: the call is retried on the next pass.
    #[error("{0}")]
    Failed(String),
}

/// A place the agent stores SVIDs in.
#[async_trait]
pub trait SvidStore: Send + Sync {
    /// The plugin name from the configuration: entries select the store by it.
    fn name(&self) -> &str;

    /// Stores (or replaces) the SVID described by `svid`.
    async fn put_x509_svid(&self, svid: PutX509Svid) -> Result<(), SvidStoreError>;

    /// Deletes the SVID stored with `metadata`.
    async fn delete_x509_svid(&self, metadata: &[String]) -> Result<(), SvidStoreError>;
}

/// The configured stores, by name.
#[derive(Clone, Default)]
pub struct SvidStores {
    by_name: BTreeMap<String, Arc<dyn SvidStore>>,
}

impl std::fmt::Debug for SvidStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl SvidStores {
    /// Adds `store` under its name.
    pub fn insert(&mut self, store: Arc<dyn SvidStore>) {
        self.by_name.insert(store.name().to_owned(), store);
    }

    /// The store named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn SvidStore>> {
        self.by_name.get(name).cloned()
    }

    /// Whether no store is configured (then no store service runs).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The store an entry names and the metadata it gets: every selector must have the same
/// type (the store's name); the values are the metadata, in the entry's order.
pub fn store_name_with_metadata(
    selectors: &[(String, String)],
) -> Result<(String, Vec<String>), String> {
    let Some((name, _)) = selectors.first() else {
        return Err("no selectors found".to_owned());
    };
    let mut metadata = Vec::with_capacity(selectors.len());
    for (kind, value) in selectors {
        if kind != name {
            return Err("selector contains multiple types".to_owned());
        }
        metadata.push(value.clone());
    }
    Ok((name.clone(), metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(kind: &str, value: &str) -> (String, String) {
        (kind.to_owned(), value.to_owned())
    }

    #[test]
    fn the_selector_type_names_the_store_and_the_values_are_the_metadata() {
        assert_eq!(
            store_name_with_metadata(&[sel("files", "name:web"), sel("files", "dir:a")]),
            Ok((
                "files".to_owned(),
                vec!["name:web".to_owned(), "dir:a".to_owned()]
            ))
        );
        assert_eq!(
            store_name_with_metadata(&[sel("files", "name:web"), sel("unix", "uid:0")]),
            Err("selector contains multiple types".to_owned())
        );
        assert_eq!(
            store_name_with_metadata(&[]),
            Err("no selectors found".to_owned())
        );
    }
}
