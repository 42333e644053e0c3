//! `spire-agent api fetch [x509|jwt]`, `api validate jwt` and `api watch`: Workload API
//! clients with upstream's flags, pretty output and `-write` file layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use spire_core::spiffe_id::SpiffeId;
use spire_proto::workload as wl;
use time::OffsetDateTime;

use super::client::{self, WorkloadClient};
use super::printer::{go_bool, go_duration, go_time_utc};
use super::{CliError, CliResult, Env, OutputArg, OutputFormat, SocketArg};

/// `api` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ApiCommand {
    /// Fetches SVIDs from the Workload API (X509-SVIDs unless a subcommand says otherwise)
    Fetch(FetchArgs),
    /// Validates an SVID through the Workload API
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Attaches to the Workload API and prints X509-SVID updates as they're received
    Watch(WatchArgs),
    /// Explains why a process gets (or does not get) an identity, over the admin socket (spire-rs)
    Explain(super::explain::ExplainArgs),
}

/// `api fetch`: X509 by default, or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct FetchArgs {
    #[command(subcommand)]
    kind: Option<FetchKind>,
    #[command(flatten)]
    x509: X509Args,
}

/// What `api fetch` fetches.
#[derive(Debug, Subcommand)]
pub(crate) enum FetchKind {
    /// Fetches X509 SVIDs from the Workload API
    X509(X509Args),
    /// Fetches a JWT SVID from the Workload API
    Jwt(JwtArgs),
}

/// `api validate` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ValidateCommand {
    /// Validates a JWT SVID
    Jwt(ValidateJwtArgs),
}

/// Flags every Workload API command shares.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Time to wait for a response
    #[arg(long = "timeout", value_name = "value", default_value = "1s", value_parser = go_duration)]
    timeout: Duration,
    #[command(flatten)]
    output: OutputArg,
}

/// `api fetch x509` flags.
#[derive(Debug, Args)]
pub(crate) struct X509Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Suppress stdout
    #[arg(long = "silent", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    silent: bool,
    /// Write SVID data to the specified path (optional; only available for pretty output format)
    #[arg(long = "write", value_name = "string", default_value = "")]
    write: String,
}

/// `api fetch jwt` flags.
#[derive(Debug, Args)]
pub(crate) struct JwtArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// comma separated list of audience values
    #[arg(long = "audience", value_name = "value", action = clap::ArgAction::Append)]
    audience: Vec<String>,
    /// SPIFFE ID subject (optional)
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// deprecated; use -output
    #[arg(long = "format", value_name = "value", value_parser = spire_common::cli::parse_output)]
    format: Option<OutputFormat>,
}

/// `api validate jwt` flags.
#[derive(Debug, Args)]
pub(crate) struct ValidateJwtArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// expected audience value
    #[arg(long = "audience", value_name = "string", default_value = "")]
    audience: String,
    /// JWT SVID
    #[arg(long = "svid", value_name = "string", default_value = "")]
    svid: String,
}

/// `api watch` flags.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    socket: SocketArg,
}

/// Runs an `api` subcommand.
pub(crate) async fn run(command: ApiCommand, env: &mut Env<'_>) -> CliResult {
    match command {
        ApiCommand::Fetch(FetchArgs { kind: None, x509 })
        | ApiCommand::Fetch(FetchArgs {
            kind: Some(FetchKind::X509(x509)),
            ..
        }) => fetch_x509(x509, env).await,
        ApiCommand::Fetch(FetchArgs {
            kind: Some(FetchKind::Jwt(args)),
            ..
        }) => fetch_jwt(args, env).await,
        ApiCommand::Validate(ValidateCommand::Jwt(args)) => validate_jwt(args, env).await,
        ApiCommand::Watch(args) => watch(args, env).await,
        ApiCommand::Explain(args) => super::explain::run(args, env).await,
    }
}

