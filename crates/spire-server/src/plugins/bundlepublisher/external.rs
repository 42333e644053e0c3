//! An external BundlePublisher (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.bundlepublisher.v1.BundlePublisher`, given the bundle in
//! `PublishBundle` as upstream's `pubmanager` gives it.

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_proto::spire::api::types;
use spire_proto::spire::plugin::server::bundlepublisher::v1 as pb;

use super::{BundlePublisher, BundlePublisherError};
use crate::plugins::sdk_types::to_plugin_bundle;

/// The gRPC service a BundlePublisher plugin implements.
pub const SERVICE: &str = "spire.plugin.server.bundlepublisher.v1.BundlePublisher";

/// A loaded external BundlePublisher.
pub struct ExternalBundlePublisher {
    plugin: Arc<LoadedPlugin>,
}

impl std::fmt::Debug for ExternalBundlePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalBundlePublisher")
            .field("name", &self.plugin.name())
            .finish()
    }
}

impl ExternalBundlePublisher {
    /// Wraps a plugin loaded with [`SERVICE`].
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self { plugin }
    }
}

#[async_trait]
impl BundlePublisher for ExternalBundlePublisher {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    async fn publish_bundle(&self, bundle: &types::Bundle) -> Result<(), BundlePublisherError> {
        let mut client =
            pb::bundle_publisher_client::BundlePublisherClient::new(self.plugin.channel());
        client
            .publish_bundle(pb::PublishBundleRequest {
                bundle: Some(to_plugin_bundle(bundle)),
            })
            .await
            .map(|_| ())
            .map_err(|status| BundlePublisherError {
                name: self.plugin.name().to_owned(),
                message: status.message().to_owned(),
            })
    }
}
