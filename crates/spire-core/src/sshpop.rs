//! The `sshpop` node attestation protocol, shared by the agent and server plugins and
//! wire-compatible with upstream's `pkg/common/plugin/sshpop` (Go's JSON of its structs,
//! field names capitalised):
//!
//! 1. the agent sends `{"Certificate":<OpenSSH host certificate, wire form, base64>}`;
//! 2. the server checks the certificate (host type, a trusted CA, validity, signature) and
//!    challenges with `{"Nonce":<32 bytes>}`;
//! 3. the agent answers `{"Nonce":<32 bytes>,"Signature":{"Format":..,"Blob":..,"Rest":null}}`,
//!    an SSH signature by the host key over `SHA-256(challenge nonce || response nonce)`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use signature::{Signer as _, Verifier as _};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, certificate::CertType};

use crate::agent_path_template::{Template, Value};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509pop::{PopError, agent_id_from_path, b64, combine_nonces, nonce};

/// The plugin name: the attestation data type and the agent ID's attestor segment.
pub const PLUGIN_NAME: &str = "sshpop";

/// The agent's host key unless `host_key_path` says otherwise.
pub const DEFAULT_HOST_KEY_PATH: &str = "/etc/ssh/ssh_host_rsa_key";

/// The agent's host certificate unless `host_cert_path` says otherwise.
pub const DEFAULT_HOST_CERT_PATH: &str = "/etc/ssh/ssh_host_rsa_key-cert.pub";

/// The default agent path.
pub const DEFAULT_TEMPLATE: &str = "/{{ .PluginName}}/{{ .Fingerprint }}";

fn fail<T>(message: impl Into<String>) -> Result<T, PopError> {
    Err(PopError(message.into()))
}

/// The agent's attestation payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationData {
    /// The host certificate in SSH wire form.
    #[serde(rename = "Certificate", with = "b64", default)]
    pub certificate: Vec<u8>,
}

/// The server's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// The server's nonce.
    #[serde(rename = "Nonce", with = "b64", default)]
    pub nonce: Vec<u8>,
}

/// An SSH signature as Go's `ssh.Signature` marshals to JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSignature {
    /// The signature algorithm (`ssh-ed25519`, `rsa-sha2-512`, `ssh-rsa`, ...).
    #[serde(rename = "Format", default)]
    pub format: String,
    /// The signature blob.
    #[serde(rename = "Blob", with = "b64", default)]
    pub blob: Vec<u8>,
    /// Trailing data (unused, `null`).
    #[serde(rename = "Rest", default)]
    pub rest: Option<String>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// The agent's nonce.
    #[serde(rename = "Nonce", with = "b64", default)]
    pub nonce: Vec<u8>,
    /// The host key's signature; `null` when missing.
    #[serde(rename = "Signature", default)]
    pub signature: Option<WireSignature>,
}

/// The agent's host key and certificate.
#[derive(Debug, Clone)]
pub struct Client {
    key: ssh_key::PrivateKey,
    cert: Vec<u8>,
}

impl Client {
    /// Reads the OpenSSH private key and the `authorized_keys`-form certificate.
    pub fn new(key_text: &[u8], cert_text: &[u8]) -> Result<Self, PopError> {
        let key = ssh_key::PrivateKey::from_openssh(key_text)
            .map_err(|e| PopError(format!("failed to parse host key: {e}")))?;
        if key.is_encrypted() {
            return fail("failed to parse host key: the key is passphrase-protected");
        }
        // `authorized_keys` form: `<type> <base64 wire form> [comment]`.
        let text = String::from_utf8_lossy(cert_text);
        let blob = text.split_whitespace().nth(1).unwrap_or_default();
        let cert = base64::engine::general_purpose::STANDARD
            .decode(blob.as_bytes())
            .map_err(|e| PopError(format!("failed to parse host certificate: {e}")))?;
        wire::parse(&cert)
            .map_err(|e| PopError(format!("failed to parse host certificate: {e}")))?;
        Ok(Self { key, cert })
    }

