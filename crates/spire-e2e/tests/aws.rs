//! AWS plugins end to end against moto (the AWS API emulator, real signed requests over
//! loopback): `aws_iid` node attestation — our agent and upstream v1.13.3's agent read a
//! signed instance identity document from a loopback IMDS (IMDSv2 and IMDSv1-only), our
//! server verifies it with its production code (the test CA added with
//! `extra_ca_cert_path`), describes the instance in moto's EC2 and its instance profile in
//! moto's IAM, and issues upstream's agent ID and selectors; forged, wrongly signed, expired
//! and replayed documents are refused with PermissionDenied naming the check. And the
//! `awssecret` UpstreamAuthority: the server's X.509 CA is signed by a CA whose certificate
//! and key live in moto's Secrets Manager.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use spire_e2e::aws::{FakeImds, Moto, with_env};
use spire_e2e::subdir as dir;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, interop_program, run_to_failure,
    selector_strings, server_config,
};

const TD: &str = "example.org";

/// How our agent words a PermissionDenied answer to its attestation.
const DENIED: &str = "the SPIRE server denied the agent: nodeattestor(aws_iid)";

const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

/// Starts our spire-server with `moto`'s environment, `plugins` (HCL blocks) added beside
/// join_token and `extra_server_keys` inside `server { }`.
fn start_server(dir: &Path, moto: &Moto, plugins: &str, extra_server_keys: &str) -> ServerProcess {
    let program = with_env(dir, &binary("spire-server"), &moto.env());
    let socket = dir.join("api.sock");
    let data_dir = dir.join("data");
    let config_path = dir.join("server.conf");
    ServerProcess::start_program_on_free_port(&program, dir, |port| {
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &connection_string,
            extra_server_keys,
        });
        let config = config.replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{plugins}"));
        std::fs::write(&config_path, config).unwrap();
        (config_path.clone(), socket.clone())
    })
}

fn agent_block(imds: &FakeImds) -> String {
    format!(
        "    NodeAttestor \"aws_iid\" {{\n        plugin_data {{\n            ec2_metadata_endpoint = \"{}\"\n        }}\n    }}\n",
        imds.endpoint
    )
}

fn agent_config(dir: &Path, server: &ServerProcess, imds: &FakeImds) -> (PathBuf, PathBuf) {
    let (config_path, socket) = AgentProcess::write_config(dir, server.port, "");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace(JOIN_TOKEN_BLOCK, &agent_block(imds)),
    )
    .unwrap();
    (config_path, socket)
}

fn start_agent(
    program: &Path,
    dir: &Path,
    server: &ServerProcess,
    imds: &FakeImds,
) -> AgentProcess {
    let (config, socket) = agent_config(dir, server, imds);
    AgentProcess::start_program_with_config(program, dir, &config, socket, None)
}

fn agent_refused(dir: &Path, server: &ServerProcess, imds: &FakeImds) -> String {
    let (config, _) = agent_config(dir, server, imds);
    let mut command = Command::new(binary("spire-agent"));
    // A refusal ends the agent at once instead of retrying for a minute (retry_bootstrap).
    command
        .args(["run", "-config"])
        .arg(&config)
        .arg("-retryBootstrap=false");
    run_to_failure(
        command,
        &dir.join("agent.log"),
        Duration::from_secs(90),
        "the agent kept running although its attestation should be refused",
    )
}

fn expected_selectors(fixture: &Value, instance: usize, name: &str) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap().to_owned();
    let mut expected = vec![
        "aws_iid:az:us-east-1a".to_owned(),
        format!("aws_iid:iamrole:{}", s(&fixture["role_arn"])),
        format!("aws_iid:image:id:{}", s(&fixture["image"])),
        format!("aws_iid:instance:id:{}", s(&fixture["instances"][instance])),
        "aws_iid:region:us-east-1".to_owned(),
        format!("aws_iid:sg:id:{}", s(&fixture["security_group"])),
        "aws_iid:sg:name:spire-agents".to_owned(),
        format!("aws_iid:tag:Name:{name}"),
        "aws_iid:tag:role:frontend".to_owned(),
    ];
    expected.sort();
    expected
}

fn agent_id(fixture: &Value, instance: usize) -> String {
    format!(
        "spiffe://{TD}/spire/agent/aws_iid/{}/us-east-1/{}",
        fixture["account"].as_str().unwrap(),
        fixture["instances"][instance].as_str().unwrap()
    )
}

