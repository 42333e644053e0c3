//! The CA journal: which X509 CAs and JWT keys were prepared, activated and retired, kept in
//! the datastore's `ca_journals` table so a restarted server resumes with the same
//! authorities. The blob is upstream's `Entries` message
//! (`proto/private/server/journal/journal.proto`), with the same field numbers, so a
//! database written by upstream SPIRE is read here and the other way round.

use std::sync::Arc;

use prost::Message;

use crate::datastore::{CaJournal, DataStore, DataStoreError};

/// How many entries of each kind the journal keeps, as upstream's `journalCap`.
const JOURNAL_CAP: usize = 10;

/// One X509 CA (upstream `X509CAEntry`).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct X509CaEntry {
    /// Which slot (`A` or `B`) the CA occupied.
    #[prost(string, tag = "1")]
    pub(crate) slot_id: String,
    /// When it was issued, Unix seconds.
    #[prost(int64, tag = "2")]
    pub(crate) issued_at: i64,
    /// The CA certificate, DER.
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) certificate: Vec<u8>,
    /// The chain from the upstream authority (the CA first), DER; empty when self-signed.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub(crate) upstream_chain: Vec<Vec<u8>>,
    /// The slot status.
    #[prost(enumeration = "Status", tag = "5")]
    pub(crate) status: i32,
    /// Subject key ID, lowercase hex.
    #[prost(string, tag = "6")]
    pub(crate) authority_id: String,
    /// When the CA expires, Unix seconds.
    #[prost(int64, tag = "7")]
    pub(crate) not_after: i64,
    /// The issuer's key ID (authority key ID), lowercase hex.
    #[prost(string, tag = "8")]
    pub(crate) upstream_authority_id: String,
    /// Whether `not_after` is the effective expiry of the whole chain.
    #[prost(bool, tag = "9")]
    pub(crate) not_after_is_effective: bool,
}

/// One JWT signing key (upstream `JWTKeyEntry`); WIT keys have the same layout.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct JwtKeyEntry {
    /// Which slot (`A` or `B`) the key occupied.
    #[prost(string, tag = "1")]
    pub(crate) slot_id: String,
    /// When it was issued, Unix seconds.
    #[prost(int64, tag = "2")]
    pub(crate) issued_at: i64,
    /// When it expires, Unix seconds.
    #[prost(int64, tag = "3")]
    pub(crate) not_after: i64,
    /// The `kid`.
    #[prost(string, tag = "4")]
    pub(crate) kid: String,
    /// The public key, DER SubjectPublicKeyInfo.
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) public_key: Vec<u8>,
    /// The slot status.
    #[prost(enumeration = "Status", tag = "6")]
    pub(crate) status: i32,
    /// The authority ID (the `kid`).
    #[prost(string, tag = "7")]
    pub(crate) authority_id: String,
}

/// The journal blob (upstream `Entries`). WIT keys are kept untouched.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Entries {
    /// X509 CAs, oldest first.
    #[prost(message, repeated, tag = "1")]
    pub(crate) x509_cas: Vec<X509CaEntry>,
    /// JWT keys, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub(crate) jwt_keys: Vec<JwtKeyEntry>,
    /// WIT keys (not used here; preserved for upstream).
    #[prost(message, repeated, tag = "3")]
    pub(crate) wit_keys: Vec<JwtKeyEntry>,
}

/// A slot's status (upstream `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub(crate) enum Status {
    /// Written by SPIRE before 1.7.
    Unknown = 0,
    /// Prepared for later use; already in the bundle.
    Prepared = 2,
    /// Signing now.
    Active = 3,
    /// Retired.
    Old = 4,
}

/// The journal of this server plus the row it is stored in.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// The `ca_journals` row ID; 0 until first stored.
    pub(crate) id: u32,
    /// The entries.
    pub(crate) entries: Entries,
    /// The active X509 authority ID, which is how a restarted server finds its row.
    pub(crate) active_x509_authority_id: String,
    /// The active JWT authority ID.
    pub(crate) active_jwt_authority_id: String,
}

