//! The EC2 instance metadata service (IMDS): what the `aws_iid` agent attestor reads (the
//! instance identity document and its signatures) and where instance-role credentials come
//! from. IMDSv2 first (a session token from `PUT /latest/api/token`), falling back to IMDSv1
//! when the service answers the token request with 403, 404 or 405, as the AWS SDK does.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::credentials::Credentials;

/// Where IMDS listens on every EC2 instance.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// How long one IMDS request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest IMDS answer read.
const MAX_BODY: usize = 1 << 20;

/// Why IMDS could not answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImdsError(String);

/// A client of the instance metadata service.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: String,
    http: HyperClient<HttpConnector, Empty<Bytes>>,
}

impl Imds {
    /// A client of `endpoint` (`http://host:port`); empty: `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    /// or the link-local default.
    pub fn new(endpoint: &str) -> Self {
        let endpoint = if endpoint.is_empty() {
            std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
        } else {
            endpoint.to_owned()
        };
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// The default client (environment override or link-local address).
    pub fn from_env() -> Self {
        Self::new("")
    }

    /// The body of `GET /latest/<path>`.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let token = self.token().await?;
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("x-aws-ec2-metadata-token", token));
        }
        let (status, body) = self
            .send("GET", &format!("/latest/{path}"), &headers)
            .await?;
        if status != 200 {
            return Err(ImdsError(format!(
                "instance metadata service answered GET /latest/{path} with HTTP {status}"
            )));
        }
        Ok(body)
    }

    /// An IMDSv2 session token, or `None` when the service only speaks IMDSv1.
    async fn token(&self) -> Result<Option<String>, ImdsError> {
        let (status, body) = self
            .send(
                "PUT",
                "/latest/api/token",
                &[("x-aws-ec2-metadata-token-ttl-seconds", "21600".to_owned())],
            )
            .await?;
        match status {
            200 => Ok(Some(body.trim().to_owned())),
            403..=405 => Ok(None),
            other => Err(ImdsError(format!(
                "instance metadata service answered the IMDSv2 token request with HTTP {other}"
            ))),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<(u16, String), ImdsError> {
        let url = format!("{}{path}", self.endpoint);
        let mut request = http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ImdsError(format!("invalid instance metadata URL {url:?}: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ImdsError(format!("{method} {url} failed: {e:?}")))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ImdsError(format!("reading {url} failed: {e}")))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ImdsError(format!("{method} {url}: no answer in {TIMEOUT:?}")))?
    }

    /// The instance role's temporary credentials.
    pub async fn role_credentials(&self) -> Result<Credentials, ImdsError> {
        let roles = self.get("meta-data/iam/security-credentials/").await?;
        let role = roles
            .lines()
            .next()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ImdsError("the instance has no IAM role".into()))?;
        let text = self
            .get(&format!("meta-data/iam/security-credentials/{role}"))
            .await?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ImdsError(format!("instance role credentials are not JSON: {e}")))?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_str());
        let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
            return Err(ImdsError(
                "instance role credentials lack AccessKeyId/SecretAccessKey".into(),
            ));
        };
        let mut credentials = Credentials::new(id, secret, field("Token"));
        credentials.expires_at = field("Expiration").and_then(super::client::parse_time);
        Ok(credentials)
    }
}
