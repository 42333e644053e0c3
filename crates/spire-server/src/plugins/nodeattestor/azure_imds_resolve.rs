//! What the `azure_imds` attestor asks Microsoft for, as upstream (v1.15.3 `client.go`,
//! `utils.go`): the tenant ID of a tenant domain (Entra ID's OpenID configuration), a
//! Resource Manager token for the tenant (app secret, a client assertion read from a file,
//! or the server's own identity), and the VM's selectors — through Azure Resource Graph for
//! a VM (the VM by `vmId`, then its network interfaces) and through the scale set VM list of
//! Compute for a scale set instance.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use spire_common::cloud_http::{CloudHttpClient, url_encode};

use super::azure_resolve::{Endpoints, access_token, client_secret_token};

/// The Resource Manager audience tokens are asked for.
const ARM_RESOURCE: &str = "https://management.azure.com/";

/// API versions of the calls.
const RESOURCE_GRAPH_API_VERSION: &str = "2021-03-01";
const COMPUTE_API_VERSION: &str = "2024-07-01";

/// The JWS algorithms a `token_auth` assertion may name (upstream's list).
const ASSERTION_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// How Resource Manager is authenticated to for one tenant.
#[derive(Clone, PartialEq, Eq)]
pub enum TenantAuth {
    /// `secret_auth { app_id, app_secret }`.
    Secret {
        /// The app registration's client ID.
        app_id: String,
        /// Its client secret.
        app_secret: String,
    },
    /// `token_auth { app_id, token_path }`: a JWT on disk is the client assertion.
    Token {
        /// The app registration's client ID.
        app_id: String,
        /// The file holding the assertion, read for every token request.
        token_path: String,
    },
    /// The server's own identity (`DefaultAzureCredential`).
    Default,
}

impl std::fmt::Debug for TenantAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { app_id, .. } => f
                .debug_struct("Secret")
                .field("app_id", app_id)
                .field("app_secret", &"<redacted>")
                .finish(),
            Self::Token { app_id, token_path } => f
                .debug_struct("Token")
                .field("app_id", app_id)
                .field("token_path", token_path)
                .finish(),
            Self::Default => f.write_str("Default"),
        }
    }
}

/// The tenant ID Entra ID's OpenID configuration of `domain` names in its issuer
/// (`https://sts.windows.net/<tenant ID>/`).
pub async fn lookup_tenant_id(
    http: &CloudHttpClient,
    endpoints: &Endpoints,
    domain: &str,
) -> Result<String, String> {
    let url = format!(
        "{}{}/.well-known/openid-configuration",
        endpoints.authority_host,
        url_encode(domain)
    );
    let body = http
        .get(&url, &[])
        .await
        .map_err(|e| format!("failed to fetch tenant ID: {e}"))?
        .ok_body()
        .map_err(|e| format!("failed to fetch tenant ID: {e}"))?;
    let issuer = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("issuer").and_then(Value::as_str).map(str::to_owned))
        .ok_or("failed to unmarshal tenant ID: no issuer")?;
    issuer
        .strip_prefix("https://sts.windows.net/")
        .and_then(|rest| rest.strip_suffix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned)
        .ok_or_else(|| format!("malformed tenant ID: {issuer:?}"))
}

/// A Resource Manager access token for `tenant_id`.
pub async fn arm_token(
    http: &CloudHttpClient,
    endpoints: &Endpoints,
    tenant_id: &str,
    auth: &TenantAuth,
) -> Result<String, String> {
    match auth {
        TenantAuth::Secret { app_id, app_secret } => {
            client_secret_token(http, endpoints, tenant_id, app_id, app_secret).await
        }
        TenantAuth::Token { app_id, token_path } => {
            let assertion = read_assertion(token_path)?;
            client_assertion_token(http, endpoints, tenant_id, app_id, &assertion).await
        }
        TenantAuth::Default => {
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            if let (Some(id), Some(secret)) = (env("AZURE_CLIENT_ID"), env("AZURE_CLIENT_SECRET")) {
                return client_secret_token(http, endpoints, tenant_id, &id, &secret).await;
            }
            if let (Some(id), Some(file)) =
                (env("AZURE_CLIENT_ID"), env("AZURE_FEDERATED_TOKEN_FILE"))
            {
                let assertion = read_assertion(&file)?;
                return client_assertion_token(http, endpoints, tenant_id, &id, &assertion).await;
            }
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
            access_token(&body)
        }
    }
}

