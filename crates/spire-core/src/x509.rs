//! X.509 for SPIFFE, with no I/O: building CA certificates and X509-SVIDs the way upstream
//! SPIRE's credential builder (`pkg/server/credtemplate`) does, reading CSRs, and checking and
//! verifying X509-SVIDs against the SPIFFE X509-SVID standard.
//!
//! Certificates go in and out as DER. Every issued certificate gets a random serial number in
//! `[1, 2^128 - 1]`, a SubjectKeyIdentifier (SHA-1 of the public key bits, RFC 5280 method 1,
//! as Go computes it) and, when its issuer has one, an AuthorityKeyIdentifier. No issued
//! certificate outlives its issuer.
//!
//! rcgen lays certificates out; the issuer name is then copied byte for byte from the issuer
//! certificate and the result is signed here. rcgen would otherwise re-encode the issuer name
//! from a map of attributes, which loses repeated attributes (`DC=example,DC=org`) and rejects
//! multi-valued ones, so certificates signed by an operator's upstream CA would not chain.

use aws_lc_rs::digest;
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use time::{Duration, OffsetDateTime};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::keys::{PrivateKey, PublicKey};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a certificate, CSR or X509-SVID could not be built, read or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// Bytes that should hold a DER certificate do not.
    #[error("certificate {index} is not a valid DER X.509 certificate: {reason}")]
    MalformedCertificate {
        /// Position of the certificate in its chain (0 for a lone certificate).
        index: usize,
        /// What the parser found wrong.
        reason: String,
    },
    /// A chain with no certificate in it.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// Bytes that should hold a DER PKCS#10 CSR do not.
    #[error("certificate signing request is not valid DER PKCS#10: {0}")]
    MalformedCsr(String),
    /// The CSR's self-signature does not verify with the public key it carries.
    #[error("certificate signing request signature does not verify with its own public key: {0}")]
    CsrSignature(String),
    /// A subject public key that is malformed or of an algorithm that cannot be certified.
    #[error("unsupported or malformed subject public key: {0}")]
    UnsupportedPublicKey(String),
    /// A subject field with several values, which the certificate writer cannot encode.
    #[error("subject {field} has {count} values; at most one is supported")]
    MultiValuedSubject {
        /// The subject field, e.g. `organization`.
        field: &'static str,
        /// How many values it has.
        count: usize,
    },
    /// A DNS name that cannot be written as a DNS SAN.
    #[error("DNS name {0:?} is not an ASCII string and cannot be a DNS SAN")]
    InvalidDnsName(String),
    /// A validity time that X.509 cannot encode.
    #[error("certificate time {0} is outside the years 0 to 9999 that X.509 can encode")]
    TimeOutOfRange(OffsetDateTime),
    /// The validity window is empty, typically because the issuing CA has already expired.
    #[error(
        "certificate would be valid for no time: not_after {not_after} is not after not_before {not_before}"
    )]
    EmptyValidity {
        /// Start of the window.
        not_before: OffsetDateTime,
        /// End of the window, after capping at the issuer's expiry.
        not_after: OffsetDateTime,
    },
    /// The certificate given as issuer does not say CA=true.
    #[error("issuer certificate is not a CA: its basic constraints do not say CA=true")]
    IssuerNotCa,
    /// The private key given with an issuer certificate belongs to another certificate.
    #[error("issuer private key does not match the public key of the issuer certificate")]
    IssuerKeyMismatch,
    /// The crypto library failed to produce a certificate or signature.
    #[error("could not sign the certificate: {0}")]
    Signing(String),
    /// An X509-SVID leaf must carry exactly one URI SAN, its SPIFFE ID.
    #[error("X509-SVID has {0} URI SANs; exactly one is required")]
    UriSanCount(usize),
    /// The URI SAN is not a SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    InvalidSpiffeId {
        /// The URI found.
        uri: String,
        /// Why it is not a SPIFFE ID.
        source: SpiffeIdError,
    },
    /// A leaf SPIFFE ID that is only a trust domain: the standard requires a path.
    #[error("X509-SVID SPIFFE ID {0} has no path; a leaf SPIFFE ID needs a non-root path")]
    LeafIdWithoutPath(SpiffeId),
    /// A leaf with CA=true.
    #[error("X509-SVID leaf certificate has CA=true; a leaf must not be a CA")]
    LeafIsCa,
    /// A leaf without the key usage extension.
    #[error("X509-SVID leaf certificate has no key usage extension; it is required")]
    MissingKeyUsage,
    /// A leaf whose key usage extension is not critical.
    #[error("X509-SVID leaf key usage extension is not marked critical; it must be")]
    KeyUsageNotCritical,
    /// A leaf whose key usage lacks digitalSignature.
    #[error("X509-SVID leaf key usage lacks digitalSignature; it is required")]
    MissingDigitalSignature,
    /// A leaf allowed to sign certificates or CRLs.
    #[error(
        "X509-SVID leaf key usage has keyCertSign or cRLSign; a leaf must not sign certificates or CRLs"
    )]
    LeafCanSign,
    /// A leaf extended key usage without serverAuth or clientAuth.
    #[error(
        "X509-SVID extended key usage lacks {0}; when present it must include serverAuth and clientAuth"
    )]
    MissingExtendedKeyUsage(&'static str),
    /// A certificate after the leaf that is not a CA.
    #[error(
        "certificate {index} of the X509-SVID chain is not a CA; every certificate after the leaf needs CA=true"
    )]
    IntermediateNotCa {
        /// Position in the chain (the leaf is 0).
        index: usize,
    },
    /// A certificate after the leaf whose key usage does not allow signing certificates.
    #[error(
        "certificate {index} of the X509-SVID chain lacks keyCertSign key usage; it cannot sign certificates"
    )]
    IntermediateCannotSign {
        /// Position in the chain (the leaf is 0).
        index: usize,
    },
    /// Verification was asked against a bundle without certificates.
    #[error("trust bundle has no X.509 certificates to verify against")]
    EmptyBundle,
    /// A bundle certificate that cannot serve as a trust anchor.
    #[error("trust bundle certificate {index} cannot be used as a root: {reason}")]
    BadBundleCertificate {
        /// Position in the bundle.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate of the chain has expired.
    #[error("a certificate of the X509-SVID chain expired at {not_after} (checked at {now})")]
    Expired {
        /// When the certificate expired.
        not_after: OffsetDateTime,
        /// The time verification used.
        now: OffsetDateTime,
    },
    /// A certificate of the chain is not valid yet.
    #[error(
        "a certificate of the X509-SVID chain is not valid before {not_before} (checked at {now})"
    )]
    NotYetValid {
        /// When the certificate becomes valid.
        not_before: OffsetDateTime,
        /// The time verification used.
        now: OffsetDateTime,
    },
    /// The chain does not lead to any certificate of the bundle.
    #[error(
        "X509-SVID chain does not lead to any currently valid certificate of the trust domain's bundle"
    )]
    UnknownIssuer,
    /// Any other path validation failure (bad signature, path length, unknown critical extension).
    #[error("X509-SVID chain verification failed: {0}")]
    ChainVerification(String),
}