async fn fetch_x509(args: X509Args, env: &mut Env<'_>) -> CliResult {
    let mut client = client::workload_client(&args.common.socket.path()?).await?;
    let start = Instant::now();
    let response = client::with_timeout(args.common.timeout, first_x509(&mut client))
        .await
        .map_err(CliError::rpc(""))?;
    let elapsed = start.elapsed();
    if args.common.output.output == OutputFormat::Json {
        env.print(&x509_response_json(&response));
        env.print("\n");
        return Ok(());
    }
    let svids = parse_x509_response(&response)?;
    if !args.silent {
        env.print(&format_x509_response(&svids, elapsed));
    }
    if !args.write.is_empty() {
        write_x509_files(Path::new(&args.write), &svids, env)?;
    }
    Ok(())
}

/// The first message of a FetchX509SVID stream.
async fn first_x509(client: &mut WorkloadClient) -> Result<wl::X509svidResponse, tonic::Status> {
    let mut stream = client
        .fetch_x509svid(wl::X509svidRequest {})
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("the agent closed the stream without an answer"))
}

/// One X509-SVID of a response, parsed.
#[derive(Debug)]
struct ParsedSvid {
    spiffe_id: String,
    hint: String,
    /// Leaf first, DER.
    certificates: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    private_key: Vec<u8>,
    /// The SVID's trust domain bundle, DER.
    bundle: Vec<Vec<u8>>,
    /// Every federated bundle of the response, by trust domain.
    federated: BTreeMap<String, Vec<Vec<u8>>>,
}

/// Upstream's `parseAndValidateX509SVIDResponse`: every SVID parses and verifies against
/// its own bundle.
fn parse_x509_response(resp: &wl::X509svidResponse) -> Result<Vec<ParsedSvid>, CliError> {
    if resp.svids.is_empty() {
        return Err(CliError::invalid("workload response contains no svids"));
    }
    let mut federated = BTreeMap::new();
    for (td, der) in &resp.federated_bundles {
        let certs = spire_core::x509::parse_certificates(der).map_err(|e| {
            CliError::invalid(format!(
                "failed to parse bundle for federated domain {td:?}: {e}"
            ))
        })?;
        federated.insert(td.clone(), certs);
    }
    let now = OffsetDateTime::now_utc();
    resp.svids
        .iter()
        .enumerate()
        .map(|(i, svid)| {
            parse_svid(svid, &federated, now).map_err(|e| {
                CliError::invalid(format!(
                    "failed to parse svid entry {i} for spiffe id {:?}: {e}",
                    svid.spiffe_id
                ))
            })
        })
        .collect()
}

fn parse_svid(
    svid: &wl::X509svid,
    federated: &BTreeMap<String, Vec<Vec<u8>>>,
    now: OffsetDateTime,
) -> Result<ParsedSvid, String> {
    let certificates = spire_core::x509::parse_certificates(&svid.x509_svid)
        .map_err(|e| format!("no certificates found: {e}"))?;
    spire_core::keys::PrivateKey::from_der(&svid.x509_svid_key)
        .map_err(|e| format!("failed to parse private key: {e}"))?;
    let bundle = spire_core::x509::parse_certificates(&svid.bundle)
        .map_err(|e| format!("failed to parse trust bundle: {e}"))?;
    let id = SpiffeId::parse(&svid.spiffe_id).map_err(|e| e.to_string())?;
    spire_core::x509::verify_x509_svid(&certificates, &bundle, now).map_err(|e| {
        format!(
            "{:?} SVID failed verification against bundle: {e}",
            id.as_str()
        )
    })?;
    Ok(ParsedSvid {
        spiffe_id: svid.spiffe_id.clone(),
        hint: svid.hint.clone(),
        certificates,
        private_key: svid.x509_svid_key.clone(),
        bundle,
        federated: federated.clone(),
    })
}

/// A certificate's validity as Go prints `time.Time` of a parsed certificate.
fn validity(der: &[u8]) -> (String, String) {
    match spire_core::x509::certificate_validity(der) {
        Ok(v) => (
            go_time_utc(v.not_before.unix_timestamp()),
            go_time_utc(v.not_after.unix_timestamp()),
        ),
        Err(_) => (String::from("?"), String::from("?")),
    }
}

