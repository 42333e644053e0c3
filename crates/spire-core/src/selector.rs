//! Selectors (`type:value`, e.g. `unix:uid:1000`) and selector sets.
//!
//! Attestors describe a node or a workload as a set of selectors; an entry matches when its
//! selectors are a subset of the caller's. The type is everything before the first colon; the
//! value is the rest and may itself contain colons (`k8s:pod-label:app:web`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// There is no colon separating type and value.
    #[error("selector {0:?} must be formatted as type:value")]
    MissingColon(String),
    /// Nothing before the first colon.
    #[error("selector {0:?} has an empty type; expected type:value such as unix:uid:1000")]
    EmptyType(String),
    /// Nothing after the first colon.
    #[error("selector {0:?} has an empty value; expected type:value such as unix:uid:1000")]
    EmptyValue(String),
}

/// One selector: a type (the attestor's name, e.g. `unix`) and a value (e.g. `uid:1000`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// The attestor plugin's name, e.g. `unix`, `k8s`, `docker`, `join_token`.
    pub kind: String,
    /// The attested fact, e.g. `uid:1000`.
    pub value: String,
}

impl Selector {
    /// Builds a selector from its parts, refusing empty ones.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Result<Self, SelectorError> {
        let (kind, value) = (kind.into(), value.into());
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(format!("{kind}:{value}")));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(format!("{kind}:")));
        }
        Ok(Self { kind, value })
    }

    /// Parses `type:value`, splitting at the first colon only.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let Some((kind, value)) = input.split_once(':') else {
            return Err(SelectorError::MissingColon(input.to_owned()));
        };
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(input.to_owned()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(input.to_owned()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// How a set of selectors is compared with an entry's, as in upstream's `SelectorMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorMatch {
    /// The entry's selectors are exactly the given ones.
    Exact,
    /// The entry's selectors are a subset of the given ones (what workload attestation does).
    Subset,
    /// The entry's selectors include all of the given ones.
    Superset,
    /// The entry has at least one of the given selectors.
    Any,
}

/// A sorted set of selectors without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorSet(BTreeSet<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a selector; returns whether it was new.
    pub fn insert(&mut self, selector: Selector) -> bool {
        self.0.insert(selector)
    }

    /// Whether the set holds `selector`.
    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.contains(selector)
    }

    /// Number of selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no selectors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The selectors in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    /// Whether every selector of `self` is also in `other`. The empty set is a subset of
    /// everything, so callers that must not match an entry without selectors check that first.
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Whether this set (an entry's selectors) matches `given` under `mode`.
    pub fn matches(&self, given: &Self, mode: SelectorMatch) -> bool {
        match mode {
            SelectorMatch::Exact => self == given,
            SelectorMatch::Subset => self.is_subset_of(given),
            SelectorMatch::Superset => given.is_subset_of(self),
            SelectorMatch::Any => self.0.iter().any(|s| given.contains(s)),
        }
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl IntoIterator for SelectorSet {
    type Item = Selector;
    type IntoIter = std::collections::btree_set::IntoIter<Selector>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a SelectorSet {
    type Item = &'a Selector;
    type IntoIter = std::collections::btree_set::Iter<'a, Selector>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> SelectorSet {
        items.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn value_keeps_its_colons() {
        let s = Selector::parse("k8s:pod-label:app:web").unwrap();
        assert_eq!(s.kind, "k8s");
        assert_eq!(s.value, "pod-label:app:web");
        assert_eq!(s.to_string(), "k8s:pod-label:app:web");
    }

    #[test]
    fn malformed_selectors_say_what_to_write() {
        assert_eq!(
            Selector::parse("unix").unwrap_err().to_string(),
            "selector \"unix\" must be formatted as type:value"
        );
        assert!(matches!(
            Selector::parse(":uid:1"),
            Err(SelectorError::EmptyType(_))
        ));
        assert!(matches!(
            Selector::parse("unix:"),
            Err(SelectorError::EmptyValue(_))
        ));
        assert!(Selector::new("", "x").is_err());
        assert!(Selector::new("x", "").is_err());
    }

    #[test]
    fn sets_are_sorted_and_deduplicated() {
        let s = set(&["unix:uid:1", "docker:label:a", "unix:uid:1"]);
        assert_eq!(s.len(), 2);
        let printed: Vec<String> = s.iter().map(ToString::to_string).collect();
        assert_eq!(printed, ["docker:label:a", "unix:uid:1"]);
    }

    #[test]
    fn subset_match_is_what_workload_attestation_uses() {
        let entry = set(&["unix:uid:1000"]);
        let caller = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:alice"]);
        assert!(entry.is_subset_of(&caller));
        assert!(!caller.is_subset_of(&entry));
        assert!(!set(&["unix:uid:1001"]).is_subset_of(&caller));
        assert!(SelectorSet::new().is_subset_of(&caller));
    }

    #[test]
    fn every_match_mode() {
        let entry = set(&["a:1", "b:2"]);
        assert!(entry.matches(&set(&["a:1", "b:2"]), SelectorMatch::Exact));
        assert!(!entry.matches(&set(&["a:1"]), SelectorMatch::Exact));
        assert!(entry.matches(&set(&["a:1", "b:2", "c:3"]), SelectorMatch::Subset));
        assert!(!entry.matches(&set(&["a:1"]), SelectorMatch::Subset));
        assert!(entry.matches(&set(&["a:1"]), SelectorMatch::Superset));
        assert!(!entry.matches(&set(&["c:3"]), SelectorMatch::Superset));
        assert!(entry.matches(&set(&["b:2", "z:9"]), SelectorMatch::Any));
        assert!(!entry.matches(&set(&["z:9"]), SelectorMatch::Any));
    }
}
