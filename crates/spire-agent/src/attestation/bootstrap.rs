//! Which bundle the agent trusts before it has talked to the server: the bundle kept in
//! `data_dir` from a previous run wins; otherwise `trust_bundle_path` or
//! `trust_bundle_url` (in `trust_bundle_format`), or, with `insecure_bootstrap`, none at
//! all for the first attestation (as upstream).

use std::path::PathBuf;

use spire_core::bundle::Bundle;
use spire_core::spiffe_id::TrustDomain;

use super::AttestError;
use crate::client::ServerTrust;

/// `trust_bundle_format`: how the bootstrap bundle is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrustBundleFormat {
    /// Concatenated PEM `CERTIFICATE` blocks (upstream's default, `pem`).
    #[default]
    Pem,
    /// A SPIFFE bundle (JWKS) document (`spiffe`).
    Spiffe,
}

impl std::str::FromStr for TrustBundleFormat {
    type Err = AttestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "pem" => Ok(Self::Pem),
            "spiffe" => Ok(Self::Spiffe),
            other => Err(AttestError::Bootstrap(format!(
                "trust_bundle_format {other:?} is not supported; use \"pem\" or \"spiffe\""
            ))),
        }
    }
}

/// The bootstrap settings of agent.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// The agent's trust domain (a SPIFFE-format bundle is read for it).
    pub trust_domain: TrustDomain,
    /// `trust_bundle_path`.
    pub trust_bundle_path: Option<PathBuf>,
    /// `trust_bundle_url`.
    pub trust_bundle_url: Option<String>,
    /// `trust_bundle_format`.
    pub trust_bundle_format: TrustBundleFormat,
    /// `insecure_bootstrap`.
    pub insecure_bootstrap: bool,
}

/// Decides how the agent trusts the server: `stored` (the bundle in `data_dir`) when
/// present, else the configured source. Fails with a message naming the setting to fix.
pub fn bootstrap_trust(
    stored: Option<Vec<Vec<u8>>>,
    config: &BootstrapConfig,
) -> Result<ServerTrust, AttestError> {
    if let Some(roots) = stored.filter(|r| !r.is_empty()) {
        return Ok(ServerTrust::Bundle(roots));
    }
    let configured = [
        config.trust_bundle_path.is_some(),
        config.trust_bundle_url.is_some(),
        config.insecure_bootstrap,
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if configured > 1 {
        return Err(AttestError::Bootstrap(
            "only one of trust_bundle_path, trust_bundle_url and insecure_bootstrap may be set"
                .into(),
        ));
    }
    if let Some(path) = &config.trust_bundle_path {
        let text = std::fs::read(path).map_err(|e| {
            AttestError::Bootstrap(format!(
                "cannot read trust_bundle_path {}: {e}",
                path.display()
            ))
        })?;
        let roots = parse_bundle(&text, config).map_err(|reason| {
            AttestError::Bootstrap(format!(
                "trust_bundle_path {} is not a {} bundle: {reason}",
                path.display(),
                format_name(config.trust_bundle_format)
            ))
        })?;
        return Ok(ServerTrust::Bundle(roots));
    }
    if let Some(url) = &config.trust_bundle_url {
        return Err(AttestError::Bootstrap(format!(
            "trust_bundle_url ({url}) is not supported yet by this agent; download the bundle \
             and set trust_bundle_path instead"
        )));
    }
    if config.insecure_bootstrap {
        return Ok(ServerTrust::InsecureBootstrap);
    }
    Err(AttestError::Bootstrap(
        "no trust bundle: set trust_bundle_path or trust_bundle_url (or insecure_bootstrap = \
         true, which trusts the first server reached)"
            .into(),
    ))
}

fn format_name(format: TrustBundleFormat) -> &'static str {
    match format {
        TrustBundleFormat::Pem => "PEM",
        TrustBundleFormat::Spiffe => "SPIFFE",
    }
}

/// The X.509 authorities of a bundle file, DER.
fn parse_bundle(text: &[u8], config: &BootstrapConfig) -> Result<Vec<Vec<u8>>, String> {
    let bundle = match config.trust_bundle_format {
        TrustBundleFormat::Pem => {
            let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
            Bundle::from_pem(config.trust_domain.clone(), text).map_err(|e| e.to_string())?
        }
        TrustBundleFormat::Spiffe => {
            Bundle::from_spiffe_document(config.trust_domain.clone(), text)
                .map_err(|e| e.to_string())?
        }
    };
    if bundle.x509_authorities.is_empty() {
        return Err("it holds no X.509 authorities".into());
    }
    Ok(bundle.x509_authorities)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn config() -> BootstrapConfig {
        BootstrapConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            trust_bundle_path: None,
            trust_bundle_url: None,
            trust_bundle_format: TrustBundleFormat::Pem,
            insecure_bootstrap: false,
        }
    }

    #[test]
    fn the_stored_bundle_wins() {
        let trust = bootstrap_trust(Some(vec![vec![1]]), &config()).unwrap();
        assert_eq!(trust, ServerTrust::Bundle(vec![vec![1]]));
    }

    #[test]
    fn nothing_configured_names_the_settings() {
        let err = bootstrap_trust(None, &config()).unwrap_err().to_string();
        assert!(err.contains("trust_bundle_path"), "{err}");
    }

    #[test]
    fn urls_are_not_supported_yet() {
        let mut c = config();
        c.trust_bundle_url = Some("https://example.org/bundle".into());
        let err = bootstrap_trust(None, &c).unwrap_err().to_string();
        assert!(err.contains("not supported yet"), "{err}");
    }

    #[test]
    fn insecure_bootstrap_trusts_no_bundle() {
        let mut c = config();
        c.insecure_bootstrap = true;
        assert_eq!(
            bootstrap_trust(None, &c).unwrap(),
            ServerTrust::InsecureBootstrap
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let mut c = config();
        c.trust_bundle_path = Some("/nonexistent/bundle.pem".into());
        let err = bootstrap_trust(None, &c).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
    }
}
