//! A bundle without JWT authorities behind the server's admin socket: a running server
//! reads its bundle from the datastore on every `GetBundle`, so taking the JWT keys out of
//! the stored `spire.common.Bundle` (SQLite `bundles.data`) is what `server_api` sources see.
//! No API removes the active JWT authority, so the test edits the row as an operator could.

use std::path::Path;

/// Removes every JWT authority (field 3, `jwt_signing_keys`) from `trust_domain_id`'s
/// bundle in the SQLite datastore at `database`, the server still running.
pub(crate) fn strip_jwt_authorities(database: &Path, trust_domain_id: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}?mode=rw", database.display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let (data,): (Vec<u8>,) = sqlx::query_as("SELECT data FROM bundles WHERE trust_domain = ?")
            .bind(trust_domain_id)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("no bundle for {trust_domain_id}: {e}"));
        let stripped = without_field(&data, 3);
        assert!(
            stripped.len() < data.len(),
            "the bundle had JWT authorities"
        );
        sqlx::query("UPDATE bundles SET data = ? WHERE trust_domain = ?")
            .bind(stripped)
            .bind(trust_domain_id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}

/// `message` (protobuf wire format) without the top-level fields numbered `field`.
fn without_field(message: &[u8], field: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut i = 0;
    while i < message.len() {
        let start = i;
        let key = varint(message, &mut i);
        let skip = match key & 7 {
            0 => {
                varint(message, &mut i);
                0
            }
            1 => 8,
            2 => usize::try_from(varint(message, &mut i)).unwrap(),
            5 => 4,
            wire => panic!("unexpected wire type {wire} in a stored bundle"),
        };
        i += skip;
        if key >> 3 != field {
            out.extend_from_slice(&message[start..i]);
        }
    }
    out
}

fn varint(message: &[u8], i: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = message[*i];
        *i += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long in a stored bundle")
}
