//! A small AWS API client: SigV4-signed requests in the three wire protocols the plugins
//! need — JSON (`awsJson1_1`: KMS, Secrets Manager, ACM PCA), Query (form body, XML answer:
//! EC2, IAM, STS, Auto Scaling) and REST-JSON (resource paths, JSON answer: EKS) — with
//! credentials from the usual sources, `assume_role` through STS, and the endpoint
//! overridable the way the AWS SDKs allow (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`,
//! or a plugin's own `endpoint` key).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::Mutex;

use super::credentials::{self, Credentials};
use super::imds::Imds;
use super::sigv4::{self, SignableRequest};

/// Largest answer read from an AWS API (DescribeInstances pages are far smaller).
const MAX_BODY: usize = 16 << 20;
/// How long one AWS API call may take (upstream uses 5 s per call; a loaded test machine
/// needs more).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An AWS service as the client needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// SigV4 signing name and endpoint prefix (`ec2`, `kms`, `acm-pca`, ...).
    pub name: &'static str,
    /// The `<SERVICE>` of `AWS_ENDPOINT_URL_<SERVICE>` (`EC2`, `SECRETS_MANAGER`, ...).
    pub env_id: &'static str,
    /// JSON protocol: the `X-Amz-Target` prefix; Query protocol: `None`.
    pub json_target: Option<&'static str>,
    /// Query protocol: the `Version` parameter.
    pub api_version: &'static str,
    /// Whether the service has one global endpoint signed for `us-east-1` (IAM).
    pub global: bool,
}

/// Amazon EC2 (Query protocol).
pub const EC2: Service = Service {
    name: "ec2",
    env_id: "EC2",
    json_target: None,
    api_version: "2016-11-15",
    global: false,
};
/// AWS IAM (Query protocol, global).
pub const IAM: Service = Service {
    name: "iam",
    env_id: "IAM",
    json_target: None,
    api_version: "2010-05-08",
    global: true,
};
/// AWS STS (Query protocol).
pub const STS: Service = Service {
    name: "sts",
    env_id: "STS",
    json_target: None,
    api_version: "2011-06-15",
    global: false,
};
/// Amazon EC2 Auto Scaling (Query protocol).
pub const AUTOSCALING: Service = Service {
    name: "autoscaling",
    env_id: "AUTO_SCALING",
    json_target: None,
    api_version: "2011-01-01",
    global: false,
};
/// Amazon EKS (REST-JSON protocol: no target, no version parameter).
pub const EKS: Service = Service {
    name: "eks",
    env_id: "EKS",
    json_target: None,
    api_version: "2017-11-01",
    global: false,
};
/// AWS KMS (JSON protocol).
pub const KMS: Service = Service {
    name: "kms",
    env_id: "KMS",
    json_target: Some("TrentService"),
    api_version: "2014-11-01",
    global: false,
};
/// AWS Secrets Manager (JSON protocol).
pub const SECRETS_MANAGER: Service = Service {
    name: "secretsmanager",
    env_id: "SECRETS_MANAGER",
    json_target: Some("secretsmanager"),
    api_version: "2017-10-17",
    global: false,
};
/// AWS Certificate Manager Private CA (JSON protocol).
pub const ACM_PCA: Service = Service {
    name: "acm-pca",
    env_id: "ACM_PCA",
    json_target: Some("ACMPrivateCA"),
    api_version: "2017-08-22",
    global: false,
};

/// Why an AWS call failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No credentials in any of the usual sources.
    #[error("no AWS credentials: {0}")]
    Credentials(String),
    /// The request could not be sent or the answer not read.
    #[error("{service} {action}: {message}")]
    Transport {
        /// Service name.
        service: &'static str,
        /// Operation.
        action: String,
        /// What happened.
        message: String,
    },
    /// AWS answered with an error.
    #[error("{service} {action}: {code}: {message} (HTTP {status})")]
    Api {
        /// Service name.
        service: &'static str,
        /// Operation.
        action: String,
        /// HTTP status.
        status: u16,
        /// AWS error code (`InvalidInstanceID.NotFound`, `ResourceNotFoundException`, ...).
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The answer was not what the operation returns.
    #[error("{service} {action}: unexpected answer: {message}")]
    Parse {
        /// Service name.
        service: &'static str,
        /// Operation.
        action: String,
        /// What was wrong.
        message: String,
    },
}

