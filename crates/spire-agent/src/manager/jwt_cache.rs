//! JWT-SVIDs minted for workloads, kept per (SPIFFE ID, sorted audience) until half their
//! lifetime has passed, as upstream's agent does.

use std::collections::HashMap;

/// A cached token with the times that decide when it must be replaced.
#[derive(Debug, Clone)]
pub(super) struct CachedJwt {
    pub(super) token: String,
    /// `iat`, Unix seconds.
    pub(super) issued_at: i64,
    /// `exp`, Unix seconds.
    pub(super) expires_at: i64,
}

impl CachedJwt {
    /// Whether a workload may still be handed this token without minting a new one.
    pub(super) fn fresh(&self, now: i64) -> bool {
        let lifetime = self.expires_at.saturating_sub(self.issued_at);
        now < self.issued_at.saturating_add(lifetime / 2) && now < self.expires_at
    }

    /// Whether it is still valid at all (a fallback when the server cannot mint).
    pub(super) fn unexpired(&self, now: i64) -> bool {
        now < self.expires_at
    }
}

/// The cache; the manager keeps it behind a mutex.
#[derive(Debug)]
pub(super) struct JwtCache {
    tokens: HashMap<(String, Vec<String>), CachedJwt>,
    /// Bound on cached tokens (`jwt_svid_cache_max_size`); past it, expired ones go first,
    /// then the oldest.
    max_size: usize,
}

fn key(spiffe_id: &str, audience: &[String]) -> (String, Vec<String>) {
    let mut audience = audience.to_vec();
    audience.sort();
    audience.dedup();
    (spiffe_id.to_owned(), audience)
}

impl JwtCache {
    /// An empty cache holding at most `max_size` tokens (at least one).
    pub(super) fn new(max_size: usize) -> Self {
        Self {
            tokens: HashMap::new(),
            max_size: max_size.max(1),
        }
    }

    /// Drops every token signed by one of the JWT keys `key_ids` (tainted at the server), so
    /// the next request mints a new one, as upstream's agent does; returns how many.
    pub(super) fn remove_signed_by(&mut self, key_ids: &[String]) -> usize {
        if key_ids.is_empty() {
            return 0;
        }
        let before = self.tokens.len();
        self.tokens.retain(|_, cached| {
            spire_core::jwt::parse_jwt_svid_insecure(&cached.token)
                .map_or(true, |svid| !key_ids.contains(&svid.key_id))
        });
        before - self.tokens.len()
    }

    /// The cached token for this SPIFFE ID and audience (in any order), if any.
    pub(super) fn get(&self, spiffe_id: &str, audience: &[String]) -> Option<&CachedJwt> {
        self.tokens.get(&key(spiffe_id, audience))
    }

    /// Stores a token, first dropping expired ones (and the oldest when still over the bound).
    pub(super) fn insert(
        &mut self,
        spiffe_id: &str,
        audience: &[String],
        jwt: CachedJwt,
        now: i64,
    ) {
        if self.tokens.len() >= self.max_size {
            self.tokens.retain(|_, cached| cached.unexpired(now));
        }
        while self.tokens.len() >= self.max_size {
            let oldest = self
                .tokens
                .iter()
                .min_by_key(|(_, cached)| cached.issued_at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.tokens.remove(&k);
                }
                None => break,
            }
        }
        self.tokens.insert(key(spiffe_id, audience), jwt);
    }

    /// Number of cached tokens.
    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_order_does_not_matter_and_half_life_ends_freshness() {
        let mut cache = JwtCache::new(10);
        let jwt = CachedJwt {
            token: "t".to_owned(),
            issued_at: 100,
            expires_at: 200,
        };
        cache.insert("spiffe://td/w", &["b".to_owned(), "a".to_owned()], jwt, 100);
        let got = cache
            .get("spiffe://td/w", &["a".to_owned(), "b".to_owned()])
            .unwrap();
        assert!(got.fresh(149));
        assert!(!got.fresh(150));
        assert!(got.unexpired(199));
        assert!(cache.get("spiffe://td/w", &["a".to_owned()]).is_none());
    }

    #[test]
    fn the_bound_evicts_expired_then_oldest() {
        let mut cache = JwtCache::new(2);
        let jwt = |iat: i64| CachedJwt {
            token: iat.to_string(),
            issued_at: iat,
            expires_at: iat + 100,
        };
        cache.insert("spiffe://td/a", &["x".to_owned()], jwt(0), 0);
        cache.insert("spiffe://td/b", &["x".to_owned()], jwt(50), 50);
        cache.insert("spiffe://td/c", &["x".to_owned()], jwt(60), 60);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("spiffe://td/a", &["x".to_owned()]).is_none());
        // At 155 "b" has expired: it goes, "c" stays.
        cache.insert("spiffe://td/d", &["x".to_owned()], jwt(155), 155);
        assert!(cache.get("spiffe://td/b", &["x".to_owned()]).is_none());
        assert!(cache.get("spiffe://td/c", &["x".to_owned()]).is_some());
    }

    #[test]
    fn tokens_signed_by_tainted_keys_are_dropped() {
        use spire_core::jwt::{JwtSvidParams, mint_jwt_svid};
        use spire_core::keys::{KeyType, PrivateKey};
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let token = |kid: &str| {
            mint_jwt_svid(
                &key,
                kid,
                &JwtSvidParams {
                    subject: spire_core::spiffe_id::SpiffeId::parse("spiffe://td/w").unwrap(),
                    audience: vec!["x".to_owned()],
                    expires_at: 4_000_000_000,
                    issued_at: Some(100),
                    issuer: None,
                    algorithm: None,
                    jwt_id: None,
                },
            )
            .unwrap()
        };
        let mut cache = JwtCache::new(10);
        for (audience, kid) in [("a", "old"), ("b", "new")] {
            let jwt = CachedJwt {
                token: token(kid),
                issued_at: 100,
                expires_at: 4_000_000_000,
            };
            cache.insert("spiffe://td/w", &[audience.to_owned()], jwt, 100);
        }
        assert_eq!(cache.remove_signed_by(&["old".to_owned()]), 1);
        assert!(cache.get("spiffe://td/w", &["a".to_owned()]).is_none());
        assert!(cache.get("spiffe://td/w", &["b".to_owned()]).is_some());
        assert_eq!(cache.remove_signed_by(&[]), 0);
    }
}
