//! Bundles (`bundles`, one protobuf blob per trust domain) and federation relationships
//! (`federated_trust_domains`).

use prost::Message;
use spire_proto::spire::api::types;
use spire_proto::spire::api::types::federation_relationship::BundleEndpointProfile;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::{Arg, Db, db_err, is_unique_violation, now};
use super::entries;
use super::proto::{self, bundle_to_stored, decode_bundle, stored_to_bundle, trust_domain_id};
use super::query::{Page, Where};
use crate::datastore::{
    BundleMask, DataStoreError, DeleteBundleMode, Pagination, RefreshedBundleWrite, Result,
};

/// Fetches a stored bundle and its row ID by trust domain (name or ID).
pub(crate) async fn fetch_row(
    conn: &mut Db<'_>,
    trust_domain: &str,
) -> Result<Option<(i64, proto::Bundle)>> {
    fetch_row_with(conn, trust_domain, false).await
}

/// Like [`fetch_row`], locking the row until the transaction ends (read-modify-write: two
/// servers appending authorities at once must not lose one).
async fn fetch_row_locked(
    conn: &mut Db<'_>,
    trust_domain: &str,
) -> Result<Option<(i64, proto::Bundle)>> {
    fetch_row_with(conn, trust_domain, true).await
}

async fn fetch_row_with(
    conn: &mut Db<'_>,
    trust_domain: &str,
    lock: bool,
) -> Result<Option<(i64, proto::Bundle)>> {
    let td_id = trust_domain_id(trust_domain)?;
    let lock = if lock {
        conn.dialect().for_update()
    } else {
        ""
    };
    let sql = format!("SELECT id, data FROM bundles WHERE trust_domain = ?{lock}");
    let row = conn
        .fetch_optional(&sql, &[Arg::Text(td_id)])
        .await
        .map_err(db_err("reading a bundle"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: i64 = row.try_get(0).map_err(db_err("reading a bundle"))?;
    let data: Option<Vec<u8>> = row.try_get(1).map_err(db_err("reading a bundle"))?;
    Ok(Some((id, decode_bundle(&data.unwrap_or_default())?)))
}

async fn insert(conn: &mut Db<'_>, stored: &proto::Bundle) -> Result<()> {
    let t = now();
    conn.execute(
        "INSERT INTO bundles (created_at, updated_at, trust_domain, data) VALUES (?, ?, ?, ?)",
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Text(stored.trust_domain_id.clone()),
            Arg::Blob(stored.encode_to_vec()),
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DataStoreError::AlreadyExists(format!("bundle for {:?}", stored.trust_domain_id))
        } else {
            db_err("storing a bundle")(e)
        }
    })?;
    Ok(())
}

async fn write(conn: &mut Db<'_>, row_id: i64, stored: &proto::Bundle) -> Result<()> {
    conn.execute(
        "UPDATE bundles SET updated_at = ?, data = ? WHERE id = ?",
        &[
            Arg::Time(now()),
            Arg::Blob(stored.encode_to_vec()),
            Arg::Int(row_id),
        ],
    )
    .await
    .map_err(db_err("updating a bundle"))?;
    Ok(())
}

/// Stores a new bundle.
pub(crate) async fn create(conn: &mut Db<'_>, bundle: &types::Bundle) -> Result<types::Bundle> {
    let stored = bundle_to_stored(bundle)?;
    insert(conn, &stored).await?;
    Ok(stored_to_bundle(stored))
}

/// Replaces the masked parts of an existing bundle.
pub(crate) async fn update(
    conn: &mut Db<'_>,
    bundle: &types::Bundle,
    mask: BundleMask,
) -> Result<types::Bundle> {
    let new = bundle_to_stored(bundle)?;
    let Some((row_id, mut stored)) = fetch_row_locked(conn, &bundle.trust_domain).await? else {
        return Err(DataStoreError::NotFound(format!(
            "bundle for {:?}",
            new.trust_domain_id
        )));
    };
    if mask.x509_authorities {
        stored.root_cas = new.root_cas;
    }
    if mask.jwt_authorities {
        stored.jwt_signing_keys = new.jwt_signing_keys;
    }
    if mask.refresh_hint {
        stored.refresh_hint = new.refresh_hint;
    }
    if mask.sequence_number {
        stored.sequence_number = new.sequence_number;
    }
    write(conn, row_id, &stored).await?;
    Ok(stored_to_bundle(stored))
}

