//! Drop-in compatibility of the SQL datastore with databases upstream SPIRE created, on every
//! engine.
//!
//! The fixtures `upstream_schema_{sqlite,postgres,mysql}.sql` are schema version 23 as upstream
//! SPIRE (1.8 through 1.14) creates it through gorm v1 (facts from upstream
//! `pkg/server/datastore/sqlstore/models.go`, `migration.go`, gorm v1's dialects, and the v23
//! SQLite dump upstream's migration test keeps). Rows are written with raw SQL in the formats
//! upstream's drivers use: on SQLite times as `2006-01-02 15:04:05.999999999-07:00` text in the
//! server's zone and booleans as 0/1; on PostgreSQL `timestamp with time zone` and booleans; on
//! MySQL `DATETIME` in UTC (go-sql-driver's default `loc`) and booleans as tinyint; bundles as
//! `spire.common.Bundle` protobuf everywhere. The store must open such a database without
//! changing it and read every row back correctly, and a database it creates must have exactly
//! the same tables, columns and indexes.
//!
//! Each test runs as `sqlite::<name>` always and as `postgres::<name>` / `mysql::<name>` when
//! `SPIRE_TEST_POSTGRES` / `SPIRE_TEST_MYSQL` are set (`scripts/test-databases.sh`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;

use spire_core::selector::{Selector, SelectorMatch};
use spire_proto::spire::api::types::federation_relationship::BundleEndpointProfile;
use spire_server::datastore::sql::SqlDataStore;
use spire_server::datastore::{
    DataStore, EntryAttributes, ListEntriesRequest, ListNodesRequest, RegistrationEntry,
};

#[macro_use]
mod sql_engines;
use sql_engines::{Engine, Raw, TestDb};

/// Upstream's schema 23, table by table and index by index, per engine.
fn upstream_ddl(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => include_str!("fixtures/upstream_schema_sqlite.sql"),
        Engine::Postgres => include_str!("fixtures/upstream_schema_postgres.sql"),
        Engine::Mysql => include_str!("fixtures/upstream_schema_mysql.sql"),
    }
}

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

/// A binary literal in the engine's SQL.
fn blob(engine: Engine, bytes: &[u8]) -> String {
    match engine {
        Engine::Postgres => format!("decode('{}', 'hex')", hex::encode(bytes)),
        Engine::Sqlite | Engine::Mysql => format!("X'{}'", hex::encode(bytes)),
    }
}

/// `expr` as text, for [`Raw::texts`].
fn text(engine: Engine, expr: &str) -> String {
    match engine {
        Engine::Mysql => format!("CAST({expr} AS CHAR)"),
        Engine::Sqlite | Engine::Postgres => format!("CAST({expr} AS TEXT)"),
    }
}

