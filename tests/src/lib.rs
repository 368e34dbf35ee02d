//! Shared pieces of jitr's cross-crate tests: runner history fixtures and the event
//! store conformance suite every log adapter must pass.
#![deny(missing_docs, unsafe_code)]

pub mod aws;
pub mod conformance;
pub mod fixtures;
pub mod world;