/// Creates or fully replaces a bundle.
pub(crate) async fn set(conn: &mut Db<'_>, bundle: &types::Bundle) -> Result<types::Bundle> {
    let new = bundle_to_stored(bundle)?;
    match fetch_row_locked(conn, &bundle.trust_domain).await? {
        Some((row_id, _)) => write(conn, row_id, &new).await?,
        None => insert(conn, &new).await?,
    }
    Ok(stored_to_bundle(new))
}

/// Stores a refreshed federated bundle unless the stored one is the same or newer; the row
/// stays locked from the comparison to the write.
pub(crate) async fn set_refreshed(
    conn: &mut Db<'_>,
    bundle: &types::Bundle,
) -> Result<RefreshedBundleWrite> {
    let new = bundle_to_stored(bundle)?;
    let Some((row_id, stored)) = fetch_row_locked(conn, &bundle.trust_domain).await? else {
        insert(conn, &new).await?;
        return Ok(RefreshedBundleWrite::Stored);
    };
    let cas = |b: &proto::Bundle| {
        let mut ders: Vec<Vec<u8>> = b.root_cas.iter().map(|c| c.der_bytes.clone()).collect();
        ders.sort_unstable();
        ders
    };
    let keys = |b: &proto::Bundle| {
        let mut keys: Vec<(String, Vec<u8>)> = b
            .jwt_signing_keys
            .iter()
            .map(|k| (k.kid.clone(), k.pkix_bytes.clone()))
            .collect();
        keys.sort_unstable();
        keys
    };
    let (stored_cas, new_cas) = (cas(&stored), cas(&new));
    if stored_cas == new_cas
        && keys(&stored) == keys(&new)
        && stored.sequence_number == new.sequence_number
        && stored.refresh_hint == new.refresh_hint
    {
        return Ok(RefreshedBundleWrite::Unchanged);
    }
    if new.sequence_number < stored.sequence_number
        && new_cas.iter().all(|ca| stored_cas.contains(ca))
    {
        return Ok(RefreshedBundleWrite::Stale);
    }
    write(conn, row_id, &new).await?;
    Ok(RefreshedBundleWrite::Stored)
}

/// Adds missing authorities, bumping the sequence number when anything was added.
pub(crate) async fn append(conn: &mut Db<'_>, bundle: &types::Bundle) -> Result<types::Bundle> {
    let new = bundle_to_stored(bundle)?;
    let Some((row_id, mut stored)) = fetch_row_locked(conn, &bundle.trust_domain).await? else {
        insert(conn, &new).await?;
        return Ok(stored_to_bundle(new));
    };
    let mut changed = false;
    for ca in new.root_cas {
        if !stored.root_cas.iter().any(|c| c.der_bytes == ca.der_bytes) {
            stored.root_cas.push(ca);
            changed = true;
        }
    }
    for key in new.jwt_signing_keys {
        if !stored
            .jwt_signing_keys
            .iter()
            .any(|k| k.kid == key.kid && k.pkix_bytes == key.pkix_bytes)
        {
            stored.jwt_signing_keys.push(key);
            changed = true;
        }
    }
    if changed {
        stored.sequence_number += 1;
        write(conn, row_id, &stored).await?;
    }
    Ok(stored_to_bundle(stored))
}