/// The assertion in `path`, refused unless it is a compact JWS with an allowed algorithm
/// (upstream parses it before use).
fn read_assertion(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("unable to read token file {path:?}: {e}"))?;
    let token = text.trim().to_owned();
    let header = token
        .split('.')
        .next()
        .filter(|_| token.split('.').count() == 3)
        .and_then(|h| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h.trim_end_matches('='))
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok());
    let alg = header
        .as_ref()
        .and_then(|h| h.get("alg").and_then(Value::as_str));
    match alg {
        Some(alg) if ASSERTION_ALGORITHMS.contains(&alg) => Ok(token),
        _ => Err(format!(
            "unable to parse token file {path:?}: not a JWT signed with one of {ASSERTION_ALGORITHMS:?}"
        )),
    }
}

/// A token from Entra ID's client credentials grant with a JWT client assertion.
async fn client_assertion_token(
    http: &CloudHttpClient,
    endpoints: &Endpoints,
    tenant_id: &str,
    app_id: &str,
    assertion: &str,
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
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("scope", &scope),
            ],
        )
        .await?
        .ok_body()
        .map_err(|e| format!("client assertion token from {url}: {e}"))?;
    access_token(&body)
}

/// The VM facts selectors are made of (upstream's `VirtualMachine`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualMachine {
    /// `name`.
    pub name: String,
    /// `location`.
    pub location: String,
    /// `resourceGroup`.
    pub resource_group: String,
    /// `tags`, string values only.
    pub tags: std::collections::BTreeMap<String, String>,
    /// The network interfaces.
    pub interfaces: Vec<NetworkInterface>,
}

/// A VM's network interface (upstream's `NetworkInterface`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInterface {
    /// The security group (`resource group`, `name`), if any.
    pub security_group: Option<(String, String)>,
    /// The (`vnet`, `subnet`) pairs of its IP configurations.
    pub subnets: Vec<(String, String)>,
}

/// Authenticated Resource Manager calls.
pub struct Arm<'a> {
    /// The HTTP client.
    pub http: &'a CloudHttpClient,
    /// `resource_manager_endpoint`, ending in `/`.
    pub base: &'a str,
    /// `Bearer <token>`.
    pub bearer: String,
}

