//! Ports (traits) and the adapters that need no cloud account.
//!
//! - [`ports`]: every port, in one place: [`EventStore`] / [`CheckpointStore`]
//!   ([`RunnerLog`]), [`Compute`], [`GitHub`], [`RunnerSecrets`], [`Queue`],
//!   [`CommandBus`].
//! - Adapters here: [`SqliteEventStore`] (the embedded log), [`SimCloud`],
//!   [`SimGitHub`] and [`SimSecrets`] (the local simulator), [`LocalQueue`],
//!   [`InProcessBus`] and [`QueueBus`], [`FaultyCompute`] (fault injection around any
//!   [`Compute`]), and with the `github-app` feature [`GitHubApp`] (REST).
//! - The AWS adapters (DynamoDB, EC2, SQS, EventBridge, SSM, CloudWatch) are in the
//!   `jitr-aws` crate, so that the embedded default builds without the AWS SDK.
//! - [`emf_line`]: metrics as CloudWatch Embedded Metric Format lines.
#![deny(missing_docs, unsafe_code)]

pub mod archive;
pub mod deadline;
pub mod ports;

mod cloud_clock;
mod fault;
#[cfg(feature = "github-app")]
mod github_app;
mod github_fault;
mod github_pace;
mod in_process_bus;
mod local_queue;
mod metrics;
mod queue_bus;
mod sim;
mod sqlite;

pub use cloud_clock::CloudClock;
pub use fault::{Fault, FaultyCompute};
#[cfg(feature = "github-app")]
pub use github_app::{API_VERSION, Clock, GITHUB_API, GitHubApp, GitHubAppConfig};
pub use github_fault::{FaultyGitHub, GitHubFault};
pub use github_pace::{CONTENT_PER_HOUR, CONTENT_PER_MINUTE, PaceStats, PacedGitHub};
pub use in_process_bus::InProcessBus;
pub use local_queue::LocalQueue;
pub use metrics::{NAMESPACE, emf_line};
pub use ports::*;
pub use queue_bus::QueueBus;
pub use sim::{
    BootTimes, ManualClock, SPOT_NOTICE_MS, SimClock, SimCloud, SimGitHub, SimLifetime, SimSecrets,
    SimSettings, SpotInterruptions, Spread, system_clock,
};
pub use sqlite::{EncodedAppend, SqliteEventStore};
