//! Every AWS SDK client of the adapters is built here, so that a process can
//! record the API operations it calls: with `JITR_RECORD_AWS_CALLS` naming a
//! file, each call appends `Service:Operation` to it (tests compare what each
//! Lambda handler calls with what its IAM role in the deployment template
//! allows). Without the variable nothing is recorded.

use std::io::Write;
use std::path::PathBuf;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The variable naming the file calls are recorded in.
pub const RECORD_CALLS: &str = "JITR_RECORD_AWS_CALLS";

/// Appends each call's `Service:Operation` to a file.
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

    // Once per call (not per retry), when the operation's metadata is known.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(call) = cfg.load::<Metadata>() {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            writeln!(file, "{}:{}", call.service(), call.name())?;
        }
        Ok(())
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
