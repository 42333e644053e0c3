//! Upstream's own sshpop fixtures (`pkg/common/plugin/sshpop/testdata`): a host key, its
//! host certificate (principal `foo-host`, valid forever) and the CA.

use super::*;

const KEY: &str = include_str!("../testdata/sshpop/dummy_agent_ssh_key");
const CERT: &str = include_str!("../testdata/sshpop/dummy_agent_ssh_key-cert.pub");
const CA: &str = include_str!("../testdata/sshpop/dummy_ssh_cert_authority.pub");
const NOW: u64 = 1_800_000_000;

fn server(template: &str, domain: &str) -> Server {
    Server::new(
        &[CA.trim().to_owned()],
        domain,
        Template::parse(template).unwrap(),
        TrustDomain::new("foo.local").unwrap(),
    )
    .unwrap()
}

#[test]
fn handshake_gives_upstreams_agent_id() {
    let client = Client::new(KEY.as_bytes(), CERT.as_bytes()).unwrap();
    let payload = client.attestation_data().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert!(json["Certificate"].is_string(), "{json}");

    let server = server(DEFAULT_TEMPLATE, "");
    let cert = server.verify_attestation_data(&payload, NOW).unwrap();
    let (challenge, nonce) = server.issue_challenge().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&challenge).unwrap();
    assert!(json["Nonce"].is_string(), "{json}");
    let response = client.respond(&challenge).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(json["Signature"]["Format"], "ssh-ed25519", "{json}");
    server.verify_response(&cert, &nonce, &response).unwrap();

    let id = server.agent_id(&cert).unwrap();
    let fingerprint = url_safe_fingerprint(&cert.wire);
    assert_eq!(
        id.to_string(),
        format!("spiffe://foo.local/spire/agent/sshpop/{fingerprint}")
    );
    assert!(!fingerprint.contains(['+', '/', '=']), "{fingerprint}");

    let templated = server_templated();
    let cert = templated.verify_attestation_data(&payload, NOW).unwrap();
    assert_eq!(
        templated.agent_id(&cert).unwrap().to_string(),
        "spiffe://foo.local/spire/agent/static/foo-host"
    );
}

fn server_templated() -> Server {
    server("/static/{{ index .ValidPrincipals 0 }}", "")
}

#[test]
fn a_replayed_or_forged_response_is_denied() {
    let client = Client::new(KEY.as_bytes(), CERT.as_bytes()).unwrap();
    let payload = client.attestation_data().unwrap();
    let server = server(DEFAULT_TEMPLATE, "");
    let cert = server.verify_attestation_data(&payload, NOW).unwrap();
    let (challenge, _) = server.issue_challenge().unwrap();
    let response = client.respond(&challenge).unwrap();
    // A second attestation has a new nonce: the first answer does not fit it.
    let (_, second_nonce) = server.issue_challenge().unwrap();
    match server.verify_response(&cert, &second_nonce, &response) {
        Err(Refusal::Denied(m)) => assert!(m.starts_with("failed to verify signature"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nonsense answers are refused, never a panic.
    let (_, nonce) = server.issue_challenge().unwrap();
    for bad in [
        &b"not json"[..],
        br#"{"Nonce":"AAAA"}"#,
        br#"{"Nonce":null,"Signature":{"Format":"ssh-ed25519","Blob":"AAAA"}}"#,
        br#"{"Nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Signature":{"Format":"nope","Blob":"AAAA"}}"#,
        br#"{"Nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Signature":{"Format":"ssh-rsa","Blob":"AAAA"}}"#,
    ] {
        assert!(server.verify_response(&cert, &nonce, bad).is_err());
    }
}

#[test]
fn certificates_are_checked_as_upstream() {
    let client = Client::new(KEY.as_bytes(), CERT.as_bytes()).unwrap();
    let payload = client.attestation_data().unwrap();

    let other_ca = Server::new(
        &[
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBERERERERERERERERERERERERERERERERERERERERER"
                .to_owned(),
        ],
        "",
        Template::parse(DEFAULT_TEMPLATE).unwrap(),
        TrustDomain::new("foo.local").unwrap(),
    )
    .unwrap();
    match other_ca.verify_attestation_data(&payload, NOW) {
        Err(Refusal::Denied(m)) => assert_eq!(
            m,
            "failed to check host key: ssh: no authorities for hostname: foo-host:22"
        ),
        other => panic!("{other:?}"),
    }
    match server(DEFAULT_TEMPLATE, "example.com").verify_attestation_data(&payload, NOW) {
        Err(Refusal::Denied(m)) => assert!(m.contains("cert principal is not in domain"), "{m}"),
        other => panic!("{other:?}"),
    }
    for bad in [
        &b""[..],
        b"{}",
        br#"{"Certificate":"AAAA"}"#,
        br#"{"Certificate":7}"#,
    ] {
        assert!(matches!(
            server(DEFAULT_TEMPLATE, "").verify_attestation_data(bad, NOW),
            Err(Refusal::Malformed(_))
        ));
    }
}

#[test]
fn bad_configuration_is_refused() {
    assert!(validate_authorities(&[]).is_err());
    assert!(validate_authorities(&["nope".into()]).is_err());
    assert!(validate_authorities(&[CA.trim().to_owned()]).is_ok());
    assert!(Client::new(b"nope", CERT.as_bytes()).is_err());
    assert!(Client::new(KEY.as_bytes(), CA.as_bytes()).is_err());
}
