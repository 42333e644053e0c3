//! An external CredentialComposer (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.credentialcomposer.v1.CredentialComposer`.
//!
//! Subjects travel as the SDK's `DistinguishedName`. Ours carries C, ST, L, O, OU (one
//! value each), CN, serialNumber and x500UniqueIdentifier (OID 2.5.4.45 in `extra_names`);
//! a plugin returning anything else (street address, postal code, other extra names, extra
//! extensions, policy identifiers) gets a clear error instead of being silently ignored.

use std::sync::Arc;

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_core::SpiffeId;
use spire_core::x509::Subject;
use spire_proto::spire::plugin::server::credentialcomposer::v1 as pb;
use tonic::Code;

use super::{ComposerError, CredentialComposer, JwtClaims, X509CaAttributes, X509SvidAttributes};

/// The gRPC service a CredentialComposer plugin implements.
pub const SERVICE: &str = "spire.plugin.server.credentialcomposer.v1.CredentialComposer";

/// The OID of `x500UniqueIdentifier`.
const OID_UNIQUE_ID: &str = "2.5.4.45";

type Client = pb::credential_composer_client::CredentialComposerClient<tonic::transport::Channel>;

/// A loaded external CredentialComposer.
pub struct ExternalCredentialComposer {
    plugin: Arc<LoadedPlugin>,
}

impl std::fmt::Debug for ExternalCredentialComposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalCredentialComposer")
            .field("name", &self.plugin.name())
            .finish()
    }
}

fn to_dn(subject: &Subject) -> pb::DistinguishedName {
    let extra_names = subject
        .x500_unique_identifier
        .iter()
        .map(|v| pb::AttributeTypeAndValue {
            oid: OID_UNIQUE_ID.to_owned(),
            string_value: v.clone(),
        })
        .collect();
    pb::DistinguishedName {
        country: subject.country.clone(),
        organization: subject.organization.clone(),
        organizational_unit: subject.organizational_unit.clone(),
        locality: subject.locality.clone(),
        province: subject.province.clone(),
        street_address: Vec::new(),
        postal_code: Vec::new(),
        serial_number: subject.serial_number.clone().unwrap_or_default(),
        common_name: subject.common_name.clone().unwrap_or_default(),
        extra_names,
    }
}

fn from_dn(dn: pb::DistinguishedName) -> Result<Subject, String> {
    if !dn.street_address.is_empty() || !dn.postal_code.is_empty() {
        return Err("street_address and postal_code in subjects are not supported".to_owned());
    }
    let mut unique_id = None;
    for name in dn.extra_names {
        if name.oid == OID_UNIQUE_ID {
            unique_id = Some(name.string_value);
        } else {
            return Err(format!(
                "subject attribute {} is not supported (only {OID_UNIQUE_ID}, \
                 x500UniqueIdentifier, is)",
                name.oid
            ));
        }
    }
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Subject {
        country: dn.country,
        province: dn.province,
        locality: dn.locality,
        organization: dn.organization,
        organizational_unit: dn.organizational_unit,
        common_name: non_empty(dn.common_name),
        serial_number: non_empty(dn.serial_number),
        x500_unique_identifier: unique_id,
    })
}

fn to_svid(attributes: &X509SvidAttributes) -> pb::X509svidAttributes {
    pb::X509svidAttributes {
        subject: Some(to_dn(&attributes.subject)),
        dns_sans: attributes.dns_sans.clone(),
        extra_extensions: Vec::new(),
    }
}

fn from_svid(attributes: pb::X509svidAttributes) -> Result<X509SvidAttributes, String> {
    if !attributes.extra_extensions.is_empty() {
        return Err("extra X.509 extensions are not supported".to_owned());
    }
    Ok(X509SvidAttributes {
        subject: from_dn(attributes.subject.unwrap_or_default())?,
        dns_sans: attributes.dns_sans,
    })
}

impl ExternalCredentialComposer {
    /// Wraps a plugin loaded with [`SERVICE`].
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self { plugin }
    }

    fn client(&self) -> Client {
        Client::new(self.plugin.channel())
    }

    fn error(&self, message: impl Into<String>) -> ComposerError {
        ComposerError {
            name: self.plugin.name().to_owned(),
            message: message.into(),
        }
    }

    /// `Some(attributes)` from the plugin; `None` for Unimplemented or no attributes
    /// (upstream keeps the input then).
    fn answer<T>(
        &self,
        response: Result<tonic::Response<T>, tonic::Status>,
        attributes: impl FnOnce(T) -> Option<Result<X509SvidAttributes, String>>,
    ) -> Result<Option<X509SvidAttributes>, ComposerError> {
        match response {
            Ok(response) => attributes(response.into_inner()).transpose().map_err(|e| {
                self.error(format!("plugin returned invalid X509SVID attributes: {e}"))
            }),
            Err(status) if status.code() == Code::Unimplemented => Ok(None),
            Err(status) => Err(self.error(status.message())),
        }
    }
}

