//! Attested agents: `attested_node_entries`, their node selectors in
//! `node_resolver_map_entries`, and `attested_node_entries_events`.

use std::collections::HashMap;

use spire_core::selector::Selector;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::{
    Arg, Db, Dialect, db_err, get_bool, is_unique_violation, now, placeholders, unix_time,
};
use super::query::{Page, Related, Where, push_selector_match};
use crate::datastore::{AttestedNode, AttestedNodeMask, DataStoreError, ListNodesRequest, Result};

fn node_columns(d: Dialect) -> String {
    format!(
        "n.id, n.spiffe_id, n.data_type, n.serial_number, {} AS expires_unix, \
         n.new_serial_number, {} AS new_expires_unix, {} AS can_reattest, n.agent_version",
        d.epoch("n.expires_at"),
        d.epoch("n.new_expires_at"),
        d.bool_col("n.can_reattest")
    )
}

fn row_to_node(row: &AnyRow) -> Result<(i64, AttestedNode)> {
    let get = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
        let id: i64 = row.try_get(0)?;
        Ok((
            id,
            AttestedNode {
                spiffe_id: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                attestation_data_type: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                cert_serial_number: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                cert_not_after: row.try_get::<Option<i64>, _>(4)?.unwrap_or_default(),
                new_cert_serial_number: row.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
                new_cert_not_after: row.try_get::<Option<i64>, _>(6)?.unwrap_or_default(),
                selectors: Vec::new(),
                can_reattest: get_bool(row, 7)?,
                agent_version: row.try_get::<Option<String>, _>(8)?.unwrap_or_default(),
            },
        ))
    };
    get(row).map_err(db_err("reading an attested node"))
}

/// Records that an agent changed, in the caller's transaction.
pub(crate) async fn insert_event(conn: &mut Db<'_>, spiffe_id: &str) -> Result<()> {
    let t = now();
    conn.execute(
        "INSERT INTO attested_node_entries_events (created_at, updated_at, spiffe_id) \
             VALUES (?, ?, ?)",
        &[Arg::Time(t), Arg::Time(t), Arg::Text(spiffe_id.to_owned())],
    )
    .await
    .map_err(db_err("recording an agent event"))?;
    Ok(())
}

/// `new_expires_at` is NULL when there is no pending SVID, as upstream stores it.
fn nullable_time(secs: i64) -> Result<Arg> {
    if secs == 0 {
        Ok(Arg::NullTime)
    } else {
        Ok(Arg::Time(unix_time(secs)?))
    }
}

/// Inserts a new agent and its event, in the caller's transaction.
pub(crate) async fn create(conn: &mut Db<'_>, node: AttestedNode) -> Result<AttestedNode> {
    if node.spiffe_id.is_empty() {
        return Err(DataStoreError::InvalidArgument(
            "an attested node needs a SPIFFE ID".into(),
        ));
    }
    let t = now();
    conn.execute(
        "INSERT INTO attested_node_entries (created_at, updated_at, spiffe_id, data_type, \
             serial_number, expires_at, new_serial_number, new_expires_at, can_reattest, \
             agent_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Text(node.spiffe_id.clone()),
            Arg::Text(node.attestation_data_type.clone()),
            Arg::Text(node.cert_serial_number.clone()),
            Arg::Time(unix_time(node.cert_not_after)?),
            Arg::Text(node.new_cert_serial_number.clone()),
            nullable_time(node.new_cert_not_after)?,
            Arg::Bool(node.can_reattest),
            Arg::Text(node.agent_version.clone()),
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DataStoreError::AlreadyExists(format!("attested node {:?}", node.spiffe_id))
        } else {
            db_err("storing an attested node")(e)
        }
    })?;
    insert_event(conn, &node.spiffe_id).await?;
    Ok(node)
}

async fn load_selectors(
    conn: &mut Db<'_>,
    spiffe_ids: &[String],
    all: bool,
) -> Result<HashMap<String, Vec<Selector>>> {
    let mut out: HashMap<String, Vec<Selector>> = HashMap::new();
    let mut run = |rows: Vec<AnyRow>| -> Result<()> {
        for row in rows {
            let get = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
                Ok((
                    row.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                    row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                ))
            };
            let (id, kind, value) = get(&row).map_err(db_err("reading node selectors"))?;
            out.entry(id).or_default().push(Selector { kind, value });
        }
        Ok(())
    };
    if all {
        let rows = conn
            .fetch_all(
                "SELECT spiffe_id, type, value FROM node_resolver_map_entries ORDER BY id",
                &[],
            )
            .await
            .map_err(db_err("reading node selectors"))?;
        run(rows)?;
    } else {
        for chunk in spiffe_ids.chunks(500) {
            let sql = format!(
                "SELECT spiffe_id, type, value FROM node_resolver_map_entries \
                 WHERE spiffe_id IN ({}) ORDER BY id",
                placeholders(chunk.len())
            );
            let args: Vec<Arg> = chunk.iter().map(|s| Arg::Text(s.clone())).collect();
            let rows = conn
                .fetch_all(&sql, &args)
                .await
                .map_err(db_err("reading node selectors"))?;
            run(rows)?;
        }
    }
    Ok(out)
}

