//! The built-in `uniqueid` CredentialComposer: adds the `x500UniqueIdentifier` attribute
//! (the first 16 bytes of SHA-256 of the SPIFFE ID, hex) to workload X509-SVID subjects, as
//! upstream's plugin of that name (SPIRE 1.4.2 to 1.8 did it by default).

use async_trait::async_trait;
use spire_core::SpiffeId;

use super::{ComposerError, CredentialComposer, X509SvidAttributes};

/// The plugin's name.
pub const NAME: &str = "uniqueid";

/// The `uniqueid` composer (no configuration).
#[derive(Debug, Default)]
pub struct UniqueId;

#[async_trait]
impl CredentialComposer for UniqueId {
    fn name(&self) -> &str {
        NAME
    }

    async fn compose_workload_x509_svid(
        &self,
        id: &SpiffeId,
        _public_key_der: &[u8],
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        Ok(X509SvidAttributes {
            subject: attributes.subject.with_unique_id(id),
            ..attributes
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spire_core::x509::Subject;

    #[tokio::test]
    async fn adds_the_unique_id_of_the_workload_only() {
        let id = SpiffeId::parse("spiffe://example.org/workload").unwrap();
        let attributes = X509SvidAttributes {
            subject: Subject::default_x509_svid(),
            dns_sans: vec!["a.example".into()],
        };
        let composed = UniqueId
            .compose_workload_x509_svid(&id, b"key", attributes.clone())
            .await
            .unwrap();
        assert_eq!(
            composed.subject.x500_unique_identifier.as_deref(),
            Some(spire_core::x509::unique_id(&id).as_str())
        );
        assert_eq!(composed.dns_sans, attributes.dns_sans);
        let agent = UniqueId
            .compose_agent_x509_svid(&id, b"key", attributes.clone())
            .await
            .unwrap();
        assert_eq!(agent, attributes, "agent SVIDs are left alone");
    }
}
