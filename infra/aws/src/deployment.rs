//! What a deployment made from `infra/deploy/template.yaml` consists of, read
//! back from Lambda, EventBridge and IAM for `jitr doctor --aws`: the functions
//! and their configuration, what invokes them, and the roles runner instances
//! are launched with. Reads only; the judgement is the caller's.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_iam::error::ProvideErrorMetadata;
use thiserror::Error;

use crate::iam_policy::{PolicyDocument, PolicyError};

/// Reading the deployment failed (not: a part is missing, which is `None`).
#[derive(Debug, Error)]
pub enum DeploymentError {
    /// An API call failed.
    #[error("{call}: {code}: {message}")]
    Call {
        /// `Service:Operation`.
        call: &'static str,
        /// AWS's error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// A policy document IAM returned is unreadable.
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

fn call_error<E: ProvideErrorMetadata>(call: &'static str, e: &E) -> DeploymentError {
    DeploymentError::Call {
        call,
        code: e.code().unwrap_or("error").to_owned(),
        message: e.message().unwrap_or_default().to_owned(),
    }
}

/// A Lambda function's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Its ARN.
    pub arn: String,
    /// Its execution role's ARN.
    pub role: String,
    /// The `Handler` setting (`jitr`'s bootstrap runs the handler it names).
    pub handler: Option<String>,
    /// `provided.al2023` for jitr.
    pub runtime: Option<String>,
    /// `Active`, `Pending`, `Inactive` or `Failed`.
    pub state: Option<String>,
    /// Why it is in that state.
    pub state_reason: Option<String>,
    /// `Successful`, `InProgress` or `Failed`.
    pub last_update_status: Option<String>,
    /// Its environment variables.
    pub environment: BTreeMap<String, String>,
    /// Its timeout, seconds.
    pub timeout_secs: Option<i32>,
}

/// An event source mapping (a queue or a stream invoking a function).
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// The queue's or stream's ARN.
    pub source_arn: String,
    /// `Enabled`, `Disabled`, `Creating`, …
    pub state: String,
    /// Whether the function may fail single messages of a batch.
    pub reports_batch_item_failures: bool,
    /// The most concurrent invocations an SQS mapping makes (none: no bound).
    pub maximum_concurrency: Option<i32>,
}

/// The account's Lambda concurrency in this region (GetAccountSettings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountConcurrency {
    /// Concurrent executions the account may run at once (its quota).
    pub limit: i32,
    /// What no function has reserved.
    pub unreserved: i32,
}

/// A function URL.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionUrl {
    /// The URL (the GitHub App's webhook URL).
    pub url: String,
    /// `NONE` or `AWS_IAM`.
    pub auth_type: String,
}

/// An EventBridge rule with its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `ENABLED` or `DISABLED`.
    pub state: String,
    /// E.g. `rate(1 minute)`; `None` for an event pattern rule.
    pub schedule: Option<String>,
    /// Its targets' ARNs.
    pub targets: Vec<String>,
}

/// A role as an instance profile holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRole {
    /// The role's ARN.
    pub arn: String,
    /// Its trust policy.
    pub trust: Option<PolicyDocument>,
}

/// Reads a deployment's parts.
#[derive(Clone, Debug)]
pub struct Deployment {
    lambda: aws_sdk_lambda::Client,
    iam: aws_sdk_iam::Client,
    events: aws_sdk_eventbridge::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl Deployment {
    /// Clients for `config`'s account and region.
    pub fn new(config: &SdkConfig) -> Self {
        Deployment {
            lambda: crate::calls::lambda(config),
            iam: crate::calls::iam(config),
            events: crate::calls::eventbridge(config),
            dynamodb: crate::calls::dynamodb(config),
        }
    }

    /// The ARN of table `name`'s current stream, if the table has one.
    pub async fn table_stream(&self, name: &str) -> Result<Option<String>, DeploymentError> {
        let out = self
            .dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| call_error("dynamodb:DescribeTable", &e))?;
        Ok(out
            .table()
            .and_then(|t| t.latest_stream_arn())
            .map(str::to_owned))
    }