/// How far back `not_before` is set, to tolerate clock skew (upstream's `NotBeforeCushion`).
pub const NOT_BEFORE_CUSHION: Duration = Duration::seconds(10);

/// When a certificate is valid: from `not_before` to `not_after`, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: OffsetDateTime,
    /// Last instant of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From `now - 10 s` to `now + ttl`, as upstream computes every certificate's lifetime.
    pub fn from_now(now: OffsetDateTime, ttl: Duration) -> Self {
        Self {
            not_before: now.saturating_sub(NOT_BEFORE_CUSHION),
            not_after: now.saturating_add(ttl),
        }
    }

    /// Cuts `not_after` to `cap` (the issuer's expiry), then checks the window can be encoded.
    fn capped_at(self, cap: Option<OffsetDateTime>) -> Result<Self, X509Error> {
        let not_before = encodable_time(self.not_before)?;
        let not_after = encodable_time(cap.map_or(self.not_after, |cap| self.not_after.min(cap)))?;
        if not_after <= not_before {
            return Err(X509Error::EmptyValidity {
                not_before,
                not_after,
            });
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }
}

/// Normalises to UTC whole seconds and refuses years X.509 cannot write (rcgen would panic).
fn encodable_time(time: OffsetDateTime) -> Result<OffsetDateTime, X509Error> {
    OffsetDateTime::from_unix_timestamp(time.unix_timestamp())
        .ok()
        .filter(|utc| (0..=9999).contains(&utc.year()))
        .ok_or(X509Error::TimeOutOfRange(time))
}

/// A certificate subject (distinguished name), as upstream's `ca_subject` configuration and
/// registration entries describe it. Fields are written in Go's order; empty strings are
/// left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// `C`, at most one value.
    pub country: Vec<String>,
    /// `ST`, at most one value.
    pub province: Vec<String>,
    /// `L`, at most one value.
    pub locality: Vec<String>,
    /// `O`, at most one value.
    pub organization: Vec<String>,
    /// `OU`, at most one value.
    pub organizational_unit: Vec<String>,
    /// `CN`.
    pub common_name: Option<String>,
    /// `serialNumber`; CA certificates get their serial number here when it is unset.
    pub serial_number: Option<String>,
    /// `x500UniqueIdentifier` (2.5.4.45); set by upstream's `uniqueid` CredentialComposer.
    pub x500_unique_identifier: Option<String>,
}

impl Subject {
    /// Upstream's default CA subject: `C=US, O=SPIFFE`.
    pub fn default_ca() -> Self {
        Self {
            country: vec!["US".into()],
            organization: vec!["SPIFFE".into()],
            ..Self::default()
        }
    }

    /// Upstream's default X509-SVID subject: `C=US, O=SPIRE`.
    pub fn default_x509_svid() -> Self {
        Self {
            country: vec!["US".into()],
            organization: vec!["SPIRE".into()],
            ..Self::default()
        }
    }

    /// Whether no field has a non-empty value; an empty subject is replaced by the default.
    pub fn is_empty(&self) -> bool {
        let lists = [
            &self.country,
            &self.province,
            &self.locality,
            &self.organization,
            &self.organizational_unit,
        ];
        let singles = [
            &self.common_name,
            &self.serial_number,
            &self.x500_unique_identifier,
        ];
        lists
            .iter()
            .all(|values| values.iter().all(String::is_empty))
            && singles
                .iter()
                .all(|value| value.as_deref().unwrap_or_default().is_empty())
    }

    /// Adds the `x500UniqueIdentifier` upstream's `uniqueid` CredentialComposer adds to
    /// workload X509-SVIDs (SPIRE 1.4.2 to 1.8 added it by default).
    pub fn with_unique_id(mut self, spiffe_id: &SpiffeId) -> Self {
        self.x500_unique_identifier = Some(unique_id(spiffe_id));
        self
    }

