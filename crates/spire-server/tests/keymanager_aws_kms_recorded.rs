//! `aws_kms` against the KMS answers moto 5.2.0 cannot give: `Sign` with
//! `MessageType=DIGEST` (moto hashes the digest again), `ScheduleKeyDeletion` of a replaced
//! key (moto fails on a key ARN) and the aliases' `LastUpdatedDate` (moto leaves it out), which
//! the daily disposal of other servers' stale aliases reads. A loopback stand-in (`spire_e2e::aws_scripted`) serves
//! bodies shaped exactly as the AWS KMS API reference documents them — no response recorded
//! from real AWS is used:
//! - `ListAliases` (https://docs.aws.amazon.com/kms/latest/APIReference/API_ListAliases.html),
//! - `DescribeKey` (https://docs.aws.amazon.com/kms/latest/APIReference/API_DescribeKey.html),
//! - `GetPublicKey` (https://docs.aws.amazon.com/kms/latest/APIReference/API_GetPublicKey.html),
//! - `Sign` (https://docs.aws.amazon.com/kms/latest/APIReference/API_Sign.html),
//! - `CreateKey` (https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateKey.html),
//! - `UpdateAlias`, an empty 200 answer
//!   (https://docs.aws.amazon.com/kms/latest/APIReference/API_UpdateAlias.html),
//! - `ScheduleKeyDeletion`
//!   (https://docs.aws.amazon.com/kms/latest/APIReference/API_ScheduleKeyDeletion.html),
//! - `DeleteAlias`, an empty 200 answer
//!   (https://docs.aws.amazon.com/kms/latest/APIReference/API_DeleteAlias.html).
//!
//! The public keys are the test's own; the stand-in cannot sign, so the `Sign` answer's
//! signature is a fixed blob and the test checks what the plugin sent and that it returns
//! exactly what KMS answered.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use spire_core::keys::{HashAlgorithm, KeyType, PrivateKey, SignatureScheme};
use spire_e2e::aws_scripted::ScriptedAws;
use spire_server::plugins::keymanager::aws_kms::{AwsKmsConfig, AwsKmsKeyManager, Data};
use spire_server::plugins::keymanager::{KeyManager, SigningKey};

const SERVER_ID: &str = "6c1e5a27-1b5c-4c4d-9a7e-0e8d1f6b2a11";
const OLD_KEY: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
const NEW_KEY: &str = "0987dcba-09fe-87dc-65ba-ab0987654321";

fn key_arn(id: &str) -> String {
    format!("arn:aws:kms:us-east-1:111122223333:key/{id}")
}

fn alias_name() -> String {
    format!("alias/SPIRE_SERVER/example_org/{SERVER_ID}/x509-CA-A")
}

/// `KeyMetadata` as DescribeKey and CreateKey document it.
fn key_metadata(id: &str) -> Value {
    json!({
        "AWSAccountId": "111122223333",
        "Arn": key_arn(id),
        "CreationDate": 1.700000000e9,
        "CustomerMasterKeySpec": "ECC_NIST_P256",
        "Description": "SPIRE_SERVER_KEY/example_org/x509-CA-A",
        "Enabled": true,
        "EncryptionAlgorithms": [],
        "KeyId": id,
        "KeyManager": "CUSTOMER",
        "KeySpec": "ECC_NIST_P256",
        "KeyState": "Enabled",
        "KeyUsage": "SIGN_VERIFY",
        "MultiRegion": false,
        "Origin": "AWS_KMS",
        "SigningAlgorithms": ["ECDSA_SHA_256"]
    })
}

fn public_key_answer(id: &str, spki: &[u8]) -> Value {
    json!({
        "CustomerMasterKeySpec": "ECC_NIST_P256",
        "KeyId": key_arn(id),
        "KeySpec": "ECC_NIST_P256",
        "KeyUsage": "SIGN_VERIFY",
        "PublicKey": STANDARD.encode(spki),
        "SigningAlgorithms": ["ECDSA_SHA_256"]
    })
}

