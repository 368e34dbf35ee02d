//! The reaper: sweeps the instances tagged by jitr against the log, whatever the
//! log's statuses say. Cost per sweep is O(live instances + open streams): it lists
//! instances and open heads, never history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use jitr_domain::{
    Command, FailureStage, InstanceId, InstanceVerdict, StreamId, Timestamp, is_terminal,
    record_instance, record_launch, resume, terminate_runner,
};
use jitr_infra::{Checkpoint, CommandId, ManagedInstance, StoreError};
use serde::Serialize;

use crate::app::Ports;
use crate::app::budget::RequestBudget;
use crate::app::compensation::Compensation;
use crate::app::dispatch::{current_state, dispatch};
use crate::app::jobwatch::JobWatch;
use crate::app::outcome::HandlerError;
use crate::app::policy::RunnerPolicy;
use crate::app::supply::{RetireReport, Supply};

/// What one sweep found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// Instances tagged `managed-by=jitr` that are not shutting down.
    pub instances_seen: usize,
    /// Instances terminated with no stream that wants them (no tag, unknown
    /// stream, closed stream, or not the stream's instance), and why.
    pub orphans_terminated: Vec<(InstanceId, String)>,
    /// Runners whose owed termination the sweep carried out.
    pub compensated: Vec<StreamId>,
    /// Runners whose instance was found gone without `Terminated`.
    pub found_gone: Vec<StreamId>,
    /// Live instances of open runners missing from the tag-filtered listing
    /// (found by their id), whose tags the sweep wrote again.
    pub retagged: Vec<InstanceId>,
    /// Ready or running runners whose job was asked for on GitHub.
    pub jobs_polled: usize,
    /// Lifecycle events recorded from those polls (webhooks that were lost).
    pub healed: usize,
    /// Job polls due but left for a later sweep: the background GitHub budget
    /// was spent.
    pub polls_deferred: usize,
    /// GitHub registrations of closed or unknown jitr runners removed.
    pub registrations_removed: usize,
    /// Pages of GitHub's runner listings read (one request each; at most
    /// [`REGISTRATION_PAGES_PER_SWEEP`] per scope, within the background budget).
    pub registration_pages: usize,
    /// Scopes whose listing waits for a later sweep: the budget was spent.
    pub registration_scopes_deferred: usize,
    /// Runners waiting for capacity (an admission round was asked for).
    pub waiting: usize,
    /// Surplus runners withdrawn, retired deregister-first, or kept busy.
    pub surplus: RetireReport,
    /// Warm runners asked for to keep the pools' floors (ADR-0022).
    pub warm_asked: Vec<StreamId>,
    /// A stopped pool's runners found stopped and recorded `Parked`.
    pub parked: Vec<StreamId>,
    /// A stopped pool's booted runners asked to stop.
    pub stopping: Vec<StreamId>,
    /// Open runners owed a termination when the sweep read them.
    pub owed_terminations: usize,
    /// The oldest of those, how long it had been owed (ms).
    pub oldest_owed_ms: u64,
    /// What failed for one instance or runner; the sweep went on with the others.
    pub errors: Vec<String>,
}

/// The reaper.
pub struct Reaper {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    compensation: Arc<Compensation>,
    jobs: Arc<JobWatch>,
    supply: Arc<Supply>,
    budget: Arc<RequestBudget>,
}

/// Pages of a scope's registrations (100 each) one sweep reads at most; the
/// next sweep goes on from the page after.
pub const REGISTRATION_PAGES_PER_SWEEP: u32 = 5;

/// The checkpoint holding where the registration sweep goes on, per scope.
pub const REGISTRATION_CURSOR: &str = "registration-sweep";

impl Reaper {
    /// A reaper over `ports`, compensating through `compensation`; its GitHub
    /// listings are background work, within `budget`.
    pub fn new(
        ports: Ports,
        policy: Arc<RunnerPolicy>,
        compensation: Arc<Compensation>,
        jobs: Arc<JobWatch>,
        supply: Arc<Supply>,
        budget: Arc<RequestBudget>,
    ) -> Self {
        Reaper {
            ports,
            policy,
            compensation,
            jobs,
            supply,
            budget,
        }
    }

    async fn record(
        &self,
        stream: &StreamId,
        command: Command,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let id = CommandId::new(format!("reaper:{stream}:{}:{}", command.name(), now.0));
        dispatch(&*self.ports.store, stream, command, now, &id).await?;
        Ok(())
    }

