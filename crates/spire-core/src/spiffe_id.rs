//! SPIFFE IDs and trust domains, parsed and printed exactly as the SPIFFE ID standard says.
//!
//! A SPIFFE ID is `spiffe://<trust domain>/<path>`. The trust domain holds only lowercase
//! letters, digits, `.`, `-` and `_`; each path segment holds only letters, digits, `.`, `-`
//! and `_`, is not empty and is not `.` or `..`. There is no port, user info, query, fragment
//! or percent-encoding: the character rules exclude all of them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME_PREFIX: &str = "spiffe://";
/// The longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// The longest SPIFFE ID the standard allows, in bytes (URI SAN limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input was the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not start with the lowercase scheme `spiffe://`.
    #[error("scheme is missing or invalid")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar {
        /// The offending character.
        found: char,
        /// Its byte offset inside the trust domain name.
        position: usize,
    },
    /// The trust domain name is longer than 255 bytes.
    #[error("trust domain is {len} bytes long; the maximum is 255")]
    TrustDomainTooLong {
        /// The length found.
        len: usize,
    },
    /// Two consecutive slashes, or a slash right after the trust domain's.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path given on its own does not start with `/`.
    #[error("path must have a leading slash")]
    NoLeadingSlash,
    /// A character outside `[a-zA-Z0-9._-]` in a path segment.
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathChar {
        /// The offending character.
        found: char,
        /// Its byte offset inside the path.
        position: usize,
    },
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {len} bytes long; the maximum is 2048")]
    TooLong {
        /// The length found.
        len: usize,
    },
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn validate_trust_domain_name(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if let Some((position, found)) = name.char_indices().find(|(_, c)| !is_trust_domain_char(*c)) {
        return Err(SpiffeIdError::BadTrustDomainChar { found, position });
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: name.len() });
    }
    Ok(())
}

/// Checks a SPIFFE ID path: empty, or `/segment(/segment)*` with legal segments.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::NoLeadingSlash);
    };
    let mut offset = 1;
    let segment_count = rest.split('/').count();
    for (index, segment) in rest.split('/').enumerate() {
        if segment.is_empty() {
            return Err(if index + 1 == segment_count {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if let Some((i, found)) = segment.char_indices().find(|(_, c)| !is_path_char(*c)) {
            return Err(SpiffeIdError::BadPathChar {
                found,
                position: offset + i,
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        offset += segment.len() + 1;
    }
    Ok(())
}

/// A trust domain: the authority part of a SPIFFE ID, e.g. `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a trust domain from its name (`example.org`) or from a SPIFFE ID
    /// (`spiffe://example.org/path`), as upstream's configuration accepts both.
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        if input.contains(":/") {
            return SpiffeId::parse(input).map(|id| id.trust_domain());
        }
        validate_trust_domain_name(input)?;
        Ok(Self {
            name: input.to_owned(),
        })
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain as a SPIFFE ID with an empty path, e.g. `spiffe://example.org`,
    /// which is how bundles and federation name it.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.name)
    }

    /// Builds an ID in this trust domain from a path such as `/ns/prod/sa/web`.
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::from_path(self, path)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/web`.
///
/// The value is kept in its canonical string form, so printing a parsed ID gives back
/// exactly the input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (equals `id.len()` for an empty path).
    path_start: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, with an error that says what is wrong.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let Some(rest) = input.strip_prefix(SCHEME_PREFIX) else {
            return Err(SpiffeIdError::WrongScheme);
        };
        let td_end = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_end);
        validate_trust_domain_name(td)?;
        validate_path(path)?;
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        Ok(Self {
            id: input.to_owned(),
            path_start: SCHEME_PREFIX.len() + td_end,
        })
    }

    /// Builds an ID from a trust domain and a path (`""` or starting with `/`).
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        let id = format!("{SCHEME_PREFIX}{}{path}", trust_domain.name());
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: id.len() });
        }
        Ok(Self {
            path_start: id.len() - path.len(),
            id,
        })
    }

    /// Builds an ID from path segments, each checked on its own (`["spire", "agent", "x"]`).
    pub fn from_segments(
        trust_domain: &TrustDomain,
        segments: &[&str],
    ) -> Result<Self, SpiffeIdError> {
        let mut path = String::new();
        for segment in segments {
            if segment.contains('/') {
                let position = segment.find('/').unwrap_or_default();
                return Err(SpiffeIdError::BadPathChar {
                    found: '/',
                    position: path.len() + 1 + position,
                });
            }
            path.push('/');
            path.push_str(segment);
        }
        Self::from_path(trust_domain, &path)
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain {
            name: self.trust_domain_name().to_owned(),
        }
    }

    /// The trust domain's name without allocating.
    pub fn trust_domain_name(&self) -> &str {
        self.id
            .get(SCHEME_PREFIX.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// Whether the ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.name()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