    fn to_distinguished_name(&self) -> Result<DistinguishedName, X509Error> {
        let mut dn = DistinguishedName::new();
        let lists = [
            ("country", DnType::CountryName, &self.country),
            ("province", DnType::StateOrProvinceName, &self.province),
            ("locality", DnType::LocalityName, &self.locality),
            ("organization", DnType::OrganizationName, &self.organization),
            (
                "organizational_unit",
                DnType::OrganizationalUnitName,
                &self.organizational_unit,
            ),
        ];
        for (field, dn_type, values) in lists {
            let values: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
            match values.as_slice() {
                [] => {}
                [value] => dn.push(dn_type, dn_value(value)),
                _ => {
                    return Err(X509Error::MultiValuedSubject {
                        field,
                        count: values.len(),
                    });
                }
            }
        }
        let singles = [
            (DnType::CommonName, &self.common_name),
            (
                DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
                &self.serial_number,
            ),
            (
                DnType::CustomDnType(OID_UNIQUE_ID.to_vec()),
                &self.x500_unique_identifier,
            ),
        ];
        for (dn_type, value) in singles {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                dn.push(dn_type, dn_value(value));
            }
        }
        Ok(dn)
    }
}

const OID_SERIAL_NUMBER: [u64; 4] = [2, 5, 4, 5];
const OID_UNIQUE_ID: [u64; 4] = [2, 5, 4, 45];

/// PrintableString when the value allows it, else UTF8String: what Go writes.
fn dn_value(value: &str) -> DnValue {
    PrintableString::try_from(value)
        .map(DnValue::PrintableString)
        .unwrap_or_else(|_| DnValue::Utf8String(value.to_owned()))
}

/// The `x500UniqueIdentifier` value for a SPIFFE ID: the first 16 bytes of SHA-256 of the ID,
/// hex-encoded, exactly as upstream computes it.
pub fn unique_id(spiffe_id: &SpiffeId) -> String {
    let sum = digest::digest(&digest::SHA256, spiffe_id.as_str().as_bytes());
    hex(sum.as_ref().get(..16).unwrap_or_default())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What goes into a CA certificate besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaTemplate {
    /// The trust domain; its ID (`spiffe://<td>`) becomes the URI SAN.
    pub trust_domain: TrustDomain,
    /// The subject; empty means [`Subject::default_ca`].
    pub subject: Subject,
    /// The requested lifetime; `not_after` is capped at the issuer's.
    pub validity: Validity,
}

impl CaTemplate {
    /// A template with upstream's default CA subject.
    pub fn new(trust_domain: TrustDomain, validity: Validity) -> Self {
        Self {
            trust_domain,
            subject: Subject::default_ca(),
            validity,
        }
    }
}

/// What goes into an X509-SVID besides its key. The SPIFFE ID comes from the registration
/// entry, never from a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidTemplate {
    /// The one URI SAN.
    pub spiffe_id: SpiffeId,
    /// DNS SANs; the first also becomes the subject CN, as upstream does.
    pub dns_names: Vec<String>,
    /// The subject; empty means [`Subject::default_x509_svid`].
    pub subject: Subject,
    /// The requested lifetime; `not_after` is capped at the issuer's.
    pub validity: Validity,
}

impl SvidTemplate {
    /// A template with no DNS names and upstream's default X509-SVID subject.
    pub fn new(spiffe_id: SpiffeId, validity: Validity) -> Self {
        Self {
            spiffe_id,
            dns_names: Vec::new(),
            subject: Subject::default_x509_svid(),
            validity,
        }
    }
}

/// A CA that signs certificates: its certificate and private key. Holds what signing needs
/// from the certificate (exact subject name, key identifier, expiry).
#[derive(Debug)]
pub struct Issuer<'a> {
    key: &'a PrivateKey,
    checked: CheckedIssuer,
}

/// What [`Issuer::new`] took from a CA certificate after checking it against its key. A CA
/// that signs many SVIDs keeps it, so each signature skips parsing the certificate again.
#[derive(Debug, Clone)]
pub struct CheckedIssuer {
    subject_name_der: Vec<u8>,
    subject_key_id: Option<Vec<u8>>,
    not_after: OffsetDateTime,
}

impl CheckedIssuer {
    /// Checks that `ca_cert_der` is a CA certificate for the public key `key_spki_der`.
    pub fn check(ca_cert_der: &[u8], key_spki_der: &[u8]) -> Result<Self, X509Error> {
        let cert = parse_one(ca_cert_der)?;
        if !is_ca(&cert, 0)? {
            return Err(X509Error::IssuerNotCa);
        }
        let key_bits = parse_spki(key_spki_der)?.subject_public_key.data;
        if key_bits != cert.public_key().subject_public_key.data {
            return Err(X509Error::IssuerKeyMismatch);
        }
        Ok(Self {
            subject_name_der: cert.subject().as_raw().to_vec(),
            subject_key_id: subject_key_id_of(&cert, 0)?,
            not_after: cert.validity().not_after.to_datetime(),
        })
    }
}

impl<'a> Issuer<'a> {
    /// Checks that `ca_cert_der` is a CA certificate and that `key` is its private key.
    pub fn new(ca_cert_der: &[u8], key: &'a PrivateKey) -> Result<Self, X509Error> {
        let checked = CheckedIssuer::check(ca_cert_der, &key.public_key_der())?;
        Ok(Self { key, checked })
    }

    /// Rebuilds an issuer from what [`Issuer::new`] checked earlier for this same `key`.
    pub fn from_checked(key: &'a PrivateKey, checked: CheckedIssuer) -> Self {
        Self { key, checked }
    }

    /// What was checked, to keep for [`Issuer::from_checked`].
    pub fn checked(&self) -> &CheckedIssuer {
        &self.checked
    }

    /// When the CA expires; no certificate it signs is valid longer.
    pub fn not_after(&self) -> OffsetDateTime {
        self.checked.not_after
    }
}

