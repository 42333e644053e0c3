//! `azure_msi` selectors from Azure Resource Manager: the VM whose managed identity is the
//! token's principal, its network interfaces, their security groups and subnets; and the
//! Resource Manager credentials (a tenant's app registration, or the server's own identity
//! as upstream's `DefaultAzureCredential`: `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`, else the
//! VM's managed identity from the Instance Metadata Service).

use std::collections::BTreeSet;

use serde_json::Value;
use spire_common::cloud_http::{CloudHttpClient, url_encode};

/// The Resource Manager audience tokens are asked for.
const ARM_RESOURCE: &str = "https://management.azure.com/";

/// API versions of the calls (those of upstream's SDK clients).
const RESOURCES_API_VERSION: &str = "2021-04-01";
const COMPUTE_API_VERSION: &str = "2023-03-01";
const NETWORK_API_VERSION: &str = "2023-05-01";

/// How Resource Manager is authenticated to for one tenant.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `subscription_id`, `app_id` and `app_secret` of the tenant block.
    AppSecret {
        /// The subscription whose VMs are searched.
        subscription_id: String,
        /// The app registration's client ID.
        app_id: String,
        /// Its client secret.
        app_secret: String,
    },
    /// The server's own identity; the subscription is the server VM's.
    Default,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AppSecret {
                subscription_id,
                app_id,
                ..
            } => f
                .debug_struct("AppSecret")
                .field("subscription_id", subscription_id)
                .field("app_id", app_id)
                .field("app_secret", &"<redacted>")
                .finish(),
            Self::Default => f.write_str("Default"),
        }
    }
}

/// Microsoft Entra ID unless `authority_host` (or `AZURE_AUTHORITY_HOST`) says otherwise.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";

/// Azure Resource Manager unless `resource_manager_endpoint` says otherwise.
pub const DEFAULT_RESOURCE_MANAGER_ENDPOINT: &str = "https://management.azure.com/";

/// The Instance Metadata Service unless `imds_endpoint` says otherwise.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Where keys, tokens and resources are asked for; each ends in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Microsoft Entra ID (OpenID discovery and token requests).
    pub authority_host: String,
    /// Azure Resource Manager.
    pub resource_manager: String,
    /// The Instance Metadata Service (for the default credentials).
    pub imds: String,
}

/// An endpoint key's value (`default` when unset or empty) as a URL ending in `/`; a value
/// that is not an http(s) URL is refused with the key's name.
pub fn endpoint_url(
    key: &'static str,
    value: Option<String>,
    default: String,
) -> Result<String, (&'static str, String)> {
    let mut value = value.filter(|v| !v.is_empty()).unwrap_or(default);
    if !(value.starts_with("https://") || value.starts_with("http://")) {
        return Err((key, format!("{key} must be an http(s) URL, not {value:?}")));
    }
    if !value.ends_with('/') {
        value.push('/');
    }
    Ok(value)
}