/// Deletes a bundle, treating federated entries as `mode` says.
pub(crate) async fn delete(
    conn: &mut Db<'_>,
    trust_domain: &str,
    mode: DeleteBundleMode,
) -> Result<()> {
    let td_id = trust_domain_id(trust_domain)?;
    let Some((row_id, _)) = fetch_row_locked(conn, trust_domain).await? else {
        return Err(DataStoreError::NotFound(format!("bundle for {td_id:?}")));
    };
    let federated = entries::federated_with_bundle(conn, row_id).await?;
    match mode {
        DeleteBundleMode::Restrict if !federated.is_empty() => {
            // Upstream's words (its SQL datastore's prefix included), which scripts match;
            // `-mode dissociate` or `-mode delete` is the way through.
            return Err(DataStoreError::InvalidArgument(format!(
                "datastore-sql: cannot delete bundle; federated with {} registration entries",
                federated.len()
            )));
        }
        DeleteBundleMode::Restrict => {}
        DeleteBundleMode::Delete => {
            for (entry_row, entry_id) in &federated {
                entries::delete_row(conn, *entry_row, entry_id).await?;
            }
        }
        DeleteBundleMode::Dissociate => {
            for (_, entry_id) in &federated {
                entries::insert_event(conn, entry_id).await?;
            }
        }
    }
    conn.execute(
        "DELETE FROM federated_registration_entries WHERE bundle_id = ?",
        &[Arg::Int(row_id)],
    )
    .await
    .map_err(db_err("removing bundle federation"))?;
    conn.execute("DELETE FROM bundles WHERE id = ?", &[Arg::Int(row_id)])
        .await
        .map_err(db_err("deleting a bundle"))?;
    Ok(())
}

/// Lists bundles in creation (row) order.
pub(crate) async fn list(
    conn: &mut Db<'_>,
    pagination: Option<&Pagination>,
) -> Result<(Vec<types::Bundle>, String)> {
    let page = Page::from_request(pagination)?;
    let mut w = Where::default();
    page.push(&mut w, "id");
    let mut args = w.args.clone();
    let sql = format!(
        "SELECT id, data FROM bundles{}{}",
        w.render(),
        page.order_limit("id", &mut args)
    );
    let rows = conn
        .fetch_all(&sql, &args)
        .await
        .map_err(db_err("listing bundles"))?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        let id: i64 = row.try_get(0).map_err(db_err("listing bundles"))?;
        let data: Option<Vec<u8>> = row.try_get(1).map_err(db_err("listing bundles"))?;
        out.push(stored_to_bundle(decode_bundle(&data.unwrap_or_default())?));
        last = Some(id);
    }
    let token = page.next_token(out.len(), last);
    Ok((out, token))
}

