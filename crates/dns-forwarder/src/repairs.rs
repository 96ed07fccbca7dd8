//! Repairs after Kube-OVN rewrote a vpc-dns Deployment without the route. Each repair changes
//! the pod template, so the Deployment rolls (new vpc-dns pods): repairs are counted, and when
//! Kube-OVN keeps rewriting, spaced out instead of fighting it in a loop.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The first repair of a Deployment is immediate; each further one within [`QUIET`] of the
/// previous waits twice as long as the last wait (from the spacing, `--repair-spacing`, up to
/// [`MAX_WAIT`]).
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// A Deployment left alone this long starts over with an immediate repair.
pub const QUIET: Duration = Duration::from_secs(600);

/// Per-Deployment repair history.
pub struct RepairLimiter {
    spacing: Duration,
    last: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RepairLimiter {
    pub fn new(spacing: Duration) -> Self {
        Self {
            spacing,
            last: Mutex::default(),
        }
    }

    /// Whether `deployment` may be repaired at `now`: `Err` is how long to wait. Nothing is
    /// recorded until [`RepairLimiter::record`]: a repair whose patch failed (a conflict, say)
    /// is retried without waiting.
    pub fn check(&self, deployment: &str, now: Instant) -> Result<(), Duration> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|_, (at, _)| now.saturating_duration_since(*at) < QUIET);
        let Some((at, streak)) = last.get(deployment).copied() else {
            return Ok(());
        };
        let wait = self.wait_after(streak);
        let since = now.saturating_duration_since(at);
        if since >= wait {
            Ok(())
        } else {
            Err(wait - since)
        }
    }

    /// Records that `deployment` was repaired at `now`.
    pub fn record(&self, deployment: &str, now: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let streak = match last.get(deployment) {
            Some((at, streak)) if now.saturating_duration_since(*at) < QUIET => streak + 1,
            _ => 1,
        };
        last.insert(deployment.to_owned(), (now, streak));
    }

    fn wait_after(&self, streak: u32) -> Duration {
        self.spacing
            .saturating_mul(1 << (streak - 1).min(16))
            .min(MAX_WAIT)
    }

    /// [`check`](Self::check), then [`record`](Self::record) when allowed.
    #[cfg(test)]
    fn admit(&self, deployment: &str, now: Instant) -> Result<(), Duration> {
        self.check(deployment, now)?;
        self.record(deployment, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_back_off_while_kube_ovn_keeps_rewriting_and_reset_when_quiet() {
        let l = RepairLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(l.admit("d", t0), Ok(()), "the first repair is immediate");
        assert_eq!(l.admit("d", t0 + s(1)), Err(s(9)));
        assert_eq!(l.admit("other", t0 + s(1)), Ok(()), "per Deployment");
        assert_eq!(l.admit("d", t0 + s(10)), Ok(()));
        assert_eq!(l.admit("d", t0 + s(25)), Err(s(5)), "then 20 s");
        assert_eq!(l.admit("d", t0 + s(30)), Ok(()));
        let mut at = t0 + s(30);
        for _ in 0..10 {
            while let Err(wait) = l.admit("d", at) {
                assert!(wait <= MAX_WAIT);
                at += wait;
            }
        }
        assert_eq!(l.admit("d", at + s(1)), Err(MAX_WAIT - s(1)), "capped");
        assert_eq!(l.admit("d", at + QUIET), Ok(()), "quiet: immediate again");
        assert_eq!(l.admit("d", at + QUIET + s(1)), Err(s(9)));
    }

    #[test]
    fn a_repair_that_was_not_written_does_not_count() {
        let l = RepairLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check("d", t0), Ok(()));
        // The patch failed (409): nothing recorded, the retry is not held back.
        assert_eq!(l.check("d", t0 + Duration::from_millis(100)), Ok(()));
        l.record("d", t0 + Duration::from_millis(100));
        assert!(l.check("d", t0 + Duration::from_secs(1)).is_err());
    }
}