#[test]
fn aws_iid_attests_agents_through_imds_and_moto_and_refuses_bad_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let fixture = moto.setup(&dir(tmp.path(), "fixture"));
    let plugin = format!(
        "    NodeAttestor \"aws_iid\" {{\n        plugin_data {{\n            extra_ca_cert_path = \"{}\"\n        }}\n    }}\n",
        fixture["ca_path"].as_str().unwrap()
    );
    let server = start_server(&dir(tmp.path(), "server"), &moto, &plugin, "");

    // Our agent, IMDSv2, the PKCS#7 (rsa2048) signature.
    let imds = FakeImds::start(&fixture["docs"]["valid"], true);
    let mut agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-1"),
        &server,
        &imds,
    );
    let id = agent_id(&fixture, 0);
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &id]);
    assert_eq!(shown["attestation_type"], "aws_iid", "{shown}");
    assert_eq!(shown["can_reattest"], false, "{shown}");
    let mut selectors = selector_strings(&shown["selectors"]);
    selectors.sort();
    assert_eq!(selectors, expected_selectors(&fixture, 0, "web-1"));
    {
        let state = imds.state.lock().unwrap();
        assert_eq!(
            (state.v2_gets, state.v1_gets),
            (3, 0),
            "IMDSv2 used: {state:?}"
        );
    }
    agent.stop();

    // The same document again, from a fresh agent: trust on first use refuses it.
    let log = agent_refused(&dir(tmp.path(), "replayed"), &server, &imds);
    assert!(log.contains(DENIED), "{log}");
    assert!(
        log.contains("attestation data has already been used to attest an agent"),
        "{log}"
    );

    // Upstream v1.13.3's agent against our server, IMDSv1 only (its SDK falls back).
    let imds_v1 = FakeImds::start(&fixture["docs"]["second"], false);
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let mut agent = start_agent(
        &upstream_agent,
        &dir(tmp.path(), "agent-2"),
        &server,
        &imds_v1,
    );
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id(&fixture, 1)]);
    let mut selectors = selector_strings(&shown["selectors"]);
    selectors.sort();
    assert_eq!(selectors, expected_selectors(&fixture, 1, "web-2"));
    {
        let state = imds_v1.state.lock().unwrap();
        assert_eq!(state.v2_gets, 0, "{state:?}");
        assert!(state.v1_gets >= 3, "IMDSv1 fallback used: {state:?}");
    }
    agent.stop();

    // The legacy RSA signature only, our agent on IMDSv1.
    let imds_legacy = FakeImds::start(&fixture["docs"]["legacy_only"], false);
    let mut agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent-3"),
        &server,
        &imds_legacy,
    );
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id(&fixture, 2)]);
    assert_eq!(shown["attestation_type"], "aws_iid", "{shown}");
    assert_eq!(imds_legacy.state.lock().unwrap().v1_gets, 3);
    agent.stop();

    // Refusals, each naming its check.
    let bad = FakeImds::start(&fixture["docs"]["forged"], true);
    for (doc, check) in [
        (
            "forged",
            "signed content: the PKCS#7 signature does not carry the attested document",
        ),
        (
            "forged_legacy",
            "signature: the document's signature does not verify",
        ),
        (
            "wrong_signer",
            "signer: no AWS certificate of the document's region matches the signer",
        ),
        (
            "wrong_signer_legacy",
            "signature: the document's signature does not verify",
        ),
        (
            "expired",
            "signing time: the document was signed outside the AWS certificate's validity",
        ),
    ] {
        bad.serve(&fixture["docs"][doc]);
        let log = agent_refused(&dir(tmp.path(), doc), &server, &bad);
        assert!(log.contains(DENIED), "{doc}: {log}");
        assert!(log.contains(check), "{doc}: {log}");
    }
    bad.serve(&fixture["docs"]["unsigned"]);
    let log = agent_refused(&dir(tmp.path(), "unsigned"), &server, &bad);
    assert!(
        log.contains("instance identity cryptographic signature is required"),
        "{log}"
    );
    // A validly signed document of an instance that is not running.
    bad.serve(&fixture["docs"]["stopped"]);
    let log = agent_refused(&dir(tmp.path(), "stopped"), &server, &bad);
    assert!(log.contains("returned no instances"), "{log}");

    let ids = server.agent_ids();
    assert_eq!(ids.len(), 3, "only the three good agents attested: {ids:?}");
    assert!(server.cli(&["healthcheck"]).status.success());
}

/// The certificates of PEM text, DER, in order.
fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    spire_core::pem::decode_certificates(text.as_bytes()).unwrap()
}

