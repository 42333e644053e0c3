//! One federation relationship as `federation create|update` take it: from the flags, or
//! from an item of a `-data` document, turned into the API's `FederationRelationship` with
//! upstream's checks, in upstream's order, with upstream's words.

use std::path::Path;

use serde_json::{Map, Value};
use spire_core::{SpiffeId, TrustDomain};
use spire_proto::spire::api::types::{
    self, FederationRelationship, HttpsWebProfile, HttpsspiffeProfile,
    federation_relationship::BundleEndpointProfile,
};

use crate::cli::CliError;
use crate::cli::bundle::{Format, parse_bundle};

/// `-bundleEndpointProfile https_web`: the endpoint is authenticated with Web PKI.
pub(super) const PROFILE_HTTPS_WEB: &str = "https_web";
/// `-bundleEndpointProfile https_spiffe`: the endpoint is authenticated with an SVID.
pub(super) const PROFILE_HTTPS_SPIFFE: &str = "https_spiffe";
/// `-trustDomainBundleFormat`'s default.
pub(super) const FORMAT_PEM: &str = "pem";
const FORMAT_SPIFFE: &str = "spiffe";

/// The fields of one relationship, given by the flags or by one item of a `-data` document.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RelationshipConfig {
    /// `trustDomain`: the foreign trust domain.
    pub(super) trust_domain: String,
    /// `bundleEndpointURL`.
    pub(super) bundle_endpoint_url: String,
    /// `bundleEndpointProfile`: `https_web` or `https_spiffe`.
    pub(super) bundle_endpoint_profile: String,
    /// `endpointSPIFFEID`: the endpoint's SPIFFE ID (`https_spiffe` only).
    pub(super) endpoint_spiffe_id: String,
    /// `trustDomainBundle` of a `-data` item: a PEM string or a SPIFFE bundle document.
    /// Present (even as `null`) or absent, as Go's `json.RawMessage` tells them apart.
    pub(super) trust_domain_bundle: Option<Value>,
    /// `trustDomainBundleFormat`: `pem` or `spiffe`.
    pub(super) trust_domain_bundle_format: String,
    /// `-trustDomainBundlePath` (flags only).
    pub(super) trust_domain_bundle_path: String,
}

impl RelationshipConfig {
    /// Whether no relationship flag was given (`-trustDomainBundleFormat` left at `pem`),
    /// which `-data` requires.
    pub(super) fn is_empty(&self) -> bool {
        self.bundle_endpoint_profile.is_empty()
            && self.bundle_endpoint_url.is_empty()
            && self.trust_domain_bundle_format == FORMAT_PEM
            && self.trust_domain_bundle_path.is_empty()
            && self.endpoint_spiffe_id.is_empty()
            && self.trust_domain.is_empty()
    }

    /// The API relationship, checked as upstream's CLI checks it before calling the server.
    pub(super) fn to_proto(&self) -> Result<FederationRelationship, CliError> {
        if self.trust_domain.is_empty() {
            return Err(CliError::invalid("trust domain is required"));
        }
        if self.bundle_endpoint_url.is_empty() {
            return Err(CliError::invalid("bundle endpoint URL is required"));
        }
        // The bundle belongs to the endpoint's trust domain under https_spiffe.
        let (profile, bundle_trust_domain) = match self.bundle_endpoint_profile.as_str() {
            PROFILE_HTTPS_WEB => (
                BundleEndpointProfile::HttpsWeb(HttpsWebProfile {}),
                self.trust_domain.clone(),
            ),
            PROFILE_HTTPS_SPIFFE => {
                if self.endpoint_spiffe_id.is_empty() {
                    return Err(CliError::invalid(
                        "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set",
                    ));
                }
                let id = SpiffeId::parse(&self.endpoint_spiffe_id).map_err(|e| {
                    CliError::invalid(format!("cannot parse bundle endpoint SPIFFE ID: {e}"))
                })?;
                (
                    BundleEndpointProfile::HttpsSpiffe(HttpsspiffeProfile {
                        endpoint_spiffe_id: self.endpoint_spiffe_id.clone(),
                    }),
                    id.trust_domain_name().to_owned(),
                )
            }
            other => {
                return Err(CliError::invalid(format!(
                    "unknown bundle endpoint profile type: {other:?}"
                )));
            }
        };
        let trust_domain_bundle = if !self.trust_domain_bundle_path.is_empty() {
            Some(self.bundle_from_path(&bundle_trust_domain)?)
        } else if let Some(raw) = &self.trust_domain_bundle {
            Some(
                self.bundle_from_json(raw, &bundle_trust_domain)
                    .map_err(|e| {
                        CliError::invalid(format!("cannot parse bundle raw message: {e}"))
                    })?,
            )
        } else {
            None
        };
        Ok(FederationRelationship {
            trust_domain: self.trust_domain.clone(),
            bundle_endpoint_url: self.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: Some(profile),
            trust_domain_bundle,
        })
    }