#[async_trait]
impl CredentialComposer for ExternalCredentialComposer {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    async fn compose_server_x509_ca(
        &self,
        attributes: X509CaAttributes,
    ) -> Result<X509CaAttributes, ComposerError> {
        let request = pb::ComposeServerX509caRequest {
            attributes: Some(pb::X509caAttributes {
                subject: Some(to_dn(&attributes.subject)),
                policy_identifiers: Vec::new(),
                extra_extensions: Vec::new(),
            }),
        };
        match self.client().compose_server_x509ca(request).await {
            Ok(response) => match response.into_inner().attributes {
                None => Ok(attributes),
                Some(out) => {
                    if !out.policy_identifiers.is_empty() || !out.extra_extensions.is_empty() {
                        return Err(self.error(
                            "plugin returned invalid X509CA attributes: policy identifiers and \
                             extra X.509 extensions are not supported",
                        ));
                    }
                    let subject = from_dn(out.subject.unwrap_or_default()).map_err(|e| {
                        self.error(format!("plugin returned invalid X509CA attributes: {e}"))
                    })?;
                    Ok(X509CaAttributes { subject })
                }
            },
            Err(status) if status.code() == Code::Unimplemented => Ok(attributes),
            Err(status) => Err(self.error(status.message())),
        }
    }

    async fn compose_server_x509_svid(
        &self,
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        let request = pb::ComposeServerX509svidRequest {
            attributes: Some(to_svid(&attributes)),
        };
        let response = self.client().compose_server_x509svid(request).await;
        Ok(self
            .answer(response, |r| r.attributes.map(from_svid))?
            .unwrap_or(attributes))
    }

    async fn compose_agent_x509_svid(
        &self,
        id: &SpiffeId,
        public_key_der: &[u8],
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        let request = pb::ComposeAgentX509svidRequest {
            attributes: Some(to_svid(&attributes)),
            spiffe_id: id.as_str().to_owned(),
            public_key: public_key_der.to_vec(),
        };
        let response = self.client().compose_agent_x509svid(request).await;
        Ok(self
            .answer(response, |r| r.attributes.map(from_svid))?
            .unwrap_or(attributes))
    }

    async fn compose_workload_x509_svid(
        &self,
        id: &SpiffeId,
        public_key_der: &[u8],
        attributes: X509SvidAttributes,
    ) -> Result<X509SvidAttributes, ComposerError> {
        let request = pb::ComposeWorkloadX509svidRequest {
            attributes: Some(to_svid(&attributes)),
            spiffe_id: id.as_str().to_owned(),
            public_key: public_key_der.to_vec(),
        };
        let response = self.client().compose_workload_x509svid(request).await;
        Ok(self
            .answer(response, |r| r.attributes.map(from_svid))?
            .unwrap_or(attributes))
    }

    async fn compose_workload_jwt_svid(
        &self,
        id: &SpiffeId,
        claims: JwtClaims,
    ) -> Result<JwtClaims, ComposerError> {
        let structured: pbjson_types::Struct =
            serde_json::from_value(serde_json::Value::Object(claims.clone()))
                .map_err(|e| self.error(format!("invalid JWT-SVID claims: {e}")))?;
        let request = pb::ComposeWorkloadJwtsvidRequest {
            attributes: Some(pb::JwtsvidAttributes {
                claims: Some(structured),
            }),
            spiffe_id: id.as_str().to_owned(),
        };
        match self.client().compose_workload_jwtsvid(request).await {
            Ok(response) => {
                let Some(out) = response.into_inner().attributes else {
                    return Ok(claims);
                };
                let value = serde_json::to_value(out.claims.unwrap_or_default())
                    .map_err(|e| self.error(format!("plugin returned invalid claims: {e}")))?;
                match value {
                    serde_json::Value::Object(map) => Ok(map),
                    other => Err(self.error(format!(
                        "plugin returned claims that are not an object: {other}"
                    ))),
                }
            }
            Err(status) if status.code() == Code::Unimplemented => Ok(claims),
            Err(status) => Err(self.error(status.message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_unsupported_attributes_are_refused() {
        let subject = Subject {
            organizational_unit: vec!["team".into()],
            common_name: Some("cn".into()),
            x500_unique_identifier: Some("abc".into()),
            ..Subject::default_x509_svid()
        };
        assert_eq!(from_dn(to_dn(&subject)).unwrap(), subject);
        let mut dn = to_dn(&subject);
        dn.postal_code = vec!["12345".into()];
        assert!(from_dn(dn).unwrap_err().contains("postal_code"));
        let mut dn = to_dn(&subject);
        dn.extra_names.push(pb::AttributeTypeAndValue {
            oid: "1.2.3".into(),
            string_value: "x".into(),
        });
        assert!(from_dn(dn).unwrap_err().contains("1.2.3"));
    }
}
