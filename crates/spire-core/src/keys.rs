//! Private keys of the four types SPIRE uses (`ec-p256`, `ec-p384`, `rsa-2048`, `rsa-4096`):
//! generation, and DER/PEM in and out.
//!
//! Keys are always held and written as PKCS#8; SEC1 (`EC PRIVATE KEY`) and PKCS#1
//! (`RSA PRIVATE KEY`) are accepted on input because operators bring such files to the disk
//! UpstreamAuthority. Key bytes are zeroed on drop and never printed by `Debug`.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, RsaKeyPair,
};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::pem;

/// Why a key could not be generated or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key type name other than the four SPIRE knows.
    #[error("unknown key type {0:?}: use one of ec-p256, ec-p384, rsa-2048, rsa-4096")]
    UnknownKeyType(String),
    /// The crypto library failed to generate a key.
    #[error("could not generate a {0} key")]
    Generation(KeyType),
    /// The bytes are not a PKCS#8, SEC1 or PKCS#1 key of a supported type.
    #[error(
        "not a supported private key: expected PKCS#8, SEC1 or PKCS#1 DER of an ec-p256, ec-p384, rsa-2048 or rsa-4096 key"
    )]
    Unsupported,
    /// An RSA key of a size other than 2048 or 4096 bits.
    #[error("RSA keys of {bits} bits are not supported: use rsa-2048 or rsa-4096")]
    UnsupportedRsaSize {
        /// The key's modulus size.
        bits: usize,
    },
    /// The PEM text holds no private key block.
    #[error(
        "no private key found in PEM (expected a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block)"
    )]
    NoPemKey,
    /// The public key bytes are not a SubjectPublicKeyInfo of a supported type.
    #[error("unsupported or malformed public key: {0}")]
    PublicKey(String),
}

/// The key types SPIRE's `ca_key_type`, `jwt_key_type` and KeyManager plugins name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256, signing with SHA-256 (upstream's default).
    EcP256,
    /// ECDSA on NIST P-384, signing with SHA-384.
    EcP384,
    /// RSA with a 2048-bit modulus, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
    /// RSA with a 4096-bit modulus, PKCS#1 v1.5 signatures with SHA-256.
    Rsa4096,
}

impl KeyType {
    /// Every key type, in the order upstream documents them.
    pub const ALL: [Self; 4] = [Self::EcP256, Self::EcP384, Self::Rsa2048, Self::Rsa4096];

    /// The name used in configuration files, e.g. `ec-p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// The X.509 signature algorithm a key of this type signs certificates with.
    pub fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Rsa2048 | Self::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// Whether this is an RSA key type.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa4096)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| KeyError::UnknownKeyType(s.to_owned()))
    }
}

impl Serialize for KeyType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn rsa_key_type(bits: usize) -> Result<KeyType, KeyError> {
    match bits {
        2048 => Ok(KeyType::Rsa2048),
        4096 => Ok(KeyType::Rsa4096),
        bits => Err(KeyError::UnsupportedRsaSize { bits }),
    }
}

