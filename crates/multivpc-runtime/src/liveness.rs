//! What `/healthz` answers: whether the controller still gets anywhere. Two things wedge a
//! controller that a restart mends, and both are seen from inside the process:
//!
//! - a watch that keeps failing: every attempt ends in an error (an expired resource version
//!   it cannot get past, a credential the API server no longer takes), with no event between;
//! - a reconcile (or a sync pass) that has run for longer than any of its timeouts allows.
//!
//! Either one lasting longer than the stall timeout (`--stall-timeout`) fails `/healthz`, so
//! the kubelet restarts the container. An API server that is merely away does not: its watches
//! fail only as often as their backoff retries them, and once the errors stop for longer than
//! [`STREAK_GAP`] the streak is over (a re-established watch yields nothing until an object
//! changes, so the end of the errors is the only sign of recovery some watches give).

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Errors closer together than this form one streak of failures. The watch backoff is capped
/// at [`crate::watch::BACKOFF_MAX`] (doubled by jitter at most), so a watch that keeps failing
/// errs well within it.
pub const STREAK_GAP: Duration = Duration::from_secs(90);

/// The default stall timeout.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Watch failure streaks and running reconciles of one process.
pub struct Liveness {
    stall_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per watched kind: when its current streak of errors began, and its latest error.
    failing: BTreeMap<String, (Instant, Instant)>,
    /// Running reconciles (id → what, since when).
    running: BTreeMap<u64, (String, Instant)>,
    next_id: u64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new(DEFAULT_STALL_TIMEOUT)
    }
}

impl Liveness {
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            stall_timeout,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch of `kind` failed (it retries with backoff).
    pub fn watch_failed(&self, kind: &str) {
        self.watch_failed_at(kind, Instant::now());
    }

    fn watch_failed_at(&self, kind: &str, now: Instant) {
        let mut state = self.state();
        match state.failing.get_mut(kind) {
            Some((_, last)) if now.saturating_duration_since(*last) <= STREAK_GAP => *last = now,
            _ => {
                state.failing.insert(kind.to_owned(), (now, now));
            }
        }
    }

    /// A watch of `kind` delivered an event: its streak of failures, if any, is over.
    pub fn watch_progressed(&self, kind: &str) {
        let mut state = self.state();
        if !state.failing.is_empty() {
            state.failing.remove(kind);
        }
    }

    /// Marks `what` as running until the returned guard is dropped.
    pub fn running(&self, what: impl Into<String>) -> Running<'_> {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.running.insert(id, (what.into(), Instant::now()));
        Running { liveness: self, id }
    }

    /// Why the process is wedged, if it is: the first watch or reconcile stalled for longer
    /// than the stall timeout.
    pub fn stalled(&self) -> Option<String> {
        self.stalled_at(Instant::now())
    }

    fn stalled_at(&self, now: Instant) -> Option<String> {
        let state = self.state();
        let limit = self.stall_timeout;
        let watch = state.failing.iter().find(|(_, (since, last))| {
            now.saturating_duration_since(*last) <= STREAK_GAP
                && now.saturating_duration_since(*since) > limit
        });
        if let Some((kind, (since, _))) = watch {
            return Some(format!(
                "the {kind} watch has failed for {}s without an event (stall timeout {}s)",
                now.saturating_duration_since(*since).as_secs(),
                limit.as_secs()
            ));
        }
        state
            .running
            .values()
            .find(|(_, since)| now.saturating_duration_since(*since) > limit)
            .map(|(what, since)| {
                format!(
                    "{what} has run for {}s (stall timeout {}s)",
                    now.saturating_duration_since(*since).as_secs(),
                    limit.as_secs()
                )
            })
    }
}

/// A reconcile in progress (see [`Liveness::running`]).
pub struct Running<'a> {
    liveness: &'a Liveness,
    id: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.liveness.state().running.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(300);

    #[test]
    fn a_watch_that_keeps_failing_stalls_and_an_event_ends_it() {
        let l = Liveness::new(LIMIT);
        let t0 = Instant::now();
        // Errors every 8 s (the backoff cap) for just over the limit.
        let mut t = t0;
        while t.duration_since(t0) <= LIMIT {
            l.watch_failed_at("Pod", t);
            assert_eq!(l.stalled_at(t), None, "not yet past the limit");
            t += Duration::from_secs(8);
        }
        l.watch_failed_at("Pod", t);
        let why = l.stalled_at(t).expect("stalled");
        assert!(why.contains("the Pod watch has failed for 304s"), "{why}");
        l.watch_progressed("Pod");
        assert_eq!(l.stalled_at(t), None);
    }

    #[test]
    fn a_watch_that_stops_failing_is_not_stalled() {
        // An API server away for a while, then back: the watch resumed without an event.
        let l = Liveness::new(LIMIT);
        let t0 = Instant::now();
        for s in (0..=200).step_by(8) {
            l.watch_failed_at("Vpc", t0 + Duration::from_secs(s));
        }
        let later = t0 + Duration::from_secs(200) + STREAK_GAP + Duration::from_secs(1);
        assert_eq!(l.stalled_at(later), None);
        // A new error much later starts a new streak, not the old one's.
        l.watch_failed_at("Vpc", later);
        assert_eq!(l.stalled_at(later + Duration::from_secs(1)), None);
    }

    #[test]
    fn a_reconcile_running_past_the_limit_stalls_until_it_ends() {
        let l = Liveness::new(LIMIT);
        let running = l.running("reconcile of ns/t1");
        let now = Instant::now();
        assert_eq!(l.stalled_at(now), None);
        let why = l.stalled_at(now + LIMIT + Duration::from_secs(2)).unwrap();
        assert!(
            why.starts_with("reconcile of ns/t1 has run for 30"),
            "{why}"
        );
        drop(running);
        assert_eq!(l.stalled_at(now + LIMIT + Duration::from_secs(2)), None);
    }
}