    async fn orphan(
        &self,
        report: &mut SweepReport,
        instance: &ManagedInstance,
        why: String,
    ) -> Result<(), HandlerError> {
        tracing::warn!(instance = %instance.instance_id, reason = %why, "reaping orphan instance");
        self.ports.compute.terminate(&instance.instance_id).await?;
        if let Err(e) = self
            .ports
            .secrets
            .delete_jit_config(&instance.instance_id)
            .await
        {
            tracing::warn!(instance = %instance.instance_id, error = %e, "JIT config not deleted");
        }
        report
            .orphans_terminated
            .push((instance.instance_id.clone(), why));
        Ok(())
    }

    /// Records an instance tagged with the stream's launch token that the log
    /// does not hold (a RunInstances answer that never reached the log): as a
    /// stray, so that the log shows it and its termination is owed until EC2
    /// confirms it gone.
    async fn keep_in_log(
        &self,
        stream: &StreamId,
        state: &jitr_domain::RunnerState,
        instance: &ManagedInstance,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let Some(token) = instance.client_token.clone() else {
            return Ok(());
        };
        let known = state
            .instance()
            .is_some_and(|i| i.id == instance.instance_id)
            || state.strays.iter().any(|s| s.id == instance.instance_id);
        if !known {
            let record = record_instance(state, token, instance.found());
            let id = CommandId::new(format!("reaper:{stream}:stray:{}", instance.instance_id));
            dispatch(&*self.ports.store, stream, record, now, &id).await?;
        }
        Ok(())
    }

    /// After terminating a stray of `stream`, records it gone if EC2, asked by
    /// its id, says so (else the projector's re-emitted termination will).
    async fn confirm_stray(
        &self,
        stream: &StreamId,
        instance: &ManagedInstance,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let state = current_state(&*self.ports.store, stream).await?;
        let Some(stray) = state
            .live_strays()
            .find(|s| s.id == instance.instance_id)
            .cloned()
        else {
            return Ok(());
        };
        let verdict = self
            .ports
            .judge_by_id(&stray.id, stray.recorded_at, &state, now)
            .await?;
        if let InstanceVerdict::Gone(evidence) = verdict {
            let confirm = Command::ConfirmTerminated {
                instance_id: Some(stray.id.clone()),
                evidence,
            };
            let id = CommandId::new(format!("reaper:{stream}:stray-gone:{}", stray.id));
            dispatch(&*self.ports.store, stream, confirm, now, &id).await?;
        }
        Ok(())
    }

    /// One instance swept at once, without the reaper's grace (EC2 said it
    /// runs): terminated if no runner owns it.
    pub async fn sweep_one(
        &self,
        instance: &ManagedInstance,
        now: Timestamp,
    ) -> Result<SweepReport, HandlerError> {
        let mut report = SweepReport::default();
        self.sweep_instance(&mut report, instance, now).await?;
        Ok(report)
    }

