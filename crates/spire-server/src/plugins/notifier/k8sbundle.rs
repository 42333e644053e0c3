//! The `k8sbundle` notifier: keeps the trust domain's X.509 authorities, as PEM, in a
//! Kubernetes ConfigMap (where agents bootstrap their trust from), and as `caBundle` in the
//! admission webhooks and APIServices labelled for it, in the local cluster and any number
//! of remote ones. Keys, defaults and validation are upstream's
//! (`doc/plugin_server_notifier_k8sbundle.md`).
//!
//! Each cluster has one worker that does every write, so a bundle update, a newly created
//! labelled object and a retry never race each other. A failed write (API server away,
//! ConfigMap missing, permission missing) is logged with the cluster and object, and
//! retried with a growing delay until it succeeds or a newer bundle replaces it; upstream
//! only logs it and waits for the next bundle change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, WatchParams};
use kube::core::{GroupVersionKind, WatchEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use spire_common::k8s::ApiServerClient;
use spire_core::config::de;
use spire_proto::spire::api::types;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{Notifier, NotifierError};
use crate::config::ConfigError;

/// The plugin's name in configs and logs.
pub const NAME: &str = "k8sbundle";

/// Upstream's default namespace of the ConfigMap.
pub const DEFAULT_NAMESPACE: &str = "spire";
/// Upstream's default ConfigMap name.
pub const DEFAULT_CONFIG_MAP: &str = "spire-bundle";
/// Upstream's default ConfigMap key.
pub const DEFAULT_CONFIG_MAP_KEY: &str = "bundle.crt";

/// First delay before a failed write is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_secs(1);
/// Longest delay between two tries of a failed write.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Read-modify-write rounds on resourceVersion conflicts (client-go's `DefaultRetry` steps).
const CONFLICT_ATTEMPTS: usize = 5;
/// How long one watch request stays open before it is renewed.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// `plugin_data` as written in `server.conf`: the local cluster's keys, plus `clusters`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    config_map: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    config_map_key: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    webhook_label: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    api_service_label: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    kube_config_file_path: Option<String>,
    #[serde(default, deserialize_with = "de::block_list")]
    clusters: Vec<ClusterData>,
}

/// One entry of `clusters`: the same keys as the top level.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterData {
    #[serde(default, deserialize_with = "de::opt_string")]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    config_map: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    config_map_key: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    webhook_label: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    api_service_label: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    kube_config_file_path: Option<String>,
}

impl ClusterData {
    /// Upstream's `hasRootCluster`: any key set to a non-empty value.
    fn is_set(&self) -> bool {
        [
            &self.namespace,
            &self.config_map,
            &self.config_map_key,
            &self.webhook_label,
            &self.api_service_label,
            &self.kube_config_file_path,
        ]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| !v.is_empty()))
    }
}

/// One cluster the bundle is published to, with upstream's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `namespace` of the ConfigMap (default `spire`).
    pub namespace: String,
    /// `config_map` (default `spire-bundle`); it must exist, the notifier only patches it.
    pub config_map: String,
    /// `config_map_key` (default `bundle.crt`).
    pub config_map_key: String,
    /// `webhook_label`: webhook configurations with this label set to `true` get `caBundle`.
    pub webhook_label: Option<String>,
    /// `api_service_label`: APIServices with this label set to `true` get `caBundle`.
    pub api_service_label: Option<String>,
    /// `kube_config_file_path`; `None` means the server's in-cluster service account.
    pub kube_config_file_path: Option<PathBuf>,
}

impl ClusterConfig {
    /// How logs and errors name the cluster: by its kubeconfig, or `in-cluster`.
    pub fn display_name(&self) -> String {
        match &self.kube_config_file_path {
            Some(path) => format!("kubeconfig {}", path.display()),
            None => "in-cluster".to_owned(),
        }
    }

