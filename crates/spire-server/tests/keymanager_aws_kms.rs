//! The `aws_kms` KeyManager against moto (the real AWS API emulator, on loopback): the CA
//! and JWT keys are created in KMS under upstream's aliases, every CA certificate, X509-SVID
//! and JWT-SVID is signed by `kms:Sign` and verifies, a restarted server finds its keys, a
//! replaced key is scheduled for deletion, and a KMS that cannot be reached stops start-up
//! with a clear error.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use spire_common::aws::client::KMS;
use spire_common::aws::{AwsClient, AwsConfig, Credentials};
use spire_core::bundle::Bundle;
use spire_core::jwt::{JwtAuthority, validate_jwt_svid};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::verify_x509_svid;
use spire_e2e::aws::Moto;
use spire_server::ca::{CaConfig, CaManager, X509SvidRequest};
use spire_server::datastore::DataStore;
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::plugins::keymanager::KeyManager;
use spire_server::plugins::keymanager::aws_kms::{AwsKmsConfig, AwsKmsKeyManager, Data};

fn kms_config(id_file: &std::path::Path) -> AwsKmsConfig {
    let data: Data = serde_json::from_value(json!({
        "region": "us-east-1",
        "access_key_id": "AKIDSPIRESERVER",
        "secret_access_key": "server-secret",
        "key_identifier_file": id_file.to_str().unwrap(),
    }))
    .unwrap();
    AwsKmsConfig::from_data(
        "server.conf",
        "plugins.KeyManager.aws_kms.plugin_data",
        data,
    )
    .unwrap()
}

fn kms_client(moto: &Moto) -> AwsClient {
    AwsClient::new(AwsConfig {
        region: "us-east-1".into(),
        static_credentials: Some(Credentials::new("AKIDTEST", "test-secret", None)),
        assume_role_arn: None,
        endpoint: Some(moto.endpoint.clone()),
        sts_endpoint: None,
    })
    .unwrap()
}

async fn aliases(client: &AwsClient) -> Vec<Value> {
    let answer = client
        .json(KMS, "ListAliases", &json!({ "Limit": 100 }))
        .await
        .unwrap();
    answer["Aliases"].as_array().cloned().unwrap_or_default()
}