/// Counts bundles.
pub(crate) async fn count(conn: &mut Db<'_>) -> Result<u64> {
    let row = conn
        .fetch_one("SELECT COUNT(*) FROM bundles", &[])
        .await
        .map_err(db_err("counting bundles"))?;
    let n: i64 = row.try_get(0).map_err(db_err("counting bundles"))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

fn cert_not_after(der: &[u8]) -> Result<i64> {
    spire_core::x509::certificate_not_after(der)
        .map(|t| t.unix_timestamp())
        .map_err(|e| {
            DataStoreError::Internal(format!("stored X.509 authority cannot be parsed: {e}"))
        })
}

fn cert_skid(der: &[u8]) -> Result<String> {
    let skid = spire_core::x509::subject_key_id(der).map_err(|e| {
        DataStoreError::Internal(format!("stored X.509 authority cannot be parsed: {e}"))
    })?;
    Ok(skid.map(hex::encode).unwrap_or_default())
}

/// Removes expired authorities, never every X.509 one; returns whether anything changed.
pub(crate) async fn prune(
    conn: &mut Db<'_>,
    trust_domain: &str,
    expires_before: i64,
) -> Result<bool> {
    let Some((row_id, mut stored)) = fetch_row_locked(conn, trust_domain).await? else {
        return Err(DataStoreError::NotFound(format!(
            "bundle for {trust_domain:?}"
        )));
    };
    let mut changed = false;
    let mut keep = Vec::with_capacity(stored.root_cas.len());
    for ca in &stored.root_cas {
        if cert_not_after(&ca.der_bytes)? >= expires_before {
            keep.push(ca.clone());
        }
    }
    // Pruning every X.509 authority would leave the trust domain without roots; keep them
    // all until a valid one has been added.
    if !keep.is_empty() && keep.len() != stored.root_cas.len() {
        stored.root_cas = keep;
        changed = true;
    }
    let before = stored.jwt_signing_keys.len();
    stored
        .jwt_signing_keys
        .retain(|k| k.not_after == 0 || k.not_after >= expires_before);
    changed |= stored.jwt_signing_keys.len() != before;
    if changed {
        stored.sequence_number += 1;
        write(conn, row_id, &stored).await?;
    }
    Ok(changed)
}

async fn fetch_for_key_change(
    conn: &mut Db<'_>,
    trust_domain: &str,
) -> Result<(i64, proto::Bundle)> {
    fetch_row_locked(conn, trust_domain)
        .await?
        .ok_or_else(|| DataStoreError::NotFound(format!("bundle for {trust_domain:?}")))
}

/// Marks the X.509 authority with this subject key ID tainted.
pub(crate) async fn taint_x509(conn: &mut Db<'_>, trust_domain: &str, skid: &str) -> Result<()> {
    let (row_id, mut stored) = fetch_for_key_change(conn, trust_domain).await?;
    let mut found = false;
    for ca in &mut stored.root_cas {
        if !cert_skid(&ca.der_bytes)?.eq_ignore_ascii_case(skid) {
            continue;
        }
        if ca.tainted_key {
            return Err(DataStoreError::InvalidArgument(format!(
                "root CA {skid} is already tainted"
            )));
        }
        ca.tainted_key = true;
        found = true;
    }
    if !found {
        return Err(DataStoreError::NotFound(format!(
            "X.509 authority with subject key ID {skid:?}"
        )));
    }
    stored.sequence_number += 1;
    write(conn, row_id, &stored).await
}

/// Removes the tainted X.509 authority with this subject key ID.
pub(crate) async fn revoke_x509(conn: &mut Db<'_>, trust_domain: &str, skid: &str) -> Result<()> {
    let (row_id, mut stored) = fetch_for_key_change(conn, trust_domain).await?;
    let mut found = false;
    let mut keep = Vec::with_capacity(stored.root_cas.len());
    for ca in std::mem::take(&mut stored.root_cas) {
        if cert_skid(&ca.der_bytes)?.eq_ignore_ascii_case(skid) {
            if !ca.tainted_key {
                return Err(DataStoreError::InvalidArgument(format!(
                    "it is not possible to revoke an untainted root CA ({skid}); taint it first"
                )));
            }
            found = true;
            continue;
        }
        keep.push(ca);
    }
    if !found {
        return Err(DataStoreError::NotFound(format!(
            "X.509 authority with subject key ID {skid:?}"
        )));
    }
    stored.root_cas = keep;
    stored.sequence_number += 1;
    write(conn, row_id, &stored).await
}

/// Marks the JWT authority with this key ID tainted; returns its public key.
pub(crate) async fn taint_jwt(conn: &mut Db<'_>, trust_domain: &str, kid: &str) -> Result<Vec<u8>> {
    let (row_id, mut stored) = fetch_for_key_change(conn, trust_domain).await?;
    let Some(key) = stored.jwt_signing_keys.iter_mut().find(|k| k.kid == kid) else {
        return Err(DataStoreError::NotFound(format!(
            "JWT authority with key ID {kid:?}"
        )));
    };
    if key.tainted_key {
        return Err(DataStoreError::InvalidArgument(format!(
            "JWT authority {kid:?} is already tainted"
        )));
    }
    key.tainted_key = true;
    let public_key = key.pkix_bytes.clone();
    stored.sequence_number += 1;
    write(conn, row_id, &stored).await?;
    Ok(public_key)
}

/// Removes the tainted JWT authority with this key ID; returns its public key.
pub(crate) async fn revoke_jwt(
    conn: &mut Db<'_>,
    trust_domain: &str,
    kid: &str,
) -> Result<Vec<u8>> {
    let (row_id, mut stored) = fetch_for_key_change(conn, trust_domain).await?;
    let Some(pos) = stored.jwt_signing_keys.iter().position(|k| k.kid == kid) else {
        return Err(DataStoreError::NotFound(format!(
            "JWT authority with key ID {kid:?}"
        )));
    };
    if !stored.jwt_signing_keys[pos].tainted_key {
        return Err(DataStoreError::InvalidArgument(format!(
            "it is not possible to revoke an untainted JWT authority ({kid:?}); taint it first"
        )));
    }
    let key = stored.jwt_signing_keys.remove(pos);
    stored.sequence_number += 1;
    write(conn, row_id, &stored).await?;
    Ok(key.pkix_bytes)
}

// ---- federation relationships ----

const PROFILE_WEB: &str = "https_web";
const PROFILE_SPIFFE: &str = "https_spiffe";

fn profile_columns(fr: &types::FederationRelationship) -> Result<(&'static str, String)> {
    match &fr.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => Ok((PROFILE_WEB, String::new())),
        Some(BundleEndpointProfile::HttpsSpiffe(p)) => {
            if p.endpoint_spiffe_id.is_empty() {
                return Err(DataStoreError::InvalidArgument(
                    "the https_spiffe bundle endpoint profile needs the endpoint's SPIFFE ID"
                        .into(),
                ));
            }
            Ok((PROFILE_SPIFFE, p.endpoint_spiffe_id.clone()))
        }
        None => Err(DataStoreError::InvalidArgument(
            "a federation relationship needs a bundle endpoint profile (https_web or \
             https_spiffe)"
                .into(),
        )),
    }
}

