//! Server Notifier plugins: they hear when the trust domain's own bundle is loaded at start
//! and whenever it changes afterwards, and push it somewhere (a Kubernetes ConfigMap, a
//! bucket, ...). One trait here, one file per implementation, chosen by name in `catalog/`.
//!
//! The events are upstream's (`pkg/server/ca/manager`): *bundle loaded* once the CA is ready
//! at start, with advice semantics (a notifier that fails it stops the server, because the
//! operator asked for the bundle to be published and it was not), and *bundle updated* on
//! every later change, where a failure is only logged. [`Notifiers::watch_bundle`] decides
//! when the bundle changed: at once when our CA manager says it touched the bundle, and by
//! polling the stored bundle, so changes made through the bundle API or by another server
//! sharing the database are published too (upstream misses those).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::types;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::NotifierChoice;
use crate::datastore::DataStore;

pub mod external;
pub mod k8sbundle;

/// How often the stored bundle is compared with the last one notified, to catch changes
/// nobody told us about (bundle API writes, other servers on the same database).
pub const BUNDLE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long the bundle-loaded event may take before the start is given up.
const LOADED_TIMEOUT: Duration = Duration::from_secs(120);

/// A notifier's failure to handle an event, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// The plugin could not be set up from its configuration.
    #[error("notifier({name}): {message}")]
    Config {
        /// The plugin's name.
        name: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The plugin could not publish the bundle.
    #[error("notifier({name}): {message}")]
    Publish {
        /// The plugin's name.
        name: &'static str,
        /// What failed, naming the object.
        message: String,
    },
}

/// A server Notifier.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// The plugin's name in the config (`k8sbundle`), for logs.
    fn name(&self) -> &'static str;

    /// The plugin's background work (watches, retries) until `cancel` fires. The server
    /// spawns this before sending any event; plugins without background work keep the
    /// default.
    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        cancel.cancelled().await;
    }

    /// The bundle as the server starts with it. An error stops the server (upstream's
    /// `NotifyAndAdviseBundleLoaded`), so only fail when publishing really failed.
    async fn notify_and_advise_bundle_loaded(
        &self,
        bundle: &types::Bundle,
    ) -> Result<(), NotifierError>;

    /// The bundle changed. An error is logged; the plugin should keep retrying on its own.
    async fn notify_bundle_updated(&self, bundle: &types::Bundle) -> Result<(), NotifierError>;
}

/// The configured notifiers, and the event loop that feeds them.
#[derive(Debug, Clone, Default)]
pub struct Notifiers {
    notifiers: Vec<Arc<dyn Notifier>>,
}

impl Notifiers {
    /// Builds the notifiers the catalog chose (reading kubeconfig files and such), starting
    /// external ones with the server's trust domain.
    pub async fn from_catalog(
        choices: &[NotifierChoice],
        trust_domain: &TrustDomain,
        host_services: &spire_common::plugin_host::HostServices,
    ) -> Result<Self, NotifierError> {
        let mut notifiers: Vec<Arc<dyn Notifier>> = Vec::new();
        for choice in choices {
            match choice {
                NotifierChoice::External(plugin) => {
                    let loaded = spire_common::plugin_host::LoadedPlugin::load(
                        plugin,
                        external::SERVICE,
                        trust_domain.name(),
                        host_services,
                    )
                    .await
                    .map_err(|e| NotifierError::Config {
                        name: Box::leak(plugin.name.clone().into_boxed_str()),
                        message: e.to_string(),
                    })?;
                    notifiers.push(Arc::new(external::ExternalNotifier::new(Arc::new(loaded))));
                }
                NotifierChoice::K8sBundle(config) => {
                    notifiers.push(Arc::new(k8sbundle::K8sBundle::new(config).await?));
                }
            }
        }
        Ok(Self { notifiers })
    }

    /// A set made of these notifiers (tests and embedders).
    pub fn new(notifiers: Vec<Arc<dyn Notifier>>) -> Self {
        Self { notifiers }
    }

    /// Whether no notifier is configured (then the server sends no events at all).
    pub fn is_empty(&self) -> bool {
        self.notifiers.is_empty()
    }

