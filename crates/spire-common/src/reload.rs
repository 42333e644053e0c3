//! Live configuration reload, shared by spire-server and spire-agent (beyond upstream, which
//! reads its file only at start).
//!
//! On SIGHUP ([`on_sighup`]) or a `Config.Reload` call on the admin socket, a process reads
//! its file again, finds which keys differ ([`changed_keys`], on the parsed documents, so
//! layout and comments do not count), applies those it can change live and reports the rest
//! as needing a restart ([`ReloadOutcome`]), keeping their running values. The outcome is
//! printed the same way by `spire-server config reload` and `spire-agent config reload`
//! ([`render_plain`], [`render_json`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use spire_proto::spire_rs::admin::config::v1 as proto;
use tokio_util::sync::CancellationToken;

/// Reads `path` into the document the typed loaders see (after `$VAR` expansion when
/// `expand_env`), for comparing one reload's file with the previous one.
pub fn read_document(path: &Path, expand_env: bool) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = if expand_env {
        spire_core::config::expand_env_vars(&text, |name| std::env::var(name).ok())
    } else {
        text
    };
    spire_core::config::parse_value(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

/// Every key whose value differs between two parsed configuration documents, dotted as an
/// operator writes it (`server.log_level`, `plugins.NodeAttestor.k8s_psat.plugin_data.clusters`),
/// sorted. Blocks are walked into, so a new or removed block names each of its keys; lists of
/// values count as one value; a block written once (`[{..}]` in HCL's JSON form) has no index.
pub fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out.sort();
    out.dedup();
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A single-element list of blocks is the block itself (HCL's form of `name { .. }`).
fn unwrap_block(value: Option<&Value>) -> Option<&Value> {
    match value {
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_object() => items.first(),
        other => other,
    }
}

fn walk(prefix: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    let (old, new) = (unwrap_block(old), unwrap_block(new));
    let old_obj = old.and_then(Value::as_object);
    let new_obj = new.and_then(Value::as_object);
    let descend = matches!(
        (old, new),
        (Some(Value::Object(_)), Some(Value::Object(_)) | None) | (None, Some(Value::Object(_)))
    );
    if descend {
        let mut keys: Vec<&String> = old_obj
            .into_iter()
            .flat_map(|o| o.keys())
            .chain(new_obj.into_iter().flat_map(|o| o.keys()))
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() && old != new && !prefix.is_empty() {
            // An empty block added or removed: the block itself changed.
            out.push(prefix.to_owned());
        }
        for key in keys {
            walk(
                &join(prefix, key),
                old_obj.and_then(|o| o.get(key)),
                new_obj.and_then(|o| o.get(key)),
                out,
            );
        }
        return;
    }
    if let (Some(Value::Array(a)), Some(Value::Array(b))) = (old, new)
        && a.len() == b.len()
        && a.iter().chain(b).all(Value::is_object)
    {
        for (index, (x, y)) in a.iter().zip(b).enumerate() {
            walk(&join(prefix, &index.to_string()), Some(x), Some(y), out);
        }
        return;
    }
    if old != new && !prefix.is_empty() {
        out.push(prefix.to_owned());
    }
}

/// Whether `key` is `pattern` or lies inside it; `*` in the pattern matches one segment.
pub fn key_matches(key: &str, pattern: &str) -> bool {
    let mut key_parts = key.split('.');
    for want in pattern.split('.') {
        match key_parts.next() {
            Some(part) if want == "*" || want == part => {}
            _ => return false,
        }
    }
    true
}

/// One key applied live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    /// The dotted key.
    pub key: String,
    /// The running value before, as shown to operators.
    pub old_value: String,
    /// The value now in effect.
    pub new_value: String,
}

/// One key that changed in the file but needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartNeeded {
    /// The dotted key.
    pub key: String,
    /// Why it cannot change live.
    pub reason: String,
}

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Keys now in effect.
    pub applied: Vec<AppliedChange>,
    /// Keys kept at their running values until a restart.
    pub restart_needed: Vec<RestartNeeded>,
}

