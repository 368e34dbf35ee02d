//! Handing a JIT runner config to its instance: one SSM SecureString per instance,
//! deleted at termination. The config is a secret: it is never logged or stored in
//! the event log, and its `Debug` form is redacted.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::ParameterType;
use jitr_domain::InstanceId;

use jitr_infra::{JitConfig, RunnerSecrets, SecretError};

/// SSM Parameter Store: `{prefix}/{instance_id}/jit-config`, SecureString.
#[derive(Clone)]
pub struct SsmSecrets {
    client: Client,
    prefix: String,
}

impl SsmSecrets {
    /// Parameters under `prefix` (e.g. `/jitr/runners`).
    pub fn new(config: &SdkConfig, prefix: impl Into<String>) -> Self {
        SsmSecrets {
            client: Client::new(config),
            prefix: prefix.into().trim_end_matches('/').to_owned(),
        }
    }

    /// The parameter name for `instance`.
    pub fn parameter_name(&self, instance: &InstanceId) -> String {
        format!("{}/{}/jit-config", self.prefix, instance.0)
    }
}

#[async_trait]
impl RunnerSecrets for SsmSecrets {
    async fn put_jit_config(
        &self,
        instance: &InstanceId,
        config: &JitConfig,
    ) -> Result<String, SecretError> {
        let name = self.parameter_name(instance);
        self.client
            .put_parameter()
            .name(&name)
            .value(config.expose())
            .r#type(ParameterType::SecureString)
            .overwrite(true)
            .description("jitr: single-use GitHub JIT runner config; deleted at termination")
            .send()
            .await
            .map_err(|e| {
                SecretError(format!("put {name}: {}", e.code().unwrap_or("error")).into())
            })?;
        Ok(name)
    }

    async fn delete_jit_config(&self, instance: &InstanceId) -> Result<(), SecretError> {
        let name = self.parameter_name(instance);
        match self.client.delete_parameter().name(&name).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ParameterNotFound") => Ok(()),
            Err(e) => Err(SecretError(
                format!("delete {name}: {}", e.code().unwrap_or("error")).into(),
            )),
        }
    }
}
