//! `prune_attested_nodes_expired_for`, `prune_tofu_nodes` and
//! `prune_attested_nodes_batch_size` against a real datastore: which agents one prune cycle
//! deletes, as upstream's node manager does.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::Duration;

use spire_server::datastore::{AttestedNode, DataStore};
use spire_server::node_prune::{PruneNodes, prune_once};

const NOW: i64 = 1_900_000_000;
const HOUR: i64 = 3600;

async fn datastore(dir: &tempfile::TempDir) -> Arc<dyn DataStore> {
    let config = spire_server::datastore::sql::SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: dir
            .path()
            .join("datastore.sqlite3")
            .to_string_lossy()
            .into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    Arc::new(
        spire_server::datastore::sql::SqlDataStore::open(&config)
            .await
            .unwrap(),
    )
}

async fn node(ds: &dyn DataStore, name: &str, expired_ago: i64, can_reattest: bool, banned: bool) {
    ds.create_attested_node(AttestedNode {
        spiffe_id: format!("spiffe://example.org/spire/agent/test/{name}"),
        attestation_data_type: "test".into(),
        cert_serial_number: if banned { String::new() } else { "1".into() },
        cert_not_after: NOW - expired_ago,
        can_reattest,
        ..AttestedNode::default()
    })
    .await
    .unwrap();
}

async fn remaining(ds: &dyn DataStore) -> Vec<String> {
    let (nodes, _) = ds.list_attested_nodes(&Default::default()).await.unwrap();
    let mut names: Vec<String> = nodes
        .into_iter()
        .map(|n| n.spiffe_id.rsplit('/').next().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn prunes_long_expired_reattestable_agents_and_keeps_banned_and_tofu_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ds = datastore(&dir).await;
    node(ds.as_ref(), "old-a", 48 * HOUR, true, false).await;
    node(ds.as_ref(), "old-b", 30 * HOUR, true, false).await;
    node(ds.as_ref(), "old-tofu", 48 * HOUR, false, false).await;
    node(ds.as_ref(), "old-banned", 48 * HOUR, true, true).await;
    node(ds.as_ref(), "recent", HOUR, true, false).await;
    node(ds.as_ref(), "valid", -HOUR, true, false).await;

    let mut settings = PruneNodes {
        expired_for: Duration::from_secs(24 * 3600),
        include_tofu: false,
        batch_size: 1,
    };
    // The batch size caps one cycle.
    assert_eq!(prune_once(ds.as_ref(), &settings, NOW).await.unwrap(), 1);
    assert_eq!(prune_once(ds.as_ref(), &settings, NOW).await.unwrap(), 1);
    assert_eq!(prune_once(ds.as_ref(), &settings, NOW).await.unwrap(), 0);
    assert_eq!(
        remaining(ds.as_ref()).await,
        ["old-banned", "old-tofu", "recent", "valid"]
    );

    // prune_tofu_nodes: agents that cannot re-attest go too; banned ones never.
    settings.include_tofu = true;
    settings.batch_size = 1000;
    assert_eq!(prune_once(ds.as_ref(), &settings, NOW).await.unwrap(), 1);
    assert_eq!(
        remaining(ds.as_ref()).await,
        ["old-banned", "recent", "valid"]
    );
}
