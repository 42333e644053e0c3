//! `aws_iid`'s `verify_organization` block: a node is attested only when its account is an
//! ACTIVE member of the AWS organization, checked with `organizations:ListAccounts` called
//! through `assume_org_role` in the management account. The account list is cached for
//! `org_account_map_ttl` (default 3m, at least 1m); an account missing from a fresh-enough
//! list triggers a reload, at most five times per TTL, as upstream's `orgValidator`.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use spire_common::aws::client::Service;
use spire_common::aws::{AwsClient, AwsConfig, AwsError, Credentials};
use spire_core::config::de;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::ConfigError;

/// AWS Organizations (JSON protocol, one endpoint per partition, signed for its home region).
const ORGANIZATIONS: Service = Service {
    name: "organizations",
    env_id: "ORGANIZATIONS",
    json_target: Some("AWSOrganizationsV20161128"),
    api_version: "2016-11-28",
    global: true,
};

/// Upstream's defaults and limits.
const DEFAULT_REGION: &str = "us-west-2";
const DEFAULT_TTL: Duration = Duration::from_secs(180);
const MIN_TTL: Duration = Duration::from_secs(60);
const RETRIES: u32 = 5;

/// The `verify_organization` block as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgData {
    #[serde(default, deserialize_with = "de::opt_string")]
    management_account_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    assume_org_role: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    management_account_region: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    org_account_map_ttl: Option<String>,
}

/// The validated `verify_organization` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgConfig {
    /// `management_account_id`.
    pub management_account_id: String,
    /// `assume_org_role`: a role name in the management account.
    pub assume_org_role: String,
    /// `management_account_region` (default `us-west-2`).
    pub management_account_region: String,
    /// `org_account_map_ttl` (default 3m).
    pub account_list_ttl: Duration,
}

impl OrgConfig {
    /// Validates the block with upstream's rules and messages; `key` names it in errors.
    pub fn from_data(file: &str, key: &str, data: OrgData) -> Result<Self, ConfigError> {
        let non_empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let (Some(management_account_id), Some(assume_org_role)) = (
            non_empty(data.management_account_id),
            non_empty(data.assume_org_role),
        ) else {
            return Err(ConfigError::invalid(
                file,
                key,
                "please ensure that \"management_account_id\" & \"assume_org_role\" are present \
                 inside block or remove the block: \"verify_organization\" for feature node \
                 attestation using account id verification",
            ));
        };
        let account_list_ttl = match non_empty(data.org_account_map_ttl) {
            None => DEFAULT_TTL,
            Some(text) => {
                let ttl = spire_core::duration::parse(text.trim()).map_err(|_| {
                    ConfigError::invalid(
                        file,
                        format!("{key}.org_account_map_ttl"),
                        "please ensure that \"org_account_map_ttl\" if configured, it should be \
                         in duration and is suffixed with required 'm' for time duration in \
                         minute ex. '5m'. Otherwise, remove the: \"org_account_map_ttl\", in the \
                         block: \"verify_organization\". Default TTL will be: \"3m\"",
                    )
                })?;
                if ttl < MIN_TTL {
                    return Err(ConfigError::invalid(
                        file,
                        format!("{key}.org_account_map_ttl"),
                        "please ensure that \"org_account_map_ttl\" if configured, it should be \
                         greater than or equal to \"1m\". Otherwise remove the: \
                         \"org_account_map_ttl\", in the block: \"verify_organization\". Default \
                         TTL will be: \"3m\"",
                    ));
                }
                ttl
            }
        };
        Ok(Self {
            management_account_id,
            assume_org_role,
            management_account_region: non_empty(data.management_account_region)
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            account_list_ttl,
        })
    }
}

#[derive(Default)]
struct Cache {
    accounts: HashSet<String>,
    valid_until: Option<Instant>,
    retries: u32,
}

