//! SPIFFE ID and trust domain parsing: never panics, and what parses prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spire_core::{SpiffeId, TrustDomain, selector::Selector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert!(TrustDomain::new(id.trust_domain_name()).is_ok());
    }
    let _ = TrustDomain::new(text);
    let _ = Selector::parse(text);
});