    /// One sweep at `now`. A failure for one instance or runner is reported in
    /// [`SweepReport::errors`] and does not stop the sweep; only a failure to list
    /// the instances or the open runners does.
    pub async fn sweep(&self, now: Timestamp) -> Result<SweepReport, HandlerError> {
        let mut report = SweepReport::default();
        let instances: Vec<ManagedInstance> = self
            .ports
            .compute
            .list_managed()
            .await?
            .into_iter()
            .filter(|i| i.state.is_live())
            .collect();
        // Launch times are EC2's: the grace is judged on EC2's clock.
        let now = self.ports.now(now);
        report.instances_seen = instances.len();
        let mut live: HashMap<InstanceId, ManagedInstance> = HashMap::new();
        let mut owed: HashSet<StreamId> = HashSet::new();
        for instance in instances {
            live.insert(instance.instance_id.clone(), instance.clone());
            if now.millis_since(instance.launched_at) < self.policy.reaper_grace_ms {
                continue;
            }
            match self.sweep_instance(&mut report, &instance, now).await {
                Ok(Some(stream)) => {
                    owed.insert(stream);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(instance = %instance.instance_id, error = %e, "reaper: instance not swept");
                    report
                        .errors
                        .push(format!("instance {}: {e}", instance.instance_id));
                }
            }
        }
        let open = self.ports.store.open_streams().await?;
        for unreadable in &open.unreadable {
            report.errors.push(format!(
                "runner {}: head unreadable: {}",
                unreadable.key, unreadable.reason
            ));
        }
        crate::app::metrics::unreadable_heads(now, open.unreadable.len());
        self.jobs
            .retain(&open.heads.iter().map(|h| h.stream.clone()).collect());
        for head in open.heads {
            let stream = head.stream.clone();
            let mut state = head.state;
            report.waiting += usize::from(
                state.status() == jitr_domain::RunnerStatus::Requested && state.failure.is_none(),
            );
            if let Some((since, _)) = jitr_domain::termination_owed(&state, now) {
                report.owed_terminations += 1;
                report.oldest_owed_ms = report.oldest_owed_ms.max(now.millis_since(since));
            }
            if self.jobs.due(&state, now) {
                match self.jobs.poll_within_budget(&state, now).await {
                    Some(Ok(polled)) => {
                        report.jobs_polled += 1;
                        report.healed += polled.recorded;
                        state = polled.state;
                    }
                    Some(Err(e)) => {
                        report.jobs_polled += 1;
                        report
                            .errors
                            .push(format!("runner {stream}: job poll: {e}"));
                    }
                    None => report.polls_deferred += 1,
                }
            }
            if let Err(e) = self
                .sweep_runner(&mut report, state, &live, &owed, now)
                .await
            {
                tracing::error!(%stream, error = %e, "reaper: runner not swept");
                report.errors.push(format!("runner {stream}: {e}"));
            }
        }
        match self.supply.retire_surplus(now).await {
            Ok(surplus) => {
                report.errors.extend(surplus.errors.iter().cloned());
                report.surplus = surplus;
            }
            Err(e) => report.errors.push(format!("retiring surplus runners: {e}")),
        }
        match self.supply.park_booted(now).await {
            Ok(parking) => {
                report.errors.extend(parking.errors);
                report.parked = parking.parked;
                report.stopping = parking.stopping;
            }
            Err(e) => report.errors.push(format!("parking booted runners: {e}")),
        }
        match self.supply.keep_warm(now).await {
            Ok(asked) => report.warm_asked = asked,
            Err(e) => report.errors.push(format!("keeping pools warm: {e}")),
        }
        self.sweep_registrations(&mut report, now).await;
        if report.waiting > 0 {
            // The periodic admission round: capacity may have freed without a
            // `Terminated` (a quota raised, other software stopped).
            let body = crate::app::scaleup::admit_message("periodic pass");
            if let Err(e) = self.ports.scaleup_queue.publish(&body, None, &[]).await {
                report
                    .errors
                    .push(format!("asking for an admission round: {e}"));
            }
        }
        crate::app::metrics::orphans_reaped(now, report.orphans_terminated.len());
        // Every minute, also when the log is quiet and the projector idle: the
        // alarm on the promise needs a figure.
        crate::app::metrics::owed_terminations(
            now,
            report.owed_terminations,
            report.oldest_owed_ms,
        );
        crate::app::metrics::github_requests(
            now,
            "reaper",
            (report.jobs_polled + report.registration_pages) as u64,
        );
        Ok(report)
    }

