//! The caller's deadline: a Lambda invocation has one (its remaining time), and
//! an adapter that would wait — for a rate limit, a pacing window — waits only
//! while it fits, handing the wait back as an error otherwise (the handler
//! then answers `RetryAfter`, which defers the message without spending a
//! receive). Set per task with [`within`]; without one, waits are bounded by
//! the adapter's own settings.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// What is kept back from the deadline for the work after a wait (the
/// request itself, the answer to the runtime).
pub const MARGIN: Duration = Duration::from_secs(5);

/// Runs `future` with `deadline` as its task's deadline.
pub async fn within<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(deadline, future).await
}

/// The time left before the task's deadline, where it has one.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// The longest a wait may be now: `max`, or less where the task's deadline
/// (less [`MARGIN`]) comes sooner.
pub fn allowed_wait(max: Duration) -> Duration {
    DEADLINE
        .try_with(|deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(MARGIN)
        })
        .map_or(max, |left| left.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_fits_the_deadline_when_there_is_one() {
        let max = Duration::from_secs(60);
        assert_eq!(allowed_wait(max), max);
        let soon = Instant::now() + Duration::from_secs(8);
        let inside = within(soon, async { allowed_wait(max) }).await;
        assert!(inside <= Duration::from_secs(3), "{inside:?}");
        let past = within(Instant::now(), async { allowed_wait(max) }).await;
        assert_eq!(past, Duration::ZERO);
    }
}
