//! A walk over an OpenSSH certificate's wire form (PROTOCOL.certkeys) for what `ssh-key`
//! 0.6 cannot give: the exact signed bytes, and validity times past `i64::MAX` (a
//! certificate "valid forever", `ssh-keygen -s`'s default, ends at `u64::MAX`, which
//! `ssh-key` refuses to parse).

/// The parts of a certificate read from its wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawCert<'a> {
    /// Everything the CA signed.
    pub(crate) signed: &'a [u8],
    /// `valid after`, seconds since the epoch.
    pub(crate) valid_after: u64,
    /// `valid before`; `u64::MAX` is forever.
    pub(crate) valid_before: u64,
    /// The CA's public key blob.
    pub(crate) signature_key: &'a [u8],
    /// The CA's signature: algorithm name and blob.
    pub(crate) signature_format: String,
    /// The signature blob.
    pub(crate) signature_blob: &'a [u8],
    /// The certificate with both times capped at `i64::MAX`, for `ssh-key`'s parser.
    pub(crate) capped: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| "certificate is truncated".to_owned())?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.u32()?).map_err(|_| "length overflow".to_owned())?;
        self.take(len)
    }
}

/// How many public key fields follow the nonce for a certificate type.
fn key_fields(cert_type: &str) -> Result<usize, String> {
    Ok(match cert_type {
        "ssh-rsa-cert-v01@openssh.com" => 2,
        "ssh-dss-cert-v01@openssh.com" => 4,
        "ecdsa-sha2-nistp256-cert-v01@openssh.com"
        | "ecdsa-sha2-nistp384-cert-v01@openssh.com"
        | "ecdsa-sha2-nistp521-cert-v01@openssh.com" => 2,
        "ssh-ed25519-cert-v01@openssh.com" => 1,
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com" => 3,
        "sk-ssh-ed25519-cert-v01@openssh.com" => 2,
        other => return Err(format!("ssh: unknown certificate type {other:?}")),
    })
}

/// Walks `bytes`, a certificate in wire form.
pub(crate) fn parse(bytes: &[u8]) -> Result<RawCert<'_>, String> {
    let mut r = Reader { bytes, pos: 0 };
    let cert_type = String::from_utf8_lossy(r.string()?).into_owned();
    let fields = key_fields(&cert_type)?;
    r.string()?; // nonce
    for _ in 0..fields {
        r.string()?;
    }
    r.u64()?; // serial
    r.u32()?; // type
    r.string()?; // key id
    r.string()?; // principals
    let times_at = r.pos;
    let valid_after = r.u64()?;
    let valid_before = r.u64()?;
    r.string()?; // critical options
    r.string()?; // extensions
    r.string()?; // reserved
    let signature_key = r.string()?;
    let signed = &bytes[..r.pos];
    let signature = r.string()?;
    if r.pos != bytes.len() {
        return Err("trailing data after certificate".into());
    }
    let mut s = Reader {
        bytes: signature,
        pos: 0,
    };
    let signature_format = String::from_utf8_lossy(s.string()?).into_owned();
    let signature_blob = s.string()?;
    let cap = |t: u64| t.min(i64::MAX as u64).to_be_bytes();
    let mut capped = bytes.to_vec();
    capped[times_at..times_at + 8].copy_from_slice(&cap(valid_after));
    capped[times_at + 8..times_at + 16].copy_from_slice(&cap(valid_before));
    Ok(RawCert {
        signed,
        valid_after,
        valid_before,
        signature_key,
        signature_format,
        signature_blob,
        capped,
    })
}