/// A CA whose private key is held outside this process (a KMS or an external KeyManager
/// plugin): its public key and what was checked of its certificate. Certificates it issues
/// come out [`Unsigned`], to be signed by whoever holds the key.
#[derive(Debug, Clone)]
pub struct RemoteIssuer {
    public: PublicKey,
    checked: CheckedIssuer,
}

impl RemoteIssuer {
    /// Checks that `ca_cert_der` is a CA certificate for `public`.
    pub fn new(ca_cert_der: &[u8], public: PublicKey) -> Result<Self, X509Error> {
        let checked = CheckedIssuer::check(ca_cert_der, public.spki_der())?;
        Ok(Self { public, checked })
    }

    /// The CA's public key, whose type says how the signature is made.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// When the CA expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.checked.not_after
    }
}

/// A certificate or CSR laid out and waiting for its signature: the DER a key signs
/// ([`Unsigned::tbs`]) and how the signature is put in ([`Unsigned::assemble`]). This lets a
/// key outside this process sign with its own round trip.
#[derive(Debug, Clone)]
pub struct Unsigned {
    tbs: Vec<u8>,
    algorithm: Vec<u8>,
}

impl Unsigned {
    /// The bytes to sign (a TBSCertificate or CertificationRequestInfo).
    pub fn tbs(&self) -> &[u8] {
        &self.tbs
    }

    /// The signed DER, given the signature over [`Unsigned::tbs`] (ECDSA as ASN.1 DER).
    pub fn assemble(&self, signature: &[u8]) -> Vec<u8> {
        let signature_bits = der_tlv(TAG_BIT_STRING, &[&[0u8][..], signature].concat());
        der_tlv(
            TAG_SEQUENCE,
            &[self.tbs.as_slice(), &self.algorithm, &signature_bits].concat(),
        )
    }

    /// Signs with a key held in this process.
    pub fn sign(&self, key: &PrivateKey) -> Result<Vec<u8>, X509Error> {
        let signature =
            rcgen::SigningKey::sign(key.key_pair(), &self.tbs).map_err(signing_error)?;
        Ok(self.assemble(&signature))
    }

    /// Splits rcgen's draft (signed by [`Placeholder`]) into what is signed and the algorithm.
    fn from_draft(draft: &[u8]) -> Result<Self, X509Error> {
        let [tbs, algorithm, _no_signature]: [&[u8]; 3] = der_children(draft)?
            .try_into()
            .map_err(|_| layout_error())?;
        Ok(Self {
            tbs: tbs.to_vec(),
            algorithm: algorithm.to_vec(),
        })
    }
}

fn layout_error() -> X509Error {
    X509Error::Signing("unexpected certificate layout from rcgen".into())
}

/// Builds a self-signed root CA certificate for a trust domain: CA=true (critical), key
/// usage keyCertSign and cRLSign (critical), URI SAN `spiffe://<td>`, as upstream does.
pub fn self_signed_ca(key: &PrivateKey, template: &CaTemplate) -> Result<Vec<u8>, X509Error> {
    self_signed_ca_layout(key.key_pair(), template)?.sign(key)
}

/// [`self_signed_ca`] for a key held elsewhere: the certificate to have `key` sign.
pub fn self_signed_ca_unsigned(
    key: &PublicKey,
    template: &CaTemplate,
) -> Result<Unsigned, X509Error> {
    self_signed_ca_layout(key, template)
}

fn self_signed_ca_layout(
    key: &impl rcgen::PublicKeyData,
    template: &CaTemplate,
) -> Result<Unsigned, X509Error> {
    let validity = template.validity.capped_at(None)?;
    let mut params = ca_params(template, validity)?;
    params.key_identifier_method =
        KeyIdMethod::PreSpecified(key_identifier(&key.subject_public_key_info())?);
    let draft = params
        .self_signed(&Placeholder(key))
        .map_err(signing_error)?;
    Unsigned::from_draft(draft.der())
}

/// Builds a CA certificate for `subject_public_key` (SPKI DER, e.g. from a CSR or a
/// KeyManager key) signed by `issuer`, with the same CA extensions as a root.
pub fn intermediate_ca(
    issuer: &Issuer<'_>,
    subject_public_key: &[u8],
    template: &CaTemplate,
) -> Result<Vec<u8>, X509Error> {
    intermediate_ca_layout(
        issuer.key.key_pair(),
        &issuer.checked,
        subject_public_key,
        template,
    )?
    .sign(issuer.key)
}

/// [`intermediate_ca`] for a CA whose key is held elsewhere.
pub fn intermediate_ca_unsigned(
    issuer: &RemoteIssuer,
    subject_public_key: &[u8],
    template: &CaTemplate,
) -> Result<Unsigned, X509Error> {
    intermediate_ca_layout(
        &issuer.public,
        &issuer.checked,
        subject_public_key,
        template,
    )
}

fn intermediate_ca_layout(
    issuer_key: &impl rcgen::PublicKeyData,
    checked: &CheckedIssuer,
    subject_public_key: &[u8],
    template: &CaTemplate,
) -> Result<Unsigned, X509Error> {
    let validity = template.validity.capped_at(Some(checked.not_after))?;
    let params = ca_params(template, validity)?;
    layout(params, subject_public_key, issuer_key, checked)
}