impl AwsError {
    /// The AWS error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Settings of one client.
#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    /// The region calls go to; empty: `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub region: String,
    /// Keys written in the plugin's configuration (they win over every other source).
    pub static_credentials: Option<Credentials>,
    /// A role to assume with the base credentials before calling.
    pub assume_role_arn: Option<String>,
    /// The plugin's own endpoint override (e.g. aws_pca's `endpoint`).
    pub endpoint: Option<String>,
    /// Where `AssumeRole` for `assume_role_arn` goes; `None`: the usual resolution
    /// (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, `sts.<region>.amazonaws.com`), as the
    /// AWS SDKs do even when the plugin's own service endpoint is overridden.
    pub sts_endpoint: Option<String>,
}

/// What came back from one HTTP exchange.
struct Answer {
    status: u16,
    /// `x-amzn-ErrorType` (REST-JSON services name their errors there).
    error_type: Option<String>,
    body: Vec<u8>,
}

/// One request to sign and send.
struct Call<'a> {
    service: Service,
    action: &'a str,
    method: &'a str,
    /// The resource path below the endpoint's own path (`/` for JSON and Query).
    path: &'a str,
    query: &'a [(String, String)],
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of one region's AWS services; cheap to clone.
#[derive(Clone)]
pub struct AwsClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: AwsConfig,
    region: String,
    http: HyperClient<Https, Full<Bytes>>,
    cached: Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for AwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsClient")
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

