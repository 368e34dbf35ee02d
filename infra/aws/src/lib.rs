//! The AWS adapters of jitr's ports (crate `jitr-infra` declares the ports).
//!
//! - [`DynamoEventStore`] (`EventStore`, `CheckpointStore`), with [`LogNudges`] from
//!   its DynamoDB stream;
//! - [`Ec2Compute`] (`Compute`);
//! - [`SqsQueue`] (`Queue`), [`EventBridgeBus`] (`CommandBus`), [`SsmSecrets`]
//!   (`RunnerSecrets`), [`Alarms`] (the DLQ alarms);
//! - [`AwsSettings`] (where and as whom to talk to AWS) and [`AwsNames`] (the
//!   resource names of one deployment), [`Deployment`] (a template deployment's
//!   functions, mappings, schedules and roles, read back for `jitr doctor`).
#![deny(missing_docs, unsafe_code)]

mod aws;
pub mod calls;
mod cloudwatch;
mod deployment;
mod dynamodb;
mod dynamodb_feed;
mod ec2;
mod eventbridge;
pub mod iam_policy;
mod names;
pub mod pricing;
mod provision;
mod s3;
mod sqs;
mod ssm;

pub use aws::AwsSettings;
pub use aws_config::SdkConfig;
pub use cloudwatch::{AlarmError, AlarmState, Alarms};
pub use deployment::{
    Deployment, DeploymentError, Function, FunctionUrl, Mapping, ProfileRole, Rule,
    SPOT_SERVICE_LINKED_ROLE, arn_name, arn_scope,
};
pub use dynamodb::{DynamoEventStore, HeadWrite, TTL_ATTRIBUTE, TableSetup};
pub use dynamodb_feed::LogNudges;
pub use ec2::{Ec2Compute, image_parameter};
pub use eventbridge::{BusSetup, EventBridgeBus, ensure_ec2_events_rule};
pub use names::AwsNames;
pub use provision::{InitError, Resource, Setup, VISIBILITY_SECS, provision};
pub use s3::S3Archive;
pub use sqs::{QueuePair, SqsQueue};
pub use ssm::{
    STANDARD_TIER_MAX_CHARS, SsmSecrets, TAG_INSTANCE_ARN, TierLimits, read_parameter, tier_for,
};
