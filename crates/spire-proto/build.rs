//! Compiles `proto/` (our wire-identical copies of upstream's API) without a system `protoc`:
//! protox parses the files, tonic-prost-build writes messages plus client and server stubs,
//! and pbjson-build writes the proto3 JSON mapping used by `-output json`.

use std::path::{Path, PathBuf};

use prost::Message;

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut files = Vec::new();
    proto_files(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile(&files, [&root])?;
    let descriptor_path = out_dir.join("descriptor.bin");
    std::fs::write(&descriptor_path, fds.encode_to_vec())?;

    // pbjson needs a package name; the Workload API file has none and needs no JSON form.
    let mut json_fds = fds.clone();
    json_fds.file.retain(|f| f.package.is_some());

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&json_fds.encode_to_vec())?
        .build(&[".spire"])?;
    Ok(())
}
