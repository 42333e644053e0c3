//! PEM text in and out: certificate chains and bundles are PEM files on disk, in CLI output
//! and in `bundle.0.pem`.

/// Why PEM text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The text is not well-formed PEM.
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// The text holds no block with the expected label (upstream's pemutil words it
    /// "no PEM blocks").
    #[error("no PEM blocks")]
    Missing {
        /// The label that was looked for, e.g. `CERTIFICATE`.
        label: &'static str,
    },
    /// A block has a label other than the one expected.
    #[error("expected block type \"{expected}\"; got \"{found}\"")]
    UnexpectedLabel {
        /// The label found.
        found: String,
        /// The label expected.
        expected: &'static str,
    },
}

/// The label of an X.509 certificate block.
pub const CERTIFICATE: &str = "CERTIFICATE";
/// The label of a PKCS#8 private key block.
pub const PRIVATE_KEY: &str = "PRIVATE KEY";
/// The label of a certificate signing request block.
pub const CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";
/// The label of a PKIX public key block.
pub const PUBLIC_KEY: &str = "PUBLIC KEY";

/// Encodes one DER value as a PEM block with `label`, with a trailing newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new(label, der),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// Encodes several DER certificates as concatenated `CERTIFICATE` blocks.
pub fn encode_certificates<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter()
        .map(|der| encode(CERTIFICATE, der))
        .collect()
}

/// Decodes every block of PEM text, each with its label.
pub fn decode_all(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PemError> {
    let blocks = ::pem::parse_many(text).map_err(|e| PemError::Malformed(e.to_string()))?;
    Ok(blocks
        .into_iter()
        .map(|p| (p.tag().to_owned(), p.into_contents()))
        .collect())
}

/// Decodes PEM text that must hold only `CERTIFICATE` blocks, at least one.
pub fn decode_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks = decode_all(text)?;
    if blocks.is_empty() {
        return Err(PemError::Missing { label: CERTIFICATE });
    }
    blocks
        .into_iter()
        .map(|(label, der)| {
            if label == CERTIFICATE {
                Ok(der)
            } else {
                Err(PemError::UnexpectedLabel {
                    found: label,
                    expected: CERTIFICATE,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip_in_order() {
        let text = encode_certificates([b"first".as_slice(), b"second".as_slice()]);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let ders = decode_certificates(text.as_bytes()).unwrap();
        assert_eq!(ders, vec![b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn empty_text_has_no_pem_blocks() {
        let err = decode_certificates(b"").unwrap_err();
        assert_eq!(err.to_string(), "no PEM blocks");
    }

    #[test]
    fn other_labels_are_refused() {
        let text = encode(PRIVATE_KEY, b"k");
        let err = decode_certificates(text.as_bytes()).unwrap_err();
        assert!(matches!(err, PemError::UnexpectedLabel { .. }), "{err}");
    }
}
