//! A loopback stand-in for the cloud endpoints the `gcp_iit` and `azure_msi` node attestors
//! talk to, since no real cloud can run here (a hand-written fake, on purpose): the GCP
//! metadata server, Google's certificate list, Google's OAuth token endpoint and the Compute
//! Engine API; the Azure Instance Metadata Service, Entra ID's OpenID discovery, JWKS and
//! token endpoint, and Resource Manager. Identity tokens are signed by keys the test holds,
//! published the way the providers publish theirs, so the attestors' verification code runs
//! unchanged. Every request is recorded for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use spire_core::jws;
use spire_core::jwt::JwtAlgorithm;
use spire_core::keys::{KeyType, PrivateKey};

/// The access token the fake Google token endpoint and metadata server hand out.
pub const GOOGLE_ACCESS_TOKEN: &str = "ya29.loopback-compute-token";

/// The access token the fake Entra ID token endpoint and IMDS hand out for Resource Manager.
pub const ARM_ACCESS_TOKEN: &str = "loopback-arm-token";

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`…
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body (forms).
    pub body: String,
}

/// What the fake serves; tests change it between attestations.
#[derive(Debug, Default)]
pub struct CloudState {
    /// The GCP identity token the metadata server hands out.
    pub gcp_identity_token: String,
    /// Google's certificate map (`{"kid": "PEM"}`).
    pub google_certs: Value,
    /// Compute Engine instances by `projects/<p>/zones/<z>/instances/<name>`.
    pub gce_instances: BTreeMap<String, Value>,
    /// The Azure MSI tokens IMDS hands out, by requested resource.
    pub azure_msi_tokens: BTreeMap<String, String>,
    /// Entra ID's JWKS.
    pub azure_jwks: Value,
    /// The Azure instance metadata (`compute.subscriptionId`…) IMDS serves.
    pub azure_instance: Value,
    /// Resource Manager objects by resource ID (`/subscriptions/…`).
    pub arm_resources: BTreeMap<String, Value>,
    /// VM resource IDs by the principal ID of their managed identity.
    pub vms_by_principal: BTreeMap<String, String>,
    /// `azure_imds`: the VM whose attested documents IMDS signs, for the nonce asked.
    pub azure_imds_vm: Option<AzureImdsVm>,
    /// `azure_imds`: tenant IDs by tenant domain (Entra ID's OpenID configuration).
    pub azure_tenants: BTreeMap<String, String>,
    /// `azure_imds`: intermediates by CA Issuers URL path.
    pub ca_issuers: BTreeMap<String, Vec<u8>>,
    /// Resource Graph rows of `microsoft.compute/virtualmachines` (`id`, `name`, `location`,
    /// `tags`, `vmId`, `networkProfile`, `resourceGroup`, as upstream's query projects them).
    pub graph_vms: Vec<Value>,
    /// Resource Graph rows of network interfaces (`name`, `resourceGroup`, `subnets`,
    /// `securityGroup`), by the lower-cased resource ID of their VM.
    pub graph_nics: BTreeMap<String, Vec<Value>>,
    /// Resource Graph rows of scale sets (`id`, `name`, `location`, `resourceGroup`,
    /// `subscriptionId`).
    pub graph_scale_sets: Vec<Value>,
    /// Every request, in order.
    pub requests: Vec<Recorded>,
}

/// The VM IMDS serves `azure_imds` documents for.
pub struct AzureImdsVm {
    /// Azure's signing chain, as the test holds it.
    pub signer: Arc<crate::azure_imds::ImdsSigner>,
    /// `vmId`.
    pub vm_id: String,
    /// `subscriptionId`.
    pub subscription: String,
    /// A fixed answer instead of a fresh document (a replayed or forged one).
    pub fixed_answer: Option<Value>,
}

impl std::fmt::Debug for AzureImdsVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureImdsVm")
            .field("vm_id", &self.vm_id)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// Runs the part of a Resource Graph query the fake understands: upstream's three queries
/// (a VM by `vmId`, a VM's network interfaces, a scale set by name), over `subscriptions`.
fn graph_answer(s: &CloudState, body: &str) -> (u16, String) {
    let Ok(request) = serde_json::from_str::<Value>(body) else {
        return (400, json!({"error": {"code": "BadRequest"}}).to_string());
    };
    let query = request.get("query").and_then(Value::as_str).unwrap_or("");
    let subscriptions: Vec<&str> = request
        .get("subscriptions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let quoted = |after: &str, quote: char| {
        query
            .split(after)
            .nth(1)
            .and_then(|r| r.split(quote).next())
            .map(str::to_owned)
    };
    let in_subscription = |row: &Value, id_key: &str| {
        let id = row.get(id_key).and_then(Value::as_str).unwrap_or("");
        subscriptions.is_empty()
            || subscriptions.iter().any(|sub| {
                id.to_lowercase()
                    .starts_with(&format!("/subscriptions/{}/", sub.to_lowercase()))
            })
    };
    let rows: Vec<Value> = if query.contains("'microsoft.compute/virtualmachines'") {
        let vm_id = quoted("properties.vmId == '", '\'').unwrap_or_default();
        s.graph_vms
            .iter()
            .filter(|r| r.get("vmId").and_then(Value::as_str) == Some(vm_id.as_str()))
            .filter(|r| in_subscription(r, "id"))
            .cloned()
            .collect()
    } else if query.contains("\"microsoft.network/networkinterfaces\"") {
        let vm = quoted("tolower(\"", '"').unwrap_or_default().to_lowercase();
        s.graph_nics.get(&vm).cloned().unwrap_or_default()
    } else if query.contains("'microsoft.compute/virtualmachinescalesets'") {
        let name = quoted("where name == '", '\'').unwrap_or_default();
        s.graph_scale_sets
            .iter()
            .filter(|r| r.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .filter(|r| in_subscription(r, "id"))
            .cloned()
            .collect()
    } else {
        return (400, json!({"error": {"code": "InvalidQuery"}}).to_string());
    };
    (
        200,
        json!({"totalRecords": rows.len(), "count": rows.len(), "data": rows, "facets": [], "resultTruncated": "false"})
            .to_string(),
    )
}

/// The running fake.
pub struct FakeCloud {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What it serves.
    pub state: Arc<Mutex<CloudState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCloud {
    /// Starts the fake on a free loopback port, on its own thread.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind the fake cloud: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(Mutex::new(CloudState::default()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("fake cloud runtime: {e}"));
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .unwrap_or_else(|e| panic!("fake cloud listener: {e}"));
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let state = Arc::clone(&shared);
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request| {
                                    let state = Arc::clone(&state);
                                    async move { Ok::<_, std::convert::Infallible>(handle(port, &state, request).await) }
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tcp), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Self {
            port,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`, for `identity_token_host`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes what the fake serves.
    pub fn with<T>(&self, f: impl FnOnce(&mut CloudState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// The requests so far whose URI starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.uri.starts_with(prefix))
                .cloned()
                .collect()
        })
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    port: u16,
    state: &Mutex<CloudState>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.requests.push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let google = header("metadata-flavor").as_deref() == Some("Google");
    let azure_metadata = header("metadata").as_deref() == Some("true");
    let bearer_ok = |token: &str| authorization.as_deref() == Some(&format!("Bearer {token}"));
    let (status, text) = if let Some(rest) =
        path.strip_prefix("/computeMetadata/v1/instance/service-accounts/")
    {
        if !google {
            (403, "missing Metadata-Flavor: Google".to_owned())
        } else if rest.ends_with("/identity") {
            if query_param(&parts.uri, "audience").as_deref() != Some("spire-gcp-node-attestor")
                || query_param(&parts.uri, "format").as_deref() != Some("full")
            {
                (400, "unexpected audience or format".to_owned())
            } else {
                (200, s.gcp_identity_token.clone())
            }
        } else if rest == "default/token" {
            (200, json!({"access_token": GOOGLE_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}).to_string())
        } else {
            (404, "not found".to_owned())
        }
    } else if path == "/oauth2/v1/certs" {
        (200, s.google_certs.to_string())
    } else if path == "/google/token" && parts.method == http::Method::POST {
        if body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            && body.contains("assertion=")
        {
            (200, json!({"access_token": GOOGLE_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}).to_string())
        } else {
            (400, json!({"error": "invalid_grant"}).to_string())
        }
    } else if let Some(key) = path.strip_prefix("/compute/v1/") {
        if !bearer_ok(GOOGLE_ACCESS_TOKEN) {
            (401, json!({"error": {"code": 401}}).to_string())
        } else if let Some(instance) = s.gce_instances.get(key) {
            (200, instance.to_string())
        } else {
            (
                404,
                json!({"error": {"code": 404, "message": "not found"}}).to_string(),
            )
        }
    } else if path == "/metadata/identity/oauth2/token" {
        let resource = query_param(&parts.uri, "resource").unwrap_or_default();
        if !azure_metadata {
            (400, "missing Metadata: true".to_owned())
        } else if let Some(token) = s.azure_msi_tokens.get(&resource) {
            (
                200,
                json!({"access_token": token, "resource": resource, "token_type": "Bearer"})
                    .to_string(),
            )
        } else if resource == "https://management.azure.com/" {
            (200, json!({"access_token": ARM_ACCESS_TOKEN}).to_string())
        } else {
            (400, json!({"error": "invalid_resource"}).to_string())
        }
    } else if path == "/metadata/attested/document" {
        let nonce = query_param(&parts.uri, "nonce").unwrap_or_default();
        match (&s.azure_imds_vm, azure_metadata) {
            (_, false) => (400, "missing Metadata: true".to_owned()),
            (None, true) => (404, "no attested document".to_owned()),
            (Some(vm), true) => match &vm.fixed_answer {
                Some(answer) => (200, answer.to_string()),
                None => (
                    200,
                    vm.signer
                        .document(&vm.vm_id, &vm.subscription, &nonce)
                        .to_string(),
                ),
            },
        }
    } else if let Some(der) = s.ca_issuers.get(path) {
        let der = der.clone();
        drop(s);
        return http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/pkix-cert")
            .body(Full::new(Bytes::from(der)))
            .unwrap_or_else(|e| panic!("response: {e}"));
    } else if let Some(domain) = path
        .strip_suffix("/.well-known/openid-configuration")
        .and_then(|p| p.strip_prefix('/'))
        .filter(|d| *d != "common")
    {
        match s.azure_tenants.get(domain) {
            Some(tenant) => (200, json!({"issuer": format!("https://sts.windows.net/{tenant}/"), "token_endpoint": format!("http://127.0.0.1:{port}/{tenant}/oauth2/token")}).to_string()),
            None => (400, json!({"error": "invalid_tenant", "error_description": format!("AADSTS90002: Tenant '{domain}' not found.")}).to_string()),
        }
    } else if path == "/providers/Microsoft.ResourceGraph/resources"
        && parts.method == http::Method::POST
    {
        if bearer_ok(ARM_ACCESS_TOKEN) {
            graph_answer(&s, &body)
        } else {
            (
                401,
                json!({"error": {"code": "AuthenticationFailed"}}).to_string(),
            )
        }
    } else if path == "/metadata/instance" {
        if azure_metadata {
            (200, s.azure_instance.to_string())
        } else {
            (400, "missing Metadata: true".to_owned())
        }
    } else if path == "/common/.well-known/openid-configuration" {
        (200, json!({"issuer": format!("http://127.0.0.1:{port}/{{tenantid}}/v2.0"), "jwks_uri": format!("http://127.0.0.1:{port}/common/discovery/keys")}).to_string())
    } else if path == "/common/discovery/keys" {
        (200, s.azure_jwks.to_string())
    } else if path.ends_with("/oauth2/v2.0/token") && parts.method == http::Method::POST {
        if body.contains("grant_type=client_credentials")
            && (body.contains("client_secret=") || body.contains("client_assertion="))
        {
            (200, json!({"access_token": ARM_ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3599}).to_string())
        } else {
            (400, json!({"error": "invalid_client"}).to_string())
        }
    } else if path.starts_with("/subscriptions/") {
        if !bearer_ok(ARM_ACCESS_TOKEN) {
            (
                401,
                json!({"error": {"code": "AuthenticationFailed"}}).to_string(),
            )
        } else if path.ends_with("/resources") {
            let filter = query_param(&parts.uri, "$filter").unwrap_or_default();
            let principal = filter
                .split("identity/principalId eq '")
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .unwrap_or("");
            let value: Vec<Value> = s
                .vms_by_principal
                .get(principal)
                .map(|id| json!({"id": id, "type": "Microsoft.Compute/virtualMachines"}))
                .into_iter()
                .collect();
            (200, json!({"value": value}).to_string())
        } else if let Some(resource) = s.arm_resources.get(path) {
            (200, resource.to_string())
        } else {
            (
                404,
                json!({"error": {"code": "ResourceNotFound"}}).to_string(),
            )
        }
    } else {
        (404, "not found".to_owned())
    };
    drop(s);
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|e| panic!("response: {e}"))
}

