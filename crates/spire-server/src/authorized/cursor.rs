//! Where the index stands in one change-event stream (entries or agents), and which event IDs
//! were skipped and must be re-checked.
//!
//! Event IDs are allocated when a transaction inserts its event row but become visible only
//! when it commits, so a reader can see 8 before 7. Like upstream's events-based cache
//! (`pkg/server/endpoints/authorized_entryfetcher_*.go`), a skipped ID is remembered and looked
//! for on every poll until it shows up or times out (the transaction rolled back).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::datastore::ChangeEvent;

/// A gap wider than this is not tracked ID by ID; the index reloads everything instead.
pub(super) const MAX_TRACKED_GAP: u64 = 10_000;

/// How many IDs below the first event seen at the first load are watched, in case a
/// transaction that allocated them commits after the load.
pub(super) const STARTUP_LOOKBACK: u64 = 100;

/// Progress through one event stream.
#[derive(Debug, Clone, Default)]
pub(super) struct EventCursor {
    /// The highest event ID applied.
    last: u64,
    /// Whether any event has been seen; gaps are only meaningful after the first one.
    seen_any: bool,
    /// Skipped event IDs and when they were first missed.
    missed: BTreeMap<u64, Instant>,
    /// A gap too wide to track was seen; only a full reload catches up safely.
    overflowed: bool,
}

