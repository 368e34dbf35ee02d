//! Runtimes and wiring: how the application runs. One consumer loop for every
//! queue; `jitr serve` (everything in one process, on the embedded default or on
//! AWS); the Lambda handlers; the AWS wiring from environment variables.

use std::time::{SystemTime, UNIX_EPOCH};

use jitr_domain::Timestamp;

#[cfg(feature = "aws")]
pub mod aws;
pub mod chart;
pub mod consumer;
pub mod embedded;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod page;
pub mod serve;

/// The handlers `jitr lambda` runs.
pub const LAMBDA_HANDLERS: [&str; 9] = [
    "webhook",
    "scaleup",
    "lifecycle",
    "projector",
    "compensate",
    "ec2-events",
    "reaper",
    "rebalancer",
    "archiver",
];

/// The moment, from the system clock: the one place the runtimes read it.
pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}