/// The rows upstream SPIRE 1.13 would have written, in its drivers' formats.
fn upstream_rows(engine: Engine, version: i64) -> String {
    // 2024-05-01 10:00:00.123456 at -03:00 (13:00 UTC); 2030-01-01 00:00:00 at -03:00.
    let (t, expires) = match engine {
        Engine::Sqlite | Engine::Postgres => (
            "'2024-05-01 10:00:00.123456-03:00'",
            "'2030-01-01 00:00:00-03:00'",
        ),
        Engine::Mysql => ("'2024-05-01 13:00:00'", "'2030-01-01 03:00:00'"),
    };
    let (yes, no) = match engine {
        Engine::Postgres => ("true", "false"),
        Engine::Sqlite | Engine::Mysql => ("1", "0"),
    };
    let journal = blob(engine, &[0x0a, 0x0b, 0x0c]);
    let mut rows = format!(
        r#"
        INSERT INTO migrations VALUES(1,{t},{t},{version},'1.13.2');
        INSERT INTO registered_entries VALUES(1,{t},{t},'entry-1','spiffe://example.org/web','spiffe://example.org/spire/agent/x509pop/abc',3600,{yes},{no},1900000000,4,{yes},'web-hint',300);
        INSERT INTO registered_entries VALUES(2,{t},{t},'entry-2','spiffe://example.org/db','spiffe://example.org/spire/agent/x509pop/abc',0,{no},{yes},0,0,{no},'',0);
        INSERT INTO selectors VALUES(1,{t},{t},1,'unix','uid:1000');
        INSERT INTO selectors VALUES(2,{t},{t},1,'unix','gid:1000');
        INSERT INTO selectors VALUES(3,{t},{t},2,'unix','uid:2000');
        INSERT INTO dns_names VALUES(1,{t},{t},1,'web.example.org');
        INSERT INTO federated_registration_entries VALUES(2,1);
        INSERT INTO registered_entries_events VALUES(1,{t},{t},'entry-1');
        INSERT INTO registered_entries_events VALUES(2,{t},{t},'entry-2');
        INSERT INTO attested_node_entries VALUES(1,{t},{t},'spiffe://example.org/spire/agent/x509pop/abc','x509pop','1234',{expires},'',NULL,{yes});
        INSERT INTO node_resolver_map_entries VALUES(1,{t},{t},'spiffe://example.org/spire/agent/x509pop/abc','x509pop','subject:cn:abc');
        INSERT INTO attested_node_entries_events VALUES(1,{t},{t},'spiffe://example.org/spire/agent/x509pop/abc');
        INSERT INTO join_tokens VALUES(1,{t},{t},'upstream-token',1900000000);
        INSERT INTO ca_journals VALUES(1,{t},{t},{journal},'skid-hex','jwt-kid');
        INSERT INTO federated_trust_domains VALUES(1,{t},{t},'fed.org','https://fed.org/bundle','https_spiffe','spiffe://fed.org/spire/server',{no});
        "#
    );
    for (id, td) in [(1, "spiffe://example.org"), (2, "spiffe://fed.org")] {
        let data = blob(engine, &upstream_bundle_blob(td));
        rows.push_str(&format!(
            "INSERT INTO bundles (id, created_at, updated_at, trust_domain, data) \
             VALUES ({id}, {t}, {t}, '{td}', {data});\n"
        ));
    }
    if engine == Engine::Postgres {
        // Upstream's rows came through the serial sequences; ours were inserted with explicit
        // IDs, so move each sequence past them as gorm's inserts would have.
        for table in ID_TABLES {
            rows.push_str(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table} \
                 HAVING MAX(id) IS NOT NULL;\n"
            ));
        }
    }
    rows
}

/// Every table with an `id` column.
const ID_TABLES: [&str; 12] = [
    "bundles",
    "attested_node_entries",
    "attested_node_entries_events",
    "node_resolver_map_entries",
    "registered_entries",
    "registered_entries_events",
    "join_tokens",
    "selectors",
    "migrations",
    "dns_names",
    "federated_trust_domains",
    "ca_journals",
];

/// The columns SPIRE 1.14.7 (schema 24) and 1.15 (schema 25) add, as gorm v1's AutoMigrate
/// writes them on each engine (upstream's v24 SQLite dump in `migration_test.go` shows
/// `"agent_version" varchar(255)`; `AdditionalAttributes []byte` is tagged `size:65535`).
fn later_columns_ddl(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => {
            r#"ALTER TABLE "attested_node_entries" ADD "agent_version" varchar(255);
            ALTER TABLE "registered_entries" ADD "additional_attributes" blob;"#
        }
        Engine::Postgres => {
            r#"ALTER TABLE "attested_node_entries" ADD "agent_version" text;
            ALTER TABLE "registered_entries" ADD "additional_attributes" bytea;"#
        }
        Engine::Mysql => {
            "ALTER TABLE `attested_node_entries` ADD `agent_version` varchar(255);
            ALTER TABLE `registered_entries` ADD `additional_attributes` longblob;"
        }
    }
}

/// Builds, in the test's empty database, what upstream SPIRE 1.13 would have left
/// (`later_columns`: and what 1.15's migration adds to it).
async fn build_upstream_db(db: &TestDb, version: i64, later_columns: bool) {
    let raw = db.raw().await;
    raw.execute_script(upstream_ddl(db.engine)).await;
    raw.execute_script(&upstream_rows(db.engine, version)).await;
    if later_columns {
        raw.execute_script(later_columns_ddl(db.engine)).await;
    }
    raw.close().await;
}

