//! The built-in `aws_secretsmanager` SVIDStore (upstream's
//! `pkg/agent/plugin/svidstore/awssecretsmanager`): each stored SVID is one AWS Secrets
//! Manager secret, named by the entry's `aws_secretsmanager:secretname:<name>` (or
//! `arn:<arn>`) selector, optionally encrypted with `kmskeyid:<key>`. The secret is created
//! with the tag `spire-svid=true`, and an existing secret without that tag is never touched.
//! The secret's binary value is upstream's JSON: `spiffeID`, `x509SVID` (PEM chain),
//! `x509SVIDKey` (PKCS#8 PEM), `bundle` (PEM), `federatedBundles` (trust domain to PEM).

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spire_common::aws::client::SECRETS_MANAGER;
use spire_common::aws::{AwsClient, AwsConfig, AwsError, Credentials};

use super::{PutX509Svid, SvidStore, SvidStoreError};

/// The plugin's name in agent.conf.
pub const NAME: &str = "aws_secretsmanager";

/// The `plugin_data` of `SVIDStore "aws_secretsmanager"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSecretsManagerConfig {
    /// Access key; empty: the usual AWS credential sources.
    #[serde(default)]
    pub access_key_id: String,
    /// Secret key; empty: the usual AWS credential sources.
    #[serde(default)]
    pub secret_access_key: String,
    /// The region (required, as upstream).
    #[serde(default)]
    pub region: String,
}

/// The store.
pub struct AwsSecretsManager {
    name: String,
    client: AwsClient,
}

/// Upstream's `svidstore.Data`, in its JSON field order.
#[derive(Serialize)]
struct SecretData {
    #[serde(rename = "spiffeID", skip_serializing_if = "String::is_empty")]
    spiffe_id: String,
    #[serde(rename = "x509SVID", skip_serializing_if = "String::is_empty")]
    x509_svid: String,
    #[serde(rename = "x509SVIDKey", skip_serializing_if = "String::is_empty")]
    x509_svid_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    bundle: String,
    #[serde(
        rename = "federatedBundles",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    federated_bundles: BTreeMap<String, String>,
}

/// Where a secret is, from the entry's selectors.
struct SecretOptions {
    name: String,
    arn: String,
    kms_key_id: String,
}

impl SecretOptions {
    fn from_metadata(metadata: &[String]) -> Result<Self, SvidStoreError> {
        let mut data = BTreeMap::new();
        for item in metadata {
            let Some((key, value)) = item.split_once(':') else {
                return Err(SvidStoreError::InvalidArgument(format!(
                    "failed to parse Metadata: metadata does not contain a colon: {item:?}"
                )));
            };
            data.insert(key.to_owned(), value.to_owned());
        }
        let take = |key: &str| data.get(key).cloned().unwrap_or_default();
        let options = Self {
            name: take("secretname"),
            arn: take("arn"),
            kms_key_id: take("kmskeyid"),
        };
        if options.name.is_empty() && options.arn.is_empty() {
            return Err(SvidStoreError::InvalidArgument(
                "either the secret name or ARN is required".into(),
            ));
        }
        Ok(options)
    }

    fn secret_id(&self) -> &str {
        if self.arn.is_empty() {
            &self.name
        } else {
            &self.arn
        }
    }
}

fn pem_chain(ders: &[Vec<u8>]) -> String {
    spire_core::pem::encode_certificates(ders.iter().map(Vec::as_slice))
}

fn is_not_found(e: &AwsError) -> bool {
    e.code() == Some("ResourceNotFoundException")
}

fn failed(what: &str, e: &AwsError) -> SvidStoreError {
    SvidStoreError::Failed(format!("svidstore({NAME}): {what}: {e}"))
}

/// Upstream refuses to touch a secret it did not create.
fn check_tag(description: &Value) -> Result<(), SvidStoreError> {
    let tagged = description["Tags"].as_array().is_some_and(|tags| {
        tags.iter()
            .any(|t| t["Key"] == "spire-svid" && t["Value"] == "true")
    });
    if tagged {
        Ok(())
    } else {
        Err(SvidStoreError::InvalidArgument(format!(
            "svidstore({NAME}): secret does not contain the 'spire-svid' tag"
        )))
    }
}

