//! Certificates as the tests check them: PEM files on disk and `openssl verify`, an
//! implementation independent of ours.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The DER certificates of PEM `text`.
pub fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    spire_core::pem::decode_certificates(text.as_bytes()).unwrap()
}

/// Writes `certs` as PEM to `path` and returns it.
pub fn write_pem(path: &Path, certs: &[Vec<u8>]) -> PathBuf {
    std::fs::write(
        path,
        spire_core::pem::encode_certificates(certs.iter().map(Vec::as_slice)),
    )
    .unwrap();
    path.to_owned()
}

/// `openssl verify` of `leaf` against `roots` through `intermediates` (files written in
/// `dir`); the error is openssl's output.
pub fn openssl_verify(
    dir: &Path,
    roots: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    leaf: &[u8],
) -> Result<(), String> {
    let mut command = Command::new("openssl");
    command
        .arg("verify")
        .arg("-CAfile")
        .arg(write_pem(&dir.join("roots.pem"), roots));
    if !intermediates.is_empty() {
        command
            .arg("-untrusted")
            .arg(write_pem(&dir.join("intermediates.pem"), intermediates));
    }
    let out = command
        .arg(write_pem(&dir.join("leaf.pem"), &[leaf.to_vec()]))
        .output()
        .unwrap_or_else(|e| panic!("run openssl (apt-get install openssl): {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
