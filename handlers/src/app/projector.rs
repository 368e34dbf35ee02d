//! The projector: folds the log's feed into the runner views, checkpoints them, and
//! issues the compensation owed to every runner that needs a termination.

use std::sync::Arc;

use jitr_domain::{
    Command, TerminateRunner, Timestamp, deadline_to_confirm, missed_deadline, resume,
};
use jitr_infra::{
    BusError, Checkpoint, CommandBus, CommandId, RunnerLog, StoreError, read_feed_page,
};
use jitr_projections::{CompensationPolicy, RunnerViews, VIEWS_SCHEMA};
use thiserror::Error;

use crate::app::dispatch::{DispatchError, dispatch};

/// The checkpoint name of the runner views.
pub const CHECKPOINT: &str = "runner-views";

/// Events read from the feed per page.
pub const FEED_PAGE: usize = 10_000;

/// The checkpoint is saved at least every this many events folded…
pub const CHECKPOINT_EVERY_EVENTS: u64 = 50_000;
/// …and at least this often while a catch-up runs.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A catch-up stops (saved) when its task's deadline is nearer than this: the
/// compensation after it and the checkpoint's write must fit (a Lambda
/// invocation's deadline; the next invocation goes on from the checkpoint).
pub const STOP_BEFORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The lease that makes one projector the writer of the checkpoint and the
/// emitter of compensation.
pub const LEASE: &str = "projector";

/// How long a projector's lease lasts unless renewed (each tick renews it): a
/// projector that dies without giving it up is replaced after this long.
pub const LEASE_TTL_MS: u64 = 30_000;

/// Why the projector stopped.
#[derive(Debug, Error)]
pub enum ProjectorError {
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus did not take the commands.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Recording a compensation in the log failed.
    #[error("recording compensation: {0}")]
    Dispatch(#[from] DispatchError),
    /// The saved checkpoint cannot be read.
    #[error("checkpoint {CHECKPOINT:?} is unreadable ({0}); delete it to rebuild from the log")]
    Snapshot(#[source] serde_json::Error),
    /// The saved checkpoint was written by a newer jitr (ADR-0019): this one
    /// neither reads nor replaces it.
    #[error(
        "checkpoint {CHECKPOINT:?} has views schema {found}; this jitr reads {VIEWS_SCHEMA}: it was saved by a newer jitr — run that version (a rollback by more than one version is not supported)"
    )]
    NewerCheckpoint {
        /// The schema found.
        found: u64,
    },
    /// The log holds an event of a newer jitr (ADR-0019): the views stop
    /// before it, checkpointed there, until this jitr is replaced.
    #[error(
        "the log's event at position {position} ({stream}) was written by a newer jitr ({what}): projection stopped before it; run that version"
    )]
    NewerLog {
        /// Its global position.
        position: u64,
        /// Its stream.
        stream: String,
        /// What this build does not know.
        what: String,
    },
}

/// Folds the feed and emits `TerminateRunner` commands, at least once each.
///
/// One projector at a time writes: each [`Projector::tick`] takes or renews the
/// lease [`LEASE`] and does nothing while another holder has it; and every save
/// of the checkpoint names the generation it replaces, so that even a writer
/// whose lease lapsed mid-save cannot overwrite a newer checkpoint.
pub struct Projector {
    store: Arc<dyn RunnerLog>,
    bus: Arc<dyn CommandBus>,
    views: RunnerViews,
    generation: u64,
    policy: CompensationPolicy,
    reemit_after_ms: u64,
    holder: String,
    leader: bool,
    /// Where a round of admission is asked for when capacity frees (the
    /// scale-up queue; none: nobody is woken).
    wake: Option<Arc<dyn jitr_infra::Queue>>,
    /// A `Terminated` of an instance was folded since the last wake.
    freed: bool,
    /// Runners closing from then on are counted in the instance-time and
    /// cost metrics (none: not counted).
    count_closed_since: Option<jitr_domain::Timestamp>,
    /// The fleet over time, folded beside the views (none: not kept).
    series: Option<jitr_projections::series::FleetSeries>,
}

impl Projector {
    /// Starts from the saved checkpoint (or from the beginning of the log).
    /// Nothing emitted before a restart is remembered, so everything still owed is
    /// emitted again.
    ///
    /// `holder` names this projector for the lease (one per process).
    pub async fn start(
        store: Arc<dyn RunnerLog>,
        bus: Arc<dyn CommandBus>,
        reemit_after_ms: u64,
        holder: impl Into<String>,
    ) -> Result<Self, ProjectorError> {
        let mut projector = Projector {
            store,
            bus,
            views: RunnerViews::default(),
            generation: 0,
            policy: CompensationPolicy::new(reemit_after_ms),
            reemit_after_ms,
            holder: holder.into(),
            leader: false,
            wake: None,
            freed: false,
            count_closed_since: None,
            series: None,
        };
        projector.reload().await?;
        Ok(projector)
    }