impl EventCursor {
    /// The cursor after a full load that listed `events` (every event row) before listing
    /// the records. Skipped IDs still tracked by `previous` (the cursor before a reload) stay
    /// tracked unless they appear now.
    pub(super) fn from_listing(
        events: &[ChangeEvent],
        now: Instant,
        previous: Option<&EventCursor>,
    ) -> Self {
        let mut ids: Vec<u64> = events.iter().map(|event| event.event_id).collect();
        ids.sort_unstable();
        ids.dedup();

        let mut cursor = Self::default();
        if let Some(previous) = previous {
            cursor.last = previous.last;
            cursor.seen_any = previous.seen_any;
            cursor.missed = previous
                .missed
                .iter()
                .filter(|(id, _)| ids.binary_search(id).is_err())
                .map(|(id, at)| (*id, *at))
                .collect();
        }
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return cursor;
        };
        if !cursor.seen_any {
            for id in first.saturating_sub(STARTUP_LOOKBACK).max(1)..first {
                cursor.missed.entry(id).or_insert(now);
            }
        }
        for pair in ids.windows(2) {
            if let [low, high] = *pair {
                cursor.track_gap(low, high, now, false);
            }
        }
        cursor.missed.retain(|id, _| *id <= last);
        cursor.last = last;
        cursor.seen_any = true;
        cursor
    }

    /// The `after` argument for the next event listing: low enough to see skipped IDs too.
    pub(super) fn query_after(&self) -> u64 {
        match self.missed.keys().next() {
            Some(first_missed) => self.last.min(first_missed.saturating_sub(1)),
            None => self.last,
        }
    }

    /// Takes in events listed after [`Self::query_after`]; returns the IDs (entry IDs or
    /// agent SPIFFE IDs) to re-fetch, each once, in event order.
    pub(super) fn observe(&mut self, events: &[ChangeEvent], now: Instant) -> Vec<String> {
        let mut ordered: Vec<&ChangeEvent> = events.iter().collect();
        ordered.sort_by_key(|event| event.event_id);

        let mut changed = Vec::new();
        let mut queued: HashSet<&str> = HashSet::new();
        for event in ordered {
            if event.event_id <= self.last {
                // Already applied, unless it is one we skipped and it has now committed.
                if self.missed.remove(&event.event_id).is_none() {
                    continue;
                }
            } else {
                if self.seen_any {
                    self.track_gap(self.last, event.event_id, now, true);
                }
                self.last = event.event_id;
                self.seen_any = true;
            }
            if queued.insert(event.id.as_str()) {
                changed.push(event.id.clone());
            }
        }
        changed
    }

    /// Gives up on skipped IDs older than `timeout`: their transactions rolled back.
    pub(super) fn expire(&mut self, now: Instant, timeout: Duration) {
        self.missed
            .retain(|_, since| now.saturating_duration_since(*since) <= timeout);
    }

    /// Whether only a full reload can bring the index up to date.
    pub(super) fn needs_reload(&self) -> bool {
        self.overflowed
    }

    /// How many skipped event IDs are still watched (upstream's `skipped_*_event_ids`).
    pub(super) fn missed_count(&self) -> usize {
        self.missed.len()
    }

    /// The skipped event IDs still being watched.
    #[cfg(test)]
    pub(super) fn missed_ids(&self) -> Vec<u64> {
        self.missed.keys().copied().collect()
    }

    /// Records the IDs strictly between `low` and `high` as skipped.
    fn track_gap(&mut self, low: u64, high: u64, now: Instant, overflow_reloads: bool) {
        let gap = high.saturating_sub(low).saturating_sub(1);
        if gap == 0 {
            return;
        }
        if gap > MAX_TRACKED_GAP {
            tracing::warn!(
                after = low,
                before = high,
                "change-event IDs jump too far to track one by one; scheduling a full reload"
            );
            self.overflowed |= overflow_reloads;
            return;
        }
        for id in low + 1..high {
            tracing::debug!(event_id = id, "detected skipped change event");
            self.missed.entry(id).or_insert(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event_id: u64, id: &str) -> ChangeEvent {
        ChangeEvent {
            event_id,
            id: id.to_owned(),
        }
    }

    #[test]
    fn gaps_are_tracked_and_filled_later() {
        let now = Instant::now();
        let mut cursor = EventCursor::from_listing(&[ev(1, "a"), ev(2, "b")], now, None);
        assert_eq!(cursor.query_after(), 2);

        // 3 and 4 are not committed yet.
        assert_eq!(cursor.observe(&[ev(5, "e")], now), ["e"]);
        assert_eq!(cursor.missed_ids(), [3, 4]);
        assert_eq!(cursor.missed_count(), 2, "the skipped_*_event_ids gauge");
        assert_eq!(cursor.query_after(), 2);

        // 4 commits; listing after 2 returns 4 and 5 again, only 4 is new.
        assert_eq!(cursor.observe(&[ev(4, "d"), ev(5, "e")], now), ["d"]);
        assert_eq!(cursor.missed_ids(), [3]);
        assert_eq!(
            cursor.observe(&[ev(3, "c"), ev(4, "d"), ev(5, "e"), ev(6, "f")], now),
            ["c", "f"]
        );
        assert!(cursor.missed_ids().is_empty());
        assert_eq!(cursor.missed_count(), 0);
        assert_eq!(cursor.query_after(), 6);
    }

    #[test]
    fn skipped_ids_expire() {
        let now = Instant::now();
        let mut cursor = EventCursor::from_listing(&[ev(1, "a"), ev(4, "d")], now, None);
        assert_eq!(cursor.missed_ids(), [2, 3]);
        cursor.expire(now + Duration::from_secs(61), Duration::from_secs(60));
        assert!(cursor.missed_ids().is_empty());
        assert_eq!(cursor.query_after(), 4);
    }

    #[test]
    fn first_load_watches_ids_just_below_the_first_event() {
        let now = Instant::now();
        let cursor = EventCursor::from_listing(&[ev(500, "a")], now, None);
        assert_eq!(cursor.missed_ids().len() as u64, STARTUP_LOOKBACK);
        assert_eq!(cursor.query_after(), 500 - STARTUP_LOOKBACK - 1);

        let cursor = EventCursor::from_listing(&[ev(3, "a")], now, None);
        assert_eq!(cursor.missed_ids(), [1, 2]);
    }

    #[test]
    fn reload_keeps_watching_ids_still_missing() {
        let now = Instant::now();
        let mut cursor = EventCursor::from_listing(&[ev(1, "a")], now, None);
        cursor.observe(&[ev(4, "d")], now);
        assert_eq!(cursor.missed_ids(), [2, 3]);
        let reloaded =
            EventCursor::from_listing(&[ev(1, "a"), ev(3, "c"), ev(4, "d")], now, Some(&cursor));
        assert_eq!(reloaded.missed_ids(), [2]);
        assert_eq!(reloaded.query_after(), 1);
    }

    #[test]
    fn duplicate_ids_are_fetched_once_and_empty_streams_track_nothing() {
        let now = Instant::now();
        let mut cursor = EventCursor::from_listing(&[], now, None);
        // The table may have been pruned: the first event seen opens no gap.
        assert_eq!(
            cursor.observe(&[ev(70, "x"), ev(71, "x"), ev(72, "y")], now),
            ["x", "y"]
        );
        assert!(cursor.missed_ids().is_empty());
    }

    #[test]
    fn huge_gaps_ask_for_a_reload() {
        let now = Instant::now();
        let mut cursor = EventCursor::from_listing(&[ev(1, "a")], now, None);
        cursor.observe(&[ev(2 + MAX_TRACKED_GAP + 1, "z")], now);
        assert!(cursor.needs_reload());
        assert!(cursor.missed_ids().is_empty());
        let reloaded = EventCursor::from_listing(
            &[ev(1, "a"), ev(2 + MAX_TRACKED_GAP + 1, "z")],
            now,
            Some(&cursor),
        );
        assert!(!reloaded.needs_reload());
    }
}
