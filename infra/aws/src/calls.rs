//! Every AWS SDK client of the adapters is built here, so that a process can
//! record the API requests it makes: with `JITR_RECORD_AWS_CALLS` naming a
//! file, each call appends one JSON line to it — the service, the operation
//! and the serialized request (its path and query, and its body with any
//! parameter value redacted) — from which tests derive the IAM requests AWS
//! evaluates against each Lambda handler's role in the deployment template.
//! Without the variable nothing is recorded.

use std::io::Write;
use std::path::PathBuf;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The variable naming the file calls are recorded in.
pub const RECORD_CALLS: &str = "JITR_RECORD_AWS_CALLS";

/// Appends each call, as a JSON line, to a file.
#[derive(Debug, Clone)]
pub struct CallRecorder {
    path: PathBuf,
}

impl CallRecorder {
    /// The recorder `JITR_RECORD_AWS_CALLS` asks for, if any.
    pub fn from_env() -> Option<CallRecorder> {
        std::env::var_os(RECORD_CALLS)
            .filter(|p| !p.is_empty())
            .map(|p| CallRecorder { path: p.into() })
    }
}

impl Intercept for CallRecorder {
    fn name(&self) -> &'static str {
        "jitr-call-recorder"
    }

    // Once per call (not per retry), once the request is serialized.
    fn read_after_serialization(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(call) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let request = context.request();
        let body = request
            .body()
            .bytes()
            .map(|b| redacted(&String::from_utf8_lossy(b)));
        let line = serde_json::json!({
            "service": call.service(),
            "operation": call.name(),
            "uri": request.uri(),
            "body": body,
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(file, "{line}")?;
        Ok(())
    }
}

/// A JSON body with its `Value` (an SSM parameter's, such as a JIT config)
/// replaced: a recording never holds a secret.
fn redacted(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut fields)) if fields.contains_key("Value") => {
            fields.insert("Value".into(), "(redacted)".into());
            serde_json::Value::Object(fields).to_string()
        }
        _ => body.to_owned(),
    }
}

macro_rules! client {
    ($(#[$doc:meta])* $name:ident, $sdk:ident) => {
        $(#[$doc])*
        pub fn $name(config: &SdkConfig) -> $sdk::Client {
            let mut builder = $sdk::config::Builder::from(config);
            if let Some(recorder) = CallRecorder::from_env() {
                builder = builder.interceptor(recorder);
            }
            $sdk::Client::from_conf(builder.build())
        }
    };
}

client!(
    /// A DynamoDB client.
    dynamodb,
    aws_sdk_dynamodb
);
client!(
    /// A DynamoDB Streams client.
    dynamodb_streams,
    aws_sdk_dynamodbstreams
);
client!(
    /// An EC2 client.
    ec2,
    aws_sdk_ec2
);
client!(
    /// An SQS client.
    sqs,
    aws_sdk_sqs
);
client!(
    /// An SSM client.
    ssm,
    aws_sdk_ssm
);
client!(
    /// An EventBridge client.
    eventbridge,
    aws_sdk_eventbridge
);
client!(
    /// A CloudWatch client.
    cloudwatch,
    aws_sdk_cloudwatch
);
client!(
    /// A Lambda client.
    lambda,
    aws_sdk_lambda
);
client!(
    /// An IAM client.
    iam,
    aws_sdk_iam
);

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_recorded_parameter_value_is_redacted() {
        let body =
            r#"{"Name":"/jitr/runners/a/jit-config","Value":"c2VjcmV0","Type":"SecureString"}"#;
        let recorded = redacted(body);
        assert!(!recorded.contains("c2VjcmV0"), "{recorded}");
        assert!(
            recorded.contains("/jitr/runners/a/jit-config"),
            "{recorded}"
        );
        assert_eq!(redacted("Action=RunInstances"), "Action=RunInstances");
    }
}
