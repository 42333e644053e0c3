//! BundlePublisher plugins publish the trust domain's bundle somewhere others fetch it (a
//! bucket, a ConfigMap, a file). As upstream's `pubmanager`, the server calls every
//! configured publisher with the stored bundle when it starts, whenever the bundle changes,
//! and every 30 seconds regardless; a failure is logged and the next call tries again.
//!
//! Upstream learns of a change from a datastore wrapper; here the CA manager's change signal
//! publishes at once, and a poll of the stored bundle every [`BUNDLE_POLL_INTERVAL`] catches
//! changes made elsewhere (bundle API, other servers sharing the database).
//!
//! Built in is `k8s_configmap` (the bundle in a Kubernetes ConfigMap); upstream's other
//! built-ins (`aws_s3`, `gcp_cloudstorage`, `aws_rolesanywhere_trustanchor`) are not ported,
//! external (`plugin_cmd`) publishers are.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spire_core::TrustDomain;
use spire_proto::spire::api::types;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::BundlePublisherChoice;
use crate::datastore::DataStore;
pub use crate::plugins::notifier::BUNDLE_POLL_INTERVAL;

pub mod external;
pub mod k8s_configmap;

/// How often every publisher gets the bundle even when it did not change (upstream's
/// `refreshInterval`), so a target changed behind the server's back is repaired.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Why a publisher could not publish or start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bundlepublisher({name}): {message}")]
pub struct BundlePublisherError {
    /// The plugin's name.
    pub name: String,
    /// What failed.
    pub message: String,
}

/// A server BundlePublisher.
#[async_trait]
pub trait BundlePublisher: Send + Sync + std::fmt::Debug {
    /// The plugin's name in the config, for logs.
    fn name(&self) -> &str;

    /// Publishes `bundle`. Called again with the same bundle on every refresh, so it must be
    /// idempotent; an error is logged and retried on the next call.
    async fn publish_bundle(&self, bundle: &types::Bundle) -> Result<(), BundlePublisherError>;
}

/// The configured publishers, and the loop that feeds them.
#[derive(Debug, Clone, Default)]
pub struct BundlePublishers {
    publishers: Vec<Arc<dyn BundlePublisher>>,
}

impl BundlePublishers {
    /// Starts the publishers the catalog chose with the server's trust domain; a plugin
    /// that fails to start or to configure is an error naming it.
    pub async fn from_catalog(
        choices: &[BundlePublisherChoice],
        trust_domain: &TrustDomain,
        host_services: &spire_common::plugin_host::HostServices,
    ) -> Result<(Self, Vec<Arc<spire_common::plugin_host::LoadedPlugin>>), BundlePublisherError>
    {
        let mut publishers: Vec<Arc<dyn BundlePublisher>> = Vec::new();
        let mut loaded_plugins = Vec::new();
        for choice in choices {
            match choice {
                BundlePublisherChoice::External(plugin) => {
                    let loaded = spire_common::plugin_host::LoadedPlugin::load(
                        plugin,
                        external::SERVICE,
                        trust_domain.name(),
                        host_services,
                    )
                    .await
                    .map_err(|e| BundlePublisherError {
                        name: plugin.name.clone(),
                        message: e.to_string(),
                    })?;
                    let loaded = Arc::new(loaded);
                    loaded_plugins.push(loaded.clone());
                    publishers.push(Arc::new(external::ExternalBundlePublisher::new(loaded)));
                }
                BundlePublisherChoice::K8sConfigMap(config) => {
                    publishers.push(Arc::new(k8s_configmap::K8sConfigMap::new(config).await?));
                }
            }
        }
        Ok((Self { publishers }, loaded_plugins))
    }

    /// A set made of these publishers (tests and embedders).
    pub fn new(publishers: Vec<Arc<dyn BundlePublisher>>) -> Self {
        Self { publishers }
    }

