//! Registration entries: `registered_entries` with `selectors`, `dns_names` and
//! `federated_registration_entries`, plus `registered_entries_events`.

use std::collections::{BTreeSet, HashMap};

use spire_core::selector::Selector;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::dialect::{Arg, bind_all, db_err, epoch, is_unique_violation, now, placeholders};
use super::proto::trust_domain_id;
use super::query::{
    IdLookup, Page, Related, Where, plan_id_lookups, push_federates_match, push_selector_match,
};
use crate::datastore::{
    ChangeEvent, DataStoreError, EntryMask, ListEntriesRequest, RegistrationEntry, Result,
};

fn entry_columns() -> String {
    format!(
        "e.id, e.entry_id, e.spiffe_id, e.parent_id, e.ttl, e.admin, e.downstream, e.expiry, \
         e.revision_number, e.store_svid, e.hint, e.jwt_svid_ttl, {} AS created_unix",
        epoch("e.created_at")
    )
}

fn row_to_entry(row: &SqliteRow) -> Result<(i64, RegistrationEntry)> {
    let read = db_err("reading a registration entry");
    let get = |row: &SqliteRow| -> std::result::Result<_, sqlx::Error> {
        let id: i64 = row.try_get(0)?;
        let entry = RegistrationEntry {
            entry_id: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            spiffe_id: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            parent_id: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            x509_svid_ttl: row.try_get::<Option<i32>, _>(4)?.unwrap_or_default(),
            admin: row.try_get::<Option<bool>, _>(5)?.unwrap_or_default(),
            downstream: row.try_get::<Option<bool>, _>(6)?.unwrap_or_default(),
            entry_expiry: row.try_get::<Option<i64>, _>(7)?.unwrap_or_default(),
            revision_number: row.try_get::<Option<i64>, _>(8)?.unwrap_or_default(),
            store_svid: row.try_get::<Option<bool>, _>(9)?.unwrap_or_default(),
            hint: row.try_get::<Option<String>, _>(10)?.unwrap_or_default(),
            jwt_svid_ttl: row.try_get::<Option<i32>, _>(11)?.unwrap_or_default(),
            created_at: row.try_get::<Option<i64>, _>(12)?.unwrap_or_default(),
            ..RegistrationEntry::default()
        };
        Ok((id, entry))
    };
    get(row).map_err(read)
}