/// Upstream's `printX509SVIDResponse`.
fn format_x509_response(svids: &[ParsedSvid], elapsed: Duration) -> String {
    let mut out = format!("Received {} svid", svids.len());
    if svids.len() != 1 {
        out.push('s');
    }
    out.push_str(&format!(
        " after {}\n",
        spire_core::duration::format(elapsed)
    ));
    for svid in svids {
        out.push('\n');
        out.push_str(&format!("SPIFFE ID:\t\t{}\n", svid.spiffe_id));
        if !svid.hint.is_empty() {
            out.push_str(&format!("Hint:\t\t\t{}\n", svid.hint));
        }
        if let Some(leaf) = svid.certificates.first() {
            let (after, until) = validity(leaf);
            out.push_str(&format!("SVID Valid After:\t{after}\n"));
            out.push_str(&format!("SVID Valid Until:\t{until}\n"));
        }
        for (i, cert) in svid.certificates.iter().skip(1).enumerate() {
            let (after, until) = validity(cert);
            out.push_str(&format!("Intermediate #{} Valid After:\t{after}\n", i + 1));
            out.push_str(&format!("Intermediate #{} Valid Until:\t{until}\n", i + 1));
        }
        for (i, ca) in svid.bundle.iter().enumerate() {
            let (after, until) = validity(ca);
            out.push_str(&format!("CA #{} Valid After:\t{after}\n", i + 1));
            out.push_str(&format!("CA #{} Valid Until:\t{until}\n", i + 1));
        }
        for (td, bundle) in &svid.federated {
            for (i, ca) in bundle.iter().enumerate() {
                let (after, until) = validity(ca);
                out.push_str(&format!("[{td}] CA #{} Valid After:\t{after}\n", i + 1));
                out.push_str(&format!("[{td}] CA #{} Valid Until:\t{until}\n", i + 1));
            }
        }
    }
    out.push('\n');
    out
}