/// Google's token signing key, as the test holds it: an RSA key and a self-signed
/// certificate for it, published under `kid`.
pub struct GoogleSigner {
    /// The key ID tokens name.
    pub kid: String,
    key: PrivateKey,
    cert_pem: String,
}

impl GoogleSigner {
    /// A fresh RSA-2048 key under `kid`.
    pub fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap_or_else(|e| panic!("RSA key: {e}"));
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.self_signed(&pair))
            .unwrap_or_else(|e| panic!("certificate: {e}"));
        let key = PrivateKey::from_der(&pair.serialize_der()).unwrap_or_else(|e| panic!("{e}"));
        Self {
            kid: kid.to_owned(),
            key,
            cert_pem: cert.pem(),
        }
    }

    /// The `{"kid": "PEM"}` map Google publishes.
    pub fn certs(&self) -> Value {
        json!({ self.kid.clone(): self.cert_pem })
    }

    /// A full-format identity token with `claims`, signed RS256.
    pub fn sign(&self, claims: &Value) -> String {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        jws::sign(&self.key, JwtAlgorithm::Rs256, Some(&self.kid), map)
            .unwrap_or_else(|e| panic!("sign: {e}"))
    }

    /// The PKCS#8 PEM of the key (for a service account key file).
    pub fn private_key_pem(&self) -> String {
        self.key.to_pem().to_string()
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The claims of a GCE instance identity token in full format, valid for an hour.
pub fn gce_claims(project: &str, zone: &str, instance_id: &str, instance_name: &str) -> Value {
    let now = unix_now();
    json!({
        "aud": "spire-gcp-node-attestor",
        "azp": "1234567890",
        "email": "1234567890-compute@developer.gserviceaccount.com",
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "1234567890",
        "google": {"compute_engine": {
            "instance_creation_timestamp": now - 86400,
            "instance_id": instance_id,
            "instance_name": instance_name,
            "project_id": project,
            "project_number": 424242,
            "zone": zone,
        }},
    })
}

/// Entra ID's token signing key, as the test holds it (RSA, RS256, as Entra ID signs).
pub struct EntraSigner {
    /// The key ID tokens name.
    pub kid: String,
    key: PrivateKey,
}

impl EntraSigner {
    /// A fresh RSA-2048 key under `kid`.
    pub fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            key: PrivateKey::generate(KeyType::Rsa2048).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// The JWKS Entra ID publishes.
    pub fn jwks(&self) -> Value {
        let jwk = jws::public_jwk(&self.key.public_key_der(), &self.kid)
            .unwrap_or_else(|e| panic!("jwk: {e}"));
        json!({ "keys": [jwk] })
    }

    /// A token with `claims`, signed RS256.
    pub fn sign(&self, claims: &Value) -> String {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        jws::sign(&self.key, JwtAlgorithm::Rs256, Some(&self.kid), map)
            .unwrap_or_else(|e| panic!("sign: {e}"))
    }
}

/// The claims of a managed identity access token for `resource`, valid for eight hours.
pub fn msi_claims(tenant: &str, principal: &str, resource: &str) -> Value {
    let now = unix_now();
    json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now,
        "nbf": now,
        "exp": now + 8 * 3600,
        "oid": principal,
        "sub": principal,
        "tid": tenant,
        "xms_mirid": "/subscriptions/sub/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
    })
}

