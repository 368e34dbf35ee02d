//! Handing a JIT runner config to its instance: one SSM SecureString per instance,
//! tagged with the instance's id, deleted at termination. The config is a
//! secret: it is never logged or stored in the event log, and its `Debug` form
//! is redacted.
//!
//! Real JIT configs are around 4 KB, and the Standard tier refuses values over
//! 4,096 characters (AWS: "Managing parameter tiers"): a larger config goes to
//! the Advanced tier. moto does not enforce the limit; [`TierLimits`] plays it
//! around the real client.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_ssm::config::{ConfigBag, Intercept};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::operation::put_parameter::PutParameterInput;
use aws_sdk_ssm::types::{ParameterTier, ParameterType, Tag};
use jitr_domain::InstanceId;

use jitr_infra::{JitConfig, RunnerSecrets, SecretError};

/// SSM Parameter Store: `{prefix}/{instance_id}/jit-config`, SecureString.
#[derive(Clone)]
pub struct SsmSecrets {
    client: Client,
    prefix: String,
    /// `arn:{partition}:ec2:{region}:{account}:instance/`, learnt from the first
    /// parameter's ARN: each parameter is tagged with its instance's ARN, which
    /// the instance role's policy compares with `${ec2:SourceInstanceARN}`.
    instance_arn_prefix: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// The tag holding the ARN of the instance a JIT config is for.
pub const TAG_INSTANCE_ARN: &str = "jitr:instance-arn";

/// `arn:{partition}:ec2:{region}:{account}:instance/` from a parameter's ARN
/// (`arn:{partition}:ssm:{region}:{account}:parameter/…`).
fn instance_arn_prefix(parameter_arn: &str) -> Option<String> {
    let mut parts = parameter_arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("ssm"), Some(region), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(format!("arn:{partition}:ec2:{region}:{account}:instance/"))
}

/// The largest value the Standard tier takes, in characters.
pub const STANDARD_TIER_MAX_CHARS: usize = 4_096;

/// The tier a value needs: Standard while it fits, else Advanced. Counted in
/// bytes, which is never fewer than AWS's characters (a JIT config is ASCII).
pub fn tier_for(value: &str) -> ParameterTier {
    if value.len() <= STANDARD_TIER_MAX_CHARS {
        ParameterTier::Standard
    } else {
        ParameterTier::Advanced
    }
}

/// SSM's tier limits as AWS enforces them and moto does not: a PutParameter of
/// more than 4,096 characters in the Standard tier (or with no tier, which is
/// Standard) is refused before it is sent.
#[derive(Debug, Default)]
pub struct TierLimits;

impl Intercept for TierLimits {
    fn name(&self) -> &'static str {
        "TierLimits"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_ssm::error::BoxError> {
        let Some(put) = context.input().downcast_ref::<PutParameterInput>() else {
            return Ok(());
        };
        let standard = matches!(put.tier(), None | Some(ParameterTier::Standard));
        let chars = put.value().map_or(0, |v| v.chars().count());
        if standard && chars > STANDARD_TIER_MAX_CHARS {
            return Err(format!(
                "ValidationException: Standard tier parameters support a maximum parameter \
                 value of {STANDARD_TIER_MAX_CHARS} characters ({chars} given); use the \
                 advanced-parameter tier"
            )
            .into());
        }
        Ok(())
    }
}

/// What an SSM error says, for people: its code and message, or the whole
/// chain of a failure that has none.
fn describe<E, R>(e: &aws_sdk_ssm::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => aws_sdk_ssm::error::DisplayErrorContext(e).to_string(),
    }
}

/// The value of SSM parameter `name` (decrypted); the error says what SSM said.
pub async fn read_parameter(config: &SdkConfig, name: &str) -> Result<String, String> {
    let out = crate::calls::ssm(config)
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    out.parameter()
        .and_then(|p| p.value())
        .map(str::to_owned)
        .ok_or_else(|| format!("{name} has no value"))
}

impl SsmSecrets {
    /// Parameters under `prefix` (e.g. `/jitr/runners`).
    pub fn new(config: &SdkConfig, prefix: impl Into<String>) -> Self {
        SsmSecrets {
            client: crate::calls::ssm(config),
            prefix: prefix.into().trim_end_matches('/').to_owned(),
            instance_arn_prefix: Default::default(),
        }
    }