    /// The attestation payload.
    pub fn attestation_data(&self) -> Result<Vec<u8>, PopError> {
        serde_json::to_vec(&AttestationData {
            certificate: self.cert.clone(),
        })
        .map_err(|e| PopError(format!("failed to marshal attestation data: {e}")))
    }

    /// Signs the server's challenge.
    pub fn respond(&self, challenge: &[u8]) -> Result<Vec<u8>, PopError> {
        let request: ChallengeRequest = serde_json::from_slice(challenge)
            .map_err(|e| PopError(format!("failed to unmarshal challenge request: {e}")))?;
        let own = nonce()?;
        let combined = combine_nonces(&request.nonce, &own)
            .map_err(|e| PopError(format!("failed to combine nonces: {e}")))?;
        let (format, blob) = self
            .sign(combined.as_ref())
            .map_err(|e| PopError(format!("failed to sign data: {e}")))?;
        serde_json::to_vec(&ChallengeResponse {
            nonce: own,
            signature: Some(WireSignature {
                format,
                blob,
                rest: None,
            }),
        })
        .map_err(|e| PopError(format!("failed to marshal response: {e}")))
    }
}

impl Client {
    /// An SSH signature of `message` by the host key: `rsa-sha2-512` for RSA keys (signed by
    /// aws-lc-rs), the key's own algorithm otherwise.
    fn sign(&self, message: &[u8]) -> Result<(String, Vec<u8>), String> {
        if let ssh_key::private::KeypairData::Rsa(k) = self.key.key_data() {
            let big = |m: &ssh_key::Mpint| rsa::BigUint::from_bytes_be(strip_mpint(m.as_bytes()));
            let key = rsa::RsaPrivateKey::from_components(
                big(&k.public.n),
                big(&k.public.e),
                big(&k.private.d),
                vec![big(&k.private.p), big(&k.private.q)],
            )
            .map_err(|e| format!("invalid RSA host key: {e}"))?;
            let der = rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_der(&key)
                .map_err(|e| format!("invalid RSA host key: {e}"))?;
            let pair = aws_lc_rs::signature::RsaKeyPair::from_der(der.as_bytes())
                .map_err(|e| format!("invalid RSA host key: {e}"))?;
            let mut signature = vec![0u8; pair.public_modulus_len()];
            pair.sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA512,
                &aws_lc_rs::rand::SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_owned())?;
            return Ok(("rsa-sha2-512".to_owned(), signature));
        }
        let signature = self.key.try_sign(message).map_err(|e| e.to_string())?;
        Ok((
            signature.algorithm().as_str().to_owned(),
            signature.as_bytes().to_vec(),
        ))
    }
}

/// The server's trusted CAs and naming rules.
#[derive(Debug, Clone)]
pub struct Server {
    authorities: Vec<KeyData>,
    canonical_domain: String,
    template: Template,
    trust_domain: TrustDomain,
}

/// Where a failed check belongs: a malformed payload, or a refusal of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The payload or response could not be read.
    Malformed(String),
    /// The node did not prove its identity.
    Denied(String),
}

/// A certificate that passed the server's checks.
#[derive(Debug, Clone)]
pub struct VerifiedCert {
    cert: Certificate,
    wire: Vec<u8>,
    valid_before: u64,
    hostname: String,
}

/// Checks `authorized_keys` lines the way [`Server::new`] reads them (at least one, each a
/// public key), for configuration validation.
pub fn validate_authorities(authorities: &[String]) -> Result<(), PopError> {
    if authorities.is_empty() {
        return fail("must provide at least one cert authority");
    }
    for line in authorities {
        parse_authorized_key(line)
            .map_err(|e| PopError(format!("failed to parse public key {line:?}: {e}")))?;
    }
    Ok(())
}

