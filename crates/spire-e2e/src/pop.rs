//! Node credentials for the `x509pop` and `sshpop` tests, made by the real tools operators
//! use: X.509 CAs and node certificates by the `openssl` CLI, OpenSSH host certificates by
//! `ssh-keygen -s`. A missing tool is a loud failure naming the Debian package.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `program args` in `dir`, panicking with its output when it fails or is missing.
fn run(dir: &Path, program: &str, package: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it (Debian: apt-get install {package})")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(dir, "openssl", "openssl", args);
}

fn ssh_keygen(dir: &Path, args: &[&str]) {
    run(dir, "ssh-keygen", "openssh-client", args);
}

/// The key algorithm of a generated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// RSA 2048.
    Rsa,
}

fn genkey(dir: &Path, name: &str, alg: KeyAlg) -> PathBuf {
    let path = format!("{name}.key.pem");
    match alg {
        KeyAlg::P256 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &path,
            ],
        ),
        KeyAlg::P384 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                &path,
            ],
        ),
        KeyAlg::Rsa => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &path,
            ],
        ),
    }
    dir.join(path)
}

/// A CA made with `openssl`: its certificate and key files.
#[derive(Debug, Clone)]
pub struct OpensslCa {
    /// The folder everything is written to.
    pub dir: PathBuf,
    /// The CA's name (file prefix).
    pub name: String,
    /// `<name>.crt.pem`.
    pub cert: PathBuf,
    /// `<name>.key.pem`.
    pub key: PathBuf,
}

/// A node certificate and key.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// `<name>.crt.pem`.
    pub cert: PathBuf,
    /// `<name>.key.pem`.
    pub key: PathBuf,
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n";

impl OpensslCa {
    /// A self-signed root CA `CN=<name>` in `dir`.
    pub fn root(dir: &Path, name: &str) -> Self {
        let key = genkey(dir, name, KeyAlg::P256);
        let cert = format!("{name}.crt.pem");
        std::fs::write(dir.join(format!("{name}.ext")), CA_EXT).unwrap_or_else(|e| panic!("{e}"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{name}.key.pem"),
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "30",
                "-out",
                &cert,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            cert: dir.join(cert),
            key,
        }
    }

    /// An intermediate CA `CN=<name>` signed by this CA.
    pub fn intermediate(&self, name: &str) -> Self {
        let dir = &self.dir;
        let key = genkey(dir, name, KeyAlg::P256);
        std::fs::write(dir.join(format!("{name}.ext")), CA_EXT).unwrap_or_else(|e| panic!("{e}"));
        self.sign(name, &format!("/CN={name}"), &format!("{name}.ext"), None);
        Self {
            dir: dir.clone(),
            name: name.to_owned(),
            cert: dir.join(format!("{name}.crt.pem")),
            key,
        }
    }

    /// Signs `<name>.key.pem`'s CSR with `ext_file`; `dates` (`YYYYMMDDHHMMSSZ` start and end)
    /// uses `openssl ca` to set a validity in the past.
    fn sign(&self, name: &str, subject: &str, ext_file: &str, dates: Option<(&str, &str)>) {
        let dir = &self.dir;
        let csr = format!("{name}.csr");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key.pem"),
                "-subj",
                subject,
                "-out",
                &csr,
            ],
        );
        let out = format!("{name}.crt.pem");
        let ca_cert = self.cert.display().to_string();
        let ca_key = self.key.display().to_string();
        match dates {
            None => openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_cert,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-days",
                    "10",
                    "-extfile",
                    ext_file,
                    "-out",
                    &out,
                ],
            ),
            Some((start, end)) => {
                let db = format!("{name}.index.txt");
                std::fs::write(dir.join(&db), "").unwrap_or_else(|e| panic!("{e}"));
                let cnf = format!(
                    "[ca]\ndefault_ca=node_ca\n[node_ca]\ndatabase={db}\nnew_certs_dir=.\nserial={name}.serial\n\
                     default_md=sha256\npolicy=policy\nunique_subject=no\n[policy]\ncommonName=supplied\n"
                );
                std::fs::write(dir.join(format!("{name}.serial")), "1000\n")
                    .unwrap_or_else(|e| panic!("{e}"));
                std::fs::write(dir.join(format!("{name}.ca.cnf")), cnf)
                    .unwrap_or_else(|e| panic!("{e}"));
                openssl(
                    dir,
                    &[
                        "ca",
                        "-batch",
                        "-config",
                        &format!("{name}.ca.cnf"),
                        "-in",
                        &csr,
                        "-cert",
                        &ca_cert,
                        "-keyfile",
                        &ca_key,
                        "-startdate",
                        start,
                        "-enddate",
                        end,
                        "-extfile",
                        ext_file,
                        "-notext",
                        "-out",
                        &out,
                    ],
                );
            }
        }
    }

    /// A node certificate `CN=<name>` for x509pop (digitalSignature), with `uris` as URI SANs.
    pub fn node(&self, name: &str, alg: KeyAlg, uris: &[&str]) -> NodeCert {
        self.node_with_dates(name, alg, uris, None)
    }

    /// Like [`node`](Self::node), valid only between the `openssl ca` dates given.
    pub fn node_with_dates(
        &self,
        name: &str,
        alg: KeyAlg,
        uris: &[&str],
        dates: Option<(&str, &str)>,
    ) -> NodeCert {
        let dir = &self.dir;
        let key = genkey(dir, name, alg);
        let mut ext = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        );
        if !uris.is_empty() {
            let sans: Vec<String> = uris.iter().map(|u| format!("URI:{u}")).collect();
            ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        let ext_file = format!("{name}.ext");
        std::fs::write(dir.join(&ext_file), ext).unwrap_or_else(|e| panic!("{e}"));
        self.sign(name, &format!("/CN={name}"), &ext_file, dates);
        NodeCert {
            cert: dir.join(format!("{name}.crt.pem")),
            key,
        }
    }
}