/// The node selectors of one agent.
pub(crate) async fn get_selectors(conn: &mut Db<'_>, spiffe_id: &str) -> Result<Vec<Selector>> {
    Ok(load_selectors(conn, &[spiffe_id.to_owned()], false)
        .await?
        .remove(spiffe_id)
        .unwrap_or_default())
}

/// Replaces an agent's node selectors and records an event, in the caller's transaction.
pub(crate) async fn set_selectors(
    conn: &mut Db<'_>,
    spiffe_id: &str,
    selectors: &[Selector],
) -> Result<()> {
    if spiffe_id.is_empty() {
        return Err(DataStoreError::InvalidArgument(
            "setting node selectors needs the agent's SPIFFE ID".into(),
        ));
    }
    conn.execute(
        "DELETE FROM node_resolver_map_entries WHERE spiffe_id = ?",
        &[Arg::Text(spiffe_id.to_owned())],
    )
    .await
    .map_err(db_err("replacing node selectors"))?;
    let t = now();
    let mut seen = std::collections::BTreeSet::new();
    for s in selectors.iter().filter(|s| seen.insert((*s).clone())) {
        conn.execute(
            "INSERT INTO node_resolver_map_entries (created_at, updated_at, spiffe_id, type, \
                 value) VALUES (?, ?, ?, ?, ?)",
            &[
                Arg::Time(t),
                Arg::Time(t),
                Arg::Text(spiffe_id.to_owned()),
                Arg::Text(s.kind.clone()),
                Arg::Text(s.value.clone()),
            ],
        )
        .await
        .map_err(db_err("storing node selectors"))?;
    }
    insert_event(conn, spiffe_id).await
}

fn filters(d: Dialect, request: &ListNodesRequest) -> Result<Where> {
    let mut w = Where::default();
    if let Some(kind) = &request.by_attestation_type {
        w.push("n.data_type = ?", [Arg::Text(kind.clone())]);
    }
    if let Some(banned) = request.by_banned {
        // Upstream marks a banned agent by an empty serial number.
        if banned {
            w.push("(n.serial_number = '' OR n.serial_number IS NULL)", []);
        } else {
            w.push("n.serial_number <> ''", []);
        }
    }
    if let Some(before) = request.by_expires_before {
        w.push(
            format!("{} < ?", d.epoch("n.expires_at")),
            [Arg::Int(before)],
        );
    }
    if let Some(can) = request.by_can_reattest {
        w.push("n.can_reattest = ?", [Arg::Bool(can)]);
    }
    if let Some((selectors, mode)) = &request.by_selectors {
        let related = Related {
            owner: "n.spiffe_id",
            from: "node_resolver_map_entries s",
            table: "node_resolver_map_entries",
            key: "spiffe_id",
        };
        push_selector_match(&mut w, &related, selectors, *mode)?;
    }
    Ok(w)
}

async fn select(
    conn: &mut Db<'_>,
    w: &Where,
    page: Page,
    fetch_selectors: bool,
) -> Result<Vec<(i64, AttestedNode)>> {
    let mut args = w.args.clone();
    let sql = format!(
        "SELECT {} FROM attested_node_entries n{}{}",
        node_columns(conn.dialect()),
        w.render(),
        page.order_limit("n.id", &mut args)
    );
    let rows = conn
        .fetch_all(&sql, &args)
        .await
        .map_err(db_err("listing attested nodes"))?;
    let mut nodes = rows.iter().map(row_to_node).collect::<Result<Vec<_>>>()?;
    if fetch_selectors && !nodes.is_empty() {
        let ids: Vec<String> = nodes.iter().map(|(_, n)| n.spiffe_id.clone()).collect();
        // Reading the whole selector table is cheaper than many IN lists for big pages.
        let all = ids.len() > 5_000;
        let mut selectors = load_selectors(conn, &ids, all).await?;
        for (_, node) in &mut nodes {
            node.selectors = selectors.remove(&node.spiffe_id).unwrap_or_default();
        }
    }
    Ok(nodes)
}

/// Fetches one agent with its selectors.
pub(crate) async fn fetch(conn: &mut Db<'_>, spiffe_id: &str) -> Result<Option<AttestedNode>> {
    let mut w = Where::default();
    w.push("n.spiffe_id = ?", [Arg::Text(spiffe_id.to_owned())]);
    Ok(select(conn, &w, Page::default(), true)
        .await?
        .into_iter()
        .next()
        .map(|(_, n)| n))
}