impl Server {
    /// Reads the authorities (`authorized_keys` lines) and the settings.
    pub fn new(
        authorities: &[String],
        canonical_domain: &str,
        template: Template,
        trust_domain: TrustDomain,
    ) -> Result<Self, PopError> {
        if authorities.is_empty() {
            return fail("must provide at least one cert authority");
        }
        let mut keys = Vec::new();
        for line in authorities {
            let key = parse_authorized_key(line)
                .map_err(|e| PopError(format!("failed to parse public key {line:?}: {e}")))?;
            keys.push(key);
        }
        Ok(Self {
            authorities: keys,
            canonical_domain: canonical_domain.to_owned(),
            template,
            trust_domain,
        })
    }

    /// Checks the attestation payload at `now_unix`: upstream's `VerifyAttestationData`.
    pub fn verify_attestation_data(
        &self,
        payload: &[u8],
        now_unix: u64,
    ) -> Result<VerifiedCert, Refusal> {
        let bad = |m: String| Refusal::Malformed(m);
        let data: AttestationData = serde_json::from_slice(payload)
            .map_err(|e| bad(format!("failed to unmarshal data: {e}")))?;
        if data.certificate.is_empty() {
            return Err(bad("no certificate in response".into()));
        }
        let raw = wire::parse(&data.certificate)
            .map_err(|e| bad(format!("failed to parse public key: {e}")))?;
        let cert = Certificate::from_bytes(&raw.capped)
            .map_err(|e| bad(format!("failed to parse public key: {e}")))?;
        let Some(principal) = cert.valid_principals().first().cloned() else {
            return Err(bad("cert has no valid principals".into()));
        };
        let deny = |m: String| Refusal::Denied(format!("failed to check host key: {m}"));
        if cert.cert_type() != CertType::Host {
            return Err(deny(format!(
                "ssh: certificate presented as a host key has type {}",
                u32::from(cert.cert_type())
            )));
        }
        let ca = ssh_key::PublicKey::from_bytes(raw.signature_key)
            .map(|k| k.key_data().clone())
            .map_err(|e| bad(format!("failed to parse public key: {e}")))?;
        if !self.authorities.contains(&ca) {
            return Err(deny(format!(
                "ssh: no authorities for hostname: {principal}:22"
            )));
        }
        if let Some((option, _)) = cert.critical_options().iter().next() {
            return Err(deny(format!(
                "ssh: unsupported critical option {option:?} in certificate"
            )));
        }
        if raw.valid_after > i64::MAX as u64 || now_unix < raw.valid_after {
            return Err(deny("ssh: cert is not yet valid".into()));
        }
        if raw.valid_before != u64::MAX
            && (raw.valid_before > i64::MAX as u64 || now_unix >= raw.valid_before)
        {
            return Err(deny("ssh: cert has expired".into()));
        }
        let signature = WireSignature {
            format: raw.signature_format.clone(),
            blob: raw.signature_blob.to_vec(),
            rest: None,
        };
        if verify_signature(&ca, raw.signed, &signature).is_err() {
            return Err(deny("ssh: certificate signature does not verify".into()));
        }
        let valid_before = raw.valid_before;
        let hostname = decanonicalize(&principal, &self.canonical_domain)
            .map_err(|e| Refusal::Denied(format!("failed to decanonicalize hostname: {e}")))?;
        Ok(VerifiedCert {
            cert,
            wire: data.certificate,
            valid_before,
            hostname,
        })
    }

    /// A challenge and the nonce to check the answer against.
    pub fn issue_challenge(&self) -> Result<(Vec<u8>, Vec<u8>), PopError> {
        let n = nonce()?;
        let body = serde_json::to_vec(&ChallengeRequest { nonce: n.clone() })
            .map_err(|e| PopError(format!("failed to marshal challenge request: {e}")))?;
        Ok((body, n))
    }

    /// Checks the agent's answer: upstream's `VerifyChallengeResponse`.
    pub fn verify_response(
        &self,
        cert: &VerifiedCert,
        challenge_nonce: &[u8],
        response: &[u8],
    ) -> Result<(), Refusal> {
        let answer: ChallengeResponse = serde_json::from_slice(response).map_err(|e| {
            Refusal::Malformed(format!("failed to unmarshal challenge response: {e}"))
        })?;
        let combined = combine_nonces(challenge_nonce, &answer.nonce)
            .map_err(|e| Refusal::Denied(format!("failed to combine nonces: {e}")))?;
        let Some(signature) = answer.signature else {
            return Err(Refusal::Denied(
                "failed to verify signature: ssh: signature missing".into(),
            ));
        };
        verify_signature(cert.cert.public_key(), combined.as_ref(), &signature)
            .map_err(|e| Refusal::Denied(format!("failed to verify signature: {e}")))
    }

