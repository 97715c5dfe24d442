//! Bandwidth caps: token buckets that pace `poll_transmit`, per connection
//! and per node (SPEC.md §10.4, local policy).

use core::time::Duration;

use crate::time::Instant;

/// A token bucket: `rate` bytes per second, holding at most `burst` bytes.
/// Writing may overdraw it by up to one transmit; the debt is repaid before
/// anything more is sent.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: i64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1);
        TokenBucket { rate: rate.max(1), burst, tokens: burst as i64, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        let add = (u128::from(self.rate) * dt.as_nanos() / 1_000_000_000) as i64;
        if add > 0 {
            self.tokens = (self.tokens.saturating_add(add)).min(self.burst as i64);
            // Advance by the time the added tokens account for, keeping the remainder.
            self.last = self.last
                + Duration::from_nanos((add as u128 * 1_000_000_000 / u128::from(self.rate)) as u64);
        }
        if self.tokens >= self.burst as i64 {
            self.last = now;
        }
    }

    /// Bytes that may be sent now (0 if in debt).
    pub(crate) fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0) as usize
    }

    /// Takes `n` bytes (possibly into debt).
    pub(crate) fn spend(&mut self, n: usize) {
        self.tokens = self.tokens.saturating_sub(n as i64);
    }

    /// When at least one byte may be sent again, if none may now (as of
    /// the last refill).
    pub(crate) fn ready_at(&self) -> Option<Instant> {
        if self.tokens > 0 {
            return None;
        }
        let need = (1 - self.tokens) as u128;
        Some(self.last + Duration::from_nanos((need * 1_000_000_000).div_ceil(u128::from(self.rate)) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_time() {
        let t0 = Instant::ZERO;
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.available(t0), 100);
        b.spend(300);
        assert_eq!(b.available(t0), 0);
        let ready = b.ready_at().expect("in debt");
        assert_eq!(ready, t0 + Duration::from_millis(201));
        assert_eq!(b.available(ready), 1);
        // Over 10 s at most rate × 10 + burst bytes go out.
        let mut sent = 300usize;
        let mut now = ready;
        while now < t0 + Duration::from_secs(10) {
            let n = b.available(now);
            b.spend(n);
            sent += n;
            now = now + Duration::from_millis(7);
        }
        assert!((9_900..=10_100).contains(&sent), "{sent}");
    }
}
