//! SPIFFE bundle documents: never panic, and what parses survives a write/read round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spire_core::TrustDomain;
use spire_core::bundle::Bundle;

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::new("example.org") else { return };
    if let Ok(bundle) = Bundle::from_spiffe_document(td.clone(), data) {
        if let Ok(doc) = bundle.to_spiffe_document() {
            let again = Bundle::from_spiffe_document(td, doc.as_bytes());
            assert!(again.is_ok(), "a bundle we wrote must read back");
        }
    }
});