/// A reference database of upstream's: schema `version` with 1.15's columns.
async fn reference_snapshot(engine: Engine, version: i64) -> Vec<String> {
    let upstream = TestDb::create(engine, "upstream_reference").await.unwrap();
    build_upstream_db(&upstream, version, true).await;
    let shot = snapshot(&upstream).await;
    upstream.remove().await;
    shot
}

/// The tables (columns with type, nullability, default, key) and indexes (uniqueness and
/// columns), sorted, as the engine's catalog reports them.
async fn schema_shape(db: &TestDb) -> BTreeMap<String, Vec<String>> {
    let raw = db.raw().await;
    let rows: Vec<Vec<String>> = match db.engine {
        Engine::Sqlite => sqlite_shape(&raw).await,
        Engine::Postgres => {
            let mut rows = raw
                .texts(
                    "SELECT table_name::text, concat_ws(' ', column_name, data_type, \
                     'nullable=' || is_nullable, 'default=' || coalesce(column_default, '')) \
                     FROM information_schema.columns WHERE table_schema = current_schema()",
                )
                .await;
            rows.extend(
                raw.texts(
                    "SELECT tablename::text, 'index ' || indexdef FROM pg_indexes \
                     WHERE schemaname = current_schema()",
                )
                .await,
            );
            rows
        }
        Engine::Mysql => {
            let mut rows = raw
                .texts(
                    "SELECT CAST(table_name AS CHAR), CAST(CONCAT_WS(' ', column_name, \
                     column_type, CONCAT('nullable=', is_nullable), CONCAT('default=', \
                     COALESCE(column_default, '')), extra) AS CHAR) \
                     FROM information_schema.columns WHERE table_schema = DATABASE()",
                )
                .await;
            rows.extend(
                raw.texts(
                    "SELECT CAST(table_name AS CHAR), CAST(CONCAT('index ', index_name, \
                     ' unique=', 1 - non_unique, ' (', GROUP_CONCAT(column_name ORDER BY \
                     seq_in_index), ')') AS CHAR) FROM information_schema.statistics \
                     WHERE table_schema = DATABASE() GROUP BY table_name, index_name, non_unique",
                )
                .await,
            );
            rows.extend(
                raw.texts(
                    "SELECT CAST(table_name AS CHAR), CAST(CONCAT('table ', engine, ' ', \
                     row_format, ' ', table_collation) AS CHAR) FROM information_schema.tables \
                     WHERE table_schema = DATABASE()",
                )
                .await,
            );
            rows
        }
    };
    raw.close().await;
    let mut shape: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        shape
            .entry(row[0].clone())
            .or_default()
            .push(row[1].to_lowercase());
    }
    for columns in shape.values_mut() {
        columns.sort();
    }
    shape
}

async fn sqlite_shape(raw: &Raw) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let tables = raw
        .texts("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .await;
    for t in tables {
        let table = &t[0];
        let info = raw
            .texts(&format!(
                "SELECT name, type, CAST(\"notnull\" AS TEXT), CAST(pk AS TEXT) \
                 FROM pragma_table_info('{table}')"
            ))
            .await;
        for c in info {
            rows.push(vec![
                table.clone(),
                format!("{} {} notnull={} pk={}", c[0], c[1], c[2], c[3]),
            ]);
        }
        let indexes = raw
            .texts(&format!(
                "SELECT name, CAST(\"unique\" AS TEXT) FROM pragma_index_list('{table}')"
            ))
            .await;
        for i in indexes {
            let columns: Vec<String> = raw
                .texts(&format!("SELECT name FROM pragma_index_info('{}')", i[0]))
                .await
                .into_iter()
                .map(|r| r[0].clone())
                .collect();
            rows.push(vec![
                table.clone(),
                format!("index {} unique={} ({})", i[0], i[1], columns.join(",")),
            ]);
        }
    }
    rows
}