    /// Loads the saved checkpoint (a checkpoint of an older shape is rebuilt
    /// from the log) and forgets what was emitted.
    async fn reload(&mut self) -> Result<(), ProjectorError> {
        let (views, generation) = match self.store.load_checkpoint(CHECKPOINT).await? {
            Some(cp) => {
                // The schema first: a newer checkpoint may not parse as these
                // views, and must not be rebuilt over.
                #[derive(serde::Deserialize)]
                struct Schema {
                    #[serde(default)]
                    schema: u64,
                }
                let Schema { schema } =
                    serde_json::from_slice(&cp.snapshot).map_err(ProjectorError::Snapshot)?;
                if schema > u64::from(VIEWS_SCHEMA) {
                    crate::app::metrics::newer_log();
                    return Err(ProjectorError::NewerCheckpoint { found: schema });
                }
                if schema == u64::from(VIEWS_SCHEMA) {
                    let views: RunnerViews =
                        serde_json::from_slice(&cp.snapshot).map_err(ProjectorError::Snapshot)?;
                    (views, cp.generation)
                } else {
                    tracing::warn!(
                        schema,
                        "checkpoint of an older shape: rebuilding the views from the log"
                    );
                    (RunnerViews::default(), cp.generation)
                }
            }
            None => (RunnerViews::default(), 0),
        };
        if let Some(series) = self.series.as_mut() {
            series.reseat(&views);
        }
        self.views = views;
        self.generation = generation;
        self.policy = CompensationPolicy::new(self.reemit_after_ms);
        Ok(())
    }

    /// Asks for an admission round on `queue` (the scale-up queue) whenever a
    /// folded `Terminated` freed an instance's capacity (ADR-0014).
    pub fn with_wake(mut self, queue: Arc<dyn jitr_infra::Queue>) -> Self {
        self.wake = Some(queue);
        self
    }

    /// Counts the instance time (and cost) of the runners that close at or
    /// after `since` (the process's start) in the metrics as they are folded.
    pub fn counting_closed_since(mut self, since: jitr_domain::Timestamp) -> Self {
        self.count_closed_since = Some(since);
        self
    }

    /// Keeps the fleet over time ([`jitr_projections::series`]) from here
    /// on: its levels start at the views' open runners.
    pub fn keeping_series(mut self) -> Self {
        self.series = Some(jitr_projections::series::FleetSeries::from_views(
            &self.views,
        ));
        self
    }

    /// The fleet over time, when kept.
    pub fn series(&self) -> Option<&jitr_projections::series::FleetSeries> {
        self.series.as_ref()
    }

    /// Whether this projector held the lease at its last tick.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Gives the lease up (on a clean shutdown), so that the next projector
    /// takes over at once.
    pub async fn release(&mut self) -> Result<(), ProjectorError> {
        self.leader = false;
        self.store.release_lease(LEASE, &self.holder).await?;
        Ok(())
    }

    /// The views as folded so far.
    pub fn views(&self) -> &RunnerViews {
        &self.views
    }