    /// The function named `name`, if it exists.
    pub async fn function(&self, name: &str) -> Result<Option<Function>, DeploymentError> {
        let out = match self
            .lambda
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(call_error("lambda:GetFunctionConfiguration", &e)),
        };
        Ok(Some(Function {
            arn: out.function_arn().unwrap_or_default().to_owned(),
            role: out.role().unwrap_or_default().to_owned(),
            handler: out.handler().map(str::to_owned),
            runtime: out.runtime().map(|r| r.as_str().to_owned()),
            state: out.state().map(|s| s.as_str().to_owned()),
            state_reason: out.state_reason().map(str::to_owned),
            last_update_status: out.last_update_status().map(|s| s.as_str().to_owned()),
            environment: out
                .environment()
                .and_then(|e| e.variables())
                .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            timeout_secs: out.timeout(),
        }))
    }

    /// The event source mappings invoking function `name`.
    pub async fn mappings(&self, name: &str) -> Result<Vec<Mapping>, DeploymentError> {
        let mut mappings = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .lambda
                .list_event_source_mappings()
                .function_name(name)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| call_error("lambda:ListEventSourceMappings", &e))?;
            mappings.extend(out.event_source_mappings().iter().map(|m| Mapping {
                source_arn: m.event_source_arn().unwrap_or_default().to_owned(),
                state: m.state().unwrap_or("unknown").to_owned(),
                reports_batch_item_failures: m.function_response_types().iter().any(|t| {
                    *t == aws_sdk_lambda::types::FunctionResponseType::ReportBatchItemFailures
                }),
                maximum_concurrency: m.scaling_config().and_then(|c| c.maximum_concurrency()),
            }));
            marker = out.next_marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(mappings);
            }
        }
    }

    /// The concurrency function `name` reserves, if any.
    pub async fn reserved_concurrency(&self, name: &str) -> Result<Option<i32>, DeploymentError> {
        let out = self
            .lambda
            .get_function_concurrency()
            .function_name(name)
            .send()
            .await
            .map_err(|e| call_error("lambda:GetFunctionConcurrency", &e))?;
        Ok(out.reserved_concurrent_executions())
    }

    /// The account's concurrency quota and what is left unreserved.
    pub async fn account_concurrency(&self) -> Result<AccountConcurrency, DeploymentError> {
        let out = self
            .lambda
            .get_account_settings()
            .send()
            .await
            .map_err(|e| call_error("lambda:GetAccountSettings", &e))?;
        let limit = out.account_limit();
        Ok(AccountConcurrency {
            limit: limit.map_or(0, |l| l.concurrent_executions()),
            unreserved: limit
                .and_then(|l| l.unreserved_concurrent_executions())
                .unwrap_or(0),
        })
    }

    /// Function `name`'s URL, if it has one.
    pub async fn function_url(&self, name: &str) -> Result<Option<FunctionUrl>, DeploymentError> {
        match self
            .lambda
            .get_function_url_config()
            .function_name(name)
            .send()
            .await
        {
            Ok(out) => Ok(Some(FunctionUrl {
                url: out.function_url().to_owned(),
                auth_type: out.auth_type().as_str().to_owned(),
            })),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(call_error("lambda:GetFunctionUrlConfig", &e)),
        }
    }

    /// The rule `name` on the account's default bus, if it exists.
    pub async fn rule(&self, name: &str) -> Result<Option<Rule>, DeploymentError> {
        let rule = match self.events.describe_rule().name(name).send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(call_error("events:DescribeRule", &e)),
        };
        let targets = self
            .events
            .list_targets_by_rule()
            .rule(name)
            .send()
            .await
            .map_err(|e| call_error("events:ListTargetsByRule", &e))?;
        Ok(Some(Rule {
            state: rule.state().map_or("unknown", |s| s.as_str()).to_owned(),
            schedule: rule.schedule_expression().map(str::to_owned),
            targets: targets
                .targets()
                .iter()
                .map(|t| t.arn().to_owned())
                .collect(),
        }))
    }

    /// Whether IAM role `name` exists.
    pub async fn role_exists(&self, name: &str) -> Result<bool, DeploymentError> {
        match self.iam.get_role().role_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(false),
            Err(e) => Err(call_error("iam:GetRole", &e)),
        }
    }

    /// The roles of instance profile `name`, if it exists.
    pub async fn instance_profile(
        &self,
        name: &str,
    ) -> Result<Option<Vec<ProfileRole>>, DeploymentError> {
        let out = match self
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(call_error("iam:GetInstanceProfile", &e)),
        };
        let mut roles = Vec::new();
        for role in out
            .instance_profile()
            .map(|p| p.roles())
            .unwrap_or_default()
        {
            let trust = role
                .assume_role_policy_document()
                .map(|d| PolicyDocument::parse(format!("trust policy of {}", role.role_name()), d))
                .transpose()?;
            roles.push(ProfileRole {
                arn: role.arn().to_owned(),
                trust,
            });
        }
        Ok(Some(roles))
    }

    /// Every identity policy of role `name`: its inline policies and the
    /// default versions of its attached managed policies.
    pub async fn role_policies(&self, name: &str) -> Result<Vec<PolicyDocument>, DeploymentError> {
        let mut documents = Vec::new();
        let inline = self
            .iam
            .list_role_policies()
            .role_name(name)
            .send()
            .await
            .map_err(|e| call_error("iam:ListRolePolicies", &e))?;
        for policy in inline.policy_names() {
            let out = self
                .iam
                .get_role_policy()
                .role_name(name)
                .policy_name(policy)
                .send()
                .await
                .map_err(|e| call_error("iam:GetRolePolicy", &e))?;
            documents.push(PolicyDocument::parse(
                format!("inline policy {policy}"),
                out.policy_document(),
            )?);
        }
        let attached = self
            .iam
            .list_attached_role_policies()
            .role_name(name)
            .send()
            .await
            .map_err(|e| call_error("iam:ListAttachedRolePolicies", &e))?;
        for policy in attached.attached_policies() {
            let Some(arn) = policy.policy_arn() else {
                continue;
            };
            let meta = self
                .iam
                .get_policy()
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| call_error("iam:GetPolicy", &e))?;
            let Some(version) = meta.policy().and_then(|p| p.default_version_id()) else {
                continue;
            };
            let out = self
                .iam
                .get_policy_version()
                .policy_arn(arn)
                .version_id(version)
                .send()
                .await
                .map_err(|e| call_error("iam:GetPolicyVersion", &e))?;
            if let Some(text) = out.policy_version().and_then(|v| v.document()) {
                documents.push(PolicyDocument::parse(
                    format!("managed policy {arn}"),
                    text,
                )?);
            }
        }
        Ok(documents)
    }
}

