//! The compute port: launching, finding and terminating runner instances.

use async_trait::async_trait;
use jitr_domain::{
    ClientToken, FoundInstance, InstanceId, LaunchErrorClass, Market, StreamId, Timestamp,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::BoxError;

/// Tag every jitr instance carries.
pub const TAG_MANAGED_BY: &str = "managed-by";
/// Its value.
pub const MANAGED_BY: &str = "jitr";
/// Tag naming the runner stream.
pub const TAG_RUNNER: &str = "jitr:runner";
/// Tag naming the jitr deployment (its resource prefix), so that two deployments
/// in one account never reap each other's instances.
pub const TAG_DEPLOYMENT: &str = "jitr:deployment";
/// Tag holding the launch's client token.
pub const TAG_CLIENT_TOKEN: &str = "jitr:client-token";
/// Tag naming the runner's pool, for cost allocation (Cost Explorer).
pub const TAG_POOL: &str = "jitr:pool";
/// Tag naming the repository (`owner/repo`) the runner was launched for, for
/// cost allocation.
pub const TAG_REPOSITORY: &str = "jitr:repository";

/// A CPU architecture, as EC2 names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// x86-64 (Intel, AMD).
    #[default]
    X86_64,
    /// 64-bit Arm (Graviton).
    Arm64,
}

impl Architecture {
    /// EC2's name: `x86_64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The architecture EC2 names `name` (`x86_64`, `arm64`); none for others
    /// (`i386`, `x86_64_mac`, …), which no jitr pool runs.
    pub fn from_ec2(name: &str) -> Option<Architecture> {
        match name {
            "x86_64" => Some(Architecture::X86_64),
            "arm64" => Some(Architecture::Arm64),
            _ => None,
        }
    }

    /// The architecture an instance type's name says: arm64 for `a1` and for a
    /// generation digit followed by `g` (`c7g`, `m6gd`, `t4g`, `im4gn`), else
    /// x86_64. EC2's naming convention (Amazon EC2 Instance Types, "Naming
    /// conventions"), not a lookup.
    pub fn of_instance_type(instance_type: &str) -> Architecture {
        let family = instance_type.split('.').next().unwrap_or_default();
        let after_letters = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
        let after_digits = after_letters.trim_start_matches(|c: char| c.is_ascii_digit());
        if family == "a1"
            || (after_digits.len() < after_letters.len() && after_digits.starts_with('g'))
        {
            Architecture::Arm64
        } else {
            Architecture::X86_64
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One launch: everything RunInstances needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The runner.
    pub stream: StreamId,
    /// The idempotency token of this launch intent.
    pub client_token: ClientToken,
    /// Spot or on-demand.
    pub market: Market,
    /// Instance type.
    pub instance_type: String,
    /// vCPUs of the type (used when the provider does not report them).
    pub vcpus: u32,
    /// Machine image.
    pub image: String,
    /// Boot script (base64 is the adapter's business), if any.
    pub user_data: Option<String>,
    /// Profile, network, metadata, volume and tag settings.
    pub settings: LaunchSettings,
}

/// How a runner instance is launched besides its type and image. Whatever is
/// set here, every instance requires IMDSv2 tokens and terminates (never stops)
/// when it shuts itself down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchSettings {
    /// The instance profile (name or ARN) the runner reads its JIT config with.
    pub instance_profile: Option<String>,
    /// Security groups (ids); empty: the VPC's default group.
    pub security_groups: Vec<String>,
    /// Subnets to spread launches over; empty: the adapter's (or EC2's default).
    pub subnets: Vec<String>,
    /// IMDSv2 response hop limit: 1, or 2 for jobs that reach the metadata
    /// service from a container.
    pub metadata_hop_limit: u8,
    /// Root volume size in GiB (gp3, encrypted); none: the image's own.
    pub root_volume_gib: Option<u32>,
    /// Extra tags on the instance and its volumes.
    pub tags: std::collections::BTreeMap<String, String>,
    /// The architecture the pool's jobs need: an image of another one is
    /// refused before RunInstances (none: not checked).
    #[serde(default)]
    pub architecture: Option<Architecture>,
    /// Whether the instance gets a public IPv4 address, whatever its subnet's
    /// default (no: it reaches GitHub through the subnet's routes, a NAT
    /// gateway). Applies where a subnet is given; EC2's default subnet keeps
    /// its own default.
    pub public_ip: bool,
}

impl Default for LaunchSettings {
    /// No profile, the default security group and subnets, hop limit 1, the
    /// image's root volume, no extra tags, no public IP.
    fn default() -> Self {
        LaunchSettings {
            instance_profile: None,
            security_groups: Vec::new(),
            subnets: Vec::new(),
            metadata_hop_limit: 1,
            root_volume_gib: None,
            tags: std::collections::BTreeMap::new(),
            architecture: None,
            public_ip: false,
        }
    }
}

/// What a launch started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchedInstance {
    /// Its id.
    pub instance_id: InstanceId,
    /// Its type.
    pub instance_type: String,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its market.
    pub market: Market,
}

