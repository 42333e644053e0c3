//! x509pop and sshpop: attestation payloads, challenge answers and agent path templates
//! from the network or a config never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spire_core::agent_path_template::{Template, Value};
use spire_core::spiffe_id::TrustDomain;
use spire_core::{sshpop, x509pop};

const KEY: &str = include_str!("../../crates/spire-core/src/testdata/sshpop/dummy_agent_ssh_key");
const CERT: &str =
    include_str!("../../crates/spire-core/src/testdata/sshpop/dummy_agent_ssh_key-cert.pub");
const CA: &str =
    include_str!("../../crates/spire-core/src/testdata/sshpop/dummy_ssh_cert_authority.pub");

fuzz_target!(|data: &[u8]| {
    // x509pop: the payload, its certificates and an answer.
    if let Ok(payload) = serde_json::from_slice::<x509pop::AttestationData>(data) {
        for der in &payload.certificates {
            let _ = x509pop::leaf_facts(der, "example.org");
            let _ = x509pop::generate_challenge(der);
            let _ = x509pop::verify_chain(der, &payload.certificates, &payload.certificates, time::OffsetDateTime::UNIX_EPOCH);
        }
    }
    let _ = x509pop::leaf_facts(data, "example.org");
    if let Ok(response) = serde_json::from_slice::<x509pop::Response>(data) {
        let challenge = x509pop::Challenge {
            rsa_signature: Some(x509pop::NonceChallenge { nonce: vec![1; 32] }),
            ecdsa_signature: Some(x509pop::NonceChallenge { nonce: vec![1; 32] }),
        };
        let _ = x509pop::verify_response(data, &challenge, &response);
    }

    // sshpop: the payload and an answer to a real certificate's challenge.
    let Ok(td) = TrustDomain::new("example.org") else { return };
    let Ok(template) = Template::parse(sshpop::DEFAULT_TEMPLATE) else { return };
    let Ok(server) = sshpop::Server::new(&[CA.trim().to_owned()], "", template, td) else { return };
    let _ = server.verify_attestation_data(data, 1_800_000_000);
    if let Ok(client) = sshpop::Client::new(KEY.as_bytes(), CERT.as_bytes())
        && let Ok(payload) = client.attestation_data()
        && let Ok(cert) = server.verify_attestation_data(&payload, 1_800_000_000)
    {
        let _ = server.verify_response(&cert, &[1; 32], data);
    }

    // Templates (a config value) and their rendering.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = Template::parse(text)
    {
        let _ = t.execute(&Value::Map(Default::default()));
    }
});
