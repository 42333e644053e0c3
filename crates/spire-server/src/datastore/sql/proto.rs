//! Upstream's stored bundle format: `bundles.data` holds a serialized `spire.common.Bundle`
//! (upstream `proto/spire/common/common.proto`), so a database written by upstream SPIRE opens
//! here and the other way round. Field numbers are the contract.

use prost::Message;
use spire_proto::spire::api::types;

use crate::datastore::{DataStoreError, Result};

/// `spire.common.Certificate`: one X.509 authority.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Certificate {
    /// The DER certificate.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) der_bytes: Vec<u8>,
    /// Whether the authority's key is tainted (being rotated out).
    #[prost(bool, tag = "2")]
    pub(crate) tainted_key: bool,
}

/// `spire.common.PublicKey`: one JWT authority.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PublicKey {
    /// PKIX (SubjectPublicKeyInfo DER) public key.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) pkix_bytes: Vec<u8>,
    /// The key ID (`kid`).
    #[prost(string, tag = "2")]
    pub(crate) kid: String,
    /// Unix seconds after which the key is no longer valid; 0 means never.
    #[prost(int64, tag = "3")]
    pub(crate) not_after: i64,
    /// Whether the key is tainted.
    #[prost(bool, tag = "4")]
    pub(crate) tainted_key: bool,
}

/// `spire.common.Bundle`, the blob in `bundles.data`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Bundle {
    /// The trust domain as an ID, `spiffe://example.org`.
    #[prost(string, tag = "1")]
    pub(crate) trust_domain_id: String,
    /// X.509 authorities.
    #[prost(message, repeated, tag = "2")]
    pub(crate) root_cas: Vec<Certificate>,
    /// JWT authorities.
    #[prost(message, repeated, tag = "3")]
    pub(crate) jwt_signing_keys: Vec<PublicKey>,
    /// Seconds between polls that consumers should use.
    #[prost(int64, tag = "4")]
    pub(crate) refresh_hint: i64,
    /// Incremented on every change.
    #[prost(uint64, tag = "5")]
    pub(crate) sequence_number: u64,
}

const SCHEME: &str = "spiffe://";

/// `example.org` or `spiffe://example.org` -> `spiffe://example.org`, as the `bundles` table
/// keys rows.
pub(crate) fn trust_domain_id(input: &str) -> Result<String> {
    let name = trust_domain_name(input)?;
    Ok(format!("{SCHEME}{name}"))
}

/// `spiffe://example.org` or `example.org` -> `example.org`, validated.
pub(crate) fn trust_domain_name(input: &str) -> Result<String> {
    spire_core::spiffe_id::TrustDomain::new(input)
        .map(|td| td.name().to_owned())
        .map_err(|e| {
            DataStoreError::InvalidArgument(format!("invalid trust domain {input:?}: {e}"))
        })
}

/// Converts the API bundle into the stored form.
pub(crate) fn bundle_to_stored(bundle: &types::Bundle) -> Result<Bundle> {
    Ok(Bundle {
        trust_domain_id: trust_domain_id(&bundle.trust_domain)?,
        root_cas: bundle
            .x509_authorities
            .iter()
            .map(|c| Certificate {
                der_bytes: c.asn1.clone(),
                tainted_key: c.tainted,
            })
            .collect(),
        jwt_signing_keys: bundle
            .jwt_authorities
            .iter()
            .map(|k| PublicKey {
                pkix_bytes: k.public_key.clone(),
                kid: k.key_id.clone(),
                not_after: k.expires_at,
                tainted_key: k.tainted,
            })
            .collect(),
        refresh_hint: bundle.refresh_hint,
        sequence_number: bundle.sequence_number,
    })
}

/// Converts the stored form into the API bundle (bare trust domain name).
pub(crate) fn stored_to_bundle(stored: Bundle) -> types::Bundle {
    let trust_domain = stored
        .trust_domain_id
        .strip_prefix(SCHEME)
        .unwrap_or(&stored.trust_domain_id)
        .to_owned();
    types::Bundle {
        trust_domain,
        x509_authorities: stored
            .root_cas
            .into_iter()
            .map(|c| types::X509Certificate {
                asn1: c.der_bytes,
                tainted: c.tainted_key,
            })
            .collect(),
        jwt_authorities: stored
            .jwt_signing_keys
            .into_iter()
            .map(|k| types::JwtKey {
                public_key: k.pkix_bytes,
                key_id: k.kid,
                expires_at: k.not_after,
                tainted: k.tainted_key,
            })
            .collect(),
        refresh_hint: stored.refresh_hint,
        sequence_number: stored.sequence_number,
        wit_authorities: Vec::new(),
    }
}

/// Decodes a `bundles.data` blob.
pub(crate) fn decode_bundle(data: &[u8]) -> Result<Bundle> {
    Bundle::decode(data)
        .map_err(|e| DataStoreError::Internal(format!("stored bundle cannot be decoded: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_stored_form() {
        let bundle = types::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![types::X509Certificate {
                asn1: vec![1, 2, 3],
                tainted: true,
            }],
            jwt_authorities: vec![types::JwtKey {
                public_key: vec![4, 5],
                key_id: "kid".into(),
                expires_at: 99,
                tainted: false,
            }],
            refresh_hint: 60,
            sequence_number: 7,
            wit_authorities: Vec::new(),
        };
        let stored = bundle_to_stored(&bundle).unwrap();
        assert_eq!(stored.trust_domain_id, "spiffe://example.org");
        let bytes = stored.encode_to_vec();
        let back = stored_to_bundle(decode_bundle(&bytes).unwrap());
        assert_eq!(back, bundle);
    }

    #[test]
    fn decodes_upstreams_blob_field_numbers() {
        // trust_domain_id "spiffe://a", one root CA {der [9], tainted}, sequence_number 3.
        let blob = [
            0x0a, 0x0a, b's', b'p', b'i', b'f', b'f', b'e', b':', b'/', b'/', b'a', 0x12, 0x05,
            0x0a, 0x01, 0x09, 0x10, 0x01, 0x28, 0x03,
        ];
        let b = stored_to_bundle(decode_bundle(&blob).unwrap());
        assert_eq!(b.trust_domain, "a");
        assert_eq!(b.x509_authorities[0].asn1, vec![9]);
        assert!(b.x509_authorities[0].tainted);
        assert_eq!(b.sequence_number, 3);
    }
}
