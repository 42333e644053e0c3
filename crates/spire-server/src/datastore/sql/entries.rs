//! Registration entries: `registered_entries` with `selectors`, `dns_names` and
//! `federated_registration_entries`, plus `registered_entries_events`.

use std::collections::{BTreeSet, HashMap};

use spire_core::selector::Selector;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::{
    Arg, Db, Dialect, db_err, get_bool, is_unique_violation, now, placeholders, rounded_unix,
};
use super::proto::trust_domain_id;
use super::query::{
    IdLookup, Page, Related, Where, plan_id_lookups, push_federates_match, push_selector_match,
};
use crate::datastore::{
    ChangeEvent, DataStoreError, EntryAttributes, EntryMask, ListEntriesRequest, RegistrationEntry,
    Result,
};
use prost::Message;
use spire_proto::spire::api::types;

fn entry_columns(d: Dialect) -> String {
    format!(
        "e.id, e.entry_id, e.spiffe_id, e.parent_id, e.ttl, {} AS admin, {} AS downstream, \
         e.expiry, e.revision_number, {} AS store_svid, e.hint, e.jwt_svid_ttl, \
         {} AS created_unix, e.additional_attributes",
        d.bool_col("e.admin"),
        d.bool_col("e.downstream"),
        d.bool_col("e.store_svid"),
        d.rounded_epoch("e.created_at")
    )
}

fn row_to_entry(row: &AnyRow) -> Result<(i64, RegistrationEntry)> {
    let read = db_err("reading a registration entry");
    let get = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
        let id: i64 = row.try_get(0)?;
        let entry = RegistrationEntry {
            entry_id: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            spiffe_id: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            parent_id: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            x509_svid_ttl: row.try_get::<Option<i32>, _>(4)?.unwrap_or_default(),
            admin: get_bool(row, 5)?,
            downstream: get_bool(row, 6)?,
            entry_expiry: row.try_get::<Option<i64>, _>(7)?.unwrap_or_default(),
            revision_number: row.try_get::<Option<i64>, _>(8)?.unwrap_or_default(),
            store_svid: get_bool(row, 9)?,
            hint: row.try_get::<Option<String>, _>(10)?.unwrap_or_default(),
            jwt_svid_ttl: row.try_get::<Option<i32>, _>(11)?.unwrap_or_default(),
            created_at: row.try_get::<Option<i64>, _>(12)?.unwrap_or_default(),
            ..RegistrationEntry::default()
        };
        let attributes: Option<Vec<u8>> = row.try_get(13)?;
        Ok((id, entry, attributes))
    };
    let (id, mut entry, attributes) = get(row).map_err(read)?;
    entry.additional_attributes = decode_attributes(attributes.as_deref()).map_err(|e| {
        DataStoreError::Internal(format!(
            "registration entry {:?} has unreadable additional attributes: {e}",
            entry.entry_id
        ))
    })?;
    Ok((id, entry))
}

/// Reads `registered_entries.additional_attributes` as upstream does: NULL or empty bytes
/// mean none, anything else is a `RegistrationEntry.AdditionalAttributes` protobuf.
fn decode_attributes(
    bytes: Option<&[u8]>,
) -> std::result::Result<Option<EntryAttributes>, prost::DecodeError> {
    match bytes {
        None | Some([]) => Ok(None),
        Some(bytes) => {
            let wire = types::entry::AdditionalAttributes::decode(bytes)?;
            Ok(Some(EntryAttributes {
                disable_x509_svid_prefetch: wire.disable_x509_svid_prefetch,
                jwt_svid_include_jti: wire.jwt_svid_include_jti,
            }))
        }
    }
}

