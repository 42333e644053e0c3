//! Building blocks for dynamically built queries: WHERE clauses with their arguments,
//! selector-set matching, and page tokens.

use std::collections::BTreeSet;

use spire_core::selector::{Selector, SelectorMatch};

use super::dialect::{Arg, placeholders};
use crate::datastore::{DataStoreError, Pagination, Result};

/// AND-ed conditions with their arguments, in placeholder order.
#[derive(Debug, Default)]
pub(crate) struct Where {
    clauses: Vec<String>,
    /// The arguments of every clause, in order.
    pub(crate) args: Vec<Arg>,
}

impl Where {
    /// Adds a condition and its arguments.
    pub(crate) fn push(&mut self, clause: impl Into<String>, args: impl IntoIterator<Item = Arg>) {
        self.clauses.push(clause.into());
        self.args.extend(args);
    }

    /// ` WHERE a AND b`, or nothing.
    pub(crate) fn render(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// Where the rows related to an owner (an entry or an agent) live.
pub(crate) struct Related<'a> {
    /// The owner's key as seen from the outer query, e.g. `e.id`.
    pub(crate) owner: &'a str,
    /// The FROM part naming the related rows `s`, e.g. `selectors s`.
    pub(crate) from: &'a str,
    /// The related table alone, for counting all of an owner's rows.
    pub(crate) table: &'a str,
    /// The column of the related table that points at the owner.
    pub(crate) key: &'a str,
}

/// A condition true for owners whose related rows relate to the given set as `mode` says.
///
/// `matches` is an SQL condition on `s` true for rows in the given set, and `n` the number of
/// distinct elements of the set. Related rows are unique per owner (upstream's unique indexes),
/// so counts are set sizes.
pub(crate) fn set_match(
    related: &Related<'_>,
    matches: &str,
    n: usize,
    mode: SelectorMatch,
) -> String {
    let Related {
        owner,
        from,
        table,
        key,
    } = related;
    let all_of_owner = format!("(SELECT COUNT(*) FROM {table} a WHERE a.{key} = s.{key})");
    match mode {
        SelectorMatch::Any => format!("{owner} IN (SELECT s.{key} FROM {from} WHERE {matches})"),
        SelectorMatch::Superset => format!(
            "{owner} IN (SELECT s.{key} FROM {from} WHERE {matches} GROUP BY s.{key} \
             HAVING COUNT(*) = {n})"
        ),
        SelectorMatch::Subset => format!(
            "{owner} IN (SELECT s.{key} FROM {from} WHERE {matches} GROUP BY s.{key} \
             HAVING COUNT(*) = {all_of_owner})"
        ),
        SelectorMatch::Exact => format!(
            "{owner} IN (SELECT s.{key} FROM {from} WHERE {matches} GROUP BY s.{key} \
             HAVING COUNT(*) = {n} AND COUNT(*) = {all_of_owner})"
        ),
    }
}

/// Adds a selector-set condition on the related table aliased `s` (columns `type`, `value`).
pub(crate) fn push_selector_match(
    w: &mut Where,
    related: &Related<'_>,
    selectors: &[Selector],
    mode: SelectorMatch,
) -> Result<()> {
    let set: BTreeSet<&Selector> = selectors.iter().collect();
    if set.is_empty() {
        return Err(DataStoreError::InvalidArgument(
            "cannot filter by an empty selector set; give at least one selector".into(),
        ));
    }
    let matches = vec!["(s.type = ? AND s.value = ?)"; set.len()].join(" OR ");
    let clause = set_match(related, &format!("({matches})"), set.len(), mode);
    let args = set
        .iter()
        .flat_map(|s| [Arg::Text(s.kind.clone()), Arg::Text(s.value.clone())]);
    w.push(clause, args.collect::<Vec<_>>());
    Ok(())
}

/// Adds a federates-with condition: `trust_domain_ids` are `spiffe://td` strings.
pub(crate) fn push_federates_match(
    w: &mut Where,
    trust_domain_ids: &BTreeSet<String>,
    mode: SelectorMatch,
) -> Result<()> {
    if trust_domain_ids.is_empty() {
        return Err(DataStoreError::InvalidArgument(
            "cannot filter by an empty federates-with set; give at least one trust domain".into(),
        ));
    }
    let related = Related {
        owner: "e.id",
        from: "federated_registration_entries s JOIN bundles b ON b.id = s.bundle_id",
        table: "federated_registration_entries",
        key: "registered_entry_id",
    };
    let matches = format!(
        "b.trust_domain IN ({})",
        placeholders(trust_domain_ids.len())
    );
    let clause = set_match(&related, &matches, trust_domain_ids.len(), mode);
    w.push(
        clause,
        trust_domain_ids
            .iter()
            .map(|td| Arg::Text(td.clone()))
            .collect::<Vec<_>>(),
    );
    Ok(())
}

/// A page request resolved: start after row `after`, at most `limit` rows (0: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Page {
    /// The last row ID the caller has seen.
    pub(crate) after: i64,
    /// The page size; 0 means everything.
    pub(crate) limit: u32,
}

