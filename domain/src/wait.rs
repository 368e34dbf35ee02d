//! Why a runner (or a job no runner was requested for) waits: the reason an
//! operator reads on the fleet page (`waiting: quota full (on-demand 32/32)`),
//! in `jitr audit` and in `jitr_runners_waiting{pool,reason}`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::Market;
use crate::ids::Timestamp;

fn rfc3339(at: &Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at.0).map_or_else(
        || at.0.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// Why one market takes no launch of a runner now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "block")]
pub enum MarketBlock {
    /// Its vCPU quota is full: jitr holds `used` of `ceiling` (configured in
    /// the pool file, or learnt from EC2's refusal).
    Quota {
        /// The market.
        market: Market,
        /// vCPUs jitr holds there.
        used: u32,
        /// The ceiling.
        ceiling: u32,
        /// Configured, not learnt.
        configured: bool,
    },
    /// EC2 refused for quota below the known ceiling (something else holds
    /// vCPUs): launches there are paused.
    QuotaPaused {
        /// The market.
        market: Market,
        /// Until when.
        until: Timestamp,
    },
    /// EC2 had no capacity for any of the pool's types there.
    Capacity {
        /// The market.
        market: Market,
        /// EC2's code, when refused in this round.
        code: Option<String>,
        /// Paused until, when known.
        until: Option<Timestamp>,
    },
    /// The account cannot use the market (its configuration: no spot
    /// service-linked role).
    Unusable {
        /// The market.
        market: Market,
        /// EC2's code, when refused in this round.
        code: Option<String>,
    },
    /// EC2 refused otherwise (throttled, an unknown error).
    Refused {
        /// The market.
        market: Market,
        /// EC2's code.
        code: String,
    },
}

impl MarketBlock {
    /// The market it blocks.
    pub fn market(&self) -> Market {
        match self {
            MarketBlock::Quota { market, .. }
            | MarketBlock::QuotaPaused { market, .. }
            | MarketBlock::Capacity { market, .. }
            | MarketBlock::Unusable { market, .. }
            | MarketBlock::Refused { market, .. } => *market,
        }
    }

    fn is_quota(&self) -> bool {
        matches!(
            self,
            MarketBlock::Quota { .. } | MarketBlock::QuotaPaused { .. }
        )
    }
}

/// Why a runner waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum WaitReason {
    /// No pool serves the job's labels: no runner is requested for it.
    NoPool {
        /// The job's labels.
        labels: Vec<String>,
    },
    /// Its pool holds its vCPU budget (`max_vcpus`).
    PoolBudget {
        /// The pool.
        pool: String,
        /// vCPUs its instances hold.
        used: u32,
        /// Its budget.
        max: u32,
    },
    /// Every market it may use is blocked, each for its reason.
    Markets {
        /// The blocked markets, in the order the pool tries them.
        blocks: Vec<MarketBlock>,
    },
    /// GitHub's rate limit holds the request it needs back.
    RateLimited {
        /// What waits (`the JIT config`, `the runner group`).
        what: String,
        /// When GitHub said to try again, if it did.
        until: Option<Timestamp>,
    },
    /// Something it depends on is not ready (the runner group, the image).
    Dependency {
        /// What, in words.
        what: String,
    },
    /// Queued behind runners the last admission round did not reach.
    Queued,
}

impl WaitReason {
    /// The reason's kind, as the `reason` label of `jitr_runners_waiting`:
    /// `no-pool`, `pool-budget`, `quota`, `capacity`, `market-unusable`,
    /// `refused`, `rate-limit`, `dependency`, `queued`.
    pub fn kind(&self) -> &'static str {
        match self {
            WaitReason::NoPool { .. } => "no-pool",
            WaitReason::PoolBudget { .. } => "pool-budget",
            WaitReason::Markets { blocks } => {
                if blocks.iter().any(MarketBlock::is_quota) {
                    "quota"
                } else if blocks
                    .iter()
                    .any(|b| matches!(b, MarketBlock::Capacity { .. }))
                {
                    "capacity"
                } else if blocks
                    .iter()
                    .any(|b| matches!(b, MarketBlock::Unusable { .. }))
                {
                    "market-unusable"
                } else {
                    "refused"
                }
            }
            WaitReason::RateLimited { .. } => "rate-limit",
            WaitReason::Dependency { .. } => "dependency",
            WaitReason::Queued => "queued",
        }
    }
}

