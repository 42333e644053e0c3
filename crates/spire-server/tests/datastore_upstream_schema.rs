//! Drop-in compatibility of the SQL datastore with upstream SPIRE's database.
//!
//! The DDL below is schema version 23 as upstream SPIRE (1.8 through 1.14) creates it on SQLite
//! through gorm v1 (facts from upstream `pkg/server/datastore/sqlstore/models.go`,
//! `migration.go` and the v23 dump its migration test keeps). Rows are written with raw SQL in
//! the formats upstream's driver uses (times as `2006-01-02 15:04:05.999999999-07:00` text in the
//! server's local zone, booleans as 0/1, bundles as `spire.common.Bundle` protobuf). The store
//! must open such a database without changing it and read every row back correctly, and a
//! database it creates must have exactly the same tables, columns and indexes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::path::Path;

use spire_core::selector::{Selector, SelectorMatch};
use spire_proto::spire::api::types::federation_relationship::BundleEndpointProfile;
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::datastore::{DataStore, ListEntriesRequest, ListNodesRequest, RegistrationEntry};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, raw_sql};

/// Upstream's schema 23 on SQLite, table by table and index by index.
const UPSTREAM_V23_DDL: &str = r#"
CREATE TABLE "federated_registration_entries" ("bundle_id" integer,"registered_entry_id" integer, PRIMARY KEY ("bundle_id","registered_entry_id"));
CREATE TABLE "bundles" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"trust_domain" varchar(255) NOT NULL,"data" blob );
CREATE TABLE "attested_node_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255),"data_type" varchar(255),"serial_number" varchar(255),"expires_at" datetime,"new_serial_number" varchar(255),"new_expires_at" datetime,"can_reattest" bool );
CREATE TABLE "attested_node_entries_events" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255) );
CREATE TABLE "node_resolver_map_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"spiffe_id" varchar(255),"type" varchar(255),"value" varchar(255) );
CREATE TABLE "registered_entries" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"entry_id" varchar(255),"spiffe_id" varchar(255),"parent_id" varchar(255),"ttl" integer,"admin" bool,"downstream" bool,"expiry" bigint,"revision_number" bigint,"store_svid" bool,"hint" varchar(255),"jwt_svid_ttl" integer );
CREATE TABLE "registered_entries_events" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"entry_id" varchar(255) );
CREATE TABLE "join_tokens" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"token" varchar(255),"expiry" bigint );
CREATE TABLE "selectors" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"registered_entry_id" integer,"type" varchar(255),"value" varchar(255) );
CREATE TABLE "migrations" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"version" integer,"code_version" varchar(255) );
CREATE TABLE "dns_names" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"registered_entry_id" integer,"value" varchar(255) );
CREATE TABLE "federated_trust_domains" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"trust_domain" varchar(255) NOT NULL,"bundle_endpoint_url" varchar(255),"bundle_endpoint_profile" varchar(255),"endpoint_spiffe_id" varchar(255),"implicit" bool );
CREATE TABLE "ca_journals" ("id" integer primary key autoincrement,"created_at" datetime,"updated_at" datetime,"data" blob,"active_x509_authority_id" varchar(255),"active_jwt_authority_id" varchar(255) );
CREATE UNIQUE INDEX uix_bundles_trust_domain ON "bundles"(trust_domain) ;
CREATE INDEX idx_attested_node_entries_expires_at ON "attested_node_entries"(expires_at) ;
CREATE UNIQUE INDEX uix_attested_node_entries_spiffe_id ON "attested_node_entries"(spiffe_id) ;
CREATE UNIQUE INDEX idx_node_resolver_map ON "node_resolver_map_entries"(spiffe_id, "type", "value") ;
CREATE INDEX idx_registered_entries_spiffe_id ON "registered_entries"(spiffe_id) ;
CREATE INDEX idx_registered_entries_parent_id ON "registered_entries"(parent_id) ;
CREATE INDEX idx_registered_entries_expiry ON "registered_entries"("expiry") ;
CREATE INDEX idx_registered_entries_hint ON "registered_entries"("hint") ;
CREATE UNIQUE INDEX uix_registered_entries_entry_id ON "registered_entries"(entry_id) ;
CREATE UNIQUE INDEX uix_join_tokens_token ON "join_tokens"("token") ;
CREATE INDEX idx_selectors_type_value ON "selectors"("type", "value") ;
CREATE UNIQUE INDEX idx_selector_entry ON "selectors"(registered_entry_id, "type", "value") ;
CREATE UNIQUE INDEX idx_dns_entry ON "dns_names"(registered_entry_id, "value") ;
CREATE UNIQUE INDEX uix_federated_trust_domains_trust_domain ON "federated_trust_domains"(trust_domain) ;
CREATE INDEX idx_ca_journals_active_x509_authority_id ON "ca_journals"(active_x509_authority_id) ;
CREATE INDEX idx_ca_journals_active_jwt_authority_id ON "ca_journals"(active_jwt_authority_id) ;
CREATE INDEX idx_federated_registration_entries_registered_entry_id ON "federated_registration_entries"(registered_entry_id) ;
"#;

