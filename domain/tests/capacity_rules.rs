//! The capacity queue's order, as properties (ADR-0014).

use jitr_domain::{Timestamp, fair_order};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Every waiting runner is ordered exactly once; each repository's runners
    /// keep their request order; and no repository is served twice more than
    /// another that still has runners waiting, whatever the burst sizes.
    #[test]
    fn repositories_take_turns(waiting in prop::collection::vec((0u8..4, 0i64..1_000), 0..60)) {
        let order = fair_order(waiting.clone(), |_| "", |w| Timestamp(w.1), |_| 0);
        prop_assert_eq!(order.len(), waiting.len());
        let order = fair_order(
            waiting.iter().map(|(r, t)| (format!("repo-{r}"), *t)).collect(),
            |w| w.0.as_str(),
            |w| Timestamp(w.1),
            |_| 0,
        );
        let mut sorted_in = waiting.iter().map(|(r, t)| (format!("repo-{r}"), *t)).collect::<Vec<_>>();
        let mut sorted_out = order.clone();
        sorted_in.sort();
        sorted_out.sort();
        prop_assert_eq!(sorted_in, sorted_out);
        for repo in 0..4 {
            let name = format!("repo-{repo}");
            let times: Vec<i64> = order.iter().filter(|w| w.0 == name).map(|w| w.1).collect();
            prop_assert!(times.windows(2).all(|p| p[0] <= p[1]), "{name}: {times:?}");
        }
        for k in 0..order.len() {
            let (served, left) = order.split_at(k);
            let count = |name: &str| served.iter().filter(|w| w.0 == name).count();
            for a in served.iter().map(|w| w.0.as_str()) {
                for b in left.iter().map(|w| w.0.as_str()) {
                    prop_assert!(count(a) <= count(b) + 1, "after {k}: {a} {} vs {b} {}", count(a), count(b));
                }
            }
        }
    }
}
