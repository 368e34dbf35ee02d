//! The capacity queue (ADR-0014): in which order waiting runners are admitted,
//! and what jitr knows of each market's quota, so that it launches the moment
//! capacity frees and never calls RunInstances where it knows the answer.

use std::collections::BTreeMap;

use crate::event::Market;
use crate::ids::Timestamp;

/// The shortest pause of a market after a quota refusal below its known
/// ceiling (an instance still shutting down, other software on the account).
pub const FIRST_PAUSE_MS: u64 = 2_000;

/// The shortest pause of a pool's market after every one of its types was
/// refused for capacity.
pub const FIRST_CAPACITY_PAUSE_MS: u64 = 15_000;

/// The longest pause.
pub const MAX_PAUSE_MS: u64 = 300_000;

/// How long after the last quota refusal one launch past the learnt ceiling is
/// tried (the quota may have been raised, other software may have stopped).
pub const PROBE_AFTER_MS: u64 = 300_000;

/// Orders waiting runners fairly: the repository holding the fewest
/// instances (`held`, counting those this order admits before) goes next,
/// ties to the one whose next runner waited longest; first come first served
/// within each repository. So one repository's burst cannot starve another's
/// job, and while both wait they share the capacity evenly.
///
/// `repository` and `since` read an item's repository and request time; ties
/// keep the input order.
pub fn fair_order<T>(
    mut waiting: Vec<T>,
    repository: impl Fn(&T) -> &str,
    since: impl Fn(&T) -> Timestamp,
    held: impl Fn(&str) -> u32,
) -> Vec<T> {
    waiting.sort_by_key(|w| since(w));
    let mut queues: Vec<(String, u32, std::collections::VecDeque<T>)> = Vec::new();
    for item in waiting {
        let repo = repository(&item).to_owned();
        match queues.iter_mut().find(|(r, _, _)| *r == repo) {
            Some((_, _, queue)) => queue.push_back(item),
            None => {
                let share = held(&repo);
                queues.push((repo, share, std::collections::VecDeque::from([item])));
            }
        }
    }
    let mut ordered = Vec::new();
    loop {
        let next = queues
            .iter_mut()
            .filter_map(|(_, share, queue)| {
                let front = since(queue.front()?);
                Some((*share, front, share, queue))
            })
            .min_by_key(|(share, front, _, _)| (*share, *front));
        let Some((_, _, share, queue)) = next else {
            return ordered;
        };
        *share += 1;
        ordered.extend(queue.pop_front());
    }
}

/// A pause that doubles on each refusal and ends at the first launch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pause {
    /// No launch before this moment.
    pub until: Option<Timestamp>,
    /// The current pause's length.
    pub length_ms: u64,
}

impl Pause {
    /// Whether launches are paused at `now`.
    pub fn holds(&self, now: Timestamp) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    fn extend(&mut self, first_ms: u64, now: Timestamp) {
        self.length_ms = (self.length_ms * 2).clamp(first_ms, MAX_PAUSE_MS);
        self.until = Some(now.plus_ms(self.length_ms));
    }
}

/// What jitr knows of one market's quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarketQuota {
    /// vCPUs the market holds for jitr: learnt from a quota refusal (the vCPUs
    /// jitr held when EC2 refused), raised by every launch past it, or
    /// configured. None: not known yet.
    pub ceiling: Option<u32>,
    /// Launches paused after a refusal below the ceiling.
    pub pause: Pause,
    /// The last quota refusal, or the last probe past the ceiling.
    pub last_refusal: Option<Timestamp>,
}

/// What jitr knows of the account's capacity: per market its quota, per pool
/// and market a pause after capacity refusals of every type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapacityLedger {
    /// Per market.
    pub markets: BTreeMap<Market, MarketQuota>,
    /// Per pool and market: paused after every type was refused for capacity.
    pub pools: BTreeMap<(String, Market), Pause>,
    /// Markets the account's configuration refused (no spot service-linked
    /// role), until when: not tried again before (a freed instance does not
    /// end it; a launch there does).
    pub unusable: BTreeMap<Market, Timestamp>,
    /// Markets whose ceiling the pool file configured (not learnt).
    pub configured: std::collections::BTreeSet<Market>,
}

