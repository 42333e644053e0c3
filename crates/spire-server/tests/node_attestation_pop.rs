//! The server's `x509pop` and `sshpop` attestors against answers a real agent never sends:
//! a response signed by another key, a response replayed from an earlier attestation, and
//! garbage. Node credentials are made by `openssl` and `ssh-keygen -s`; the agent's side of
//! the protocol is the shared code both agents use (`spire_core::{x509pop, sshpop}`), driven
//! by a scripted stream instead of gRPC. Each refusal is PermissionDenied (or InvalidArgument
//! for unreadable input) naming the reason; nothing panics.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;

use async_trait::async_trait;
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509pop::{Challenge, SigningKey};
use spire_e2e::pop::{KeyAlg, OpensslCa, SshCa};
use spire_server::datastore::DataStore;
use spire_server::plugins::nodeattestor::{Challenger, NodeAttestor, sshpop, x509pop};
use tonic::{Code, Status};

/// Answers each challenge with `answer(challenge)`, remembering what it sent.
struct Scripted<F: FnMut(&[u8]) -> Vec<u8> + Send> {
    answer: F,
    sent: Vec<Vec<u8>>,
}

#[async_trait]
impl<F: FnMut(&[u8]) -> Vec<u8> + Send> Challenger for Scripted<F> {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, Status> {
        let response = (self.answer)(&challenge);
        self.sent.push(response.clone());
        Ok(response)
    }
}

fn scripted<F: FnMut(&[u8]) -> Vec<u8> + Send>(answer: F) -> Scripted<F> {
    Scripted {
        answer,
        sent: Vec::new(),
    }
}

async fn datastore(dir: &std::path::Path) -> Arc<dyn DataStore> {
    let config = spire_server::datastore::sql::SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: dir.join("ds.sqlite3").to_string_lossy().into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    Arc::new(
        spire_server::datastore::sql::SqlDataStore::open(&config)
            .await
            .unwrap(),
    )
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn payload(cert: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let pem = std::fs::read(cert).unwrap();
    let certs = spire_core::pem::decode_certificates(&pem).unwrap();
    let leaf = certs[0].clone();
    let data = serde_json::to_vec(&spire_core::x509pop::AttestationData {
        certificates: certs,
    })
    .unwrap();
    (data, leaf)
}

fn respond(key: &SigningKey, challenge: &[u8]) -> Vec<u8> {
    let challenge: Challenge = serde_json::from_slice(challenge).unwrap();
    serde_json::to_vec(&key.respond(&challenge).unwrap()).unwrap()
}

fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(reason), "{status:?}");
}

