//! The GitHub request budget of background work — the rebalancer's listings and
//! the reaper's periodic job polls. Each installation's token has one rate limit
//! (5,000 requests an hour for most installations), and minting a runner's JIT
//! config must never find it spent. Background work may use at most a share of
//! the hourly limit (default 20 %) in any hour, and never the last share of what
//! GitHub says remains. Minting, registration removal and the job poll before a
//! deadline termination are not budgeted: they are what the reserve is for.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use jitr_domain::Timestamp;
use jitr_infra::GitHub;

/// The hourly limit assumed until GitHub reports one (`x-ratelimit-limit`).
pub const DEFAULT_HOURLY_LIMIT: u64 = 5_000;
const HOUR_MS: u64 = 3_600_000;

/// Background requests per installation, in a sliding hour.
pub struct RequestBudget {
    github: Arc<dyn GitHub>,
    share_pct: u64,
    spent: Mutex<HashMap<u64, VecDeque<(Timestamp, u64)>>>,
}

impl RequestBudget {
    /// A budget of `share_pct` % (1–100) of each installation's hourly limit,
    /// reading what GitHub reported from `github`.
    pub fn new(github: Arc<dyn GitHub>, share_pct: u64) -> Self {
        RequestBudget {
            github,
            share_pct: share_pct.clamp(1, 100),
            spent: Mutex::default(),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, HashMap<u64, VecDeque<(Timestamp, u64)>>> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Background requests of `installation` in the hour before `now`.
    pub fn spent_last_hour(&self, installation: u64, now: Timestamp) -> u64 {
        let mut spent = self.spent();
        let Some(entries) = spent.get_mut(&installation) else {
            return 0;
        };
        while entries
            .front()
            .is_some_and(|(at, _)| now.millis_since(*at) >= HOUR_MS)
        {
            entries.pop_front();
        }
        entries.iter().map(|(_, n)| n).sum()
    }

    /// The background share of `installation`'s hourly limit.
    pub fn cap(&self, installation: u64) -> u64 {
        let limit = self
            .github
            .usage(installation)
            .limit
            .unwrap_or(DEFAULT_HOURLY_LIMIT);
        limit * self.share_pct / 100
    }

    /// Requests background work of `installation` may still send at `now`: the
    /// share of the hour not yet spent, and no more than GitHub's remaining
    /// count (which every process and minting draw on) above a reserve kept for
    /// minting — the share again, or the rest of the limit when the share is
    /// above half — while GitHub's window lasts.
    pub fn left(&self, installation: u64, now: Timestamp) -> u64 {
        let usage = self.github.usage(installation);
        let limit = usage.limit.unwrap_or(DEFAULT_HOURLY_LIMIT);
        let cap = self.cap(installation);
        let reserve = cap.min(limit - cap);
        let mut left = cap.saturating_sub(self.spent_last_hour(installation, now));
        let window_open = usage.reset_at.is_none_or(|reset| now.0 / 1000 < reset);
        if let (Some(remaining), true) = (usage.remaining, window_open) {
            left = left.min(remaining.saturating_sub(reserve));
        }
        left
    }

    /// Records `requests` background requests of `installation` at `now`.
    pub fn charge(&self, installation: u64, now: Timestamp, requests: u64) {
        if requests > 0 {
            self.spent()
                .entry(installation)
                .or_default()
                .push_back((now, requests));
        }
    }

    /// Runs `call` (GitHub requests with `installation`'s token) if the budget
    /// has a request left, charging what it sent (by the client's count; one
    /// when the client does not count). `None`: no budget left, not run.
    pub async fn spend<T>(
        &self,
        installation: u64,
        now: Timestamp,
        call: impl Future<Output = T>,
    ) -> Option<T> {
        if self.left(installation, now) == 0 {
            return None;
        }
        let before = self.github.usage(installation).sent;
        let out = call.await;
        let sent = self.github.usage(installation).sent.saturating_sub(before);
        self.charge(installation, now, sent.max(1));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitr_infra::{ManualClock, QueuedJob, SimGitHub};

    fn github() -> (SimGitHub, ManualClock, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let github = SimGitHub::open(dir.path().join("gh.db")).unwrap();
        let clock = ManualClock::new(Timestamp(1_777_868_520_000));
        github.limit_requests(1_000, clock.clock());
        github
            .queue_job(&QueuedJob {
                owner: "acme".into(),
                repo: "widgets".into(),
                job_id: 1,
                run_id: 10,
                labels: vec!["self-hosted".into()],
                name: "build".into(),
            })
            .unwrap();
        (github, clock, dir)
    }

    /// Background reads until the budget refuses one; how many it allowed.
    async fn spend_all(budget: &RequestBudget, github: &SimGitHub, clock: &ManualClock) -> u64 {
        let mut done = 0;
        while let Some(r) = budget
            .spend(1, clock.now(), github.queued_runs(1, "acme", "widgets"))
            .await
        {
            r.unwrap();
            done += 1;
            clock.advance(1_000);
        }
        done
    }

    #[tokio::test]
    async fn background_work_spends_its_share_of_the_hour_then_waits_for_the_next() {
        let (github, clock, _dir) = github();
        let budget = RequestBudget::new(Arc::new(github.clone()), 20);
        let now = clock.now();
        assert_eq!(budget.cap(1), 200, "20 % of the reported 1,000");
        assert_eq!(spend_all(&budget, &github, &clock).await, 200);
        assert_eq!(budget.spent_last_hour(1, clock.now()), 200);
        assert_eq!(budget.left(2, clock.now()), 200, "per installation");
        // The hour slides: an hour after the first request one is free again,
        // an hour after the last all are.
        clock.set(now.plus_ms(HOUR_MS));
        assert_eq!(budget.left(1, clock.now()), 1);
        clock.set(now.plus_ms(HOUR_MS + 200_000));
        assert_eq!(budget.left(1, clock.now()), 200);
    }

    #[tokio::test]
    async fn the_last_share_of_what_github_says_remains_is_left_to_minting() {
        let (github, clock, _dir) = github();
        // Minting (unbudgeted) used 750 of the 1,000: 250 remain, 200 are the
        // reserve, so background work may send 50 more.
        for _ in 0..750 {
            github.get_job(1, "acme", "widgets", 1).await.unwrap();
        }
        let budget = RequestBudget::new(Arc::new(github.clone()), 20);
        assert_eq!(budget.left(1, clock.now()), 50);
        assert_eq!(spend_all(&budget, &github, &clock).await, 50);
        assert_eq!(github.usage(1).remaining, Some(200));
    }
}
