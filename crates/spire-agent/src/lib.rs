//! The `spire-agent` library: everything the binary does, so tests can drive it in process.
