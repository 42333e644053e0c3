//! The `aws_kms` KeyManager: the CA and JWT keys are AWS KMS keys, which never leave KMS;
//! every signature is a `kms:Sign` of a digest. Upstream's keys and behaviour
//! (`doc/plugin_server_keymanager_aws_kms.md`):
//!
//! - a key is created with `CreateKey` (`SIGN_VERIFY`, the key spec of its type, description
//!   `SPIRE_SERVER_KEY/<trust domain>/<key id>`, the `key_policy_file` policy or upstream's
//!   default one) and named by the alias `alias/SPIRE_SERVER/<trust domain>/<server id>/<key
//!   id>` (dots of the trust domain as `_`, `.`/`+` of the key ID as `_2e`/`_2b`);
//! - the server ID comes from `key_identifier_value`, or from `key_identifier_file` (a UUID
//!   created on first start), so a restarted server finds its keys through their aliases;
//! - a key replaced under the same ID has its alias moved and the old key scheduled for
//!   deletion (7 days); aliases are refreshed every 6 hours, aliases of other servers of the
//!   trust domain not refreshed for two weeks are deleted with their keys (daily), and keys of
//!   the trust domain left without an alias for 48 hours are deleted (every 48 hours).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use spire_common::aws::client::{KMS, STS};
use spire_common::aws::{AwsClient, AwsConfig, AwsError, Credentials};
use spire_core::config::de;
use spire_core::keys::{HashAlgorithm, KeyType, PublicKey, SignatureScheme};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::{KeyManager, KeyManagerError, RemoteKey, RemoteSigner, SigningKey, check_key_id};

mod maintenance;
use crate::config::ConfigError;

/// The plugin's name in configs.
pub const NAME: &str = "aws_kms";

const ALIAS_PREFIX: &str = "alias/SPIRE_SERVER/";
const REFRESH_ALIASES_EVERY: Duration = Duration::from_secs(6 * 3600);
const DISPOSE_ALIASES_EVERY: Duration = Duration::from_secs(24 * 3600);
const ALIAS_THRESHOLD: Duration = Duration::from_secs(14 * 24 * 3600);
const DISPOSE_KEYS_EVERY: Duration = Duration::from_secs(48 * 3600);
const KEY_THRESHOLD: Duration = Duration::from_secs(48 * 3600);
/// The largest message `kms:Sign` takes as RAW.
const MAX_RAW_MESSAGE: usize = 4096;
/// Keys waiting for `ScheduleKeyDeletion` (upstream's channel size).
const DELETE_QUEUE: usize = 120;

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    access_key_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    secret_access_key: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    region: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    key_identifier_file: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    key_identifier_value: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    key_policy_file: Option<String>,
}

/// Where the server ID (the alias component that tells this server's keys apart) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerId {
    /// `key_identifier_file`: a UUID read from the file, created when missing.
    File(PathBuf),
    /// `key_identifier_value`.
    Value(String),
}

/// The validated `plugin_data`.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsKmsConfig {
    /// `region` (required).
    pub region: String,
    /// `access_key_id` and `secret_access_key`; else the usual AWS credential sources.
    pub credentials: Option<(String, String)>,
    /// `key_identifier_file` or `key_identifier_value`.
    pub server_id: ServerId,
    /// `key_policy_file`: the key policy of created keys, else upstream's default.
    pub key_policy_file: Option<PathBuf>,
}

impl std::fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("region", &self.region)
            .field("server_id", &self.server_id)
            .field("key_policy_file", &self.key_policy_file)
            .finish_non_exhaustive()
    }
}

