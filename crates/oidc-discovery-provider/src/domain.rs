//! Which Host names the discovery document is served for: upstream's `DomainAllowlist`. A
//! name must already be in punycode (lower case ASCII) form and valid under IDNA's lookup
//! rules, and be one of `domains`; the error texts are upstream's, since they are the body
//! of the 400 answer.

/// The allowed domains, each checked at start.
#[derive(Debug, Clone)]
pub struct DomainPolicy {
    allowed: Vec<String>,
}

impl DomainPolicy {
    /// The policy allowing exactly `domains`; an invalid one is an error naming it.
    pub fn allowlist(domains: &[String]) -> Result<Self, String> {
        for domain in domains {
            domain_key(domain)?;
        }
        Ok(Self {
            allowed: domains.to_vec(),
        })
    }

    /// Whether `domain` (a Host without its port) may be served.
    pub fn check(&self, domain: &str) -> Result<(), String> {
        let key = domain_key(domain)?;
        if self.allowed.contains(&key) {
            Ok(())
        } else {
            Err(format!("domain {domain:?} is not allowed"))
        }
    }
}

/// The domain of a Host header value in `host` or `host:port` form (Go's
/// `net.SplitHostPort`, falling back to the whole value).
pub fn host_domain(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((inside, after)) = rest.split_once(']')
            && (after.is_empty() || after.starts_with(':'))
            && !after.is_empty()
        {
            return inside;
        }
        return host;
    }
    match host.rsplit_once(':') {
        Some((name, _)) if !name.contains(':') => name,
        _ => host,
    }
}

/// Go's `idna.Lookup.ToASCII(domain)` must succeed and change nothing.
fn domain_key(domain: &str) -> Result<String, String> {
    let invalid =
        |reason: String| format!("domain {domain:?} is not a valid domain name: {reason}");
    if domain.is_ascii() {
        // IDNA's STD3 rules allow only letters, digits, hyphens and dots in ASCII labels.
        if let Some(c) = domain
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(invalid(format!(
                "idna: disallowed rune U+{:04X}",
                u32::from(c)
            )));
        }
        if domain.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "domain {domain:?} must already be punycode encoded"
            ));
        }
        for label in domain.split('.') {
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid(format!("idna: invalid label {label:?}")));
            }
            if label.starts_with("xn--") && idna::domain_to_unicode(label).1.is_err() {
                return Err(invalid(format!("idna: invalid label {label:?}")));
            }
        }
        return Ok(domain.to_owned());
    }
    match idna::domain_to_ascii_strict(domain) {
        Ok(_) => Err(format!(
            "domain {domain:?} must already be punycode encoded"
        )),
        Err(_) => Err(invalid("idna: invalid label".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn answers_are_upstreams() {
        let policy = DomainPolicy::allowlist(&["oidc.example.org".to_owned()]).unwrap();
        assert!(policy.check("oidc.example.org").is_ok());
        assert_eq!(
            policy.check("evil.example.org").unwrap_err(),
            "domain \"evil.example.org\" is not allowed"
        );
        assert_eq!(
            policy.check("OIDC.example.org").unwrap_err(),
            "domain \"OIDC.example.org\" must already be punycode encoded"
        );
        assert_eq!(
            policy.check("a_b").unwrap_err(),
            "domain \"a_b\" is not a valid domain name: idna: disallowed rune U+005F"
        );
        assert_eq!(
            policy.check("::1").unwrap_err(),
            "domain \"::1\" is not a valid domain name: idna: disallowed rune U+003A"
        );
        assert_eq!(
            policy.check("bücher.example").unwrap_err(),
            "domain \"bücher.example\" must already be punycode encoded"
        );
        assert_eq!(policy.check("").unwrap_err(), "domain \"\" is not allowed");
        assert!(DomainPolicy::allowlist(&["Bad_Domain".to_owned()]).is_err());
    }

    #[test]
    fn the_port_is_not_part_of_the_domain() {
        assert_eq!(host_domain("oidc.example.org:8443"), "oidc.example.org");
        assert_eq!(host_domain("oidc.example.org"), "oidc.example.org");
        assert_eq!(host_domain("[::1]:80"), "::1");
        assert_eq!(host_domain("::1"), "::1");
        assert_eq!(host_domain("127.0.0.1:80"), "127.0.0.1");
    }
}
