//! Where the agent stands in (re)bootstrapping, as upstream v1.13.3's trust bundle sources
//! keep it (`pkg/agent/trustbundlesources`): whether the next attestation starts from the
//! bootstrap source for the first time (`bootstrap`) or again after trust was lost
//! (`rebootstrap`), when the current trouble started (the `rebootstrap_delay` clock; none
//! once a secure connection succeeded), and how many times the bootstrap bundle was read.
//! Every change is reported in upstream's gauges `bootstraped`, `bootstrap_seconds` and
//! `bootstrap_attempts` (label `mode`).
//!
//! Difference from upstream: the state lives in memory for the life of the process (it
//! survives the agent's in-process restart after a rebootstrap) but not in
//! `agent-data.json`, so a process restart starts the delay clock again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::storage::{AgentStorage, StorageError};

/// Go's zero `time.Time` in Unix seconds: what upstream reports as `bootstrap_seconds`
/// when no (re)bootstrap is running.
const GO_ZERO_TIME_UNIX: f64 = -62_135_596_800.0;

/// The phase of the next attestation from the bootstrap source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapUse {
    /// The agent never attested with this data_dir: the bootstrap bundle is its first trust.
    Bootstrap,
    /// The agent attested before: a mismatch with the server means trust was lost.
    Rebootstrap,
}

impl BootstrapUse {
    /// The `mode` label of the bootstrap gauges.
    fn label(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Rebootstrap => "rebootstrap",
        }
    }
}

#[derive(Debug)]
struct State {
    phase: BootstrapUse,
    started: Option<SystemTime>,
    attempts: u32,
}

/// The shared (re)bootstrap state; clones share it.
#[derive(Debug, Clone)]
pub struct BootstrapState {
    inner: Arc<Mutex<State>>,
}

impl BootstrapState {
    /// The state at start: `rebootstrap` when `data_dir` already holds a trust bundle
    /// (the agent attested before), `bootstrap` otherwise.
    pub fn new(has_stored_bundle: bool) -> Self {
        let state = Self {
            inner: Arc::new(Mutex::new(State {
                phase: if has_stored_bundle {
                    BootstrapUse::Rebootstrap
                } else {
                    BootstrapUse::Bootstrap
                },
                started: None,
                attempts: 0,
            })),
        };
        state.report();
        state
    }

    /// Whether the next attestation is the agent's first one (upstream's `IsBootstrap`).
    pub fn is_bootstrap(&self) -> bool {
        self.lock().phase == BootstrapUse::Bootstrap
    }

    /// Counts one read of the bootstrap bundle, starting the clock if it is not running.
    pub fn bundle_read(&self) {
        {
            let mut state = self.lock();
            state.attempts = state.attempts.saturating_add(1);
            state.started.get_or_insert_with(SystemTime::now);
        }
        self.report();
    }

    /// A secure connection to the server succeeded: the clock stops and the next trouble is
    /// a rebootstrap (upstream's `SetSuccess`).
    pub fn succeeded(&self) {
        {
            let mut state = self.lock();
            state.phase = BootstrapUse::Rebootstrap;
            state.attempts = 0;
            state.started = None;
        }
        self.report();
    }

    /// How long the agent and the server have disagreed: starts the clock now when it was
    /// not running (upstream's `GetStartTime`).
    pub fn disagreeing_for(&self) -> Duration {
        let started = {
            let mut state = self.lock();
            *state.started.get_or_insert_with(SystemTime::now)
        };
        self.report();
        SystemTime::now()
            .duration_since(started)
            .unwrap_or(Duration::ZERO)
    }

    /// Trust is lost for good: forgets the agent SVID and the stored bundle, so the next
    /// attestation starts from the bootstrap source (upstream's `SetForceRebootstrap`).
    pub fn force_rebootstrap(&self, storage: &AgentStorage) -> Result<(), StorageError> {
        {
            let mut state = self.lock();
            state.phase = BootstrapUse::Rebootstrap;
            state.started = Some(SystemTime::now());
            state.attempts = 0;
        }
        self.report();
        storage.delete_svid()?;
        storage.store_bundle(&[])
    }

    /// Upstream's gauges for the current state.
    fn report(&self) {
        let (phase, started, attempts) = {
            let state = self.lock();
            (state.phase, state.started, state.attempts)
        };
        let metrics = spire_common::telemetry::global();
        let mode = [("mode", phase.label().to_owned())];
        metrics.set_gauge(
            &["bootstraped"],
            &[],
            if started.is_none() { 1.0 } else { 0.0 },
        );
        let seconds = started.map_or(GO_ZERO_TIME_UNIX, |t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs() as f64)
        });
        metrics.set_gauge(&["bootstrap_seconds"], &mode, seconds);
        metrics.set_gauge(&["bootstrap_attempts"], &mode, f64::from(attempts));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn a_fresh_data_dir_bootstraps_and_an_attested_one_rebootstraps() {
        assert!(BootstrapState::new(false).is_bootstrap());
        assert!(!BootstrapState::new(true).is_bootstrap());
    }

    #[test]
    fn success_makes_the_next_trouble_a_rebootstrap_and_resets_the_clock() {
        let state = BootstrapState::new(false);
        state.bundle_read();
        state.bundle_read();
        assert_eq!(state.lock().attempts, 2);
        assert!(state.lock().started.is_some());
        state.succeeded();
        assert!(!state.is_bootstrap());
        assert_eq!(state.lock().attempts, 0);
        assert!(state.lock().started.is_none());
    }

    #[test]
    fn the_delay_clock_runs_from_the_first_disagreement() {
        let state = BootstrapState::new(true);
        let past = SystemTime::now() - Duration::from_secs(30);
        state.lock().started = Some(past);
        let since = state.disagreeing_for();
        assert!(since >= Duration::from_secs(30), "{since:?}");
        state.succeeded();
        assert!(state.disagreeing_for() < Duration::from_secs(5));
    }

    #[test]
    fn forcing_a_rebootstrap_forgets_the_svid_and_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AgentStorage::open(dir.path()).unwrap();
        let der = vec![0x30, 0x00];
        // Storage only accepts real certificates when it reads the file back, not when
        // it stores them, so placeholder bytes are enough to see them go away.
        let _ = storage.store_svid(std::slice::from_ref(&der), true);
        let _ = storage.store_bundle(std::slice::from_ref(&der));
        let state = BootstrapState::new(true);
        state.force_rebootstrap(&storage).unwrap();
        assert!(storage.load_svid().is_none());
        assert!(storage.load_bundle().is_none());
        assert!(state.lock().started.is_some());
    }
}
