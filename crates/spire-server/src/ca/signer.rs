//! Signing with a KeyManager key, wherever it is: a key in this process signs inline (the
//! X509-SVID hot path, unchanged), a key held elsewhere (KMS, external plugin) signs the
//! laid-out certificate or token with one round trip to its KeyManager.

use spire_core::jwt::{self, JwtSvidParams};
use spire_core::keys::{KeyType, ecdsa_der_to_fixed};
use spire_core::x509::{
    self, CaTemplate, CheckedIssuer, Issuer, RemoteIssuer, Subject, SvidTemplate, Unsigned,
    X509Error,
};

use super::CaError;
use crate::plugins::keymanager::{RemoteKey, SigningKey};

/// An X509 CA's key with its certificate checked against it once.
pub(super) enum CaSigner {
    /// The key is in this process.
    Local {
        key: std::sync::Arc<spire_core::keys::PrivateKey>,
        issuer: CheckedIssuer,
    },
    /// The key is held by a remote KeyManager.
    Remote {
        key: RemoteKey,
        issuer: RemoteIssuer,
    },
}

fn unusable(e: X509Error) -> CaError {
    CaError::Internal(format!("X509 CA unusable: {e}"))
}

fn key_manager_error(e: crate::plugins::keymanager::KeyManagerError) -> CaError {
    CaError::Internal(format!("key manager: {e}"))
}

impl CaSigner {
    /// Checks `certificate` against `key`.
    pub(super) fn new(key: SigningKey, certificate: &[u8]) -> Result<Self, CaError> {
        match key {
            SigningKey::Local(key) => {
                let issuer = Issuer::new(certificate, &key)
                    .map_err(unusable)?
                    .checked()
                    .clone();
                Ok(Self::Local { key, issuer })
            }
            SigningKey::Remote(key) => {
                let issuer =
                    RemoteIssuer::new(certificate, key.public_key().clone()).map_err(unusable)?;
                Ok(Self::Remote { key, issuer })
            }
        }
    }

    /// Signs an X509-SVID for `subject_public_key`.
    pub(super) async fn x509_svid(
        &self,
        subject_public_key: &[u8],
        template: &SvidTemplate,
    ) -> Result<Vec<u8>, X509OrKey> {
        match self {
            Self::Local { key, issuer } => {
                let issuer = Issuer::from_checked(key, issuer.clone());
                Ok(x509::x509_svid_for_key(
                    &issuer,
                    subject_public_key,
                    template,
                )?)
            }
            Self::Remote { key, issuer } => {
                let unsigned = x509::x509_svid_unsigned(issuer, subject_public_key, template)?;
                remote_sign(key, &unsigned).await
            }
        }
    }

    /// Signs an intermediate (downstream) CA for `subject_public_key`.
    pub(super) async fn intermediate_ca(
        &self,
        subject_public_key: &[u8],
        template: &CaTemplate,
    ) -> Result<Vec<u8>, X509OrKey> {
        match self {
            Self::Local { key, issuer } => {
                let issuer = Issuer::from_checked(key, issuer.clone());
                Ok(x509::intermediate_ca(
                    &issuer,
                    subject_public_key,
                    template,
                )?)
            }
            Self::Remote { key, issuer } => {
                let unsigned =
                    x509::intermediate_ca_unsigned(issuer, subject_public_key, template)?;
                remote_sign(key, &unsigned).await
            }
        }
    }
}

/// A certificate could not be built ([`X509Error`], mapped by the caller to a gRPC code) or
/// the remote key could not sign (always Internal).
#[derive(Debug)]
pub(super) enum X509OrKey {
    /// Building the certificate failed.
    X509(X509Error),
    /// The KeyManager failed to sign.
    Key(CaError),
}

impl From<X509Error> for X509OrKey {
    fn from(e: X509Error) -> Self {
        Self::X509(e)
    }
}

async fn remote_sign(key: &RemoteKey, unsigned: &Unsigned) -> Result<Vec<u8>, X509OrKey> {
    let scheme = key.public_key().key_type().x509_scheme();
    let signature = key
        .sign(unsigned.tbs(), scheme)
        .await
        .map_err(|e| X509OrKey::Key(key_manager_error(e)))?;
    Ok(unsigned.assemble(&signature))
}