    /// Spawns every notifier's background work into `tasks`, stopped by `cancel`.
    pub fn spawn(&self, tasks: &mut JoinSet<()>, cancel: &CancellationToken) {
        for notifier in &self.notifiers {
            tasks.spawn(notifier.clone().run(cancel.clone()));
        }
    }

    /// Sends the bundle-loaded event with the stored bundle of `trust_domain` to every
    /// notifier at once and returns that bundle; any failure is an error naming the
    /// notifiers that failed, for the caller to stop the start with.
    pub async fn bundle_loaded(
        &self,
        datastore: &dyn DataStore,
        trust_domain: &TrustDomain,
    ) -> Result<types::Bundle, String> {
        let bundle = fetch_required_bundle(datastore, trust_domain).await?;
        let results = futures_join(self.notifiers.iter().map(|n| {
            let bundle = &bundle;
            async move {
                let result = tokio::time::timeout(
                    LOADED_TIMEOUT,
                    n.notify_and_advise_bundle_loaded(bundle),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(NotifierError::Publish {
                        name: n.name(),
                        message: format!("no answer within {LOADED_TIMEOUT:?}"),
                    })
                });
                match &result {
                    Ok(()) => {
                        tracing::debug!(notifier = n.name(), event = "bundle loaded", "Notifier handled event");
                    }
                    Err(e) => {
                        tracing::error!(notifier = n.name(), event = "bundle loaded", error = %e, "Notifier failed to handle event");
                    }
                }
                result
            }
        }))
        .await;
        let errors: Vec<String> = results
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(bundle)
        } else {
            Err(format!(
                "one or more notifiers returned an error: {}",
                errors.join("; ")
            ))
        }
    }

    /// Sends bundle-updated events until `cancel` fires: whenever `ca_changes` changes or
    /// `poll` passes, the stored bundle is read and, when it differs from the last one sent
    /// (starting with `loaded`), sent to every notifier. Failures are logged.
    pub async fn watch_bundle(
        self,
        datastore: Arc<dyn DataStore>,
        trust_domain: TrustDomain,
        mut ca_changes: watch::Receiver<u64>,
        loaded: types::Bundle,
        poll: Duration,
        cancel: CancellationToken,
    ) {
        let mut last = loaded;
        let mut ca_open = true;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = ca_changes.changed(), if ca_open => {
                    ca_open = changed.is_ok();
                }
                () = tokio::time::sleep(poll) => {}
            }
            let bundle = match datastore.fetch_bundle(trust_domain.name()).await {
                Ok(Some(bundle)) => bundle,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "Unable to read the trust bundle for the notifiers; retrying");
                    continue;
                }
            };
            if bundle == last {
                continue;
            }
            self.bundle_updated(&bundle).await;
            last = bundle;
        }
    }

    /// Sends one bundle-updated event to every notifier at once; failures are logged as
    /// warnings (the notifiers retry on their own).
    pub async fn bundle_updated(&self, bundle: &types::Bundle) {
        futures_join(self.notifiers.iter().map(|n| async move {
            match n.notify_bundle_updated(bundle).await {
                Ok(()) => {
                    tracing::debug!(notifier = n.name(), event = "bundle updated", "Notifier handled event");
                }
                Err(e) => {
                    tracing::warn!(notifier = n.name(), event = "bundle updated", error = %e, "Notifier failed to handle event");
                }
            }
        }))
        .await;
    }
}

/// The stored bundle of `trust_domain`, which must exist once the CA is ready.
async fn fetch_required_bundle(
    datastore: &dyn DataStore,
    trust_domain: &TrustDomain,
) -> Result<types::Bundle, String> {
    match datastore.fetch_bundle(trust_domain.name()).await {
        Ok(Some(bundle)) => Ok(bundle),
        Ok(None) => Err(format!(
            "trust domain bundle for {:?} not found in the datastore",
            trust_domain.name()
        )),
        Err(e) => Err(format!("unable to fetch the trust domain bundle: {e}")),
    }
}

