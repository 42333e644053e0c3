//! Live configuration reload of a running server (beyond upstream): on SIGHUP and on
//! `spire-server config reload` (the `spire_rs.admin.config.v1.Config` service on the
//! private admin socket), the server reads its file again and applies what can change
//! without a restart:
//!
//! - `server.log_level`, `server.log_file` (when logs already go to a file);
//! - `server.default_x509_svid_ttl`, `server.default_jwt_svid_ttl` (for the next SVID);
//! - `server.ratelimit.attestation`, `server.ratelimit.signing`;
//! - `server.federation.federates_with` (relationships from the file);
//! - `plugins.NodeAttestor "<name>" plugin_data` of the attestors already running (e.g.
//!   k8s_psat `clusters`, x509pop `ca_bundle_path`);
//! - the `telemetry` block: sinks added, removed or moved (a new Prometheus port is bound
//!   before anything else changes), prefix, labels and filters.
//!
//! Every other changed key is reported by name as needing a restart and keeps its running
//! value. A file that cannot be read, parsed or validated changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use spire_common::reload::{
    AppliedChange, Reload, ReloadOutcome, RestartNeeded, changed_keys, key_matches,
};

use spire_common::telemetry::live::LiveTelemetry;

use crate::api::ApiContext;
use crate::catalog::{self, NodeAttestorChoice};
use crate::config::{self, Overrides, ResolvedServerConfig};
use crate::plugins::nodeattestor::NodeAttestors;

/// Keys applied live, as dotted patterns (`*` is one segment).
const LIVE_KEYS: &[&str] = &[
    "server.log_level",
    "server.log_file",
    "server.default_x509_svid_ttl",
    "server.default_jwt_svid_ttl",
    "server.ratelimit",
    "server.federation.federates_with",
    "plugins.NodeAttestor.*.plugin_data",
    "telemetry",
];

/// How the server was started: what a reload reads again.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// `-config`.
    pub path: PathBuf,
    /// `-expandEnv`.
    pub expand_env: bool,
    /// The other `run` flags; they keep winning over the file.
    pub overrides: Overrides,
}

/// What the last reload (or the start) put in effect.
struct Applied {
    document: Value,
    config: ResolvedServerConfig,
}