    /// One live instance past the grace: terminated when no open stream owns it.
    /// Returns its stream when that stream owes a termination.
    async fn sweep_instance(
        &self,
        report: &mut SweepReport,
        instance: &ManagedInstance,
        now: Timestamp,
    ) -> Result<Option<StreamId>, HandlerError> {
        let Some(stream) = instance.stream.clone() else {
            self.orphan(report, instance, "no jitr:runner tag".into())
                .await?;
            return Ok(None);
        };
        let head = match self.ports.store.head(&stream).await {
            Ok(head) => head,
            Err(unreadable @ (StoreError::Newer { .. } | StoreError::Corrupt { .. })) => {
                self.unreadable_owner(report, instance, &stream, &unreadable, now)
                    .await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(head) = head else {
            self.orphan(report, instance, format!("{stream} is unknown to the log"))
                .await?;
            return Ok(None);
        };
        if is_terminal(&head.state) {
            self.keep_in_log(&stream, &head.state, instance, now)
                .await?;
            self.orphan(report, instance, format!("{stream} is {}", head.status))
                .await?;
            self.confirm_stray(&stream, instance, now).await?;
            return Ok(None);
        }
        let mut state = head.state;
        if let (Some(token), Some(theirs)) = (state.pending_launch(), &instance.client_token) {
            if token == theirs {
                if let Some(record) = record_launch(&state, instance.found()) {
                    self.record(&stream, record, now).await?;
                    state = current_state(&*self.ports.store, &stream).await?;
                }
            }
        }
        if state.instance().map(|i| &i.id) != Some(&instance.instance_id) {
            self.keep_in_log(&stream, &state, instance, now).await?;
            self.orphan(report, instance, format!("not the instance of {stream}"))
                .await?;
            self.confirm_stray(&stream, instance, now).await?;
            return Ok(None);
        }
        Ok((!resume(&state, now).is_empty()).then_some(stream))
    }

    /// An instance whose stream this build cannot read (a newer jitr wrote it,
    /// or it is damaged): what its runner does is unknown here, so the instance
    /// is left to the jitr that can read it while any runner could still live.
    /// Past the longest a runner lives (max age, drain grace and the reaper's
    /// grace, on EC2's clock from its launch) it is terminated all the same,
    /// and nothing is written to a stream this build does not understand
    /// (ADR-0020): the jitr that reads it records the evidence.
    async fn unreadable_owner(
        &self,
        report: &mut SweepReport,
        instance: &ManagedInstance,
        stream: &StreamId,
        why: &StoreError,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let deadlines = &self.policy.deadlines;
        let longest = deadlines.max_age_ms + deadlines.drain_grace_ms + self.policy.reaper_grace_ms;
        let age = now.millis_since(instance.launched_at);
        if age >= longest {
            let why = format!(
                "{stream} cannot be read here and the instance is {} min old, older than any runner lives: {why}",
                age / 60_000
            );
            return self.orphan(report, instance, why).await;
        }
        report.errors.push(format!(
            "instance {}: {stream} cannot be read here; left to the jitr that wrote it until it is {} min old: {why}",
            instance.instance_id,
            longest / 60_000
        ));
        Ok(())
    }

    /// One open runner: an instance the cloud says is gone, without `Terminated`,
    /// is recorded gone; an owed termination is carried out.
    async fn sweep_runner(
        &self,
        report: &mut SweepReport,
        mut state: jitr_domain::RunnerState,
        live: &HashMap<InstanceId, ManagedInstance>,
        owed: &HashSet<StreamId>,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let Some(stream) = state.stream_id() else {
            return Ok(());
        };
        if let Some(instance) = state.instance().cloned() {
            // Absence from the tag-filtered list is never evidence (a missing tag,
            // another deployment prefix, a lagging index): ask by id.
            let unlisted = state.instance_may_be_alive()
                && !live.contains_key(&instance.id)
                && now.millis_since(instance.launched_at) >= self.policy.reaper_grace_ms;
            let verdict = if unlisted {
                self.ports.judge_instance(&state, now).await?
            } else {
                None
            };
            if verdict == Some(InstanceVerdict::Alive) {
                // It runs but is not listed: its tags are missing (an older
                // deployment, another prefix, a failed tag write). Write them again
                // so that every later sweep sees it; it is terminated by its id
                // below if owed.
                let token = state.launch.as_ref().map(|l| l.client_token.clone());
                if let Some(token) = token {
                    tracing::warn!(%stream, instance = %instance.id, "instance missing from the tag-filtered listing: tags written again");
                    match self
                        .ports
                        .compute
                        .retag(&instance.id, &stream, &token)
                        .await
                    {
                        Ok(()) => report.retagged.push(instance.id.clone()),
                        Err(e) => report
                            .errors
                            .push(format!("instance {}: tags not written: {e}", instance.id)),
                    }
                }
            }
            if let Some(InstanceVerdict::Gone(evidence)) = verdict {
                if state.failure.is_none() && state.job_completed_at.is_none() {
                    let fail = Command::Fail {
                        stage: FailureStage::SpotInterrupted,
                        reason: format!("{} disappeared", instance.id),
                    };
                    self.record(&stream, fail, now).await?;
                }
                let confirm = Command::ConfirmTerminated {
                    instance_id: Some(instance.id.clone()),
                    evidence,
                };
                self.record(&stream, confirm, now).await?;
                report.found_gone.push(stream);
                return Ok(());
            }
        }
        if !owed.contains(&stream) && resume(&state, now).is_empty() {
            return Ok(());
        }
        // A deadline GitHub must be asked about (the job may run on the
        // runner) is compensation's: it asks, deregisters first, then fails.
        if jitr_domain::deadline_to_confirm(&state, now).is_none() {
            for command in resume(&state, now) {
                if let Command::Fail { .. } = command {
                    self.record(&stream, command, now).await?;
                }
            }
            state = current_state(&*self.ports.store, &stream).await?;
        }
        // A failed runner with an instance that may be alive (launched, or an
        // unresolved launch) always owes a termination.
        if let Some(terminate) = terminate_runner(&state, now) {
            self.compensation.handle(&terminate, now).await?;
            report.compensated.push(stream);
        }
        Ok(())
    }

    /// Removes GitHub registrations named by jitr whose stream is closed or
    /// unknown. A name an open runner has or registers under is never removed.
    /// If the open runners cannot be read, nothing is removed.
    ///
    /// The listing is paged as GitHub pages it: each sweep reads at most
    /// [`REGISTRATION_PAGES_PER_SWEEP`] pages of a scope, each within the
    /// background request budget, and the next sweep goes on from the page
    /// after (kept in the [`REGISTRATION_CURSOR`] checkpoint, so a new process
    /// resumes too). An organisation with 3,000 runners costs 5 requests a
    /// sweep, not 30. Removals shift the pages after them: a registration they
    /// skip is met on the next pass.
    async fn sweep_registrations(&self, report: &mut SweepReport, now: Timestamp) {
        // Each scope is asked through the installation its runners came through.
        let mut scopes = Vec::new();
        let open = match self.ports.store.open_streams().await {
            Ok(open) if open.unreadable.is_empty() => open,
            // An open runner that cannot be read may own any name.
            _ => return,
        };
        // Every name an open runner has or will register under, whatever its
        // state: a mint may be done before its `TokenMinted` is written, and the
        // name index may lag.
        let open_names: HashSet<String> = open
            .heads
            .iter()
            .flat_map(|h| {
                [
                    h.state.runner_name.clone(),
                    h.state.runner_name_to_register(),
                ]
            })
            .flatten()
            .collect();
        for head in open.heads {
            if let Some(r) = &head.state.request {
                let scope = self.policy.scope_of(r);
                let entry = (self.policy.installation_for(&head.state), scope);
                if !scopes.contains(&entry) {
                    scopes.push(entry);
                }
            }
        }
        if let crate::app::policy::Registration::Organization { org } = &self.policy.registration {
            let scope = jitr_infra::RunnerScope::Org { org: org.clone() };
            if !scopes.iter().any(|(_, s)| *s == scope) {
                scopes.push((self.policy.installation_id, scope));
            }
        }
        let (mut cursor, generation) = self.registration_cursor().await;
        for (installation, scope) in scopes {
            let key = format!("{installation} {scope}");
            let mut page = cursor.get(&key).copied().unwrap_or(1);
            for _ in 0..REGISTRATION_PAGES_PER_SWEEP {
                let listing = self.ports.github.runners_page(installation, &scope, page);
                let listed = match self.budget.spend(installation, now, listing).await {
                    None => {
                        report.registration_scopes_deferred += 1;
                        break;
                    }
                    Some(Err(e)) => {
                        report
                            .errors
                            .push(format!("runner registrations of {scope}, page {page}: {e}"));
                        break;
                    }
                    Some(Ok(listed)) => listed,
                };
                report.registration_pages += 1;
                report.registrations_removed += self
                    .remove_stale(installation, &scope, &listed.runners, &open_names)
                    .await;
                if !listed.more {
                    page = 1;
                    break;
                }
                page += 1;
            }
            cursor.insert(key, page);
        }
        let checkpoint = Checkpoint {
            position: 0,
            snapshot: serde_json::to_vec(&cursor).unwrap_or_default(),
            generation,
        };
        if let Err(e) = self
            .ports
            .store
            .save_checkpoint(REGISTRATION_CURSOR, &checkpoint)
            .await
        {
            // The next sweep reads these pages again: nothing is lost.
            tracing::warn!(error = %e, "registration sweep: where it stopped not saved");
        }
    }

    /// Where the registration sweep goes on in each scope (`installation
    /// scope` → page), and the checkpoint's generation.
    async fn registration_cursor(&self) -> (BTreeMap<String, u32>, u64) {
        match self.ports.store.load_checkpoint(REGISTRATION_CURSOR).await {
            Ok(Some(saved)) => (
                serde_json::from_slice(&saved.snapshot).unwrap_or_default(),
                saved.generation,
            ),
            Ok(None) => (BTreeMap::new(), 0),
            Err(e) => {
                tracing::warn!(error = %e, "registration sweep: starting from the first pages");
                (BTreeMap::new(), 0)
            }
        }
    }

    /// Removes those of `runners` that jitr named and no open runner owns.
    async fn remove_stale(
        &self,
        installation: u64,
        scope: &jitr_infra::RunnerScope,
        runners: &[jitr_infra::Runner],
        open_names: &HashSet<String>,
    ) -> usize {
        let mut removed = 0;
        for runner in runners
            .iter()
            .filter(|r| self.policy.names_runner(&r.name) && !r.busy)
            .filter(|r| !open_names.contains(&r.name))
        {
            let open = match self.ports.store.stream_of_runner(&runner.name).await {
                Ok(Some(stream)) => self
                    .ports
                    .store
                    .head(&stream)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|h| h.open),
                Ok(None) => false,
                Err(_) => true,
            };
            if !open
                && self
                    .ports
                    .github
                    .delete_runner(installation, scope, runner.id)
                    .await
                    .unwrap_or(false)
            {
                removed += 1;
            }
        }
        removed
    }
}