impl ReloadOutcome {
    /// Logs the outcome: one line per applied key, one warning naming every key that needs
    /// a restart.
    pub fn log(&self, path: &Path) {
        for change in &self.applied {
            tracing::info!(
                key = %change.key,
                old = %change.old_value,
                new = %change.new_value,
                "Configuration reloaded: key applied"
            );
        }
        if !self.restart_needed.is_empty() {
            let keys: Vec<&str> = self.restart_needed.iter().map(|r| r.key.as_str()).collect();
            tracing::warn!(
                keys = %keys.join(", "),
                "Configuration reload: these keys changed in {} but need a restart; their running values are kept",
                path.display()
            );
        }
        if self.applied.is_empty() && self.restart_needed.is_empty() {
            tracing::info!(path = %path.display(), "Configuration reloaded: nothing changed");
        }
    }

    /// The `Config.Reload` answer.
    pub fn to_proto(&self, path: &Path) -> proto::ReloadResponse {
        proto::ReloadResponse {
            config_path: path.display().to_string(),
            applied: self
                .applied
                .iter()
                .map(|c| proto::Change {
                    key: c.key.clone(),
                    old_value: c.old_value.clone(),
                    new_value: c.new_value.clone(),
                })
                .collect(),
            restart_needed: self
                .restart_needed
                .iter()
                .map(|r| proto::RestartNeeded {
                    key: r.key.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
        }
    }
}

/// Runs `reload` on every SIGHUP until `cancel` fires. Without SIGHUP support (not unix),
/// returns at once.
pub async fn on_sighup<F, Fut>(cancel: CancellationToken, mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut signals = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; use `config reload` to reload the configuration");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = signals.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("SIGHUP received: reloading the configuration");
                reload().await;
            }
        }
    }
}

/// A running process's configuration, reloadable from its file (the server's and the agent's
/// reloaders), served the same way by [`reload_on_sighup`] and [`config_service`].
#[tonic::async_trait]
pub trait Reload: Send + Sync + 'static {
    /// Reads the file again and applies it; the error (the file's problem) changes nothing.
    async fn reload(&self) -> Result<ReloadOutcome, String>;
    /// The configuration file, named in logs and in the RPC's answer.
    fn config_path(&self) -> PathBuf;
}

/// Reloads on every SIGHUP until `cancel` fires; failures are logged.
pub async fn reload_on_sighup<R: Reload>(reloader: Arc<R>, cancel: CancellationToken) {
    on_sighup(cancel, || {
        let reloader = Arc::clone(&reloader);
        async move {
            if let Err(e) = reloader.reload().await {
                tracing::error!(
                    error = %e,
                    path = %reloader.config_path().display(),
                    "Configuration reload failed; the running configuration is kept"
                );
            }
        }
    })
    .await;
}

/// The `spire_rs.admin.config.v1.Config` service of an admin socket, for `reloader`.
pub fn config_service<R: Reload>(
    reloader: Arc<R>,
) -> proto::config_server::ConfigServer<ConfigApi<R>> {
    proto::config_server::ConfigServer::new(ConfigApi { reloader })
}

/// `spire_rs.admin.config.v1.Config`: `config reload` over the admin socket.
#[derive(Debug)]
pub struct ConfigApi<R> {
    reloader: Arc<R>,
}

#[tonic::async_trait]
impl<R: Reload> proto::config_server::Config for ConfigApi<R> {
    async fn reload(
        &self,
        _request: tonic::Request<proto::ReloadRequest>,
    ) -> Result<tonic::Response<proto::ReloadResponse>, tonic::Status> {
        match self.reloader.reload().await {
            Ok(outcome) => Ok(tonic::Response::new(
                outcome.to_proto(&self.reloader.config_path()),
            )),
            Err(e) => {
                tracing::error!(error = %e, "Configuration reload failed; the running configuration is kept");
                Err(tonic::Status::invalid_argument(format!(
                    "configuration not reloaded, nothing changed: {e}"
                )))
            }
        }
    }
}