/// Upstream's entry ID alphabet: letters, digits, `-`, `.`, `_`.
fn valid_entry_id(id: &str) -> bool {
    id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Upstream's datastore-level entry checks.
pub(crate) fn validate(entry: &RegistrationEntry) -> Result<()> {
    let invalid = |m: &str| {
        Err(DataStoreError::InvalidArgument(format!(
            "invalid registration entry: {m}"
        )))
    };
    if entry.selectors.is_empty() {
        return invalid("missing selector list; an entry needs at least one selector");
    }
    if entry
        .selectors
        .iter()
        .any(|s| s.kind.is_empty() || s.value.is_empty())
    {
        return invalid("selectors need both a type and a value");
    }
    if entry.entry_id.len() > 255 {
        return invalid("entry ID too long (at most 255 characters)");
    }
    if !valid_entry_id(&entry.entry_id) {
        return invalid("entry ID contains invalid characters (allowed: A-Z a-z 0-9 - . _)");
    }
    if entry.spiffe_id.is_empty() {
        return invalid("missing SPIFFE ID");
    }
    if entry.parent_id.is_empty() {
        return invalid("missing parent ID");
    }
    if entry.x509_svid_ttl < 0 {
        return invalid("X509SvidTtl must not be negative");
    }
    if entry.jwt_svid_ttl < 0 {
        return invalid("JwtSvidTtl must not be negative");
    }
    Ok(())
}

fn dedup_selectors(selectors: &[Selector]) -> Vec<Selector> {
    let mut seen = BTreeSet::new();
    selectors
        .iter()
        .filter(|s| seen.insert((*s).clone()))
        .cloned()
        .collect()
}

fn dedup_strings(values: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    values
        .iter()
        .filter(|s| seen.insert((*s).clone()))
        .cloned()
        .collect()
}

/// Normalizes federates-with trust domains to `spiffe://td`, refusing invalid ones.
fn normalize_federates(values: &[String]) -> Result<Vec<String>> {
    let ids = values
        .iter()
        .map(|v| trust_domain_id(v))
        .collect::<Result<Vec<_>>>()?;
    Ok(dedup_strings(&ids))
}

/// Records that an entry changed, in the caller's transaction.
pub(crate) async fn insert_event(conn: &mut SqliteConnection, entry_id: &str) -> Result<()> {
    let t = now();
    bind_all(
        sqlx::query(
            "INSERT INTO registered_entries_events (created_at, updated_at, entry_id) \
             VALUES (?, ?, ?)",
        ),
        &[Arg::Time(t), Arg::Time(t), Arg::Text(entry_id.to_owned())],
    )
    .execute(&mut *conn)
    .await
    .map_err(db_err("recording an entry event"))?;
    Ok(())
}

/// Records change events for many entries with multi-row inserts.
pub(crate) async fn insert_events(conn: &mut SqliteConnection, entry_ids: &[String]) -> Result<()> {
    let t = now();
    let rows: Vec<[Arg; 3]> = entry_ids
        .iter()
        .map(|id| [Arg::Time(t), Arg::Time(t), Arg::Text(id.clone())])
        .collect();
    insert_rows(
        conn,
        "INSERT INTO registered_entries_events (created_at, updated_at, entry_id)",
        &rows,
    )
    .await
    .map_err(db_err("recording entry events"))
}

/// Row IDs of the bundles of these trust domain IDs; every one must exist. `cache` remembers
/// lookups across the entries of one batch.
pub(crate) async fn bundle_ids(
    conn: &mut SqliteConnection,
    tds: &[String],
    cache: &mut HashMap<String, i64>,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(tds.len());
    for td in tds {
        if let Some(id) = cache.get(td) {
            ids.push(*id);
            continue;
        }
        let row = sqlx::query("SELECT id FROM bundles WHERE trust_domain = ?")
            .bind(td.clone())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err("looking up a federated bundle"))?;
        match row {
            Some(row) => {
                let id = row
                    .try_get::<i64, _>(0)
                    .map_err(db_err("reading a bundle"))?;
                cache.insert(td.clone(), id);
                ids.push(id);
            }
            None => {
                return Err(DataStoreError::InvalidArgument(format!(
                    "unable to find federated bundle {td:?}; create the bundle (or the \
                     federation relationship) before federating entries with it"
                )));
            }
        }
    }
    Ok(ids)
}