fn validate_relationship(fr: &types::FederationRelationship) -> Result<String> {
    let name = proto::trust_domain_name(&fr.trust_domain)?;
    if fr.bundle_endpoint_url.is_empty() {
        return Err(DataStoreError::InvalidArgument(format!(
            "federation relationship with {name:?} needs a bundle endpoint URL"
        )));
    }
    Ok(name)
}

async fn store_relationship_bundle(
    conn: &mut Db<'_>,
    name: &str,
    fr: &types::FederationRelationship,
) -> Result<()> {
    if let Some(bundle) = &fr.trust_domain_bundle {
        let mut bundle = bundle.clone();
        if bundle.trust_domain.is_empty() {
            bundle.trust_domain = name.to_owned();
        }
        set(conn, &bundle).await?;
    }
    Ok(())
}

fn row_to_relationship(row: &AnyRow) -> Result<types::FederationRelationship> {
    let get = |row: &AnyRow| -> std::result::Result<_, sqlx::Error> {
        Ok((
            row.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
            row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        ))
    };
    let (trust_domain, url, profile, endpoint_id) =
        get(row).map_err(db_err("reading a federation relationship"))?;
    let profile = match profile.as_str() {
        PROFILE_WEB => BundleEndpointProfile::HttpsWeb(types::HttpsWebProfile {}),
        PROFILE_SPIFFE => BundleEndpointProfile::HttpsSpiffe(types::HttpsspiffeProfile {
            endpoint_spiffe_id: endpoint_id,
        }),
        other => {
            return Err(DataStoreError::Internal(format!(
                "federation relationship with {trust_domain:?} has unknown bundle endpoint \
                 profile {other:?}"
            )));
        }
    };
    Ok(types::FederationRelationship {
        trust_domain,
        bundle_endpoint_url: url,
        trust_domain_bundle: None,
        bundle_endpoint_profile: Some(profile),
    })
}

async fn attach_bundle(
    conn: &mut Db<'_>,
    mut fr: types::FederationRelationship,
) -> Result<types::FederationRelationship> {
    fr.trust_domain_bundle = fetch_row(conn, &fr.trust_domain)
        .await?
        .map(|(_, b)| stored_to_bundle(b));
    Ok(fr)
}

/// Stores a new relationship (and its bundle, when given).
pub(crate) async fn create_relationship(
    conn: &mut Db<'_>,
    fr: types::FederationRelationship,
) -> Result<types::FederationRelationship> {
    let name = validate_relationship(&fr)?;
    let (profile, endpoint_id) = profile_columns(&fr)?;
    let t = now();
    conn.execute(
        "INSERT INTO federated_trust_domains (created_at, updated_at, trust_domain, \
             bundle_endpoint_url, bundle_endpoint_profile, endpoint_spiffe_id, implicit) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            Arg::Time(t),
            Arg::Time(t),
            Arg::Text(name.clone()),
            Arg::Text(fr.bundle_endpoint_url.clone()),
            Arg::Text(profile.to_owned()),
            Arg::Text(endpoint_id),
            Arg::Bool(false),
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DataStoreError::AlreadyExists(format!("federation relationship with {name:?}"))
        } else {
            db_err("storing a federation relationship")(e)
        }
    })?;
    store_relationship_bundle(conn, &name, &fr).await?;
    let stored = types::FederationRelationship {
        trust_domain: name,
        trust_domain_bundle: None,
        ..fr
    };
    attach_bundle(conn, stored).await
}