/// Whether a launch of `vcpus` may go to a market now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// It fits what is known.
    Fits,
    /// It does not fit the learnt ceiling, but the last refusal is old: one
    /// launch is tried past it.
    Probe,
    /// Known full, or paused: no RunInstances.
    Full,
}

impl CapacityLedger {
    /// A ledger whose markets start with configured ceilings: jitr launches
    /// no further there (no probe) unless EC2 refuses below them.
    pub fn with_ceilings(ceilings: impl IntoIterator<Item = (Market, u32)>) -> Self {
        let mut ledger = CapacityLedger::default();
        for (market, vcpus) in ceilings {
            ledger.markets.entry(market).or_default().ceiling = Some(vcpus);
            ledger.configured.insert(market);
        }
        ledger
    }

    /// Whether `vcpus` more may be launched for `pool` in `market`, where jitr
    /// holds `used` vCPUs, at `now`.
    pub fn admits(
        &self,
        pool: &str,
        market: Market,
        used: u32,
        vcpus: u32,
        now: Timestamp,
    ) -> Admission {
        let paused = self
            .pools
            .get(&(pool.to_owned(), market))
            .is_some_and(|p| p.holds(now));
        let quota = self.markets.get(&market).copied().unwrap_or_default();
        let unusable = self.unusable.get(&market).is_some_and(|u| now < *u);
        if paused || unusable || quota.pause.holds(now) {
            return Admission::Full;
        }
        match quota.ceiling {
            None => Admission::Fits,
            Some(ceiling) if used + vcpus <= ceiling => Admission::Fits,
            // Past a learnt ceiling one probe every quiet five minutes; past
            // a configured one (never refused) none: the operator set it.
            Some(_)
                if quota
                    .last_refusal
                    .is_some_and(|at| now.millis_since(at) >= PROBE_AFTER_MS) =>
            {
                Admission::Probe
            }
            Some(_) => Admission::Full,
        }
    }

    /// Why `market` takes no launch more for `pool` (where jitr holds
    /// `used`) at `now`, as the ledger knows it.
    pub fn block(
        &self,
        pool: &str,
        market: Market,
        used: u32,
        now: Timestamp,
    ) -> crate::wait::MarketBlock {
        use crate::wait::MarketBlock;
        if self.unusable.get(&market).is_some_and(|u| now < *u) {
            return MarketBlock::Unusable { market, code: None };
        }
        if let Some(pause) = self
            .pools
            .get(&(pool.to_owned(), market))
            .filter(|p| p.holds(now))
        {
            return MarketBlock::Capacity {
                market,
                code: None,
                until: pause.until,
            };
        }
        let quota = self.markets.get(&market).copied().unwrap_or_default();
        match (
            quota.pause.until.filter(|_| quota.pause.holds(now)),
            quota.ceiling,
        ) {
            (Some(until), _) => MarketBlock::QuotaPaused { market, until },
            (None, ceiling) => MarketBlock::Quota {
                market,
                used,
                ceiling: ceiling.unwrap_or(used),
                configured: self.configured.contains(&market),
            },
        }
    }

    /// A probe past the ceiling is under way: no other until [`PROBE_AFTER_MS`].
    pub fn probing(&mut self, market: Market, now: Timestamp) {
        self.markets.entry(market).or_default().last_refusal = Some(now);
    }