/// Inserts rows with multi-row `VALUES` lists (portable to PostgreSQL and MySQL), a few
/// statements per entry instead of one per selector.
pub(crate) async fn insert_rows<const N: usize>(
    conn: &mut SqliteConnection,
    insert: &str,
    rows: &[[Arg; N]],
) -> std::result::Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let row_placeholders = format!("({})", placeholders(N));
    for chunk in rows.chunks(100) {
        let sql = format!(
            "{insert} VALUES {}",
            vec![row_placeholders.as_str(); chunk.len()].join(", ")
        );
        let args: Vec<Arg> = chunk.iter().flatten().cloned().collect();
        bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Child rows (selectors, DNS names, federation links) waiting to be written with
/// multi-row inserts; a batch collects those of many entries and writes them at once.
#[derive(Default)]
pub(crate) struct ChildRows {
    selectors: Vec<[Arg; 5]>,
    dns: Vec<[Arg; 4]>,
    federates: Vec<[Arg; 2]>,
}

impl ChildRows {
    /// Adds the masked children of the entry stored at `row_id`.
    pub(crate) fn add(
        &mut self,
        row_id: i64,
        entry: &RegistrationEntry,
        bundle_rows: &[i64],
        parts: EntryMask,
    ) {
        let t = now();
        if parts.selectors {
            self.selectors.extend(entry.selectors.iter().map(|s| {
                [
                    Arg::Time(t),
                    Arg::Time(t),
                    Arg::Int(row_id),
                    Arg::Text(s.kind.clone()),
                    Arg::Text(s.value.clone()),
                ]
            }));
        }
        if parts.dns_names {
            self.dns.extend(entry.dns_names.iter().map(|name| {
                [
                    Arg::Time(t),
                    Arg::Time(t),
                    Arg::Int(row_id),
                    Arg::Text(name.clone()),
                ]
            }));
        }
        if parts.federates_with {
            self.federates
                .extend(bundle_rows.iter().map(|b| [Arg::Int(*b), Arg::Int(row_id)]));
        }
    }

    /// Writes everything added so far.
    pub(crate) async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<()> {
        insert_rows(
            conn,
            "INSERT INTO selectors (created_at, updated_at, registered_entry_id, type, value)",
            &std::mem::take(&mut self.selectors),
        )
        .await
        .map_err(db_err("storing entry selectors"))?;
        insert_rows(
            conn,
            "INSERT INTO dns_names (created_at, updated_at, registered_entry_id, value)",
            &std::mem::take(&mut self.dns),
        )
        .await
        .map_err(db_err("storing entry DNS names"))?;
        insert_rows(
            conn,
            "INSERT INTO federated_registration_entries (bundle_id, registered_entry_id)",
            &std::mem::take(&mut self.federates),
        )
        .await
        .map_err(db_err("storing entry federation"))
    }

    /// How many rows wait.
    pub(crate) fn len(&self) -> usize {
        self.selectors.len() + self.dns.len() + self.federates.len()
    }
}

async fn insert_children(
    conn: &mut SqliteConnection,
    row_id: i64,
    entry: &RegistrationEntry,
    bundle_rows: &[i64],
    parts: EntryMask,
) -> Result<()> {
    let mut rows = ChildRows::default();
    rows.add(row_id, entry, bundle_rows, parts);
    rows.flush(conn).await
}

/// Normalizes and validates an entry before it is stored: ID assigned, sets deduplicated,
/// trust domains in ID form.
pub(crate) fn normalize(mut entry: RegistrationEntry) -> Result<RegistrationEntry> {
    if entry.entry_id.is_empty() {
        entry.entry_id = uuid::Uuid::new_v4().to_string();
    }
    entry.selectors = dedup_selectors(&entry.selectors);
    entry.dns_names = dedup_strings(&entry.dns_names);
    entry.federates_with = normalize_federates(&entry.federates_with)?;
    validate(&entry)?;
    Ok(entry)
}

/// Inserts a new entry with its children and event, in the caller's transaction.
pub(crate) async fn create(
    conn: &mut SqliteConnection,
    entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    let entry = normalize(entry)?;
    let bundle_rows = bundle_ids(conn, &entry.federates_with, &mut HashMap::new()).await?;
    let entry = insert_normalized(conn, entry, &bundle_rows).await?;
    insert_event(conn, &entry.entry_id).await?;
    Ok(entry)
}

/// Inserts a normalized entry and its children (no event), in the caller's transaction.
///
/// Input errors (AlreadyExists for a taken entry ID) happen before anything is written; any
/// later error is a database failure and the caller's transaction must be abandoned.
pub(crate) async fn insert_normalized(
    conn: &mut SqliteConnection,
    entry: RegistrationEntry,
    bundle_rows: &[i64],
) -> Result<RegistrationEntry> {
    let mut rows = ChildRows::default();
    let entry = insert_entry_row(conn, entry, bundle_rows, &mut rows).await?;
    rows.flush(conn).await?;
    Ok(entry)
}

/// Inserts the entry's own row and queues its children in `rows`; AlreadyExists (nothing
/// written) when the entry ID is taken.
pub(crate) async fn insert_entry_row(
    conn: &mut SqliteConnection,
    mut entry: RegistrationEntry,
    bundle_rows: &[i64],
    rows: &mut ChildRows,
) -> Result<RegistrationEntry> {
    let t = now();
    let result = bind_all(
        sqlx::query(
            "INSERT INTO registered_entries (created_at, updated_at, entry_id, spiffe_id, \
             parent_id, ttl, admin, downstream, expiry, revision_number, store_svid, hint, \
             jwt_svid_ttl) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ),
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Text(entry.entry_id.clone()),
            Arg::Text(entry.spiffe_id.clone()),
            Arg::Text(entry.parent_id.clone()),
            Arg::Int(i64::from(entry.x509_svid_ttl)),
            Arg::Bool(entry.admin),
            Arg::Bool(entry.downstream),
            Arg::Int(entry.entry_expiry),
            Arg::Int(0),
            Arg::Bool(entry.store_svid),
            Arg::Text(entry.hint.clone()),
            Arg::Int(i64::from(entry.jwt_svid_ttl)),
        ],
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DataStoreError::AlreadyExists(format!("registration entry {:?}", entry.entry_id))
        } else {
            DataStoreError::Internal(format!("storing a registration entry: {e}"))
        }
    })?;
    let row_id = result.last_insert_rowid();
    rows.add(row_id, &entry, bundle_rows, EntryMask::ALL);
    entry.revision_number = 0;
    entry.created_at = t.unix_timestamp();
    Ok(entry)
}

