//! EC2 as the compute port.

use std::hash::{DefaultHasher, Hash, Hasher};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    Instance, InstanceInterruptionBehavior, InstanceLifecycleType, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceType, MarketType, ResourceType,
    ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeType,
};
use jitr_domain::{ClientToken, InstanceId, Market, StreamId, Timestamp};

use jitr_infra::{
    Architecture, Compute, ComputeError, ConsoleOutput, InstanceState, LaunchError, LaunchFailure,
    LaunchSettings, LaunchSpec, LaunchedInstance, MANAGED_BY, ManagedInstance, TAG_CLIENT_TOKEN,
    TAG_DEPLOYMENT, TAG_MANAGED_BY, TAG_RUNNER, TerminateOutcome, architecture_mismatch,
};

/// States `list_managed` asks for: all but `terminated`.
const LIVE_STATES: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];

/// The EC2 adapter.
#[derive(Clone)]
pub struct Ec2Compute {
    client: Client,
    subnets: Vec<String>,
    page_size: Option<i32>,
    deployment: Option<String>,
    /// What EC2 said of each image, asked once (DescribeImages).
    images: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, ImageFacts>>>,
    /// Where images named by an SSM parameter are resolved.
    ssm: aws_sdk_ssm::Client,
    /// Images resolved from SSM parameters, and when.
    resolved: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    >,
}

/// What EC2 says of an image.
#[derive(Clone, Debug)]
struct ImageFacts {
    root_device: Option<String>,
    architecture: Option<String>,
}