/// A private key of one of the supported types, held as PKCS#8.
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    key_pair: rcgen::KeyPair,
}

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = match key_type {
            KeyType::EcP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec()),
            KeyType::EcP384 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec()),
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                let size = if key_type == KeyType::Rsa2048 {
                    KeySize::Rsa2048
                } else {
                    KeySize::Rsa4096
                };
                RsaKeyPair::generate(size).and_then(|k| {
                    AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&k)
                        .map(|d| d.as_ref().to_vec())
                })
            }
        }
        .map_err(|_| KeyError::Generation(key_type))?;
        Self::from_pkcs8(key_type, Zeroizing::new(pkcs8))
    }

    fn from_pkcs8(key_type: KeyType, pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice());
        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, key_type.signature_algorithm())
                .map_err(|_| KeyError::Unsupported)?;
        Ok(Self {
            key_type,
            pkcs8,
            key_pair,
        })
    }

    /// Reads a DER key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA); the type is detected.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        if let Some(key) = Self::try_pkcs8(der)? {
            return Ok(key);
        }
        for (alg, key_type) in [
            (&ECDSA_P256_SHA256_ASN1_SIGNING, KeyType::EcP256),
            (&ECDSA_P384_SHA384_ASN1_SIGNING, KeyType::EcP384),
        ] {
            if let Ok(k) = EcdsaKeyPair::from_private_key_der(alg, der) {
                let pkcs8 = k.to_pkcs8v1().map_err(|_| KeyError::Unsupported)?;
                return Self::from_pkcs8(key_type, Zeroizing::new(pkcs8.as_ref().to_vec()));
            }
        }
        if let Ok(k) = RsaKeyPair::from_der(der) {
            let key_type = rsa_key_type(k.public_modulus_len() * 8)?;
            let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&k)
                .map_err(|_| KeyError::Unsupported)?;
            return Self::from_pkcs8(key_type, Zeroizing::new(pkcs8.as_ref().to_vec()));
        }
        Err(KeyError::Unsupported)
    }

    fn try_pkcs8(der: &[u8]) -> Result<Option<Self>, KeyError> {
        for (alg, key_type) in [
            (&ECDSA_P256_SHA256_ASN1_SIGNING, KeyType::EcP256),
            (&ECDSA_P384_SHA384_ASN1_SIGNING, KeyType::EcP384),
        ] {
            if EcdsaKeyPair::from_pkcs8(alg, der).is_ok() {
                return Self::from_pkcs8(key_type, Zeroizing::new(der.to_vec())).map(Some);
            }
        }
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            let key_type = rsa_key_type(k.public_modulus_len() * 8)?;
            return Self::from_pkcs8(key_type, Zeroizing::new(der.to_vec())).map(Some);
        }
        Ok(None)
    }

    /// Reads the first private key block of PEM text (`PRIVATE KEY`, `EC PRIVATE KEY` or
    /// `RSA PRIVATE KEY`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| KeyError::NoPemKey)?;
        Self::from_der(der.secret_der())
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The PKCS#8 DER encoding; secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The PKCS#8 `PRIVATE KEY` PEM encoding; secret.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(pem::PRIVATE_KEY, &self.pkcs8))
    }

    /// The public key as a DER SubjectPublicKeyInfo, the form bundles and the datastore keep.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key_pair)
    }

    /// The public half, for laying out certificates.
    pub fn public_key(&self) -> PublicKey {
        let key_bits = rcgen::PublicKeyData::der_bytes(&self.key_pair).to_vec();
        PublicKey {
            key_type: self.key_type,
            spki_der: self.public_key_der(),
            key_bits,
        }
    }

    /// The key as rcgen's signer, for building certificates.
    pub(crate) fn key_pair(&self) -> &rcgen::KeyPair {
        &self.key_pair
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

/// The public half of a signing key and the type that says how it signs: all the CA knows of
/// a key held outside this process (a KMS key, an external KeyManager plugin's key), and
/// enough to lay out certificates whose signature is made elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_type: KeyType,
    spki_der: Vec<u8>,
    /// The subjectPublicKey bits of the SPKI, what rcgen calls the key's DER bytes.
    key_bits: Vec<u8>,
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo of one of the four supported key types.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<Self, KeyError> {
        use x509_parser::prelude::FromDer;
        let key_type = public_key_type(spki_der)?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| KeyError::PublicKey(e.to_string()))?;
        let key_bits = spki.subject_public_key.data.to_vec();
        Ok(Self {
            key_type,
            spki_der: spki_der.to_vec(),
            key_bits,
        })
    }

    /// The key's type, which fixes its signature algorithm.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Checks that `signature` (ECDSA as ASN.1 DER) is this key's signature of `message`
    /// under `scheme`, so a key held elsewhere (a KeyManager plugin, KMS) that signs with
    /// another key or garbles the signature is caught before the signature is used.
    pub fn verify(
        &self,
        message: &[u8],
        signature: &[u8],
        scheme: SignatureScheme,
    ) -> Result<(), KeyError> {
        use aws_lc_rs::signature as sig;
        let algorithm: &'static dyn sig::VerificationAlgorithm =
            match (self.key_type, scheme.hash, scheme.pss) {
                (KeyType::EcP256, HashAlgorithm::Sha256, _) => &sig::ECDSA_P256_SHA256_ASN1,
                (KeyType::EcP256, HashAlgorithm::Sha384, _) => &sig::ECDSA_P256_SHA384_ASN1,
                (KeyType::EcP384, HashAlgorithm::Sha256, _) => &sig::ECDSA_P384_SHA256_ASN1,
                (KeyType::EcP384, HashAlgorithm::Sha384, _) => &sig::ECDSA_P384_SHA384_ASN1,
                (KeyType::EcP256 | KeyType::EcP384, HashAlgorithm::Sha512, _) => {
                    return Err(KeyError::PublicKey(
                        "ECDSA signatures over SHA-512 are not supported".into(),
                    ));
                }
                (KeyType::Rsa2048 | KeyType::Rsa4096, hash, pss) => match (hash, pss) {
                    (HashAlgorithm::Sha256, false) => &sig::RSA_PKCS1_2048_8192_SHA256,
                    (HashAlgorithm::Sha384, false) => &sig::RSA_PKCS1_2048_8192_SHA384,
                    (HashAlgorithm::Sha512, false) => &sig::RSA_PKCS1_2048_8192_SHA512,
                    (HashAlgorithm::Sha256, true) => &sig::RSA_PSS_2048_8192_SHA256,
                    (HashAlgorithm::Sha384, true) => &sig::RSA_PSS_2048_8192_SHA384,
                    (HashAlgorithm::Sha512, true) => &sig::RSA_PSS_2048_8192_SHA512,
                },
            };
        sig::UnparsedPublicKey::new(algorithm, &self.key_bits)
            .verify(message, signature)
            .map_err(|_| {
                KeyError::PublicKey(format!(
                    "the signature does not verify with the {} public key",
                    self.key_type
                ))
            })
    }
}

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.key_type.signature_algorithm()
    }
}