/// Fetches a relationship with its bundle (if any).
pub(crate) async fn fetch_relationship(
    conn: &mut Db<'_>,
    trust_domain: &str,
) -> Result<Option<types::FederationRelationship>> {
    let name = proto::trust_domain_name(trust_domain)?;
    let row = conn
        .fetch_optional(
            "SELECT trust_domain, bundle_endpoint_url, bundle_endpoint_profile, \
             endpoint_spiffe_id FROM federated_trust_domains WHERE trust_domain = ?",
            &[Arg::Text(name)],
        )
        .await
        .map_err(db_err("reading a federation relationship"))?;
    match row {
        Some(row) => Ok(Some(attach_bundle(conn, row_to_relationship(&row)?).await?)),
        None => Ok(None),
    }
}

/// Lists relationships in creation order, each with its bundle.
pub(crate) async fn list_relationships(
    conn: &mut Db<'_>,
    pagination: Option<&Pagination>,
) -> Result<(Vec<types::FederationRelationship>, String)> {
    let page = Page::from_request(pagination)?;
    let mut w = Where::default();
    page.push(&mut w, "id");
    let mut args = w.args.clone();
    let sql = format!(
        "SELECT trust_domain, bundle_endpoint_url, bundle_endpoint_profile, endpoint_spiffe_id, \
         id FROM federated_trust_domains{}{}",
        w.render(),
        page.order_limit("id", &mut args)
    );
    let rows = conn
        .fetch_all(&sql, &args)
        .await
        .map_err(db_err("listing federation relationships"))?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        last = Some(
            row.try_get::<i64, _>(4)
                .map_err(db_err("listing federation relationships"))?,
        );
        let fr = row_to_relationship(row)?;
        out.push(attach_bundle(conn, fr).await?);
    }
    let token = page.next_token(out.len(), last);
    Ok((out, token))
}

/// Replaces a relationship (and sets its bundle, when given).
pub(crate) async fn update_relationship(
    conn: &mut Db<'_>,
    fr: types::FederationRelationship,
) -> Result<types::FederationRelationship> {
    let name = validate_relationship(&fr)?;
    let (profile, endpoint_id) = profile_columns(&fr)?;
    let result = conn
        .execute(
            "UPDATE federated_trust_domains SET updated_at = ?, bundle_endpoint_url = ?, \
             bundle_endpoint_profile = ?, endpoint_spiffe_id = ? WHERE trust_domain = ?",
            &[
                Arg::Time(now()),
                Arg::Text(fr.bundle_endpoint_url.clone()),
                Arg::Text(profile.to_owned()),
                Arg::Text(endpoint_id),
                Arg::Text(name.clone()),
            ],
        )
        .await
        .map_err(db_err("updating a federation relationship"))?;
    if result.rows_affected() == 0 {
        return Err(DataStoreError::NotFound(format!(
            "federation relationship with {name:?}"
        )));
    }
    store_relationship_bundle(conn, &name, &fr).await?;
    let stored = types::FederationRelationship {
        trust_domain: name,
        trust_domain_bundle: None,
        ..fr
    };
    attach_bundle(conn, stored).await
}

/// Deletes a relationship (its bundle stays).
pub(crate) async fn delete_relationship(conn: &mut Db<'_>, trust_domain: &str) -> Result<()> {
    let name = proto::trust_domain_name(trust_domain)?;
    let result = conn
        .execute(
            "DELETE FROM federated_trust_domains WHERE trust_domain = ?",
            &[Arg::Text(name.clone())],
        )
        .await
        .map_err(db_err("deleting a federation relationship"))?;
    if result.rows_affected() == 0 {
        return Err(DataStoreError::NotFound(format!(
            "federation relationship with {name:?}"
        )));
    }
    Ok(())
}