/// `config reload` of either program: calls `Config.Reload` over `channel` and prints the
/// outcome (`-output json` or plain).
pub async fn run_command(
    channel: tonic::transport::Channel,
    output: crate::cli::OutputFormat,
    env: &mut crate::cli::Env<'_>,
) -> crate::cli::CliResult {
    let response = proto::config_client::ConfigClient::new(channel)
        .reload(proto::ReloadRequest {})
        .await
        .map_err(crate::cli::CliError::rpc(
            "failed to reload the configuration: ",
        ))?
        .into_inner();
    match output {
        crate::cli::OutputFormat::Json => env.print(&render_json(&response)),
        crate::cli::OutputFormat::Pretty => env.print(&render_plain(&response)),
    }
    Ok(())
}

/// `config reload`'s plain output.
pub fn render_plain(response: &proto::ReloadResponse) -> String {
    let mut out = format!("Reloaded {}\n", response.config_path);
    if response.applied.is_empty() {
        out.push_str("No change applied.\n");
    } else {
        out.push_str("Applied:\n");
        for c in &response.applied {
            out.push_str(&format!(
                "  {}: {} -> {}\n",
                c.key, c.old_value, c.new_value
            ));
        }
    }
    if !response.restart_needed.is_empty() {
        out.push_str("Needs a restart (running values kept):\n");
        for r in &response.restart_needed {
            out.push_str(&format!("  {}: {}\n", r.key, r.reason));
        }
    }
    out
}

/// `config reload -output json`.
pub fn render_json(response: &proto::ReloadResponse) -> String {
    let value = serde_json::json!({
        "config_path": response.config_path,
        "applied": response.applied.iter().map(|c| serde_json::json!({
            "key": c.key, "old_value": c.old_value, "new_value": c.new_value,
        })).collect::<Vec<_>>(),
        "restart_needed": response.restart_needed.iter().map(|r| serde_json::json!({
            "key": r.key, "reason": r.reason,
        })).collect::<Vec<_>>(),
    });
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcl(text: &str) -> Value {
        spire_core::config::parse_value("test.conf", text).unwrap_or(Value::Null)
    }

    #[test]
    fn names_each_changed_key_and_ignores_layout() {
        let old = hcl(
            "server {\n  log_level = \"INFO\"\n  data_dir = \"/a\"\n}\nplugins {\n  NodeAttestor \"k8s_psat\" {\n    plugin_data {\n      clusters = { \"a\" = {} }\n    }\n  }\n}\n",
        );
        let new = hcl(
            "# comment\nserver {\n log_level = \"DEBUG\"\n   data_dir = \"/a\"\n  default_x509_svid_ttl = \"2h\"\n}\nplugins {\n  NodeAttestor \"k8s_psat\" {\n    plugin_data {\n      clusters = { \"b\" = {} }\n    }\n  }\n}\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            vec![
                "plugins.NodeAttestor.k8s_psat.plugin_data.clusters.a",
                "plugins.NodeAttestor.k8s_psat.plugin_data.clusters.b",
                "server.default_x509_svid_ttl",
                "server.log_level",
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn patterns_match_whole_segments() {
        assert!(key_matches("server.log_level", "server.log_level"));
        assert!(key_matches(
            "plugins.NodeAttestor.k8s_psat.plugin_data.clusters.a",
            "plugins.NodeAttestor.*.plugin_data"
        ));
        assert!(!key_matches("server.log_level_x", "server.log_level"));
        assert!(!key_matches(
            "plugins.NodeAttestor.k8s_psat.enabled",
            "plugins.NodeAttestor.*.plugin_data"
        ));
    }
}
