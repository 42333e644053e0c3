//! JWT-SVID parsing and validation against a fixed bundle: never panics, never accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spire_core::TrustDomain;
use spire_core::bundle::Bundle;
use spire_core::jwt::{parse_jwt_svid_insecure, validate_jwt_svid};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = parse_jwt_svid_insecure(token);
    let Ok(td) = TrustDomain::new("example.org") else { return };
    let bundle = Bundle::new(td);
    // The bundle has no keys, so nothing may validate.
    assert!(validate_jwt_svid(token, &bundle, &["aud"], 1_700_000_000).is_err());
});