fn ca_params(template: &CaTemplate, validity: Validity) -> Result<CertificateParams, X509Error> {
    let serial = random_serial()?;
    let mut subject = non_empty_or(&template.subject, Subject::default_ca);
    if subject.serial_number.as_deref().is_none_or(str::is_empty) {
        subject.serial_number = Some(u128::from_be_bytes(serial).to_string());
    }
    let mut params = base_params(&subject, serial, validity)?;
    params.subject_alt_names = vec![uri_san(&template.trust_domain.id_string())?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Issues an X509-SVID for the public key of a CSR. The CSR's signature is verified, and only
/// its public key is used: its subject and SANs are ignored (CVE-2021-27098).
pub fn x509_svid_from_csr(
    issuer: &Issuer<'_>,
    csr_der: &[u8],
    template: &SvidTemplate,
) -> Result<Vec<u8>, X509Error> {
    let public_key = csr_public_key(csr_der)?;
    x509_svid_for_key(issuer, &public_key, template)
}

/// Issues an X509-SVID for a public key given as SPKI DER: exactly one URI SAN (the template's
/// SPIFFE ID), optional DNS SANs, CA=false (critical), key usage digitalSignature,
/// keyEncipherment and keyAgreement (critical), extended key usage serverAuth and clientAuth.
pub fn x509_svid_for_key(
    issuer: &Issuer<'_>,
    subject_public_key: &[u8],
    template: &SvidTemplate,
) -> Result<Vec<u8>, X509Error> {
    x509_svid_layout(
        issuer.key.key_pair(),
        &issuer.checked,
        subject_public_key,
        template,
    )?
    .sign(issuer.key)
}

/// [`x509_svid_for_key`] for a CA whose key is held elsewhere.
pub fn x509_svid_unsigned(
    issuer: &RemoteIssuer,
    subject_public_key: &[u8],
    template: &SvidTemplate,
) -> Result<Unsigned, X509Error> {
    x509_svid_layout(
        &issuer.public,
        &issuer.checked,
        subject_public_key,
        template,
    )
}

fn x509_svid_layout(
    issuer_key: &impl rcgen::PublicKeyData,
    checked: &CheckedIssuer,
    subject_public_key: &[u8],
    template: &SvidTemplate,
) -> Result<Unsigned, X509Error> {
    if template.spiffe_id.path().is_empty() {
        return Err(X509Error::LeafIdWithoutPath(template.spiffe_id.clone()));
    }
    let validity = template.validity.capped_at(Some(checked.not_after))?;
    let mut subject = non_empty_or(&template.subject, Subject::default_x509_svid);
    if let Some(first) = template.dns_names.first() {
        subject.common_name = Some(first.clone());
    }
    let mut params = base_params(&subject, random_serial()?, validity)?;
    for name in &template.dns_names {
        let dns = Ia5String::try_from(name.as_str())
            .map_err(|_| X509Error::InvalidDnsName(name.clone()))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params
        .subject_alt_names
        .push(uri_san(template.spiffe_id.as_str())?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    layout(params, subject_public_key, issuer_key, checked)
}

fn non_empty_or(subject: &Subject, default: fn() -> Subject) -> Subject {
    if subject.is_empty() {
        default()
    } else {
        subject.clone()
    }
}

fn base_params(
    subject: &Subject,
    serial: [u8; 16],
    validity: Validity,
) -> Result<CertificateParams, X509Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_distinguished_name()?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, X509Error> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| X509Error::Signing(format!("URI SAN {uri:?}: {e}")))
}

/// A random serial number in `[1, 2^128 - 1]`, as upstream's `x509util.NewSerialNumber`.
fn random_serial() -> Result<[u8; 16], X509Error> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| X509Error::Signing("no randomness for a serial number".into()))?;
    if serial == [0; 16] {
        serial[15] = 1;
    }
    Ok(serial)
}

/// SHA-1 of the subjectPublicKey bits (RFC 5280 section 4.2.1.2 method 1), as upstream.
fn key_identifier(spki_der: &[u8]) -> Result<Vec<u8>, X509Error> {
    let spki = parse_spki(spki_der)?;
    let sum = digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        &spki.subject_public_key.data,
    );
    Ok(sum.as_ref().to_vec())
}

fn parse_spki(spki_der: &[u8]) -> Result<SubjectPublicKeyInfo<'_>, X509Error> {
    match SubjectPublicKeyInfo::from_der(spki_der) {
        Ok(([], spki)) => Ok(spki),
        Ok(_) => Err(X509Error::UnsupportedPublicKey(
            "trailing bytes after the SubjectPublicKeyInfo".into(),
        )),
        Err(e) => Err(X509Error::UnsupportedPublicKey(e.to_string())),
    }
}

fn signing_error(e: rcgen::Error) -> X509Error {
    X509Error::Signing(e.to_string())
}

/// Lays `params` out for `subject_public_key` as issued by `issuer_key` with the issuer's
/// exact name, ready for the issuer's signature.
fn layout(
    mut params: CertificateParams,
    subject_public_key: &[u8],
    issuer_key: &impl rcgen::PublicKeyData,
    checked: &CheckedIssuer,
) -> Result<Unsigned, X509Error> {
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(subject_public_key)
        .map_err(|e| X509Error::UnsupportedPublicKey(e.to_string()))?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject_public_key)?);
    params.use_authority_key_identifier_extension = checked.subject_key_id.is_some();

    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = DistinguishedName::new();
    issuer_params.key_identifier_method =
        KeyIdMethod::PreSpecified(checked.subject_key_id.clone().unwrap_or_default());
    let layout_only = rcgen::Issuer::new(issuer_params, Placeholder(issuer_key));
    let draft = params
        .signed_by(&public_key, &layout_only)
        .map_err(signing_error)?;
    with_issuer_name(draft.der(), &checked.subject_name_der)
}