impl AwsSecretsManager {
    /// The store `name` (from agent.conf) with `config`; `endpoint` overrides the Secrets
    /// Manager endpoint (tests; operators use `AWS_ENDPOINT_URL_SECRETS_MANAGER`).
    pub fn new(
        name: &str,
        config: &AwsSecretsManagerConfig,
        endpoint: Option<String>,
    ) -> Result<Self, String> {
        if config.region.is_empty() {
            return Err(format!(
                "plugins.SVIDStore.{name}: region is required: set region = \"<aws region>\""
            ));
        }
        let static_credentials = (!config.access_key_id.is_empty()
            && !config.secret_access_key.is_empty())
        .then(|| Credentials {
            access_key_id: config.access_key_id.clone(),
            secret_access_key: config.secret_access_key.clone().into(),
            session_token: None,
            expires_at: None,
        });
        let client = AwsClient::new(AwsConfig {
            region: config.region.clone(),
            static_credentials,
            assume_role_arn: None,
            endpoint,
            sts_endpoint: None,
        })
        .map_err(|e| format!("failed to create secrets manager client: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            client,
        })
    }

    async fn describe(&self, secret_id: &str) -> Result<Option<Value>, SvidStoreError> {
        match self
            .client
            .json(
                SECRETS_MANAGER,
                "DescribeSecret",
                &json!({ "SecretId": secret_id }),
            )
            .await
        {
            Ok(description) => Ok(Some(description)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(failed("failed to describe secret", &e)),
        }
    }
}

#[async_trait]
impl SvidStore for AwsSecretsManager {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put_x509_svid(&self, svid: PutX509Svid) -> Result<(), SvidStoreError> {
        let options = SecretOptions::from_metadata(&svid.metadata)?;
        let data = SecretData {
            spiffe_id: svid.spiffe_id.to_string(),
            x509_svid: pem_chain(&svid.cert_chain),
            x509_svid_key: spire_core::pem::encode("PRIVATE KEY", svid.key.pkcs8_der()),
            bundle: pem_chain(&svid.bundle),
            federated_bundles: svid
                .federated_bundles
                .iter()
                .map(|(td, certs)| (td.clone(), pem_chain(certs)))
                .collect(),
        };
        let binary = serde_json::to_vec(&data).map_err(|e| {
            SvidStoreError::Failed(format!("svidstore({NAME}): failed to parse payload: {e}"))
        })?;
        let binary = base64::engine::general_purpose::STANDARD.encode(binary);
        let secret_id = options.secret_id();
        let Some(description) = self.describe(secret_id).await? else {
            if options.name.is_empty() {
                return Err(SvidStoreError::InvalidArgument(format!(
                    "svidstore({NAME}): failed to create secret: name selector is required"
                )));
            }
            let mut input = json!({
                "Name": options.name,
                "Tags": [{ "Key": "spire-svid", "Value": "true" }],
                "SecretBinary": binary,
            });
            if !options.kms_key_id.is_empty() {
                input["KmsKeyId"] = json!(options.kms_key_id);
            }
            self.client
                .json(SECRETS_MANAGER, "CreateSecret", &input)
                .await
                .map_err(|e| failed("failed to create secret", &e))?;
            tracing::debug!(name = %options.name, "Secret created");
            return Ok(());
        };
        check_tag(&description)?;
        let arn = description["ARN"].as_str().unwrap_or(secret_id).to_owned();
        if !description["DeletedDate"].is_null() {
            self.client
                .json(
                    SECRETS_MANAGER,
                    "RestoreSecret",
                    &json!({ "SecretId": arn }),
                )
                .await
                .map_err(|e| failed(&format!("failed to restore secret {secret_id:?}"), &e))?;
        }
        self.client
            .json(
                SECRETS_MANAGER,
                "PutSecretValue",
                &json!({ "SecretId": arn, "SecretBinary": binary }),
            )
            .await
            .map_err(|e| failed("failed to put secret value", &e))?;
        tracing::debug!(arn = %arn, "Secret value updated");
        Ok(())
    }

    async fn delete_x509_svid(&self, metadata: &[String]) -> Result<(), SvidStoreError> {
        let options = SecretOptions::from_metadata(metadata)?;
        let secret_id = options.secret_id();
        let Some(description) = self.describe(secret_id).await? else {
            tracing::warn!(secret_id, "Secret not found");
            return Ok(());
        };
        check_tag(&description)?;
        let arn = description["ARN"].as_str().unwrap_or(secret_id).to_owned();
        self.client
            .json(
                SECRETS_MANAGER,
                "DeleteSecret",
                &json!({ "SecretId": arn, "RecoveryWindowInDays": 7 }),
            )
            .await
            .map_err(|e| failed(&format!("failed to delete secret {secret_id:?}"), &e))?;
        tracing::debug!(arn = %arn, "Secret deleted");
        Ok(())
    }
}
