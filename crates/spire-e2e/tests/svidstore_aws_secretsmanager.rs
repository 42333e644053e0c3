//! The built-in `SVIDStore "aws_secretsmanager"` end to end against moto: an entry created with
//! `-storeSVID` and the selector `aws_secretsmanager:secretname:web` is stored by our agent as
//! a tagged secret holding upstream's JSON; upstream v1.13.3's agent, on the same config,
//! writes a secret with the same fields and tag.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use spire_e2e::aws::{Moto, with_env};
use spire_e2e::{AgentProcess, ServerProcess, binary, eventually, interop_program, subdir};

const TD: &str = "example.org";

const READ_SECRET: &str = r#"import boto3, json, sys
c = boto3.client('secretsmanager', endpoint_url=sys.argv[1], region_name='us-east-1',
                 aws_access_key_id='a', aws_secret_access_key='b')
try:
    d = c.describe_secret(SecretId=sys.argv[2])
    v = c.get_secret_value(SecretId=sys.argv[2])
except c.exceptions.ResourceNotFoundException:
    print('null')
    sys.exit(0)
print(json.dumps({'tags': d.get('Tags', []), 'data': json.loads(v['SecretBinary'])}))
"#;

/// Reads secret `name` with boto3: `{"tags": [...], "data": <the secret's JSON>}`, or `None`
/// while it does not exist.
fn read_secret(moto: &Moto, dir: &Path, name: &str) -> Option<serde_json::Value> {
    let script = dir.join("read_secret.py");
    std::fs::write(&script, READ_SECRET).unwrap();
    let out = Command::new(interop_program("SPIRE_TEST_CLOUD_PYTHON"))
        .arg(&script)
        .arg(&moto.endpoint)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (!value.is_null()).then_some(value)
}

fn stored_by(agent_program: &Path, case: &Path) -> serde_json::Value {
    let moto = Moto::start(&subdir(case, "moto"));
    let server = ServerProcess::start(&subdir(case, "server"), "");
    let agent_dir = subdir(case, "agent");
    let (config_path, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let block = "    SVIDStore \"aws_secretsmanager\" {\n        plugin_data {\n            region = \"us-east-1\"\n        }\n    }\n    WorkloadAttestor \"unix\" {";
    std::fs::write(
        &config_path,
        text.replacen("    WorkloadAttestor \"unix\" {", block, 1),
    )
    .unwrap();
    let program = with_env(case, agent_program, &moto.env());
    let agent_id = format!("spiffe://{TD}/node-aws");
    let token = server.generate_join_token(&agent_id);
    let agent = AgentProcess::start_program_with_config(
        &program,
        &agent_dir,
        &config_path,
        socket,
        Some(&token),
    );
    server.create_entry(&[
        "-parentID",
        &agent_id,
        "-spiffeID",
        &format!("spiffe://{TD}/stored/web"),
        "-selector",
        "aws_secretsmanager:secretname:web",
        "-storeSVID",
    ]);
    let mut stored = None;
    eventually(
        "the SVID is stored in the secret",
        Duration::from_secs(90),
        || {
            stored = read_secret(&moto, case, "web");
            stored.is_some()
        },
    );
    drop(agent);
    stored.unwrap()
}

#[test]
fn our_agent_stores_the_svid_in_a_tagged_secret_as_upstreams_agent_does() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = stored_by(&binary("spire-agent"), &tmp.path().join("ours"));
    assert_eq!(
        ours["tags"],
        serde_json::json!([{ "Key": "spire-svid", "Value": "true" }])
    );
    assert_eq!(
        ours["data"]["spiffeID"],
        format!("spiffe://{TD}/stored/web")
    );
    for key in ["x509SVID", "bundle"] {
        let pem = ours["data"][key].as_str().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
    let key = ours["data"]["x509SVIDKey"].as_str().unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");

    let upstream = stored_by(
        &interop_program("SPIRE_UPSTREAM_AGENT"),
        &tmp.path().join("upstream"),
    );
    assert_eq!(upstream["tags"], ours["tags"]);
    assert_eq!(upstream["data"]["spiffeID"], ours["data"]["spiffeID"]);
    let fields = |v: &serde_json::Value| -> Vec<String> {
        v["data"].as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(fields(&upstream), fields(&ours));
}