#[tokio::test]
async fn x509pop_refuses_another_key_a_replayed_response_and_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let root = OpensslCa::root(tmp.path(), "root-ca");
    let data: x509pop::Data = serde_json::from_value(serde_json::json!({
        "ca_bundle_path": root.cert.display().to_string()
    }))
    .unwrap();
    let config = x509pop::X509PopConfig::from_data("server.conf", "x509pop", data).unwrap();
    let attestor = x509pop::X509PopAttestor::new(config, td(), datastore(tmp.path()).await);

    for (alg, name) in [(KeyAlg::Rsa, "rsa"), (KeyAlg::P256, "p256")] {
        let node = root.node(&format!("node-{name}"), alg, &[]);
        let thief = root.node(&format!("thief-{name}"), alg, &[]);
        let (data, leaf) = payload(&node.cert);
        let key = SigningKey::from_pem(&std::fs::read(&node.key).unwrap(), &leaf).unwrap();
        let (_, thief_leaf) = payload(&thief.cert);
        let thief_key =
            SigningKey::from_pem(&std::fs::read(&thief.key).unwrap(), &thief_leaf).unwrap();

        // The real key: attested, re-attestable, with upstream's agent ID.
        let mut honest = scripted(|c| respond(&key, c));
        let attested = attestor.attest(&data, &mut honest).await.unwrap();
        assert!(attested.can_reattest);
        assert!(
            attested
                .agent_id
                .to_string()
                .starts_with("spiffe://example.org/spire/agent/x509pop/"),
            "{}",
            attested.agent_id
        );

        // Someone with the certificate but another key (a copied certificate).
        let mut wrong_key = scripted(|c| respond(&thief_key, c));
        assert_refused(
            attestor.attest(&data, &mut wrong_key).await,
            Code::PermissionDenied,
            "nodeattestor(x509pop): challenge response verification failed:",
        );

        // A response recorded from the honest attestation, replayed to a new challenge.
        let recorded = honest.sent[0].clone();
        let mut replay = scripted(|_| recorded.clone());
        assert_refused(
            attestor.attest(&data, &mut replay).await,
            Code::PermissionDenied,
            "signature verify failed",
        );
    }

    // Garbage never panics.
    let node = root.node("node-garbage", KeyAlg::P256, &[]);
    let (data, _) = payload(&node.cert);
    for bad_payload in [
        &b""[..],
        b"{",
        b"{}",
        br#"{"certificates":["AAAA"]}"#,
        br#"{"certificates":7}"#,
    ] {
        let mut never = scripted(|_| Vec::new());
        let status = attestor.attest(bad_payload, &mut never).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    for bad_answer in [
        &b""[..],
        b"null",
        br#"{"rsa_signature":{"nonce":"AA==","signature":"AA=="}}"#,
        br#"{"ecdsa_signature":{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","r":"","s":""}}"#,
        br#"{"ecdsa_signature":{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","r":"/////////////////////////////////////////////////////////////////////////////////////w==","s":"AQ=="}}"#,
    ] {
        let mut garbage = scripted(|_| bad_answer.to_vec());
        let status = attestor.attest(&data, &mut garbage).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied),
            "{status:?}"
        );
    }
}

#[tokio::test]
async fn sshpop_refuses_another_key_a_replayed_response_and_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = SshCa::new(tmp.path(), "host-ca");
    let data: sshpop::Data = serde_json::from_value(serde_json::json!({
        "cert_authorities": [ca.public_line.clone()]
    }))
    .unwrap();
    let config = sshpop::SshPopConfig::from_data("server.conf", "sshpop", data).unwrap();
    let attestor = sshpop::SshPopAttestor::new(&config, &td()).unwrap();

    for key_type in ["ed25519", "rsa", "ecdsa"] {
        let host = ca.host(
            &format!("host-{key_type}"),
            key_type,
            "node.example.org",
            "-5m:+1h",
        );
        let thief = ca.host(
            &format!("thief-{key_type}"),
            key_type,
            "node.example.org",
            "-5m:+1h",
        );
        let client = spire_core::sshpop::Client::new(
            &std::fs::read(&host.key).unwrap(),
            &std::fs::read(&host.cert).unwrap(),
        )
        .unwrap();
        // The thief presents the host's certificate but holds only its own key.
        let thief_client = spire_core::sshpop::Client::new(
            &std::fs::read(&thief.key).unwrap(),
            &std::fs::read(&host.cert).unwrap(),
        )
        .unwrap();
        let data = client.attestation_data().unwrap();

        let mut honest = scripted(|c| client.respond(c).unwrap());
        let attested = attestor.attest(&data, &mut honest).await.unwrap();
        assert!(attested.can_reattest);
        assert!(attested.selector_values.is_empty());

        let mut wrong_key = scripted(|c| thief_client.respond(c).unwrap());
        assert_refused(
            attestor.attest(&data, &mut wrong_key).await,
            Code::PermissionDenied,
            "nodeattestor(sshpop): failed to verify signature",
        );

        let recorded = honest.sent[0].clone();
        let mut replay = scripted(|_| recorded.clone());
        assert_refused(
            attestor.attest(&data, &mut replay).await,
            Code::PermissionDenied,
            "failed to verify signature",
        );
    }

    for bad_payload in [
        &b""[..],
        b"{}",
        br#"{"Certificate":"AAAA"}"#,
        br#"{"Certificate":"AAAAB3NzaC1yc2E="}"#,
    ] {
        let mut never = scripted(|_| Vec::new());
        let status = attestor.attest(bad_payload, &mut never).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}