/// Stands in for the signing key while rcgen lays a certificate or CSR out: it signs
/// nothing, as the result is signed once it is complete (see [`Unsigned`]).
struct Placeholder<'a, K: ?Sized>(&'a K);

impl<K: rcgen::PublicKeyData + ?Sized> rcgen::PublicKeyData for Placeholder<'_, K> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl<K: rcgen::PublicKeyData + ?Sized> rcgen::SigningKey for Placeholder<'_, K> {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

/// Position of `issuer` among the TBSCertificate fields: version, serial, signature, issuer.
const TBS_ISSUER_FIELD: usize = 3;
/// The empty Name rcgen writes for the placeholder issuer.
const EMPTY_NAME: [u8; 2] = [0x30, 0x00];
const TAG_SEQUENCE: u8 = 0x30;
const TAG_BIT_STRING: u8 = 0x03;

/// Puts `issuer_name` (DER Name) into rcgen's unsigned draft.
fn with_issuer_name(draft: &[u8], issuer_name: &[u8]) -> Result<Unsigned, X509Error> {
    let [tbs, algorithm, _no_signature]: [&[u8]; 3] = der_children(draft)?
        .try_into()
        .map_err(|_| layout_error())?;
    let mut fields = der_children(tbs)?;
    match fields.get_mut(TBS_ISSUER_FIELD) {
        Some(field) if *field == EMPTY_NAME => *field = issuer_name,
        _ => return Err(layout_error()),
    }
    Ok(Unsigned {
        tbs: der_tlv(TAG_SEQUENCE, &fields.concat()),
        algorithm: algorithm.to_vec(),
    })
}

/// The encoded elements inside a DER constructed value.
fn der_children(der: &[u8]) -> Result<Vec<&[u8]>, X509Error> {
    let der_error = |e: x509_parser::asn1_rs::Err<x509_parser::asn1_rs::Error>| {
        X509Error::Signing(format!("cannot re-read certificate DER: {e}"))
    };
    let (_, outer) = Any::from_der(der).map_err(der_error)?;
    let mut rest = outer.data;
    let mut children = Vec::new();
    while !rest.is_empty() {
        let (after, _) = Any::from_der(rest).map_err(der_error)?;
        let child = rest
            .get(..rest.len().saturating_sub(after.len()))
            .unwrap_or_default();
        children.push(child);
        rest = after;
    }
    Ok(children)
}

/// DER tag-length-value with a definite length.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 10);
    out.push(tag);
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let length: Vec<u8> = content
                .len()
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | length.len() as u8);
            out.extend_from_slice(&length);
        }
    }
    out.extend_from_slice(content);
    out
}

/// Verifies a DER CSR's self-signature and returns its public key as SPKI DER; nothing else
/// of the CSR is trusted.
pub fn csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>, X509Error> {
    let csr = match X509CertificationRequest::from_der(csr_der) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(X509Error::MalformedCsr(
                "trailing bytes after the CSR".into(),
            ));
        }
        Err(e) => return Err(X509Error::MalformedCsr(e.to_string())),
    };
    csr.verify_signature()
        .map_err(|e| X509Error::CsrSignature(e.to_string()))?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// Builds a DER CSR for `key` with an empty subject and no SANs, which is what agents send
/// to have workload and agent SVIDs minted.
pub fn csr_der(key: &PrivateKey) -> Result<Vec<u8>, X509Error> {
    csr_der_with_subject(key, &Subject::default())
}

/// [`csr_der`] for a key held elsewhere (an agent KeyManager plugin): the CSR to have `key`
/// sign, with an empty subject and no SANs.
pub fn csr_unsigned(key: &PublicKey) -> Result<Unsigned, X509Error> {
    let draft = CertificateParams::default()
        .serialize_request(&Placeholder(key))
        .map_err(signing_error)?;
    Unsigned::from_draft(draft.der())
}

/// Builds the server's intermediate CA request to an UpstreamAuthority: `subject`
/// (`ca_subject`) and the trust domain's SPIFFE ID as URI SAN, as upstream's
/// `BuildUpstreamSignedX509CACSR` (authorities that copy the CSR's names, such as ACM Private
/// CA, then issue a CA with the trust domain's ID).
pub fn upstream_ca_csr_der(
    key: &PrivateKey,
    subject: &Subject,
    trust_domain: &TrustDomain,
) -> Result<Vec<u8>, X509Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_distinguished_name()?;
    params.subject_alt_names = vec![uri_san(&trust_domain.id_string())?];
    let csr = params
        .serialize_request(key.key_pair())
        .map_err(signing_error)?;
    Ok(csr.der().to_vec())
}

/// Builds a DER CSR for `key` carrying `subject` and no SANs.
pub fn csr_der_with_subject(key: &PrivateKey, subject: &Subject) -> Result<Vec<u8>, X509Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_distinguished_name()?;
    let csr = params
        .serialize_request(key.key_pair())
        .map_err(signing_error)?;
    Ok(csr.der().to_vec())
}

/// [`upstream_ca_csr_der`] for a key held elsewhere: the CSR to have `key` sign.
pub fn upstream_ca_csr_unsigned(
    key: &PublicKey,
    subject: &Subject,
    trust_domain: &TrustDomain,
) -> Result<Unsigned, X509Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_distinguished_name()?;
    params.subject_alt_names = vec![uri_san(&trust_domain.id_string())?];
    let draft = params
        .serialize_request(&Placeholder(key))
        .map_err(signing_error)?;
    Unsigned::from_draft(draft.der())
}