/// Finds an entry with the same SPIFFE ID, parent ID and selector set.
pub(crate) async fn find_similar(
    conn: &mut SqliteConnection,
    entry: &RegistrationEntry,
) -> Result<Option<RegistrationEntry>> {
    let mut w = Where::default();
    w.push("e.spiffe_id = ?", [Arg::Text(entry.spiffe_id.clone())]);
    w.push("e.parent_id = ?", [Arg::Text(entry.parent_id.clone())]);
    let wanted: BTreeSet<&Selector> = entry.selectors.iter().collect();
    // The common case is no candidate at all: check that with one indexed query before
    // loading candidates with their selectors.
    let any = bind_all(
        sqlx::query(
            "SELECT id FROM registered_entries e WHERE e.spiffe_id = ? AND e.parent_id = ? LIMIT 1",
        ),
        &w.args,
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err("looking for a similar entry"))?;
    if any.is_none() {
        return Ok(None);
    }
    let candidates = select(conn, &w, Page::default()).await?;
    Ok(candidates
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.selectors.iter().collect::<BTreeSet<_>>() == wanted))
}

/// Existing entries sharing a (SPIFFE ID, parent ID) pair with any of `pairs`, for
/// create-or-return over a batch with a few bulk queries.
pub(crate) async fn similar_candidates(
    conn: &mut SqliteConnection,
    pairs: &BTreeSet<(String, String)>,
) -> Result<Vec<RegistrationEntry>> {
    let spiffe_ids: Vec<&String> = pairs
        .iter()
        .map(|(s, _)| s)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut row_ids = Vec::new();
    for chunk in spiffe_ids.chunks(500) {
        let sql = format!(
            "SELECT e.id, e.spiffe_id, e.parent_id FROM registered_entries e \
             WHERE e.spiffe_id IN ({})",
            placeholders(chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(|s| Arg::Text((*s).clone())).collect();
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("looking for similar entries"))?;
        for row in rows {
            let get = |row: &SqliteRow| -> std::result::Result<_, sqlx::Error> {
                Ok((
                    row.try_get::<i64, _>(0)?,
                    row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                ))
            };
            let (id, spiffe_id, parent_id) =
                get(&row).map_err(db_err("looking for similar entries"))?;
            if pairs.contains(&(spiffe_id, parent_id)) {
                row_ids.push(id);
            }
        }
    }
    row_ids.sort_unstable();
    let mut out = Vec::with_capacity(row_ids.len());
    for chunk in row_ids.chunks(500) {
        let mut w = Where::default();
        w.push(
            format!("e.id IN ({})", placeholders(chunk.len())),
            chunk.iter().map(|id| Arg::Int(*id)).collect::<Vec<_>>(),
        );
        out.extend(
            select(conn, &w, Page::default())
                .await?
                .into_iter()
                .map(|(_, e)| e),
        );
    }
    Ok(out)
}

/// Children of a set of entries, keyed by row ID.
#[derive(Default)]
struct Children {
    selectors: HashMap<i64, Vec<Selector>>,
    dns: HashMap<i64, Vec<String>>,
    federates: HashMap<i64, Vec<String>>,
}

async fn load_children(conn: &mut SqliteConnection, ids: &[i64]) -> Result<Children> {
    let mut children = Children::default();
    for lookup in plan_id_lookups(ids) {
        let (cond, args) = match lookup {
            IdLookup::Range(lo, hi) => (
                "BETWEEN ? AND ?".to_owned(),
                vec![Arg::Int(lo), Arg::Int(hi)],
            ),
            IdLookup::List(chunk) => (
                format!("IN ({})", placeholders(chunk.len())),
                chunk.iter().map(|id| Arg::Int(*id)).collect(),
            ),
        };
        let wanted = |id: i64| ids.binary_search(&id).is_ok();

        let sql = format!(
            "SELECT registered_entry_id, type, value FROM selectors \
             WHERE registered_entry_id {cond} ORDER BY id"
        );
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading entry selectors"))?;
        for row in rows {
            let (id, kind, value): (i64, Option<String>, Option<String>) = (
                row.try_get(0).map_err(db_err("reading entry selectors"))?,
                row.try_get(1).map_err(db_err("reading entry selectors"))?,
                row.try_get(2).map_err(db_err("reading entry selectors"))?,
            );
            if wanted(id) {
                children.selectors.entry(id).or_default().push(Selector {
                    kind: kind.unwrap_or_default(),
                    value: value.unwrap_or_default(),
                });
            }
        }

        let sql = format!(
            "SELECT registered_entry_id, value FROM dns_names \
             WHERE registered_entry_id {cond} ORDER BY id"
        );
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading entry DNS names"))?;
        for row in rows {
            let id: i64 = row.try_get(0).map_err(db_err("reading entry DNS names"))?;
            let value: Option<String> =
                row.try_get(1).map_err(db_err("reading entry DNS names"))?;
            if wanted(id) {
                children
                    .dns
                    .entry(id)
                    .or_default()
                    .push(value.unwrap_or_default());
            }
        }

        let sql = format!(
            "SELECT f.registered_entry_id, b.trust_domain FROM federated_registration_entries f \
             JOIN bundles b ON b.id = f.bundle_id WHERE f.registered_entry_id {cond} \
             ORDER BY b.trust_domain"
        );
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading entry federation"))?;
        for row in rows {
            let id: i64 = row.try_get(0).map_err(db_err("reading entry federation"))?;
            let td: String = row.try_get(1).map_err(db_err("reading entry federation"))?;
            if wanted(id) {
                children.federates.entry(id).or_default().push(td);
            }
        }
    }
    Ok(children)
}

/// Runs an entry query and fills in every entry's children with bulk queries.
async fn select(
    conn: &mut SqliteConnection,
    w: &Where,
    page: Page,
) -> Result<Vec<(i64, RegistrationEntry)>> {
    let mut args = w.args.clone();
    let sql = format!(
        "SELECT {} FROM registered_entries e{}{}",
        entry_columns(),
        w.render(),
        page.order_limit("e.id", &mut args)
    );
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("listing registration entries"))?;
    let mut entries = rows.iter().map(row_to_entry).collect::<Result<Vec<_>>>()?;
    let ids: Vec<i64> = entries.iter().map(|(id, _)| *id).collect();
    let mut children = load_children(conn, &ids).await?;
    for (id, entry) in &mut entries {
        entry.selectors = children.selectors.remove(id).unwrap_or_default();
        entry.dns_names = children.dns.remove(id).unwrap_or_default();
        entry.federates_with = children.federates.remove(id).unwrap_or_default();
    }
    Ok(entries)
}