/// Upstream's `-write DIR`: `svid.N.pem` (chain), `svid.N.key` (PKCS#8, 0600),
/// `bundle.N.pem` and `federated_bundle.N.M.pem`, announcing each file.
fn write_x509_files(dir: &Path, svids: &[ParsedSvid], env: &mut Env<'_>) -> CliResult {
    for (i, svid) in svids.iter().enumerate() {
        let svid_path = dir.join(format!("svid.{i}.pem"));
        let key_path = dir.join(format!("svid.{i}.key"));
        let bundle_path = dir.join(format!("bundle.{i}.pem"));
        env.print(&format!(
            "Writing SVID #{i} to file {}.\n",
            svid_path.display()
        ));
        write_file(&svid_path, pem_certs(&svid.certificates).as_bytes(), 0o644)?;
        env.print(&format!(
            "Writing key #{i} to file {}.\n",
            key_path.display()
        ));
        let key_pem =
            zeroize::Zeroizing::new(spire_core::pem::encode("PRIVATE KEY", &svid.private_key));
        write_file(&key_path, key_pem.as_bytes(), 0o600)?;
        env.print(&format!(
            "Writing bundle #{i} to file {}.\n",
            bundle_path.display()
        ));
        write_file(&bundle_path, pem_certs(&svid.bundle).as_bytes(), 0o644)?;
        for (j, (td, bundle)) in svid.federated.iter().enumerate() {
            let path = dir.join(format!("federated_bundle.{i}.{j}.pem"));
            env.print(&format!(
                "Writing federated bundle #{j} for trust domain {td} to file {}.\n",
                path.display()
            ));
            write_file(&path, pem_certs(bundle).as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

fn pem_certs(ders: &[Vec<u8>]) -> String {
    spire_core::pem::encode_certificates(ders.iter().map(Vec::as_slice))
}

/// Creates or truncates `path` with `mode` (the mode is also applied to an existing file).
fn write_file(path: &Path, data: &[u8], mode: u32) -> CliResult {
    spire_common::fs::write_with_mode(path, data, mode).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })
}

async fn fetch_jwt(args: JwtArgs, env: &mut Env<'_>) -> CliResult {
    let audience: Vec<String> = args
        .audience
        .iter()
        .flat_map(|a| a.split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if audience.is_empty() {
        return Err(CliError::invalid("audience must be specified"));
    }
    let mut client = client::workload_client(&args.common.socket.path()?).await?;
    let timeout = args.common.timeout;
    let bundles = client::with_timeout(timeout, async {
        let mut stream = client
            .fetch_jwt_bundles(wl::JwtBundlesRequest {})
            .await?
            .into_inner();
        stream.message().await?.ok_or_else(|| {
            tonic::Status::unavailable("the agent closed the stream without an answer")
        })
    })
    .await
    .map_err(CliError::rpc("failed to receive JWT bundles: "))?;
    let svids = client::with_timeout(
        timeout,
        client.fetch_jwtsvid(wl::JwtsvidRequest {
            audience,
            spiffe_id: args.spiffe_id.clone(),
        }),
    )
    .await
    .map_err(CliError::rpc(""))?
    .into_inner();
    // `-format` is upstream's old name of `-output` for this command.
    let output = args.format.unwrap_or(args.common.output.output);
    if output == OutputFormat::Json {
        env.print(&format!(
            "[{},{}]\n",
            jwt_svids_json(&svids),
            json_obj(&[("bundles", bytes_map_json(&bundles.bundles))])
        ));
        return Ok(());
    }
    env.print(&format_jwt(&svids, &bundles.bundles));
    Ok(())
}

/// Upstream's pretty `fetch jwt`: each token (and hint), then each JWKS bundle.
fn format_jwt(svids: &wl::JwtsvidResponse, bundles: &HashMap<String, Vec<u8>>) -> String {
    let mut out = String::new();
    for svid in &svids.svids {
        out.push_str(&format!("token({}):\n\t{}\n", svid.spiffe_id, svid.svid));
        if !svid.hint.is_empty() {
            out.push_str(&format!("hint({}):\n\t{}\n", svid.spiffe_id, svid.hint));
        }
    }
    let sorted: BTreeMap<_, _> = bundles.iter().collect();
    for (td, jwks) in sorted {
        out.push_str(&format!(
            "bundle({td}):\n\t{}\n",
            String::from_utf8_lossy(jwks)
        ));
    }
    out
}

async fn validate_jwt(args: ValidateJwtArgs, env: &mut Env<'_>) -> CliResult {
    if args.audience.is_empty() {
        return Err(CliError::invalid("audience must be specified"));
    }
    if args.svid.is_empty() {
        return Err(CliError::invalid("svid must be specified"));
    }
    let mut client = client::workload_client(&args.common.socket.path()?).await?;
    let result = client::with_timeout(
        args.common.timeout,
        client.validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience: args.audience.clone(),
            svid: args.svid.clone(),
        }),
    )
    .await;
    let resp = match result {
        Ok(resp) => resp.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            return Err(CliError::invalid(format!(
                "SVID is not valid: {}",
                status.message()
            )));
        }
        Err(status) => {
            return Err(CliError::rpc("unable to validate JWT SVID: ")(status));
        }
    };
    if args.common.output.output == OutputFormat::Json {
        env.print(&validate_response_json(&resp)?);
        env.print("\n");
        return Ok(());
    }
    let claims = match &resp.claims {
        Some(claims) => serde_json::to_string(claims)
            .map_err(|e| CliError::invalid(format!("unable to unmarshal claims: {e}")))?,
        None => "{}".to_owned(),
    };
    env.print(&format!(
        "SVID is valid.\nSPIFFE ID : {}\nClaims    : {claims}\n",
        resp.spiffe_id
    ));
    Ok(())
}

/// `api watch`: prints every X509-SVID update until the stream ends or Ctrl-C.
async fn watch(args: WatchArgs, env: &mut Env<'_>) -> CliResult {
    let mut client = client::workload_client(&args.socket.path()?).await?;
    let mut stream = client
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    let mut last = Instant::now();
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next.map_err(CliError::rpc(""))? {
            None => {
                return Err(CliError::invalid(
                    "the agent closed the Workload API stream",
                ));
            }
            Some(update) => {
                match parse_x509_response(&update) {
                    Ok(svids) => env.print(&format_x509_response(&svids, last.elapsed())),
                    Err(e) => env.eprint(&format!("{e}\n")),
                }
                last = Instant::now();
            }
        }
    }
}

