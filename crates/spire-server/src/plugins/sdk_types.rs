//! Conversions between our API types and spire-plugin-sdk's `spire.plugin.types`, which
//! every external server plugin (Notifier, UpstreamAuthority, BundlePublisher) speaks. Taint
//! flags travel both ways, as in upstream's `coretypes` conversions.

use spire_proto::spire::api::types;
use spire_proto::spire::plugin::types as plugin_types;

/// A bundle as plugins receive it.
pub fn to_plugin_bundle(bundle: &types::Bundle) -> plugin_types::Bundle {
    plugin_types::Bundle {
        trust_domain: bundle.trust_domain.clone(),
        x509_authorities: bundle
            .x509_authorities
            .iter()
            .map(|a| plugin_types::X509Certificate {
                asn1: a.asn1.clone(),
                tainted: a.tainted,
            })
            .collect(),
        jwt_authorities: bundle
            .jwt_authorities
            .iter()
            .map(to_plugin_jwt_key)
            .collect(),
        refresh_hint: bundle.refresh_hint,
        sequence_number: bundle.sequence_number,
    }
}

/// A JWT key as plugins receive it.
pub fn to_plugin_jwt_key(key: &types::JwtKey) -> plugin_types::JwtKey {
    plugin_types::JwtKey {
        public_key: key.public_key.clone(),
        key_id: key.key_id.clone(),
        expires_at: key.expires_at,
        tainted: key.tainted,
    }
}

/// X.509 authorities a plugin sent.
pub fn from_plugin_x509(
    certificates: Vec<plugin_types::X509Certificate>,
) -> Vec<types::X509Certificate> {
    certificates
        .into_iter()
        .map(|c| types::X509Certificate {
            asn1: c.asn1,
            tainted: c.tainted,
        })
        .collect()
}

/// JWT keys a plugin sent; a key without an ID or public key is refused, as upstream's
/// `jwtkey.ToCommonFromPluginProtos`.
pub fn from_plugin_jwt_keys(keys: Vec<plugin_types::JwtKey>) -> Result<Vec<types::JwtKey>, String> {
    keys.into_iter()
        .map(|k| {
            if k.key_id.is_empty() {
                return Err("missing key ID for JWT key".to_owned());
            }
            if k.public_key.is_empty() {
                return Err(format!("missing public key for JWT key {:?}", k.key_id));
            }
            Ok(types::JwtKey {
                public_key: k.public_key,
                key_id: k.key_id,
                expires_at: k.expires_at,
                tainted: k.tainted,
            })
        })
        .collect()
}