impl LaunchedInstance {
    /// What RunInstances reported, for the domain's launch rules.
    pub fn found(self) -> FoundInstance {
        FoundInstance {
            instance_id: self.instance_id,
            instance_type: Some(self.instance_type),
            vcpus: Some(self.vcpus),
        }
    }
}

/// A launch the provider refused: no instance exists for it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{code} ({class:?}): {message}")]
pub struct LaunchError {
    /// Provider error code, e.g. `VcpuLimitExceeded`.
    pub code: String,
    /// Its class.
    pub class: LaunchErrorClass,
    /// Provider message.
    pub message: String,
}

impl LaunchError {
    /// A refusal with `code`, classified.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        LaunchError {
            class: classify(&code),
            code,
            message: message.into(),
        }
    }
}

/// The outcome of a launch call.
#[derive(Debug, Error)]
pub enum LaunchFailure {
    /// The provider answered with an error: no instance exists.
    #[error("launch refused: {0}")]
    Rejected(LaunchError),
    /// No answer (timeout, connection lost, crash): an instance may exist; resolve
    /// it by client token.
    #[error("launch outcome unknown: {0}")]
    Unknown(#[source] BoxError),
}

/// jitr's refusal of `image` (of architecture `found`, as EC2 names it) for a
/// pool of architecture `wanted`, before RunInstances.
pub fn architecture_mismatch(
    image: &str,
    found: Option<&str>,
    wanted: Architecture,
) -> LaunchError {
    LaunchError::new(
        "InvalidParameterValue",
        format!(
            "image {image} is {}, the pool's architecture is {wanted}: give the pool an \
             {wanted} image or set its architecture",
            found.unwrap_or("of no stated architecture")
        ),
    )
}

/// Classifies an EC2 (or simulator) error code.
pub fn classify(code: &str) -> LaunchErrorClass {
    match code {
        "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "InstanceLimitExceeded"
        | "ReservationCapacityExceeded" => LaunchErrorClass::Quota,
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "SpotMaxPriceTooLow"
        | "InsufficientFreeAddressesInSubnet"
        | "CapacityNotAvailable" => LaunchErrorClass::Capacity,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => {
            LaunchErrorClass::Throttled
        }
        c if c.starts_with("Invalid")
            || c.starts_with("Missing")
            || c == "UnauthorizedOperation"
            || c == "Unsupported"
            || c == "IdempotentParameterMismatch"
            || c == "OptInRequired"
            // The account's configuration: IAM, the spot service-linked role.
            || c.starts_with("AuthFailure") =>
        {
            LaunchErrorClass::InvalidRequest
        }
        _ => LaunchErrorClass::Unknown,
    }
}

/// What terminating an instance found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TerminateOutcome {
    /// The instance is shutting down (or terminated by this call).
    Terminating,
    /// The instance does not exist (any more).
    AlreadyGone,
}

/// An instance's life-cycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Booting.
    Pending,
    /// Up.
    Running,
    /// Terminating.
    ShuttingDown,
    /// Stopping.
    Stopping,
    /// Stopped (still counts against nothing but storage; still jitr's to remove).
    Stopped,
    /// Gone.
    Terminated,
}

impl InstanceState {
    /// Pending, running, stopping or stopped: not (being) terminated. Shutting
    /// down is irreversible, so jitr counts such an instance as gone.
    pub fn is_live(self) -> bool {
        !matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }

    /// Parses an EC2 state name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "terminated" => InstanceState::Terminated,
            _ => return None,
        })
    }
}

/// An instance tagged `managed-by=jitr`, as the provider sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedInstance {
    /// Its id.
    pub instance_id: InstanceId,
    /// The runner stream its tag names (None: tag missing or malformed).
    pub stream: Option<StreamId>,
    /// The client token its tag holds.
    pub client_token: Option<ClientToken>,
    /// Its state.
    pub state: InstanceState,
    /// When it was launched.
    pub launched_at: Timestamp,
    /// Its type.
    pub instance_type: String,
    /// Its market.
    pub market: Market,
}

impl ManagedInstance {
    /// What a listing reports of the instance, for the domain's launch rules (a
    /// listing does not report vCPUs).
    pub fn found(&self) -> FoundInstance {
        FoundInstance {
            instance_id: self.instance_id.clone(),
            instance_type: Some(self.instance_type.clone()),
            vcpus: None,
        }
    }
}

