//! `spire.agent.debug.v1.Debug/GetInfo`: the agent SVID chain (verified up to the trust
//! domain's root, as upstream's `pkg/agent/api/debug/v1`), uptime, the number of cached
//! X509-SVIDs and the last successful sync. Answers are cached for 5 seconds, as upstream's.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{certificate_spiffe_id, verify_x509_svid};
use spire_proto::spire::agent::debug::v1::debug_server::Debug;
use spire_proto::spire::agent::debug::v1::{GetInfoRequest, GetInfoResponse, get_info_response};
use spire_proto::spire::api::types;
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::client::AgentIdentity;
use crate::manager::Manager;

/// How long one GetInfo answer is reused (upstream's `cacheExpiry`).
const CACHE_EXPIRY: Duration = Duration::from_secs(5);

/// Go's `time.Time{}.Unix()`: what upstream reports as the last sync before any succeeded.
const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

/// The debug service.
pub struct DebugService {
    manager: Arc<Manager>,
    agent_svid: watch::Receiver<AgentIdentity>,
    trust_domain: TrustDomain,
    started_at: Instant,
    cached: Mutex<Option<(Instant, GetInfoResponse)>>,
}

impl std::fmt::Debug for DebugService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugService")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl DebugService {
    /// A service reporting on `manager` and the agent SVID that `agent_svid` follows.
    pub fn new(
        manager: Arc<Manager>,
        agent_svid: watch::Receiver<AgentIdentity>,
        trust_domain: TrustDomain,
        started_at: Instant,
    ) -> Self {
        Self {
            manager,
            agent_svid,
            trust_domain,
            started_at,
            cached: Mutex::new(None),
        }
    }

    fn info(&self) -> Result<GetInfoResponse, Status> {
        let chain = self.agent_svid.borrow().chain.clone();
        let bundle = self.manager.bundle();
        if bundle.trust_domain != self.trust_domain {
            return Err(Status::internal(format!(
                "failed to verify agent SVID: no bundle for trust domain {}",
                self.trust_domain
            )));
        }
        let roots = &bundle.x509_authorities;
        verify_x509_svid(&chain, roots, OffsetDateTime::now_utc()).map_err(|e| {
            tracing::error!(error = %e, "Failed to verify agent SVID");
            Status::internal(format!("failed to verify agent SVID: {e}"))
        })?;
        let mut verified = chain;
        if let Some(root) = verified.last().and_then(|last| issuing_root(last, roots)) {
            verified.push(root);
        }
        let svid_chain = verified
            .iter()
            .map(|der| cert_info(der))
            .collect::<Result<Vec<_>, _>>()?;
        let stats = self.manager.cache_stats();
        Ok(GetInfoResponse {
            svid_chain,
            uptime: i32::try_from(self.started_at.elapsed().as_secs()).unwrap_or(i32::MAX),
            svids_count: i32::try_from(stats.x509_svids).unwrap_or(i32::MAX),
            last_sync_success: stats.last_sync_success.unwrap_or(GO_ZERO_TIME_UNIX),
            cached_x509_svids_count: i32::try_from(stats.x509_svids).unwrap_or(i32::MAX),
            cached_jwt_svids_count: i32::try_from(stats.jwt_svids).unwrap_or(i32::MAX),
            cached_svidstore_x509_svids_count: i32::try_from(stats.svidstore_x509_svids)
                .unwrap_or(i32::MAX),
        })
    }
}

#[tonic::async_trait]
impl Debug for DebugService {
    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, info)) = cached.as_ref()
            && at.elapsed() < CACHE_EXPIRY
        {
            return Ok(Response::new(info.clone()));
        }
        let info = self.info()?;
        *cached = Some((Instant::now(), info.clone()));
        Ok(Response::new(info))
    }
}

/// The bundle root that signed `last` (the top of the agent's chain), unless `last` is itself
/// a root of the bundle.
fn issuing_root(last: &[u8], roots: &[Vec<u8>]) -> Option<Vec<u8>> {
    if roots.iter().any(|root| root.as_slice() == last) {
        return None;
    }
    let (_, child) = X509Certificate::from_der(last).ok()?;
    roots
        .iter()
        .find(|root| {
            X509Certificate::from_der(root).is_ok_and(|(_, parent)| {
                parent.subject().as_raw() == child.issuer().as_raw()
                    && child.verify_signature(Some(parent.public_key())).is_ok()
            })
        })
        .cloned()
}

