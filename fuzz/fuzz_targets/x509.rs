//! CSR and certificate parsing: never panics on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spire_core::x509;

fuzz_target!(|data: &[u8]| {
    let _ = x509::csr_public_key(data);
    let _ = x509::parse_certificates(data);
    let _ = x509::X509Svid::parse_der_chain(data);
    let _ = x509::certificate_spiffe_id(data);
    let _ = x509::verify_x509_svid(&[data.to_vec()], &[data.to_vec()], time::OffsetDateTime::UNIX_EPOCH);
});