impl Page {
    /// Parses the opaque token (the last row ID of the previous page, as upstream uses).
    pub(crate) fn from_request(pagination: Option<&Pagination>) -> Result<Self> {
        let Some(p) = pagination else {
            return Ok(Self::default());
        };
        let after = if p.token.is_empty() {
            0
        } else {
            p.token
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    DataStoreError::InvalidArgument(format!(
                        "could not parse pagination token {:?}; pass back the token the \
                         previous page returned, or an empty one to start over",
                        p.token
                    ))
                })?
        };
        Ok(Self {
            after,
            limit: p.page_size,
        })
    }

    /// Adds `column > after` when continuing.
    pub(crate) fn push(&self, w: &mut Where, column: &str) {
        if self.after > 0 {
            w.push(format!("{column} > ?"), [Arg::Int(self.after)]);
        }
    }

    /// ` ORDER BY column` plus the limit, with the limit's argument appended to `args`.
    pub(crate) fn order_limit(&self, column: &str, args: &mut Vec<Arg>) -> String {
        if self.limit > 0 {
            args.push(Arg::Int(i64::from(self.limit)));
            format!(" ORDER BY {column} LIMIT ?")
        } else {
            format!(" ORDER BY {column}")
        }
    }

    /// The token for the next page: the last row ID when the page was full, else empty.
    pub(crate) fn next_token(&self, returned: usize, last_id: Option<i64>) -> String {
        match last_id {
            Some(id) if self.limit > 0 && returned >= self.limit as usize => id.to_string(),
            _ => String::new(),
        }
    }
}

/// Splits sorted row IDs into lookups: one range when the IDs are dense, else chunks for IN
/// lists. Keeps child-row loading to a few bulk queries, never one per row.
pub(crate) enum IdLookup<'a> {
    /// `key BETWEEN lo AND hi`, then keep only wanted IDs.
    Range(i64, i64),
    /// `key IN (...)` for these IDs.
    List(&'a [i64]),
}

/// Plans lookups for `ids` (sorted ascending).
pub(crate) fn plan_id_lookups(ids: &[i64]) -> Vec<IdLookup<'_>> {
    const CHUNK: usize = 500;
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Vec::new();
    };
    let span = (last - first).saturating_add(1);
    let dense = (ids.len() as i64).saturating_mul(4) >= span;
    if dense || ids.len() > 20 * CHUNK {
        vec![IdLookup::Range(*first, *last)]
    } else {
        ids.chunks(CHUNK).map(IdLookup::List).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let p = Page::from_request(Some(&Pagination {
            token: "42".into(),
            page_size: 10,
        }))
        .unwrap();
        assert_eq!(p.after, 42);
        assert_eq!(p.next_token(10, Some(52)), "52");
        assert_eq!(p.next_token(9, Some(51)), "");
        let err = Page::from_request(Some(&Pagination {
            token: "nope".into(),
            page_size: 1,
        }))
        .unwrap_err();
        assert!(err.to_string().contains("pagination token"));
    }

    #[test]
    fn dense_ids_use_one_range() {
        let ids: Vec<i64> = (1..=100).collect();
        assert!(matches!(
            plan_id_lookups(&ids)[..],
            [IdLookup::Range(1, 100)]
        ));
        let sparse = [1, 1000, 5000];
        assert!(matches!(plan_id_lookups(&sparse)[..], [IdLookup::List(_)]));
    }
}
