//! Live configuration reload of a running agent (beyond upstream): on SIGHUP and on
//! `spire-agent config reload` (the `spire_rs.admin.config.v1.Config` service on the admin
//! socket, when `admin_socket_path` is set), the agent reads its file again and applies
//! `agent.log_level`, `agent.log_file` (when logs already go to a file),
//! `agent.experimental.ratelimit`, `agent.experimental.sync_interval` and the `telemetry`
//! block (sinks added, removed or moved, prefix, labels and filters).
//!
//! Every other changed key is reported by name as needing a restart and keeps its running
//! value; the Workload API, its open streams and the cache are never touched. A file that
//! cannot be read, parsed or validated changes nothing.

use std::sync::Arc;

use serde_json::Value;
use spire_common::logging::LogLevelHandle;
use spire_common::reload::{
    AppliedChange, Reload, ReloadOutcome, RestartNeeded, changed_keys, key_matches,
};
use spire_common::telemetry::live::LiveTelemetry;

use crate::config::{self, Overrides, ResolvedAgentConfig};
use crate::manager::Manager;
use crate::workload::ratelimit::WorkloadRateLimiter;

/// Keys applied live.
const LIVE_KEYS: &[&str] = &[
    "agent.log_level",
    "agent.log_file",
    "agent.experimental.ratelimit",
    "agent.experimental.sync_interval",
    "telemetry",
];

struct Applied {
    document: Value,
    config: ResolvedAgentConfig,
}