/// The account's EC2 Spot service-linked role, as AWS names it ("Service-linked
/// role for Spot Instance requests", EC2 User Guide).
pub const SPOT_SERVICE_LINKED_ROLE: &str = "AWSServiceRoleForEC2Spot";

/// The last path segment of an ARN (`…:role/path/NAME` → `NAME`;
/// `…:instance-profile/NAME` → `NAME`); a bare name is returned as is.
pub fn arn_name(arn: &str) -> &str {
    arn.rsplit(['/', ':']).next().unwrap_or(arn)
}

/// `(partition, region, account)` of an ARN.
pub fn arn_scope(arn: &str) -> Option<(&str, &str, &str)> {
    let mut parts = arn.split(':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("arn"), Some(partition), Some(_service), Some(region), Some(account)) => {
            Some((partition, region, account))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_name_their_resource_and_scope() {
        assert_eq!(
            arn_name("arn:aws:iam::1:role/service/jitr-runner"),
            "jitr-runner"
        );
        assert_eq!(
            arn_name("arn:aws:iam::1:instance-profile/jitr-runner"),
            "jitr-runner"
        );
        assert_eq!(arn_name("jitr-runner"), "jitr-runner");
        assert_eq!(
            arn_scope("arn:aws-cn:lambda:cn-north-1:123:function:jitr-webhook"),
            Some(("aws-cn", "cn-north-1", "123"))
        );
        assert_eq!(arn_scope("jitr-webhook"), None);
    }
}