/// The Workload API messages in upstream's `-output json` form (protobuf JSON with proto
/// field names, unpopulated fields included, bytes in base64), written by hand because the
/// generated Workload API types carry no serde support.
fn json_str(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn json_bytes(bytes: &[u8]) -> String {
    use base64::Engine as _;
    json_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn json_obj(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

fn bytes_map_json(map: &HashMap<String, Vec<u8>>) -> String {
    let sorted: BTreeMap<_, _> = map.iter().collect();
    let body: Vec<String> = sorted
        .into_iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_bytes(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn x509_response_json(resp: &wl::X509svidResponse) -> String {
    let svids = resp.svids.iter().map(|s| {
        json_obj(&[
            ("spiffe_id", json_str(&s.spiffe_id)),
            ("x509_svid", json_bytes(&s.x509_svid)),
            ("x509_svid_key", json_bytes(&s.x509_svid_key)),
            ("bundle", json_bytes(&s.bundle)),
            ("hint", json_str(&s.hint)),
        ])
    });
    json_obj(&[
        ("svids", json_list(svids)),
        ("crl", json_list(resp.crl.iter().map(|c| json_bytes(c)))),
        ("federated_bundles", bytes_map_json(&resp.federated_bundles)),
    ])
}

fn jwt_svids_json(resp: &wl::JwtsvidResponse) -> String {
    let svids = resp.svids.iter().map(|s| {
        json_obj(&[
            ("spiffe_id", json_str(&s.spiffe_id)),
            ("svid", json_str(&s.svid)),
            ("hint", json_str(&s.hint)),
        ])
    });
    json_obj(&[("svids", json_list(svids))])
}

fn validate_response_json(resp: &wl::ValidateJwtsvidResponse) -> Result<String, CliError> {
    let claims = match &resp.claims {
        Some(claims) => serde_json::to_string(claims)
            .map_err(|e| CliError::invalid(format!("unable to marshal claims: {e}")))?,
        None => "null".to_owned(),
    };
    Ok(json_obj(&[
        ("spiffe_id", json_str(&resp.spiffe_id)),
        ("claims", claims),
    ]))
}

/// Where `-write` puts the files of SVID `index` (for callers and tests).
#[cfg(test)]
fn written_paths(dir: &Path, index: usize) -> [PathBuf; 3] {
    [
        dir.join(format!("svid.{index}.pem")),
        dir.join(format!("svid.{index}.key")),
        dir.join(format!("bundle.{index}.pem")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testutil::run;

    #[test]
    fn audience_is_required() {
        let (code, out, err) = run(&["api", "fetch", "jwt", "-socketPath", "/nonexistent.sock"]);
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(err, "Error: audience must be specified\n");
        let (code, _, err) = run(&["api", "validate", "jwt", "-audience", "a"]);
        assert_eq!((code, err.as_str()), (1, "Error: svid must be specified\n"));
    }

    #[test]
    fn jwt_layout_lists_tokens_then_bundles() {
        let svids = wl::JwtsvidResponse {
            svids: vec![wl::Jwtsvid {
                spiffe_id: "spiffe://example.org/w".into(),
                svid: "a.b.c".into(),
                hint: String::new(),
            }],
        };
        let bundles =
            HashMap::from([("spiffe://example.org".to_owned(), b"{\"keys\":[]}".to_vec())]);
        assert_eq!(
            format_jwt(&svids, &bundles),
            "token(spiffe://example.org/w):\n\ta.b.c\nbundle(spiffe://example.org):\n\t{\"keys\":[]}\n"
        );
    }

    #[test]
    fn json_uses_proto_names_and_base64() {
        let resp = wl::X509svidResponse {
            svids: vec![wl::X509svid {
                spiffe_id: "spiffe://example.org/w".into(),
                x509_svid: vec![1, 2],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            x509_response_json(&resp),
            r#"{"svids":[{"spiffe_id":"spiffe://example.org/w","x509_svid":"AQI=","x509_svid_key":"","bundle":"","hint":""}],"crl":[],"federated_bundles":{}}"#
        );
    }

    #[test]
    fn empty_response_is_refused() {
        let err = parse_x509_response(&wl::X509svidResponse::default()).unwrap_err();
        assert_eq!(err.to_string(), "workload response contains no svids");
        assert_eq!(
            written_paths(Path::new("/out"), 0)[1],
            PathBuf::from("/out/svid.0.key")
        );
    }
}