/// The hash a signature is made over, as KeyManager plugins and KMS name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// The digest of `message`.
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha256 => &aws_lc_rs::digest::SHA256,
            Self::Sha384 => &aws_lc_rs::digest::SHA384,
            Self::Sha512 => &aws_lc_rs::digest::SHA512,
        };
        aws_lc_rs::digest::digest(alg, message).as_ref().to_vec()
    }
}

/// How a remote key is asked to sign: the hash its input was made with and, for RSA, whether
/// the signature is PSS (else PKCS#1 v1.5). ECDSA signatures come back ASN.1 DER encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureScheme {
    /// The hash of the digest being signed.
    pub hash: HashAlgorithm,
    /// RSA-PSS (salt length = hash length) instead of PKCS#1 v1.5.
    pub pss: bool,
}

impl KeyType {
    /// The scheme X.509 certificates and CSRs are signed with by a key of this type (the
    /// algorithm [`KeyType::signature_algorithm`] names).
    pub fn x509_scheme(self) -> SignatureScheme {
        let hash = match self {
            Self::EcP384 => HashAlgorithm::Sha384,
            Self::EcP256 | Self::Rsa2048 | Self::Rsa4096 => HashAlgorithm::Sha256,
        };
        SignatureScheme { hash, pss: false }
    }
}

