//! Upstream's background key maintenance for `aws_kms`: deleting replaced keys (with
//! back-off), refreshing this server's aliases, and disposing of stale aliases of other
//! servers and of keys left without an alias.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ALIAS_THRESHOLD, DISPOSE_ALIASES_EVERY, DISPOSE_KEYS_EVERY, KEY_THRESHOLD, KeyEntry, Kms,
    REFRESH_ALIASES_EVERY, error, str_field, timestamp,
};
use crate::plugins::keymanager::KeyManagerError;

impl Kms {
    /// Schedules deletion of rotated keys, retrying with back-off (upstream's
    /// `scheduleDeleteTask`).
    pub(super) async fn schedule_delete_task(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<String>,
        cancel: CancellationToken,
    ) {
        const MIN: Duration = Duration::from_secs(1);
        const MAX: Duration = Duration::from_secs(60);
        let mut backoff = MIN;
        loop {
            let arn = tokio::select! {
                () = cancel.cancelled() => return,
                arn = rx.recv() => match arn { Some(a) => a, None => return },
            };
            // The key ID (the ARN's last part) names the key as well as the ARN in the
            // client's account and region; moto 5.2 fails on an ARN here.
            let key_id = arn.rsplit_once(":key/").map_or(arn.as_str(), |(_, id)| id);
            let result = self
                .call(
                    "ScheduleKeyDeletion",
                    json!({ "KeyId": key_id, "PendingWindowInDays": 7 }),
                )
                .await;
            match result {
                Ok(_) => {
                    tracing::debug!(key_arn = %arn, "Key deleted");
                    backoff = MIN;
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            "NotFoundException"
                                | "InvalidArnException"
                                | "KMSInvalidStateException"
                        )
                    ) =>
                {
                    tracing::error!(key_arn = %arn, reason = %e, "Failed to schedule key deletion");
                }
                Err(e) => {
                    tracing::error!(key_arn = %arn, reason = %e, "It was not possible to schedule key for deletion");
                    if self.delete_tx.try_send(arn.clone()).is_err() {
                        tracing::error!(key_arn = %arn, "Failed to re-enqueue key for deletion");
                    }
                    backoff = (backoff * 2).min(MAX);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    /// Alias refresh (6 h), stale alias disposal (24 h) and orphan key disposal (48 h).
    pub(super) async fn periodic_tasks(self: Arc<Self>, cancel: CancellationToken) {
        let start = tokio::time::Instant::now();
        let mut refresh =
            tokio::time::interval_at(start + REFRESH_ALIASES_EVERY, REFRESH_ALIASES_EVERY);
        let mut aliases =
            tokio::time::interval_at(start + DISPOSE_ALIASES_EVERY, DISPOSE_ALIASES_EVERY);
        let mut keys = tokio::time::interval_at(start + DISPOSE_KEYS_EVERY, DISPOSE_KEYS_EVERY);
        loop {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                _ = refresh.tick() => self.refresh_aliases().await,
                _ = aliases.tick() => self.dispose_aliases(SystemTime::now()).await,
                _ = keys.tick() => self.dispose_keys(SystemTime::now()).await,
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "KMS key maintenance failed");
            }
        }
    }

    /// Re-points every alias at its key, which bumps `LastUpdatedDate` so other servers see
    /// the keys are in use.
    pub(super) async fn refresh_aliases(&self) -> Result<(), KeyManagerError> {
        tracing::debug!("Refreshing aliases");
        let entries: Vec<KeyEntry> = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut errors = Vec::new();
        for entry in entries {
            if let Err(e) = self
                .call(
                    "UpdateAlias",
                    json!({ "AliasName": entry.alias_name, "TargetKeyId": entry.arn }),
                )
                .await
            {
                tracing::error!(alias_name = %entry.alias_name, key_arn = %entry.arn, reason = %e, "Failed to refresh alias");
                errors.push(e.to_string());
            }
        }
        joined(errors)
    }

    /// Deletes aliases of other servers of this trust domain not refreshed for two weeks,
    /// and schedules their keys for deletion.
    pub(super) async fn dispose_aliases(&self, now: SystemTime) -> Result<(), KeyManagerError> {
        tracing::debug!("Looking for aliases in trust domain to dispose");
        let aliases = self
            .list_aliases()
            .await
            .map_err(|e| error(format!("failed to fetch aliases to dispose: {e}")))?;
        let td_prefix = format!("{}/", self.alias_prefix_for_trust_domain());
        let own_prefix = format!("{}/", self.alias_prefix_for_server());
        let mut errors = Vec::new();
        for alias in aliases {
            let (Some(name), Some(arn), Some(updated)) = (
                str_field(&alias, "AliasName"),
                str_field(&alias, "AliasArn"),
                timestamp(alias.get("LastUpdatedDate")),
            ) else {
                continue;
            };
            if !name.starts_with(&td_prefix) || name.starts_with(&own_prefix) {
                continue;
            }
            if now.duration_since(updated).unwrap_or_default() < ALIAS_THRESHOLD {
                continue;
            }
            tracing::debug!(alias_name = %name, "Found alias in trust domain beyond threshold");
            let key_arn = match self.call("DescribeKey", json!({ "KeyId": arn })).await {
                Err(e) => {
                    tracing::error!(alias_name = %name, reason = %e, "Failed to clean up old KMS keys.");
                    errors.push(e.to_string());
                    continue;
                }
                Ok(d) => {
                    let Some(meta) = d.get("KeyMetadata") else {
                        continue;
                    };
                    if meta.get("Enabled").and_then(Value::as_bool) != Some(true) {
                        continue;
                    }
                    let Some(key_arn) = str_field(meta, "Arn") else {
                        continue;
                    };
                    key_arn.to_owned()
                }
            };
            if let Err(e) = self.call("DeleteAlias", json!({ "AliasName": name })).await {
                tracing::error!(alias_name = %name, reason = %e, "Failed to clean up old KMS keys.");
                errors.push(e.to_string());
                continue;
            }
            self.enqueue_delete(&key_arn);
        }
        joined(errors)
    }

    /// Schedules deletion of this trust domain's enabled keys that have had no alias for 48
    /// hours (left over from a failed alias assignment).
    pub(super) async fn dispose_keys(&self, now: SystemTime) -> Result<(), KeyManagerError> {
        tracing::debug!("Looking for keys in trust domain to dispose");
        let description = self.description_prefix();
        let mut errors = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut body = json!({ "Limit": 1000 });
            if let Some(m) = &marker {
                body["Marker"] = json!(m);
            }
            let page = self
                .call("ListKeys", body)
                .await
                .map_err(|e| error(format!("failed to fetch keys to dispose: {e}")))?;
            for key in page
                .get("Keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(key_arn) = str_field(key, "KeyArn") else {
                    continue;
                };
                let described = match self.call("DescribeKey", json!({ "KeyId": key_arn })).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(key_arn = %key_arn, reason = %e, "Failed to describe key to dispose");
                        errors.push(e.to_string());
                        continue;
                    }
                };
                let Some(meta) = described.get("KeyMetadata") else {
                    continue;
                };
                let (Some(desc), Some(created)) = (
                    str_field(meta, "Description"),
                    timestamp(meta.get("CreationDate")),
                ) else {
                    continue;
                };
                // Upstream compares the whole description with the trust domain prefix.
                if meta.get("Enabled").and_then(Value::as_bool) != Some(true) || desc != description
                {
                    continue;
                }
                match self
                    .call("ListAliases", json!({ "KeyId": key_arn, "Limit": 1 }))
                    .await
                {
                    Err(e) => {
                        tracing::error!(key_arn = %key_arn, reason = %e, "Failed to fetch alias for key");
                        errors.push(e.to_string());
                        continue;
                    }
                    Ok(a)
                        if a.get("Aliases")
                            .and_then(Value::as_array)
                            .is_some_and(|v| !v.is_empty()) =>
                    {
                        continue;
                    }
                    Ok(_) => {}
                }
                if now.duration_since(created).unwrap_or_default() < KEY_THRESHOLD {
                    continue;
                }
                tracing::debug!(key_arn = %key_arn, "Found key in trust domain beyond threshold");
                self.enqueue_delete(key_arn);
            }
            marker = str_field(&page, "NextMarker").map(str::to_owned);
            if page.get("Truncated").and_then(Value::as_bool) != Some(true) || marker.is_none() {
                break;
            }
        }
        joined(errors)
    }
}

fn joined(errors: Vec<String>) -> Result<(), KeyManagerError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(error(errors.join(": ")))
    }
}
