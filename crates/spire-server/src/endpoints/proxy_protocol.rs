//! PROXY protocol v1 and v2 on the TCP listener (`proxy_protocol_trusted_cidrs`), so agents
//! behind a load balancer appear with their own address in logs, audit entries and per-IP
//! rate limits.
//!
//! The same policy as upstream (go-proxyproto `PolicyFromRanges(cidrs, USE, REJECT)`):
//! - a connection from a trusted source may start with a v1 or v2 header; its source
//!   address then replaces the peer address (a `LOCAL` command, or v1 `UNKNOWN`, keeps the
//!   peer's own). Without a header it is served as is.
//! - a connection from any other source that starts with a header is closed; without one
//!   it is served as is.
//!
//! The header is parsed with the `ppp` crate from bytes peeked off the socket, then exactly
//! its bytes are consumed, so the TLS handshake reads the stream from its first byte.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ppp::HeaderResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// v1 headers start with this.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// v2 headers start with this.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes; a v2 header 16 bytes plus its 16-bit length.
const MAX_HEADER: usize = 16 + u16::MAX as usize;
/// How long to wait between peeks while a header is still incomplete.
const PEEK_RETRY: Duration = Duration::from_millis(5);

/// One `proxy_protocol_trusted_cidrs` entry: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a `proxy_protocol_trusted_cidrs` entry is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address: {0}")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CidrError(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(invalid)?;
        let network: IpAddr = addr.parse().map_err(|_| invalid())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(invalid());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4 peer seen as IPv4-mapped IPv6 (a dual-stack
    /// listener) matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let mut bits = usize::from(prefix);
    for (n, i) in net.iter().zip(ip) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask = u8::MAX << (8 - take);
        if n & mask != i & mask {
            return false;
        }
        bits -= take;
    }
    true
}

/// What the start of a connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// No PROXY header: the stream starts with the client's own bytes.
    None,
    /// A header naming the original client.
    Proxied(SocketAddr),
    /// A header without a usable source (`LOCAL`, `UNKNOWN`, a unix address): the peer
    /// address stands.
    Local,
}

/// Why a connection is closed before TLS.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// A header from a source outside `proxy_protocol_trusted_cidrs`.
    #[error("PROXY header from untrusted source {0}")]
    Untrusted(IpAddr),
    /// A header that does not parse.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// The socket failed or closed, or the header did not arrive in time.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the optional PROXY header at the start of `tcp` (from `peer`) within `timeout`
/// and consumes it, applying the trusted-source policy above.
pub async fn read_preamble(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[Cidr],
    timeout: Duration,
) -> Result<Preamble, ProxyHeaderError> {
    let (preamble, len) = tokio::time::timeout(timeout, peek_header(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))??;
    if len == 0 {
        return Ok(Preamble::None);
    }
    if !trusted.iter().any(|cidr| cidr.contains(peer.ip())) {
        return Err(ProxyHeaderError::Untrusted(peer.ip()));
    }
    let mut header = vec![0; len];
    tcp.read_exact(&mut header).await?;
    Ok(preamble)
}

/// Peeks until the stream either is known not to start with a header, or holds a whole
/// one: gives what it says and its length (0 without a header).
async fn peek_header(tcp: &TcpStream) -> Result<(Preamble, usize), ProxyHeaderError> {
    let mut buf = vec![0u8; 512];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let data = &buf[..n];
        let v1 = starts_like(data, V1_SIGNATURE);
        let v2 = starts_like(data, V2_SIGNATURE);
        if !v1 && !v2 {
            return Ok((Preamble::None, 0));
        }
        if let Some(parsed) = parse(data)? {
            return Ok(parsed);
        }
        if n == buf.len() {
            if buf.len() >= MAX_HEADER {
                return Err(ProxyHeaderError::Invalid("header too long".to_owned()));
            }
            buf.resize((buf.len() * 4).min(MAX_HEADER), 0);
            continue;
        }
        tokio::time::sleep(PEEK_RETRY).await;
    }
}

/// Whether `data` and `signature` agree on their common length.
fn starts_like(data: &[u8], signature: &[u8]) -> bool {
    let n = data.len().min(signature.len());
    data[..n] == signature[..n]
}

/// A whole header at the start of `data` (what it says, its length), `None` while
/// incomplete.
fn parse(data: &[u8]) -> Result<Option<(Preamble, usize)>, ProxyHeaderError> {
    let result = HeaderResult::parse(data);
    if !ppp::PartialResult::is_complete(&result) {
        return Ok(None);
    }
    match result {
        HeaderResult::V1(Ok(header)) => {
            let preamble = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Preamble::Proxied(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Preamble::Proxied(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => Preamble::Local,
            };
            Ok(Some((preamble, header.header.len())))
        }
        HeaderResult::V2(Ok(header)) => {
            let preamble = match (header.command, header.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Preamble::Proxied(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Preamble::Proxied(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => Preamble::Local,
            };
            Ok(Some((preamble, header.len())))
        }
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_as_go_parses_them() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/",
            "::/129",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn membership_follows_the_prefix() {
        let net = cidr("192.168.4.0/22");
        assert!(net.contains("192.168.7.255".parse().unwrap()));
        assert!(!net.contains(IpAddr::from([192, 168, 8, 0])));
        assert!(net.contains("::ffff:192.168.5.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains(IpAddr::from([8, 8, 8, 8])));
        assert!(!cidr("::/0").contains(IpAddr::from([8, 8, 8, 8])));
    }

    #[test]
    fn headers_are_recognised_and_measured() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 8081\r\n\x16\x03\x01";
        let (preamble, len) = parse(v1).unwrap().unwrap();
        assert_eq!(
            preamble,
            Preamble::Proxied("203.0.113.7:40000".parse().unwrap())
        );
        assert_eq!(len, v1.len() - 3);
        assert!(parse(b"PROXY TCP4 203.0.113.7").ok().flatten().is_none());
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown).ok().flatten(),
            Some((Preamble::Local, unknown.len()))
        );
        assert!(starts_like(b"\r\n\r\n", V2_SIGNATURE));
        assert!(!starts_like(b"\x16\x03\x01", V1_SIGNATURE));
        assert!(!starts_like(b"\x16\x03\x01", V2_SIGNATURE));
    }
}
