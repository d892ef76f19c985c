//! A token bucket for per-tenant token rates: it refills continuously at
//! `tokens_per_minute / 60` per second up to one minute's worth, so a tenant
//! idle for a minute may burst that much at once and no more. Pure: callers
//! pass the time, so tests use explicit instants.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens_per_minute: u32,
    /// Tokens available at `updated`; negative while a request that used
    /// more than it was charged is being paid off.
    level: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(tokens_per_minute: u32, now: Instant) -> Self {
        Self {
            tokens_per_minute,
            level: f64::from(tokens_per_minute),
            updated: now,
        }
    }

    pub fn tokens_per_minute(&self) -> u32 {
        self.tokens_per_minute
    }

    fn per_second(&self) -> f64 {
        f64::from(self.tokens_per_minute) / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level =
            (self.level + elapsed * self.per_second()).min(f64::from(self.tokens_per_minute));
        self.updated = self.updated.max(now);
    }

    /// Takes `tokens` if the bucket holds them, and returns what was taken;
    /// else how long until it will hold them. A charge larger than the
    /// bucket is cut to a full bucket: otherwise it could never pass, and
    /// `debit` settles the difference once the real use is known.
    pub fn try_take(&mut self, tokens: u64, now: Instant) -> Result<u64, Duration> {
        self.refill(now);
        let charge = tokens.min(u64::from(self.tokens_per_minute));
        let missing = charge as f64 - self.level;
        if missing <= 0.0 {
            self.level -= charge as f64;
            return Ok(charge);
        }
        Err(Duration::from_secs_f64(missing / self.per_second()))
    }

    /// Gives back tokens taken but not used.
    pub fn refund(&mut self, tokens: u64, now: Instant) {
        self.refill(now);
        self.level = (self.level + tokens as f64).min(f64::from(self.tokens_per_minute));
    }

    /// Takes tokens used beyond what was taken up front, even below zero:
    /// the debt delays the tenant's next requests, so the long-run rate
    /// holds whatever the requests were charged.
    pub fn debit(&mut self, tokens: u64, now: Instant) {
        self.refill(now);
        self.level -= tokens as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_full_bucket_serves_one_minute_then_refills_continuously() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(600, t0);
        assert_eq!(bucket.try_take(600, t0), Ok(600));
        // Empty: 60 tokens take 6 s at 10 tokens/s.
        assert_eq!(bucket.try_take(60, t0), Err(Duration::from_secs(6)));
        assert_eq!(
            bucket.try_take(60, at(t0, 3_000)),
            Err(Duration::from_secs(3))
        );
        assert_eq!(bucket.try_take(60, at(t0, 6_000)), Ok(60));
        assert!(bucket.try_take(1, at(t0, 6_000)).is_err());
    }

    #[test]
    fn refill_stops_at_one_minute_of_tokens() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(120, t0);
        assert_eq!(bucket.try_take(120, at(t0, 10 * 60_000)), Ok(120));
        assert!(bucket.try_take(1, at(t0, 10 * 60_000)).is_err());
    }

    #[test]
    fn refunds_return_unused_tokens_up_to_the_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(60, t0);
        assert_eq!(bucket.try_take(50, t0), Ok(50));
        assert!(bucket.try_take(20, t0).is_err());
        bucket.refund(40, t0);
        assert_eq!(bucket.try_take(50, t0), Ok(50));
        bucket.refund(1_000, t0);
        assert_eq!(bucket.try_take(60, t0), Ok(60));
        assert!(bucket.try_take(1, t0).is_err());
    }

    #[test]
    fn a_charge_over_the_capacity_waits_for_a_full_bucket_and_debt_delays_the_next() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(60, t0);
        assert_eq!(bucket.try_take(10, t0), Ok(10));
        // 500 tokens are cut to the 60 a full bucket holds: 10 s away.
        assert_eq!(bucket.try_take(500, t0), Err(Duration::from_secs(10)));
        assert_eq!(bucket.try_take(500, at(t0, 10_000)), Ok(60));
        // The request used 90: 30 tokens of debt, paid off in 30 s, and a
        // 30-token request waits 30 s more.
        bucket.debit(30, at(t0, 10_000));
        assert_eq!(
            bucket.try_take(30, at(t0, 10_000)),
            Err(Duration::from_secs(60))
        );
        assert_eq!(bucket.try_take(30, at(t0, 70_000)), Ok(30));
    }

    #[test]
    fn an_earlier_instant_than_the_last_one_adds_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(60, at(t0, 5_000));
        assert_eq!(bucket.try_take(60, at(t0, 5_000)), Ok(60));
        assert!(bucket.try_take(1, t0).is_err());
        assert_eq!(bucket.try_take(1, at(t0, 6_000)), Ok(1));
    }
}
