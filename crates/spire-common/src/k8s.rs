//! The Kubernetes API server client the k8s attestors use: a connection set up from a
//! kubeconfig file or from the pod's in-cluster service account, TokenReview, and reads of
//! pods and nodes. Errors use upstream's words (`pkg/common/plugin/k8s/apiserver`), since
//! attestors put them in the statuses operators see.
//!
//! The connection is set up anew for every attestation ([`ApiServerClient::connect`]), so
//! rotated kubeconfig credentials and service account tokens are picked up without a
//! restart; the calls of one attestation share it.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// TokenReview `status.user.extra` key holding the bound pod's name.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// TokenReview `status.user.extra` key holding the bound pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A failed API server call, worded as upstream's client words it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sError {
    /// No connection could be configured (bad kubeconfig, not in a cluster).
    #[error("unable to get clientset: {0}")]
    Config(String),
    /// The TokenReview call failed.
    #[error("unable to query token review API: {0}")]
    TokenReview(String),
    /// The API server answered the review with an error.
    #[error("token review API response contains an error: {0}")]
    ReviewError(String),
    /// The token is valid but for none of the audiences asked for.
    #[error("token review API did not validate audience: wanted one of {wanted:?} but got {got:?}")]
    Audience {
        /// The audiences asked for.
        wanted: Vec<String>,
        /// The audiences the API server reported.
        got: Vec<String>,
    },
    /// A pod could not be read.
    #[error("unable to query pods API: {0}")]
    Pod(String),
    /// A node could not be read.
    #[error("unable to query nodes API: {0}")]
    Node(String),
    /// A required argument was empty.
    #[error("{0}")]
    Empty(&'static str),
}

/// A client for one cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerClient {
    /// The kubeconfig file; `None` uses the in-cluster service account.
    kube_config_file: Option<PathBuf>,
}

impl ApiServerClient {
    /// A client configured from `kube_config_file`, or in-cluster when it is `None`.
    pub fn new(kube_config_file: Option<&Path>) -> Self {
        Self {
            kube_config_file: kube_config_file.map(Path::to_path_buf),
        }
    }

    /// Reads the configuration and sets up a connection for one attestation's calls.
    pub async fn connect(&self) -> Result<Connected, K8sError> {
        self.kube_client().await.map(|client| Connected { client })
    }

    /// A bare `kube` client from the configuration, for plugins that call other APIs than
    /// the attestors' (the `k8sbundle` notifier patches ConfigMaps, webhooks, APIServices).
    pub async fn kube_client(&self) -> Result<kube::Client, K8sError> {
        let config = match &self.kube_config_file {
            None => kube::Config::incluster()
                .map_err(|e| K8sError::Config(format!("unable to create client config: {e}")))?,
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    K8sError::Config(format!(
                        "unable to create client config: {}: {e}",
                        path.display()
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        K8sError::Config(format!(
                            "unable to create client config: {}: {e}",
                            path.display()
                        ))
                    })?
            }
        };
        kube::Client::try_from(config).map_err(|e| {
            K8sError::Config(format!(
                "unable to create clientset for the given config: {e}"
            ))
        })
    }
}

/// A failed call of a plugin that writes to the API server (the `k8sbundle` notifier, the
/// `k8s_configmap` BundlePublisher), in words an operator can act on: a 403 says which
/// permissions to `grant`, anything but an API answer means the API server was not reached.
pub fn describe_api_error(e: &kube::Error, grant: &str) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => {
            format!("forbidden: {} ({grant})", status.message)
        }
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => format!("API server unreachable: {other}"),
    }
}

/// A connection to the API server, for the calls of one attestation.
#[derive(Clone)]
pub struct Connected {
    client: kube::Client,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").finish_non_exhaustive()
    }
}