    /// EC2 refused a launch in `market` for quota while jitr held `used` vCPUs
    /// there. Unknown ceiling: it is `used`. Below a known ceiling: something
    /// else holds capacity for now — pause the market (2 s, doubling, at most 5
    /// minutes) and keep the ceiling.
    pub fn quota_refused(&mut self, market: Market, used: u32, now: Timestamp) {
        let quota = self.markets.entry(market).or_default();
        quota.last_refusal = Some(now);
        match quota.ceiling {
            None => quota.ceiling = Some(used),
            Some(ceiling) if used < ceiling => quota.pause.extend(FIRST_PAUSE_MS, now),
            Some(_) => {}
        }
    }

    /// Every type of `pool` was refused for capacity in `market`: pause that
    /// pool's market (15 s, doubling, at most 5 minutes).
    pub fn capacity_refused(&mut self, pool: &str, market: Market, now: Timestamp) {
        self.pools
            .entry((pool.to_owned(), market))
            .or_default()
            .extend(FIRST_CAPACITY_PAUSE_MS, now);
    }

    /// EC2 refused `market` for the account's configuration
    /// ([`crate::market_unusable`]): no launch there for [`PROBE_AFTER_MS`],
    /// then one is tried again (the operator may have fixed it).
    pub fn market_unusable(&mut self, market: Market, now: Timestamp) {
        self.unusable.insert(market, now.plus_ms(PROBE_AFTER_MS));
    }

    /// EC2 said an instance is terminated: its vCPUs are free for certain, so
    /// the markets' pauses (refusals below the ceiling) end. Pools' capacity
    /// pauses stay: capacity of a type is not quota.
    pub fn capacity_freed(&mut self) {
        for quota in self.markets.values_mut() {
            quota.pause = Pause::default();
        }
    }

