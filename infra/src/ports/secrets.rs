//! The runner secrets port: where an instance picks up its JIT config. The config
//! is a secret: it is never logged or stored in the event log, and its `Debug`
//! form is redacted.

use std::fmt;

use async_trait::async_trait;
use jitr_domain::InstanceId;
use thiserror::Error;

use super::BoxError;

/// A GitHub JIT runner configuration (base64 blob). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JitConfig(String);

impl JitConfig {
    /// Wraps the encoded config GitHub returned.
    pub fn new(encoded: impl Into<String>) -> Self {
        JitConfig(encoded.into())
    }

    /// The secret itself, for the one place that hands it over.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JitConfig(<{} bytes redacted>)", self.0.len())
    }
}

/// The secret store failed.
#[derive(Debug, Error)]
#[error("runner secret store: {0}")]
pub struct SecretError(#[source] pub BoxError);

/// Where an instance picks up its JIT config.
#[async_trait]
pub trait RunnerSecrets: Send + Sync {
    /// Stores the config for `instance`; returns where it is (the parameter name).
    async fn put_jit_config(
        &self,
        instance: &InstanceId,
        config: &JitConfig,
    ) -> Result<String, SecretError>;
    /// Deletes it; deleting one that is gone is fine.
    async fn delete_jit_config(&self, instance: &InstanceId) -> Result<(), SecretError>;
}
