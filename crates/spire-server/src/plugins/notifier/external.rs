//! An external Notifier (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.notifier.v1.Notifier`, told of the bundle at start
//! (`NotifyAndAdvise` with *bundle loaded*) and of every change (`Notify` with *bundle
//! updated*), as upstream's CA manager tells its notifiers.

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_proto::spire::api::types;
use spire_proto::spire::plugin::server::notifier::v1 as pb;

use super::{Notifier, NotifierError};
use crate::plugins::sdk_types::to_plugin_bundle as plugin_bundle;

/// The gRPC service a Notifier plugin implements.
pub const SERVICE: &str = "spire.plugin.server.notifier.v1.Notifier";

/// A loaded external Notifier.
pub struct ExternalNotifier {
    name: &'static str,
    plugin: Arc<LoadedPlugin>,
}

impl std::fmt::Debug for ExternalNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalNotifier")
            .field("name", &self.name)
            .finish()
    }
}

impl ExternalNotifier {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: errors carry a
    /// `&'static str`, and a server configures a handful of plugins at most.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin,
        }
    }

    fn client(&self) -> pb::notifier_client::NotifierClient<tonic::transport::Channel> {
        pb::notifier_client::NotifierClient::new(self.plugin.channel())
    }

    /// The plugin's error, saying when its process has died.
    async fn error(&self, status: tonic::Status) -> NotifierError {
        NotifierError::Publish {
            name: self.name,
            message: self.plugin.call_failure(&status).await,
        }
    }
}

#[async_trait]
impl Notifier for ExternalNotifier {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn notify_and_advise_bundle_loaded(
        &self,
        bundle: &types::Bundle,
    ) -> Result<(), NotifierError> {
        let request = pb::NotifyAndAdviseRequest {
            event: Some(pb::notify_and_advise_request::Event::BundleLoaded(
                pb::BundleLoaded {
                    bundle: Some(plugin_bundle(bundle)),
                },
            )),
        };
        match self.client().notify_and_advise(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status).await),
        }
    }

    async fn notify_bundle_updated(&self, bundle: &types::Bundle) -> Result<(), NotifierError> {
        let request = pb::NotifyRequest {
            event: Some(pb::notify_request::Event::BundleUpdated(
                pb::BundleUpdated {
                    bundle: Some(plugin_bundle(bundle)),
                },
            )),
        };
        match self.client().notify(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status).await),
        }
    }
}