impl Endpoints {
    /// The endpoints from the plugin keys `authority_host` (else `AZURE_AUTHORITY_HOST`),
    /// `resource_manager_endpoint` and `imds_endpoint`, defaults for those unset; a value
    /// that is not an http(s) URL is refused with the key's name.
    pub fn from_keys(
        authority_host: Option<String>,
        resource_manager_endpoint: Option<String>,
        imds_endpoint: Option<String>,
    ) -> Result<Self, (&'static str, String)> {
        let url = endpoint_url;
        let authority_default = std::env::var("AZURE_AUTHORITY_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
        Ok(Self {
            authority_host: url("authority_host", authority_host, authority_default)?,
            resource_manager: url(
                "resource_manager_endpoint",
                resource_manager_endpoint,
                DEFAULT_RESOURCE_MANAGER_ENDPOINT.to_owned(),
            )?,
            imds: url(
                "imds_endpoint",
                imds_endpoint,
                DEFAULT_IMDS_ENDPOINT.to_owned(),
            )?,
        })
    }
}

/// The sorted, deduplicated selector values of the VM whose identity is `principal_id`.
pub async fn resolve_selectors(
    http: &CloudHttpClient,
    endpoints: &Endpoints,
    tenant_id: &str,
    credentials: &Credentials,
    principal_id: &str,
) -> Result<Vec<String>, String> {
    let (subscription_id, token) = authenticate(http, endpoints, tenant_id, credentials)
        .await
        .map_err(|e| {
            format!("unable to get Resource Manager credentials for tenant {tenant_id:?}: {e}")
        })?;
    let arm = Arm {
        http,
        base: &endpoints.resource_manager,
        bearer: format!("Bearer {token}"),
    };
    let vm_id = arm
        .vm_of_principal(&subscription_id, principal_id)
        .await
        .map_err(|e| format!("unable to get resource for principal {principal_id:?}: {e}"))?;
    let [vm_group, vm_name] = parse_id(&vm_id, "Microsoft.Compute/virtualMachines", 0)
        .map(|(g, n, _)| [g, n])
        .ok_or_else(|| format!("malformed virtual machine ID {vm_id:?}"))?;
    let mut selectors = BTreeSet::from([
        format!("subscription-id:{subscription_id}"),
        format!("vm-name:{vm_group}:{vm_name}"),
    ]);
    let vm = arm
        .get(&format!(
            "subscriptions/{subscription_id}/resourceGroups/{vm_group}/providers/Microsoft.Compute/virtualMachines/{vm_name}?api-version={COMPUTE_API_VERSION}"
        ))
        .await
        .map_err(|e| format!("unable to get virtual machine \"{vm_group}:{vm_name}\": {e}"))?;
    let interfaces = vm
        .pointer("/properties/networkProfile/networkInterfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for interface in interfaces {
        let Some(id) = interface.get("id").and_then(Value::as_str) else {
            continue;
        };
        let (group, name, _) = parse_id(id, "Microsoft.Network/networkInterfaces", 0)
            .ok_or_else(|| format!("malformed network interface ID {id:?}"))?;
        let nic = arm
            .get(&format!(
                "{}?api-version={NETWORK_API_VERSION}",
                id.trim_start_matches('/')
            ))
            .await
            .map_err(|e| format!("unable to get network interface \"{group}:{name}\": {e}"))?;
        if let Some(nsg) = nic
            .pointer("/properties/networkSecurityGroup/id")
            .and_then(Value::as_str)
        {
            let (g, n, _) = parse_id(nsg, "Microsoft.Network/networkSecurityGroups", 0)
                .ok_or_else(|| format!("malformed network security group ID {nsg:?}"))?;
            selectors.insert(format!("network-security-group:{g}:{n}"));
        }
        for ipc in nic
            .pointer("/properties/ipConfigurations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(subnet) = ipc.pointer("/properties/subnet/id").and_then(Value::as_str) else {
                continue;
            };
            let (g, vnet, rest) = parse_id(subnet, "Microsoft.Network/virtualNetworks", 2)
                .ok_or_else(|| format!("malformed virtual network subnet ID {subnet:?}"))?;
            match rest.as_slice() {
                [kind, name] if kind == "subnets" => {
                    selectors.insert(format!("virtual-network:{g}:{vnet}"));
                    selectors.insert(format!("virtual-network-subnet:{g}:{vnet}:{name}"));
                }
                _ => return Err(format!("malformed virtual network subnet ID {subnet:?}")),
            }
        }
    }
    Ok(selectors.into_iter().collect())
}

/// Parses `/subscriptions/<s>/resourceGroups/<g>/providers/<provider>/<name>[/<extra>…]`
/// with exactly `extra` trailing segments into the group, the name and the extra segments.
fn parse_id(id: &str, provider: &str, extra: usize) -> Option<(String, String, Vec<String>)> {
    let segments: Vec<&str> = id.strip_prefix('/')?.split('/').collect();
    let provider: Vec<&str> = provider.split('/').collect();
    let fixed = 5 + provider.len();
    if segments.len() != fixed + 1 + extra || segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let ok = segments.first() == Some(&"subscriptions")
        && segments.get(2) == Some(&"resourceGroups")
        && segments.get(4) == Some(&"providers")
        && segments.get(5..5 + provider.len()) == Some(provider.as_slice());
    if !ok {
        return None;
    }
    let group = (*segments.get(3)?).to_owned();
    let name = (*segments.get(fixed)?).to_owned();
    let rest = segments
        .get(fixed + 1..)?
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    Some((group, name, rest))
}