    fn from_data(d: ClusterData) -> Self {
        let non_empty = |v: Option<String>| v.filter(|v| !v.is_empty());
        Self {
            namespace: non_empty(d.namespace).unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            config_map: non_empty(d.config_map).unwrap_or_else(|| DEFAULT_CONFIG_MAP.to_owned()),
            config_map_key: non_empty(d.config_map_key)
                .unwrap_or_else(|| DEFAULT_CONFIG_MAP_KEY.to_owned()),
            webhook_label: non_empty(d.webhook_label),
            api_service_label: non_empty(d.api_service_label),
            kube_config_file_path: non_empty(d.kube_config_file_path).map(PathBuf::from),
        }
    }
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sBundleConfig {
    /// The clusters, the top-level one first when it is configured.
    pub clusters: Vec<ClusterConfig>,
}

impl K8sBundleConfig {
    /// Validates the parsed `plugin_data` of `file` at `path` as upstream's `Configure`
    /// does: the top-level keys describe a cluster when any of them is set or when no
    /// `clusters` are given (so an empty block means the in-cluster defaults); every
    /// `clusters` entry needs its own `kube_config_file_path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let root = ClusterData {
            namespace: data.namespace,
            config_map: data.config_map,
            config_map_key: data.config_map_key,
            webhook_label: data.webhook_label,
            api_service_label: data.api_service_label,
            kube_config_file_path: data.kube_config_file_path,
        };
        let mut clusters = Vec::new();
        if root.is_set() || data.clusters.is_empty() {
            clusters.push(ClusterConfig::from_data(root));
        }
        for (i, cluster) in data.clusters.into_iter().enumerate() {
            if cluster
                .kube_config_file_path
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return Err(ConfigError::invalid(
                    file,
                    format!("{path}.clusters[{i}].kube_config_file_path"),
                    "cluster configuration is missing kube_config_file_path: every clusters \
                     entry names the kubeconfig of its cluster (the top-level keys describe the \
                     in-cluster one)",
                ));
            }
            clusters.push(ClusterConfig::from_data(cluster));
        }
        Ok(Self { clusters })
    }
}

/// The bundle's X.509 authorities as concatenated PEM `CERTIFICATE` blocks, byte for byte
/// what upstream writes (Go's `pem.Encode`: 64-character lines, `\n` endings).
pub fn bundle_pem(bundle: &types::Bundle) -> String {
    spire_core::pem::encode_certificates(bundle.x509_authorities.iter().map(|a| a.asn1.as_slice()))
}

