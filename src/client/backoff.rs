//! Retry schedule: exponential backoff with jitter, and which failures are
//! worth another try.
//!
//! Attempt k (from 0) waits a nominal `base · 2^k`, capped at `cap`; the
//! real wait is drawn uniformly from the upper half of that (equal jitter),
//! so many clients cut off at once do not come back in step, and no wait is
//! ever shorter than half the nominal one.

use std::time::Duration;

/// HTTP statuses that mean "try again": 408, 429, 5xx and Cloudflare's 524
/// (origin timeout) — 524 is a 5xx, listed for the reader.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 524) || (500..600).contains(&status)
}

/// API error codes on a 4xx that still mean the bytes were damaged or cut
/// on the way (a proxy dropped the connection mid-body).
pub fn retryable_code(code: &str) -> bool {
    matches!(code, "part_truncated" | "part_digest_mismatch")
}

/// A retry schedule.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First nominal wait.
    pub base: Duration,
    /// Largest nominal wait.
    pub cap: Duration,
    /// Attempts in all (the first try included); `None`: never give up.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 0.5 s, 1 s, 2 s, … up to 30 s, 10 attempts (about 2.5 minutes).
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_attempts: Some(10),
        }
    }
}

impl Backoff {
    /// The nominal wait after failed attempt `attempt` (0-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
        let ms = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap)
    }

    /// The jittered wait: uniform in `[nominal/2, nominal]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        use rand::Rng as _;
        let n = self.nominal(attempt);
        let half = n / 2;
        let extra = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(extra)
    }

    /// Whether another attempt follows failed attempt `attempt` (0-based).
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|m| attempt + 1 < m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_then_caps() {
        let b = Backoff::default();
        let got: Vec<u64> = (0..9).map(|k| b.nominal(k).as_millis() as u64).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(
            b.nominal(200),
            Duration::from_secs(30),
            "no overflow on huge attempts"
        );
    }

    #[test]
    fn jitter_stays_in_upper_half() {
        let b = Backoff::default();
        for k in 0..8 {
            for _ in 0..50 {
                let d = b.delay(k);
                assert!(
                    d >= b.nominal(k) / 2 && d <= b.nominal(k),
                    "attempt {k}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn attempts_are_bounded_unless_forever() {
        let b = Backoff::default();
        assert!(b.allows(0) && b.allows(8));
        assert!(!b.allows(9));
        let forever = Backoff {
            max_attempts: None,
            ..b
        };
        assert!(forever.allows(10_000));
    }

    #[test]
    fn what_is_retried() {
        for s in [408, 429, 500, 502, 503, 524] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert!(!retryable_status(s), "{s}");
        }
        assert!(retryable_code("part_truncated"));
        assert!(!retryable_code("nar_hash_mismatch"));
    }
}