/// Splits concatenated DER certificates (the Workload API's chain encoding) into one DER
/// value per certificate, in order.
pub fn parse_certificates(der_chain: &[u8]) -> Result<Vec<Vec<u8>>, X509Error> {
    if der_chain.is_empty() {
        return Err(X509Error::EmptyChain);
    }
    let mut certificates = Vec::new();
    let mut rest = der_chain;
    while !rest.is_empty() {
        let index = certificates.len();
        let (after, _) = x509_parser::parse_x509_certificate(rest)
            .map_err(|e| malformed(index, e.to_string()))?;
        let certificate = rest
            .get(..rest.len().saturating_sub(after.len()))
            .unwrap_or_default();
        certificates.push(certificate.to_vec());
        rest = after;
    }
    Ok(certificates)
}

fn malformed(index: usize, reason: impl Into<String>) -> X509Error {
    X509Error::MalformedCertificate {
        index,
        reason: reason.into(),
    }
}

fn parse_at(der: &[u8], index: usize) -> Result<X509Certificate<'_>, X509Error> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(malformed(index, "trailing bytes after the certificate")),
        Err(e) => Err(malformed(index, e.to_string())),
    }
}

fn parse_one(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    parse_at(der, 0)
}

/// Whether basic constraints say CA=true; a malformed extension is an error, not "no".
fn is_ca(cert: &X509Certificate<'_>, index: usize) -> Result<bool, X509Error> {
    let extension = cert
        .get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS)
        .map_err(|e| malformed(index, e.to_string()))?;
    match extension.map(|ext| ext.parsed_extension()) {
        None => Ok(false),
        Some(ParsedExtension::BasicConstraints(bc)) => Ok(bc.ca),
        Some(_) => Err(malformed(index, "basic constraints extension is malformed")),
    }
}

fn subject_key_id_of(
    cert: &X509Certificate<'_>,
    index: usize,
) -> Result<Option<Vec<u8>>, X509Error> {
    let extension = cert
        .get_extension_unique(&OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        .map_err(|e| malformed(index, e.to_string()))?;
    match extension.map(|ext| ext.parsed_extension()) {
        None => Ok(None),
        Some(ParsedExtension::SubjectKeyIdentifier(id)) => Ok(Some(id.0.to_vec())),
        Some(_) => Err(malformed(
            index,
            "subject key identifier extension is malformed",
        )),
    }
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>, index: usize) -> Result<Vec<&'a str>, X509Error> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| malformed(index, e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The certificate's one URI SAN as a SPIFFE ID (a CA's may be a bare trust domain ID).
fn one_spiffe_id(cert: &X509Certificate<'_>, index: usize) -> Result<SpiffeId, X509Error> {
    match uri_sans(cert, index)?.as_slice() {
        [uri] => SpiffeId::parse(uri).map_err(|source| X509Error::InvalidSpiffeId {
            uri: (*uri).to_owned(),
            source,
        }),
        uris => Err(X509Error::UriSanCount(uris.len())),
    }
}

/// Checks the X509-SVID standard's rules for a leaf and returns its SPIFFE ID.
fn check_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, X509Error> {
    let spiffe_id = one_spiffe_id(leaf, 0)?;
    if spiffe_id.path().is_empty() {
        return Err(X509Error::LeafIdWithoutPath(spiffe_id));
    }
    if is_ca(leaf, 0)? {
        return Err(X509Error::LeafIsCa);
    }
    let key_usage = leaf
        .key_usage()
        .map_err(|e| malformed(0, e.to_string()))?
        .ok_or(X509Error::MissingKeyUsage)?;
    if !key_usage.critical {
        return Err(X509Error::KeyUsageNotCritical);
    }
    if !key_usage.value.digital_signature() {
        return Err(X509Error::MissingDigitalSignature);
    }
    if key_usage.value.key_cert_sign() || key_usage.value.crl_sign() {
        return Err(X509Error::LeafCanSign);
    }
    let extended = leaf
        .extended_key_usage()
        .map_err(|e| malformed(0, e.to_string()))?;
    if let Some(extended) = extended {
        if !extended.value.server_auth {
            return Err(X509Error::MissingExtendedKeyUsage("serverAuth"));
        }
        if !extended.value.client_auth {
            return Err(X509Error::MissingExtendedKeyUsage("clientAuth"));
        }
    }
    Ok(spiffe_id)
}

/// Checks that a certificate after the leaf is a CA allowed to sign certificates.
fn check_signing_certificate(der: &[u8], index: usize) -> Result<(), X509Error> {
    let cert = parse_at(der, index)?;
    if !is_ca(&cert, index)? {
        return Err(X509Error::IntermediateNotCa { index });
    }
    let can_sign = cert
        .key_usage()
        .map_err(|e| malformed(index, e.to_string()))?
        .is_some_and(|ku| ku.value.key_cert_sign());
    if !can_sign {
        return Err(X509Error::IntermediateCannotSign { index });
    }
    Ok(())
}

/// Checks every X509-SVID rule that needs no trust bundle; returns the leaf's ID and expiry.
fn check_svid_rules(chain: &[Vec<u8>]) -> Result<(SpiffeId, OffsetDateTime), X509Error> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(X509Error::EmptyChain)?;
    let leaf = parse_at(leaf_der, 0)?;
    let spiffe_id = check_leaf(&leaf)?;
    for (offset, der) in intermediates.iter().enumerate() {
        check_signing_certificate(der, offset + 1)?;
    }
    Ok((spiffe_id, leaf.validity().not_after.to_datetime()))
}

/// An X509-SVID whose chain follows the X509-SVID standard's rules: a leaf with exactly one
/// URI SAN that is a SPIFFE ID with a path, CA=false, critical key usage with
/// digitalSignature and without keyCertSign/cRLSign, serverAuth and clientAuth if it has an
/// extended key usage; every further certificate a CA with keyCertSign. Parsing does not
/// check signatures or dates: [`verify_x509_svid`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    not_after: OffsetDateTime,
    chain: Vec<Vec<u8>>,
}