/// One chain member as GetInfo reports it: SPIFFE ID (when it has one), expiry and subject.
fn cert_info(der: &[u8]) -> Result<get_info_response::Cert, Status> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| Status::internal(format!("failed to parse agent SVID chain: {e}")))?;
    let id = certificate_spiffe_id(der).ok().map(|id| types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    });
    Ok(get_info_response::Cert {
        id,
        expires_at: cert.validity().not_after.timestamp(),
        subject: go_subject_string(&cert),
    })
}

/// Where Go's `pkix.Name` keeps each standard attribute (`2.5.4.x`), in the order
/// `ToRDNSequence` emits them; the string form prints them reversed.
const STANDARD_ORDER: [(u64, &str); 9] = [
    (6, "C"),
    (8, "ST"),
    (7, "L"),
    (9, "STREET"),
    (17, "POSTALCODE"),
    (10, "O"),
    (11, "OU"),
    (3, "CN"),
    (5, "SERIALNUMBER"),
];

/// A certificate subject as Go's `pkix.Name.String()` prints it (what upstream's GetInfo
/// sends): standard attributes grouped by type, others as `oid=#hex`, last RDN first.
fn go_subject_string(cert: &X509Certificate<'_>) -> String {
    let mut extra = Vec::new();
    let mut standard: Vec<Vec<String>> = vec![Vec::new(); STANDARD_ORDER.len()];
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .map(Iterator::collect)
            .unwrap_or_default();
        let position = match oid.as_slice() {
            [2, 5, 4, last] => STANDARD_ORDER.iter().position(|(n, _)| n == last),
            _ => None,
        };
        match (position, attr.as_str()) {
            (Some(index), Ok(value)) => standard[index].push(value.to_owned()),
            _ => extra.push(vec![format!(
                "{}=#{}",
                attr.attr_type(),
                hex::encode(go_der_value(attr.attr_value()))
            )]),
        }
    }
    let mut rdns = extra;
    for ((_, name), values) in STANDARD_ORDER.iter().zip(standard) {
        if !values.is_empty() {
            rdns.push(
                values
                    .iter()
                    .map(|v| format!("{name}={}", go_escape(v)))
                    .collect(),
            );
        }
    }
    rdns.iter()
        .rev()
        .map(|rdn| rdn.join("+"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The DER Go's `asn1.Marshal` gives an attribute value it decoded: strings come back as
/// PrintableString when they can, otherwise UTF8String; anything else keeps its encoding.
fn go_der_value(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Vec<u8> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let content = value.data;
    let string_tags = [
        Tag::PrintableString,
        Tag::Utf8String,
        Tag::Ia5String,
        Tag::T61String,
    ];
    let tag: u8 = if string_tags.contains(&value.tag()) {
        // Go's `isPrintable` as Marshal uses it: `*` allowed, `&` not.
        let printable = content
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?*".contains(b));
        if printable { 0x13 } else { 0x0c }
    } else {
        u8::try_from(value.tag().0).unwrap_or(0)
    };
    let mut der = vec![tag];
    let len = content.len();
    if len < 0x80 {
        der.push(u8::try_from(len).unwrap_or(0));
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        der.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0));
        der.extend(bytes);
    }
    der.extend_from_slice(content);
    der
}

/// Go's escaping of a distinguished name value (RFC 2253).
fn go_escape(value: &str) -> String {
    let count = value.chars().count();
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let escape = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => i == 0 || i + 1 == count,
            '#' => i == 0,
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spire_core::keys::{KeyType, PrivateKey};
    use spire_core::x509::{CaTemplate, Validity, self_signed_ca};

    #[test]
    fn subject_reads_like_go() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let validity = Validity::from_now(OffsetDateTime::now_utc(), time::Duration::hours(1));
        let der = self_signed_ca(&key, &CaTemplate::new(td, validity)).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let subject = go_subject_string(&cert);
        // Go prints the standard attributes last-RDN-first: SERIALNUMBER, O, C.
        let serial = subject
            .strip_prefix("SERIALNUMBER=")
            .and_then(|rest| rest.strip_suffix(",O=SPIFFE,C=US"));
        assert!(
            serial.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())),
            "{subject}"
        );
        assert_eq!(go_escape(" a,b#"), "\\ a\\,b#");
    }
}
