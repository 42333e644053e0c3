//! Process plumbing that `spire-server` and `spire-agent` share and that does I/O, so it does
//! not belong in `spire-core`: log set-up and the run-time log level, and the command-line
//! toolkit (Go-style flags, errors, `-output json`).

pub mod cli;
pub mod fs;
pub mod logging;