/// How long an image resolved from an SSM parameter is used before asking again
/// (public parameters such as `/aws/service/…` move to new AMIs over time).
const IMAGE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The SSM parameter an image names, if it names one: `resolve:ssm:NAME` (EC2's
/// own form) or a parameter path (`/aws/service/…`).
pub fn image_parameter(image: &str) -> Option<&str> {
    image
        .strip_prefix("resolve:ssm:")
        .or_else(|| image.starts_with('/').then_some(image))
}

/// What a failed RunInstances call means. A client error's code is EC2's
/// refusal: nothing was launched. A server error (`InternalError`,
/// `Unavailable`, any 5xx: "Error codes for the Amazon EC2 API", AWS
/// documentation, advises retrying with the same client token) or no answer
/// (timeout, dispatch failure) leaves the outcome unknown: the instance may
/// exist, and is looked up by its token.
pub fn run_instances_failure(
    code: Option<&str>,
    message: &str,
    http_status: Option<u16>,
    error: aws_smithy_runtime_api::box_error::BoxError,
) -> LaunchFailure {
    let server_error = http_status.is_some_and(|s| s >= 500)
        || matches!(
            code,
            Some("InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable")
        );
    match code {
        Some(code) if !server_error => LaunchFailure::Rejected(LaunchError::new(code, message)),
        _ => LaunchFailure::Unknown(error),
    }
}

impl Ec2Compute {
    /// An adapter launching into `subnets` (spread by client token; empty: EC2's
    /// default subnet).
    pub fn new(config: &SdkConfig, subnets: Vec<String>) -> Self {
        Ec2Compute {
            client: crate::calls::ec2(config),
            subnets,
            page_size: None,
            deployment: None,
            images: Default::default(),
            ssm: crate::calls::ssm(config),
            resolved: Default::default(),
        }
    }

    /// Tags launches with [`TAG_DEPLOYMENT`] = `name` and lists only those.
    pub fn with_deployment(mut self, name: impl Into<String>) -> Self {
        self.deployment = Some(name.into());
        self
    }

    /// Lists at most `n` instances per DescribeInstances page (5–1000).
    pub fn with_page_size(mut self, n: i32) -> Self {
        self.page_size = Some(n.clamp(5, 1000));
        self
    }

    /// The subnet for a launch: fixed by its token, so a retry with the same token
    /// sends the same parameters (EC2 refuses a token reused with others).
    pub fn subnet_for(&self, token: &ClientToken) -> Option<&str> {
        self.subnet_among(&self.subnets, token)
    }

    fn subnet_among<'a>(&self, subnets: &'a [String], token: &ClientToken) -> Option<&'a str> {
        if subnets.is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        token.0.hash(&mut h);
        let i = (h.finish() % subnets.len() as u64) as usize;
        Some(&subnets[i])
    }

    /// The AMI id `image` stands for: itself, or the value of the SSM parameter
    /// it names (cached for [`IMAGE_TTL`]). A missing parameter is a refused
    /// request (`InvalidAMIID.NotFound`, naming the parameter).
    async fn image_id(&self, image: &str) -> Result<String, LaunchFailure> {
        let Some(name) = image_parameter(image) else {
            return Ok(image.to_owned());
        };
        if let Some((ami, at)) = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if at.elapsed() < IMAGE_TTL {
                return Ok(ami.clone());
            }
        }
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some("ParameterNotFound") => LaunchFailure::Rejected(LaunchError::new(
                    "InvalidAMIID.NotFound",
                    format!("the image's SSM parameter {name} does not exist"),
                )),
                Some(code) => LaunchFailure::Rejected(LaunchError::new(
                    code,
                    format!(
                        "reading the image's SSM parameter {name}: {}",
                        e.message().unwrap_or_default()
                    ),
                )),
                None => LaunchFailure::Unknown(Box::new(e)),
            })?;
        let ami = out
            .parameter()
            .and_then(|p| p.value())
            .filter(|v| v.starts_with("ami-"))
            .ok_or_else(|| {
                LaunchFailure::Rejected(LaunchError::new(
                    "InvalidAMIID.Malformed",
                    format!("the SSM parameter {name} holds no AMI id"),
                ))
            })?
            .to_owned();
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (ami.clone(), std::time::Instant::now()));
        Ok(ami)
    }

    /// What EC2 says of `image`: its root device name (`/dev/xvda`,
    /// `/dev/sda1`, …) and architecture; asked once per image (DescribeImages).
    async fn image_facts(&self, image: &str) -> Result<ImageFacts, LaunchFailure> {
        if let Some(known) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
        {
            return Ok(known.clone());
        }
        let out = self
            .client
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some(code) => {
                    LaunchFailure::Rejected(LaunchError::new(code, e.message().unwrap_or_default()))
                }
                None => LaunchFailure::Unknown(Box::new(e)),
            })?;
        let found = out.images().first().ok_or_else(|| {
            LaunchFailure::Rejected(LaunchError::new(
                "InvalidAMIID.NotFound",
                format!("image {image} not found"),
            ))
        })?;
        let facts = ImageFacts {
            root_device: found.root_device_name().map(str::to_owned),
            architecture: found.architecture().map(|a| a.as_str().to_owned()),
        };
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_owned(), facts.clone());
        Ok(facts)
    }

    /// The AMI `image` stands for (an id, or an SSM parameter resolved now),
    /// when EC2 has it and it is of architecture `wanted`: what every launch
    /// checks first, asked ahead by `jitr doctor --aws` for each pool.
    pub async fn check_image(
        &self,
        image: &str,
        wanted: Architecture,
    ) -> Result<String, LaunchFailure> {
        let ami = self.image_id(image).await?;
        self.check_architecture(&ami, wanted).await?;
        Ok(ami)
    }

    /// Refuses an image whose architecture is not the pool's: EC2 would launch
    /// it on a type of the image's architecture and the pool's jobs would run on
    /// the wrong CPU, or refuse every type of the pool's.
    async fn check_architecture(
        &self,
        image: &str,
        wanted: Architecture,
    ) -> Result<(), LaunchFailure> {
        let facts = self.image_facts(image).await?;
        match facts.architecture.as_deref() {
            Some(found) if Architecture::from_ec2(found) == Some(wanted) => Ok(()),
            found => Err(LaunchFailure::Rejected(architecture_mismatch(
                image, found, wanted,
            ))),
        }
    }

    /// The settings every runner instance gets, and the pool's: IMDSv2 required,
    /// terminate on shutdown, profile, security groups, root volume, tags on the
    /// instance and its volumes.
    async fn with_settings(
        &self,
        mut req: aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
        spec: &LaunchSpec,
        image: &str,
    ) -> Result<
        aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
        LaunchFailure,
    > {
        let settings: &LaunchSettings = &spec.settings;
        let mut tags = self.tags(&spec.stream, &spec.client_token);
        for (key, value) in &settings.tags {
            tags.push(Tag::builder().key(key).value(value).build());
        }
        for resource in [ResourceType::Instance, ResourceType::Volume] {
            req = req.tag_specifications(
                TagSpecification::builder()
                    .resource_type(resource)
                    .set_tags(Some(tags.clone()))
                    .build(),
            );
        }
        req = req
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_put_response_hop_limit(i32::from(settings.metadata_hop_limit.max(1)))
                    .build(),
            )
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate);
        let subnet = self
            .subnet_among(&settings.subnets, &spec.client_token)
            .or_else(|| self.subnet_for(&spec.client_token));
        let groups =
            (!settings.security_groups.is_empty()).then(|| settings.security_groups.clone());
        match subnet {
            // The primary interface, so that a public address is asked for
            // (or refused) whatever the subnet's default.
            Some(subnet) => {
                req = req.network_interfaces(
                    InstanceNetworkInterfaceSpecification::builder()
                        .device_index(0)
                        .subnet_id(subnet)
                        .set_groups(groups)
                        .associate_public_ip_address(settings.public_ip)
                        .delete_on_termination(true)
                        .build(),
                );
            }
            None => req = req.set_security_group_ids(groups),
        }
        if let Some(profile) = &settings.instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            let spec = if profile.starts_with("arn:") {
                spec.arn(profile)
            } else {
                spec.name(profile)
            };
            req = req.iam_instance_profile(spec.build());
        }
        if let Some(gib) = settings.root_volume_gib {
            let device = self.image_facts(image).await?.root_device.ok_or_else(|| {
                LaunchFailure::Rejected(LaunchError::new(
                    "InvalidAMIID.Malformed",
                    format!("image {image} names no root device to size"),
                ))
            })?;
            req = req.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(i32::try_from(gib).unwrap_or(i32::MAX))
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        Ok(req)
    }

    async fn describe_where(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<ManagedInstance>, ComputeError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take());
            if let Some(n) = self.page_size {
                req = req.max_results(n);
            }
            let page = req
                .send()
                .await
                .map_err(|e| compute_error(&e, e.to_string()))?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    if let Some(m) = managed(instance) {
                        if m.state != InstanceState::Terminated {
                            out.push(m);
                        }
                    }
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