impl AwsKmsConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`, as upstream's `buildConfig`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: &str| {
            ConfigError::invalid(file, format!("{path}.{key}"), message.to_owned())
        };
        let region = data
            .region
            .filter(|r| !r.is_empty())
            .ok_or_else(|| invalid("region", "configuration is missing a region"))?;
        let value = data.key_identifier_value.filter(|v| !v.is_empty());
        let id_file = data.key_identifier_file.filter(|v| !v.is_empty());
        if let Some(value) = &value {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-');
            if !value.chars().all(allowed) {
                return Err(invalid(
                    "key_identifier_value",
                    "Key identifier must contain only alphanumeric characters, forward slashes \
                     (/), underscores (_), and dashes (-)",
                ));
            }
            if value.starts_with("alias/aws/") {
                return Err(invalid(
                    "key_identifier_value",
                    "Key identifier must not start with alias/aws/",
                ));
            }
            if value.len() > 256 {
                return Err(invalid(
                    "key_identifier_value",
                    "Key identifier must not be longer than 256 characters",
                ));
            }
        }
        let server_id = match (id_file, value) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "key_identifier_value",
                    "configuration can't have a key identifier file and a key identifier value \
                     at the same time",
                ));
            }
            (Some(f), None) => ServerId::File(PathBuf::from(f)),
            (None, Some(v)) => ServerId::Value(v),
            (None, None) => {
                return Err(invalid(
                    "key_identifier_file",
                    "configuration requires a key identifier file or a key identifier value",
                ));
            }
        };
        let credentials = match (
            data.access_key_id.filter(|v| !v.is_empty()),
            data.secret_access_key.filter(|v| !v.is_empty()),
        ) {
            (Some(id), Some(secret)) => Some((id, secret)),
            _ => None,
        };
        Ok(Self {
            region,
            credentials,
            server_id,
            key_policy_file: data
                .key_policy_file
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        })
    }
}

fn error(message: impl std::fmt::Display) -> KeyManagerError {
    KeyManagerError::Key(format!("keymanager(aws_kms): {message}"))
}

/// A key of this server in KMS.
#[derive(Debug, Clone)]
struct KeyEntry {
    arn: String,
    alias_name: String,
    public: PublicKey,
    fingerprint: String,
}

/// What the signing path and the background tasks share.
struct Kms {
    client: AwsClient,
    trust_domain: String,
    server_id: String,
    entries: RwLock<HashMap<String, KeyEntry>>,
    /// The key policy: `None` until decided; `Some(None)` means KMS's default policy.
    key_policy: Mutex<Option<Option<String>>>,
    delete_tx: mpsc::Sender<String>,
}

/// Keys in AWS KMS; background tasks stop when this is dropped.
pub struct AwsKmsKeyManager {
    kms: Arc<Kms>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for AwsKmsKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsKeyManager")
            .field("trust_domain", &self.kms.trust_domain)
            .field("server_id", &self.kms.server_id)
            .finish_non_exhaustive()
    }
}

impl Drop for AwsKmsKeyManager {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl AwsKmsKeyManager {
    /// Configures the plugin as upstream's `Configure`: reads the key policy and server ID,
    /// then loads this server's keys from their aliases. `endpoint` overrides the KMS/STS
    /// endpoint (tests; operators use `AWS_ENDPOINT_URL`). Must run inside a Tokio runtime
    /// (the background tasks are spawned on it).
    pub async fn open(
        config: &AwsKmsConfig,
        trust_domain: &str,
        endpoint: Option<String>,
    ) -> Result<Self, KeyManagerError> {
        let key_policy = match &config.key_policy_file {
            Some(path) => Some(Some(std::fs::read_to_string(path).map_err(|e| {
                error(format!(
                    "failed to read file configured in 'key_policy_file' ({}): {e}",
                    path.display()
                ))
            })?)),
            None => None,
        };
        let server_id = match &config.server_id {
            ServerId::Value(v) => v.clone(),
            ServerId::File(path) => server_id_from_file(path)?,
        };
        tracing::debug!(server_id = %server_id, "Loaded server id");
        let client = AwsClient::new(AwsConfig {
            region: config.region.clone(),
            static_credentials: config
                .credentials
                .as_ref()
                .map(|(id, secret)| Credentials::new(id, secret, None)),
            assume_role_arn: None,
            endpoint,
            sts_endpoint: None,
        })
        .map_err(|e| error(format!("failed to create client configuration: {e}")))?;
        let (delete_tx, delete_rx) = mpsc::channel(DELETE_QUEUE);
        let kms = Arc::new(Kms {
            client,
            trust_domain: trust_domain.to_owned(),
            server_id,
            entries: RwLock::new(HashMap::new()),
            key_policy: Mutex::new(key_policy),
            delete_tx,
        });
        tracing::debug!("Fetching key aliases from KMS");
        let entries = kms.fetch_key_entries().await?;
        for entry in entries.values() {
            tracing::debug!(key_arn = %entry.arn, alias_name = %entry.alias_name, "Key loaded");
        }
        *kms.entries.write().unwrap_or_else(PoisonError::into_inner) = entries;
        let cancel = CancellationToken::new();
        tokio::spawn(Arc::clone(&kms).schedule_delete_task(delete_rx, cancel.clone()));
        tokio::spawn(Arc::clone(&kms).periodic_tasks(cancel.clone()));
        Ok(Self { kms, cancel })
    }

    /// The server ID in this server's aliases.
    pub fn server_id(&self) -> &str {
        &self.kms.server_id
    }

    /// Runs upstream's 6-hourly alias refresh now (every alias of this server re-pointed at
    /// its key, so other servers see the keys are in use).
    pub async fn refresh_aliases_now(&self) -> Result<(), KeyManagerError> {
        self.kms.refresh_aliases().await
    }

    /// Runs upstream's daily disposal of stale aliases of other servers now, as if at `now`.
    pub async fn dispose_aliases_at(&self, now: SystemTime) -> Result<(), KeyManagerError> {
        self.kms.dispose_aliases(now).await
    }

    /// Runs upstream's disposal of this trust domain's keys without an alias now, as if at
    /// `now`.
    pub async fn dispose_keys_at(&self, now: SystemTime) -> Result<(), KeyManagerError> {
        self.kms.dispose_keys(now).await
    }
}

/// Reads the server ID from `path` (it must be a UUID), or creates one there.
fn server_id_from_file(path: &Path) -> Result<String, KeyManagerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => uuid::Uuid::parse_str(text.trim())
            .map(|u| u.to_string())
            .map_err(|e| {
                error(format!(
                    "failed to parse server id from path {}: {e}",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            spire_common::fs::atomic_write_private(path, id.as_bytes()).map_err(|e| {
                error(format!(
                    "failed to persist server id on path {}: {e}",
                    path.display()
                ))
            })?;
            Ok(id)
        }
        Err(e) => Err(error(format!(
            "failed to read server id from path {}: {e}",
            path.display()
        ))),
    }
}

fn sanitize_trust_domain(trust_domain: &str) -> String {
    trust_domain.replace('.', "_")
}

/// KMS aliases may not hold `.` or `+` (upstream's `encodeKeyID`).
fn encode_key_id(id: &str) -> String {
    id.replace('.', "_2e").replace('+', "_2b")
}

fn decode_key_id(id: &str) -> String {
    id.replace("_2e", ".").replace("_2b", "+")
}

fn key_spec(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::EcP256 => "ECC_NIST_P256",
        KeyType::EcP384 => "ECC_NIST_P384",
        KeyType::Rsa2048 => "RSA_2048",
        KeyType::Rsa4096 => "RSA_4096",
    }
}

fn key_type_of_spec(spec: &str) -> Option<KeyType> {
    KeyType::ALL.into_iter().find(|t| key_spec(*t) == spec)
}

/// The `SigningAlgorithm` for a key type and scheme, as upstream's `signingAlgorithmForKMS`.
fn signing_algorithm(key_type: KeyType, scheme: SignatureScheme) -> Option<&'static str> {
    use HashAlgorithm::{Sha256, Sha384, Sha512};
    Some(match (key_type, scheme.hash, scheme.pss) {
        (KeyType::EcP256, Sha256, false) => "ECDSA_SHA_256",
        (KeyType::EcP384, Sha384, false) => "ECDSA_SHA_384",
        (KeyType::Rsa2048 | KeyType::Rsa4096, Sha256, false) => "RSASSA_PKCS1_V1_5_SHA_256",
        (KeyType::Rsa2048 | KeyType::Rsa4096, Sha384, false) => "RSASSA_PKCS1_V1_5_SHA_384",
        (KeyType::Rsa2048 | KeyType::Rsa4096, Sha512, false) => "RSASSA_PKCS1_V1_5_SHA_512",
        (KeyType::Rsa2048 | KeyType::Rsa4096, Sha256, true) => "RSASSA_PSS_SHA_256",
        (KeyType::Rsa2048 | KeyType::Rsa4096, Sha384, true) => "RSASSA_PSS_SHA_384",
        (KeyType::Rsa2048 | KeyType::Rsa4096, Sha512, true) => "RSASSA_PSS_SHA_512",
        _ => return None,
    })
}

/// SHA-256 of the SPKI, lowercase hex (upstream's `makeFingerprint`).
fn fingerprint(spki: &[u8]) -> String {
    hex::encode(HashAlgorithm::Sha256.digest(spki))
}

fn str_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// A KMS timestamp (seconds since the epoch, fractional) as a time.
fn timestamp(value: Option<&Value>) -> Option<SystemTime> {
    let secs = value?.as_f64()?;
    (secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// The role name of an assumed-role ARN (`arn:aws:sts::<acct>:assumed-role/<role>/<session>`).
fn role_name_from_arn(arn: &str) -> Result<&str, String> {
    let last = arn.rsplit(':').next().unwrap_or_default();
    let mut resource = last.split('/');
    let (Some(kind), Some(name)) = (resource.next(), resource.next()) else {
        return Err(format!(
            "incomplete resource, expected 'resource-type/resource-id' but got {last:?}"
        ));
    };
    if kind != "assumed-role" {
        return Err(format!("arn does not contain an assumed role: {arn:?}"));
    }
    Ok(name)
}

impl Kms {
    fn alias_prefix_for_trust_domain(&self) -> String {
        format!(
            "{ALIAS_PREFIX}{}",
            sanitize_trust_domain(&self.trust_domain)
        )
    }

    fn alias_prefix_for_server(&self) -> String {
        format!(
            "{}/{}",
            self.alias_prefix_for_trust_domain(),
            self.server_id
        )
    }

    fn alias_for(&self, key_id: &str) -> String {
        format!(
            "{}/{}",
            self.alias_prefix_for_server(),
            encode_key_id(key_id)
        )
    }

    fn description_prefix(&self) -> String {
        format!(
            "SPIRE_SERVER_KEY/{}",
            sanitize_trust_domain(&self.trust_domain)
        )
    }

    async fn call(&self, action: &str, body: Value) -> Result<Value, AwsError> {
        self.client.json(KMS, action, &body).await
    }

    /// Every alias, following `NextMarker`.
    async fn list_aliases(&self) -> Result<Vec<Value>, AwsError> {
        let mut aliases = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut body = json!({ "Limit": 100 });
            if let Some(m) = &marker {
                body["Marker"] = json!(m);
            }
            let page = self.call("ListAliases", body).await?;
            if let Some(items) = page.get("Aliases").and_then(Value::as_array) {
                aliases.extend(items.iter().cloned());
            }
            marker = str_field(&page, "NextMarker").map(str::to_owned);
            let truncated = page.get("Truncated").and_then(Value::as_bool) == Some(true);
            if !truncated || marker.is_none() {
                return Ok(aliases);
            }
        }
    }

    /// This server's keys, found through their aliases (upstream's `fetchKeyEntries`).
    async fn fetch_key_entries(&self) -> Result<HashMap<String, KeyEntry>, KeyManagerError> {
        let aliases = self
            .list_aliases()
            .await
            .map_err(|e| error(format!("failed to fetch aliases: {e}")))?;
        tracing::debug!(num_aliases = aliases.len(), "Found aliases");
        let prefix = format!("{}/", self.alias_prefix_for_server());
        let mut entries = HashMap::new();
        for alias in aliases {
            let Some(name) = str_field(&alias, "AliasName") else {
                continue;
            };
            let Some(encoded) = name.strip_prefix(&prefix) else {
                continue;
            };
            let key_id = decode_key_id(encoded);
            let Some(alias_arn) = str_field(&alias, "AliasArn") else {
                return Err(error(format!(
                    "failed to fetch aliases: found SPIRE alias without arn: name={name:?}"
                )));
            };
            if str_field(&alias, "TargetKeyId").is_none() {
                return Err(error(format!(
                    "failed to fetch aliases: found SPIRE alias without key: name={name:?} \
                     arn={alias_arn:?}"
                )));
            }
            let entry = self.key_entry_details(name, alias_arn).await?;
            entries.insert(key_id, entry);
        }
        Ok(entries)
    }

    async fn key_entry_details(
        &self,
        alias_name: &str,
        alias_arn: &str,
    ) -> Result<KeyEntry, KeyManagerError> {
        let fail = |m: String| error(format!("failed to fetch aliases: {m}"));
        let described = self
            .call("DescribeKey", json!({ "KeyId": alias_arn }))
            .await
            .map_err(|e| fail(format!("failed to describe key: {e}")))?;
        let metadata = described
            .get("KeyMetadata")
            .ok_or_else(|| fail("malformed describe key response".into()))?;
        let arn = str_field(metadata, "Arn")
            .ok_or_else(|| fail(format!("found SPIRE alias without key arn: {alias_arn:?}")))?;
        if metadata.get("Enabled").and_then(Value::as_bool) != Some(true) {
            return Err(fail(format!(
                "found disabled SPIRE key: {arn:?}, alias: {alias_arn:?}"
            )));
        }
        let spec = str_field(metadata, "KeySpec")
            .or_else(|| str_field(metadata, "CustomerMasterKeySpec"))
            .unwrap_or_default();
        let key_type =
            key_type_of_spec(spec).ok_or_else(|| fail(format!("unsupported key spec: {spec}")))?;
        let public = self.public_key(alias_arn).await.map_err(fail)?;
        if public.key_type() != key_type {
            return Err(fail(format!(
                "public key of {arn:?} is not of its key spec {spec}"
            )));
        }
        let fingerprint = fingerprint(public.spki_der());
        Ok(KeyEntry {
            arn: arn.to_owned(),
            alias_name: alias_name.to_owned(),
            public,
            fingerprint,
        })
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKey, String> {
        let answer = self
            .call("GetPublicKey", json!({ "KeyId": key_id }))
            .await
            .map_err(|e| format!("failed to get public key: {e}"))?;
        let der = str_field(&answer, "PublicKey")
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|d| !d.is_empty())
            .ok_or("malformed get public key response")?;
        PublicKey::from_spki_der(&der).map_err(|e| format!("unusable public key: {e}"))
    }

    /// The key policy for new keys: the configured one, else upstream's default for the
    /// role the server runs as (none when it has not assumed a role).
    async fn key_policy(&self) -> Result<Option<String>, KeyManagerError> {
        let mut cached = self.key_policy.lock().await;
        if let Some(policy) = cached.as_ref() {
            return Ok(policy.clone());
        }
        let fail = |m: String| error(format!("unable to create policy: {m}"));
        let xml = self
            .client
            .query(STS, "GetCallerIdentity", &[])
            .await
            .map_err(|e| fail(format!("cannot get caller identity: {e}")))?;
        let doc = roxmltree::Document::parse(&xml)
            .map_err(|e| fail(format!("cannot get caller identity: {e}")))?;
        let text = |tag: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        let (Some(account), Some(arn)) = (text("Account"), text("Arn")) else {
            return Err(fail("cannot get caller identity: no Account or Arn".into()));
        };
        let policy = match role_name_from_arn(&arn) {
            Ok(role) => Some(default_policy(&account, role)),
            Err(reason) => {
                tracing::warn!(
                    reason = %reason,
                    "In a future version of SPIRE, it will be mandatory for the SPIRE servers to \
                     assume an AWS IAM Role when using the default AWS KMS key policy. Please \
                     assign an IAM role to this SPIRE Server instance."
                );
                None
            }
        };
        *cached = Some(policy.clone());
        Ok(policy)
    }

    async fn create_key(
        &self,
        key_id: &str,
        key_type: KeyType,
    ) -> Result<KeyEntry, KeyManagerError> {
        let mut body = json!({
            "Description": format!("{}/{key_id}", self.description_prefix()),
            "KeyUsage": "SIGN_VERIFY",
            "KeySpec": key_spec(key_type),
        });
        if let Some(policy) = self.key_policy().await? {
            body["Policy"] = json!(policy);
        }
        let created = self
            .call("CreateKey", body)
            .await
            .map_err(|e| error(format!("failed to create key: {e}")))?;
        let arn = created
            .get("KeyMetadata")
            .and_then(|m| str_field(m, "Arn"))
            .ok_or_else(|| error("malformed create key response"))?
            .to_owned();
        tracing::debug!(key_arn = %arn, "Key created");
        let public = self.public_key(&arn).await.map_err(error)?;
        let fingerprint = fingerprint(public.spki_der());
        Ok(KeyEntry {
            arn,
            alias_name: self.alias_for(key_id),
            public,
            fingerprint,
        })
    }

    fn enqueue_delete(&self, arn: &str) {
        match self.delete_tx.try_send(arn.to_owned()) {
            Ok(()) => tracing::debug!(key_arn = %arn, "Key enqueued for deletion"),
            Err(_) => tracing::error!(key_arn = %arn, "Failed to enqueue key for deletion"),
        }
    }
}

/// Upstream's default key policy: full access for the server's role, read access for the
/// account (so the KMS console can show the key).
fn default_policy(account: &str, role: &str) -> String {
    format!(
        r#"
{{
	"Version": "2012-10-17",
	"Statement": [
		{{
			"Sid": "Allow full access to the SPIRE Server role",
			"Effect": "Allow",
			"Principal": {{
				"AWS": "arn:aws:iam::{account}:role/{role}"
			}},
			"Action": "kms:*",
			"Resource": "*"
		}},
		{{
			"Sid": "Allow KMS console to display the key and policy",
			"Effect": "Allow",
			"Principal": {{
			    "AWS": "arn:aws:iam::{account}:root"
			}},
			"Action": [
				"kms:Describe*",
				"kms:List*",
				"kms:Get*"
			],
			"Resource": "*"
		}}
	]
}}"#
    )
}

#[async_trait]
impl RemoteSigner for Kms {
    async fn sign(
        &self,
        key_id: &str,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<(Vec<u8>, String), KeyManagerError> {
        let entry = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key_id)
            .cloned()
            .ok_or_else(|| error(format!("key {key_id:?} not found")))?;
        let algorithm = signing_algorithm(entry.public.key_type(), scheme).ok_or_else(|| {
            error(format!(
                "unsupported combination of keytype: {} and hashing algorithm: {:?}",
                entry.public.key_type(),
                scheme.hash
            ))
        })?;
        // KMS hashes a RAW message of up to 4096 bytes itself (every certificate and token
        // the CA signs fits); a longer one goes as its DIGEST, as upstream sends everything.
        let (message, message_type) = if message.len() <= MAX_RAW_MESSAGE {
            (message.to_vec(), "RAW")
        } else {
            (scheme.hash.digest(message), "DIGEST")
        };
        let answer = self
            .call(
                "Sign",
                json!({
                    "KeyId": entry.arn,
                    "Message": STANDARD.encode(message),
                    "MessageType": message_type,
                    "SigningAlgorithm": algorithm,
                }),
            )
            .await
            .map_err(|e| error(format!("failed to sign: {e}")))?;
        let signature = str_field(&answer, "Signature")
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| error("failed to sign: no signature in the answer"))?;
        Ok((signature, entry.fingerprint))
    }
}

#[async_trait]
impl KeyManager for AwsKmsKeyManager {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<SigningKey, KeyManagerError> {
        check_key_id(id)?;
        let kms = &self.kms;
        let entry = kms.create_key(id, key_type).await?;
        let old = kms
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        let body = json!({ "AliasName": entry.alias_name, "TargetKeyId": entry.arn });
        match &old {
            None => {
                kms.call("CreateAlias", body)
                    .await
                    .map_err(|e| error(format!("failed to create alias: {e}")))?;
                tracing::debug!(alias_name = %entry.alias_name, key_arn = %entry.arn, "Alias created");
            }
            Some(old) => {
                kms.call("UpdateAlias", body)
                    .await
                    .map_err(|e| error(format!("failed to update alias: {e}")))?;
                tracing::debug!(alias_name = %entry.alias_name, key_arn = %entry.arn, "Alias updated");
                kms.enqueue_delete(&old.arn);
            }
        }
        let key = RemoteKey::new(
            id,
            entry.public.clone(),
            entry.fingerprint.clone(),
            Arc::clone(kms) as Arc<dyn RemoteSigner>,
        );
        kms.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), entry);
        Ok(SigningKey::Remote(key))
    }

    async fn get_key(&self, id: &str) -> Result<Option<SigningKey>, KeyManagerError> {
        let entry = self
            .kms
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        Ok(entry.map(|e| {
            SigningKey::Remote(RemoteKey::new(
                id,
                e.public,
                e.fingerprint,
                Arc::clone(&self.kms) as Arc<dyn RemoteSigner>,
            ))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(data: Data) -> Result<AwsKmsConfig, ConfigError> {
        AwsKmsConfig::from_data(
            "server.conf",
            "plugins.KeyManager.aws_kms.plugin_data",
            data,
        )
    }

    #[test]
    fn configuration_is_checked_as_upstream() {
        let ok = config(Data {
            region: Some("us-east-1".into()),
            key_identifier_value: Some("server-1".into()),
            ..Data::default()
        })
        .unwrap();
        assert_eq!(ok.server_id, ServerId::Value("server-1".into()));
        let cases = [
            (
                Data {
                    key_identifier_value: Some("x".into()),
                    ..Data::default()
                },
                "missing a region",
            ),
            (
                Data {
                    region: Some("r".into()),
                    ..Data::default()
                },
                "requires a key identifier file or a key identifier value",
            ),
            (
                Data {
                    region: Some("r".into()),
                    key_identifier_value: Some("a b".into()),
                    ..Data::default()
                },
                "only alphanumeric",
            ),
            (
                Data {
                    region: Some("r".into()),
                    key_identifier_value: Some("alias/aws/x".into()),
                    ..Data::default()
                },
                "must not start with alias/aws/",
            ),
            (
                Data {
                    region: Some("r".into()),
                    key_identifier_value: Some("x".repeat(257)),
                    ..Data::default()
                },
                "longer than 256",
            ),
            (
                Data {
                    region: Some("r".into()),
                    key_identifier_value: Some("x".into()),
                    key_identifier_file: Some("/f".into()),
                    ..Data::default()
                },
                "at the same time",
            ),
        ];
        for (data, want) in cases {
            let err = config(data).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(
                err.contains("plugins.KeyManager.aws_kms.plugin_data"),
                "{err}"
            );
        }
    }

    #[test]
    fn key_ids_are_encoded_in_aliases_as_upstream() {
        assert_eq!(encode_key_id("x509-CA-A"), "x509-CA-A");
        assert_eq!(encode_key_id("a.b+c"), "a_2eb_2bc");
        assert_eq!(decode_key_id("a_2eb_2bc"), "a.b+c");
        assert_eq!(sanitize_trust_domain("example.org"), "example_org");
    }

    #[test]
    fn signing_algorithms_follow_key_type_and_scheme() {
        let s = |hash, pss| SignatureScheme { hash, pss };
        assert_eq!(
            signing_algorithm(KeyType::EcP256, s(HashAlgorithm::Sha256, false)),
            Some("ECDSA_SHA_256")
        );
        assert_eq!(
            signing_algorithm(KeyType::EcP384, s(HashAlgorithm::Sha384, false)),
            Some("ECDSA_SHA_384")
        );
        assert_eq!(
            signing_algorithm(KeyType::EcP256, s(HashAlgorithm::Sha384, false)),
            None
        );
        assert_eq!(
            signing_algorithm(KeyType::Rsa4096, s(HashAlgorithm::Sha256, false)),
            Some("RSASSA_PKCS1_V1_5_SHA_256")
        );
        assert_eq!(
            signing_algorithm(KeyType::Rsa2048, s(HashAlgorithm::Sha512, true)),
            Some("RSASSA_PSS_SHA_512")
        );
    }

    #[test]
    fn role_names_come_from_assumed_role_arns_only() {
        assert_eq!(
            role_name_from_arn("arn:aws:sts::123456789:assumed-role/the-role-name/i-0001"),
            Ok("the-role-name")
        );
        assert!(role_name_from_arn("arn:aws:sts::123456789012:user/moto").is_err());
        assert!(role_name_from_arn("arn:aws:iam::1:root").is_err());
    }
}
