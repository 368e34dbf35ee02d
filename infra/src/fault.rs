//! Fault injection around a real compute adapter: the quota, capacity and
//! throttling errors, latency, lost answers and eventual consistency that an
//! emulator (and the simulator) cannot produce.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jitr_domain::{ClientToken, InstanceId, Market, StreamId, Timestamp};

use crate::ports::{
    Compute, ComputeError, ConsoleOutput, LaunchError, LaunchFailure, LaunchSpec, LaunchedInstance,
    ManagedInstance, TerminateOutcome,
};
use crate::sim::{SimClock, system_clock};

/// One injectable fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Refuse launches (in `market`, or any) with an error code; nothing starts.
    RejectLaunch {
        /// Only this market (None: both).
        market: Option<Market>,
        /// The provider error code, e.g. `VcpuLimitExceeded`.
        code: String,
    },
    /// No capacity for one instance type (in `market`, or any):
    /// `InsufficientInstanceCapacity`, as EC2 answers per type and zone
    /// ("Insufficient instance capacity", EC2 troubleshooting guide).
    NoCapacityFor {
        /// The instance type.
        instance_type: String,
        /// Only this market (None: both).
        market: Option<Market>,
    },
    /// Let the launch happen, then lose its answer, as a crash or timeout right
    /// after RunInstances would: the caller sees an unknown outcome.
    LoseLaunchAnswer,
    /// Throttle terminate calls.
    ThrottleTerminate,
    /// Refuse to terminate this instance, as termination protection or an IAM deny
    /// does (`OperationNotPermitted`, `UnauthorizedOperation`): every time when
    /// injected until cleared.
    RefuseTermination(InstanceId),
    /// Delay every call.
    Latency(Duration),
    /// EC2's eventual consistency ("Eventual consistency in the Amazon EC2 API",
    /// AWS documentation): for this long after an instance's launch, describing it
    /// by id answers `InvalidInstanceID.NotFound` (here `None`) and terminating it
    /// answers NotFound (here `AlreadyGone`) *without terminating it*: the
    /// instance exists and runs. Until cleared.
    NotFoundAfterLaunch(Duration),
    /// The tag-filtered listing omits instances launched within this long: tags
    /// and the describe index catch up late. Until cleared.
    ListOmitsRecent(Duration),
    /// RunInstances is throttled (`RequestLimitExceeded`) and the SDK keeps
    /// retrying for this long, judged by the wrapper's clock, before the launch
    /// goes through: the answer arrives long after the intent was written.
    SlowLaunch(Duration),
    /// This instance lacks the deployment tag (launched before it existed, under
    /// another prefix, or its tag write failed): the tag-filtered listing omits it
    /// until its tags are written again ([`Compute::retag`]); by id it is found.
    Untagged(InstanceId),
}

#[derive(Debug)]
struct Rule {
    fault: Fault,
    remaining: Option<u32>,
}

/// Wraps a real [`Compute`] and injects faults into its calls.
pub struct FaultyCompute<C> {
    inner: C,
    rules: Mutex<Vec<Rule>>,
    clock: SimClock,
    /// How far the cloud's clock is read ahead of the inner provider's.
    cloud_ahead_ms: AtomicI64,
}

impl<C: Compute> FaultyCompute<C> {
    /// A wrapper injecting nothing yet, judging instance ages by the system clock.
    pub fn new(inner: C) -> Self {
        FaultyCompute {
            inner,
            rules: Mutex::new(Vec::new()),
            clock: system_clock(),
            cloud_ahead_ms: AtomicI64::new(0),
        }
    }

