//! Attested-node pruning (`prune_attested_nodes_expired_for`), as upstream's node manager:
//! about every hour (1 h ± 15 min, picked once at start) it deletes agents whose SVID
//! expired longer ago than the configured duration, at most
//! `prune_attested_nodes_batch_size` per cycle. Banned agents are kept (their ban must
//! outlive them), and so are agents that cannot re-attest (trust on first use, e.g. join
//! tokens) unless `prune_tofu_nodes` is set: deleting those would let their identity be
//! taken again. Each deletion also removes the node's selectors and records a node event,
//! so the authorized-entry caches of every server forget the agent.
//!
//! Each cycle counts in upstream's `node_manager_prune` and `datastore_node_prune` call
//! counters (upstream's datastore prunes in one call; ours lists then deletes).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::datastore::{DataStore, DataStoreError, ListNodesRequest, Pagination};

/// Upstream's base interval between cycles.
const INTERVAL: Duration = Duration::from_secs(3600);

/// Upstream's jitter either side of the interval.
const MAX_JITTER: Duration = Duration::from_secs(15 * 60);

/// What to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneNodes {
    /// `prune_attested_nodes_expired_for`: how long past its SVID's expiry an agent is kept.
    pub expired_for: Duration,
    /// `prune_tofu_nodes`: prune agents that cannot re-attest too.
    pub include_tofu: bool,
    /// `prune_attested_nodes_batch_size`: most agents deleted per cycle.
    pub batch_size: u32,
}

/// One cycle at `now` (unix seconds): deletes the expired agents the settings select and
/// returns how many.
pub async fn prune_once(
    datastore: &dyn DataStore,
    settings: &PruneNodes,
    now: i64,
) -> Result<usize, DataStoreError> {
    let expired_for = i64::try_from(settings.expired_for.as_secs()).unwrap_or(i64::MAX);
    let request = ListNodesRequest {
        by_banned: Some(false),
        by_expires_before: Some(now.saturating_sub(expired_for)),
        by_can_reattest: (!settings.include_tofu).then_some(true),
        pagination: Some(Pagination {
            token: String::new(),
            page_size: settings.batch_size.max(1),
        }),
        ..ListNodesRequest::default()
    };
    let (nodes, _) = datastore.list_attested_nodes(&request).await?;
    let mut count = 0;
    for node in nodes {
        match datastore.delete_attested_node(&node.spiffe_id).await {
            Ok(_) => count += 1,
            // Deleted meanwhile (DeleteAgent, another server): nothing left to do.
            Err(DataStoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::info!(count, "Pruned expired agents");
                return Err(e);
            }
        }
    }
    tracing::info!(count, "Pruned expired agents");
    Ok(count)
}

/// The interval of this process: 1 h ± up to 15 min, whole seconds.
fn jittered_interval() -> Duration {
    let span = MAX_JITTER.as_secs() * 2;
    let random = u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(span)).unwrap_or(0);
    Duration::from_secs(INTERVAL.as_secs() - MAX_JITTER.as_secs() + random)
}

/// Prunes every jittered interval until `cancel` fires.
pub async fn run(datastore: Arc<dyn DataStore>, settings: PruneNodes, cancel: CancellationToken) {
    let interval = jittered_interval();
    tracing::info!(
        subsystem_name = "node_manager",
        expired_for = ?settings.expired_for,
        include_tofu = settings.include_tofu,
        retry_interval = ?interval,
        "Periodic prune of expired nodes started"
    );
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let started = std::time::Instant::now();
        let pruned = prune_once(datastore.as_ref(), &settings, now).await;
        spire_common::telemetry::server::attested_nodes_pruned(pruned.is_ok(), started);
        if let Err(e) = pruned {
            tracing::error!(
                subsystem_name = "node_manager",
                error = %e,
                "Failed during periodic pruning of expired nodes"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_stays_within_upstreams_jitter() {
        for _ in 0..100 {
            let interval = jittered_interval();
            assert!(interval >= Duration::from_secs(45 * 60));
            assert!(interval < Duration::from_secs(75 * 60));
        }
    }
}