    /// `-trustDomainBundlePath`: any format other than `pem` is read as a SPIFFE bundle, as
    /// upstream's does.
    fn bundle_from_path(&self, trust_domain: &str) -> Result<types::Bundle, CliError> {
        let path = &self.trust_domain_bundle_path;
        let data = std::fs::read(path).map_err(|e| {
            CliError::invalid(format!("cannot read bundle file: {}", open_error(path, &e)))
        })?;
        let format = if self.trust_domain_bundle_format == FORMAT_PEM {
            Format::Pem
        } else {
            Format::Spiffe
        };
        bundle_data(&data, format, trust_domain)
            .map_err(|e| CliError::invalid(format!("cannot parse bundle file: {e}")))
    }

    /// `trustDomainBundle` of a `-data` item: a JSON string of PEM, or the SPIFFE bundle
    /// document itself.
    fn bundle_from_json(&self, raw: &Value, trust_domain: &str) -> Result<types::Bundle, String> {
        match self.trust_domain_bundle_format.as_str() {
            FORMAT_PEM => {
                let pem = match raw {
                    Value::String(pem) => pem.as_str(),
                    Value::Null => "",
                    other => {
                        return Err(format!(
                            "failed to unmarshal json: json: cannot unmarshal {} into Go value of type string",
                            go_kind(other)
                        ));
                    }
                };
                bundle_data(pem.as_bytes(), Format::Pem, trust_domain)
            }
            FORMAT_SPIFFE => {
                let document = serde_json::to_vec(raw).map_err(|e| e.to_string())?;
                bundle_data(&document, Format::Spiffe, trust_domain)
            }
            other => Err(format!("bundle format {other:?} is unsupported")),
        }
    }
}

/// Bundle data read for `trust_domain`.
fn bundle_data(data: &[u8], format: Format, trust_domain: &str) -> Result<types::Bundle, String> {
    let td = TrustDomain::new(trust_domain).map_err(|e| e.to_string())?;
    parse_bundle(data, format, td).map_err(|e| e.to_string())
}

/// The relationships of a `-data` document: `{"federationRelationships": [{...}, ...]}`
/// with upstream's member names, matched without regard to case as Go's decoder does.
pub(super) fn parse_data(data: &[u8]) -> Result<Vec<FederationRelationship>, CliError> {
    let configs = parse_document(data)
        .map_err(|e| CliError::invalid(format!("failed to parse JSON: {e}")))?;
    configs
        .iter()
        .enumerate()
        .map(|(i, config)| {
            config
                .to_proto()
                .map_err(|e| CliError::invalid(format!("could not parse item {i}: {e}")))
        })
        .collect()
}

/// The items of a `-data` document, or the error Go's `encoding/json` would give.
fn parse_document(data: &[u8]) -> Result<Vec<RelationshipConfig>, String> {
    let document: Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let members = match document {
        Value::Object(members) => members,
        Value::Null => return Ok(Vec::new()),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type federation.federationRelationships",
                go_kind(&other)
            ));
        }
    };
    let mut items = Vec::new();
    for (key, value) in members {
        if !key.eq_ignore_ascii_case("federationRelationships") {
            continue;
        }
        items = match value {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go struct field federationRelationships.federationRelationships of type []*federation.federationRelationshipConfig",
                    go_kind(&other)
                ));
            }
        };
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(members) => item_config(members),
            Value::Null => Ok(RelationshipConfig::default()),
            other => Err(format!(
                "json: cannot unmarshal {} into Go struct field federationRelationships.federationRelationships of type federation.federationRelationshipConfig",
                go_kind(&other)
            )),
        })
        .collect()
}