/// The labelled kinds that carry `caBundle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MutatingWebhook,
    ValidatingWebhook,
    ApiService,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::MutatingWebhook => "MutatingWebhookConfiguration",
            Self::ValidatingWebhook => "ValidatingWebhookConfiguration",
            Self::ApiService => "APIService",
        }
    }

    fn api_resource(self) -> ApiResource {
        match self {
            Self::MutatingWebhook => ApiResource::erase::<MutatingWebhookConfiguration>(&()),
            Self::ValidatingWebhook => ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
            // Not in k8s-openapi: the aggregator's own type.
            Self::ApiService => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
                "apiservices",
            ),
        }
    }

    /// Whether `object` already carries `ca_bundle` (base64) everywhere it should.
    /// A webhook configuration without webhooks has nothing to update, as upstream.
    fn up_to_date(self, object: &DynamicObject, ca_bundle: &str) -> bool {
        match self {
            Self::ApiService => {
                object
                    .data
                    .pointer("/spec/caBundle")
                    .and_then(Value::as_str)
                    == Some(ca_bundle)
            }
            Self::MutatingWebhook | Self::ValidatingWebhook => object
                .data
                .get("webhooks")
                .and_then(Value::as_array)
                .is_none_or(|hooks| {
                    hooks.iter().all(|h| {
                        h.pointer("/clientConfig/caBundle").and_then(Value::as_str)
                            == Some(ca_bundle)
                    })
                }),
        }
    }

    /// The patch setting `ca_bundle`, pinned to the object's resourceVersion so a concurrent
    /// change (another server, an operator) is a conflict, read again, not overwritten.
    fn patch(self, object: &DynamicObject, ca_bundle: &str) -> Patch<Value> {
        let version = object.metadata.resource_version.clone();
        match self {
            Self::ApiService => Patch::Merge(json!({
                "metadata": {"resourceVersion": version},
                "spec": {"caBundle": ca_bundle},
            })),
            Self::MutatingWebhook | Self::ValidatingWebhook => {
                // Strategic merge: webhooks merge by name, so only caBundle changes.
                let hooks: Vec<Value> = object
                    .data
                    .get("webhooks")
                    .and_then(Value::as_array)
                    .map(|hooks| {
                        hooks
                            .iter()
                            .map(|h| {
                                json!({
                                    "name": h.get("name").cloned().unwrap_or(Value::Null),
                                    "clientConfig": {"caBundle": ca_bundle},
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Patch::Strategic(json!({
                    "metadata": {"resourceVersion": version},
                    "webhooks": hooks,
                }))
            }
        }
    }
}

/// A request to a cluster worker: publish `pem`, answer with the first try's outcome.
struct Request {
    pem: Arc<str>,
    /// Whether a failure is retried by the worker (bundle updated); a failed bundle-loaded
    /// event stops the server instead, so the caller alone reports it.
    retry: bool,
    reply: oneshot::Sender<Result<(), String>>,
}

/// One cluster: how to reach its worker, and the worker until `run` takes it.
struct ClusterHandle {
    name: String,
    requests: mpsc::Sender<Request>,
    worker: Mutex<Option<ClusterWorker>>,
}

/// The `k8sbundle` notifier.
pub struct K8sBundle {
    clusters: Vec<ClusterHandle>,
}

impl std::fmt::Debug for K8sBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sBundle")
            .field(
                "clusters",
                &self.clusters.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl K8sBundle {
    /// Sets up a client for every configured cluster; a kubeconfig that cannot be read, or
    /// no in-cluster service account when no kubeconfig is named, is an error naming it.
    pub async fn new(config: &K8sBundleConfig) -> Result<Self, NotifierError> {
        let mut clusters = Vec::new();
        for cluster in &config.clusters {
            let client = ApiServerClient::new(cluster.kube_config_file_path.as_deref())
                .kube_client()
                .await
                .map_err(|e| NotifierError::Config {
                    name: NAME,
                    message: format!(
                        "cluster {}: {e}; set kube_config_file_path to a readable kubeconfig, \
                         or leave it empty only when the server runs in a pod",
                        cluster.display_name()
                    ),
                })?;
            let (tx, rx) = mpsc::channel(8);
            clusters.push(ClusterHandle {
                name: cluster.display_name(),
                requests: tx,
                worker: Mutex::new(Some(ClusterWorker {
                    name: cluster.display_name(),
                    config: cluster.clone(),
                    client,
                    requests: rx,
                })),
            });
        }
        Ok(Self { clusters })
    }

    /// Hands `bundle` to every cluster's worker and waits for their first tries.
    async fn publish(&self, bundle: &types::Bundle, retry: bool) -> Result<(), NotifierError> {
        let pem: Arc<str> = Arc::from(bundle_pem(bundle));
        let mut replies = Vec::new();
        for cluster in &self.clusters {
            let (reply, answer) = oneshot::channel();
            let request = Request {
                pem: pem.clone(),
                retry,
                reply,
            };
            if cluster.requests.send(request).await.is_err() {
                replies.push((cluster, None));
            } else {
                replies.push((cluster, Some(answer)));
            }
        }
        let mut errors = Vec::new();
        for (cluster, answer) in replies {
            let outcome = match answer {
                Some(answer) => answer
                    .await
                    .unwrap_or_else(|_| Err("the cluster's worker stopped".to_owned())),
                None => Err("the cluster's worker is not running".to_owned()),
            };
            if let Err(e) = outcome {
                errors.push(format!("cluster {}: {e}", cluster.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NotifierError::Publish {
                name: NAME,
                message: errors.join("; "),
            })
        }
    }
}

#[async_trait]
impl Notifier for K8sBundle {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut workers = JoinSet::new();
        for cluster in &self.clusters {
            let worker = cluster
                .worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(worker) = worker {
                workers.spawn(worker.run(cancel.clone()));
            }
        }
        while workers.join_next().await.is_some() {}
    }

    async fn notify_and_advise_bundle_loaded(
        &self,
        bundle: &types::Bundle,
    ) -> Result<(), NotifierError> {
        self.publish(bundle, false).await
    }

    async fn notify_bundle_updated(&self, bundle: &types::Bundle) -> Result<(), NotifierError> {
        self.publish(bundle, true).await
    }
}

/// A labelled object a watch saw created or changed.
struct Seen {
    kind: Kind,
    name: String,
}

/// Does every write to one cluster.
struct ClusterWorker {
    name: String,
    config: ClusterConfig,
    client: kube::Client,
    requests: mpsc::Receiver<Request>,
}

impl ClusterWorker {
    /// The labelled kinds this cluster publishes to, with their label.
    fn labelled(&self) -> Vec<(Kind, String)> {
        let mut kinds = Vec::new();
        if let Some(label) = &self.config.webhook_label {
            kinds.push((Kind::MutatingWebhook, label.clone()));
            kinds.push((Kind::ValidatingWebhook, label.clone()));
        }
        if let Some(label) = &self.config.api_service_label {
            kinds.push((Kind::ApiService, label.clone()));
        }
        kinds
    }

    async fn run(mut self, cancel: CancellationToken) {
        let (seen_tx, mut seen_rx) = mpsc::channel::<Seen>(64);
        let mut watches = JoinSet::new();
        for (kind, label) in self.labelled() {
            watches.spawn(watch_kind(
                self.client.clone(),
                self.name.clone(),
                kind,
                format!("{label}=true"),
                seen_tx.clone(),
                cancel.clone(),
            ));
        }
        drop(seen_tx);

        // The bundle to publish, once the server sent one; `failing` while the last try
        // failed, with the delay before the next.
        let mut desired: Option<Arc<str>> = None;
        let mut delay = RETRY_START;
        let mut failing = false;
        let retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(retry);
        loop {
            // Whether the outcome covers everything (a full publish) or one object.
            let (full, outcome) = tokio::select! {
                () = cancel.cancelled() => break,
                request = self.requests.recv() => {
                    let Some(request) = request else { break };
                    let result = self.publish_all(&request.pem).await;
                    desired = Some(request.pem);
                    let _ = request.reply.send(result.clone());
                    if !request.retry && result.is_err() {
                        continue;
                    }
                    (true, result)
                }
                Some(seen) = seen_rx.recv() => {
                    let Some(pem) = desired.clone() else { continue };
                    (false, self.ensure_labelled(seen.kind, &seen.name, &pem).await)
                }
                () = &mut retry, if failing => {
                    let Some(pem) = desired.clone() else {
                        failing = false;
                        continue;
                    };
                    (true, self.publish_all(&pem).await)
                }
            };
            match outcome {
                // One object written says nothing about the others still failing.
                Ok(()) if !full => {}
                Ok(()) => {
                    if failing {
                        tracing::info!(notifier = NAME, cluster = %self.name, "Bundle published after retrying");
                    }
                    failing = false;
                    delay = RETRY_START;
                }
                Err(e) => {
                    tracing::warn!(
                        notifier = NAME,
                        cluster = %self.name,
                        error = %e,
                        retry_in = ?delay,
                        "Unable to publish the bundle; retrying"
                    );
                    retry.as_mut().reset(tokio::time::Instant::now() + delay);
                    delay = (delay * 2).min(RETRY_MAX);
                    failing = true;
                }
            }
        }
        watches.abort_all();
        while watches.join_next().await.is_some() {}
    }

    /// Writes `pem` to the ConfigMap and to every labelled object; every object is tried,
    /// and the failures are reported together.
    async fn publish_all(&self, pem: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.write_config_map(pem).await {
            errors.push(e);
        }
        for (kind, label) in self.labelled() {
            let api = self.api(kind);
            match api
                .list(&ListParams::default().labels(&format!("{label}=true")))
                .await
            {
                Ok(list) => {
                    for object in list.items {
                        let name = object.metadata.name.clone().unwrap_or_default();
                        if let Err(e) = self.ensure_labelled(kind, &name, pem).await {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(format!(
                    "unable to list {}s labelled {label}=true: {}",
                    kind.as_str(),
                    describe(&e)
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &kind.api_resource())
    }

    /// Sets the ConfigMap's key to `pem` (read, compare, patch at that resourceVersion).
    async fn write_config_map(&self, pem: &str) -> Result<(), String> {
        let (namespace, name, key) = (
            &self.config.namespace,
            &self.config.config_map,
            &self.config.config_map_key,
        );
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("ConfigMap {namespace}/{name}");
        for _ in 0..CONFLICT_ATTEMPTS {
            let current = match api.get_opt(name).await {
                Ok(Some(current)) => current,
                Ok(None) => {
                    return Err(format!(
                        "{what} not found: create it (the notifier only updates it, as \
                         upstream's); see config_map and namespace"
                    ));
                }
                Err(e) => return Err(format!("unable to get {what}: {}", describe(&e))),
            };
            if current
                .data
                .as_ref()
                .and_then(|d| d.get(key.as_str()))
                .is_some_and(|v| v == pem)
            {
                return Ok(());
            }
            let mut data = serde_json::Map::new();
            data.insert(key.clone(), Value::String(pem.to_owned()));
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "data": data,
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(notifier = NAME, cluster = %self.name, config_map = %format!("{namespace}/{name}"), key = %key, "Bundle written to the ConfigMap");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(format!("unable to patch {what}: {}", describe(&e))),
            }
        }
        Err(format!(
            "unable to patch {what}: it kept changing under us ({CONFLICT_ATTEMPTS} conflicts)"
        ))
    }

    /// Sets `caBundle` of the labelled object `kind`/`name` to `pem` when it differs; an
    /// object deleted meanwhile needs nothing.
    async fn ensure_labelled(&self, kind: Kind, name: &str, pem: &str) -> Result<(), String> {
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(pem);
        let api = self.api(kind);
        let what = format!("{} {name}", kind.as_str());
        for _ in 0..CONFLICT_ATTEMPTS {
            let object = match api.get_opt(name).await {
                Ok(Some(object)) => object,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("unable to get {what}: {}", describe(&e))),
            };
            if kind.up_to_date(&object, &ca_bundle) {
                return Ok(());
            }
            match api
                .patch(
                    name,
                    &PatchParams::default(),
                    &kind.patch(&object, &ca_bundle),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(notifier = NAME, cluster = %self.name, kind = kind.as_str(), name, "Bundle set as caBundle");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(format!("unable to patch {what}: {}", describe(&e))),
            }
        }
        Err(format!(
            "unable to patch {what}: it kept changing under us ({CONFLICT_ATTEMPTS} conflicts)"
        ))
    }
}

/// Lists, then watches, the objects of `kind` labelled `selector`, reporting each one
/// added or changed to the worker; lists again after a failure (with a growing delay) or
/// when the watch's resourceVersion is too old, as an informer does.
async fn watch_kind(
    client: kube::Client,
    cluster: String,
    kind: Kind,
    selector: String,
    seen: mpsc::Sender<Seen>,
    cancel: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &kind.api_resource());
    let mut delay = RETRY_START;
    let report = |object: &DynamicObject| Seen {
        kind,
        name: object.metadata.name.clone().unwrap_or_default(),
    };
    loop {
        let failure = async {
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| describe(&e))?;
            for object in &list.items {
                if seen.send(report(object)).await.is_err() {
                    return Ok(());
                }
            }
            let mut version = list.metadata.resource_version.unwrap_or_default();
            delay = RETRY_START;
            loop {
                let params = WatchParams::default()
                    .labels(&selector)
                    .timeout(WATCH_TIMEOUT_SECS);
                let mut events = Box::pin(
                    api.watch(&params, &version)
                        .await
                        .map_err(|e| describe(&e))?,
                );
                while let Some(event) = events.next().await {
                    match event.map_err(|e| describe(&e))? {
                        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                            if let Some(v) = &object.metadata.resource_version {
                                version.clone_from(v);
                            }
                            if seen.send(report(&object)).await.is_err() {
                                return Ok(());
                            }
                        }
                        WatchEvent::Deleted(object) => {
                            if let Some(v) = &object.metadata.resource_version {
                                version.clone_from(v);
                            }
                        }
                        WatchEvent::Bookmark(bookmark) => {
                            version = bookmark.metadata.resource_version;
                        }
                        // 410 Gone: the version is too old; list again.
                        WatchEvent::Error(status) => {
                            return Err(format!(
                                "watch ended: {} ({})",
                                status.message, status.code
                            ));
                        }
                    }
                }
            }
        };
        let result: Result<(), String> = tokio::select! {
            () = cancel.cancelled() => return,
            result = failure => result,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(notifier = NAME, cluster = %cluster, kind = kind.as_str(), selector = %selector, error = %e, retry_in = ?delay, "Watch of labelled objects failed; listing again");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// An API error in words an operator can act on.
fn describe(e: &kube::Error) -> String {
    spire_common::k8s::describe_api_error(
        e,
        "grant the server's identity get and patch on configmaps, and get, list, patch and \
         watch on the labelled kinds",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: Value) -> Result<K8sBundleConfig, String> {
        let data: Data = serde_json::from_value(data).map_err(|e| e.to_string())?;
        K8sBundleConfig::from_data(
            "server.conf",
            "plugins.Notifier.k8sbundle.plugin_data",
            data,
        )
        .map_err(|e| e.to_string())
    }

    fn defaults(kubeconfig: Option<&str>) -> ClusterConfig {
        ClusterConfig {
            namespace: "spire".into(),
            config_map: "spire-bundle".into(),
            config_map_key: "bundle.crt".into(),
            webhook_label: None,
            api_service_label: None,
            kube_config_file_path: kubeconfig.map(PathBuf::from),
        }
    }

    #[test]
    fn an_empty_block_is_the_in_cluster_config_map_with_upstreams_defaults() {
        assert_eq!(parse(json!({})).unwrap().clusters, [defaults(None)]);
        // Empty strings are unset, as Go's zero values.
        assert_eq!(
            parse(json!({"namespace": "", "kube_config_file_path": ""}))
                .unwrap()
                .clusters,
            [defaults(None)]
        );
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(json!({
            "namespace": "infra", "config_map": "agents", "config_map_key": "bootstrap.crt",
            "kube_config_file_path": "/k/config", "webhook_label": "spiffe.io/webhook",
            "api_service_label": "spiffe.io/api_service",
        }))
        .unwrap();
        assert_eq!(
            config.clusters,
            [ClusterConfig {
                namespace: "infra".into(),
                config_map: "agents".into(),
                config_map_key: "bootstrap.crt".into(),
                webhook_label: Some("spiffe.io/webhook".into()),
                api_service_label: Some("spiffe.io/api_service".into()),
                kube_config_file_path: Some("/k/config".into()),
            }]
        );
    }

    #[test]
    fn clusters_alone_leave_out_the_local_cluster_and_get_defaults() {
        let config = parse(json!({"clusters": [
            {"kube_config_file_path": "/c2"},
            {"kube_config_file_path": "/c3", "namespace": "other"},
        ]}))
        .unwrap();
        let mut c3 = defaults(Some("/c3"));
        c3.namespace = "other".into();
        assert_eq!(config.clusters, [defaults(Some("/c2")), c3]);
    }

    #[test]
    fn a_top_level_key_with_clusters_keeps_the_local_cluster_first() {
        let config = parse(json!({"namespace": "spire",
            "clusters": [{"kube_config_file_path": "/c2"}]}))
        .unwrap();
        assert_eq!(config.clusters, [defaults(None), defaults(Some("/c2"))]);
    }

    #[test]
    fn a_cluster_without_kubeconfig_is_refused_naming_the_key() {
        let e = parse(json!({"clusters": [{"kube_config_file_path": "/c2"}, {"namespace": "x"}]}))
            .unwrap_err();
        assert!(
            e.contains("plugins.Notifier.k8sbundle.plugin_data.clusters[1].kube_config_file_path"),
            "{e}"
        );
        assert!(e.contains("missing kube_config_file_path"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_naming_them() {
        let e = parse(json!({"kube_config_file": "/k"})).unwrap_err();
        assert!(e.contains("kube_config_file"), "{e}");
        let e = parse(json!({"clusters": [{"kube_config_file_path": "/k", "label": "x"}]}))
            .unwrap_err();
        assert!(e.contains("label"), "{e}");
    }

    #[test]
    fn pem_is_what_go_writes() {
        let der: Vec<u8> = (0u8..=100).collect();
        let bundle = types::Bundle {
            x509_authorities: vec![
                types::X509Certificate {
                    asn1: der.clone(),
                    tainted: false,
                },
                types::X509Certificate {
                    asn1: vec![1, 2, 3],
                    tainted: true,
                },
            ],
            ..types::Bundle::default()
        };
        let pem = bundle_pem(&bundle);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        assert_eq!(b64.len(), 136);
        assert_eq!(
            pem,
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n{}\n{}\n-----END CERTIFICATE-----\n\
                 -----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n",
                &b64[..64],
                &b64[64..128],
                &b64[128..]
            ),
            "64-character lines"
        );
        assert_eq!(bundle_pem(&types::Bundle::default()), "");
    }

    #[test]
    fn webhooks_and_api_services_compare_and_patch_ca_bundle() {
        let object = |data: Value| DynamicObject {
            types: None,
            metadata: kube::api::ObjectMeta {
                name: Some("x".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            data,
        };
        let hooks = object(json!({"webhooks": [
            {"name": "a", "clientConfig": {"caBundle": "Q0E="}},
            {"name": "b", "clientConfig": {}},
        ]}));
        assert!(!Kind::ValidatingWebhook.up_to_date(&hooks, "Q0E="));
        let Patch::Strategic(patch) = Kind::ValidatingWebhook.patch(&hooks, "Q0E=") else {
            panic!("webhooks take a strategic merge patch");
        };
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "42"}, "webhooks": [
                {"name": "a", "clientConfig": {"caBundle": "Q0E="}},
                {"name": "b", "clientConfig": {"caBundle": "Q0E="}},
            ]})
        );
        assert!(Kind::MutatingWebhook.up_to_date(&object(json!({})), "Q0E="));

        let service = object(json!({"spec": {"caBundle": "Q0E=", "service": {"name": "s"}}}));
        assert!(Kind::ApiService.up_to_date(&service, "Q0E="));
        assert!(!Kind::ApiService.up_to_date(&service, "Qk0="));
        let Patch::Merge(patch) = Kind::ApiService.patch(&service, "Qk0=") else {
            panic!("APIServices take a merge patch");
        };
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "42"}, "spec": {"caBundle": "Qk0="}})
        );
    }
}
