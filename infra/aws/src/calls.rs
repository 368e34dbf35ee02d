//! Every AWS SDK client of the adapters is built here, so that a process can
//! record the API requests it makes: with `JITR_RECORD_AWS_CALLS` naming a
//! file, each call appends one JSON line to it — the service, the operation
//! and the serialized request (its path and query, and its body with any
//! parameter value redacted) — from which tests derive the IAM requests AWS
//! evaluates against each Lambda handler's role in the deployment template.
//! Without the variable nothing is recorded.
//!
//! Every client also reads the `Date` of each answer into the process's
//! [`cloud_clock`], the clock times judged across processes are read on.

use std::io::Write;
use std::path::PathBuf;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use jitr_domain::Timestamp;
use jitr_infra::CloudClock;

static CLOUD_CLOCK: CloudClock = CloudClock::new();

/// AWS's time, as this process's AWS answers tell it (their `Date` header).
pub fn cloud_clock() -> &'static CloudClock {
    &CLOUD_CLOCK
}

/// Reads the `Date` of every AWS answer into [`cloud_clock`].
#[derive(Debug, Clone, Copy)]
struct DateReader;

impl Intercept for DateReader {
    fn name(&self) -> &'static str {
        "jitr-date-reader"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(at) = context
            .response()
            .headers()
            .get("date")
            .and_then(answer_date)
        {
            CLOUD_CLOCK.observe(at);
        }
        Ok(())
    }
}

/// An HTTP `Date` (RFC 7231's IMF-fixdate) as a timestamp.
fn answer_date(header: &str) -> Option<Timestamp> {
    let at = DateTime::from_str(header, Format::HttpDate).ok()?;
    at.to_millis().ok().map(Timestamp)
}

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
            let mut builder = $sdk::config::Builder::from(config).interceptor(DateReader);
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
client!(
    /// An AWS Price List Query API client.
    pricing,
    aws_sdk_pricing
);

/// An S3 client; with an endpoint configured (an emulator, a VPC endpoint)
/// the bucket goes in the path.
pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    let mut builder = aws_sdk_s3::config::Builder::from(config)
        .interceptor(DateReader)
        .force_path_style(config.endpoint_url().is_some());
    if let Some(recorder) = CallRecorder::from_env() {
        builder = builder.interceptor(recorder);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

#[cfg(test)]
mod tests {
    use super::{Timestamp, answer_date, redacted};

    #[test]
    fn reads_an_http_date() {
        // RFC 7231 section 7.1.1.1's example.
        assert_eq!(
            answer_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Timestamp(784_111_777_000))
        );
        assert_eq!(answer_date("yesterday"), None);
    }

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
