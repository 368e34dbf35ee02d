//! Reaching the AWS-protocol server the tests run against (moto on loopback in CI).

use std::sync::atomic::{AtomicU32, Ordering};

use jitr_aws::{AwsSettings, SdkConfig};

/// The emulator endpoint, from the SDK's standard `AWS_ENDPOINT_URL`.
///
/// Panics with instructions when it is not set: AWS tests never skip silently.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set. These tests need an AWS-protocol server: \
             run `bash .ci/run`, or start moto yourself \
             (`moto_server -H 127.0.0.1 -p 5000`) and export AWS_ENDPOINT_URL=http://127.0.0.1:5000"
        )
    })
}

/// SDK configuration for the emulator (static test credentials, `us-east-1`).
pub async fn config() -> SdkConfig {
    AwsSettings::emulator(endpoint()).load().await
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates an IAM instance profile named `name` on the emulator (EC2 refuses a
/// launch naming a profile that does not exist). jitr has no IAM client: this
/// sends IAM's query protocol directly; moto routes it by the credential scope
/// and does not check the signature.
pub async fn create_instance_profile(name: &str) {
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+=,.@".contains(c)),
        "an IAM name needs no URL encoding: {name}"
    );
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20261129/us-east-1/iam/aws4_request, \
                SignedHeaders=host, Signature=0";
    let response = reqwest::Client::new()
        .post(endpoint())
        .header("authorization", auth)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "Action=CreateInstanceProfile&Version=2010-05-08&InstanceProfileName={name}"
        ))
        .send()
        .await
        .expect("the emulator answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status.is_success() || body.contains("EntityAlreadyExists"),
        "CreateInstanceProfile {name}: {status} {body}"
    );
}

/// What EC2 says of a launched instance: DescribeInstances plus the attributes
/// it does not return (shutdown behaviour, user data).
#[derive(Debug)]
pub struct LaunchedView {
    /// DescribeInstances' record.
    pub instance: aws_sdk_ec2::types::Instance,
    /// `InstanceInitiatedShutdownBehavior` (`stop` or `terminate`).
    pub shutdown_behavior: Option<String>,
    /// The user data, decoded.
    pub user_data: Option<String>,
}

impl LaunchedView {
    /// Whether the instance is in security group `id`.
    pub fn in_group(&self, id: &str) -> bool {
        // EC2 lists the primary interface's groups as the instance's; moto
        // lists them only on the interface when the launch named one.
        let on_interfaces = self
            .instance
            .network_interfaces()
            .iter()
            .flat_map(|n| n.groups())
            .any(|g| g.group_id() == Some(id));
        on_interfaces
            || self
                .instance
                .security_groups()
                .iter()
                .any(|g| g.group_id() == Some(id))
    }

    /// The instance profile's ARN ("" without one).
    pub fn profile_arn(&self) -> &str {
        self.instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .unwrap_or_default()
    }

    /// Whether IMDSv2 tokens are required.
    pub fn requires_imdsv2(&self) -> bool {
        self.instance
            .metadata_options()
            .and_then(|m| m.http_tokens())
            == Some(&aws_sdk_ec2::types::HttpTokensState::Required)
    }
}

/// Describes instance `id` on the emulator.
pub async fn describe_launched(client: &aws_sdk_ec2::Client, id: &str) -> LaunchedView {
    use aws_sdk_ec2::types::InstanceAttributeName;
    let described = client
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    let instance = described.reservations()[0].instances()[0].clone();
    let attribute = |name: InstanceAttributeName| {
        client
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(name)
            .send()
    };
    let shutdown = attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .await
        .expect("DescribeInstanceAttribute");
    let user_data = attribute(InstanceAttributeName::UserData)
        .await
        .expect("DescribeInstanceAttribute");
    LaunchedView {
        instance,
        shutdown_behavior: shutdown
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value())
            .map(str::to_owned),
        user_data: user_data
            .user_data()
            .and_then(|v| v.value())
            .map(|encoded| {
                let bytes = aws_smithy_types::base64::decode(encoded).expect("base64 user data");
                String::from_utf8(bytes).expect("UTF-8 user data")
            }),
    }
}

/// A new VPC (10.42.0.0/16) with one subnet (10.42.1.0/24) on the emulator:
/// their ids.
pub async fn create_vpc_with_subnet(client: &aws_sdk_ec2::Client) -> (String, String) {
    let vpc = client
        .create_vpc()
        .cidr_block("10.42.0.0/16")
        .send()
        .await
        .expect("CreateVpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("a VPC id")
        .to_owned();
    let subnet = client
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.42.1.0/24")
        .send()
        .await
        .expect("CreateSubnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("a subnet id")
        .to_owned();
    (vpc, subnet)
}