async fn key_state(client: &AwsClient, key: &str) -> String {
    let answer = client
        .json(KMS, "DescribeKey", &json!({ "KeyId": key }))
        .await
        .unwrap();
    answer["KeyMetadata"]["KeyState"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

async fn sqlite(dir: &std::path::Path) -> Arc<dyn DataStore> {
    let config = SqlConfig::from_plugin_data(&json!({
        "database_type": "sqlite3",
        "connection_string": dir.join("datastore.sqlite3").to_str().unwrap(),
    }))
    .unwrap();
    Arc::new(SqlDataStore::open(&config).await.unwrap())
}

async fn check_ca_signs(ca: &CaManager, ds: &dyn DataStore) -> String {
    let bundle = ds.fetch_bundle("example.org").await.unwrap().unwrap();
    let roots: Vec<Vec<u8>> = bundle
        .x509_authorities
        .iter()
        .map(|a| a.asn1.clone())
        .collect();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let chain = ca
        .sign_workload_x509_svid(X509SvidRequest {
            public_key_der: key.public_key_der(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/workload").unwrap(),
            dns_names: vec!["workload.example.org".into()],
            ttl: None,
            subject: None,
        })
        .await
        .unwrap();
    let id = verify_x509_svid(&chain, &roots, time::OffsetDateTime::now_utc()).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/workload");

    let svid = ca
        .sign_jwt_svid(&id, &["audience".into()], None)
        .await
        .unwrap();
    let mut jwt_bundle = Bundle::new(td());
    for key in &bundle.jwt_authorities {
        jwt_bundle
            .add_jwt_authority(JwtAuthority {
                key_id: key.key_id.clone(),
                public_key_der: key.public_key.clone(),
                expires_at: Some(key.expires_at),
            })
            .unwrap();
    }
    let parsed = validate_jwt_svid(
        &svid.token,
        &jwt_bundle,
        &["audience"],
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
    assert_eq!(parsed.spiffe_id.as_str(), "spiffe://example.org/workload");
    ca.x509_authority_states().await.0.unwrap().authority_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_with_kms_keys_and_finds_them_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let client = kms_client(&moto);
    for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        // One server (ID file, datastore) per key type.
        let sub = dir.path().join(key_type.as_str());
        std::fs::create_dir_all(&sub).unwrap();
        let id_file = sub.join("server_id");
        let ds = sqlite(&sub).await;
        let mut config = CaConfig::new(td());
        config.ca_key_type = key_type;
        let km = AwsKmsKeyManager::open(
            &kms_config(&id_file),
            "example.org",
            Some(moto.endpoint.clone()),
        )
        .await
        .unwrap();
        let server_id = km.server_id().to_owned();
        uuid::Uuid::parse_str(&server_id).unwrap();
        assert_eq!(std::fs::read_to_string(&id_file).unwrap(), server_id);
        let km: Arc<dyn KeyManager> = Arc::new(km);
        assert!(km.get_key("x509-CA-A").await.unwrap().is_none());
        let ca = CaManager::new(config.clone(), Arc::clone(&km), None, Arc::clone(&ds))
            .await
            .unwrap();
        let authority = check_ca_signs(&ca, ds.as_ref()).await;

        // The keys are KMS keys under upstream's aliases, of the configured type.
        let key = km.get_key("x509-CA-A").await.unwrap().unwrap();
        assert!(
            key.local().is_none(),
            "aws_kms keys never enter the process"
        );
        assert_eq!(key.key_type(), key_type);
        let all = aliases(&client).await;
        let alias = format!("alias/SPIRE_SERVER/example_org/{server_id}/x509-CA-A");
        let entry = all
            .iter()
            .find(|a| a["AliasName"] == alias.as_str())
            .unwrap_or_else(|| panic!("no alias {alias} in {all:?}"));
        let described = client
            .json(
                KMS,
                "DescribeKey",
                &json!({ "KeyId": entry["TargetKeyId"] }),
            )
            .await
            .unwrap();
        assert_eq!(
            described["KeyMetadata"]["Description"],
            "SPIRE_SERVER_KEY/example_org/x509-CA-A"
        );
        assert_eq!(described["KeyMetadata"]["KeyUsage"], "SIGN_VERIFY");
        assert!(all.iter().any(|a| a["AliasName"]
            == format!("alias/SPIRE_SERVER/example_org/{server_id}/JWT-Signer-A").as_str()));
        drop(ca);
        drop(km);

        // A restarted server (same key_identifier_file) finds its keys and keeps its CA.
        let km: Arc<dyn KeyManager> = Arc::new(
            AwsKmsKeyManager::open(
                &kms_config(&id_file),
                "example.org",
                Some(moto.endpoint.clone()),
            )
            .await
            .unwrap(),
        );
        let found = km.get_key("x509-CA-A").await.unwrap().unwrap();
        assert_eq!(found.public_key_der(), key.public_key_der());
        let ca = CaManager::new(config, Arc::clone(&km), None, Arc::clone(&ds))
            .await
            .unwrap();
        assert_eq!(check_ca_signs(&ca, ds.as_ref()).await, authority);

        // The key replaced under the same ID is scheduled for deletion, as upstream does.
        let old_arn = entry["TargetKeyId"].as_str().unwrap().to_owned();
        km.generate_key("x509-CA-A", key_type).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if key_state(&client, &old_arn).await == "PendingDeletion" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replaced key {old_arn} was not scheduled for deletion"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kms_or_missing_credentials_stop_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let closed = spire_e2e::free_port();
    let err = AwsKmsKeyManager::open(
        &kms_config(&dir.path().join("id")),
        "example.org",
        Some(format!("http://127.0.0.1:{closed}")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("keymanager(aws_kms): failed to fetch aliases"),
        "{err}"
    );

    let err = AwsKmsKeyManager::open(
        &AwsKmsConfig {
            key_policy_file: Some(dir.path().join("missing-policy.json")),
            ..kms_config(&dir.path().join("id"))
        },
        "example.org",
        Some(format!("http://127.0.0.1:{closed}")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("failed to read file configured in 'key_policy_file'"),
        "{err}"
    );

    std::fs::write(dir.path().join("bad-id"), "not a uuid").unwrap();
    let err = AwsKmsKeyManager::open(
        &kms_config(&dir.path().join("bad-id")),
        "example.org",
        Some(format!("http://127.0.0.1:{closed}")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("failed to parse server id from path"), "{err}");
}

async fn wait_for_key_state(client: &AwsClient, key: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while key_state(client, key).await != state {
        assert!(
            std::time::Instant::now() < deadline,
            "key {key} did not reach {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The daily disposal of stale aliases needs `LastUpdatedDate`, which moto 5.2.0's
/// ListAliases leaves out; it is tested in keymanager_aws_kms_recorded.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_left_without_an_alias_are_disposed_of_after_48_hours_and_own_aliases_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let client = kms_client(&moto);
    let km = AwsKmsKeyManager::open(
        &kms_config(&dir.path().join("server_id")),
        "example.org",
        Some(moto.endpoint.clone()),
    )
    .await
    .unwrap();
    km.generate_key("x509-CA-A", KeyType::EcP256).await.unwrap();
    let own_alias = format!(
        "alias/SPIRE_SERVER/example_org/{}/x509-CA-A",
        km.server_id()
    );
    let own_key = aliases(&client)
        .await
        .iter()
        .find(|a| a["AliasName"] == own_alias.as_str())
        .map(|a| a["TargetKeyId"].as_str().unwrap().to_owned())
        .unwrap();
    // An enabled key of this trust domain left without an alias (a failed alias
    // assignment), and one of another trust domain.
    let mut created = Vec::new();
    for description in ["SPIRE_SERVER_KEY/example_org", "SPIRE_SERVER_KEY/other_org"] {
        let answer = client
            .json(
                KMS,
                "CreateKey",
                &json!({
                    "Description": description,
                    "KeyUsage": "SIGN_VERIFY",
                    "KeySpec": "ECC_NIST_P256",
                }),
            )
            .await
            .unwrap();
        created.push(answer["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned());
    }
    let (orphan, foreign) = (&created[0], &created[1]);
    let now = std::time::SystemTime::now();
    km.dispose_keys_at(now + Duration::from_secs(47 * 3600))
        .await
        .unwrap();
    assert_eq!(key_state(&client, orphan).await, "Enabled");
    km.dispose_keys_at(now + Duration::from_secs(49 * 3600))
        .await
        .unwrap();
    wait_for_key_state(&client, orphan, "PendingDeletion").await;
    assert_eq!(key_state(&client, foreign).await, "Enabled");
    assert_eq!(key_state(&client, &own_key).await, "Enabled");

    // The 6-hourly refresh re-points this server's alias at its key (bumping its
    // LastUpdatedDate for other servers' disposal pass), and nothing else.
    moto.start_recording();
    km.refresh_aliases_now().await.unwrap();
    let updates: Vec<_> = moto
        .recorded_calls()
        .into_iter()
        .filter(|c| c.service == "kms")
        .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].operation, "UpdateAlias");
    let body: Value = serde_json::from_str(&updates[0].body).unwrap();
    assert_eq!(body["AliasName"], own_alias.as_str());
    assert!(
        body["TargetKeyId"].as_str().unwrap().ends_with(&own_key),
        "{body}"
    );
    assert_eq!(
        aliases(&client)
            .await
            .iter()
            .find(|a| a["AliasName"] == own_alias.as_str())
            .map(|a| a["TargetKeyId"].clone()),
        Some(Value::from(own_key.clone()))
    );
}