impl fmt::Display for MarketBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MarketBlock::Quota {
                market,
                used,
                ceiling,
                configured,
            } => {
                write!(f, "quota full ({} {used}/{ceiling}", market.as_str())?;
                if !configured {
                    f.write_str(", learnt from EC2")?;
                }
                f.write_str(")")
            }
            MarketBlock::QuotaPaused { market, until } => write!(
                f,
                "quota refused below its ceiling ({}; paused until {})",
                market.as_str(),
                rfc3339(until)
            ),
            MarketBlock::Capacity { market, code, .. } => write!(
                f,
                "no capacity ({}: {} on every type)",
                market.as_str(),
                code.as_deref().unwrap_or("InsufficientInstanceCapacity")
            ),
            MarketBlock::Unusable { market, code } => write!(
                f,
                "{} unusable by the account ({})",
                market.as_str(),
                code.as_deref().unwrap_or("refused for the configuration")
            ),
            MarketBlock::Refused { market, code } => {
                write!(f, "launch refused ({}: {code})", market.as_str())
            }
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NoPool { labels } => {
                write!(f, "no pool serves labels [{}]", labels.join(", "))
            }
            WaitReason::PoolBudget { pool, used, max } => {
                write!(f, "pool {pool} at its vCPU budget ({used}/{max})")
            }
            WaitReason::Markets { blocks } => {
                // Quota blocks of several markets read as one: `quota full
                // (spot 8/8, on-demand 32/32)`.
                let quota: Vec<&MarketBlock> = blocks
                    .iter()
                    .filter(|b| matches!(b, MarketBlock::Quota { .. }))
                    .collect();
                if quota.len() == blocks.len() && quota.len() > 1 {
                    let parts: Vec<String> = quota
                        .iter()
                        .map(|b| {
                            let text = b.to_string();
                            text["quota full (".len()..text.len() - 1].to_owned()
                        })
                        .collect();
                    return write!(f, "quota full ({})", parts.join(", "));
                }
                if blocks.is_empty() {
                    return f.write_str("no market has room");
                }
                let capacity: Vec<(Market, Option<&str>)> = blocks
                    .iter()
                    .filter_map(|b| match b {
                        MarketBlock::Capacity { market, code, .. } => {
                            Some((*market, code.as_deref()))
                        }
                        _ => None,
                    })
                    .collect();
                if capacity.len() == blocks.len() && capacity.len() > 1 {
                    let markets: Vec<&str> = capacity.iter().map(|(m, _)| m.as_str()).collect();
                    let code = capacity
                        .iter()
                        .rev()
                        .find_map(|(_, c)| *c)
                        .unwrap_or("InsufficientInstanceCapacity");
                    return write!(
                        f,
                        "no capacity ({}: {code} on every type)",
                        markets.join(", ")
                    );
                }
                let parts: Vec<String> = blocks.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join("; "))
            }
            WaitReason::RateLimited { what, until } => {
                write!(f, "rate-limited by GitHub ({what}")?;
                if let Some(until) = until {
                    write!(f, "; until {}", rfc3339(until))?;
                }
                f.write_str(")")
            }
            WaitReason::Dependency { what } => write!(f, "waiting for {what}"),
            WaitReason::Queued => f.write_str("queued behind other runners"),
        }
    }
}

/// A runner's wait: why, and how many runners were ahead of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// Why.
    pub reason: WaitReason,
    /// Runners taken before it in the round.
    pub ahead: usize,
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {} ahead", self.reason, self.ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(market: Market, used: u32, ceiling: u32, configured: bool) -> MarketBlock {
        MarketBlock::Quota {
            market,
            used,
            ceiling,
            configured,
        }
    }

    #[test]
    fn reasons_read_as_an_operator_reads_them() {
        let one = WaitReason::Markets {
            blocks: vec![quota(Market::OnDemand, 32, 32, true)],
        };
        assert_eq!(one.to_string(), "quota full (on-demand 32/32)");
        assert_eq!(one.kind(), "quota");
        let both = WaitReason::Markets {
            blocks: vec![
                quota(Market::Spot, 8, 8, false),
                quota(Market::OnDemand, 32, 32, true),
            ],
        };
        assert_eq!(
            both.to_string(),
            "quota full (spot 8/8, learnt from EC2, on-demand 32/32)"
        );
        let mixed = WaitReason::Markets {
            blocks: vec![
                MarketBlock::Capacity {
                    market: Market::Spot,
                    code: None,
                    until: None,
                },
                quota(Market::OnDemand, 4, 4, false),
            ],
        };
        assert_eq!(
            mixed.to_string(),
            "no capacity (spot: InsufficientInstanceCapacity on every type); quota full (on-demand 4/4, learnt from EC2)"
        );
        assert_eq!(mixed.kind(), "quota");
        let capacity = WaitReason::Markets {
            blocks: vec![MarketBlock::Capacity {
                market: Market::OnDemand,
                code: Some("InsufficientInstanceCapacity".into()),
                until: None,
            }],
        };
        assert_eq!(capacity.kind(), "capacity");
        assert_eq!(
            WaitReason::NoPool {
                labels: vec!["self-hosted".into(), "gpu".into()]
            }
            .to_string(),
            "no pool serves labels [self-hosted, gpu]"
        );
        assert_eq!(
            WaitReason::RateLimited {
                what: "the JIT config".into(),
                until: None
            }
            .kind(),
            "rate-limit"
        );
    }
}