    /// Folds every event past the checkpoint, then saves the checkpoint. An event
    /// that cannot be read is skipped and counted ([`RunnerViews::skipped`]), never
    /// a stall. Returns how many events were folded or skipped.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectorError> {
        let mut folded = 0;
        let mut unsaved = 0;
        let mut saved_at = std::time::Instant::now();
        let mut stopped = None;
        loop {
            let page = read_feed_page(&*self.store, self.views.position, FEED_PAGE).await?;
            if page.last.is_none() && page.newer.is_none() {
                break;
            }
            for r in &page.events {
                self.freed |= matches!(
                    r.event,
                    jitr_domain::RunnerEvent::Terminated {
                        instance_id: Some(_),
                        ..
                    } | jitr_domain::RunnerEvent::StrayTerminated { .. }
                );
                let closed = match self.series.as_mut() {
                    Some(series) => jitr_projections::series::apply_with_series(
                        &mut self.views,
                        series,
                        r.position,
                        &r.stream,
                        &r.event,
                    ),
                    None => self.views.apply(r.position, &r.stream, &r.event),
                };
                if let (Some(state), Some(since)) = (closed, self.count_closed_since) {
                    crate::app::metrics::runner_closed(r.event.at(), since, &state);
                }
            }
            for unreadable in &page.unreadable {
                self.views.skip(unreadable.position);
            }
            let read = (page.events.len() + page.unreadable.len()) as u64;
            folded += read;
            unsaved += read;
            if let Some(newer) = page.newer {
                // Never past it: the checkpoint stays before it.
                stopped = Some(newer);
                break;
            }
            // A long catch-up (a backlog, a rebuild after a schema bump) saves
            // as it goes, and stops in time for the next invocation to go on
            // from where it got.
            let out_of_time =
                jitr_infra::deadline::remaining().is_some_and(|left| left < STOP_BEFORE_DEADLINE);
            if unsaved >= CHECKPOINT_EVERY_EVENTS
                || saved_at.elapsed() >= CHECKPOINT_EVERY
                || out_of_time
            {
                self.save().await?;
                unsaved = 0;
                saved_at = std::time::Instant::now();
            }
            if out_of_time {
                tracing::info!(
                    position = self.views.position,
                    "catch-up paused before the deadline; the next tick goes on from here"
                );
                break;
            }
        }
        if unsaved > 0 {
            self.save().await?;
        }
        if let Some(newer) = stopped {
            tracing::error!(position = newer.position, stream = %newer.stream, what = %newer.reason, "projection stopped before an event of a newer jitr");
            crate::app::metrics::newer_log();
            return Err(ProjectorError::NewerLog {
                position: newer.position,
                stream: newer.stream,
                what: newer.reason,
            });
        }
        Ok(folded)
    }

    /// Saves the views as the checkpoint (naming the generation it replaces).
    async fn save(&mut self) -> Result<(), ProjectorError> {
        let snapshot = serde_json::to_vec(&self.views).map_err(ProjectorError::Snapshot)?;
        let checkpoint = Checkpoint {
            position: self.views.position,
            snapshot,
            generation: self.generation,
        };
        match self.store.save_checkpoint(CHECKPOINT, &checkpoint).await {
            Ok(generation) => self.generation = generation,
            Err(StoreError::CheckpointMoved { found, .. }) => {
                // Another projector saved meanwhile: its checkpoint stands;
                // carry on from it.
                tracing::warn!(
                    generation = self.generation,
                    found,
                    "another projector saved the checkpoint: reloading it"
                );
                self.reload().await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Records what is owed at `now` and puts the compensation on the bus:
    /// a `Failed` for every runner past a deadline, a `TerminationRequested` for each
    /// runner newly due for compensation, then its `TerminateRunner`. Returns the
    /// commands published.
    pub async fn compensate(
        &mut self,
        now: Timestamp,
    ) -> Result<Vec<TerminateRunner>, ProjectorError> {
        let mut owed: Vec<(jitr_domain::StreamId, Command, Timestamp)> = Vec::new();
        // A deadline GitHub must be asked about first (the job may run on the
        // runner, its webhook lost) is recorded by compensation, which asks.
        let confirm = |stream: &jitr_domain::StreamId| {
            self.views
                .open
                .get(stream)
                .is_some_and(|s| deadline_to_confirm(s, now).is_some())
        };
        for (stream, state) in &self.views.open {
            if confirm(stream) {
                continue;
            }
            if let Some(missed) = missed_deadline(state, now) {
                let command = resume(state, now).into_iter().next();
                if let Some(fail @ Command::Fail { .. }) = command {
                    owed.push((stream.clone(), fail, missed.at));
                }
            }
        }
        let due = self.policy.due(&self.views, now);
        for command in &due {
            let requested = self
                .views
                .open
                .get(&command.stream)
                .is_some_and(|s| s.termination_requested.is_some());
            if !requested && !confirm(&command.stream) {
                let terminate = Command::Terminate {
                    reason: command.reason,
                };
                owed.push((command.stream.clone(), terminate, command.owed_since));
            }
        }
        for (stream, command, since) in owed {
            let id = CommandId::new(format!("projector:{stream}:{}:{}", command.name(), since.0));
            // A runner that moved on meanwhile (e.g. it was terminated) is
            // `MovedOn`: the next catch-up sees it, and a bus command for it is
            // harmless.
            dispatch(&*self.store, &stream, command, now, &id).await?;
        }
        if !due.is_empty() {
            self.bus.publish(&due).await?;
        }
        Ok(due)
    }

    /// One round, if this projector holds the lease (taking or renewing it):
    /// catch up, then compensate. Without the lease it does nothing: another
    /// projector is the writer.
    pub async fn tick(&mut self, now: Timestamp) -> Result<Vec<TerminateRunner>, ProjectorError> {
        let lease = self
            .store
            .acquire_lease(LEASE, &self.holder, now, LEASE_TTL_MS)
            .await?;
        if lease.holder != self.holder {
            if self.leader {
                tracing::warn!(holder = %lease.holder, "projector lease lost");
            }
            self.leader = false;
            return Ok(Vec::new());
        }
        if !self.leader {
            // Taking over: another projector may have moved the checkpoint on.
            self.reload().await?;
            self.leader = true;
            tracing::info!(holder = %self.holder, "projector lease taken");
        }
        self.catch_up().await?;
        self.wake_admission().await;
        self.compensate(now).await
    }

    /// Asks for an admission round if capacity freed since the last one. A
    /// failure is logged: the periodic pass asks again.
    async fn wake_admission(&mut self) {
        let Some(queue) = &self.wake else {
            return;
        };
        if !std::mem::take(&mut self.freed) {
            return;
        }
        let body = crate::app::scaleup::admit_message("capacity freed");
        if let Err(e) = queue.publish(&body, None, &[]).await {
            tracing::warn!(error = %e, "could not ask for an admission round");
        }
    }
}