/// Everything that identifies the database's schema and contents.
async fn snapshot(db: &TestDb) -> Vec<String> {
    let mut out: Vec<String> = schema_shape(db)
        .await
        .into_iter()
        .map(|(table, columns)| format!("{table}: {}", columns.join("; ")))
        .collect();
    let raw = db.raw().await;
    for table in ID_TABLES {
        let sql = format!(
            "SELECT {}, {} FROM {table}",
            text(db.engine, "COUNT(*)"),
            text(db.engine, "MAX(updated_at)")
        );
        let row = raw.texts(&sql).await.remove(0);
        out.push(format!("{table}: {} rows, last update {}", row[0], row[1]));
    }
    let sql = format!(
        "SELECT {}, {}, code_version, {} FROM migrations",
        text(db.engine, "id"),
        text(db.engine, "version"),
        text(db.engine, "updated_at")
    );
    for row in raw.texts(&sql).await {
        out.push(format!("migration {}", row.join(" ")));
    }
    raw.close().await;
    out
}

async fn assert_reads_upstream_rows(ds: &SqlDataStore) {
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
            additional_attributes: None,
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
}

async fn opens_an_upstream_database_unchanged_and_reads_every_row(db: &TestDb) {
    build_upstream_db(db, 23, false).await;

    let ds = db.open().await;
    assert!(!ds.created_schema());
    assert_reads_upstream_rows(&ds).await;
    ds.close().await;
    drop(ds);
    let opened = snapshot(db).await;
    assert_eq!(
        opened,
        reference_snapshot(db.engine, 23).await,
        "opening added 1.15's two columns, as its migration would, and changed nothing else \
         (the version stays 23, so upstream 1.13 still opens it)"
    );
    let ds = db.open().await;
    assert_reads_upstream_rows(&ds).await;
    ds.close().await;
    drop(ds);
    assert_eq!(
        snapshot(db).await,
        opened,
        "a second opening changed nothing"
    );

    // Writes land in upstream's columns, readable by upstream's model.
    let ds = db.open().await;
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
    let raw = db.raw().await;
    // created_at must be a time upstream's driver reads back as now: SQLite text Go can parse,
    // PostgreSQL timestamptz, MySQL DATETIME in UTC.
    let fresh = match db.engine {
        Engine::Sqlite => "abs(strftime('%s', e.created_at) - strftime('%s', 'now')) < 120",
        Engine::Postgres => "abs(extract(epoch FROM now() - e.created_at)) < 120",
        Engine::Mysql => "abs(timestampdiff(SECOND, e.created_at, utc_timestamp())) < 120",
    };
    let row = raw
        .texts(&format!(
            "SELECT {}, {}, e.hint, {}, b.trust_domain, {} FROM registered_entries e \
             JOIN federated_registration_entries f ON f.registered_entry_id = e.id \
             JOIN bundles b ON b.id = f.bundle_id WHERE e.entry_id = '{}'",
            text(db.engine, "e.ttl"),
            text(db.engine, "e.jwt_svid_ttl"),
            text(db.engine, "e.revision_number"),
            text(
                db.engine,
                &format!("CASE WHEN {fresh} THEN 'fresh' ELSE 'stale' END")
            ),
            created.entry_id
        ))
        .await;
    assert_eq!(
        row,
        vec![vec![
            "120".to_owned(),
            "60".to_owned(),
            "h".to_owned(),
            "0".to_owned(),
            "spiffe://fed.org".to_owned(),
            "fresh".to_owned(),
        ]],
        "created_at is the current time, as upstream's driver writes and reads it"
    );
    let events = raw
        .text(&format!(
            "SELECT {} FROM registered_entries_events WHERE entry_id = '{}'",
            text(db.engine, "COUNT(*)"),
            created.entry_id
        ))
        .await;
    assert_eq!(events, "1");
    raw.close().await;
}

async fn a_database_we_create_has_upstreams_exact_schema(db: &TestDb) {
    let ds = db.open().await;
    assert!(ds.created_schema());
    ds.close().await;
    let mine = schema_shape(db).await;

    let raw = db.raw().await;
    let sql = format!(
        "SELECT {}, code_version FROM migrations",
        text(db.engine, "version")
    );
    assert_eq!(
        raw.texts(&sql).await,
        vec![vec!["23".to_owned(), "1.14.0".to_owned()]]
    );
    raw.close().await;

    let upstream = TestDb::create(db.engine, "upstream_reference")
        .await
        .unwrap();
    build_upstream_db(&upstream, 23, true).await;
    let theirs = schema_shape(&upstream).await;
    upstream.remove().await;

    assert_eq!(
        theirs.keys().collect::<Vec<_>>(),
        mine.keys().collect::<Vec<_>>(),
        "same tables"
    );
    for (table, columns) in &theirs {
        assert_eq!(Some(columns), mine.get(table), "table {table}");
    }
}