    /// The agent's SPIFFE ID (upstream's `makeAgentID`).
    pub fn agent_id(&self, cert: &VerifiedCert) -> Result<SpiffeId, PopError> {
        let fingerprint = url_safe_fingerprint(&cert.wire);
        let c = &cert.cert;
        let mut data = BTreeMap::new();
        data.insert("PluginName".into(), Value::str(PLUGIN_NAME));
        data.insert("Fingerprint".into(), Value::str(fingerprint));
        data.insert("Hostname".into(), Value::str(cert.hostname.clone()));
        data.insert(
            "ValidPrincipals".into(),
            Value::strs(c.valid_principals().iter().cloned()),
        );
        data.insert("KeyId".into(), Value::str(c.key_id()));
        data.insert("Serial".into(), Value::str(c.serial().to_string()));
        data.insert(
            "CertType".into(),
            Value::Int(i64::from(u32::from(c.cert_type()))),
        );
        data.insert("ValidAfter".into(), Value::str(c.valid_after().to_string()));
        data.insert(
            "ValidBefore".into(),
            Value::str(cert.valid_before.to_string()),
        );
        let path = self
            .template
            .execute(&Value::Map(data))
            .map_err(|e| PopError(e.to_string()))?;
        agent_id_from_path(&self.trust_domain, &path)
    }
}

/// Upstream's fingerprint: unpadded URL-safe base64 of SHA-256 of the certificate's wire form.
pub fn url_safe_fingerprint(cert_wire: &[u8]) -> String {
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_wire);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sum.as_ref())
}

fn decanonicalize(fqdn: &str, domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Ok(fqdn.to_owned());
    }
    let suffix = format!(".{domain}");
    fqdn.strip_suffix(&suffix)
        .map(str::to_owned)
        .ok_or_else(|| format!("cert principal is not in domain {suffix:?}"))
}

/// One `authorized_keys` line (options and comment allowed) as a public key.
fn parse_authorized_key(line: &str) -> Result<KeyData, String> {
    let line = line.trim();
    match ssh_key::AuthorizedKeys::new(line).next() {
        Some(Ok(entry)) => Ok(entry.public_key().key_data().clone()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no key found".into()),
    }
}

/// Verifies an SSH signature with a host key. RSA's legacy `ssh-rsa` (SHA-1), which Go's
/// `ssh.Signer` uses for RSA host keys, is accepted as upstream accepts it.
fn verify_signature(key: &KeyData, message: &[u8], wire: &WireSignature) -> Result<(), String> {
    if let KeyData::Rsa(rsa) = key {
        let params = match wire.format.as_str() {
            "ssh-rsa" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "rsa-sha2-256" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            "rsa-sha2-512" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA512,
            other => return Err(format!("ssh: signature type {other} for key type ssh-rsa")),
        };
        let components = aws_lc_rs::signature::RsaPublicKeyComponents {
            n: strip_mpint(rsa.n.as_bytes()),
            e: strip_mpint(rsa.e.as_bytes()),
        };
        return components
            .verify(params, message, &wire.blob)
            .map_err(|_| "ssh: signature did not verify (crypto/rsa: verification error)".into());
    }
    let algorithm = Algorithm::new(&wire.format).map_err(|e| e.to_string())?;
    let signature =
        ssh_key::Signature::new(algorithm, wire.blob.clone()).map_err(|e| e.to_string())?;
    key.verify(message, &signature)
        .map_err(|_| "ssh: signature did not verify".to_owned())
}

fn strip_mpint(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

mod wire;

#[cfg(test)]
mod tests;
