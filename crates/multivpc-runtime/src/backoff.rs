//! Per-object exponential backoff for `error_policy`: the first retry comes quickly, a
//! persistent failure is retried ever more slowly (never a hot loop), and success resets it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Retry delays per object key, doubling from `min` up to `max`.
pub struct ErrorBackoff {
    min: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
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

    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        let delay = self
            .min
            .saturating_mul(1u32 << (*count).min(20))
            .min(self.max);
        *count = count.saturating_add(1);
        delay
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
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.next_delay("b").as_secs(), 1, "keys are independent");
        b.reset("a");
        assert_eq!(b.next_delay("a").as_secs(), 1);
        for _ in 0..100 {
            b.next_delay("c");
        }
        assert_eq!(
            b.next_delay("c").as_secs(),
            10,
            "no overflow after many failures"
        );
    }
}
