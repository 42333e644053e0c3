//! The built-in `aws_secretsmanager` SVIDStore against moto (a real Secrets Manager API
//! implementation: `SPIRE_TEST_MOTO`, installed by scripts/cloud-deps.sh into
//! target/cloud-deps.env): the SVID is stored as upstream's JSON in a secret tagged
//! `spire-svid=true`, updated in place, deleted with a recovery window and restored when put
//! again; a secret without the tag is never touched; metadata without a name is refused.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use spire_agent::plugins::svidstore::aws_secretsmanager::{
    AwsSecretsManager, AwsSecretsManagerConfig, NAME,
};
use spire_agent::plugins::svidstore::{PutX509Svid, SvidStore, SvidStoreError};
use spire_common::aws::client::SECRETS_MANAGER;
use spire_common::aws::{AwsClient, AwsConfig, Credentials};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{CaTemplate, Validity, self_signed_ca};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Moto, String) {
    let program = std::env::var("SPIRE_TEST_MOTO").unwrap_or_else(|_| {
        panic!(
            "SPIRE_TEST_MOTO is not set: run scripts/cloud-deps.sh and `. target/cloud-deps.env`"
        )
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "moto never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Moto(child), format!("http://127.0.0.1:{port}"))
}

fn config() -> AwsSecretsManagerConfig {
    AwsSecretsManagerConfig {
        access_key_id: "AKIDSPIREAGENT".into(),
        secret_access_key: "agent-secret".into(),
        region: "us-east-1".into(),
    }
}

fn raw_client(endpoint: &str) -> AwsClient {
    AwsClient::new(AwsConfig {
        region: "us-east-1".into(),
        static_credentials: Some(Credentials {
            access_key_id: "AKIDSPIREAGENT".into(),
            secret_access_key: "agent-secret".to_owned().into(),
            session_token: None,
            expires_at: None,
        }),
        assume_role_arn: None,
        endpoint: Some(endpoint.to_owned()),
        sts_endpoint: None,
    })
    .unwrap()
}

fn svid(id: &str, metadata: &[&str]) -> PutX509Svid {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let validity = Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(1));
    let cert = self_signed_ca(&key, &CaTemplate::new(td, validity)).unwrap();
    PutX509Svid {
        spiffe_id: id.parse().unwrap(),
        cert_chain: vec![cert.clone()],
        key: Arc::new(key),
        bundle: vec![cert],
        expires_at: 0,
        metadata: metadata.iter().map(|m| (*m).to_owned()).collect(),
        federated_bundles: BTreeMap::new(),
    }
}

async fn secret_json(client: &AwsClient, id: &str) -> Value {
    let value = client
        .json(
            SECRETS_MANAGER,
            "GetSecretValue",
            &json!({ "SecretId": id }),
        )
        .await
        .unwrap();
    let binary = base64::engine::general_purpose::STANDARD
        .decode(value["SecretBinary"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&binary).unwrap()
}

#[tokio::test]
async fn svids_are_stored_updated_deleted_and_restored_in_tagged_secrets() {
    let (_moto, endpoint) = start_moto();
    let store = AwsSecretsManager::new(NAME, &config(), Some(endpoint.clone())).unwrap();
    let client = raw_client(&endpoint);

    // Created with upstream's JSON and tag.
    let first = svid("spiffe://example.org/web", &["secretname:web"]);
    store.put_x509_svid(first.clone()).await.unwrap();
    let stored = secret_json(&client, "web").await;
    assert_eq!(stored["spiffeID"], "spiffe://example.org/web");
    let chain =
        spire_core::pem::decode_certificates(stored["x509SVID"].as_str().unwrap().as_bytes())
            .unwrap();
    assert_eq!(chain, first.cert_chain);
    let key = stored["x509SVIDKey"].as_str().unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    assert_eq!(
        PrivateKey::from_pem(key).unwrap().public_key_der(),
        first.key.public_key_der()
    );
    assert!(stored.get("federatedBundles").is_none(), "{stored}");
    let description = client
        .json(
            SECRETS_MANAGER,
            "DescribeSecret",
            &json!({ "SecretId": "web" }),
        )
        .await
        .unwrap();
    assert_eq!(
        description["Tags"],
        json!([{ "Key": "spire-svid", "Value": "true" }])
    );

    // Updated in place.
    let second = svid("spiffe://example.org/web2", &["secretname:web"]);
    store.put_x509_svid(second).await.unwrap();
    assert_eq!(
        secret_json(&client, "web").await["spiffeID"],
        "spiffe://example.org/web2"
    );

    // Deleted with a recovery window, restored by the next put.
    store
        .delete_x509_svid(&["secretname:web".to_owned()])
        .await
        .unwrap();
    let description = client
        .json(
            SECRETS_MANAGER,
            "DescribeSecret",
            &json!({ "SecretId": "web" }),
        )
        .await
        .unwrap();
    assert!(!description["DeletedDate"].is_null(), "{description}");
    store
        .put_x509_svid(svid("spiffe://example.org/web3", &["secretname:web"]))
        .await
        .unwrap();
    assert_eq!(
        secret_json(&client, "web").await["spiffeID"],
        "spiffe://example.org/web3"
    );

    // A secret SPIRE did not create is left alone.
    client
        .json(
            SECRETS_MANAGER,
            "CreateSecret",
            &json!({ "Name": "foreign", "SecretString": "keep me" }),
        )
        .await
        .unwrap();
    let err = store
        .put_x509_svid(svid("spiffe://example.org/x", &["secretname:foreign"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SvidStoreError::InvalidArgument(m) if m.contains("spire-svid")),
        "{err:?}"
    );
    let err = store
        .delete_x509_svid(&["secretname:foreign".to_owned()])
        .await
        .unwrap_err();
    assert!(matches!(err, SvidStoreError::InvalidArgument(_)), "{err:?}");
    let foreign = client
        .json(
            SECRETS_MANAGER,
            "GetSecretValue",
            &json!({ "SecretId": "foreign" }),
        )
        .await
        .unwrap();
    assert_eq!(foreign["SecretString"], "keep me");

    // Deleting what is not there is fine; metadata without a name is refused.
    store
        .delete_x509_svid(&["secretname:missing".to_owned()])
        .await
        .unwrap();
    let err = store
        .put_x509_svid(svid("spiffe://example.org/x", &["kmskeyid:k"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SvidStoreError::InvalidArgument(m) if m.contains("secret name or ARN")),
        "{err:?}"
    );
}