    /// Whether no publisher is configured (then nothing runs).
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty()
    }

    /// Publishes at once, then on every change signalled by `ca_changes`, on every change
    /// of the stored bundle seen by a poll every `poll`, and every `refresh` regardless,
    /// until `cancel` fires.
    pub async fn run(
        self,
        datastore: Arc<dyn DataStore>,
        trust_domain: TrustDomain,
        mut ca_changes: watch::Receiver<u64>,
        poll: Duration,
        refresh: Duration,
        cancel: CancellationToken,
    ) {
        if self.is_empty() {
            return;
        }
        let mut last: Option<types::Bundle> = None;
        let mut next_refresh = tokio::time::Instant::now();
        let mut ca_open = true;
        loop {
            let now = tokio::time::Instant::now();
            let force = now >= next_refresh;
            if force {
                next_refresh = now + refresh;
            }
            match datastore.fetch_bundle(trust_domain.name()).await {
                Ok(Some(bundle)) => {
                    if force || last.as_ref() != Some(&bundle) {
                        self.publish(&bundle).await;
                        last = Some(bundle);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "Failed to publish bundle: failed to fetch bundle from datastore");
                }
            }
            let wait =
                poll.min(next_refresh.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = ca_changes.changed(), if ca_open => ca_open = changed.is_ok(),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Calls every publisher with `bundle` at once; failures are logged.
    pub async fn publish(&self, bundle: &types::Bundle) {
        let calls = self.publishers.iter().map(|p| async move {
            match p.publish_bundle(bundle).await {
                Ok(()) => tracing::debug!(bundle_publisher = p.name(), sequence_number = bundle.sequence_number, "Bundle published"),
                Err(e) => tracing::error!(bundle_publisher = p.name(), error = %e, "Failed to publish bundle"),
            }
        });
        crate::plugins::notifier::futures_join(calls).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::sql::{SqlConfig, SqlDataStore};
    use std::sync::Mutex;

    /// Records the sequence numbers it is given; fails the first call when told to.
    #[derive(Debug, Default)]
    struct Recorder {
        fail_first: bool,
        calls: Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl BundlePublisher for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }

        async fn publish_bundle(&self, bundle: &types::Bundle) -> Result<(), BundlePublisherError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(bundle.sequence_number);
            if self.fail_first && calls.len() == 1 {
                return Err(BundlePublisherError {
                    name: "recorder".into(),
                    message: "bucket unreachable".into(),
                });
            }
            Ok(())
        }
    }

    async fn datastore(name: &str) -> Arc<dyn DataStore> {
        let config = SqlConfig {
            database_type: "sqlite3".into(),
            connection_string: format!("file:pubmanager_{name}?mode=memory&cache=shared"),
            max_open_conns: None,
            disable_migration: false,
        };
        Arc::new(SqlDataStore::open(&config).await.unwrap())
    }

    fn authority(byte: u8) -> types::Bundle {
        types::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![types::X509Certificate {
                asn1: vec![byte; 8],
                tainted: false,
            }],
            ..types::Bundle::default()
        }
    }

    async fn wait_for_calls(recorder: &Recorder, count: usize) -> Vec<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let calls = recorder.calls.lock().unwrap().clone();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} calls: {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn publishes_at_start_on_every_change_and_after_a_failure_on_refresh() {
        let ds = datastore("run").await;
        let td = TrustDomain::new("example.org").unwrap();
        ds.append_bundle(authority(1)).await.unwrap();
        let recorder = Arc::new(Recorder {
            fail_first: true,
            ..Recorder::default()
        });
        let publishers = BundlePublishers::new(vec![recorder.clone()]);
        let (ca_tx, ca_rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publishers.run(
            ds.clone(),
            td,
            ca_rx,
            // Long poll: only the CA's signal explains a quick publish after a change.
            Duration::from_secs(3600),
            Duration::from_millis(700),
            cancel.clone(),
        ));
        // At start (this one fails), then again on the refresh.
        let calls = wait_for_calls(&recorder, 2).await;
        assert_eq!(calls[0], calls[1], "{calls:?}");
        let first = calls[0];

        ds.append_bundle(authority(2)).await.unwrap();
        ca_tx.send_modify(|n| *n += 1);
        let calls = wait_for_calls(&recorder, 3).await;
        assert!(
            calls[2] > first,
            "the changed bundle is published: {calls:?}"
        );
        // A signal without a change publishes nothing before the next refresh.
        ca_tx.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(recorder.calls.lock().unwrap().len(), 3);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_change_made_elsewhere_is_found_by_the_poll() {
        let ds = datastore("poll").await;
        let td = TrustDomain::new("example.org").unwrap();
        ds.append_bundle(authority(1)).await.unwrap();
        let recorder = Arc::new(Recorder::default());
        let publishers = BundlePublishers::new(vec![recorder.clone()]);
        let (_ca_tx, ca_rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publishers.run(
            ds.clone(),
            td,
            ca_rx,
            Duration::from_millis(50),
            Duration::from_secs(3600),
            cancel.clone(),
        ));
        wait_for_calls(&recorder, 1).await;
        ds.append_bundle(authority(3)).await.unwrap();
        let calls = wait_for_calls(&recorder, 2).await;
        assert!(calls[1] > calls[0], "{calls:?}");
        cancel.cancel();
        task.await.unwrap();
    }
}
