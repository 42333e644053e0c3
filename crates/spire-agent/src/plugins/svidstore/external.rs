//! An external SVIDStore (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.agent.svidstore.v1.SVIDStore`, given the SVID as upstream's facade builds
//! the request (PKCS#8 key, DER chain and bundle, federated bundles as concatenated DER).

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_proto::spire::plugin::agent::svidstore::v1 as pb;

use super::{PutX509Svid, SvidStore, SvidStoreError};

/// The gRPC service an SVIDStore plugin implements.
pub const SERVICE: &str = "spire.plugin.agent.svidstore.v1.SVIDStore";

/// A loaded external SVIDStore.
pub struct ExternalSvidStore {
    plugin: Arc<LoadedPlugin>,
}

impl ExternalSvidStore {
    /// Wraps a plugin loaded with [`SERVICE`].
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self { plugin }
    }

    fn client(&self) -> pb::svid_store_client::SvidStoreClient<tonic::transport::Channel> {
        pb::svid_store_client::SvidStoreClient::new(self.plugin.channel())
    }

    /// Upstream's facade wording: `svidstore(<name>): <message>`, saying when the plugin
    /// process has died.
    async fn error(&self, status: tonic::Status) -> SvidStoreError {
        let message = format!(
            "svidstore({}): {}",
            self.plugin.name(),
            self.plugin.call_failure(&status).await
        );
        if status.code() == tonic::Code::InvalidArgument {
            SvidStoreError::InvalidArgument(message)
        } else {
            SvidStoreError::Failed(message)
        }
    }
}

#[async_trait]
impl SvidStore for ExternalSvidStore {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    async fn put_x509_svid(&self, svid: PutX509Svid) -> Result<(), SvidStoreError> {
        let request = pb::PutX509svidRequest {
            svid: Some(pb::X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                cert_chain: svid.cert_chain,
                private_key: svid.key.pkcs8_der().to_vec(),
                bundle: svid.bundle,
                expires_at: svid.expires_at,
            }),
            metadata: svid.metadata,
            federated_bundles: svid
                .federated_bundles
                .into_iter()
                .map(|(td, certs)| (td, certs.concat()))
                .collect(),
        };
        match self.client().put_x509svid(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status).await),
        }
    }

    async fn delete_x509_svid(&self, metadata: &[String]) -> Result<(), SvidStoreError> {
        let request = pb::DeleteX509svidRequest {
            metadata: metadata.to_vec(),
        };
        match self.client().delete_x509svid(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status).await),
        }
    }
}