/// Answers whether an account belongs to the organization, from a cached account list.
pub struct OrgValidator {
    config: OrgConfig,
    client: AwsClient,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for OrgValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgValidator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The Organizations endpoint of `partition`, unless the attestor or the environment
/// overrides it.
fn endpoint(partition: &str, endpoint: Option<String>) -> String {
    let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    endpoint
        .filter(|e| !e.is_empty())
        .or_else(|| from_env("AWS_ENDPOINT_URL_ORGANIZATIONS"))
        .or_else(|| from_env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| {
            match partition {
                "aws-cn" => "https://organizations.cn-northwest-1.amazonaws.com.cn",
                "aws-us-gov" => "https://organizations.us-gov-west-1.amazonaws.com",
                _ => "https://organizations.us-east-1.amazonaws.com",
            }
            .to_owned()
        })
}

impl OrgValidator {
    /// A validator calling Organizations as `assume_org_role` of the management account,
    /// with the attestor's base credentials; `override_endpoint` (tests) replaces every AWS
    /// endpoint, STS's included.
    pub fn new(
        config: OrgConfig,
        partition: &str,
        credentials: Option<Credentials>,
        override_endpoint: Option<String>,
    ) -> Result<Self, AwsError> {
        let client = AwsClient::new(AwsConfig {
            region: config.management_account_region.clone(),
            static_credentials: credentials,
            assume_role_arn: Some(format!(
                "arn:{partition}:iam::{}:role/{}",
                config.management_account_id, config.assume_org_role
            )),
            endpoint: Some(endpoint(partition, override_endpoint.clone())),
            sts_endpoint: override_endpoint,
        })?;
        Ok(Self {
            config,
            client,
            cache: Mutex::new(Cache {
                retries: RETRIES,
                ..Cache::default()
            }),
        })
    }

    /// Whether `account_id` is an ACTIVE account of the organization.
    pub async fn is_member_account(&self, account_id: &str) -> Result<bool, AwsError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let stale = cache.accounts.is_empty() || cache.valid_until.is_none_or(|at| now > at);
        if stale {
            cache.accounts = self.list_active_accounts().await?;
            cache.valid_until = Some(now + self.config.account_list_ttl);
            cache.retries = RETRIES;
            return Ok(cache.accounts.contains(account_id));
        }
        if cache.accounts.contains(account_id) {
            return Ok(true);
        }
        // A cache miss on a fresh list: reload, a limited number of times per TTL.
        if cache.retries == 0 {
            return Ok(false);
        }
        cache.accounts = self.list_active_accounts().await?;
        cache.retries -= 1;
        Ok(cache.accounts.contains(account_id))
    }

    /// Every ACTIVE account, following `NextToken`.
    async fn list_active_accounts(&self) -> Result<HashSet<String>, AwsError> {
        let mut accounts = HashSet::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = match &next_token {
                Some(token) => json!({ "NextToken": token }),
                None => json!({}),
            };
            let page = self
                .client
                .json(ORGANIZATIONS, "ListAccounts", &request)
                .await?;
            accounts.extend(active_ids(&page));
            match page["NextToken"].as_str() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(accounts),
            }
        }
    }
}

/// The IDs of the ACTIVE accounts of one `ListAccounts` page (upstream admits no other
/// status).
fn active_ids(page: &Value) -> Vec<String> {
    page["Accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["Status"] == "ACTIVE")
        .filter_map(|a| a["Id"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> OrgData {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn upstream_rules() {
        let c = OrgConfig::from_data(
            "s.conf",
            "v",
            data(r#"{"management_account_id":"111","assume_org_role":"r"}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.management_account_region, "us-west-2");
        assert_eq!(c.account_list_ttl, Duration::from_secs(180));
        let e = OrgConfig::from_data("s.conf", "v", data(r#"{"management_account_id":"111"}"#))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("assume_org_role"), "{e}");
        let e = OrgConfig::from_data(
            "s.conf",
            "v",
            data(r#"{"management_account_id":"1","assume_org_role":"r","org_account_map_ttl":"30s"}"#),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("greater than or equal to \"1m\""), "{e}");
        let e = OrgConfig::from_data(
            "s.conf",
            "v",
            data(r#"{"management_account_id":"1","assume_org_role":"r","org_account_map_ttl":"soon"}"#),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("should be in duration"), "{e}");
        assert!(serde_json::from_str::<OrgData>(r#"{"account_id":"1"}"#).is_err());
    }

    #[test]
    fn only_active_accounts_count() {
        let page = json!({"Accounts": [
            {"Id": "1", "Status": "ACTIVE"},
            {"Id": "2", "Status": "SUSPENDED"},
            {"Id": "3", "Status": "PENDING_CLOSURE"}
        ]});
        assert_eq!(active_ids(&page), vec!["1".to_owned()]);
    }
}