/// Lists agents; returns the page and the next token.
pub(crate) async fn list(
    conn: &mut Db<'_>,
    request: &ListNodesRequest,
) -> Result<(Vec<AttestedNode>, String)> {
    let mut w = filters(conn.dialect(), request)?;
    let page = Page::from_request(request.pagination.as_ref())?;
    page.push(&mut w, "n.id");
    let rows = select(conn, &w, page, request.fetch_selectors).await?;
    let token = page.next_token(rows.len(), rows.last().map(|(id, _)| *id));
    Ok((rows.into_iter().map(|(_, n)| n).collect(), token))
}

/// Counts agents matching the filters.
pub(crate) async fn count(conn: &mut Db<'_>, request: &ListNodesRequest) -> Result<u64> {
    let w = filters(conn.dialect(), request)?;
    let sql = format!("SELECT COUNT(*) FROM attested_node_entries n{}", w.render());
    let row = conn
        .fetch_one(&sql, &w.args)
        .await
        .map_err(db_err("counting attested nodes"))?;
    let n: i64 = row.try_get(0).map_err(db_err("counting attested nodes"))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Locks an agent's row until the transaction ends, so concurrent changes from several
/// servers apply one after the other (SQLite's write transactions are exclusive already).
async fn lock_row(conn: &mut Db<'_>, spiffe_id: &str) -> Result<()> {
    if conn.dialect() == Dialect::Sqlite {
        return Ok(());
    }
    conn.fetch_optional(
        "SELECT id FROM attested_node_entries WHERE spiffe_id = ? FOR UPDATE",
        &[Arg::Text(spiffe_id.to_owned())],
    )
    .await
    .map_err(db_err("locking an attested node"))?;
    Ok(())
}

/// Updates the masked fields of an agent, in the caller's transaction.
pub(crate) async fn update(
    conn: &mut Db<'_>,
    change: AttestedNode,
    mask: AttestedNodeMask,
) -> Result<AttestedNode> {
    lock_row(conn, &change.spiffe_id).await?;
    let Some(mut node) = fetch(conn, &change.spiffe_id).await? else {
        return Err(DataStoreError::NotFound(format!(
            "attested node {:?}",
            change.spiffe_id
        )));
    };
    if mask.cert_serial_number {
        node.cert_serial_number = change.cert_serial_number;
    }
    if mask.cert_not_after {
        node.cert_not_after = change.cert_not_after;
    }
    if mask.new_cert_serial_number {
        node.new_cert_serial_number = change.new_cert_serial_number;
    }
    if mask.new_cert_not_after {
        node.new_cert_not_after = change.new_cert_not_after;
    }
    if mask.can_reattest {
        node.can_reattest = change.can_reattest;
    }
    if mask.agent_version {
        node.agent_version = change.agent_version;
    }
    conn.execute(
        "UPDATE attested_node_entries SET updated_at = ?, serial_number = ?, expires_at = ?, \
             new_serial_number = ?, new_expires_at = ?, can_reattest = ?, agent_version = ? \
             WHERE spiffe_id = ?",
        &[
            Arg::Time(now()),
            Arg::Text(node.cert_serial_number.clone()),
            Arg::Time(unix_time(node.cert_not_after)?),
            Arg::Text(node.new_cert_serial_number.clone()),
            nullable_time(node.new_cert_not_after)?,
            Arg::Bool(node.can_reattest),
            Arg::Text(node.agent_version.clone()),
            Arg::Text(node.spiffe_id.clone()),
        ],
    )
    .await
    .map_err(db_err("updating an attested node"))?;
    insert_event(conn, &node.spiffe_id).await?;
    Ok(node)
}

/// Deletes an agent and its node selectors, in the caller's transaction.
pub(crate) async fn delete(conn: &mut Db<'_>, spiffe_id: &str) -> Result<AttestedNode> {
    lock_row(conn, spiffe_id).await?;
    let Some(node) = fetch(conn, spiffe_id).await? else {
        return Err(DataStoreError::NotFound(format!(
            "attested node {spiffe_id:?}"
        )));
    };
    conn.execute(
        "DELETE FROM node_resolver_map_entries WHERE spiffe_id = ?",
        &[Arg::Text(spiffe_id.to_owned())],
    )
    .await
    .map_err(db_err("deleting node selectors"))?;
    conn.execute(
        "DELETE FROM attested_node_entries WHERE spiffe_id = ?",
        &[Arg::Text(spiffe_id.to_owned())],
    )
    .await
    .map_err(db_err("deleting an attested node"))?;
    insert_event(conn, spiffe_id).await?;
    Ok(node)
}