/// What an instance wrote to its serial console, as the provider keeps it
/// (EC2 `GetConsoleOutput`). jitr's bootstrap logs every step there and never
/// the JIT config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleOutput {
    /// The instance.
    pub instance_id: InstanceId,
    /// The text, decoded.
    pub text: String,
    /// When the provider captured it, when it says.
    pub captured_at: Option<Timestamp>,
}

impl ConsoleOutput {
    /// Its last `lines` lines.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A compute call failed without an answer about the instance.
#[derive(Debug, Error)]
pub enum ComputeError {
    /// The provider throttled the call.
    #[error("compute throttled: {0}")]
    Throttled(String),
    /// Anything else.
    #[error("compute unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

/// Launches and removes runner instances. Every instance is tagged with
/// [`TAG_MANAGED_BY`], [`TAG_RUNNER`] and [`TAG_CLIENT_TOKEN`].
#[async_trait]
pub trait Compute: Send + Sync {
    /// Launches one instance; the same client token never starts a second one
    /// (where the provider honours it).
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchedInstance, LaunchFailure>;

    /// Terminates an instance; an unknown id is [`TerminateOutcome::AlreadyGone`].
    async fn terminate(&self, instance: &InstanceId) -> Result<TerminateOutcome, ComputeError>;

    /// Every jitr instance in any state but `terminated`.
    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, ComputeError>;

    /// Stops a running instance, keeping its volume (a stopped pool parks it:
    /// ADR-0022). Stopping one already stopping or stopped changes nothing.
    async fn stop(&self, instance: &InstanceId) -> Result<(), ComputeError>;

    /// Starts a stopped instance. EC2 refuses as it refuses a launch (the
    /// vCPU quota, `InsufficientInstanceCapacity`): the instance stays stopped.
    async fn start(&self, instance: &InstanceId) -> Result<(), LaunchFailure>;

    /// The instance, if it is one [`Compute::list_managed`] would list (a jitr
    /// instance of this deployment, not `terminated`): one described instance,
    /// not the fleet. `None` also while EC2's listing does not show it yet.
    async fn describe_managed(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        Ok(self
            .list_managed()
            .await?
            .into_iter()
            .find(|m| m.instance_id == *instance))
    }

    /// The instance a launch with `token` started, if any (not `terminated`).
    async fn find_by_client_token(
        &self,
        token: &ClientToken,
    ) -> Result<Option<ManagedInstance>, ComputeError>;

    /// The instance's current state, `terminated` included; `None` when the
    /// provider does not know the id (EC2's `InvalidInstanceID.NotFound`), which
    /// right after a launch is no evidence that it is gone.
    async fn describe(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ManagedInstance>, ComputeError>;

    /// The provider's time now, as its answers tell it (AWS: the `Date` of its
    /// latest answer, carried forward), or `None` before it has answered. Times
    /// judged across processes (the consistency window, deadlines) are judged
    /// on this clock, not on the host's.
    fn cloud_time(&self) -> Option<Timestamp> {
        None
    }

    /// The instance's console output, the latest the provider has (EC2
    /// `GetConsoleOutput`); `None` when it has none (an unknown id, or nothing
    /// captured yet).
    async fn console_output(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ConsoleOutput>, ComputeError>;

    /// Writes jitr's tags on `instance` again ([`TAG_MANAGED_BY`], the
    /// deployment's, [`TAG_RUNNER`], [`TAG_CLIENT_TOKEN`]), so that an instance
    /// found by its id but missing from the tag-filtered listing is listed again.
    async fn retag(
        &self,
        instance: &InstanceId,
        stream: &StreamId,
        client_token: &ClientToken,
    ) -> Result<(), ComputeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(classify("VcpuLimitExceeded"), LaunchErrorClass::Quota);
        assert_eq!(
            classify("MaxSpotInstanceCountExceeded"),
            LaunchErrorClass::Quota
        );
        assert_eq!(classify("InstanceLimitExceeded"), LaunchErrorClass::Quota);
        assert_eq!(
            classify("InsufficientInstanceCapacity"),
            LaunchErrorClass::Capacity
        );
        assert_eq!(
            classify("RequestLimitExceeded"),
            LaunchErrorClass::Throttled
        );
        assert_eq!(
            classify("InvalidAMIID.NotFound"),
            LaunchErrorClass::InvalidRequest
        );
        assert_eq!(classify("InternalError"), LaunchErrorClass::Unknown);
        for configuration in [
            "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
            "UnauthorizedOperation",
            "InvalidAMIID.NotFound",
            "InvalidParameterValue",
            "OptInRequired",
        ] {
            assert_eq!(
                classify(configuration),
                LaunchErrorClass::InvalidRequest,
                "{configuration}"
            );
        }
    }
}
