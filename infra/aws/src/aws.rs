//! Loading the AWS SDK configuration: the standard chain, with an optional endpoint
//! (moto, LocalStack, a VPC endpoint) and region.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// Where and as whom jitr talks to AWS.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    /// Endpoint for every service (else `AWS_ENDPOINT_URL`, else AWS's own).
    pub endpoint: Option<String>,
    /// Region (else the standard chain: `AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Static credentials (access key, secret), e.g. for an emulator; else the chain.
    pub static_credentials: Option<(String, String)>,
}

impl AwsSettings {
    /// Settings for an AWS-protocol emulator at `endpoint` (static test credentials,
    /// `us-east-1`).
    pub fn emulator(endpoint: impl Into<String>) -> Self {
        AwsSettings {
            endpoint: Some(endpoint.into()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("testing".into(), "testing".into())),
        }
    }

    /// Loads the SDK configuration.
    pub async fn load(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((key, secret)) = &self.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                key,
                secret,
                None,
                None,
                "jitr-static",
            ));
        }
        loader.load().await
    }
}

/// The error code and message of an SDK error, for classification and logs.
pub(crate) fn error_code<E>(err: &aws_sdk_dynamodb::error::SdkError<E>) -> (String, String)
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    let code = err.code().unwrap_or("Unknown").to_owned();
    let message = err
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{err:?}"));
    (code, message)
}