/// Fetches one entry with its row ID.
pub(crate) async fn fetch_row(
    conn: &mut SqliteConnection,
    entry_id: &str,
) -> Result<Option<(i64, RegistrationEntry)>> {
    let mut w = Where::default();
    w.push("e.entry_id = ?", [Arg::Text(entry_id.to_owned())]);
    Ok(select(conn, &w, Page::default()).await?.into_iter().next())
}

/// Fetches entries by entry ID, in row order; missing ones are left out.
pub(crate) async fn fetch_many(
    conn: &mut SqliteConnection,
    entry_ids: &[String],
) -> Result<Vec<RegistrationEntry>> {
    let mut out = Vec::with_capacity(entry_ids.len());
    for chunk in entry_ids.chunks(500) {
        let mut w = Where::default();
        w.push(
            format!("e.entry_id IN ({})", placeholders(chunk.len())),
            chunk
                .iter()
                .map(|id| Arg::Text(id.clone()))
                .collect::<Vec<_>>(),
        );
        out.extend(
            select(conn, &w, Page::default())
                .await?
                .into_iter()
                .map(|(_, e)| e),
        );
    }
    Ok(out)
}

fn filters(request: &ListEntriesRequest) -> Result<Where> {
    let mut w = Where::default();
    if let Some(parent) = &request.by_parent_id {
        w.push("e.parent_id = ?", [Arg::Text(parent.clone())]);
    }
    if let Some(id) = &request.by_spiffe_id {
        w.push("e.spiffe_id = ?", [Arg::Text(id.clone())]);
    }
    if let Some(hint) = &request.by_hint {
        w.push("e.hint = ?", [Arg::Text(hint.clone())]);
    }
    if let Some(downstream) = request.by_downstream {
        w.push("e.downstream = ?", [Arg::Bool(downstream)]);
    }
    if let Some((selectors, mode)) = &request.by_selectors {
        let related = Related {
            owner: "e.id",
            from: "selectors s",
            table: "selectors",
            key: "registered_entry_id",
        };
        push_selector_match(&mut w, &related, selectors, *mode)?;
    }
    if let Some((tds, mode)) = &request.by_federates_with {
        let ids = tds
            .iter()
            .map(|td| trust_domain_id(td))
            .collect::<Result<BTreeSet<_>>>()?;
        push_federates_match(&mut w, &ids, *mode)?;
    }
    Ok(w)
}