fn compute_error<E: ProvideErrorMetadata>(e: &E, fallback: String) -> ComputeError {
    match e.code() {
        Some("RequestLimitExceeded" | "Throttling") => {
            ComputeError::Throttled(e.message().unwrap_or_default().to_owned())
        }
        _ => ComputeError::Unavailable(fallback.into()),
    }
}

fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn managed(instance: &Instance) -> Option<ManagedInstance> {
    let id = instance.instance_id()?;
    let state = instance
        .state()
        .and_then(|s| s.name())
        .and_then(|n| InstanceState::parse(n.as_str()))
        .unwrap_or(InstanceState::Pending);
    let market = match instance.instance_lifecycle() {
        Some(InstanceLifecycleType::Spot) => Market::Spot,
        _ => Market::OnDemand,
    };
    Some(ManagedInstance {
        instance_id: InstanceId(id.to_owned()),
        stream: tag(instance, TAG_RUNNER).and_then(|s| StreamId::parse(s).ok()),
        client_token: tag(instance, TAG_CLIENT_TOKEN)
            .map(|t| ClientToken(t.to_owned()))
            .or_else(|| {
                instance
                    .client_token()
                    .filter(|t| !t.is_empty())
                    .map(|t| ClientToken(t.to_owned()))
            }),
        state,
        launched_at: Timestamp(
            instance
                .launch_time()
                .and_then(|t| t.to_millis().ok())
                .unwrap_or_default(),
        ),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        market,
    })
}