/// Turns an ASN.1 DER ECDSA signature (`SEQUENCE { r, s }`, what KMS and Go's `crypto.Signer`
/// return) into the fixed-width `r || s` JWS uses, each half `half_len` bytes.
pub fn ecdsa_der_to_fixed(der: &[u8], half_len: usize) -> Result<Vec<u8>, KeyError> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let bad = |why: &str| KeyError::PublicKey(format!("malformed ECDSA signature: {why}"));
    let (rest, seq) = x509_parser::der_parser::parse_der(der).map_err(|e| bad(&e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let items = seq.as_sequence().map_err(|_| bad("not a SEQUENCE"))?;
    let [r, s] = items.as_slice() else {
        return Err(bad("not two integers"));
    };
    let mut out = Vec::with_capacity(half_len * 2);
    for part in [r, s] {
        let BerObjectContent::Integer(bytes) = &part.content else {
            return Err(bad("not an INTEGER"));
        };
        let trimmed: &[u8] = {
            let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
            bytes.get(start..).unwrap_or_default()
        };
        if trimmed.len() > half_len {
            return Err(bad("integer too long"));
        }
        out.extend(std::iter::repeat_n(0u8, half_len - trimmed.len()));
        out.extend_from_slice(trimmed);
    }
    Ok(out)
}

/// Tells the type of a DER SubjectPublicKeyInfo, e.g. a CSR's or a JWT authority's key.
pub fn public_key_type(spki_der: &[u8]) -> Result<KeyType, KeyError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| KeyError::PublicKey(e.to_string()))?;
    if !rest.is_empty() {
        return Err(KeyError::PublicKey("trailing bytes after the key".into()));
    }
    match spki
        .parsed()
        .map_err(|e| KeyError::PublicKey(e.to_string()))?
    {
        PublicKey::EC(point) => match point.key_size() {
            256 => Ok(KeyType::EcP256),
            384 => Ok(KeyType::EcP384),
            bits => Err(KeyError::PublicKey(format!(
                "EC keys of {bits} bits are not supported"
            ))),
        },
        PublicKey::RSA(rsa) => rsa_key_type(rsa.key_size()),
        _ => Err(KeyError::PublicKey(
            "only EC and RSA keys are supported".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_keys_signature_and_refuses_others() {
        for t in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(t).unwrap();
            let other = PrivateKey::generate(t).unwrap();
            let public = PublicKey::from_spki_der(&key.public_key_der()).unwrap();
            let signature = rcgen::SigningKey::sign(key.key_pair(), b"message").unwrap();
            let forged = rcgen::SigningKey::sign(other.key_pair(), b"message").unwrap();
            let scheme = t.x509_scheme();
            public.verify(b"message", &signature, scheme).unwrap();
            assert!(public.verify(b"massage", &signature, scheme).is_err());
            assert!(public.verify(b"message", &forged, scheme).is_err());
        }
    }

    #[test]
    fn key_type_names_round_trip() {
        for t in KeyType::ALL {
            assert_eq!(t.as_str().parse::<KeyType>().unwrap(), t);
        }
        let err = "ec-p521".parse::<KeyType>().unwrap_err();
        assert!(
            err.to_string()
                .contains("ec-p256, ec-p384, rsa-2048, rsa-4096")
        );
    }

    #[test]
    fn every_type_generates_and_round_trips_through_pem_and_der() {
        for t in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(t).unwrap();
            assert_eq!(key.key_type(), t);
            let pem = key.to_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let back = PrivateKey::from_pem(&pem).unwrap();
            assert_eq!(back.key_type(), t);
            assert_eq!(back.pkcs8_der(), key.pkcs8_der());
            let back = PrivateKey::from_der(key.pkcs8_der()).unwrap();
            assert_eq!(back.public_key_der(), key.public_key_der());
            assert_eq!(public_key_type(&key.public_key_der()).unwrap(), t);
        }
    }

    #[test]
    fn rsa_4096_generates() {
        let key = PrivateKey::generate(KeyType::Rsa4096).unwrap();
        assert_eq!(
            public_key_type(&key.public_key_der()).unwrap(),
            KeyType::Rsa4096
        );
    }

    #[test]
    fn sec1_and_pkcs1_are_read_and_normalised_to_pkcs8() {
        let ec = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let sec1 =
            AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'_>>::as_der(&ec.private_key())
                .unwrap();
        let sec1_pem = pem::encode("EC PRIVATE KEY", sec1.as_ref());
        let key = PrivateKey::from_pem(&sec1_pem).unwrap();
        assert_eq!(key.key_type(), KeyType::EcP384);
        assert!(key.to_pem().starts_with("-----BEGIN PRIVATE KEY-----"));

        let key = PrivateKey::from_pem(include_str!("testdata/rsa2048-pkcs1.pem")).unwrap();
        assert_eq!(key.key_type(), KeyType::Rsa2048);
        assert!(key.to_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = PrivateKey::from_pem(include_str!("testdata/ec-p256-sec1.pem")).unwrap();
        assert_eq!(key.key_type(), KeyType::EcP256);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(
            PrivateKey::from_der(b"not a key").unwrap_err(),
            KeyError::Unsupported
        );
        assert_eq!(
            PrivateKey::from_pem("hello").unwrap_err(),
            KeyError::NoPemKey
        );
        assert!(public_key_type(b"\x30\x03\x02\x01\x00").is_err());
    }

    #[test]
    fn ecdsa_der_signatures_become_fixed_width() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.pkcs8_der()).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for _ in 0..20 {
            let der = pair.sign(&rng, b"message").unwrap();
            let fixed = ecdsa_der_to_fixed(der.as_ref(), 32).unwrap();
            assert_eq!(fixed.len(), 64);
            let public = aws_lc_rs::signature::KeyPair::public_key(&pair);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public.as_ref())
                .verify(b"message", &fixed)
                .unwrap();
        }
        assert!(ecdsa_der_to_fixed(b"\x30\x00", 32).is_err());
        let public = key.public_key();
        assert_eq!(
            public,
            PublicKey::from_spki_der(&key.public_key_der()).unwrap()
        );
        assert_eq!(public.key_type(), KeyType::EcP256);
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "PrivateKey { key_type: EcP256, .. }");
    }
}