/// The column value upstream writes: NULL for none, else the protobuf (empty when every
/// attribute is false).
fn encode_attributes(attributes: Option<EntryAttributes>) -> Arg {
    match attributes {
        None => Arg::NullBlob,
        Some(a) => Arg::Blob(
            types::entry::AdditionalAttributes {
                disable_x509_svid_prefetch: a.disable_x509_svid_prefetch,
                jwt_svid_include_jti: a.jwt_svid_include_jti,
            }
            .encode_to_vec(),
        ),
    }
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
    if entry.store_svid {
        if entry
            .additional_attributes
            .is_some_and(|a| a.disable_x509_svid_prefetch)
        {
            return Err(DataStoreError::InvalidArgument(
                "specifying cache behaviour is incompatible with storable SVIDs".into(),
            ));
        }
        if entry
            .selectors
            .iter()
            .any(|s| s.kind != entry.selectors[0].kind)
        {
            return invalid("selector types must be the same when store SVID is enabled");
        }
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
pub(crate) async fn insert_event(conn: &mut Db<'_>, entry_id: &str) -> Result<()> {
    let t = now();
    conn.execute(
        "INSERT INTO registered_entries_events (created_at, updated_at, entry_id) \
             VALUES (?, ?, ?)",
        &[Arg::Time(t), Arg::Time(t), Arg::Text(entry_id.to_owned())],
    )
    .await
    .map_err(db_err("recording an entry event"))?;
    Ok(())
}

/// Records change events for many entries with multi-row inserts.
pub(crate) async fn insert_events(conn: &mut Db<'_>, entry_ids: &[String]) -> Result<()> {
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
    conn: &mut Db<'_>,
    tds: &[String],
    cache: &mut HashMap<String, i64>,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(tds.len());
    for td in tds {
        if let Some(id) = cache.get(td) {
            ids.push(*id);
            continue;
        }
        let row = conn
            .fetch_optional(
                "SELECT id FROM bundles WHERE trust_domain = ?",
                &[Arg::Text(td.clone())],
            )
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
    conn: &mut Db<'_>,
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
        conn.execute(&sql, &args).await?;
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
    pub(crate) async fn flush(&mut self, conn: &mut Db<'_>) -> Result<()> {
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
    conn: &mut Db<'_>,
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
    conn: &mut Db<'_>,
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
    conn: &mut Db<'_>,
    entry: RegistrationEntry,
    bundle_rows: &[i64],
) -> Result<RegistrationEntry> {
    let mut rows = ChildRows::default();
    let entry = insert_entry_row(conn, entry, bundle_rows, &mut rows).await?;
    rows.flush(conn).await?;
    Ok(entry)
}

const ENTRY_INSERT: &str = "INSERT INTO registered_entries (created_at, updated_at, entry_id, \
                            spiffe_id, parent_id, ttl, admin, downstream, expiry, \
                            revision_number, store_svid, hint, jwt_svid_ttl, \
                            additional_attributes)";

const ENTRY_ROW_VALUES: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

fn entry_insert_one() -> String {
    format!("{ENTRY_INSERT} VALUES {ENTRY_ROW_VALUES}")
}

fn entry_row_args(entry: &RegistrationEntry, t: time::OffsetDateTime) -> [Arg; 14] {
    [
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
        encode_attributes(entry.additional_attributes),
    ]
}

fn read_ids(rows: Vec<AnyRow>, ids: &mut HashMap<String, i64>) -> Result<()> {
    for row in rows {
        let id: i64 = row
            .try_get(0)
            .map_err(db_err("storing registration entries"))?;
        let entry_id: Option<String> = row
            .try_get(1)
            .map_err(db_err("storing registration entries"))?;
        ids.insert(entry_id.unwrap_or_default(), id);
    }
    Ok(())
}

/// Inserts the rows of many normalized entries (distinct entry IDs) with multi-row
/// statements, a few round trips per hundred entries. Returns each entry's row ID in input
/// order, `None` when its entry ID was taken (nothing of it written). Children are not
/// written.
pub(crate) async fn insert_entry_rows(
    conn: &mut Db<'_>,
    entries: &[RegistrationEntry],
    t: time::OffsetDateTime,
) -> Result<Vec<Option<i64>>> {
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(entries.len());
    for chunk in entries.chunks(100) {
        let values = vec![ENTRY_ROW_VALUES; chunk.len()].join(", ");
        let args: Vec<Arg> = chunk.iter().flat_map(|e| entry_row_args(e, t)).collect();
        if conn.dialect() != Dialect::Mysql {
            // Taken entry IDs are skipped, not errors: a failed statement would abort a
            // PostgreSQL transaction, and the rest of the batch must go on.
            let sql = format!(
                "{ENTRY_INSERT} VALUES {values} ON CONFLICT (entry_id) DO NOTHING \
                 RETURNING id, entry_id"
            );
            let rows = conn
                .fetch_all(&sql, &args)
                .await
                .map_err(db_err("storing registration entries"))?;
            read_ids(rows, &mut ids)?;
            continue;
        }
        let sql = format!("{ENTRY_INSERT} VALUES {values}");
        match conn.execute(&sql, &args).await {
            Ok(_) => {}
            // MySQL undoes the failed statement alone and keeps the transaction: insert one
            // by one to tell the taken IDs apart.
            Err(e) if is_unique_violation(&e) => {
                for entry in chunk {
                    match conn
                        .insert(&entry_insert_one(), &entry_row_args(entry, t))
                        .await
                    {
                        Ok(id) => {
                            ids.insert(entry.entry_id.clone(), id);
                        }
                        Err(e) if is_unique_violation(&e) => {}
                        Err(e) => return Err(db_err("storing a registration entry")(e)),
                    }
                }
                continue;
            }
            Err(e) => return Err(db_err("storing registration entries")(e)),
        }
        // Auto-increment values of one statement need not be consecutive (MySQL's default
        // interleaved lock mode): read them back.
        let sql = format!(
            "SELECT id, entry_id FROM registered_entries WHERE entry_id IN ({})",
            placeholders(chunk.len())
        );
        let args: Vec<Arg> = chunk
            .iter()
            .map(|e| Arg::Text(e.entry_id.clone()))
            .collect();
        let rows = conn
            .fetch_all(&sql, &args)
            .await
            .map_err(db_err("storing registration entries"))?;
        read_ids(rows, &mut ids)?;
    }
    Ok(entries
        .iter()
        .map(|e| ids.get(&e.entry_id).copied())
        .collect())
}

/// Most bind parameters one PostgreSQL statement of [`insert_entries_with_children`] uses
/// (the protocol allows 65535); a chunk of entries stops before it would pass this.
const PG_PARAM_BUDGET: usize = 30_000;

/// Bind parameters an entry needs in [`insert_entries_with_children`].
fn pg_params(entry: &RegistrationEntry, bundle_rows: &[i64]) -> usize {
    14 + 3 * entry.selectors.len() + 2 * entry.dns_names.len() + 2 * bundle_rows.len()
}

/// PostgreSQL: inserts many normalized entries (distinct entry IDs) with their selectors,
/// DNS names, federation links and change events in one statement per chunk (data-modifying
/// `WITH` clauses fed by the entries' `RETURNING`), so a batch costs one round trip per
/// hundred entries instead of five. Returns each entry's row ID in input order, `None` when
/// its entry ID was taken (nothing of it written, no event). Rows are written in the order
/// the separate statements wrote them: entries, then each entry's children in order, and
/// one event per created entry in row order.
///
/// `None` when an entry alone needs more bind parameters than a statement may carry; the
/// caller then uses the statement-per-table path.
pub(crate) async fn insert_entries_with_children(
    conn: &mut Db<'_>,
    entries: &[(&RegistrationEntry, &[i64])],
    t: time::OffsetDateTime,
) -> Result<Option<Vec<Option<i64>>>> {
    if entries
        .iter()
        .any(|(e, b)| pg_params(e, b) + 8 > PG_PARAM_BUDGET)
    {
        return Ok(None);
    }
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(entries.len());
    let mut start = 0;
    while start < entries.len() {
        let mut end = start;
        let mut params = 8;
        while end < entries.len() && end - start < 100 {
            let (e, b) = entries[end];
            let need = pg_params(e, b);
            if end > start && params + need > PG_PARAM_BUDGET {
                break;
            }
            params += need;
            end += 1;
        }
        let chunk = &entries[start..end];
        start = end;
        let (sql, args) = pg_insert_statement(chunk, t);
        let rows = conn
            .fetch_all(&sql, &args)
            .await
            .map_err(db_err("storing registration entries"))?;
        read_ids(rows, &mut ids)?;
    }
    Ok(Some(
        entries
            .iter()
            .map(|(e, _)| ids.get(&e.entry_id).copied())
            .collect(),
    ))
}

/// The statement and arguments of one chunk of [`insert_entries_with_children`].
fn pg_insert_statement(
    chunk: &[(&RegistrationEntry, &[i64])],
    t: time::OffsetDateTime,
) -> (String, Vec<Arg>) {
    let values = vec![ENTRY_ROW_VALUES; chunk.len()].join(", ");
    let mut args: Vec<Arg> = chunk
        .iter()
        .flat_map(|(e, _)| entry_row_args(e, t))
        .collect();
    let mut sql = format!(
        "WITH e AS ({ENTRY_INSERT} VALUES {values} ON CONFLICT (entry_id) DO NOTHING \
         RETURNING id, entry_id)"
    );
    // Child rows keep their input order through an ordinal, so their row IDs (which
    // listings sort by) come out as the statement-per-table path gave them.
    let mut selector_rows = Vec::new();
    let mut dns_rows = Vec::new();
    let mut federation_rows = Vec::new();
    let (mut selector_args, mut dns_args, mut federation_args) =
        (Vec::new(), Vec::new(), Vec::new());
    for (entry, bundle_rows) in chunk {
        for selector in &entry.selectors {
            selector_rows.push(format!("({}, ?, ?, ?)", selector_rows.len()));
            selector_args.extend([
                Arg::Text(entry.entry_id.clone()),
                Arg::Text(selector.kind.clone()),
                Arg::Text(selector.value.clone()),
            ]);
        }
        for name in &entry.dns_names {
            dns_rows.push(format!("({}, ?, ?)", dns_rows.len()));
            dns_args.extend([Arg::Text(entry.entry_id.clone()), Arg::Text(name.clone())]);
        }
        for bundle in *bundle_rows {
            federation_rows.push(format!("({}, ?, ?)", federation_rows.len()));
            federation_args.extend([Arg::Text(entry.entry_id.clone()), Arg::Int(*bundle)]);
        }
    }
    if !selector_rows.is_empty() {
        sql.push_str(&format!(
            ", s AS (INSERT INTO selectors (created_at, updated_at, registered_entry_id, type, \
             value) SELECT ?, ?, e.id, v.kind, v.val FROM (VALUES {}) AS v(n, eid, kind, val) \
             JOIN e ON e.entry_id = v.eid ORDER BY v.n)",
            selector_rows.join(", ")
        ));
        args.extend([Arg::Time(t), Arg::Time(t)]);
        args.append(&mut selector_args);
    }
    if !dns_rows.is_empty() {
        sql.push_str(&format!(
            ", d AS (INSERT INTO dns_names (created_at, updated_at, registered_entry_id, value) \
             SELECT ?, ?, e.id, v.val FROM (VALUES {}) AS v(n, eid, val) \
             JOIN e ON e.entry_id = v.eid ORDER BY v.n)",
            dns_rows.join(", ")
        ));
        args.extend([Arg::Time(t), Arg::Time(t)]);
        args.append(&mut dns_args);
    }
    if !federation_rows.is_empty() {
        sql.push_str(&format!(
            ", f AS (INSERT INTO federated_registration_entries (bundle_id, registered_entry_id) \
             SELECT v.bundle, e.id FROM (VALUES {}) AS v(n, eid, bundle) \
             JOIN e ON e.entry_id = v.eid ORDER BY v.n)",
            federation_rows.join(", ")
        ));
        args.append(&mut federation_args);
    }
    sql.push_str(
        ", ev AS (INSERT INTO registered_entries_events (created_at, updated_at, entry_id) \
         SELECT ?, ?, entry_id FROM e ORDER BY id) SELECT id, entry_id FROM e",
    );
    args.extend([Arg::Time(t), Arg::Time(t)]);
    (sql, args)
}

/// Inserts the entry's own row and queues its children in `rows`; AlreadyExists (nothing
/// written) when the entry ID is taken.
pub(crate) async fn insert_entry_row(
    conn: &mut Db<'_>,
    mut entry: RegistrationEntry,
    bundle_rows: &[i64],
    rows: &mut ChildRows,
) -> Result<RegistrationEntry> {
    let t = now();
    let insert = entry_insert_one();
    let args = entry_row_args(&entry, t);
    let taken =
        || DataStoreError::AlreadyExists(format!("registration entry {:?}", entry.entry_id));
    let row_id = if conn.dialect() == Dialect::Postgres {
        // A failed statement aborts a whole PostgreSQL transaction, and a batch goes on after
        // a taken entry ID: skip the conflicting row instead of failing on it.
        let sql = format!("{insert} ON CONFLICT (entry_id) DO NOTHING RETURNING id");
        let row = conn
            .fetch_optional(&sql, &args)
            .await
            .map_err(db_err("storing a registration entry"))?;
        match row {
            Some(row) => row
                .try_get::<i64, _>(0)
                .map_err(db_err("storing a registration entry"))?,
            None => return Err(taken()),
        }
    } else {
        conn.insert(&insert, &args).await.map_err(|e| {
            if is_unique_violation(&e) {
                taken()
            } else {
                db_err("storing a registration entry")(e)
            }
        })?
    };
    rows.add(row_id, &entry, bundle_rows, EntryMask::ALL);
    entry.revision_number = 0;
    entry.created_at = rounded_unix(t);
    Ok(entry)
}

/// Finds an entry with the same SPIFFE ID, parent ID and selector set.
pub(crate) async fn find_similar(
    conn: &mut Db<'_>,
    entry: &RegistrationEntry,
) -> Result<Option<RegistrationEntry>> {
    let mut w = Where::default();
    w.push("e.spiffe_id = ?", [Arg::Text(entry.spiffe_id.clone())]);
    w.push("e.parent_id = ?", [Arg::Text(entry.parent_id.clone())]);
    let wanted: BTreeSet<&Selector> = entry.selectors.iter().collect();
    // The common case is no candidate at all: check that with one indexed query before
    // loading candidates with their selectors.
    let any = conn
        .fetch_optional(
            "SELECT id FROM registered_entries e WHERE e.spiffe_id = ? AND e.parent_id = ? LIMIT 1",
            &w.args,
        )
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
    conn: &mut Db<'_>,
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
        let rows = conn
            .fetch_all(&sql, &args)
            .await
            .map_err(db_err("looking for similar entries"))?;
        for row in rows {
            let get = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
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

/// Loads the selectors, DNS names and federated trust domains of these entries (row IDs,
/// sorted) with one query per chunk: a `UNION ALL` of the three child tables, tagged by
/// kind, so a client/server engine pays one round trip instead of three. Each kind keeps
/// the order its own query had: selectors and DNS names by row ID, an entry's trust domains by
/// name.
async fn load_children(conn: &mut Db<'_>, ids: &[i64]) -> Result<Children> {
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
            "SELECT 's' AS kind, id AS ord, registered_entry_id, type, value FROM selectors \
             WHERE registered_entry_id {cond} \
             UNION ALL SELECT 'd', id, registered_entry_id, NULL, value FROM dns_names \
             WHERE registered_entry_id {cond} \
             UNION ALL SELECT 'f', f.registered_entry_id, f.registered_entry_id, NULL, b.trust_domain \
             FROM federated_registration_entries f JOIN bundles b ON b.id = f.bundle_id \
             WHERE f.registered_entry_id {cond} \
             ORDER BY kind, ord, value"
        );
        let all_args: Vec<Arg> = args.iter().chain(&args).chain(&args).cloned().collect();
        let rows = conn
            .fetch_all(&sql, &all_args)
            .await
            .map_err(db_err("reading entry selectors, DNS names and federation"))?;
        for row in rows {
            let read = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
                Ok((
                    row.try_get::<Option<String>, _>(0)?,
                    row.try_get::<i64, _>(2)?,
                    row.try_get::<Option<String>, _>(3)?,
                    row.try_get::<Option<String>, _>(4)?,
                ))
            };
            let (kind, id, kind_of_selector, value) =
                read(&row).map_err(db_err("reading entry children"))?;
            if !wanted(id) {
                continue;
            }
            let value = value.unwrap_or_default();
            match kind.as_deref() {
                Some("s") => children.selectors.entry(id).or_default().push(Selector {
                    kind: kind_of_selector.unwrap_or_default(),
                    value,
                }),
                Some("d") => children.dns.entry(id).or_default().push(value),
                _ => children.federates.entry(id).or_default().push(value),
            }
        }
    }
    Ok(children)
}

/// Runs an entry query and fills in every entry's children with bulk queries.
async fn select(conn: &mut Db<'_>, w: &Where, page: Page) -> Result<Vec<(i64, RegistrationEntry)>> {
    let mut args = w.args.clone();
    let sql = format!(
        "SELECT {} FROM registered_entries e{}{}",
        entry_columns(conn.dialect()),
        w.render(),
        page.order_limit("e.id", &mut args)
    );
    let rows = conn
        .fetch_all(&sql, &args)
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
    conn: &mut Db<'_>,
    entry_id: &str,
) -> Result<Option<(i64, RegistrationEntry)>> {
    let mut w = Where::default();
    w.push("e.entry_id = ?", [Arg::Text(entry_id.to_owned())]);
    Ok(select(conn, &w, Page::default()).await?.into_iter().next())
}

/// Fetches entries by entry ID, in row order; missing ones are left out.
pub(crate) async fn fetch_many(
    conn: &mut Db<'_>,
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
    // As upstream's datastore: `true` keeps downstream entries only, `false` (which upstream's
    // CLI sends in every `entry show` and `entry count`) filters nothing.
    if request.by_downstream == Some(true) {
        w.push("e.downstream = ?", [Arg::Bool(true)]);
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
    conn: &mut Db<'_>,
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
pub(crate) async fn count(conn: &mut Db<'_>, request: &ListEntriesRequest) -> Result<u64> {
    let w = filters(request)?;
    let sql = format!("SELECT COUNT(*) FROM registered_entries e{}", w.render());
    let row = conn
        .fetch_one(&sql, &w.args)
        .await
        .map_err(db_err("counting registration entries"))?;
    let n: i64 = row
        .try_get(0)
        .map_err(db_err("counting registration entries"))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Locks an entry's row until the transaction ends, so concurrent changes from several
/// servers apply one after the other (SQLite's write transactions are exclusive already).
async fn lock_row(conn: &mut Db<'_>, entry_id: &str) -> Result<()> {
    if conn.dialect() == Dialect::Sqlite {
        return Ok(());
    }
    conn.fetch_optional(
        "SELECT id FROM registered_entries WHERE entry_id = ? FOR UPDATE",
        &[Arg::Text(entry_id.to_owned())],
    )
    .await
    .map_err(db_err("locking a registration entry"))?;
    Ok(())
}

/// Updates the masked fields of an entry, bumping its revision, in the caller's transaction.
pub(crate) async fn update(
    conn: &mut Db<'_>,
    change: RegistrationEntry,
    mask: EntryMask,
) -> Result<RegistrationEntry> {
    lock_row(conn, &change.entry_id).await?;
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
    if mask.additional_attributes {
        entry.additional_attributes = change.additional_attributes;
    }
    validate(&entry)?;
    entry.revision_number += 1;

    conn.execute(
        "UPDATE registered_entries SET updated_at = ?, spiffe_id = ?, parent_id = ?, \
             ttl = ?, admin = ?, downstream = ?, expiry = ?, revision_number = ?, \
             store_svid = ?, hint = ?, jwt_svid_ttl = ?, additional_attributes = ? WHERE id = ?",
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
            encode_attributes(entry.additional_attributes),
            Arg::Int(row_id),
        ],
    )
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
        additional_attributes: false,
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

async fn delete_children(conn: &mut Db<'_>, row_id: i64, parts: EntryMask) -> Result<()> {
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
            conn.execute(sql, &[Arg::Int(row_id)])
                .await
                .map_err(db_err("removing entry details"))?;
        }
    }
    Ok(())
}

/// Deletes an entry by row ID with its children and records the event.
pub(crate) async fn delete_row(conn: &mut Db<'_>, row_id: i64, entry_id: &str) -> Result<()> {
    delete_children(conn, row_id, EntryMask::ALL).await?;
    conn.execute(
        "DELETE FROM registered_entries WHERE id = ?",
        &[Arg::Int(row_id)],
    )
    .await
    .map_err(db_err("deleting a registration entry"))?;
    insert_event(conn, entry_id).await
}

/// Deletes an entry and returns it, in the caller's transaction.
pub(crate) async fn delete(conn: &mut Db<'_>, entry_id: &str) -> Result<RegistrationEntry> {
    lock_row(conn, entry_id).await?;
    let Some((row_id, entry)) = fetch_row(conn, entry_id).await? else {
        return Err(DataStoreError::NotFound(format!(
            "registration entry {entry_id:?}"
        )));
    };
    delete_row(conn, row_id, entry_id).await?;
    Ok(entry)
}

/// Deletes entries that expired before `expires_before`, in the caller's transaction.
pub(crate) async fn prune(conn: &mut Db<'_>, expires_before: i64) -> Result<()> {
    let rows = conn
        .fetch_all(
            "SELECT id, entry_id FROM registered_entries WHERE expiry != 0 AND expiry < ?",
            &[Arg::Int(expires_before)],
        )
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
    conn: &mut Db<'_>,
    bundle_row: i64,
) -> Result<Vec<(i64, String)>> {
    let rows = conn
        .fetch_all(
            "SELECT e.id, e.entry_id FROM registered_entries e \
             JOIN federated_registration_entries f ON f.registered_entry_id = e.id \
             WHERE f.bundle_id = ? ORDER BY e.id",
            &[Arg::Int(bundle_row)],
        )
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
    conn: &mut Db<'_>,
    table: &str,
    column: &str,
    after: u64,
) -> Result<Vec<ChangeEvent>> {
    let sql = format!("SELECT id, {column} FROM {table} WHERE id > ? ORDER BY id");
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = conn
        .fetch_all(&sql, &[Arg::Int(after)])
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
pub(crate) async fn prune_events(conn: &mut Db<'_>, table: &str, older_than: i64) -> Result<()> {
    let sql = format!(
        "DELETE FROM {table} WHERE {} < ?",
        conn.dialect().epoch("created_at")
    );
    conn.execute(&sql, &[Arg::Int(older_than)])
        .await
        .map_err(db_err("pruning change events"))?;
    Ok(())
}