/// One `-data` item. Unknown members are ignored, as Go's decoder ignores them.
fn item_config(members: Map<String, Value>) -> Result<RelationshipConfig, String> {
    let mut config = RelationshipConfig::default();
    for (key, value) in members {
        let (name, field) = match key.to_ascii_lowercase().as_str() {
            "trustdomain" => ("trustDomain", &mut config.trust_domain),
            "bundleendpointurl" => ("bundleEndpointURL", &mut config.bundle_endpoint_url),
            "bundleendpointprofile" => {
                ("bundleEndpointProfile", &mut config.bundle_endpoint_profile)
            }
            "endpointspiffeid" => ("endpointSPIFFEID", &mut config.endpoint_spiffe_id),
            "trustdomainbundleformat" => (
                "trustDomainBundleFormat",
                &mut config.trust_domain_bundle_format,
            ),
            "trustdomainbundle" => {
                config.trust_domain_bundle = Some(value);
                continue;
            }
            _ => continue,
        };
        match value {
            Value::String(text) => *field = text,
            // A JSON null leaves a Go string as it was.
            Value::Null => {}
            other => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go struct field federationRelationshipConfig.federationRelationships.{name} of type string",
                    go_kind(&other)
                ));
            }
        }
    }
    Ok(config)
}

/// Go's name for the kind of a JSON value in its decoding errors.
fn go_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Go's `open <path>: <reason>` (or `read` for a folder) for a file that could not be read,
/// as upstream prints it: the system's words in lower case, without Rust's `(os error N)`.
pub(super) fn open_error(path: &str, error: &std::io::Error) -> String {
    let operation = if error.kind() == std::io::ErrorKind::IsADirectory {
        "read"
    } else {
        "open"
    };
    let reason = match error.raw_os_error() {
        Some(code) => {
            let text = std::io::Error::from_raw_os_error(code).to_string();
            let text = text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text)
                .to_owned();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
        None => error.to_string(),
    };
    format!("{operation} {}: {reason}", Path::new(path).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's test certificate (`spiffe://domain1.test`, valid until 9999).
    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBKjCB0aADAgECAgEBMAoGCCqGSM49BAMCMAAwIhgPMDAwMTAxMDEwMDAwMDBa\nGA85OTk5MTIzMTIzNTk1OVowADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHyv\nsCk5yi+yhSzNu5aquQwvm8a1Wh+qw1fiHAkhDni+wq+g3TQWxYlV51TCPH030yXs\nRxvujD4hUUaIQrXk4KKjODA2MA8GA1UdEwEB/wQFMAMBAf8wIwYDVR0RAQH/BBkw\nF4YVc3BpZmZlOi8vZG9tYWluMS50ZXN0MAoGCCqGSM49BAMCA0gAMEUCIA2dO09X\nmakw2ekuHKWC4hBhCkpr5qY4bI8YUcXfxg/1AiEA67kMyH7bQnr7OVLUrL+b9ylA\ndZglS5kKnYigmwDh+/U=\n-----END CERTIFICATE-----";

    /// Upstream's `-data` test document: both profiles, a PEM bundle and a SPIFFE bundle,
    /// and `endpointSpiffeID` spelled two ways.
    fn upstream_test_file() -> String {
        let pem = serde_json::to_string(PEM_CERT).unwrap();
        format!(
            r#"{{"federationRelationships": [
              {{"trustDomain": "td-1.org", "bundleEndpointURL": "https://td-1.org/bundle",
                "bundleEndpointProfile": "https_web"}},
              {{"trustDomain": "td-2.org", "bundleEndpointURL": "https://td-2.org/bundle",
                "bundleEndpointProfile": "https_spiffe", "endpointSpiffeID": "spiffe://other.org/bundle"}},
              {{"trustDomain": "td-3.org", "bundleEndpointURL": "https://td-3.org/bundle",
                "bundleEndpointProfile": "https_spiffe", "endpointSPIFFEID": "spiffe://td-3.org/bundle",
                "trustDomainBundle": {pem}, "trustDomainBundleFormat": "pem"}},
              {{"trustDomain": "td-4.org", "bundleEndpointURL": "https://td-4.org/bundle",
                "bundleEndpointProfile": "https_spiffe", "endpointSPIFFEID": "spiffe://td-4.org/bundle",
                "trustDomainBundleFormat": "spiffe",
                "trustDomainBundle": {{"keys": [
                  {{"use": "x509-svid", "kty": "EC", "crv": "P-256",
                    "x": "fK-wKTnKL7KFLM27lqq5DC-bxrVaH6rDV-IcCSEOeL4",
                    "y": "wq-g3TQWxYlV51TCPH030yXsRxvujD4hUUaIQrXk4KI",
                    "x5c": ["MIIBKjCB0aADAgECAgEBMAoGCCqGSM49BAMCMAAwIhgPMDAwMTAxMDEwMDAwMDBaGA85OTk5MTIzMTIzNTk1OVowADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHyvsCk5yi+yhSzNu5aquQwvm8a1Wh+qw1fiHAkhDni+wq+g3TQWxYlV51TCPH030yXsRxvujD4hUUaIQrXk4KKjODA2MA8GA1UdEwEB/wQFMAMBAf8wIwYDVR0RAQH/BBkwF4YVc3BpZmZlOi8vZG9tYWluMS50ZXN0MAoGCCqGSM49BAMCA0gAMEUCIA2dO09Xmakw2ekuHKWC4hBhCkpr5qY4bI8YUcXfxg/1AiEA67kMyH7bQnr7OVLUrL+b9ylAdZglS5kKnYigmwDh+/U="]}},
                  {{"use": "jwt-svid", "kty": "EC", "kid": "KID", "crv": "P-256",
                    "x": "fK-wKTnKL7KFLM27lqq5DC-bxrVaH6rDV-IcCSEOeL4",
                    "y": "wq-g3TQWxYlV51TCPH030yXsRxvujD4hUUaIQrXk4KI"}}
                ]}}}}
            ]}}"#
        )
    }

    fn config(args: &[(&str, &str)]) -> RelationshipConfig {
        let mut c = RelationshipConfig {
            trust_domain_bundle_format: FORMAT_PEM.into(),
            ..Default::default()
        };
        for (name, value) in args {
            let field = match *name {
                "trustDomain" => &mut c.trust_domain,
                "bundleEndpointURL" => &mut c.bundle_endpoint_url,
                "bundleEndpointProfile" => &mut c.bundle_endpoint_profile,
                "endpointSpiffeID" => &mut c.endpoint_spiffe_id,
                "trustDomainBundlePath" => &mut c.trust_domain_bundle_path,
                "trustDomainBundleFormat" => &mut c.trust_domain_bundle_format,
                other => panic!("no flag {other}"),
            };
            *field = (*value).to_owned();
        }
        c
    }

    fn error(c: &RelationshipConfig) -> String {
        c.to_proto().unwrap_err().to_string()
    }

    #[test]
    fn flags_are_checked_in_upstreams_order_with_its_words() {
        let web = [
            ("trustDomain", "td.org"),
            ("bundleEndpointURL", "https://td.org/bundle"),
        ];
        assert_eq!(error(&config(&[])), "trust domain is required");
        assert_eq!(error(&config(&web[..1])), "bundle endpoint URL is required");
        assert_eq!(
            error(&config(&web)),
            "unknown bundle endpoint profile type: \"\""
        );
        let mut args = web.to_vec();
        args.push(("bundleEndpointProfile", "bad-type"));
        assert_eq!(
            error(&config(&args)),
            "unknown bundle endpoint profile type: \"bad-type\""
        );
        args.pop();
        args.push(("bundleEndpointProfile", "https_spiffe"));
        assert_eq!(
            error(&config(&args)),
            "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"
        );
        args.push(("endpointSpiffeID", "invalid-id"));
        assert_eq!(
            error(&config(&args)),
            "cannot parse bundle endpoint SPIFFE ID: scheme is missing or invalid"
        );
        let mut args = web.to_vec();
        args.push(("bundleEndpointProfile", "https_web"));
        args.push(("trustDomainBundlePath", "non-existent-path"));
        assert_eq!(
            error(&config(&args)),
            "cannot read bundle file: open non-existent-path: no such file or directory"
        );
    }

    #[test]
    fn bundle_files_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let pem_path = dir.path().join("bundle.pem");
        std::fs::write(&pem_path, PEM_CERT).unwrap();
        let corrupted = dir.path().join("corrupted.pem");
        std::fs::write(&corrupted, "corrupted-bundle").unwrap();
        let pem_path = pem_path.display().to_string();
        let corrupted = corrupted.display().to_string();
        let spiffe = [
            ("trustDomain", "td-3.org"),
            ("bundleEndpointURL", "https://td-3.org/bundle"),
            ("bundleEndpointProfile", "https_spiffe"),
            ("endpointSpiffeID", "spiffe://td-3.org/bundle"),
        ];
        let mut args = spiffe.to_vec();
        args.push(("trustDomainBundlePath", &pem_path));
        let fr = config(&args).to_proto().unwrap();
        let bundle = fr.trust_domain_bundle.unwrap();
        assert_eq!(bundle.trust_domain, "td-3.org");
        assert_eq!(bundle.x509_authorities.len(), 1);
        assert!(bundle.jwt_authorities.is_empty());

        // The bundle is the endpoint's trust domain's under https_spiffe.
        let mut args = spiffe.to_vec();
        args[3] = ("endpointSpiffeID", "spiffe://other.org/bundle");
        args.push(("trustDomainBundlePath", &pem_path));
        let fr = config(&args).to_proto().unwrap();
        assert_eq!(fr.trust_domain_bundle.unwrap().trust_domain, "other.org");

        let mut args = spiffe.to_vec();
        args.push(("trustDomainBundlePath", &corrupted));
        assert_eq!(
            error(&config(&args)),
            "cannot parse bundle file: unable to parse bundle data: no PEM blocks"
        );
        // Anything but `pem` is read as a SPIFFE bundle document, as upstream's does.
        args.push(("trustDomainBundleFormat", "bogus"));
        assert!(
            error(&config(&args)).starts_with("cannot parse bundle file: unable to parse"),
            "{}",
            error(&config(&args))
        );
    }

    #[test]
    fn upstreams_data_document_reads() {
        let relationships = parse_data(upstream_test_file().as_bytes()).unwrap();
        assert_eq!(relationships.len(), 4);
        assert_eq!(
            relationships[0].bundle_endpoint_profile,
            Some(BundleEndpointProfile::HttpsWeb(HttpsWebProfile {}))
        );
        assert_eq!(
            relationships[1].bundle_endpoint_profile,
            Some(BundleEndpointProfile::HttpsSpiffe(HttpsspiffeProfile {
                endpoint_spiffe_id: "spiffe://other.org/bundle".into()
            }))
        );
        assert_eq!(relationships[1].trust_domain_bundle, None);
        let pem_bundle = relationships[2].trust_domain_bundle.as_ref().unwrap();
        assert_eq!(pem_bundle.trust_domain, "td-3.org");
        assert_eq!(pem_bundle.x509_authorities.len(), 1);
        let spiffe_bundle = relationships[3].trust_domain_bundle.as_ref().unwrap();
        assert_eq!(spiffe_bundle.trust_domain, "td-4.org");
        assert_eq!(
            spiffe_bundle.x509_authorities[0].asn1,
            pem_bundle.x509_authorities[0].asn1
        );
        assert_eq!(spiffe_bundle.jwt_authorities.len(), 1);
        assert_eq!(spiffe_bundle.jwt_authorities[0].key_id, "KID");
    }

    #[test]
    fn data_documents_fail_as_upstreams_do() {
        let fail = |doc: &str| parse_data(doc.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            fail(
                r#"{"federationRelationships": [{"trustDomain": "", "bundleEndpointURL": "https://td-1.org/bundle", "bundleEndpointProfile": "https_web"}]}"#
            ),
            "could not parse item 0: trust domain is required"
        );
        assert!(fail("-----BEGIN").starts_with("failed to parse JSON: "));
        assert_eq!(
            fail(r#"{"federationRelationships": [{"trustDomain": 5}]}"#),
            "failed to parse JSON: json: cannot unmarshal number into Go struct field federationRelationshipConfig.federationRelationships.trustDomain of type string"
        );
        assert_eq!(
            fail("[]"),
            "failed to parse JSON: json: cannot unmarshal array into Go value of type federation.federationRelationships"
        );
        let item = |extra: &str| {
            format!(
                r#"{{"federationRelationships": [{{"trustDomain": "td.org", "bundleEndpointURL": "https://td.org/b", "bundleEndpointProfile": "https_web", {extra}}}]}}"#
            )
        };
        // A bundle without a format: Go's zero value is no format at all.
        assert_eq!(
            fail(&item(r#""trustDomainBundle": "x""#)),
            "could not parse item 0: cannot parse bundle raw message: bundle format \"\" is unsupported"
        );
        assert_eq!(
            fail(&item(
                r#""trustDomainBundle": {"keys": []}, "trustDomainBundleFormat": "pem""#
            )),
            "could not parse item 0: cannot parse bundle raw message: failed to unmarshal json: json: cannot unmarshal object into Go value of type string"
        );
        assert_eq!(
            fail(&item(
                r#""trustDomainBundle": null, "trustDomainBundleFormat": "pem""#
            )),
            "could not parse item 0: cannot parse bundle raw message: unable to parse bundle data: no PEM blocks"
        );
        // Unknown members are ignored; an empty document is no relationships.
        assert_eq!(
            parse_data(item(r#""comment": 1"#).as_bytes())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(parse_data(b"{}").unwrap(), Vec::new());
    }

    #[test]
    fn only_the_default_bundle_format_counts_as_no_flags() {
        assert!(config(&[]).is_empty());
        assert!(!config(&[("trustDomainBundleFormat", "spiffe")]).is_empty());
        assert!(!config(&[("bundleEndpointURL", "https://td-1.org/bundle")]).is_empty());
    }
}