/// Drops every table, so the next fixture starts from an empty database.
async fn drop_all(db: &TestDb) {
    let raw = db.raw().await;
    let sql: String = ID_TABLES
        .iter()
        .chain(["federated_registration_entries"].iter())
        .map(|t| format!("DROP TABLE IF EXISTS {t};\n"))
        .collect();
    raw.execute_script(&sql).await;
    raw.close().await;
}

async fn other_schema_versions_are_refused_with_both_versions_named(db: &TestDb) {
    for (version, supported, words) in [(26, "25", "newer"), (21, "23", "upgrade the database")] {
        drop_all(db).await;
        build_upstream_db(db, version, true).await;
        let before = snapshot(db).await;
        let err = match SqlDataStore::open(&db.config()).await {
            Ok(_) => panic!("schema version {version} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("schema version {version}")), "{err}");
        assert!(err.contains(supported), "{err}");
        assert!(
            err.contains("1.13.2"),
            "names the SPIRE version that wrote it: {err}"
        );
        assert!(err.contains(words), "{err}");
        assert_eq!(
            snapshot(db).await,
            before,
            "a refused database is left alone"
        );
    }
}

/// SPIRE 1.14.7 and 1.15 databases (schemas 24 and 25) open as they are, and what 1.15
/// stored in its new columns reads back: the entry's additional attributes (a
/// `RegistrationEntry.AdditionalAttributes` protobuf blob) and the agent's version.
async fn opens_schema_24_and_25_and_reads_their_columns(db: &TestDb) {
    for version in [24, 25] {
        drop_all(db).await;
        build_upstream_db(db, version, true).await;
        let raw = db.raw().await;
        // disable_x509_svid_prefetch = true (field 1), jwt_svid_include_jti = true (field 2).
        let attributes = blob(db.engine, &[0x08, 0x01, 0x10, 0x01]);
        raw.execute_script(&format!(
            "UPDATE registered_entries SET additional_attributes = {attributes} \
             WHERE entry_id = 'entry-2';
             UPDATE attested_node_entries SET agent_version = '1.15.3';"
        ))
        .await;
        raw.close().await;
        let before = snapshot(db).await;

        let ds = db.open().await;
        assert_reads_upstream_rows(&ds).await;
        let e = ds
            .fetch_registration_entry("entry-2")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            e.additional_attributes,
            Some(EntryAttributes {
                disable_x509_svid_prefetch: true,
                jwt_svid_include_jti: true,
            })
        );
        let node = ds
            .fetch_attested_node("spiffe://example.org/spire/agent/x509pop/abc")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(node.agent_version, "1.15.3");
        ds.close().await;
        assert_eq!(
            snapshot(db).await,
            before,
            "schema {version} opened unchanged"
        );
    }
}

/// With `disable_migration`, a version-23 database without 1.15's columns is refused with
/// the missing column and the statement that adds it named, and left alone.
async fn disable_migration_refuses_to_add_the_later_columns(db: &TestDb) {
    build_upstream_db(db, 23, false).await;
    let before = snapshot(db).await;
    let mut config = db.config();
    config.disable_migration = true;
    let err = match SqlDataStore::open(&config).await {
        Ok(_) => panic!("a database without agent_version was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("attested_node_entries.agent_version"), "{err}");
    assert!(err.contains("disable_migration"), "{err}");
    assert!(err.contains("ALTER TABLE"), "{err}");
    assert_eq!(
        snapshot(db).await,
        before,
        "a refused database is left alone"
    );
}

on_every_engine!(
    opens_an_upstream_database_unchanged_and_reads_every_row,
    a_database_we_create_has_upstreams_exact_schema,
    other_schema_versions_are_refused_with_both_versions_named,
    opens_schema_24_and_25_and_reads_their_columns,
    disable_migration_refuses_to_add_the_later_columns,
);