    /// The same, through a client that refuses what AWS's tier limits refuse
    /// ([`TierLimits`]): for tests on an emulator that does not.
    pub fn with_tier_limits(config: &SdkConfig, prefix: impl Into<String>) -> Self {
        let conf = aws_sdk_ssm::config::Builder::from(config)
            .interceptor(TierLimits)
            .build();
        SsmSecrets {
            client: Client::from_conf(conf),
            prefix: prefix.into().trim_end_matches('/').to_owned(),
            instance_arn_prefix: Default::default(),
        }
    }

    /// Tags `name` with its instance's ARN when the account is not known yet
    /// (the first parameter a process writes): read the parameter's ARN, keep
    /// the account, add the tag.
    async fn tag_instance_arn(&self, name: &str, instance: &InstanceId) -> Result<(), SecretError> {
        let out = self
            .client
            .get_parameter()
            .name(name)
            .send()
            .await
            .map_err(|e| SecretError(format!("reading {name}'s ARN: {}", describe(&e)).into()))?;
        let prefix = out
            .parameter()
            .and_then(|p| p.arn())
            .and_then(instance_arn_prefix)
            .ok_or_else(|| SecretError(format!("{name}: SSM gave no parameter ARN").into()))?;
        let tag = Tag::builder()
            .key(TAG_INSTANCE_ARN)
            .value(format!("{prefix}{}", instance.0))
            .build()
            .map_err(|e| SecretError(Box::new(e)))?;
        self.client
            .add_tags_to_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(name)
            .tags(tag)
            .send()
            .await
            .map_err(|e| SecretError(format!("tagging {name}: {}", describe(&e)).into()))?;
        *self
            .instance_arn_prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(prefix);
        Ok(())
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
        let put = || {
            self.client
                .put_parameter()
                .name(&name)
                .value(config.expose())
                .r#type(ParameterType::SecureString)
                .tier(tier_for(config.expose()))
                .description("jitr: single-use GitHub JIT runner config; deleted at termination")
        };
        let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
        let arn_prefix = self
            .instance_arn_prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut tags = vec![
            tag(jitr_infra::TAG_MANAGED_BY, jitr_infra::MANAGED_BY),
            tag("jitr:instance-id", &instance.0),
        ];
        if let Some(prefix) = &arn_prefix {
            tags.push(tag(TAG_INSTANCE_ARN, &format!("{prefix}{}", instance.0)));
        }
        let tags = tags
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SecretError(Box::new(e)))?;
        // Tags cannot go with Overwrite: a first write tags, a repeat overwrites.
        match put().set_tags(Some(tags)).send().await {
            Ok(_) if arn_prefix.is_none() => self.tag_instance_arn(&name, instance).await?,
            Ok(_) => {}
            Err(e) if e.code() == Some("ParameterAlreadyExists") => {
                put()
                    .overwrite(true)
                    .send()
                    .await
                    .map_err(|e| SecretError(format!("put {name}: {}", describe(&e)).into()))?;
            }
            Err(e) => return Err(SecretError(format!("put {name}: {}", describe(&e)).into())),
        }
        Ok(name)
    }

    async fn delete_jit_config(&self, instance: &InstanceId) -> Result<(), SecretError> {
        let name = self.parameter_name(instance);
        match self.client.delete_parameter().name(&name).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ParameterNotFound") => Ok(()),
            Err(e) => Err(SecretError(
                format!("delete {name}: {}", describe(&e)).into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_arn_is_in_the_parameters_partition_region_and_account() {
        assert_eq!(
            instance_arn_prefix(
                "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/jitr/i-1/jit-config"
            )
            .as_deref(),
            Some("arn:aws-cn:ec2:cn-north-1:123456789012:instance/")
        );
        assert_eq!(instance_arn_prefix("arn:aws:s3:::bucket"), None);
        assert_eq!(instance_arn_prefix("not an arn"), None);
    }

    #[test]
    fn a_value_goes_to_the_advanced_tier_past_4096_characters() {
        assert_eq!(tier_for(&"a".repeat(4_096)), ParameterTier::Standard);
        assert_eq!(tier_for(&"a".repeat(4_097)), ParameterTier::Advanced);
        // Bytes, the safe side of AWS's characters.
        assert_eq!(tier_for(&"é".repeat(2_048)), ParameterTier::Standard);
        assert_eq!(tier_for(&"é".repeat(2_049)), ParameterTier::Advanced);
    }
}