/// The subscription to search and a Resource Manager access token.
async fn authenticate(
    http: &CloudHttpClient,
    endpoints: &Endpoints,
    tenant_id: &str,
    credentials: &Credentials,
) -> Result<(String, String), String> {
    match credentials {
        Credentials::AppSecret {
            subscription_id,
            app_id,
            app_secret,
        } => {
            let token = client_secret_token(http, endpoints, tenant_id, app_id, app_secret).await?;
            Ok((subscription_id.clone(), token))
        }
        Credentials::Default => {
            let metadata = http
                .get(
                    &format!(
                        "{}metadata/instance?api-version=2017-08-01&format=json",
                        endpoints.imds
                    ),
                    &[("Metadata", "true")],
                )
                .await?
                .ok_body()
                .map_err(|e| format!("instance metadata: {e}"))?;
            let subscription_id = serde_json::from_slice::<Value>(&metadata)
                .ok()
                .and_then(|v| {
                    v.pointer("/compute/subscriptionId")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .filter(|s| !s.is_empty())
                .ok_or("response missing instance subscription id")?;
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let token = match (env("AZURE_CLIENT_ID"), env("AZURE_CLIENT_SECRET")) {
                (Some(id), Some(secret)) => {
                    client_secret_token(http, endpoints, tenant_id, &id, &secret).await?
                }
                _ => {
                    let body = http
                        .get(
                            &format!(
                                "{}metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                                endpoints.imds,
                                url_encode(ARM_RESOURCE)
                            ),
                            &[("Metadata", "true")],
                        )
                        .await?
                        .ok_body()
                        .map_err(|e| format!("managed identity token: {e}"))?;
                    access_token(&body)?
                }
            };
            Ok((subscription_id, token))
        }
    }
}

/// A token from Entra ID's client credentials grant.
pub(super) async fn client_secret_token(
    http: &CloudHttpClient,
    endpoints: &Endpoints,
    tenant_id: &str,
    app_id: &str,
    app_secret: &str,
) -> Result<String, String> {
    let url = format!(
        "{}{}/oauth2/v2.0/token",
        endpoints.authority_host,
        url_encode(tenant_id)
    );
    let scope = format!("{ARM_RESOURCE}.default");
    let body = http
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", app_id),
                ("client_secret", app_secret),
                ("scope", &scope),
            ],
        )
        .await?
        .ok_body()
        .map_err(|e| format!("client secret token from {url}: {e}"))?;
    access_token(&body)
}

pub(super) fn access_token(body: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("access_token")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "token response missing access_token".to_owned())
}

/// Authenticated Resource Manager calls.
struct Arm<'a> {
    http: &'a CloudHttpClient,
    base: &'a str,
    bearer: String,
}

impl Arm<'_> {
    async fn get_url(&self, url: &str) -> Result<Value, String> {
        let body = self
            .http
            .get(url, &[("Authorization", &self.bearer)])
            .await?
            .ok_body()?;
        serde_json::from_slice(&body).map_err(|e| format!("malformed answer of {url}: {e}"))
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.get_url(&format!("{}{path}", self.base)).await
    }

    /// The resource ID of the one VM whose identity is `principal_id`.
    async fn vm_of_principal(
        &self,
        subscription_id: &str,
        principal_id: &str,
    ) -> Result<String, String> {
        let filter = format!(
            "resourceType eq 'Microsoft.Compute/virtualMachines' and identity/principalId eq '{principal_id}'"
        );
        let mut url = format!(
            "{}subscriptions/{}/resources?%24filter={}&api-version={RESOURCES_API_VERSION}",
            self.base,
            url_encode(subscription_id),
            url_encode(&filter)
        );
        let mut ids = Vec::new();
        // Pages until Resource Manager stops naming a next one (bounded against a loop).
        for _ in 0..100 {
            let page = self
                .get_url(&url)
                .await
                .map_err(|e| format!("unable to list virtual machine by principal: {e}"))?;
            for item in page
                .get("value")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                ids.push(
                    item.get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                );
            }
            match page.get("nextLink").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => url = next.to_owned(),
                _ => break,
            }
        }
        match ids.as_slice() {
            [] => Err(format!("principal {principal_id:?} not found")),
            [id] if id.is_empty() => Err("virtual machine resource missing ID".into()),
            [id] => Ok(id.clone()),
            _ => Err(format!(
                "expected one result for principal {principal_id:?} at most"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_parse_as_upstreams_patterns() {
        let vm =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
        assert_eq!(
            parse_id(vm, "Microsoft.Compute/virtualMachines", 0),
            Some(("rg".into(), "vm1".into(), vec![]))
        );
        let subnet = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vn/subnets/sn";
        assert_eq!(
            parse_id(subnet, "Microsoft.Network/virtualNetworks", 2),
            Some((
                "rg".into(),
                "vn".into(),
                vec!["subnets".into(), "sn".into()]
            ))
        );
        assert_eq!(parse_id(vm, "Microsoft.Network/networkInterfaces", 0), None);
        assert_eq!(
            parse_id(&format!("{vm}/x"), "Microsoft.Compute/virtualMachines", 0),
            None
        );
        assert_eq!(
            parse_id("subscriptions/s", "Microsoft.Compute/virtualMachines", 0),
            None
        );
    }
}