    /// A launch for `pool` in `market` succeeded, leaving jitr with `used`
    /// vCPUs there: the ceiling is at least that, and the pauses end.
    pub fn launched(&mut self, pool: &str, market: Market, used: u32) {
        let quota = self.markets.entry(market).or_default();
        if quota.ceiling.is_some_and(|c| c < used) {
            quota.ceiling = Some(used);
        }
        quota.pause = Pause::default();
        self.pools.remove(&(pool.to_owned(), market));
        self.unusable.remove(&market);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    #[test]
    fn repositories_take_turns_first_come_first_served_within_each() {
        // (repository, requested at)
        let waiting = vec![
            ("big", 1),
            ("big", 2),
            ("big", 3),
            ("big", 4),
            ("small", 5),
            ("other", 6),
            ("small", 7),
        ];
        let order: Vec<(&str, i64)> = fair_order(waiting.clone(), |w| w.0, |w| at(w.1), |_| 0);
        assert_eq!(
            order,
            [
                ("big", 1),
                ("small", 5),
                ("other", 6),
                ("big", 2),
                ("small", 7),
                ("big", 3),
                ("big", 4)
            ]
        );
        // A repository already holding instances waits for the others to
        // catch up.
        let order: Vec<(&str, i64)> = fair_order(
            waiting,
            |w| w.0,
            |w| at(w.1),
            |repo| if repo == "small" { 2 } else { 0 },
        );
        assert_eq!(
            order,
            [
                ("big", 1),
                ("other", 6),
                ("big", 2),
                ("big", 3),
                ("small", 5),
                ("big", 4),
                ("small", 7)
            ]
        );
    }

    #[test]
    fn an_unknown_quota_is_learnt_from_the_first_refusal() {
        let mut ledger = CapacityLedger::default();
        assert_eq!(
            ledger.admits("x64", Market::OnDemand, 28, 4, at(0)),
            Admission::Fits
        );
        ledger.quota_refused(Market::OnDemand, 32, at(0));
        assert_eq!(ledger.markets[&Market::OnDemand].ceiling, Some(32));
        // Known full: no RunInstances; room again when jitr holds less.
        assert_eq!(
            ledger.admits("x64", Market::OnDemand, 32, 4, at(1_000)),
            Admission::Full
        );
        assert_eq!(
            ledger.admits("x64", Market::OnDemand, 28, 4, at(1_000)),
            Admission::Fits
        );
        // The other market is unaffected.
        assert_eq!(
            ledger.admits("x64", Market::Spot, 32, 4, at(1_000)),
            Admission::Fits
        );
    }

    #[test]
    fn a_refusal_below_the_ceiling_pauses_the_market_doubling() {
        let mut ledger = CapacityLedger::with_ceilings([(Market::OnDemand, 32)]);
        ledger.quota_refused(Market::OnDemand, 28, at(0));
        assert_eq!(ledger.markets[&Market::OnDemand].ceiling, Some(32));
        assert_eq!(
            ledger.admits("x64", Market::OnDemand, 28, 4, at(1_999)),
            Admission::Full
        );
        assert_eq!(
            ledger.admits("x64", Market::OnDemand, 28, 4, at(2_000)),
            Admission::Fits
        );
        ledger.quota_refused(Market::OnDemand, 28, at(2_000));
        assert_eq!(ledger.markets[&Market::OnDemand].pause.length_ms, 4_000);
        for _ in 0..20 {
            ledger.quota_refused(Market::OnDemand, 28, at(2_000));
        }
        assert_eq!(
            ledger.markets[&Market::OnDemand].pause.length_ms,
            MAX_PAUSE_MS
        );
        // A launch ends the pause.
        ledger.launched("x64", Market::OnDemand, 32);
        assert_eq!(
            ledger.admits("x64", Market::OnDemand, 28, 4, at(3_000)),
            Admission::Fits
        );
    }

    #[test]
    fn past_the_ceiling_one_probe_after_five_quiet_minutes_and_a_success_raises_it() {
        let mut ledger = CapacityLedger::default();
        ledger.quota_refused(Market::Spot, 16, at(0));
        assert_eq!(
            ledger.admits("arm", Market::Spot, 16, 4, at(299_999)),
            Admission::Full
        );
        assert_eq!(
            ledger.admits("arm", Market::Spot, 16, 4, at(300_000)),
            Admission::Probe
        );
        ledger.probing(Market::Spot, at(300_000));
        assert_eq!(
            ledger.admits("arm", Market::Spot, 16, 4, at(300_001)),
            Admission::Full,
            "one probe at a time"
        );
        ledger.launched("arm", Market::Spot, 20);
        assert_eq!(ledger.markets[&Market::Spot].ceiling, Some(20));
    }

    #[test]
    fn a_configured_ceiling_is_never_probed_past() {
        let ledger = CapacityLedger::with_ceilings([(Market::Spot, 16)]);
        for t in [0, PROBE_AFTER_MS as i64, 10 * PROBE_AFTER_MS as i64] {
            assert_eq!(
                ledger.admits("x64", Market::Spot, 16, 4, at(t)),
                Admission::Full
            );
        }
        assert_eq!(
            ledger.admits("x64", Market::Spot, 12, 4, at(0)),
            Admission::Fits
        );
    }

    #[test]
    fn capacity_refusals_pause_only_that_pools_market() {
        let mut ledger = CapacityLedger::default();
        ledger.capacity_refused("arm", Market::Spot, at(0));
        assert_eq!(
            ledger.admits("arm", Market::Spot, 0, 4, at(14_999)),
            Admission::Full
        );
        assert_eq!(
            ledger.admits("x64", Market::Spot, 0, 4, at(1)),
            Admission::Fits
        );
        assert_eq!(
            ledger.admits("arm", Market::OnDemand, 0, 4, at(1)),
            Admission::Fits
        );
        assert_eq!(
            ledger.admits("arm", Market::Spot, 0, 4, at(15_000)),
            Admission::Fits
        );
        ledger.capacity_refused("arm", Market::Spot, at(15_000));
        assert_eq!(
            ledger.pools[&("arm".to_owned(), Market::Spot)].length_ms,
            30_000
        );
    }
}