/// The plugin's config for server [`SERVER_ID`], with a key policy file in `dir` (so no STS
/// GetCallerIdentity for the default policy).
fn config(dir: &std::path::Path) -> AwsKmsConfig {
    let policy = dir.join("policy.json");
    std::fs::write(&policy, r#"{"Version": "2012-10-17", "Statement": []}"#).unwrap();
    let data: Data = serde_json::from_value(json!({
        "region": "us-east-1",
        "access_key_id": "AKIDTEST",
        "secret_access_key": "test-secret",
        "key_identifier_value": SERVER_ID,
        "key_policy_file": policy.to_str().unwrap(),
    }))
    .unwrap();
    AwsKmsConfig::from_data(
        "server.conf",
        "plugins.KeyManager.aws_kms.plugin_data",
        data,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_are_signed_as_digest_and_replaced_keys_are_scheduled_for_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let old_public = PrivateKey::generate(KeyType::EcP256)
        .unwrap()
        .public_key_der();
    let new_public = PrivateKey::generate(KeyType::EcP256)
        .unwrap()
        .public_key_der();
    let kms = ScriptedAws::start();
    kms.answer(
        "ListAliases",
        200,
        json!({
            "Aliases": [{
                "AliasArn": format!("arn:aws:kms:us-east-1:111122223333:{}", alias_name()),
                "AliasName": alias_name(),
                "CreationDate": 1.700000000e9,
                "LastUpdatedDate": 1.700000000e9,
                "TargetKeyId": OLD_KEY
            }],
            "Truncated": false
        }),
    );
    kms.answer(
        "DescribeKey",
        200,
        json!({ "KeyMetadata": key_metadata(OLD_KEY) }),
    );
    kms.answer("GetPublicKey", 200, public_key_answer(OLD_KEY, &old_public));
    let signature = vec![0x30, 0x44, 0x02, 0x20, 0x11, 0x22, 0x33, 0x44];
    kms.answer(
        "Sign",
        200,
        json!({
            "KeyId": key_arn(OLD_KEY),
            "Signature": STANDARD.encode(&signature),
            "SigningAlgorithm": "ECDSA_SHA_256"
        }),
    );
    kms.answer(
        "CreateKey",
        200,
        json!({ "KeyMetadata": key_metadata(NEW_KEY) }),
    );
    kms.answer("GetPublicKey", 200, public_key_answer(NEW_KEY, &new_public));
    kms.answer("UpdateAlias", 200, json!({}));
    kms.answer(
        "ScheduleKeyDeletion",
        200,
        json!({
            "DeletionDate": 1.700604800e9,
            "KeyId": key_arn(OLD_KEY),
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": 7
        }),
    );

    let config = config(dir.path());
    let km = AwsKmsKeyManager::open(&config, "example.org", Some(kms.endpoint.clone()))
        .await
        .unwrap();

    // The key behind the alias is found; a message over KMS's 4096-byte RAW limit goes as
    // its SHA-256 digest.
    let key = km.get_key("x509-CA-A").await.unwrap().unwrap();
    assert_eq!(key.public_key_der(), old_public);
    let SigningKey::Remote(remote) = key else {
        panic!("aws_kms keys are remote");
    };
    let message = vec![7u8; 5000];
    let scheme = SignatureScheme {
        hash: HashAlgorithm::Sha256,
        pss: false,
    };
    let signed = remote.sign(&message, scheme).await.unwrap();
    assert_eq!(signed, signature, "the signature KMS answered");
    let sign = kms
        .requests()
        .into_iter()
        .find(|r| r.operation == "Sign")
        .unwrap();
    assert_eq!(sign.body["MessageType"], "DIGEST");
    assert_eq!(
        sign.body["Message"],
        STANDARD.encode(HashAlgorithm::Sha256.digest(&message))
    );
    assert_eq!(sign.body["KeyId"], key_arn(OLD_KEY).as_str());
    assert_eq!(sign.body["SigningAlgorithm"], "ECDSA_SHA_256");

    // Replacing the key moves the alias and schedules the old key's deletion (7 days).
    let replaced = km.generate_key("x509-CA-A", KeyType::EcP256).await.unwrap();
    assert_eq!(replaced.public_key_der(), new_public);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let deletion = loop {
        if let Some(r) = kms
            .requests()
            .into_iter()
            .find(|r| r.operation == "ScheduleKeyDeletion")
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ScheduleKeyDeletion: {:?}",
            kms.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        deletion.body,
        json!({ "KeyId": OLD_KEY, "PendingWindowInDays": 7 })
    );
    let ops: Vec<String> = kms.requests().into_iter().map(|r| r.operation).collect();
    assert_eq!(
        ops,
        [
            "ListAliases",
            "DescribeKey",
            "GetPublicKey",
            "Sign",
            "CreateKey",
            "GetPublicKey",
            "UpdateAlias",
            "ScheduleKeyDeletion"
        ]
    );
    let update = kms
        .requests()
        .into_iter()
        .find(|r| r.operation == "UpdateAlias")
        .unwrap();
    assert_eq!(
        update.body,
        json!({ "AliasName": alias_name(), "TargetKeyId": key_arn(NEW_KEY) })
    );
}

/// A ListAliases entry as the API reference documents it, updated at 1.7e9 (Unix seconds).
fn alias_entry(name: &str, key: &str) -> Value {
    json!({
        "AliasArn": format!("arn:aws:kms:us-east-1:111122223333:{name}"),
        "AliasName": name,
        "CreationDate": 1.700000000e9,
        "LastUpdatedDate": 1.700000000e9,
        "TargetKeyId": key
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_servers_aliases_not_refreshed_for_two_weeks_are_deleted_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let kms = ScriptedAws::start();
    let other_server = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let stale = format!("alias/SPIRE_SERVER/example_org/{other_server}/x509-CA-A");
    let foreign = format!("alias/SPIRE_SERVER/other_org/{other_server}/x509-CA-A");
    // At start this server has no keys; then two daily passes see the same aliases.
    kms.answer(
        "ListAliases",
        200,
        json!({ "Aliases": [], "Truncated": false }),
    );
    for _ in 0..2 {
        kms.answer(
            "ListAliases",
            200,
            json!({
                "Aliases": [alias_entry(&stale, OLD_KEY), alias_entry(&foreign, NEW_KEY)],
                "Truncated": false
            }),
        );
    }
    kms.answer(
        "DescribeKey",
        200,
        json!({ "KeyMetadata": key_metadata(OLD_KEY) }),
    );
    kms.answer("DeleteAlias", 200, json!({}));
    kms.answer(
        "ScheduleKeyDeletion",
        200,
        json!({
            "DeletionDate": 1.700604800e9,
            "KeyId": key_arn(OLD_KEY),
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": 7
        }),
    );
    let config = config(dir.path());
    let km = AwsKmsKeyManager::open(&config, "example.org", Some(kms.endpoint.clone()))
        .await
        .unwrap();
    let updated = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let days = |n: u64| Duration::from_secs(n * 24 * 3600);

    // 13 days after its last update the alias is left alone.
    km.dispose_aliases_at(updated + days(13)).await.unwrap();
    let ops = |kms: &ScriptedAws| -> Vec<String> {
        kms.requests().into_iter().map(|r| r.operation).collect()
    };
    assert_eq!(ops(&kms), ["ListAliases", "ListAliases"]);

    // After two weeks it is deleted and its key scheduled for deletion; another trust
    // domain's alias is not looked at.
    km.dispose_aliases_at(updated + days(15)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ops(&kms).iter().any(|o| o == "ScheduleKeyDeletion") {
        assert!(
            std::time::Instant::now() < deadline,
            "no ScheduleKeyDeletion: {:?}",
            ops(&kms)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ops(&kms),
        [
            "ListAliases",
            "ListAliases",
            "ListAliases",
            "DescribeKey",
            "DeleteAlias",
            "ScheduleKeyDeletion"
        ]
    );
    let body = |op: &str| {
        kms.requests()
            .into_iter()
            .find(|r| r.operation == op)
            .unwrap()
            .body
    };
    assert_eq!(body("DescribeKey")["KeyId"], stale_arn(&stale).as_str());
    assert_eq!(body("DeleteAlias"), json!({ "AliasName": stale }));
    assert_eq!(
        body("ScheduleKeyDeletion"),
        json!({ "KeyId": OLD_KEY, "PendingWindowInDays": 7 })
    );
}

fn stale_arn(name: &str) -> String {
    format!("arn:aws:kms:us-east-1:111122223333:{name}")
}