impl Arm<'_> {
    async fn call(
        &self,
        method: http::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut headers = vec![("Authorization", self.bearer.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = self
            .http
            .send(method, url, &headers, bytes)
            .await?
            .ok_body()?;
        serde_json::from_slice(&body).map_err(|e| format!("malformed answer of {url}: {e}"))
    }

    /// Runs a Resource Graph `query` over `subscription` and returns its rows.
    async fn graph(&self, query: &str, subscription: &str) -> Result<Vec<Value>, String> {
        let url = format!(
            "{}providers/Microsoft.ResourceGraph/resources?api-version={RESOURCE_GRAPH_API_VERSION}",
            self.base
        );
        let request = json!({
            "query": query,
            "subscriptions": [subscription],
            "options": {"resultFormat": "objectArray"},
        });
        let answer = self.call(http::Method::POST, &url, Some(&request)).await?;
        if answer
            .get("totalRecords")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
        {
            return Err("resource not found".into());
        }
        answer
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| "unable to cast data to []any".to_owned())
    }

    /// The standalone VM whose `vmId` is `vm_id`, with its network interfaces.
    pub async fn virtual_machine(
        &self,
        vm_id: &str,
        subscription: &str,
    ) -> Result<VirtualMachine, String> {
        let query = format!(
            "\n\tresources \n\t| where type =~ 'microsoft.compute/virtualmachines'\n\t| where properties.vmId == '{vm_id}'\n\t| project id, name, location, tags, vmId = properties.vmId, networkProfile = properties.networkProfile, resourceGroup"
        );
        let rows = self
            .graph(&query, subscription)
            .await
            .map_err(|e| format!("unable to get virtual machine: {e}"))?;
        let [row] = rows.as_slice() else {
            return Err("expected one result for resource at most".into());
        };
        let text =
            |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        let id = text(row, "id");
        let mut vm = VirtualMachine {
            name: text(row, "name"),
            location: text(row, "location"),
            resource_group: text(row, "resourceGroup"),
            tags: string_tags(row.get("tags")),
            interfaces: Vec::new(),
        };
        let query = format!(
            "\n\tResources\n\t| where type == \"microsoft.network/networkinterfaces\"\n\t| where tolower(properties.virtualMachine.id) == tolower(\"{id}\")\n\t| mv-expand ipConfig = properties.ipConfigurations\n\t| extend subnetId = tostring(ipConfig.properties.subnet.id)\n\t| extend vnetName = extract(@\"virtualNetworks/([^/]+)\", 1, subnetId)\n\t| extend subnetName = extract(@\"subnets/([^/]+)$\", 1, subnetId)\n\t| extend subnetObj = bag_pack(\"vnet\", vnetName, \"name\", subnetName)\n\t| extend nsgId = tostring(properties.networkSecurityGroup.id)\n\t| extend nsgRg = extract(@\"resourceGroups/([^/]+)\",1,nsgId)\n\t| extend nsgName = extract(@\"networkSecurityGroups/([^/]+)\",1,nsgId)\n\t| extend securityGroup = bag_pack(\"resourceGroup\", nsgRg, \"name\",nsgName)\n\t| summarize\n\t\tsubnets = make_list(subnetObj)\n\t\tby id, name, resourceGroup, securityGroup_str = tostring(securityGroup)\n\t| project name, resourceGroup, subnets, securityGroup = todynamic(securityGroup_str)"
        );
        let nics = self
            .graph(&query, subscription)
            .await
            .map_err(|e| format!("unable to get network interfaces: {e}"))?;
        for nic in nics {
            let sg = nic
                .get("securityGroup")
                .map(|sg| (text(sg, "resourceGroup"), text(sg, "name")));
            let subnets = nic
                .get("subnets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|s| (text(s, "vnet"), text(s, "name")))
                .collect();
            vm.interfaces.push(NetworkInterface {
                security_group: sg,
                subnets,
            });
        }
        Ok(vm)
    }

    /// The instance of scale set `ss_name` whose `vmId` is `vm_id`.
    pub async fn scale_set_instance(
        &self,
        vm_id: &str,
        subscription: &str,
        ss_name: &str,
    ) -> Result<VirtualMachine, String> {
        validate_vmss_name(ss_name).map_err(|e| format!("invalid VMSS name: {e}"))?;
        let query = format!(
            "\n\tresources \n\t| where type =~ 'microsoft.compute/virtualmachinescalesets'\n\t| where name == '{ss_name}'\n\t| project id, name, location, resourceGroup, subscriptionId"
        );
        let rows = self
            .graph(&query, subscription)
            .await
            .map_err(|e| format!("unable to get VMSS info: {e}"))?;
        let [info] = rows.as_slice() else {
            return Err("expected one result for resource at most".into());
        };
        let group = info
            .get("resourceGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut url = format!(
            "{}subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines?api-version={COMPUTE_API_VERSION}",
            self.base,
            url_encode(subscription),
            url_encode(&group),
            url_encode(ss_name)
        );
        // Pages until Compute stops naming a next one (bounded against a loop).
        for _ in 0..1000 {
            let page = self
                .call(http::Method::GET, &url, None)
                .await
                .map_err(|e| format!("unable to list VMSS instances: {e}"))?;
            for instance in page
                .get("value")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if instance.pointer("/properties/vmId").and_then(Value::as_str) == Some(vm_id) {
                    return vm_of_scale_set_instance(instance, &group);
                }
            }
            match page.get("nextLink").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => url = next.to_owned(),
                _ => break,
            }
        }
        Err(format!("VMSS instance {vm_id:?} not found"))
    }
}

fn string_tags(tags: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    tags.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

/// Upstream's `buildVirtualMachineFromVMSSInstance`: an interface whose security group or
/// subnet ID does not parse is left out.
fn vm_of_scale_set_instance(instance: &Value, group: &str) -> Result<VirtualMachine, String> {
    let text = |key: &str| instance.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut vm = VirtualMachine {
        name: text("name").ok_or("vmss instance name is nil")?,
        location: text("location").ok_or("vmss instance location is nil")?,
        resource_group: group.to_owned(),
        tags: string_tags(instance.get("tags")),
        interfaces: Vec::new(),
    };
    let configs = instance
        .pointer("/properties/networkProfileConfiguration/networkInterfaceConfigurations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    'interfaces: for config in configs {
        if config.get("name").and_then(Value::as_str).is_none() {
            continue;
        }
        let sg = match config
            .pointer("/properties/networkSecurityGroup/id")
            .and_then(Value::as_str)
        {
            None => None,
            Some(id) => match parse_id(id, "Microsoft.Network/networkSecurityGroups", 0) {
                Some((g, n, _)) => Some((g, n)),
                None => continue,
            },
        };
        let mut subnets = Vec::new();
        for ipc in config
            .pointer("/properties/ipConfigurations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = ipc.pointer("/properties/subnet/id").and_then(Value::as_str) else {
                continue;
            };
            match parse_id(id, "Microsoft.Network/virtualNetworks", 2) {
                Some((_, vnet, rest)) if rest.first().map(String::as_str) == Some("subnets") => {
                    subnets.push((vnet, rest.get(1).cloned().unwrap_or_default()));
                }
                _ => continue 'interfaces,
            }
        }
        vm.interfaces.push(NetworkInterface {
            security_group: sg,
            subnets,
        });
    }
    Ok(vm)
}

