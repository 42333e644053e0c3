//! Proves our `proto/` files are wire-identical to upstream's.
//!
//! The references are the `.proto` files of the spire-api-sdk of the newest upstream release
//! (from the Go module proxy, named by `SPIRE_API_SDK_DIR`), the older copy inside the
//! published `spire-api` crate (which ours must still contain), and the `spiffe` crate's
//! SPIFFE Workload API. Both are compiled here with
//! protox and every package, service, method (with streaming flags), message, enum, field name,
//! number, type, label and oneof is compared with our compiled descriptors.

#![allow(clippy::expect_used, clippy::panic, reason = "test code fails loudly")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// Finds the source folder of a dependency package through `cargo metadata`: offline and
/// locked (the test must neither reach the network nor rewrite Cargo.lock) and for the host
/// platform only, whose packages the build that runs this test has on disk already (other
/// platforms' may never have been downloaded).
fn package_dir(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let version = Command::new(&cargo)
        .arg("-vV")
        .output()
        .expect("cargo -vV runs");
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("cargo -vV names no host: {version}"))
        .trim();
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("package {name} is not in the dependency graph"));
    Path::new(manifest)
        .parent()
        .expect("manifest has a folder")
        .to_path_buf()
}

fn proto_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable folder") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            proto_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn describe_enum(scope: &str, e: &EnumDescriptorProto, facts: &mut BTreeSet<String>) {
    let name = format!("{scope}.{}", e.name());
    facts.insert(format!("enum {name}"));
    for v in &e.value {
        facts.insert(format!("enum {name} value {} = {}", v.name(), v.number()));
    }
}

fn describe_message(scope: &str, m: &DescriptorProto, facts: &mut BTreeSet<String>) {
    let name = format!("{scope}.{}", m.name());
    let map_entry = m
        .options
        .as_ref()
        .and_then(|o| o.map_entry)
        .unwrap_or(false);
    facts.insert(format!("message {name} map_entry={map_entry}"));
    for f in &m.field {
        let oneof = f
            .oneof_index
            .and_then(|i| m.oneof_decl.get(usize::try_from(i).ok()?))
            .map(|o| o.name().to_owned())
            .unwrap_or_default();
        facts.insert(format!(
            "message {name} field {} = {} type={:?} type_name={} label={:?} oneof={oneof} proto3_optional={} json_name={}",
            f.name(),
            f.number(),
            f.r#type(),
            f.type_name(),
            f.label(),
            f.proto3_optional(),
            f.json_name(),
        ));
    }
    for r in &m.reserved_range {
        facts.insert(format!(
            "message {name} reserved {}..{}",
            r.start(),
            r.end()
        ));
    }
    for nested in &m.nested_type {
        describe_message(&name, nested, facts);
    }
    for e in &m.enum_type {
        describe_enum(&name, e, facts);
    }
}

/// Every wire-relevant fact of one file, as sortable lines.
fn describe_file(f: &FileDescriptorProto) -> BTreeSet<String> {
    let mut facts = BTreeSet::new();
    let scope = if f.package().is_empty() {
        String::new()
    } else {
        format!(".{}", f.package())
    };
    facts.insert(format!("package {}", f.package()));
    for s in &f.service {
        let name = format!("{scope}.{}", s.name());
        facts.insert(format!("service {name}"));
        for m in &s.method {
            facts.insert(format!(
                "service {name} rpc {}({}{}) returns ({}{})",
                m.name(),
                if m.client_streaming() { "stream " } else { "" },
                m.input_type(),
                if m.server_streaming() { "stream " } else { "" },
                m.output_type(),
            ));
        }
    }
    for m in &f.message_type {
        describe_message(&scope, m, &mut facts);
    }
    for e in &f.enum_type {
        describe_enum(&scope, e, &mut facts);
    }
    facts
}

fn ours() -> FileDescriptorSet {
    FileDescriptorSet::decode(spire_proto::FILE_DESCRIPTOR_SET).expect("our descriptor set decodes")
}

