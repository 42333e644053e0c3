//! Join tokens (`join_tokens`) and CA journals (`ca_journals`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::{Arg, Db, db_err, is_unique_violation, now};
use crate::datastore::{CaJournal, DataStoreError, JoinToken, Result};

/// Stores a join token.
pub(crate) async fn create_token(conn: &mut Db<'_>, token: &JoinToken) -> Result<()> {
    if token.token.is_empty() || token.expiry == 0 {
        return Err(DataStoreError::InvalidArgument(
            "a join token needs a value and an expiry".into(),
        ));
    }
    let t = now();
    conn.execute(
        "INSERT INTO join_tokens (created_at, updated_at, token, expiry) VALUES (?, ?, ?, ?)",
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Text(token.token.clone()),
            Arg::Int(token.expiry),
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            // Never echo the secret itself.
            DataStoreError::AlreadyExists("join token".into())
        } else {
            db_err("storing a join token")(e)
        }
    })?;
    Ok(())
}

/// Fetches a join token without consuming it.
pub(crate) async fn fetch_token(conn: &mut Db<'_>, token: &str) -> Result<Option<JoinToken>> {
    let row = conn
        .fetch_optional(
            "SELECT expiry FROM join_tokens WHERE token = ?",
            &[Arg::Text(token.to_owned())],
        )
        .await
        .map_err(db_err("reading a join token"))?;
    match row {
        Some(row) => {
            let expiry: Option<i64> = row.try_get(0).map_err(db_err("reading a join token"))?;
            Ok(Some(JoinToken {
                token: token.to_owned(),
                expiry: expiry.unwrap_or_default(),
            }))
        }
        None => Ok(None),
    }
}

/// Deletes a join token; `Some` only for the caller whose DELETE removed the row.
pub(crate) async fn take_token(conn: &mut Db<'_>, token: &str) -> Result<Option<JoinToken>> {
    let Some(found) = fetch_token(conn, token).await? else {
        return Ok(None);
    };
    let result = conn
        .execute(
            "DELETE FROM join_tokens WHERE token = ?",
            &[Arg::Text(token.to_owned())],
        )
        .await
        .map_err(db_err("consuming a join token"))?;
    Ok((result.rows_affected() == 1).then_some(found))
}

/// Deletes tokens that expired before `expires_before`.
pub(crate) async fn prune_tokens(conn: &mut Db<'_>, expires_before: i64) -> Result<()> {
    conn.execute(
        "DELETE FROM join_tokens WHERE expiry < ?",
        &[Arg::Int(expires_before)],
    )
    .await
    .map_err(db_err("pruning join tokens"))?;
    Ok(())
}

fn row_to_journal(row: &AnyRow) -> Result<CaJournal> {
    let get = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
        let id: i64 = row.try_get(0)?;
        Ok(CaJournal {
            id: u32::try_from(id).unwrap_or_default(),
            data: row.try_get::<Option<Vec<u8>>, _>(1)?.unwrap_or_default(),
            active_x509_authority_id: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            active_jwt_authority_id: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        })
    };
    get(row).map_err(db_err("reading a CA journal"))
}

const JOURNAL_COLUMNS: &str = "id, data, active_x509_authority_id, active_jwt_authority_id";

/// Inserts (ID 0) or updates a journal.
pub(crate) async fn set_journal(conn: &mut Db<'_>, mut journal: CaJournal) -> Result<CaJournal> {
    let t = now();
    if journal.id == 0 {
        let id = conn
            .insert(
                "INSERT INTO ca_journals (created_at, updated_at, data, active_x509_authority_id, \
                 active_jwt_authority_id) VALUES (?, ?, ?, ?, ?)",
                &[
                    Arg::Time(t),
                    Arg::Time(t),
                    Arg::Blob(journal.data.clone()),
                    Arg::Text(journal.active_x509_authority_id.clone()),
                    Arg::Text(journal.active_jwt_authority_id.clone()),
                ],
            )
            .await
            .map_err(db_err("storing a CA journal"))?;
        journal.id = u32::try_from(id).map_err(|_| {
            DataStoreError::Internal("CA journal row ID does not fit 32 bits".into())
        })?;
        return Ok(journal);
    }
    let result = conn
        .execute(
            "UPDATE ca_journals SET updated_at = ?, data = ?, active_x509_authority_id = ?, \
             active_jwt_authority_id = ? WHERE id = ?",
            &[
                Arg::Time(t),
                Arg::Blob(journal.data.clone()),
                Arg::Text(journal.active_x509_authority_id.clone()),
                Arg::Text(journal.active_jwt_authority_id.clone()),
                Arg::Int(i64::from(journal.id)),
            ],
        )
        .await
        .map_err(db_err("updating a CA journal"))?;
    if result.rows_affected() == 0 {
        return Err(DataStoreError::NotFound(format!(
            "CA journal {}",
            journal.id
        )));
    }
    Ok(journal)
}

/// Fetches a journal by row ID.
pub(crate) async fn fetch_journal(conn: &mut Db<'_>, id: u32) -> Result<Option<CaJournal>> {
    let sql = format!("SELECT {JOURNAL_COLUMNS} FROM ca_journals WHERE id = ?");
    let row = conn
        .fetch_optional(&sql, &[Arg::Int(i64::from(id))])
        .await
        .map_err(db_err("reading a CA journal"))?;
    row.as_ref().map(row_to_journal).transpose()
}

/// Finds the journal whose active X.509 authority is this one.
pub(crate) async fn find_journal(
    conn: &mut Db<'_>,
    active_x509_authority_id: &str,
) -> Result<Option<CaJournal>> {
    let sql = format!(
        "SELECT {JOURNAL_COLUMNS} FROM ca_journals WHERE active_x509_authority_id = ? \
         ORDER BY id LIMIT 1"
    );
    let row = conn
        .fetch_optional(&sql, &[Arg::Text(active_x509_authority_id.to_owned())])
        .await
        .map_err(db_err("finding a CA journal"))?;
    row.as_ref().map(row_to_journal).transpose()
}

/// Every journal, by row ID.
pub(crate) async fn list_journals(conn: &mut Db<'_>) -> Result<Vec<CaJournal>> {
    let sql = format!("SELECT {JOURNAL_COLUMNS} FROM ca_journals ORDER BY id");
    let rows = conn
        .fetch_all(&sql, &[])
        .await
        .map_err(db_err("listing CA journals"))?;
    rows.iter().map(row_to_journal).collect()
}