/// Lists entries matching the request; returns the page and the next token.
pub(crate) async fn list(
    conn: &mut SqliteConnection,
    request: &ListEntriesRequest,
) -> Result<(Vec<RegistrationEntry>, String)> {
    let mut w = filters(request)?;
    let page = Page::from_request(request.pagination.as_ref())?;
    page.push(&mut w, "e.id");
    let rows = select(conn, &w, page).await?;
    let token = page.next_token(rows.len(), rows.last().map(|(id, _)| *id));
    Ok((rows.into_iter().map(|(_, e)| e).collect(), token))
}

/// Counts entries matching the request's filters.
pub(crate) async fn count(
    conn: &mut SqliteConnection,
    request: &ListEntriesRequest,
) -> Result<u64> {
    let w = filters(request)?;
    let sql = format!("SELECT COUNT(*) FROM registered_entries e{}", w.render());
    let row = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &w.args)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err("counting registration entries"))?;
    let n: i64 = row
        .try_get(0)
        .map_err(db_err("counting registration entries"))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Updates the masked fields of an entry, bumping its revision, in the caller's transaction.
pub(crate) async fn update(
    conn: &mut SqliteConnection,
    change: RegistrationEntry,
    mask: EntryMask,
) -> Result<RegistrationEntry> {
    let Some((row_id, mut entry)) = fetch_row(conn, &change.entry_id).await? else {
        return Err(DataStoreError::NotFound(format!(
            "registration entry {:?}",
            change.entry_id
        )));
    };
    if mask.spiffe_id {
        entry.spiffe_id = change.spiffe_id;
    }
    if mask.parent_id {
        entry.parent_id = change.parent_id;
    }
    if mask.selectors {
        entry.selectors = dedup_selectors(&change.selectors);
    }
    if mask.x509_svid_ttl {
        entry.x509_svid_ttl = change.x509_svid_ttl;
    }
    if mask.jwt_svid_ttl {
        entry.jwt_svid_ttl = change.jwt_svid_ttl;
    }
    if mask.federates_with {
        entry.federates_with = normalize_federates(&change.federates_with)?;
    }
    if mask.admin {
        entry.admin = change.admin;
    }
    if mask.downstream {
        entry.downstream = change.downstream;
    }
    if mask.entry_expiry {
        entry.entry_expiry = change.entry_expiry;
    }
    if mask.dns_names {
        entry.dns_names = dedup_strings(&change.dns_names);
    }
    if mask.store_svid {
        entry.store_svid = change.store_svid;
    }
    if mask.hint {
        entry.hint = change.hint;
    }
    validate(&entry)?;
    entry.revision_number += 1;

    bind_all(
        sqlx::query(
            "UPDATE registered_entries SET updated_at = ?, spiffe_id = ?, parent_id = ?, \
             ttl = ?, admin = ?, downstream = ?, expiry = ?, revision_number = ?, \
             store_svid = ?, hint = ?, jwt_svid_ttl = ? WHERE id = ?",
        ),
        &[
            Arg::Time(now()),
            Arg::Text(entry.spiffe_id.clone()),
            Arg::Text(entry.parent_id.clone()),
            Arg::Int(i64::from(entry.x509_svid_ttl)),
            Arg::Bool(entry.admin),
            Arg::Bool(entry.downstream),
            Arg::Int(entry.entry_expiry),
            Arg::Int(entry.revision_number),
            Arg::Bool(entry.store_svid),
            Arg::Text(entry.hint.clone()),
            Arg::Int(i64::from(entry.jwt_svid_ttl)),
            Arg::Int(row_id),
        ],
    )
    .execute(&mut *conn)
    .await
    .map_err(db_err("updating a registration entry"))?;

    let replaced = EntryMask {
        spiffe_id: false,
        parent_id: false,
        selectors: mask.selectors,
        x509_svid_ttl: false,
        jwt_svid_ttl: false,
        federates_with: mask.federates_with,
        admin: false,
        downstream: false,
        entry_expiry: false,
        dns_names: mask.dns_names,
        store_svid: false,
        hint: false,
    };
    let bundle_rows = if mask.federates_with {
        bundle_ids(conn, &entry.federates_with, &mut HashMap::new()).await?
    } else {
        Vec::new()
    };
    delete_children(conn, row_id, replaced).await?;
    insert_children(conn, row_id, &entry, &bundle_rows, replaced).await?;
    insert_event(conn, &entry.entry_id).await?;
    Ok(entry)
}