#[test]
fn awssecret_upstream_authority_signs_the_server_ca_with_the_ca_in_secrets_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let fixture = moto.setup(&dir(tmp.path(), "fixture"));
    let secrets = &fixture["secrets"];
    // The secrets are read as a role of the account (moto's STS).
    let role = format!(
        "arn:aws:iam::{}:role/spire-secrets-reader",
        fixture["account"].as_str().unwrap()
    );
    let plugin = format!(
        "    UpstreamAuthority \"awssecret\" {{\n        plugin_data {{\n            region = \"us-east-1\"\n            cert_file_arn = \"{}\"\n            key_file_arn = \"{}\"\n            assume_role_arn = \"{role}\"\n        }}\n    }}\n",
        secrets["cert_arn"].as_str().unwrap(),
        secrets["key_arn"].as_str().unwrap()
    );
    moto.start_recording();
    let server = start_server(&dir(tmp.path(), "server"), &moto, &plugin, "");
    let upstream_root = pem_certificates(secrets["cert_pem"].as_str().unwrap());
    // The trust bundle is the upstream root from Secrets Manager.
    let bundle = server.cli_ok(&["bundle", "show"]);
    assert_eq!(pem_certificates(&bundle), upstream_root, "{bundle}");
    // One AssumeRole with the environment's keys; both secrets read with the role's.
    let calls = moto.recorded_calls();
    let sts: Vec<_> = calls.iter().filter(|c| c.service == "sts").collect();
    assert_eq!(sts.len(), 1, "{calls:?}");
    assert_eq!(sts[0].operation, "AssumeRole");
    assert_eq!(sts[0].key_id, "AKIDSPIRESERVER");
    assert!(
        sts[0].body.contains(&format!(
            "RoleArn={}",
            role.replace(':', "%3A").replace('/', "%2F")
        )),
        "{}",
        sts[0].body
    );
    let reads: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == "GetSecretValue")
        .collect();
    assert_eq!(reads.len(), 2, "{calls:?}");
    for read in reads {
        assert!(
            read.key_id.starts_with("ASIA") && read.session_token,
            "not read as the role: {read:?}"
        );
    }
    // The server's CA chains to it: an agent SVID verifies against the bundle.
    let token = server.generate_join_token("spiffe://example.org/node");
    let mut agent = AgentProcess::start(&dir(tmp.path(), "agent"), &server, Some(&token));
    let ids = server.agent_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let log = server.log();
    assert!(
        !log.contains("level=error"),
        "the server logged errors:\n{log}"
    );
    agent.stop();

    // A key secret that does not exist stops the server at start, naming it.
    let bad = plugin.replace(
        secrets["key_arn"].as_str().unwrap(),
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing",
    );
    let bad_dir = dir(tmp.path(), "bad");
    let program = with_env(&bad_dir, &binary("spire-server"), &moto.env());
    let socket = bad_dir.join("api.sock");
    let config = server_config(&ServerPaths {
        port: spire_e2e::free_port(),
        socket: &socket,
        data_dir: &bad_dir.join("data"),
        keys: &bad_dir.join("data/keys.json"),
        database_type: "sqlite3",
        connection_string: &format!("{}/data/ds.sqlite3", bad_dir.display()),
        extra_server_keys: "",
    })
    .replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{bad}"));
    std::fs::write(bad_dir.join("server.conf"), config).unwrap();
    let mut command = Command::new(program);
    command
        .args(["run", "-config"])
        .arg(bad_dir.join("server.conf"));
    let out = run_to_failure(
        command,
        &bad_dir.join("server.log"),
        Duration::from_secs(60),
        "the server started although its awssecret key secret does not exist",
    );
    assert!(out.contains("upstreamauthority(awssecret)"), "{out}");
    assert!(out.contains("ResourceNotFoundException"), "{out}");
}

#[test]
fn aws_iid_verify_organization_admits_only_accounts_of_the_organization() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let fixture = moto.setup(&dir(tmp.path(), "fixture"));
    let account = fixture["account"].as_str().unwrap();
    // moto's Organizations lists the management account and the member it created.
    let org_accounts = fixture["org_accounts"].as_array().unwrap();
    assert_eq!(org_accounts.len(), 2, "{org_accounts:?}");
    assert!(
        org_accounts.iter().any(|a| a == account),
        "{org_accounts:?}"
    );
    let plugin = format!(
        "    NodeAttestor \"aws_iid\" {{\n        plugin_data {{\n            extra_ca_cert_path = \"{}\"\n            verify_organization {{\n                management_account_id = \"{account}\"\n                assume_org_role = \"spire-org-reader\"\n                management_account_region = \"us-east-1\"\n                org_account_map_ttl = \"1m\"\n            }}\n        }}\n    }}\n",
        fixture["ca_path"].as_str().unwrap()
    );
    let server = start_server(&dir(tmp.path(), "server"), &moto, &plugin, "");

    // An instance of the management account attests.
    let imds = FakeImds::start(&fixture["docs"]["valid"], true);
    let mut agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent"),
        &server,
        &imds,
    );
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id(&fixture, 0)]);
    assert_eq!(shown["attestation_type"], "aws_iid", "{shown}");
    agent.stop();

    // A validly signed document of an account outside the organization is refused.
    let other = FakeImds::start(&fixture["docs"]["other_account"], true);
    let log = agent_refused(&dir(tmp.path(), "other"), &server, &other);
    assert!(
        log.contains(
            "nodes account id: 999999999999 is not part of configured organization or doesn't \
             have ACTIVE status"
        ),
        "{log}"
    );
    assert_eq!(server.agent_ids().len(), 1);
}
