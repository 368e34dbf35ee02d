//! The projector: folds the log's feed into the runner views, checkpoints them, and
//! issues the compensation owed to every runner that needs a termination.

use std::sync::Arc;

use jitr_domain::{Command, TerminateRunner, Timestamp, missed_deadline, resume};
use jitr_infra::{
    BusError, Checkpoint, CommandBus, CommandId, RunnerLog, StoreError, read_feed_page,
};
use jitr_projections::{CompensationPolicy, RunnerViews};
use thiserror::Error;

use crate::app::dispatch::{DispatchError, dispatch};

/// The checkpoint name of the runner views.
pub const CHECKPOINT: &str = "runner-views";

/// Events read from the feed per page.
pub const FEED_PAGE: usize = 10_000;

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
}

/// Folds the feed and emits `TerminateRunner` commands, at least once each.
pub struct Projector {
    store: Arc<dyn RunnerLog>,
    bus: Arc<dyn CommandBus>,
    views: RunnerViews,
    policy: CompensationPolicy,
}

impl Projector {
    /// Starts from the saved checkpoint (or from the beginning of the log).
    /// Nothing emitted before a restart is remembered, so everything still owed is
    /// emitted again.
    pub async fn start(
        store: Arc<dyn RunnerLog>,
        bus: Arc<dyn CommandBus>,
        reemit_after_ms: u64,
    ) -> Result<Self, ProjectorError> {
        let views = match store.load_checkpoint(CHECKPOINT).await? {
            Some(cp) => serde_json::from_slice(&cp.snapshot).map_err(ProjectorError::Snapshot)?,
            None => RunnerViews::default(),
        };
        Ok(Projector {
            store,
            bus,
            views,
            policy: CompensationPolicy::new(reemit_after_ms),
        })
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
        loop {
            let page = read_feed_page(&*self.store, self.views.position, FEED_PAGE).await?;
            if page.last.is_none() {
                break;
            }
            for r in &page.events {
                self.views.apply(r.position, &r.stream, &r.event);
            }
            for unreadable in &page.unreadable {
                self.views.skip(unreadable.position);
            }
            folded += (page.events.len() + page.unreadable.len()) as u64;
        }
        if folded > 0 {
            let snapshot = serde_json::to_vec(&self.views).map_err(ProjectorError::Snapshot)?;
            let checkpoint = Checkpoint {
                position: self.views.position,
                snapshot,
            };
            self.store.save_checkpoint(CHECKPOINT, &checkpoint).await?;
        }
        Ok(folded)
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
        for (stream, state) in &self.views.open {
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
            if !requested {
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

    /// One round: catch up, then compensate.
    pub async fn tick(&mut self, now: Timestamp) -> Result<Vec<TerminateRunner>, ProjectorError> {
        self.catch_up().await?;
        self.compensate(now).await
    }
}