    /// Time passes in the cloud: its clock, as jitr reads it
    /// ([`Compute::cloud_time`]), is `by` ahead of the inner provider's from
    /// now on (moto's clock, the host's, cannot be moved).
    pub fn move_cloud_clock(&self, by: Duration) {
        self.cloud_ahead_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    /// Judges instance ages by `clock` (the simulator's, in deterministic runs).
    pub fn with_clock(mut self, clock: SimClock) -> Self {
        self.clock = clock;
        self
    }

    /// The window of a standing fault, if injected.
    fn window(&self, pick: impl Fn(&Fault) -> Option<Duration>) -> Option<Duration> {
        self.lock()
            .iter()
            .filter(|r| r.remaining != Some(0))
            .find_map(|r| pick(&r.fault))
    }

    /// Whether `instance` (launched at `launched_at`) is younger than `window`.
    fn younger(&self, launched_at: Timestamp, window: Duration) -> bool {
        (self.clock)().millis_since(launched_at) < window.as_millis() as u64
    }

    /// Whether EC2 would not yet find `instance` by its id.
    async fn not_yet_found(&self, instance: &InstanceId) -> Result<bool, ComputeError> {
        let Some(window) = self.window(|f| match f {
            Fault::NotFoundAfterLaunch(d) => Some(*d),
            _ => None,
        }) else {
            return Ok(false);
        };
        Ok(self
            .inner
            .describe(instance)
            .await?
            .is_some_and(|m| self.younger(m.launched_at, window)))
    }

    /// Injects `fault` for the next `times` matching calls (None: until cleared).
    pub fn inject(&self, fault: Fault, times: Option<u32>) {
        self.lock().push(Rule {
            fault,
            remaining: times,
        });
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Removes the faults `pick` selects.
    pub fn clear_matching(&self, pick: impl Fn(&Fault) -> bool) {
        self.lock().retain(|r| !pick(&r.fault));
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the first fault matching `pick`, counting it down.
    fn take(&self, pick: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut rules = self.lock();
        let i = rules
            .iter()
            .position(|r| r.remaining != Some(0) && pick(&r.fault))?;
        let rule = &mut rules[i];
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        let fault = rule.fault.clone();
        rules.retain(|r| r.remaining != Some(0));
        Some(fault)
    }

    async fn delay(&self) {
        let latency = self.lock().iter().find_map(|r| match r.fault {
            Fault::Latency(d) => Some(d),
            _ => None,
        });
        if let Some(d) = latency {
            tokio::time::sleep(d).await;
        }
    }
}

#[async_trait]
impl<C: Compute> Compute for FaultyCompute<C> {
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchedInstance, LaunchFailure> {
        self.delay().await;
        let fault = self.take(|f| match f {
            Fault::RejectLaunch { market, .. } => market.is_none_or(|m| m == spec.market),
            Fault::NoCapacityFor {
                instance_type,
                market,
            } => *instance_type == spec.instance_type && market.is_none_or(|m| m == spec.market),
            Fault::LoseLaunchAnswer => true,
            Fault::SlowLaunch(_) => true,
            _ => false,
        });
        match fault {
            Some(Fault::SlowLaunch(retrying)) => {
                let start = (self.clock)();
                while (self.clock)().millis_since(start) < retrying.as_millis() as u64 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                self.inner.launch(spec).await
            }
            Some(Fault::RejectLaunch { code, .. }) => Err(LaunchFailure::Rejected(
                LaunchError::new(code, "injected by FaultyCompute"),
            )),
            Some(Fault::NoCapacityFor { instance_type, .. }) => {
                Err(LaunchFailure::Rejected(LaunchError::new(
                    "InsufficientInstanceCapacity",
                    format!("no {instance_type} capacity (injected by FaultyCompute)"),
                )))
            }
            Some(Fault::LoseLaunchAnswer) => {
                let launched = self.inner.launch(spec).await?;
                Err(LaunchFailure::Unknown(
                    format!("injected: the answer for {} was lost", launched.instance_id).into(),
                ))
            }
            _ => self.inner.launch(spec).await,
        }
    }

    async fn terminate(&self, instance: &InstanceId) -> Result<TerminateOutcome, ComputeError> {
        self.delay().await;
        if self.take(|f| *f == Fault::ThrottleTerminate).is_some() {
            return Err(ComputeError::Throttled("injected by FaultyCompute".into()));
        }
        if self
            .take(|f| matches!(f, Fault::RefuseTermination(id) if id == instance))
            .is_some()
        {
            return Err(ComputeError::Unavailable(
                format!(
                    "OperationNotPermitted: the instance '{instance}' may not be terminated \
                     (injected by FaultyCompute)"
                )
                .into(),
            ));
        }
        if self.not_yet_found(instance).await? {
            return Ok(TerminateOutcome::AlreadyGone);
        }
        self.inner.terminate(instance).await
    }

    async fn stop(&self, instance: &InstanceId) -> Result<(), ComputeError> {
        self.delay().await;
        self.inner.stop(instance).await
    }

    async fn start(&self, instance: &InstanceId) -> Result<(), LaunchFailure> {
        self.delay().await;
        // A start is refused as a launch is: the same injected refusals apply.
        let fault = self.take(|f| matches!(f, Fault::RejectLaunch { market: None, .. }));
        if let Some(Fault::RejectLaunch { code, .. }) = fault {
            return Err(LaunchFailure::Rejected(LaunchError::new(
                code,
                "injected by FaultyCompute",
            )));
        }
        self.inner.start(instance).await
    }

    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, ComputeError> {
        self.delay().await;
        let untagged: Vec<InstanceId> = self
            .lock()
            .iter()
            .filter_map(|r| match &r.fault {
                Fault::Untagged(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let listed: Vec<ManagedInstance> = self
            .inner
            .list_managed()
            .await?
            .into_iter()
            .filter(|m| !untagged.contains(&m.instance_id))
            .collect();
        let Some(window) = self.window(|f| match f {
            Fault::ListOmitsRecent(d) => Some(*d),
            _ => None,
        }) else {
            return Ok(listed);
        };
        Ok(listed
            .into_iter()
            .filter(|m| !self.younger(m.launched_at, window))
            .collect())
    }

    fn cloud_time(&self) -> Option<Timestamp> {
        let ahead = self.cloud_ahead_ms.load(Ordering::SeqCst);
        self.inner.cloud_time().map(|at| Timestamp(at.0 + ahead))
    }

    async fn retag(
        &self,
        instance: &InstanceId,
        stream: &StreamId,
        client_token: &ClientToken,
    ) -> Result<(), ComputeError> {
        self.delay().await;
        self.inner.retag(instance, stream, client_token).await?;
        self.lock()
            .retain(|r| !matches!(&r.fault, Fault::Untagged(id) if id == instance));
        Ok(())
    }

    async fn find_by_client_token(
        &self,
        token: &ClientToken,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        self.delay().await;
        self.inner.find_by_client_token(token).await
    }

    async fn console_output(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ConsoleOutput>, ComputeError> {
        self.delay().await;
        self.inner.console_output(instance).await
    }

    async fn describe(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        self.delay().await;
        if self.not_yet_found(instance).await? {
            return Ok(None);
        }
        self.inner.describe(instance).await
    }
}