/// Runs the futures concurrently and returns their outputs in order.
pub(crate) async fn futures_join<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs = Vec::with_capacity(futures.len());
    // A handful of notifiers at most: polling them one after the other would serialize
    // their network calls, so they are driven together.
    let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        *result = Some(output);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.extend(results.into_iter().flatten());
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::sql::{SqlConfig, SqlDataStore};
    use std::sync::Mutex;

    /// Records the events it gets; fails the loaded event when told to.
    #[derive(Debug, Default)]
    struct Recorder {
        fail_loaded: bool,
        events: Mutex<Vec<(&'static str, usize)>>,
    }

    #[async_trait]
    impl Notifier for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }

        async fn notify_and_advise_bundle_loaded(
            &self,
            bundle: &types::Bundle,
        ) -> Result<(), NotifierError> {
            self.events
                .lock()
                .unwrap()
                .push(("loaded", bundle.x509_authorities.len()));
            if self.fail_loaded {
                return Err(NotifierError::Publish {
                    name: "recorder",
                    message: "ConfigMap spire/spire-bundle not found".into(),
                });
            }
            Ok(())
        }

        async fn notify_bundle_updated(&self, bundle: &types::Bundle) -> Result<(), NotifierError> {
            self.events
                .lock()
                .unwrap()
                .push(("updated", bundle.x509_authorities.len()));
            Ok(())
        }
    }

    async fn datastore(name: &str) -> Arc<dyn DataStore> {
        let config = SqlConfig {
            database_type: "sqlite3".into(),
            connection_string: format!("file:notifier_{name}?mode=memory&cache=shared"),
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

    async fn wait_for(recorder: &Recorder, event: (&'static str, usize), within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if recorder.events.lock().unwrap().contains(&event) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{event:?} within {within:?}: {:?}",
                recorder.events.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_loaded_event_is_an_error_naming_the_notifier() {
        let ds = datastore("failed_loaded").await;
        let td = TrustDomain::new("example.org").unwrap();
        let recorder = Arc::new(Recorder {
            fail_loaded: true,
            ..Recorder::default()
        });
        let notifiers = Notifiers::new(vec![recorder.clone()]);
        // No bundle yet: nothing to announce, which is an error too.
        assert!(
            notifiers
                .bundle_loaded(ds.as_ref(), &td)
                .await
                .unwrap_err()
                .contains("not found")
        );
        ds.append_bundle(authority(1)).await.unwrap();
        let e = notifiers.bundle_loaded(ds.as_ref(), &td).await.unwrap_err();
        assert!(
            e.contains("notifier(recorder): ConfigMap spire/spire-bundle not found"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn changes_by_the_ca_and_by_anyone_else_on_the_database_are_sent_once() {
        let ds = datastore("watch").await;
        let td = TrustDomain::new("example.org").unwrap();
        ds.append_bundle(authority(1)).await.unwrap();
        let recorder = Arc::new(Recorder::default());
        let notifiers = Notifiers::new(vec![recorder.clone()]);
        let loaded = notifiers.bundle_loaded(ds.as_ref(), &td).await.unwrap();
        let (ca_tx, ca_rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(notifiers.clone().watch_bundle(
            ds.clone(),
            td.clone(),
            ca_rx,
            loaded,
            // Long: only the CA's signal can explain a quick event.
            Duration::from_secs(3600),
            cancel.clone(),
        ));

        // The CA says it changed the bundle: sent at once.
        ds.append_bundle(authority(2)).await.unwrap();
        ca_tx.send_modify(|n| *n += 1);
        wait_for(&recorder, ("updated", 2), Duration::from_secs(2)).await;
        // A signal without a change sends nothing.
        ca_tx.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *recorder.events.lock().unwrap(),
            [("loaded", 1), ("updated", 2)]
        );
        cancel.cancel();
        task.await.unwrap();

        // Someone else (bundle API, another server) changes it: found by the poll.
        let loaded = ds.fetch_bundle("example.org").await.unwrap().unwrap();
        let cancel = CancellationToken::new();
        let (_ca_tx, ca_rx) = watch::channel(0u64);
        let task = tokio::spawn(notifiers.clone().watch_bundle(
            ds.clone(),
            td,
            ca_rx,
            loaded,
            Duration::from_millis(50),
            cancel.clone(),
        ));
        ds.append_bundle(authority(3)).await.unwrap();
        wait_for(&recorder, ("updated", 3), Duration::from_secs(2)).await;
        cancel.cancel();
        task.await.unwrap();
    }
}
