//! The provider's clock, as its answers tell it.
//!
//! Times in the log are compared across processes: a `Launched` written by
//! scale-up is judged by compensation, which may run on another host. Hosts'
//! clocks drift; the provider's does not drift between its answers. So jitr
//! takes the provider's time from its answers (the HTTP `Date` every AWS
//! answer carries) and carries it forward on this host's monotonic clock,
//! which the wall clock's steps and skew do not move. `Date` has whole
//! seconds and arrives after it was written, so the estimate is at most about
//! a second late, never early: a window judged on it closes late, not soon.

use std::sync::Mutex;
use std::time::Instant;

use jitr_domain::Timestamp;

/// The provider's time, learnt from its answers. Cheap to share.
#[derive(Debug, Default)]
pub struct CloudClock {
    latest: Mutex<Option<(Timestamp, Instant)>>,
}

impl CloudClock {
    /// A clock that has heard nothing yet.
    pub const fn new() -> Self {
        CloudClock {
            latest: Mutex::new(None),
        }
    }

    /// The provider answered, saying it was `told` (its `Date`). Kept when it
    /// puts the provider's time later than what was known: each estimate is
    /// late, so the latest is the closest.
    pub fn observe(&self, told: Timestamp) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let known = latest.map(|(at, seen)| advance(at, seen));
        if known.is_none_or(|known| told >= known) {
            *latest = Some((told, Instant::now()));
        }
    }

    /// The provider's time now, if it has answered since this process began.
    pub fn now(&self) -> Option<Timestamp> {
        let latest = *self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.map(|(at, seen)| advance(at, seen))
    }
}

fn advance(at: Timestamp, seen: Instant) -> Timestamp {
    at.plus_ms(seen.elapsed().as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_nothing_before_an_answer() {
        assert_eq!(CloudClock::new().now(), None);
    }

    #[test]
    fn carries_the_told_time_forward_and_keeps_the_latest_estimate() {
        let clock = CloudClock::new();
        let told = Timestamp(1_800_000_000_000);
        clock.observe(told);
        let now = clock.now().expect("an answer was heard");
        assert!(now >= told && now.millis_since(told) < 1_000);
        // An answer saying an earlier time (a whole-second `Date` read late)
        // does not move the clock back.
        clock.observe(Timestamp(told.0 - 5_000));
        assert!(clock.now().expect("known") >= told);
        // A later one moves it on.
        clock.observe(told.plus_ms(60_000));
        assert!(clock.now().expect("known") >= told.plus_ms(60_000));
    }
}