impl Journal {
    /// Decodes a stored row.
    pub(crate) fn from_row(row: &CaJournal) -> Result<Self, prost::DecodeError> {
        let entries = Entries::decode(row.data.as_slice())?;
        let active_x509_authority_id = entries
            .x509_cas
            .iter()
            .rev()
            .find(|e| e.status == Status::Active as i32)
            .map(|e| e.authority_id.clone())
            .unwrap_or_else(|| row.active_x509_authority_id.clone());
        let active_jwt_authority_id = entries
            .jwt_keys
            .iter()
            .rev()
            .find(|e| e.status == Status::Active as i32)
            .map(|e| e.authority_id.clone())
            .unwrap_or_else(|| row.active_jwt_authority_id.clone());
        Ok(Self {
            id: row.id,
            entries,
            active_x509_authority_id,
            active_jwt_authority_id,
        })
    }

    /// Adds a newly prepared X509 CA, dropping the oldest past the cap.
    pub(crate) fn append_x509(&mut self, entry: X509CaEntry) {
        self.entries.x509_cas.push(entry);
        let excess = self.entries.x509_cas.len().saturating_sub(JOURNAL_CAP);
        self.entries.x509_cas.drain(..excess);
    }

    /// Adds a newly prepared JWT key, dropping the oldest past the cap.
    pub(crate) fn append_jwt(&mut self, entry: JwtKeyEntry) {
        self.entries.jwt_keys.push(entry);
        let excess = self.entries.jwt_keys.len().saturating_sub(JOURNAL_CAP);
        self.entries.jwt_keys.drain(..excess);
    }

    /// Sets the status of the newest X509 entry with this authority ID (or, for entries
    /// from old versions without one, issue time); tells whether one was found.
    pub(crate) fn set_x509_status(
        &mut self,
        authority_id: &str,
        issued_at: i64,
        status: Status,
    ) -> bool {
        let found = self.entries.x509_cas.iter_mut().rev().find(|e| {
            if e.authority_id.is_empty() {
                e.issued_at == issued_at
            } else {
                e.authority_id == authority_id
            }
        });
        let Some(entry) = found else {
            return false;
        };
        entry.status = status as i32;
        if status == Status::Active {
            self.active_x509_authority_id = authority_id.to_owned();
        }
        true
    }

    /// Sets the status of the newest JWT entry with this authority ID (or issue time).
    pub(crate) fn set_jwt_status(
        &mut self,
        authority_id: &str,
        issued_at: i64,
        status: Status,
    ) -> bool {
        let found = self.entries.jwt_keys.iter_mut().rev().find(|e| {
            if e.authority_id.is_empty() {
                e.issued_at == issued_at
            } else {
                e.authority_id == authority_id
            }
        });
        let Some(entry) = found else {
            return false;
        };
        entry.status = status as i32;
        if status == Status::Active {
            self.active_jwt_authority_id = authority_id.to_owned();
        }
        true
    }

    /// Stores the journal in its row (creating it the first time).
    pub(crate) async fn save(
        &mut self,
        datastore: &Arc<dyn DataStore>,
    ) -> Result<(), DataStoreError> {
        let stored = datastore
            .set_ca_journal(CaJournal {
                id: self.id,
                data: self.entries.encode_to_vec(),
                active_x509_authority_id: self.active_x509_authority_id.clone(),
                active_jwt_authority_id: self.active_jwt_authority_id.clone(),
            })
            .await?;
        self.id = stored.id;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn wire_layout_matches_upstream_field_numbers() {
        let entries = Entries {
            x509_cas: vec![X509CaEntry {
                slot_id: "A".into(),
                issued_at: 1,
                status: Status::Active as i32,
                ..Default::default()
            }],
            jwt_keys: vec![],
            wit_keys: vec![],
        };
        let bytes = entries.encode_to_vec();
        // field 1 (x509CAs), length-delimited; inside: field 1 "A", field 2 varint 1,
        // field 5 varint 3.
        assert_eq!(
            bytes,
            vec![0x0a, 0x07, 0x0a, 0x01, b'A', 0x10, 0x01, 0x28, 0x03]
        );
        assert_eq!(Entries::decode(bytes.as_slice()).unwrap(), entries);
    }

    #[test]
    fn cap_keeps_the_newest_ten() {
        let mut journal = Journal::default();
        for i in 0..12 {
            journal.append_x509(X509CaEntry {
                issued_at: i,
                authority_id: format!("id{i}"),
                ..Default::default()
            });
        }
        assert_eq!(journal.entries.x509_cas.len(), 10);
        assert_eq!(journal.entries.x509_cas[0].issued_at, 2);
        assert!(journal.set_x509_status("id11", 11, Status::Active));
        assert_eq!(journal.active_x509_authority_id, "id11");
        assert!(!journal.set_x509_status("id0", 0, Status::Old));
    }
}