impl X509Svid {
    /// Checks a chain given leaf first, as separate DER certificates.
    pub fn parse(chain: Vec<Vec<u8>>) -> Result<Self, X509Error> {
        let (spiffe_id, not_after) = check_svid_rules(&chain)?;
        Ok(Self {
            spiffe_id,
            not_after,
            chain,
        })
    }

    /// Checks a chain given as concatenated DER, leaf first, as the Workload API sends it.
    pub fn parse_der_chain(der_chain: &[u8]) -> Result<Self, X509Error> {
        Self::parse(parse_certificates(der_chain)?)
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The leaf followed by its intermediates, DER.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }
}

/// Checks the X509-SVID rules of `chain` (leaf first), then verifies it (signatures, validity
/// at `now`, CA flags, path length, clientAuth if restricted) up to one of `bundle_roots`,
/// and returns the leaf's SPIFFE ID. Pass the bundle of the leaf's own trust domain only.
/// Bundle certificates that are not valid at `now` are not used, as Go's verifier does.
pub fn verify_x509_svid(
    chain: &[Vec<u8>],
    bundle_roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<SpiffeId, X509Error> {
    let (spiffe_id, _) = check_svid_rules(chain)?;
    let (leaf_der, intermediate_ders) = chain.split_first().ok_or(X509Error::EmptyChain)?;
    let roots = as_certificate_ders(bundle_roots);
    let anchors = trust_anchors(&roots, now)?;
    let leaf_der = CertificateDer::from(leaf_der.as_slice());
    let leaf =
        webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| malformed(0, format!("{e:?}")))?;
    let since_epoch = u64::try_from(now.unix_timestamp())
        .map(std::time::Duration::from_secs)
        .map_err(|_| X509Error::TimeOutOfRange(now))?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &as_certificate_ders(intermediate_ders),
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| chain_error(e, now))?;
    Ok(spiffe_id)
}

fn as_certificate_ders(ders: &[Vec<u8>]) -> Vec<CertificateDer<'_>> {
    ders.iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect()
}

/// The bundle certificates valid at `now`, as webpki trust anchors.
fn trust_anchors<'a>(
    roots: &'a [CertificateDer<'a>],
    now: OffsetDateTime,
) -> Result<Vec<TrustAnchor<'a>>, X509Error> {
    if roots.is_empty() {
        return Err(X509Error::EmptyBundle);
    }
    let mut anchors = Vec::with_capacity(roots.len());
    for (index, root) in roots.iter().enumerate() {
        let bad = |reason: String| X509Error::BadBundleCertificate { index, reason };
        let anchor = webpki::anchor_from_trusted_cert(root).map_err(|e| bad(format!("{e:?}")))?;
        let validity = certificate_validity(root).map_err(|e| bad(e.to_string()))?;
        if validity.not_before <= now && now <= validity.not_after {
            anchors.push(anchor);
        }
    }
    Ok(anchors)
}

fn chain_error(error: webpki::Error, now: OffsetDateTime) -> X509Error {
    let at = |time: UnixTime| {
        i64::try_from(time.as_secs())
            .ok()
            .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    match error {
        webpki::Error::CertExpired { not_after, .. } => X509Error::Expired {
            not_after: at(not_after),
            now,
        },
        webpki::Error::CertNotValidYet { not_before, .. } => X509Error::NotYetValid {
            not_before: at(not_before),
            now,
        },
        webpki::Error::UnknownIssuer => X509Error::UnknownIssuer,
        other => X509Error::ChainVerification(format!("{other:?}")),
    }
}

/// When a DER certificate expires.
pub fn certificate_not_after(der: &[u8]) -> Result<OffsetDateTime, X509Error> {
    Ok(parse_one(der)?.validity().not_after.to_datetime())
}

/// When a DER certificate is valid, e.g. to schedule CA rotation.
pub fn certificate_validity(der: &[u8]) -> Result<Validity, X509Error> {
    let cert = parse_one(der)?;
    Ok(Validity {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// A DER certificate's serial number in decimal, the form upstream stores for agents
/// (`cert_serial_number`) and compares on every agent call.
pub fn certificate_serial_decimal(der: &[u8]) -> Result<String, X509Error> {
    Ok(parse_one(der)?.tbs_certificate.serial.to_string())
}

/// A DER certificate's serial number in lowercase hex without leading zeros, as Go's `%x`
/// prints it.
pub fn certificate_serial_hex(der: &[u8]) -> Result<String, X509Error> {
    Ok(parse_one(der)?.tbs_certificate.serial.to_str_radix(16))
}

/// The SPIFFE ID in a DER certificate's one URI SAN: an SVID's ID, or a CA's trust domain ID.
pub fn certificate_spiffe_id(der: &[u8]) -> Result<SpiffeId, X509Error> {
    one_spiffe_id(&parse_one(der)?, 0)
}

/// A DER certificate's SubjectKeyIdentifier, if it has one; upstream names X.509 authorities
/// by it.
pub fn subject_key_id(der: &[u8]) -> Result<Option<Vec<u8>>, X509Error> {
    subject_key_id_of(&parse_one(der)?, 0)
}

/// A DER certificate's public key as SPKI DER, e.g. to compare with a KeyManager key.
pub fn certificate_public_key(der: &[u8]) -> Result<Vec<u8>, X509Error> {
    Ok(parse_one(der)?.public_key().raw.to_vec())
}

#[cfg(test)]
mod tests;