impl Connected {
    /// Reviews `token` for `audiences` (none: the API server's default audience). A token
    /// the API server does not authenticate is not an error: the status says so. An
    /// authenticated token must be valid for one of `audiences`.
    pub async fn validate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, K8sError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| K8sError::TokenReview(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
            return Err(K8sError::ReviewError(error.to_owned()));
        }
        if status.authenticated == Some(true) && !audiences.is_empty() {
            let got = status.audiences.clone().unwrap_or_default();
            if !audiences.iter().any(|a| got.contains(a)) {
                return Err(K8sError::Audience {
                    wanted: audiences.to_vec(),
                    got,
                });
            }
        }
        Ok(status)
    }

    /// The pod `name` in `namespace`.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Pod, K8sError> {
        if namespace.is_empty() {
            return Err(K8sError::Empty("empty namespace"));
        }
        if name.is_empty() {
            return Err(K8sError::Empty("empty pod name"));
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.get(name)
            .await
            .map_err(|e| K8sError::Pod(e.to_string()))
    }

    /// The node `name`.
    pub async fn get_node(&self, name: &str) -> Result<Node, K8sError> {
        if name.is_empty() {
            return Err(K8sError::Empty("empty node name"));
        }
        let api: Api<Node> = Api::all(self.client.clone());
        api.get(name)
            .await
            .map_err(|e| K8sError::Node(e.to_string()))
    }
}

/// The service account a reviewed token belongs to: `system:serviceaccount:<ns>:<name>`
/// split as upstream splits it (four parts; the first two are not checked).
pub fn service_account_of(status: &TokenReviewStatus) -> Result<(String, String), String> {
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    if username.is_empty() {
        return Err("empty username".to_owned());
    }
    let parts: Vec<&str> = username.split(':').collect();
    if parts.len() != 4 {
        return Err(format!("unexpected username format: {username}"));
    }
    if parts[2].is_empty() {
        return Err("missing namespace".to_owned());
    }
    if parts[3].is_empty() {
        return Err("missing service account name".to_owned());
    }
    Ok((parts[2].to_owned(), parts[3].to_owned()))
}

/// The one value of `key` in the review's `user.extra`; `what` names it in errors
/// (`name`, `UID`) as upstream's messages do.
pub fn extra_value(status: &TokenReviewStatus, key: &str, what: &str) -> Result<String, String> {
    let values = status
        .user
        .as_ref()
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(key))
        .ok_or_else(|| format!("missing pod {what}"))?;
    if values.len() != 1 {
        return Err(format!("expected 1 {what} but got: {}", values.len()));
    }
    let value = &values[0];
    if value.is_empty() {
        return Err(format!("pod {what} is empty"));
    }
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(username: &str, extra: &[(&str, &[&str])]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| {
                            ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect())
                        })
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn usernames_split_as_upstreams() {
        let ok = status("system:serviceaccount:spire:spire-agent", &[]);
        assert_eq!(
            service_account_of(&ok).unwrap(),
            ("spire".to_owned(), "spire-agent".to_owned())
        );
        for (name, error) in [
            ("", "empty username"),
            ("a:b:c", "unexpected username format: a:b:c"),
            ("system:serviceaccount::sa", "missing namespace"),
            ("system:serviceaccount:ns:", "missing service account name"),
        ] {
            assert_eq!(service_account_of(&status(name, &[])).unwrap_err(), error);
        }
    }

    #[test]
    fn extra_values_need_exactly_one_non_empty_value() {
        let s = status(
            "x",
            &[
                (EXTRA_POD_NAME, &["web-0"]),
                (EXTRA_POD_UID, &["a", "b"]),
                ("empty", &[""]),
            ],
        );
        assert_eq!(extra_value(&s, EXTRA_POD_NAME, "name").unwrap(), "web-0");
        assert_eq!(
            extra_value(&s, EXTRA_POD_UID, "UID").unwrap_err(),
            "expected 1 UID but got: 2"
        );
        assert_eq!(
            extra_value(&s, "empty", "name").unwrap_err(),
            "pod name is empty"
        );
        assert_eq!(
            extra_value(&s, "absent", "UID").unwrap_err(),
            "missing pod UID"
        );
    }
}
