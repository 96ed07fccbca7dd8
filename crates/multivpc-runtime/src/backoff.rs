//! Per-object exponential backoff for `error_policy`: the first retry comes quickly, a
//! persistent failure is retried ever more slowly (never a hot loop), and success resets it.
//!
//! The backoff holds against watch triggers too. kube's scheduler runs an object at the
//! earliest time anyone asked for, so a peer's status write or any event of a watched kind
//! would run a failing object again at once, and a fleet of failing tunnels fed a retry storm.
//! A reconcile of an object still in its backoff is therefore put back to its retry time
//! ([`ErrorBackoff::held`]), unless the object itself changed (a new `metadata.generation`:
//! a spec edit or a deletion), which is acted on at once.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Retry delays per object key, doubling from `min` up to `max`.
pub struct ErrorBackoff {
    min: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    retry_at: Instant,
    generation: Option<i64>,
}

impl ErrorBackoff {
    /// A backoff doubling from `min` to at most `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `key` (at `generation`) and returns how long to wait before
    /// retrying it.
    pub fn next_delay(&self, key: &str, generation: Option<i64>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = failures.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            retry_at: Instant::now(),
            generation,
        });
        let delay = self
            .min
            .saturating_mul(1u32 << f.count.min(20))
            .min(self.max);
        f.count = f.count.saturating_add(1);
        f.retry_at = Instant::now() + delay;
        f.generation = generation;
        delay
    }

    /// How much longer `key` waits for its retry: `None` when it is not failing, its retry is
    /// due, or the object changed since it failed (`generation` differs).
    pub fn held(&self, key: &str, generation: Option<i64>) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = failures.get(key)?;
        if f.generation != generation {
            return None;
        }
        let left = f.retry_at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Keeps only the keys `live` accepts: objects deleted without a successful reconcile (a
    /// finalizer removed by hand, a deletion while on standby) are forgotten.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live(k));
    }

    /// Forgets the failures of `key` (call after a successful reconcile).
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

impl Default for ErrorBackoff {
    /// 1 s doubling to 5 min, as controller-runtime's default rate limiter (5 ms–1000 s) but
    /// with a first step that does not hammer an API server that just refused us.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let b = ErrorBackoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay("a", None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.next_delay("b", None).as_secs(), 1, "keys are independent");
        b.reset("a");
        assert_eq!(b.next_delay("a", None).as_secs(), 1);
        for _ in 0..100 {
            b.next_delay("c", None);
        }
        assert_eq!(
            b.next_delay("c", None).as_secs(),
            10,
            "no overflow after many failures"
        );
    }

    #[test]
    fn a_failing_object_is_held_until_its_retry_unless_it_changed() {
        let b = ErrorBackoff::new(Duration::from_secs(60), Duration::from_secs(600));
        assert_eq!(b.held("a", Some(1)), None, "not failing");
        b.next_delay("a", Some(1));
        let left = b.held("a", Some(1)).expect("held");
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
        assert_eq!(b.held("a", Some(2)), None, "a new generation goes at once");
        assert_eq!(b.held("b", Some(1)), None);
        b.reset("a");
        assert_eq!(b.held("a", Some(1)), None, "success forgets");
        b.next_delay("gone", Some(1));
        b.next_delay("kept", Some(1));
        b.retain(|k| k == "kept");
        assert!(b.held("gone", Some(1)).is_none() && b.held("kept", Some(1)).is_some());
        let quick = ErrorBackoff::new(Duration::ZERO, Duration::ZERO);
        quick.next_delay("a", None);
        assert_eq!(quick.held("a", None), None, "a due retry runs");
    }
}