/// How ours must relate to an upstream copy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// The same facts, no more, no fewer.
    Identical,
    /// Every upstream fact, plus what newer upstream releases added.
    Superset,
}

/// Compares every upstream file under `root` (path prefix `prefix`) with ours; returns how
/// many files were compared.
fn assert_wire(root: &Path, prefix: &str, relation: Relation) -> usize {
    let mut files = Vec::new();
    proto_files(root, &root.join(prefix), &mut files);
    files.retain(|f| !f.starts_with("google/"));
    files.sort();
    let upstream = protox::compile(&files, [root]).expect("upstream protos compile");
    let ours = ours();
    let mut problems = Vec::new();
    for file in &files {
        let theirs = upstream
            .file
            .iter()
            .find(|f| f.name() == file)
            .expect("compiled file");
        let Some(mine) = ours.file.iter().find(|f| f.name() == file) else {
            problems.push(format!("{file}: missing from proto/"));
            continue;
        };
        let (theirs, mine) = (describe_file(theirs), describe_file(mine));
        for missing in theirs.difference(&mine) {
            problems.push(format!("{file}: upstream has, we lack: {missing}"));
        }
        if relation == Relation::Identical {
            for extra in mine.difference(&theirs) {
                problems.push(format!("{file}: we have, upstream lacks: {extra}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "wire differences:\n{}",
        problems.join("\n")
    );
    files.len()
}

/// The `spire-api` crate's older copy of the sdk: everything in it is still in ours, as
/// named and numbered, so clients built on it keep working.
#[test]
fn older_spire_api_sdk_is_a_wire_subset() {
    let root = package_dir("spire-api").join("spire-api-sdk/proto");
    let compared = assert_wire(&root, "spire", Relation::Superset);
    assert_eq!(compared, 24, "every spire-api-sdk file is compared");
}

/// The spire-api-sdk of the newest upstream release (v1.15.x): `scripts/interop-deps.sh`
/// downloads it from the Go module proxy and names its folder in `SPIRE_API_SDK_DIR`. It
/// is newer than the `spire-api` crate's copy (Entry.additional_attributes,
/// Agent.agent_version, the WIT-SVID types and RPCs), and our protos follow it.
#[test]
fn newest_released_spire_api_sdk_is_wire_identical() {
    let dir = std::env::var_os("SPIRE_API_SDK_DIR").unwrap_or_else(|| {
        panic!(
            "SPIRE_API_SDK_DIR is not set: run scripts/interop-deps.sh and source \
             target/interop-deps.env (the test command does both)"
        )
    });
    let root = PathBuf::from(dir).join("proto");
    assert!(root.is_dir(), "{} is not a folder", root.display());
    let compared = assert_wire(&root, "spire", Relation::Identical);
    assert_eq!(compared, 25, "every spire-api-sdk file is compared");
}

/// spire-plugin-sdk v1.4.4, which most external plugins are built on: `scripts/plugin-deps.sh`
/// names its source folder in `SPIRE_PLUGIN_SDK_DIR`. Everything in its public protos is in
/// ours as named and numbered (ours follow the newer commit upstream v1.13.3 pins, which
/// only adds), and its private `Init` service must be ours exactly.
#[test]
fn spire_plugin_sdk_v1_4_4_is_a_wire_subset() {
    let dir = std::env::var_os("SPIRE_PLUGIN_SDK_DIR").unwrap_or_else(|| {
        panic!(
            "SPIRE_PLUGIN_SDK_DIR is not set: run scripts/plugin-deps.sh and source \
             target/plugin-deps.env (the test command does both)"
        )
    });
    let root = PathBuf::from(dir);
    let public = assert_wire(&root.join("proto"), "spire", Relation::Superset);
    assert_eq!(public, 16, "every spire-plugin-sdk file is compared");
    let init = assert_wire(
        &root.join("internal/proto"),
        "spire/service/private",
        Relation::Identical,
    );
    assert_eq!(init, 1, "the Init service is compared");
}

/// The spire-plugin-sdk commit upstream v1.13.3 pins (BundlePublisher, CredentialComposer,
/// `SubscribeToLocalBundle`, taint flags, `Config.Validate`): `scripts/plugin-deps.sh` names
/// its source folder in `SPIRE_PLUGIN_SDK_113_DIR`. Its public protos must be ours exactly.
#[test]
fn spire_plugin_sdk_of_upstream_v1_13_3_is_wire_identical() {
    let dir = std::env::var_os("SPIRE_PLUGIN_SDK_113_DIR").unwrap_or_else(|| {
        panic!(
            "SPIRE_PLUGIN_SDK_113_DIR is not set: run scripts/plugin-deps.sh and source \
             target/plugin-deps.env (the test command does both)"
        )
    });
    let root = PathBuf::from(dir);
    let public = assert_wire(&root.join("proto"), "spire", Relation::Identical);
    assert_eq!(public, 17, "every spire-plugin-sdk file is compared");
    let init = assert_wire(
        &root.join("internal/proto"),
        "spire/service/private",
        Relation::Identical,
    );
    assert_eq!(init, 1, "the Init service is compared");
}

#[test]
fn workload_api_is_wire_identical() {
    let root = package_dir("spiffe").join("src/proto");
    let mut files = Vec::new();
    proto_files(&root, &root, &mut files);
    assert!(
        files.iter().any(|f| f == "workload.proto"),
        "spiffe ships workload.proto"
    );
    let upstream = protox::compile(["workload.proto"], [&root]).expect("workload.proto compiles");
    let theirs = upstream
        .file
        .iter()
        .find(|f| f.name() == "workload.proto")
        .expect("compiled");
    let ours = ours();
    let mine = ours
        .file
        .iter()
        .find(|f| f.name() == "workload.proto")
        .expect("ours has it");
    assert_eq!(describe_file(theirs), describe_file(mine));
}

#[test]
fn the_comparison_notices_a_difference() {
    // Guard against a comparison that cannot fail: a changed field number must show.
    let ours = ours();
    let mut changed = ours
        .file
        .iter()
        .find(|f| f.name() == "workload.proto")
        .expect("file")
        .clone();
    let original = describe_file(&changed);
    changed.message_type[0]
        .field
        .push(prost_types::FieldDescriptorProto {
            name: Some("extra".into()),
            number: Some(99),
            ..Default::default()
        });
    assert_ne!(describe_file(&changed), original);
}

#[test]
fn generated_stubs_exist_for_both_sides() {
    // Compile-time proof that client and server stubs are generated for each side.
    use spire_proto::spire::api::server::entry::v1::{entry_client, entry_server};
    use spire_proto::workload::{spiffe_workload_api_client, spiffe_workload_api_server};
    let names = [
        std::any::type_name::<entry_client::EntryClient<()>>(),
        std::any::type_name::<entry_server::EntryServer<()>>(),
        std::any::type_name::<spiffe_workload_api_client::SpiffeWorkloadApiClient<()>>(),
        std::any::type_name::<spiffe_workload_api_server::SpiffeWorkloadApiServer<()>>(),
        std::any::type_name::<
            spire_proto::sds::secret::secret_discovery_service_server::SecretDiscoveryServiceServer<
                (),
            >,
        >(),
    ];
    assert!(
        names
            .iter()
            .all(|n| n.contains("spire_proto") || n.contains("envoy"))
    );
}

#[test]
fn messages_use_the_proto3_json_mapping() {
    use spire_proto::spire::api::types::{Entry, Selector, Spiffeid};
    let entry = Entry {
        id: "e1".into(),
        spiffe_id: Some(Spiffeid {
            trust_domain: "td".into(),
            path: "/w".into(),
        }),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: "uid:1000".into(),
        }],
        x509_svid_ttl: 3600,
        expires_at: 1_700_000_000,
        ..Default::default()
    };
    let json = serde_json::to_value(&entry).expect("serializes");
    assert_eq!(json["spiffeId"]["trustDomain"], "td");
    assert_eq!(json["x509SvidTtl"], 3600);
    assert_eq!(
        json["expiresAt"], "1700000000",
        "int64 is a string in protojson"
    );
}