async fn delete_children(conn: &mut SqliteConnection, row_id: i64, parts: EntryMask) -> Result<()> {
    let statements: [(bool, &'static str); 3] = [
        (
            parts.selectors,
            "DELETE FROM selectors WHERE registered_entry_id = ?",
        ),
        (
            parts.dns_names,
            "DELETE FROM dns_names WHERE registered_entry_id = ?",
        ),
        (
            parts.federates_with,
            "DELETE FROM federated_registration_entries WHERE registered_entry_id = ?",
        ),
    ];
    for (wanted, sql) in statements {
        if wanted {
            sqlx::query(sql)
                .bind(row_id)
                .execute(&mut *conn)
                .await
                .map_err(db_err("removing entry details"))?;
        }
    }
    Ok(())
}

/// Deletes an entry by row ID with its children and records the event.
pub(crate) async fn delete_row(
    conn: &mut SqliteConnection,
    row_id: i64,
    entry_id: &str,
) -> Result<()> {
    delete_children(conn, row_id, EntryMask::ALL).await?;
    sqlx::query("DELETE FROM registered_entries WHERE id = ?")
        .bind(row_id)
        .execute(&mut *conn)
        .await
        .map_err(db_err("deleting a registration entry"))?;
    insert_event(conn, entry_id).await
}

/// Deletes an entry and returns it, in the caller's transaction.
pub(crate) async fn delete(
    conn: &mut SqliteConnection,
    entry_id: &str,
) -> Result<RegistrationEntry> {
    let Some((row_id, entry)) = fetch_row(conn, entry_id).await? else {
        return Err(DataStoreError::NotFound(format!(
            "registration entry {entry_id:?}"
        )));
    };
    delete_row(conn, row_id, entry_id).await?;
    Ok(entry)
}

/// Deletes entries that expired before `expires_before`, in the caller's transaction.
pub(crate) async fn prune(conn: &mut SqliteConnection, expires_before: i64) -> Result<()> {
    let rows =
        sqlx::query("SELECT id, entry_id FROM registered_entries WHERE expiry != 0 AND expiry < ?")
            .bind(expires_before)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("finding expired entries"))?;
    for row in rows {
        let id: i64 = row.try_get(0).map_err(db_err("finding expired entries"))?;
        let entry_id: Option<String> = row.try_get(1).map_err(db_err("finding expired entries"))?;
        delete_row(conn, id, &entry_id.unwrap_or_default()).await?;
    }
    Ok(())
}

