//! SQL datastore (placeholder).