/// `/subscriptions/<s>/resourceGroups/<g>/providers/<provider>/<name>[/<extra>…]`.
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
    Some((
        (*segments.get(3)?).to_owned(),
        (*segments.get(fixed)?).to_owned(),
        segments
            .get(fixed + 1..)?
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    ))
}

/// Azure's scale set naming rules, as upstream checks them before querying.
pub fn validate_vmss_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "VMSS name must be at least 1 character(s) long, got {}",
            name.len()
        ));
    }
    if name.len() > 64 {
        return Err(format!(
            "VMSS name must be at most 64 characters long, got {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(
            "VMSS name can only contain alphanumeric characters, underscores, periods, and hyphens"
                .into(),
        );
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return Err("VMSS name must start with an alphanumeric character".into());
    }
    if !name
        .bytes()
        .last()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err("VMSS name must end with an alphanumeric character or an underscore".into());
    }
    Ok(())
}

/// Upstream's selector values (type `azure_imds`) of `vm`, sorted and deduplicated.
pub fn selectors(
    vm: &VirtualMachine,
    vmss_name: Option<&str>,
    subscription: &str,
    allowed_tags: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Some(ss) = vmss_name {
        out.insert(format!("vmss-name:{ss}"));
    }
    out.insert(format!("subscription-id:{subscription}"));
    out.insert(format!("vm-name:{}", vm.name));
    out.insert(format!("vm-location:{}", vm.location));
    out.insert(format!("resource-group:{}", vm.resource_group));
    for tag in allowed_tags {
        if let Some(value) = vm.tags.get(tag) {
            out.insert(format!("vm-tag:{tag}:{value}"));
        }
    }
    for interface in &vm.interfaces {
        if let Some((group, name)) = &interface.security_group
            && (!group.is_empty() || !name.is_empty())
        {
            out.insert(format!("network-security-group:{group}:{name}"));
        }
        for (vnet, subnet) in &interface.subnets {
            out.insert(format!("virtual-network:{vnet}"));
            out.insert(format!("virtual-network-subnet:{vnet}:{subnet}"));
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmss_names_follow_azures_rules() {
        assert!(validate_vmss_name("my-vmss_1").is_ok());
        assert!(validate_vmss_name("a").is_ok());
        assert!(validate_vmss_name("").is_err());
        assert!(validate_vmss_name(&"a".repeat(65)).is_err());
        assert!(validate_vmss_name("-vmss").is_err());
        assert!(validate_vmss_name("vmss-").is_err());
        assert!(validate_vmss_name("vm'ss").is_err());
    }

    #[test]
    fn selectors_are_upstreams() {
        let vm = VirtualMachine {
            name: "blog".into(),
            location: "eastus".into(),
            resource_group: "frontend".into(),
            tags: [
                ("env".to_owned(), "prod".to_owned()),
                ("x".into(), "y".into()),
            ]
            .into(),
            interfaces: vec![
                NetworkInterface {
                    security_group: Some(("frontend".into(), "webservers".into())),
                    subnets: vec![("vnet".into(), "default".into())],
                },
                NetworkInterface {
                    security_group: Some((String::new(), String::new())),
                    subnets: vec![],
                },
            ],
        };
        let allowed = BTreeSet::from(["env".to_owned(), "missing".to_owned()]);
        assert_eq!(
            selectors(&vm, Some("myvmss"), "sub", &allowed),
            vec![
                "network-security-group:frontend:webservers",
                "resource-group:frontend",
                "subscription-id:sub",
                "virtual-network-subnet:vnet:default",
                "virtual-network:vnet",
                "vm-location:eastus",
                "vm-name:blog",
                "vm-tag:env:prod",
                "vmss-name:myvmss",
            ]
        );
    }
}