impl AwsClient {
    /// A client for `config`; fails only when the TLS roots cannot be loaded.
    pub fn new(config: AwsConfig) -> Result<Self, AwsError> {
        let region = if config.region.is_empty() {
            std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_default()
        } else {
            config.region.clone()
        };
        let mut tls = crate::http_get::system_roots_tls_config()
            .or_else(|_| empty_roots_tls_config())
            .map_err(|message| AwsError::Transport {
                service: "aws",
                action: "client set-up".into(),
                message,
            })?;
        // The connector sets ALPN itself (and refuses a configuration that has it).
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                region,
                http,
                cached: Mutex::new(None),
            }),
        })
    }

    /// The region calls go to.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// Calls a JSON-protocol operation with `body` and returns the decoded answer.
    pub async fn json(
        &self,
        service: Service,
        action: &str,
        body: &Value,
    ) -> Result<Value, AwsError> {
        let target = service.json_target.unwrap_or_default();
        let payload = serde_json::to_vec(body).map_err(|e| AwsError::Parse {
            service: service.name,
            action: action.to_owned(),
            message: e.to_string(),
        })?;
        let headers = vec![
            (
                "content-type".to_owned(),
                "application/x-amz-json-1.1".to_owned(),
            ),
            ("x-amz-target".to_owned(), format!("{target}.{action}")),
        ];
        let Answer {
            status,
            body: answer,
            ..
        } = self
            .call(Call {
                service,
                action,
                method: "POST",
                path: "/",
                query: &[],
                headers,
                body: payload,
            })
            .await?;
        let value: Value = if answer.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&answer).map_err(|e| AwsError::Parse {
                service: service.name,
                action: action.to_owned(),
                message: format!("not JSON: {e}"),
            })?
        };
        if status >= 300 {
            return Err(json_error(service, action, status, None, &value));
        }
        Ok(value)
    }

    /// Calls a Query-protocol operation with `params` and returns the XML answer.
    pub async fn query(
        &self,
        service: Service,
        action: &str,
        params: &[(String, String)],
    ) -> Result<String, AwsError> {
        let mut form = format!(
            "Action={}&Version={}",
            sigv4::encode(action),
            sigv4::encode(service.api_version)
        );
        for (k, v) in params {
            form.push('&');
            form.push_str(&sigv4::encode(k));
            form.push('=');
            form.push_str(&sigv4::encode(v));
        }
        let headers = vec![(
            "content-type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        )];
        let Answer {
            status,
            body: answer,
            ..
        } = self
            .call(Call {
                service,
                action,
                method: "POST",
                path: "/",
                query: &[],
                headers,
                body: form.into_bytes(),
            })
            .await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        if status >= 300 {
            let doc = roxmltree::Document::parse(&text).ok();
            let find = |name: &str| {
                doc.as_ref()
                    .and_then(|d| d.descendants().find(|n| n.has_tag_name(name)))
                    .and_then(|n| n.text())
                    .unwrap_or_default()
                    .to_owned()
            };
            return Err(AwsError::Api {
                service: service.name,
                action: action.to_owned(),
                status,
                code: find("Code"),
                message: find("Message"),
            });
        }
        Ok(text)
    }

    /// Calls a REST-JSON operation without a body (`GET` of `path`, whose segments are
    /// given unencoded, with `query`) and returns the decoded answer. `action` names the
    /// operation in errors. Segments are percent-encoded once in the URL and once in the
    /// signed canonical URI; AWS's rule for non-S3 services (encode the sent path again)
    /// gives the same text for the names EKS allows (letters, digits, `-`, `_`).
    pub async fn rest_json_get(
        &self,
        service: Service,
        action: &str,
        path: &[&str],
        query: &[(String, String)],
    ) -> Result<Value, AwsError> {
        let path: String = path.iter().map(|s| format!("/{s}")).collect();
        let Answer {
            status,
            error_type,
            body,
        } = self
            .call(Call {
                service,
                action,
                method: "GET",
                path: &path,
                query,
                headers: Vec::new(),
                body: Vec::new(),
            })
            .await?;
        let value: Option<Value> = if body.is_empty() {
            Some(Value::Object(Default::default()))
        } else {
            serde_json::from_slice(&body).ok()
        };
        if status >= 300 {
            let value = value.unwrap_or_default();
            return Err(json_error(
                service,
                action,
                status,
                error_type.as_deref(),
                &value,
            ));
        }
        value.ok_or_else(|| AwsError::Parse {
            service: service.name,
            action: action.to_owned(),
            message: "not JSON".into(),
        })
    }

    async fn call(&self, call: Call<'_>) -> Result<Answer, AwsError> {
        let Call {
            service,
            action,
            method,
            path: resource,
            query,
            mut headers,
            body,
        } = call;
        let transport = |message: String| AwsError::Transport {
            service: service.name,
            action: action.to_owned(),
            message,
        };
        let credentials = self.credentials().await?;
        let (endpoint, signing_region) = self.endpoint(service);
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| transport(format!("invalid endpoint {endpoint:?}: {e}")))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| transport(format!("endpoint {endpoint:?} has no host")))?;
        // The resource path goes below the endpoint's own path, if it has one.
        let path = match (uri.path().trim_end_matches('/'), resource) {
            ("", "/") => "/".to_owned(),
            (base, "/") => base.to_owned(),
            (base, resource) => format!("{base}{resource}"),
        };
        let encoded_path = path
            .split('/')
            .map(sigv4::encode)
            .collect::<Vec<_>>()
            .join("/");
        let encoded_query = query
            .iter()
            .map(|(k, v)| format!("{}={}", sigv4::encode(k), sigv4::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let target = match (uri.scheme_str(), encoded_query.is_empty()) {
            (scheme, true) => format!("{}://{host}{encoded_path}", scheme.unwrap_or("https")),
            (scheme, false) => format!(
                "{}://{host}{encoded_path}?{encoded_query}",
                scheme.unwrap_or("https")
            ),
        };
        let target: http::Uri = target
            .parse()
            .map_err(|e| transport(format!("invalid request URI {target:?}: {e}")))?;
        let amz_date = amz_date(SystemTime::now());
        headers.push(("host".to_owned(), host));
        headers.push(("x-amz-date".to_owned(), amz_date.clone()));
        if let Some(token) = &credentials.session_token {
            headers.push(("x-amz-security-token".to_owned(), token.clone()));
        }
        let authorization = sigv4::authorization(
            &SignableRequest {
                method,
                path: &path,
                query,
                headers: &headers,
                body: &body,
            },
            &credentials,
            &signing_region,
            service.name,
            &amz_date,
        );
        let mut request = http::Request::builder().method(method).uri(target);
        for (name, value) in &headers {
            if name != "host" {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let request = request
            .header("authorization", authorization)
            .header("user-agent", "spire-rs")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .inner
                .http
                .request(request)
                .await
                .map_err(|e| transport(format!("request to {endpoint} failed: {e:?}")))?;
            let status = response.status().as_u16();
            let error_type = response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer failed: {e}")))?
                .to_bytes()
                .to_vec();
            Ok(Answer {
                status,
                error_type,
                body: answer,
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| transport(format!("no answer from {endpoint} in {CALL_TIMEOUT:?}")))?
    }

    /// The endpoint URL and the region requests to it are signed for.
    fn endpoint(&self, service: Service) -> (String, String) {
        let region = self.inner.region.clone();
        let signing_region = if service.global {
            if region.starts_with("cn-") {
                "cn-north-1".to_owned()
            } else if region.starts_with("us-gov-") {
                "us-gov-west-1".to_owned()
            } else {
                "us-east-1".to_owned()
            }
        } else {
            region.clone()
        };
        let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let explicit = self
            .inner
            .config
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .or_else(|| from_env(&format!("AWS_ENDPOINT_URL_{}", service.env_id)))
            .or_else(|| from_env("AWS_ENDPOINT_URL"));
        if let Some(endpoint) = explicit {
            return (endpoint, signing_region);
        }
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let url = if service.global {
            if region.starts_with("cn-") {
                format!("https://{}.cn-north-1.{suffix}", service.name)
            } else if region.starts_with("us-gov-") {
                format!("https://{}.us-gov.{suffix}", service.name)
            } else {
                format!("https://{}.{suffix}", service.name)
            }
        } else {
            format!("https://{}.{region}.{suffix}", service.name)
        };
        (url, signing_region)
    }

    /// The credentials calls are signed with, assuming the configured role if any.
    async fn credentials(&self) -> Result<Credentials, AwsError> {
        let mut cached = self.inner.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| !c.expiring()) {
            return Ok(c.clone());
        }
        let base = match self.inner.config.static_credentials.clone() {
            Some(c) => c,
            None => match credentials::from_env().or_else(credentials::from_shared_file) {
                Some(c) => c,
                None => Imds::from_env().role_credentials().await.map_err(|e| {
                    AwsError::Credentials(format!(
                        "set access_key_id/secret_access_key, AWS_ACCESS_KEY_ID/\
                             AWS_SECRET_ACCESS_KEY or ~/.aws/credentials, or run on an \
                             instance with a role ({e})"
                    ))
                })?,
            },
        };
        let credentials = match &self.inner.config.assume_role_arn {
            Some(role) if !role.is_empty() => Box::pin(self.assume_role(base, role)).await?,
            _ => base,
        };
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    /// STS `AssumeRole` with `base`, for the role's temporary credentials.
    async fn assume_role(&self, base: Credentials, role: &str) -> Result<Credentials, AwsError> {
        let sts = Self::new(AwsConfig {
            region: self.inner.region.clone(),
            static_credentials: Some(base),
            assume_role_arn: None,
            endpoint: self.inner.config.sts_endpoint.clone(),
            sts_endpoint: None,
        })?;
        let session = format!(
            "spire-server-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        let xml = sts
            .query(
                STS,
                "AssumeRole",
                &[
                    ("RoleArn".to_owned(), role.to_owned()),
                    ("RoleSessionName".to_owned(), session),
                ],
            )
            .await?;
        let parse = |message: &str| AwsError::Parse {
            service: "sts",
            action: "AssumeRole".into(),
            message: message.to_owned(),
        };
        let doc = roxmltree::Document::parse(&xml).map_err(|e| parse(&e.to_string()))?;
        let field = |name: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        let id = field("AccessKeyId").ok_or_else(|| parse("no AccessKeyId"))?;
        let secret = field("SecretAccessKey").ok_or_else(|| parse("no SecretAccessKey"))?;
        let token = field("SessionToken");
        let mut credentials = Credentials::new(&id, &secret, token.as_deref());
        credentials.expires_at = field("Expiration").and_then(|e| parse_time(&e));
        Ok(credentials)
    }
}

/// A TLS configuration without roots (so a client can still reach `http://` endpoints on
/// machines without CA certificates; `https://` then fails with a clear error).
fn empty_roots_tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An RFC 3339 time as AWS writes it.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// An AWS error answer of the JSON protocols: the code from `x-amzn-ErrorType`
/// (`ResourceNotFoundException:http://...`) when sent, else the body's `__type` or `code`,
/// without its `namespace#` prefix; the message from `message` or `Message`.
fn json_error(
    service: Service,
    action: &str,
    status: u16,
    error_type: Option<&str>,
    body: &Value,
) -> AwsError {
    let code = error_type
        .and_then(|t| t.split(':').next())
        .or_else(|| body.get("__type").and_then(Value::as_str))
        .or_else(|| body.get("code").and_then(Value::as_str))
        .unwrap_or("UnknownError");
    let code = code.rsplit('#').next().unwrap_or(code).to_owned();
    let message = body
        .get("message")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    AwsError::Api {
        service: service.name,
        action: action.to_owned(),
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_date_format() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(amz_date(at), "20150830T123600Z");
    }
}