/// Resource Manager objects of a VM `name` in resource group `group` of `subscription` with
/// one network interface in `vnet`/`subnet` behind security group `nsg`, in the shapes
/// Resource Manager returns; and the VM's resource ID.
pub fn azure_vm_resources(
    subscription: &str,
    group: &str,
    name: &str,
    nsg: &str,
    vnet: &str,
    subnet: &str,
) -> (String, BTreeMap<String, Value>) {
    let base = format!("/subscriptions/{subscription}/resourceGroups/{group}/providers");
    let vm_id = format!("{base}/Microsoft.Compute/virtualMachines/{name}");
    let nic_id = format!("{base}/Microsoft.Network/networkInterfaces/{name}-nic");
    let nsg_id = format!("{base}/Microsoft.Network/networkSecurityGroups/{nsg}");
    let subnet_id = format!("{base}/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}");
    let mut resources = BTreeMap::new();
    resources.insert(
        vm_id.clone(),
        json!({
            "id": vm_id, "name": name, "type": "Microsoft.Compute/virtualMachines",
            "location": "westus2",
            "identity": {"type": "SystemAssigned", "principalId": "p", "tenantId": "t"},
            "properties": {
                "vmId": "0a1b2c3d-0000-0000-0000-000000000000",
                "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": true}}]},
                "provisioningState": "Succeeded",
            },
        }),
    );
    resources.insert(
        nic_id.clone(),
        json!({
            "id": nic_id, "name": format!("{name}-nic"), "type": "Microsoft.Network/networkInterfaces",
            "properties": {
                "networkSecurityGroup": {"id": nsg_id},
                "ipConfigurations": [{
                    "id": format!("{nic_id}/ipConfigurations/ipconfig1"), "name": "ipconfig1",
                    "properties": {"privateIPAddress": "10.0.0.4", "subnet": {"id": subnet_id}},
                }],
            },
        }),
    );
    (vm_id, resources)
}

/// A Compute Engine instance resource as the API returns it.
pub fn gce_instance(
    name: &str,
    zone: &str,
    tags: &[&str],
    labels: Value,
    metadata: Value,
) -> Value {
    json!({
        "kind": "compute#instance",
        "id": "5555",
        "name": name,
        "zone": format!("https://www.googleapis.com/compute/v1/projects/p/zones/{zone}"),
        "status": "RUNNING",
        "tags": {"items": tags, "fingerprint": "abc"},
        "labels": labels,
        "metadata": {"kind": "compute#metadata", "fingerprint": "def", "items": metadata},
        "serviceAccounts": [{"email": "agent@p.iam.gserviceaccount.com", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
    })
}

/// `Map` of `value` (an object).
pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}
