//! jitr's application, its runtimes and its operator commands, behind the `jitr`
//! binary.
//!
//! - [`app`]: the application services, built once by [`app::App`] from the ports.
//! - [`runtime`]: how they run: one queue-consumer loop, `jitr serve`, the Lambda
//!   handlers and the AWS wiring (feature `aws`).
//! - [`commands`]: the operator commands, one file per `jitr` subcommand; the
//!   binary's edge (errors are `anyhow` here, typed everywhere else).
#![deny(missing_docs, unsafe_code)]

pub mod app;
pub mod commands;
pub mod runtime;
