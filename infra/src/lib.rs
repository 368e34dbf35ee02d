//! Ports (traits) and adapters.
//!
//! - [`EventStore`] / [`CheckpointStore`]: the runner event log — [`SqliteEventStore`]
//!   (embedded) and [`DynamoEventStore`] (AWS, with [`LogNudges`] from its stream),
//!   both held to one conformance suite (`tests/src/conformance.rs`).
//! - [`Compute`]: [`Ec2Compute`], [`SimCloud`], and [`FaultyCompute`] around either.
//! - [`GitHub`]: [`GitHubApp`] (REST) and [`SimGitHub`].
//! - [`RunnerSecrets`]: [`SsmSecrets`] and [`SimSecrets`].
//! - [`Queue`]: [`SqsQueue`] and [`LocalQueue`].
//! - [`CommandBus`]: [`EventBridgeBus`] and [`InProcessBus`].
//! - [`Alarms`] and EMF metric lines ([`emf_line`]).
#![deny(missing_docs, unsafe_code)]

mod aws;
mod bus;
mod cloudwatch;
mod compute;
mod dynamodb;
mod dynamodb_feed;
mod ec2;
mod event_store;
mod eventbridge;
mod fault;
mod github;
mod local_queue;
mod sim;
mod sqlite;
mod sqs;
mod ssm;

pub use aws::AwsSettings;
pub use aws_config::SdkConfig;
pub use bus::{BusError, CommandBus, InProcessBus};
pub use cloudwatch::{AlarmError, AlarmState, Alarms, DLQ_ALARM_THRESHOLD, NAMESPACE, emf_line};
pub use compute::{
    Compute, ComputeError, InstanceState, LaunchError, LaunchFailure, LaunchSpec, LaunchedInstance,
    MANAGED_BY, ManagedInstance, TAG_CLIENT_TOKEN, TAG_DEPLOYMENT, TAG_MANAGED_BY, TAG_RUNNER,
    TerminateOutcome, classify,
};
pub use dynamodb::{DynamoEventStore, HeadWrite, TableSetup};
pub use dynamodb_feed::LogNudges;
pub use ec2::Ec2Compute;
pub use event_store::{
    AppendOutcome, BoxError, Checkpoint, CheckpointStore, CommandId, EVENT_SCHEMA, EventStore,
    RecordedEvent, StoreError, StreamHead,
};
pub use eventbridge::{
    BusSetup, EVENT_SOURCE, EventBridgeBus, TERMINATE_RUNNER, decode_terminate_runner,
};
pub use fault::{Fault, FaultyCompute};
pub use github::{
    API_VERSION, Clock, GITHUB_API, GitHub, GitHubApp, GitHubAppConfig, GitHubError, JitRequest,
    JitRunner, QueuedJob, Runner, RunnerScope,
};
pub use local_queue::LocalQueue;
pub use sim::{ManualClock, SimClock, SimCloud, SimGitHub, SimSecrets, SimSettings, system_clock};
pub use sqlite::SqliteEventStore;
pub use sqs::{DEAD_LETTER_REASON, Queue, QueueError, QueueMessage, QueuePair, SqsQueue};
pub use ssm::{JitConfig, RunnerSecrets, SecretError, SsmSecrets};