/// Row IDs and entry IDs of entries federating with a bundle.
pub(crate) async fn federated_with_bundle(
    conn: &mut SqliteConnection,
    bundle_row: i64,
) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query(
        "SELECT e.id, e.entry_id FROM registered_entries e JOIN federated_registration_entries f \
         ON f.registered_entry_id = e.id WHERE f.bundle_id = ? ORDER BY e.id",
    )
    .bind(bundle_row)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err("finding entries federated with a bundle"))?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get(0)?;
            let entry_id: Option<String> = row.try_get(1)?;
            Ok((id, entry_id.unwrap_or_default()))
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(db_err("finding entries federated with a bundle"))
}

/// Lists change events of `table` (`registered_entries_events` or
/// `attested_node_entries_events`) after `after`.
pub(crate) async fn list_events(
    conn: &mut SqliteConnection,
    table: &str,
    column: &str,
    after: u64,
) -> Result<Vec<ChangeEvent>> {
    let sql = format!("SELECT id, {column} FROM {table} WHERE id > ? ORDER BY id");
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("listing change events"))?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get(0)?;
            let value: Option<String> = row.try_get(1)?;
            Ok(ChangeEvent {
                event_id: u64::try_from(id).unwrap_or_default(),
                id: value.unwrap_or_default(),
            })
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(db_err("listing change events"))
}

/// Deletes change events of `table` created before `older_than` (Unix seconds).
pub(crate) async fn prune_events(
    conn: &mut SqliteConnection,
    table: &str,
    older_than: i64,
) -> Result<()> {
    let sql = format!("DELETE FROM {table} WHERE {} < ?", epoch("created_at"));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(older_than)
        .execute(&mut *conn)
        .await
        .map_err(db_err("pruning change events"))?;
    Ok(())
}
