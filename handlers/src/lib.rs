//! jitr's application services and operator tools, behind the `jitr` binary.
//!
//! - [`dispatch`]: one command against a runner stream (decide, append, retry on
//!   conflict).
//! - [`projector`]: folds the log into the runner views and issues compensation.
//! - [`webhook`], [`scaleup`], [`lifecycle`], [`compensation`], [`reaper`]: the
//!   runner lifecycle, over [`ports::Ports`].
//! - [`audit`], [`history`]: questions to the log.
//! - [`init`]: the AWS resources.
//! - [`demo`], [`bench`]: the embedded default at work, and its figures.
#![deny(missing_docs, unsafe_code)]

pub mod audit;
#[cfg(feature = "aws")]
pub mod aws_mode;
pub mod bench;
pub mod compensation;
pub mod demo;
pub mod dispatch;
pub mod doctor;
pub mod history;
#[cfg(feature = "aws")]
pub mod init;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod lifecycle;
pub mod metrics;
pub mod policy;
pub mod ports;
pub mod projector;
pub mod reaper;
pub mod rebalancer;
pub mod report;
pub mod scaleup;
pub mod serve;
pub mod simulate;
pub mod webhook;