/// Reloads the configuration of a running agent; one reload at a time.
pub struct Reloader {
    overrides: Overrides,
    started: Value,
    log_level: LogLevelHandle,
    rate_limiter: Arc<WorkloadRateLimiter>,
    /// The cache manager, once the agent has attested (see [`Reloader::attach_manager`]).
    manager: std::sync::OnceLock<Arc<Manager>>,
    /// The running telemetry (see [`Reloader::attach_telemetry`]).
    telemetry: std::sync::OnceLock<Arc<LiveTelemetry>>,
    applied: tokio::sync::Mutex<Applied>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("config", &self.overrides.config_path())
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for an agent started with `overrides` (the `run` flags) and `config`,
    /// changing `log_level`'s logger and the Workload API's `rate_limiter`. Fails when the
    /// file cannot be read again.
    pub fn new(
        overrides: Overrides,
        config: ResolvedAgentConfig,
        log_level: LogLevelHandle,
        rate_limiter: Arc<WorkloadRateLimiter>,
    ) -> anyhow::Result<Arc<Self>> {
        let document =
            spire_common::reload::read_document(&overrides.config_path(), overrides.expand_env)
                .map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Self {
            overrides,
            started: document.clone(),
            log_level,
            rate_limiter,
            manager: std::sync::OnceLock::new(),
            telemetry: std::sync::OnceLock::new(),
            applied: tokio::sync::Mutex::new(Applied { document, config }),
        }))
    }

    /// Lets reloads change the running manager's `sync_interval` (the manager exists only
    /// once the agent has attested, after the reloader). A `sync_interval` reloaded before
    /// then is handed to the manager here, so it is not lost.
    pub async fn attach_manager(&self, manager: Arc<Manager>) {
        let applied = self.applied.lock().await;
        let interval = applied.config.experimental.sync_interval;
        if manager.sync_interval() != interval {
            manager.set_sync_interval(interval);
        }
        let _ = self.manager.set(manager);
    }

    /// Lets reloads change the running telemetry sinks (set up after the reloader).
    pub fn attach_telemetry(&self, telemetry: Arc<LiveTelemetry>) {
        let _ = self.telemetry.set(telemetry);
    }

    /// Reads the file again and applies it; the error (the file's problem) changes nothing.
    pub async fn reload(&self) -> Result<ReloadOutcome, String> {
        let mut applied = self.applied.lock().await;
        let path = self.overrides.config_path();
        let document = spire_common::reload::read_document(&path, self.overrides.expand_env)?;
        let config = config::load_and_resolve(&self.overrides).map_err(|e| e.to_string())?;
        let telemetry = crate::agent::telemetry_config(&config).map_err(|e| format!("{e:#}"))?;

        let o = &self.overrides;
        let flag_wins = |key: &str| -> Option<&'static str> {
            if key == "agent.log_level" && o.log_level.as_deref().is_some_and(|v| !v.is_empty()) {
                return Some("set by the -logLevel flag, which wins over the file");
            }
            if key == "agent.log_file" && o.log_file.as_deref().is_some_and(|v| !v.is_empty()) {
                return Some("set by the -logFile flag, which wins over the file");
            }
            if key == "agent.log_file"
                && (applied.config.log_file.is_none() || config.log_file.is_none())
            {
                return Some("switching logs between stdout and a file needs a restart");
            }
            None
        };
        let is_live = |key: &str| LIVE_KEYS.iter().any(|p| key_matches(key, p));

        let mut outcome = ReloadOutcome::default();
        for key in changed_keys(&self.started, &document) {
            let reason = match flag_wins(&key) {
                Some(reason) => reason,
                None if is_live(&key) => continue,
                None => "read only at start",
            };
            outcome.restart_needed.push(RestartNeeded {
                key,
                reason: reason.to_owned(),
            });
        }
        let live: Vec<String> = changed_keys(&applied.document, &document)
            .into_iter()
            .filter(|k| is_live(k) && flag_wins(k).is_none())
            .collect();
        let old = &applied.config;
        // Fallible first: a Prometheus port that cannot be bound stops the reload before
        // anything else changed.
        let live_telemetry = self.telemetry.get();
        let old_telemetry = live_telemetry.map(|t| t.config());
        let telemetry = match live_telemetry {
            Some(live_telemetry) if live.iter().any(|k| key_matches(k, "telemetry")) => {
                live_telemetry
                    .prepare(telemetry)
                    .await
                    .map_err(|e| format!("telemetry: {e}"))?
            }
            _ => None,
        };
        if live.iter().any(|k| k == "agent.log_file")
            && let Some(new_path) = &config.log_file
            && old.log_file.as_ref() != Some(new_path)
        {
            self.log_level
                .switch_log_file(new_path)
                .map_err(|e| format!("agent.log_file: {e}"))?;
            outcome.applied.push(AppliedChange {
                key: "agent.log_file".into(),
                old_value: old
                    .log_file
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                new_value: new_path.display().to_string(),
            });
        }
        if live.iter().any(|k| k == "agent.log_level") && old.log_level != config.log_level {
            self.log_level
                .set_configured(&config.log_level)
                .map_err(|e| format!("agent.log_level: {e}"))?;
            outcome.applied.push(AppliedChange {
                key: "agent.log_level".into(),
                old_value: old.log_level.clone(),
                new_value: config.log_level.clone(),
            });
        }
        if live
            .iter()
            .any(|k| key_matches(k, "agent.experimental.ratelimit"))
            && old.ratelimit != config.ratelimit
        {
            self.rate_limiter.set_limits(&config.ratelimit);
            outcome.applied.push(AppliedChange {
                key: "agent.experimental.ratelimit".into(),
                old_value: describe_limits(&old.ratelimit),
                new_value: describe_limits(&config.ratelimit),
            });
        }
        if live.iter().any(|k| k == "agent.experimental.sync_interval")
            && old.experimental.sync_interval != config.experimental.sync_interval
        {
            // Before the agent has attested there is no manager yet: attach_manager hands
            // it the reloaded value.
            if let Some(manager) = self.manager.get() {
                manager.set_sync_interval(config.experimental.sync_interval);
            }
            outcome.applied.push(AppliedChange {
                key: "agent.experimental.sync_interval".into(),
                old_value: spire_core::duration::format(old.experimental.sync_interval),
                new_value: spire_core::duration::format(config.experimental.sync_interval),
            });
        }
        if let (Some(live_telemetry), Some(old_telemetry), Some(telemetry)) =
            (live_telemetry, old_telemetry, telemetry)
        {
            let new_value = telemetry.summary();
            live_telemetry.commit(telemetry);
            outcome.applied.push(AppliedChange {
                key: "telemetry".into(),
                old_value: old_telemetry.summary(),
                new_value,
            });
        }
        *applied = Applied { document, config };
        outcome.log(&path);
        Ok(outcome)
    }
}

/// `fetch_x509_svid=10 fetch_jwt_svid=5`, or `unlimited`.
fn describe_limits(limits: &crate::config::RateLimitSection) -> String {
    let set: Vec<String> = [
        ("fetch_x509_svid", limits.fetch_x509_svid),
        ("fetch_jwt_svid", limits.fetch_jwt_svid),
        ("fetch_x509_bundles", limits.fetch_x509_bundles),
        ("fetch_jwt_bundles", limits.fetch_jwt_bundles),
        ("stream_secrets", limits.stream_secrets),
        ("fetch_secrets", limits.fetch_secrets),
    ]
    .into_iter()
    .filter_map(|(name, limit)| limit.filter(|l| *l > 0).map(|l| format!("{name}={l}")))
    .collect();
    if set.is_empty() {
        "unlimited".to_owned()
    } else {
        set.join(" ")
    }
}

#[tonic::async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> Result<ReloadOutcome, String> {
        Reloader::reload(self).await
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.overrides.config_path()
    }
}