/// Reloads the configuration of a running server; one reload at a time.
pub struct Reloader {
    source: ReloadSource,
    /// The document the server started with: keys needing a restart are compared with it.
    started: Value,
    /// The node attestors the server started with; only their `plugin_data` may change.
    attestor_names: Vec<String>,
    /// The external (`plugin_cmd`) node attestors: a reload does not rebuild them.
    external_attestors: Vec<String>,
    ctx: Arc<ApiContext>,
    telemetry: Arc<LiveTelemetry>,
    applied: tokio::sync::Mutex<Applied>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn attestor_names(choices: &[NodeAttestorChoice]) -> Vec<String> {
    let mut names: Vec<String> = choices
        .iter()
        .map(|c| match c {
            NodeAttestorChoice::JoinToken => "join_token".to_owned(),
            NodeAttestorChoice::K8sPsat(_) => "k8s_psat".to_owned(),
            NodeAttestorChoice::X509Pop(_) => "x509pop".to_owned(),
            NodeAttestorChoice::SshPop(_) => "sshpop".to_owned(),
            NodeAttestorChoice::GcpIit(_) => "gcp_iit".to_owned(),
            NodeAttestorChoice::AzureMsi(_) => "azure_msi".to_owned(),
            NodeAttestorChoice::AzureImds(_) => "azure_imds".to_owned(),
            NodeAttestorChoice::AwsIid(_) => "aws_iid".to_owned(),
            NodeAttestorChoice::External(plugin) => plugin.name.clone(),
        })
        .collect();
    names.sort();
    names
}

/// A duration as operators write it (`1h`, `90s`).
fn show_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs > 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Reloader {
    /// A reloader for a server started from `source` with `config` and `catalog`, acting on
    /// the running services of `ctx` and its `telemetry`. Fails when the file cannot be read
    /// again as it was.
    pub fn new(
        source: ReloadSource,
        config: ResolvedServerConfig,
        catalog: &catalog::Catalog,
        ctx: Arc<ApiContext>,
        telemetry: Arc<LiveTelemetry>,
    ) -> anyhow::Result<Arc<Self>> {
        let document = spire_common::reload::read_document(&source.path, source.expand_env)
            .map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Self {
            source,
            started: document.clone(),
            attestor_names: attestor_names(&catalog.node_attestors),
            external_attestors: catalog
                .node_attestors
                .iter()
                .filter_map(|c| match c {
                    NodeAttestorChoice::External(plugin) => Some(plugin.name.clone()),
                    _ => None,
                })
                .collect(),
            ctx,
            telemetry,
            applied: tokio::sync::Mutex::new(Applied { document, config }),
        }))
    }

    /// Reads the file again and applies it; the error (the file's problem) changes nothing.
    pub async fn reload(&self) -> Result<ReloadOutcome, String> {
        let mut applied = self.applied.lock().await;
        let path = &self.source.path;
        let document = spire_common::reload::read_document(path, self.source.expand_env)?;
        let mut file =
            config::load_file(path, self.source.expand_env).map_err(|e| e.to_string())?;
        file.apply_overrides(&self.source.overrides);
        let config = file.resolve().map_err(|e| e.to_string())?;
        let catalog = catalog::from_config(&file).map_err(|e| e.to_string())?;
        let telemetry = crate::server::telemetry_config(&config).map_err(|e| format!("{e:#}"))?;

        let same_attestors = attestor_names(&catalog.node_attestors) == self.attestor_names;
        let flag_wins = |key: &str| -> Option<&'static str> {
            let o = &self.source.overrides;
            if key == "server.log_level" && o.log_level.as_deref().is_some_and(|v| !v.is_empty()) {
                return Some("set by the -logLevel flag, which wins over the file");
            }
            if key == "server.log_file" && o.log_file.as_deref().is_some_and(|v| !v.is_empty()) {
                return Some("set by the -logFile flag, which wins over the file");
            }
            if key == "server.log_file"
                && (applied.config.log_file.is_none() || config.log_file.is_none())
            {
                return Some(
                    "logs go to stdout or should: switching between stdout and a file needs a restart",
                );
            }
            None
        };
        let is_external = |key: &str| {
            self.external_attestors
                .iter()
                .any(|name| key.starts_with(&format!("plugins.NodeAttestor.{name}.")))
        };
        let is_live = |key: &str| -> bool {
            LIVE_KEYS.iter().any(|p| key_matches(key, p))
                && (!key.starts_with("plugins.NodeAttestor.") || same_attestors)
                && !is_external(key)
        };

        let mut outcome = ReloadOutcome::default();
        for key in changed_keys(&self.started, &document) {
            if let Some(reason) = flag_wins(&key) {
                outcome.restart_needed.push(RestartNeeded {
                    key,
                    reason: reason.to_owned(),
                });
            } else if !is_live(&key) {
                let reason = if is_external(&key) {
                    "an external plugin's plugin_data needs a restart; with plugin_data_file, SIGUSR1 reconfigures it from the file, as upstream"
                } else if key.starts_with("plugins.NodeAttestor.") {
                    "adding, removing or enabling node attestors needs a restart; only plugin_data of running ones changes live"
                } else {
                    "read only at start"
                };
                outcome.restart_needed.push(RestartNeeded {
                    key,
                    reason: reason.to_owned(),
                });
            }
        }
        let live: Vec<String> = changed_keys(&applied.document, &document)
            .into_iter()
            .filter(|k| is_live(k) && flag_wins(k).is_none())
            .collect();
        let touched = |pattern: &str| live.iter().any(|k| key_matches(k, pattern));
        let old = &applied.config;

        // Fallible first: a Prometheus port that cannot be bound or a log file that cannot
        // be opened stops the reload before anything else changed.
        let old_telemetry = self.telemetry.config();
        let telemetry = if touched("telemetry") {
            self.telemetry
                .prepare(telemetry)
                .await
                .map_err(|e| format!("telemetry: {e}"))?
        } else {
            None
        };
        if touched("server.log_file")
            && let Some(new_path) = &config.log_file
            && old.log_file.as_ref() != Some(new_path)
        {
            self.ctx
                .log_level
                .switch_log_file(new_path)
                .map_err(|e| format!("server.log_file: {e}"))?;
            outcome.applied.push(AppliedChange {
                key: "server.log_file".into(),
                old_value: old
                    .log_file
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                new_value: new_path.display().to_string(),
            });
        }
        if touched("server.log_level") && old.log_level != config.log_level {
            self.ctx
                .log_level
                .set_configured(&config.log_level)
                .map_err(|e| format!("server.log_level: {e}"))?;
            outcome.applied.push(AppliedChange {
                key: "server.log_level".into(),
                old_value: old.log_level.clone(),
                new_value: config.log_level.clone(),
            });
        }
        if (touched("server.default_x509_svid_ttl") || touched("server.default_jwt_svid_ttl"))
            && (old.default_x509_svid_ttl != config.default_x509_svid_ttl
                || old.default_jwt_svid_ttl != config.default_jwt_svid_ttl)
        {
            self.ctx
                .ca
                .set_default_svid_ttls(config.default_x509_svid_ttl, config.default_jwt_svid_ttl);
            for (key, before, after) in [
                (
                    "server.default_x509_svid_ttl",
                    old.default_x509_svid_ttl,
                    config.default_x509_svid_ttl,
                ),
                (
                    "server.default_jwt_svid_ttl",
                    old.default_jwt_svid_ttl,
                    config.default_jwt_svid_ttl,
                ),
            ] {
                if before != after {
                    outcome.applied.push(AppliedChange {
                        key: key.into(),
                        old_value: show_duration(before),
                        new_value: show_duration(after),
                    });
                }
            }
        }
        if touched("server.ratelimit") && old.rate_limit != config.rate_limit {
            self.ctx
                .rate_limits
                .set_enabled(config.rate_limit.attestation, config.rate_limit.signing);
            for (key, before, after) in [
                (
                    "server.ratelimit.attestation",
                    old.rate_limit.attestation,
                    config.rate_limit.attestation,
                ),
                (
                    "server.ratelimit.signing",
                    old.rate_limit.signing,
                    config.rate_limit.signing,
                ),
            ] {
                if before != after {
                    outcome.applied.push(AppliedChange {
                        key: key.into(),
                        old_value: before.to_string(),
                        new_value: after.to_string(),
                    });
                }
            }
        }
        if touched("server.federation.federates_with")
            && old.federation.federates_with != config.federation.federates_with
        {
            self.ctx
                .bundle_refresher
                .set_from_file(&config.federation.federates_with);
            let names = |c: &ResolvedServerConfig| {
                c.federation
                    .federates_with
                    .keys()
                    .map(|td| td.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            outcome.applied.push(AppliedChange {
                key: "server.federation.federates_with".into(),
                old_value: names(old),
                new_value: names(&config),
            });
        }
        if touched("plugins.NodeAttestor.*.plugin_data") {
            self.ctx
                .node_attestors
                .replace_with(NodeAttestors::from_catalog(
                    &catalog.node_attestors,
                    self.ctx.datastore.clone(),
                    &self.ctx.trust_domain,
                ));
            // Values of plugin_data may be secrets: name the keys only.
            for key in live
                .iter()
                .filter(|k| key_matches(k, "plugins.NodeAttestor.*.plugin_data"))
            {
                outcome.applied.push(AppliedChange {
                    key: key.clone(),
                    old_value: "(previous)".into(),
                    new_value: "(changed)".into(),
                });
            }
        }
        if let Some(telemetry) = telemetry {
            let new_value = telemetry.summary();
            self.telemetry.commit(telemetry);
            outcome.applied.push(AppliedChange {
                key: "telemetry".into(),
                old_value: old_telemetry.summary(),
                new_value,
            });
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        *applied = Applied { document, config };
        outcome.log(path);
        Ok(outcome)
    }
}

#[tonic::async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> Result<ReloadOutcome, String> {
        Reloader::reload(self).await
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.source.path.clone()
    }
}
