//! OAuth access tokens for the Compute Engine API, found as Google's client libraries find
//! them (what upstream's `use_instance_metadata` relies on): the `service_account_file` key,
//! else the file `GOOGLE_APPLICATION_CREDENTIALS` names, else the metadata server of the VM
//! the server runs on (`GCE_METADATA_HOST` overrides `metadata.google.internal`, as in
//! Google's libraries). A service account key signs a JWT-bearer assertion exchanged at the
//! key's `token_uri`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use spire_common::cloud_http::CloudHttpClient;
use spire_core::jws;
use spire_core::jwt::JwtAlgorithm;
use spire_core::keys::PrivateKey;

/// The scope asked for: read access to Compute Engine is all the attestor needs.
const SCOPE: &str = "https://www.googleapis.com/auth/compute.readonly";

/// The metadata server unless `GCE_METADATA_HOST` names another.
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A service account key file.
    KeyFile(PathBuf),
    /// The metadata server at this `host[:port]`.
    MetadataServer(String),
}

impl Source {
    /// The source for `service_account_file` (empty: Application Default Credentials).
    pub fn resolve(service_account_file: Option<&str>) -> Self {
        if let Some(file) = service_account_file.filter(|f| !f.is_empty()) {
            return Self::KeyFile(file.into());
        }
        if let Some(file) =
            std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|f| !f.is_empty())
        {
            return Self::KeyFile(file.into());
        }
        let host = std::env::var("GCE_METADATA_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
        Self::MetadataServer(host)
    }

    /// A fresh access token.
    pub async fn access_token(&self, http: &CloudHttpClient) -> Result<String, String> {
        match self {
            Self::KeyFile(path) => key_file_token(http, path).await,
            Self::MetadataServer(host) => {
                let url = format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                );
                let body = http
                    .get(&url, &[("Metadata-Flavor", "Google")])
                    .await?
                    .ok_body()
                    .map_err(|e| format!("metadata server token: {e}"))?;
                token_from(&body)
            }
        }
    }
}

/// The fields of a service account key file the exchange needs.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    token_uri: String,
}

async fn key_file_token(http: &CloudHttpClient, path: &Path) -> Result<String, String> {
    let shown = path.display();
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read credentials file {shown}: {e}"))?;
    let key: KeyFile = serde_json::from_slice(&text)
        .map_err(|e| format!("credentials file {shown} is not a key file: {e}"))?;
    if key.kind != "service_account" {
        return Err(format!(
            "credentials file {shown} has type {:?}; only \"service_account\" keys are supported",
            key.kind
        ));
    }
    if key.client_email.is_empty() || key.token_uri.is_empty() {
        return Err(format!(
            "credentials file {shown} lacks client_email or token_uri"
        ));
    }
    let private = PrivateKey::from_pem(&key.private_key)
        .map_err(|e| format!("private_key of {shown}: {e}"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from(key.client_email.as_str()));
    claims.insert("scope".into(), Value::from(SCOPE));
    claims.insert("aud".into(), Value::from(key.token_uri.as_str()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + 3600));
    let kid = (!key.private_key_id.is_empty()).then_some(key.private_key_id.as_str());
    let assertion = jws::sign(&private, JwtAlgorithm::Rs256, kid, &claims)
        .map_err(|e| format!("cannot sign the token request with {shown}: {e}"))?;
    let body = http
        .post_form(
            &key.token_uri,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion),
            ],
        )
        .await?
        .ok_body()
        .map_err(|e| format!("token exchange at {}: {e}", key.token_uri))?;
    token_from(&body)
}

fn token_from(body: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Token {
        #[serde(default)]
        access_token: String,
    }
    let token: Token = serde_json::from_slice(body)
        .map_err(|e| format!("unable to decode token response: {e}"))?;
    if token.access_token.is_empty() {
        return Err("token response missing access_token".into());
    }
    Ok(token.access_token)
}