impl Ec2Compute {
    /// jitr's tags for an instance of `stream` launched with `client_token`.
    fn tags(&self, stream: &StreamId, client_token: &ClientToken) -> Vec<Tag> {
        let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
        let mut tags = vec![
            tag(TAG_MANAGED_BY, MANAGED_BY),
            tag(TAG_RUNNER, stream.as_str()),
            tag(TAG_CLIENT_TOKEN, &client_token.0),
            tag("Name", &format!("jitr {stream}")),
        ];
        if let Some(deployment) = &self.deployment {
            tags.push(tag(TAG_DEPLOYMENT, deployment));
        }
        tags
    }
}

#[async_trait]
impl Compute for Ec2Compute {
    fn cloud_time(&self) -> Option<Timestamp> {
        crate::calls::cloud_clock().now()
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchedInstance, LaunchFailure> {
        let image = self.image_id(&spec.image).await?;
        if let Some(wanted) = spec.settings.architecture {
            self.check_architecture(&image, wanted).await?;
        }
        let req = self
            .client
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&spec.client_token.0);
        let mut req = self.with_settings(req, spec, &image).await?.set_user_data(
            spec.user_data
                .as_ref()
                .map(|u| aws_smithy_types::base64::encode(u.as_bytes())),
        );
        if spec.market == Market::Spot {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        // One attempt: an SDK retry after a first attempt that reached EC2
        // could end in a refusal (a throttle) although the first launched, and
        // every answer below would then lie. A failed launch is retried by
        // jitr, by its token.
        let once = aws_sdk_ec2::config::Builder::default()
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled());
        let out = match req.customize().config_override(once).send().await {
            Ok(out) => out,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.code().map(str::to_owned);
                let message = e.message().unwrap_or_default().to_owned();
                return Err(run_instances_failure(
                    code.as_deref(),
                    &message,
                    status,
                    e.into(),
                ));
            }
        };
        let instance = out
            .instances()
            .first()
            .ok_or_else(|| LaunchFailure::Unknown("RunInstances returned no instance".into()))?;
        let instance_id = instance
            .instance_id()
            .ok_or_else(|| LaunchFailure::Unknown("RunInstances returned no instance id".into()))?;
        let vcpus = instance
            .cpu_options()
            .and_then(|c| Some(c.core_count()? * c.threads_per_core().unwrap_or(1)))
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(spec.vcpus);
        Ok(LaunchedInstance {
            instance_id: InstanceId(instance_id.to_owned()),
            instance_type: spec.instance_type.clone(),
            vcpus,
            market: spec.market,
        })
    }

    async fn terminate(&self, instance: &InstanceId) -> Result<TerminateOutcome, ComputeError> {
        match self
            .client
            .terminate_instances()
            .instance_ids(&instance.0)
            .send()
            .await
        {
            Ok(_) => Ok(TerminateOutcome::Terminating),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {
                Ok(TerminateOutcome::AlreadyGone)
            }
            Err(e) => Err(compute_error(&e, e.to_string())),
        }
    }

    async fn stop(&self, instance: &InstanceId) -> Result<(), ComputeError> {
        self.client
            .stop_instances()
            .instance_ids(&instance.0)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| compute_error(&e, e.to_string()))
    }

    async fn start(&self, instance: &InstanceId) -> Result<(), LaunchFailure> {
        match self
            .client
            .start_instances()
            .instance_ids(&instance.0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.code().map(str::to_owned);
                let message = e.message().unwrap_or_default().to_owned();
                Err(run_instances_failure(
                    code.as_deref(),
                    &message,
                    status,
                    e.into(),
                ))
            }
        }
    }

    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, ComputeError> {
        let mut filters = vec![
            filter(&format!("tag:{TAG_MANAGED_BY}"), &[MANAGED_BY]),
            filter("instance-state-name", &LIVE_STATES),
        ];
        if let Some(deployment) = &self.deployment {
            filters.push(filter(&format!("tag:{TAG_DEPLOYMENT}"), &[deployment]));
        }
        self.describe_where(filters).await
    }

    async fn describe_managed(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        // The listing's filters on one id: a filter matching nothing is an
        // empty answer, never InvalidInstanceID.NotFound.
        let mut filters = vec![
            filter("instance-id", &[&instance.0]),
            filter(&format!("tag:{TAG_MANAGED_BY}"), &[MANAGED_BY]),
            filter("instance-state-name", &LIVE_STATES),
        ];
        if let Some(deployment) = &self.deployment {
            filters.push(filter(&format!("tag:{TAG_DEPLOYMENT}"), &[deployment]));
        }
        Ok(self.describe_where(filters).await?.into_iter().next())
    }

    async fn find_by_client_token(
        &self,
        token: &ClientToken,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        let found = self
            .describe_where(vec![
                filter(&format!("tag:{TAG_CLIENT_TOKEN}"), &[&token.0]),
                filter("instance-state-name", &LIVE_STATES),
            ])
            .await?;
        Ok(found.into_iter().next())
    }

    async fn describe(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        match self
            .client
            .describe_instances()
            .instance_ids(&instance.0)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(managed)),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(None),
            Err(e) => Err(compute_error(&e, e.to_string())),
        }
    }

    async fn console_output(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ConsoleOutput>, ComputeError> {
        // The latest output needs a Nitro instance; on others EC2 answers
        // UnsupportedOperation and keeps the output of the last boot.
        let mut latest = true;
        let out = loop {
            match self
                .client
                .get_console_output()
                .instance_id(&instance.0)
                .latest(latest)
                .send()
                .await
            {
                Ok(out) => break out,
                Err(e) if latest && e.code() == Some("UnsupportedOperation") => latest = false,
                Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => return Ok(None),
                Err(e) => return Err(compute_error(&e, e.to_string())),
            }
        };
        let Some(encoded) = out.output().filter(|o| !o.is_empty()) else {
            return Ok(None);
        };
        let bytes = aws_smithy_types::base64::decode(encoded.trim()).map_err(|e| {
            ComputeError::Unavailable(format!("GetConsoleOutput: not base64: {e}").into())
        })?;
        Ok(Some(ConsoleOutput {
            instance_id: instance.clone(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            captured_at: out
                .timestamp()
                .map(|t| Timestamp(t.to_millis().unwrap_or(0))),
        }))
    }

    async fn retag(
        &self,
        instance: &InstanceId,
        stream: &StreamId,
        client_token: &ClientToken,
    ) -> Result<(), ComputeError> {
        self.client
            .create_tags()
            .resources(&instance.0)
            .set_tags(Some(self.tags(stream, client_token)))
            .send()
            .await
            .map_err(|e| compute_error(&e, e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitr_domain::LaunchErrorClass;

    fn failure(code: Option<&str>, status: Option<u16>) -> LaunchFailure {
        run_instances_failure(code, "EC2's message", status, "the SDK's error".into())
    }

    #[test]
    fn a_server_error_or_no_answer_leaves_the_launch_unknown_a_client_error_refuses_it() {
        for (code, status) in [
            (Some("InternalError"), Some(500)),
            (Some("Unavailable"), Some(503)),
            (Some("InternalError"), None),
            (Some("SomethingNew"), Some(502)),
            (None, None),
            (None, Some(504)),
        ] {
            assert!(
                matches!(failure(code, status), LaunchFailure::Unknown(_)),
                "{code:?} {status:?}"
            );
        }
        for (code, class) in [
            ("VcpuLimitExceeded", LaunchErrorClass::Quota),
            ("InsufficientInstanceCapacity", LaunchErrorClass::Capacity),
            ("RequestLimitExceeded", LaunchErrorClass::Throttled),
            ("InvalidAMIID.NotFound", LaunchErrorClass::InvalidRequest),
        ] {
            match failure(Some(code), Some(400)) {
                LaunchFailure::Rejected(e) => {
                    assert_eq!((e.code.as_str(), e.class), (code, class));
                    assert_eq!(e.message, "EC2's message");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }
}