/// The SHA-1 fingerprint `openssl x509 -fingerprint -sha1` prints, as lower-case hex without
/// colons: upstream's x509pop agent ID segment and `ca:fingerprint` selector.
pub fn openssl_sha1_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install openssl"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase()
}

/// The serial number `openssl x509 -serial` prints, lower-case.
pub fn openssl_serial(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install openssl"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// An SSH CA key made with `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct SshCa {
    /// The folder everything is written to.
    pub dir: PathBuf,
    /// The CA private key file.
    pub key: PathBuf,
    /// The CA public key line (`authorized_keys` form), as `cert_authorities` takes it.
    pub public_line: String,
}

/// A host key and its certificate.
#[derive(Debug, Clone)]
pub struct SshHost {
    /// The host private key (OpenSSH format).
    pub key: PathBuf,
    /// `<key>-cert.pub`.
    pub cert: PathBuf,
}

impl SshCa {
    /// An ed25519 CA key named `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        ssh_keygen(
            dir,
            &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", name],
        );
        let public_line = std::fs::read_to_string(dir.join(format!("{name}.pub")))
            .unwrap_or_else(|e| panic!("read CA public key: {e}"))
            .trim()
            .to_owned();
        Self {
            dir: dir.to_path_buf(),
            key: dir.join(name),
            public_line,
        }
    }

    /// A host key (`key_type`: `ed25519`, `rsa`, `ecdsa`) named `name` with a host
    /// certificate for `principals`, valid for `validity` (`ssh-keygen -V`).
    pub fn host(&self, name: &str, key_type: &str, principals: &str, validity: &str) -> SshHost {
        let dir = &self.dir;
        let mut args = vec!["-q", "-t", key_type, "-N", "", "-C", name, "-f", name];
        if key_type == "rsa" {
            args.extend(["-b", "2048"]);
        }
        ssh_keygen(dir, &args);
        let ca = self.key.display().to_string();
        ssh_keygen(
            dir,
            &[
                "-q",
                "-s",
                &ca,
                "-I",
                name,
                "-h",
                "-n",
                principals,
                "-V",
                validity,
                &format!("{name}.pub"),
            ],
        );
        SshHost {
            key: dir.join(name),
            cert: dir.join(format!("{name}-cert.pub")),
        }
    }
}