/// Self-signs a root CA with `key`.
pub(super) async fn self_signed_ca(
    key: &SigningKey,
    template: &CaTemplate,
) -> Result<Vec<u8>, CaError> {
    let fail = |e: X509Error| CaError::Internal(format!("unable to self-sign the X509 CA: {e}"));
    match key {
        SigningKey::Local(key) => x509::self_signed_ca(key, template).map_err(fail),
        SigningKey::Remote(key) => {
            let unsigned =
                x509::self_signed_ca_unsigned(key.public_key(), template).map_err(fail)?;
            remote_sign(key, &unsigned).await.map_err(|e| match e {
                X509OrKey::X509(e) => fail(e),
                X509OrKey::Key(e) => e,
            })
        }
    }
}

/// A CSR for `key` carrying `subject` and the trust domain ID, for the UpstreamAuthority to
/// sign.
pub(super) async fn upstream_ca_csr(
    key: &SigningKey,
    subject: &Subject,
    trust_domain: &spire_core::TrustDomain,
) -> Result<Vec<u8>, CaError> {
    let fail = |e: X509Error| CaError::Internal(e.to_string());
    match key {
        SigningKey::Local(key) => {
            x509::upstream_ca_csr_der(key, subject, trust_domain).map_err(fail)
        }
        SigningKey::Remote(key) => {
            let unsigned = x509::upstream_ca_csr_unsigned(key.public_key(), subject, trust_domain)
                .map_err(fail)?;
            remote_sign(key, &unsigned).await.map_err(|e| match e {
                X509OrKey::X509(e) => fail(e),
                X509OrKey::Key(e) => e,
            })
        }
    }
}

/// Signs a JWT-SVID with `key` under `kid`.
pub(super) async fn jwt_svid(
    key: &SigningKey,
    kid: &str,
    params: &JwtSvidParams,
) -> Result<String, CaError> {
    match key {
        SigningKey::Local(key) => jwt::mint_jwt_svid(key, kid, params).map_err(jwt_fail),
        SigningKey::Remote(key) => {
            let unsigned = jwt::jwt_svid_unsigned(key.public_key().key_type(), kid, params)
                .map_err(jwt_fail)?;
            remote_sign_jwt(key, &unsigned).await
        }
    }
}

/// Signs a JWT carrying `claims` as a CredentialComposer left them, with `key` under `kid`.
pub(super) async fn jwt_with_claims(
    key: &SigningKey,
    kid: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, CaError> {
    match key {
        SigningKey::Local(key) => {
            jwt::mint_jwt_with_claims(key, kid, None, claims).map_err(jwt_fail)
        }
        SigningKey::Remote(key) => {
            let unsigned =
                jwt::jwt_with_claims_unsigned(key.public_key().key_type(), kid, None, claims)
                    .map_err(jwt_fail)?;
            remote_sign_jwt(key, &unsigned).await
        }
    }
}

fn jwt_fail(e: jwt::JwtSvidError) -> CaError {
    CaError::Internal(format!("unable to sign JWT-SVID: {e}"))
}

async fn remote_sign_jwt(key: &RemoteKey, unsigned: &jwt::UnsignedJwt) -> Result<String, CaError> {
    let scheme = unsigned.algorithm().scheme().ok_or_else(|| {
        CaError::Internal(format!(
            "unable to sign JWT-SVID: no signature scheme for {}",
            unsigned.algorithm().as_str()
        ))
    })?;
    let signature = key
        .sign(unsigned.signing_input(), scheme)
        .await
        .map_err(key_manager_error)?;
    // JWS wants ECDSA signatures as fixed-width r || s.
    let signature = match key.public_key().key_type() {
        KeyType::EcP256 => ecdsa_der_to_fixed(&signature, 32),
        KeyType::EcP384 => ecdsa_der_to_fixed(&signature, 48),
        KeyType::Rsa2048 | KeyType::Rsa4096 => Ok(signature),
    }
    .map_err(|e| CaError::Internal(format!("unable to sign JWT-SVID: {e}")))?;
    Ok(unsigned.assemble(&signature))
}