// ---- a minimal protobuf writer, so the blob's field numbers are checked independently ----

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn field_bytes(tag: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(tag << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn field_varint(tag: u64, v: u64, out: &mut Vec<u8>) {
    varint(tag << 3, out);
    varint(v, out);
}

/// `spire.common.Bundle` for spiffe://example.org: one tainted root CA, one JWT key, refresh
/// hint 300, sequence number 7.
fn upstream_bundle_blob(td_id: &str) -> Vec<u8> {
    let mut cert = Vec::new();
    field_bytes(1, b"fake-der-root", &mut cert);
    field_varint(2, 1, &mut cert); // tainted_key
    let mut key = Vec::new();
    field_bytes(1, b"fake-pkix", &mut key);
    field_bytes(2, b"kid-1", &mut key);
    field_varint(3, 1_900_000_000, &mut key);
    let mut blob = Vec::new();
    field_bytes(1, td_id.as_bytes(), &mut blob);
    field_bytes(2, &cert, &mut blob);
    field_bytes(3, &key, &mut blob);
    field_varint(4, 300, &mut blob);
    field_varint(5, 7, &mut blob);
    blob
}

const T: &str = "'2024-05-01 10:00:00.123456-03:00'";

async fn raw_pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// Builds a database as upstream SPIRE 1.13 would have left it.
async fn build_upstream_db(path: &Path, version: i64) {
    let pool = raw_pool(path).await;
    raw_sql(sqlx::AssertSqlSafe(UPSTREAM_V23_DDL))
        .execute(&pool)
        .await
        .unwrap();
    let rows = format!(
        r#"
        INSERT INTO migrations VALUES(1,{T},{T},{version},'1.13.2');
        INSERT INTO registered_entries VALUES(1,{T},{T},'entry-1','spiffe://example.org/web','spiffe://example.org/spire/agent/x509pop/abc',3600,1,0,1900000000,4,1,'web-hint',300);
        INSERT INTO registered_entries VALUES(2,{T},{T},'entry-2','spiffe://example.org/db','spiffe://example.org/spire/agent/x509pop/abc',0,0,1,0,0,0,'',0);
        INSERT INTO selectors VALUES(1,{T},{T},1,'unix','uid:1000');
        INSERT INTO selectors VALUES(2,{T},{T},1,'unix','gid:1000');
        INSERT INTO selectors VALUES(3,{T},{T},2,'unix','uid:2000');
        INSERT INTO dns_names VALUES(1,{T},{T},1,'web.example.org');
        INSERT INTO federated_registration_entries VALUES(2,1);
        INSERT INTO registered_entries_events VALUES(1,{T},{T},'entry-1');
        INSERT INTO registered_entries_events VALUES(2,{T},{T},'entry-2');
        INSERT INTO attested_node_entries VALUES(1,{T},{T},'spiffe://example.org/spire/agent/x509pop/abc','x509pop','1234','2030-01-01 00:00:00-03:00','',NULL,1);
        INSERT INTO node_resolver_map_entries VALUES(1,{T},{T},'spiffe://example.org/spire/agent/x509pop/abc','x509pop','subject:cn:abc');
        INSERT INTO attested_node_entries_events VALUES(1,{T},{T},'spiffe://example.org/spire/agent/x509pop/abc');
        INSERT INTO join_tokens VALUES(1,{T},{T},'upstream-token',1900000000);
        INSERT INTO ca_journals VALUES(1,{T},{T},X'0a0b0c','skid-hex','jwt-kid');
        INSERT INTO federated_trust_domains VALUES(1,{T},{T},'fed.org','https://fed.org/bundle','https_spiffe','spiffe://fed.org/spire/server',0);
        "#
    );
    raw_sql(sqlx::AssertSqlSafe(rows))
        .execute(&pool)
        .await
        .unwrap();
    for (id, td) in [(1, "spiffe://example.org"), (2, "spiffe://fed.org")] {
        sqlx::query(
            "INSERT INTO bundles (id, created_at, updated_at, trust_domain, data) \
             VALUES (?, '2024-05-01 10:00:00-03:00', '2024-05-01 10:00:00-03:00', ?, ?)",
        )
        .bind(id)
        .bind(td)
        .bind(upstream_bundle_blob(td))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

/// Everything that identifies the database's schema and contents.
async fn snapshot(path: &Path) -> Vec<String> {
    let pool = raw_pool(path).await;
    let mut out = Vec::new();
    let rows = sqlx::query("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .fetch_all(&pool)
        .await
        .unwrap();
    for row in rows {
        let (kind, name, sql): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        out.push(format!("{kind} {name}: {}", sql.unwrap_or_default()));
    }
    let tables = [
        "migrations",
        "registered_entries",
        "selectors",
        "dns_names",
        "bundles",
        "attested_node_entries",
        "join_tokens",
        "ca_journals",
    ];
    for table in tables {
        let sql = format!("SELECT * FROM {table} ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .unwrap();
        out.push(format!("{table}: {} rows", rows.len()));
    }
    let rows = sqlx::query("SELECT id, version, code_version, updated_at FROM migrations")
        .fetch_all(&pool)
        .await
        .unwrap();
    for row in rows {
        let (id, v, cv, at): (i64, i64, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        out.push(format!("migration {id} {v} {cv} {at}"));
    }
    pool.close().await;
    out
}

/// Table -> columns (name, declared type, not null, primary key position), and indexes with
/// their uniqueness and columns.
async fn schema_shape(path: &Path) -> BTreeMap<String, Vec<String>> {
    let pool = raw_pool(path).await;
    let mut shape = BTreeMap::new();
    let tables = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in tables {
        let table: String = t.get(0);
        let mut cols = Vec::new();
        let info = sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA table_info(\"{table}\")"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        for c in info {
            let (name, ty, notnull, pk): (String, String, i64, i64) =
                (c.get("name"), c.get("type"), c.get("notnull"), c.get("pk"));
            cols.push(format!(
                "{name} {} notnull={notnull} pk={pk}",
                ty.to_lowercase()
            ));
        }
        let indexes = sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA index_list(\"{table}\")"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        for i in indexes {
            let (name, unique): (String, i64) = (i.get("name"), i.get("unique"));
            let info = sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA index_info(\"{name}\")"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            let columns: Vec<String> = info.iter().map(|r| r.get::<String, _>("name")).collect();
            cols.push(format!(
                "index {name} unique={unique} ({})",
                columns.join(",")
            ));
        }
        cols.sort();
        shape.insert(table, cols);
    }
    pool.close().await;
    shape
}

fn config(path: &Path) -> SqlConfig {
    SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: format!("file:{}", path.display()),
        max_open_conns: Some(4),
        disable_migration: false,
    }
}

#[tokio::test]
async fn opens_an_upstream_database_unchanged_and_reads_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite3");
    build_upstream_db(&path, 23).await;
    let before = snapshot(&path).await;

    let ds = SqlDataStore::open(&config(&path)).await.unwrap();
    assert!(!ds.created_schema());

    // Bundles: protobuf blob decoded, trust domain as a bare name.
    let b = ds.fetch_bundle("example.org").await.unwrap().unwrap();
    assert_eq!(b.trust_domain, "example.org");
    assert_eq!(b.x509_authorities.len(), 1);
    assert_eq!(b.x509_authorities[0].asn1, b"fake-der-root");
    assert!(b.x509_authorities[0].tainted);
    assert_eq!(b.jwt_authorities[0].key_id, "kid-1");
    assert_eq!(b.jwt_authorities[0].public_key, b"fake-pkix");
    assert_eq!(b.jwt_authorities[0].expires_at, 1_900_000_000);
    assert!(!b.jwt_authorities[0].tainted);
    assert_eq!(b.refresh_hint, 300);
    assert_eq!(b.sequence_number, 7);
    assert_eq!(ds.count_bundles().await.unwrap(), 2);

    // Entries with selectors, DNS names, federation and every column.
    let e = ds
        .fetch_registration_entry("entry-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e,
        RegistrationEntry {
            entry_id: "entry-1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/spire/agent/x509pop/abc".into(),
            selectors: vec![
                Selector::parse("unix:uid:1000").unwrap(),
                Selector::parse("unix:gid:1000").unwrap()
            ],
            x509_svid_ttl: 3600,
            jwt_svid_ttl: 300,
            federates_with: vec!["spiffe://fed.org".into()],
            admin: true,
            downstream: false,
            entry_expiry: 1_900_000_000,
            dns_names: vec!["web.example.org".into()],
            revision_number: 4,
            store_svid: true,
            hint: "web-hint".into(),
            // 2024-05-01 10:00:00 at -03:00 is 13:00 UTC.
            created_at: 1_714_568_400,
        }
    );
    let req = ListEntriesRequest {
        by_selectors: Some((
            vec![Selector::parse("unix:uid:2000").unwrap()],
            SelectorMatch::Exact,
        )),
        ..ListEntriesRequest::default()
    };
    let (found, _) = ds.list_registration_entries(&req).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].entry_id, "entry-2");
    assert!(found[0].downstream);
    let events = ds.list_registration_entry_events(0).await.unwrap();
    assert_eq!(events.len(), 2);

    // Agents: datetime text with a zone offset becomes Unix seconds; NULL means none.
    let node = ds
        .fetch_attested_node("spiffe://example.org/spire/agent/x509pop/abc")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.attestation_data_type, "x509pop");
    assert_eq!(node.cert_serial_number, "1234");
    assert_eq!(node.cert_not_after, 1_893_466_800);
    assert_eq!(node.new_cert_not_after, 0);
    assert!(node.can_reattest);
    assert_eq!(
        node.selectors,
        vec![Selector::parse("x509pop:subject:cn:abc").unwrap()]
    );
    let expiring = ListNodesRequest {
        by_expires_before: Some(1_893_466_801),
        ..ListNodesRequest::default()
    };
    assert_eq!(ds.count_attested_nodes(&expiring).await.unwrap(), 1);
    let not_yet = ListNodesRequest {
        by_expires_before: Some(1_893_466_800),
        ..ListNodesRequest::default()
    };
    assert_eq!(
        ds.count_attested_nodes(&not_yet).await.unwrap(),
        0,
        "zone offset honoured"
    );

    // Join tokens, CA journals, federation relationships.
    let tok = ds
        .fetch_join_token("upstream-token")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tok.expiry, 1_900_000_000);
    let j = ds.find_ca_journal("skid-hex").await.unwrap().unwrap();
    assert_eq!((j.id, j.data.as_slice()), (1, &[0x0a, 0x0b, 0x0c][..]));
    assert_eq!(j.active_jwt_authority_id, "jwt-kid");
    let fr = ds
        .fetch_federation_relationship("fed.org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fr.bundle_endpoint_url, "https://fed.org/bundle");
    match fr.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsSpiffe(p)) => {
            assert_eq!(p.endpoint_spiffe_id, "spiffe://fed.org/spire/server");
        }
        other => panic!("unexpected profile {other:?}"),
    }
    assert_eq!(fr.trust_domain_bundle.unwrap().trust_domain, "fed.org");

    ds.close().await;
    drop(ds);
    assert_eq!(
        snapshot(&path).await,
        before,
        "opening and reading changed nothing"
    );

    // Writes land in upstream's columns, readable by upstream's model.
    let ds = SqlDataStore::open(&config(&path)).await.unwrap();
    let mut new = RegistrationEntry {
        spiffe_id: "spiffe://example.org/new".into(),
        parent_id: "spiffe://example.org/spire/agent/x509pop/abc".into(),
        selectors: vec![Selector::parse("unix:uid:3000").unwrap()],
        x509_svid_ttl: 120,
        jwt_svid_ttl: 60,
        hint: "h".into(),
        ..RegistrationEntry::default()
    };
    new.federates_with = vec!["spiffe://fed.org".into()];
    let created = ds.create_registration_entry(new).await.unwrap();
    ds.close().await;
    let pool = raw_pool(&path).await;
    let row = sqlx::query(
        "SELECT e.ttl, e.jwt_svid_ttl, e.hint, e.revision_number, b.trust_domain, \
         strftime('%s', e.created_at) IS NOT NULL FROM registered_entries e \
         JOIN federated_registration_entries f ON f.registered_entry_id = e.id \
         JOIN bundles b ON b.id = f.bundle_id WHERE e.entry_id = ?",
    )
    .bind(&created.entry_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let (ttl, jwt, hint, rev, td, time_ok): (i64, i64, String, i64, String, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!((ttl, jwt, hint.as_str(), rev), (120, 60, "h", 0));
    assert_eq!(td, "spiffe://fed.org");
    assert!(
        time_ok,
        "created_at is a datetime SQLite (and Go) can parse"
    );
    let events: i64 =
        sqlx::query("SELECT COUNT(*) FROM registered_entries_events WHERE entry_id = ?")
            .bind(&created.entry_id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(events, 1);
    pool.close().await;
}

#[tokio::test]
async fn a_database_we_create_has_upstreams_exact_schema() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = dir.path().join("upstream.sqlite3");
    build_upstream_db(&upstream, 23).await;
    let ours = dir.path().join("ours.sqlite3");
    let ds = SqlDataStore::open(&config(&ours)).await.unwrap();
    assert!(ds.created_schema());
    ds.close().await;

    let theirs = schema_shape(&upstream).await;
    let mine = schema_shape(&ours).await;
    assert_eq!(
        theirs.keys().collect::<Vec<_>>(),
        mine.keys().collect::<Vec<_>>(),
        "same tables"
    );
    for (table, columns) in &theirs {
        assert_eq!(Some(columns), mine.get(table), "table {table}");
    }

    let pool = raw_pool(&ours).await;
    let row = sqlx::query("SELECT version, code_version FROM migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (version, code): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(version, 23);
    assert_eq!(code, "1.14.0");
    pool.close().await;
}

#[tokio::test]
async fn other_schema_versions_are_refused_with_both_versions_named() {
    for (version, words) in [(24, "newer"), (21, "upgrade the database")] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.sqlite3");
        build_upstream_db(&path, version).await;
        let before = snapshot(&path).await;
        let err = SqlDataStore::open(&config(&path))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("schema version {version}")), "{err}");
        assert!(err.contains("23"), "{err}");
        assert!(
            err.contains("1.13.2"),
            "names the SPIRE version that wrote it: {err}"
        );
        assert!(err.contains(words), "{err}");
        assert_eq!(
            snapshot(&path).await,
            before,
            "a refused database is left alone"
        );
    }
}
