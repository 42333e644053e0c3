//! `spire-server x509 mint`: mints an X509-SVID for any SPIFFE ID (admin/local only).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use spire_proto::spire::api::server::bundle::v1 as bundlev1;
use spire_proto::spire::api::server::svid::v1 as svidv1;

use super::printer::{go_duration, print_struct};
use super::{CliError, CliResult, Env, OutputArg, SocketArg, client};

/// `x509` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum X509Command {
    /// Mints an X509-SVID
    Mint(MintArgs),
}

/// `x509 mint` flags.
#[derive(Debug, Args)]
pub(crate) struct MintArgs {
    /// SPIFFE ID of the X509-SVID
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// TTL of the X509-SVID
    #[arg(long = "ttl", value_name = "duration", default_value = "0s", value_parser = go_duration)]
    ttl: Duration,
    /// DNS name that will be included in SVID. Can be used more than once.
    #[arg(verbatim_doc_comment, long = "dns", value_name = "value")]
    dns_names: Vec<String>,
    /// Directory to write output to instead of stdout
    #[arg(long = "write", value_name = "string", default_value = "")]
    write: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// What `x509 mint -output json` prints: upstream's `mintResult`, whose `[]byte` fields Go's
/// JSON encodes as base64 (the DER certificates and the PKCS#8 DER key).
#[derive(Debug, Serialize)]
struct Minted {
    x509_svid: Vec<String>,
    private_key: String,
    root_cas: Vec<String>,
}

/// The PEM forms the pretty output and `-write` use.
struct MintedPem {
    x509_svid: String,
    private_key: String,
    root_cas: String,
}

/// A CSR for `key` carrying the SPIFFE ID as URI SAN and the DNS names (the server takes
/// the identity from the CSR for MintX509SVID).
fn csr(key: &spire_core::PrivateKey, spiffe_id: &str, dns: &[String]) -> Result<Vec<u8>, CliError> {
    let key_pair = rcgen::KeyPair::try_from(key.pkcs8_der())
        .map_err(|e| CliError::invalid(format!("unable to generate key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(spiffe_id.to_owned())
        .map_err(|e| CliError::invalid(format!("invalid SPIFFE ID: {e}")))?;
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    for name in dns {
        let name = rcgen::string::Ia5String::try_from(name.clone())
            .map_err(|e| CliError::invalid(format!("invalid DNS name {name:?}: {e}")))?;
        params.subject_alt_names.push(rcgen::SanType::DnsName(name));
    }
    let request = params
        .serialize_request(&key_pair)
        .map_err(|e| CliError::invalid(format!("unable to generate CSR: {e}")))?;
    Ok(request.der().to_vec())
}

fn ttl_seconds(ttl: Duration) -> i32 {
    i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX)
}

fn write_file(path: &Path, data: &str, mode: u32) -> CliResult {
    spire_common::fs::write_with_mode(path, data.as_bytes(), mode).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs an `x509` subcommand.
pub(crate) async fn run(command: X509Command, env: &mut Env<'_>) -> CliResult {
    let X509Command::Mint(args) = command;
    if args.spiffe_id.is_empty() {
        return Err(CliError::invalid("spiffeID must be specified"));
    }
    spire_core::SpiffeId::parse(&args.spiffe_id).map_err(|e| CliError::invalid(e.to_string()))?;
    let key = spire_core::PrivateKey::generate(spire_core::KeyType::EcP256)
        .map_err(|e| CliError::invalid(format!("unable to generate key: {e}")))?;
    let csr = csr(&key, &args.spiffe_id, &args.dns_names)?;
    let channel = client::connect(&args.socket.path()?).await?;
    let svid = svidv1::svid_client::SvidClient::new(channel.clone())
        .mint_x509svid(svidv1::MintX509svidRequest {
            csr,
            ttl: ttl_seconds(args.ttl),
        })
        .await
        .map_err(CliError::rpc("unable to mint SVID: "))?
        .into_inner()
        .svid
        .ok_or_else(|| CliError::invalid("server response missing SVID"))?;
    let bundle = bundlev1::bundle_client::BundleClient::new(channel)
        .get_bundle(bundlev1::GetBundleRequest { output_mask: None })
        .await
        .map_err(CliError::rpc("unable to get bundle: "))?
        .into_inner();
    if super::printer::lifetime_capped(svid.expires_at, args.ttl) {
        env.eprint(&format!(
            "X509-SVID lifetime was capped shorter than specified ttl; expires {:?}\n",
            super::printer::rfc3339_utc(svid.expires_at)
        ));
    }
    let roots: Vec<&[u8]> = bundle
        .x509_authorities
        .iter()
        .map(|a| a.asn1.as_slice())
        .collect();
    let pem = MintedPem {
        x509_svid: spire_core::pem::encode_certificates(svid.cert_chain.iter().map(Vec::as_slice)),
        private_key: key.to_pem().to_string(),
        root_cas: spire_core::pem::encode_certificates(roots.iter().copied()),
    };
    if !args.write.is_empty() {
        let dir = PathBuf::from(&args.write);
        let svid_path = dir.join("svid.pem");
        let key_path = dir.join("key.pem");
        let bundle_path = dir.join("bundle.pem");
        write_file(&svid_path, &pem.x509_svid, 0o644)?;
        write_file(&key_path, &pem.private_key, 0o600)?;
        write_file(&bundle_path, &pem.root_cas, 0o644)?;
        env.print(&format!("X509-SVID written to {}\n", svid_path.display()));
        env.print(&format!("Private key written to {}\n", key_path.display()));
        env.print(&format!("Root CAs written to {}\n", bundle_path.display()));
        return Ok(());
    }
    use base64::Engine as _;
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let minted = Minted {
        x509_svid: svid.cert_chain.iter().map(|c| b64(c)).collect(),
        private_key: b64(key.pkcs8_der()),
        root_cas: roots.iter().map(|r| b64(r)).collect(),
    };
    print_struct(env, args.output.output, &minted, |env, _| {
        env.print(&format!("X509-SVID:\n{}\n", pem.x509_svid));
        env.print(&format!("Private key:\n{}\n", pem.private_key));
        env.print(&format!("Root CAs:\n{}\n", pem.root_cas));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testutil::run;

    #[test]
    fn csr_carries_the_requested_names() {
        let key = spire_core::PrivateKey::generate(spire_core::KeyType::EcP256).unwrap();
        let der = csr(
            &key,
            "spiffe://example.org/w",
            &["w.example.org".to_owned()],
        )
        .unwrap();
        // The CSR verifies and carries the key we generated.
        assert_eq!(
            spire_core::x509::csr_public_key(&der).unwrap(),
            key.public_key_der()
        );
    }

    #[test]
    fn spiffe_id_is_required() {
        let (code, _, err) = run(&["x509", "mint", "-socketPath", "/x.sock"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: spiffeID must be specified\n")
        );
    }
}
