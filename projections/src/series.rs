//! The fleet over time, live (issue 28): per minute of the log's time, the
//! vCPUs jitr's instances hold in each market, the runners waiting for an
//! instance, the terminations owed, and the waits of the jobs that started.
//!
//! Folded event by event beside the runner views from each stream's state
//! before and after the event, so it costs a few additions per event and is
//! bounded by [`KEPT_MS`] of minutes, whatever the fleet's size. Levels are
//! the most seen within a minute; a minute without events carries the last
//! level on.

use std::collections::VecDeque;

use jitr_domain::{Market, RunnerEvent, RunnerState, Timestamp};

use crate::RunnerViews;

/// A minute.
pub const MINUTE_MS: i64 = 60_000;

/// How much history is kept: a day.
pub const KEPT_MS: i64 = 24 * 3_600_000;

/// A termination owed longer than this is overdue: past the time the
/// compensation takes (the audit's orphan grace, 60 s).
pub const OVERDUE_AFTER_MS: u64 = 60_000;

/// What one runner adds to the levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share {
    spot_vcpus: u32,
    on_demand_vcpus: u32,
    waiting: u32,
    owed: u32,
}

impl Share {
    /// What `state` (none: closed, or not open yet) adds.
    pub fn of(state: Option<&RunnerState>) -> Share {
        let Some(state) = state else {
            return Share::default();
        };
        let mut share = Share::default();
        if state.instance_may_be_alive() {
            if let Some(instance) = state.instance() {
                match instance.market {
                    Market::Spot => share.spot_vcpus = instance.vcpus,
                    Market::OnDemand => share.on_demand_vcpus = instance.vcpus,
                }
            }
            // jitr decided the instance must go, and EC2 has not said it is
            // gone yet.
            if state.failure.is_some() || state.termination_requested.is_some() {
                share.owed = 1;
            }
        } else if state.wants_instance()
            && state.failure.is_none()
            && (state.demand_queued() || state.is_warm())
        {
            share.waiting = 1;
        }
        share
    }
}

/// The levels at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    /// vCPUs of spot instances that may be alive.
    pub spot_vcpus: u32,
    /// vCPUs of on-demand instances that may be alive.
    pub on_demand_vcpus: u32,
    /// Runners waiting for an instance.
    pub waiting: u32,
    /// Runners whose instance jitr must terminate, not yet confirmed gone.
    pub owed: u32,
}

impl Levels {
    fn add(&mut self, share: Share) {
        self.spot_vcpus += share.spot_vcpus;
        self.on_demand_vcpus += share.on_demand_vcpus;
        self.waiting += share.waiting;
        self.owed += share.owed;
    }

    fn sub(&mut self, share: Share) {
        self.spot_vcpus = self.spot_vcpus.saturating_sub(share.spot_vcpus);
        self.on_demand_vcpus = self.on_demand_vcpus.saturating_sub(share.on_demand_vcpus);
        self.waiting = self.waiting.saturating_sub(share.waiting);
        self.owed = self.owed.saturating_sub(share.owed);
    }

    fn max(&mut self, other: Levels) {
        self.spot_vcpus = self.spot_vcpus.max(other.spot_vcpus);
        self.on_demand_vcpus = self.on_demand_vcpus.max(other.on_demand_vcpus);
        self.waiting = self.waiting.max(other.waiting);
        self.owed = self.owed.max(other.owed);
    }
}

/// One minute of the series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minute {
    /// Its start.
    pub at: Timestamp,
    /// The most seen within it.
    pub most: Levels,
    /// The levels at its end.
    pub end: Levels,
    /// The most terminations owed for longer than [`OVERDUE_AFTER_MS`]
    /// within it (judged at its events and its end; for the last minute
    /// kept, at its latest event).
    pub overdue: u32,
    /// Waits (request → job started, ms) of the jobs that started in it on
    /// the runners launched for them (warm runners' jobs are not counted).
    pub job_waits_ms: Vec<u64>,
}

/// The series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSeries {
    levels: Levels,
    minutes: VecDeque<Minute>,
    /// Since when each runner owing a termination has owed it.
    owed_since: std::collections::HashMap<jitr_domain::StreamId, Timestamp>,
}

fn minute_of(at: Timestamp) -> Timestamp {
    Timestamp(at.0.div_euclid(MINUTE_MS) * MINUTE_MS)
}

impl FleetSeries {
    /// A series whose levels start where `views` are (a checkpoint's open
    /// runners); its minutes start at the next event.
    pub fn from_views(views: &RunnerViews) -> Self {
        let mut levels = Levels::default();
        let mut owed_since = std::collections::HashMap::new();
        for (stream, state) in &views.open {
            let share = Share::of(Some(state));
            levels.add(share);
            if share.owed > 0 {
                // When it began is in the log before the checkpoint: from
                // the failure or the request to terminate, as the state says.
                let since = state
                    .failure
                    .as_ref()
                    .map(|f| f.at)
                    .or(state.termination_requested.as_ref().map(|(at, _)| *at));
                if let Some(since) = since {
                    owed_since.insert(stream.clone(), since);
                }
            }
        }
        FleetSeries {
            levels,
            minutes: VecDeque::new(),
            owed_since,
        }
    }

    /// The levels start again where `views` are (another projector's
    /// checkpoint was loaded); the minutes are kept.
    pub fn reseat(&mut self, views: &RunnerViews) {
        let fresh = FleetSeries::from_views(views);
        self.levels = fresh.levels;
        self.owed_since = fresh.owed_since;
    }

    /// The levels now.
    pub fn levels(&self) -> Levels {
        self.levels
    }

    /// The minutes kept, oldest first.
    pub fn minutes(&self) -> &VecDeque<Minute> {
        &self.minutes
    }

    /// Terminations owed at `at` for longer than [`OVERDUE_AFTER_MS`].
    fn overdue_at(&self, at: Timestamp) -> u32 {
        self.owed_since
            .values()
            .filter(|since| at.millis_since(**since) > OVERDUE_AFTER_MS)
            .count() as u32
    }

    /// Folds `event` of `stream`, which took the runner from `before` to
    /// `after` (each [`Share::of`] its state), and whose state after is
    /// `state`.
    pub fn observe(
        &mut self,
        stream: &jitr_domain::StreamId,
        before: Share,
        after: Share,
        event: &RunnerEvent,
        state: Option<&RunnerState>,
    ) {
        self.levels.sub(before);
        self.levels.add(after);
        let levels = self.levels;
        // The minutes before this event's are closed as the debts stood.
        let minute = self.minute_at(event.at());
        minute.most.max(levels);
        if let (RunnerEvent::JobStarted { at, .. }, Some(state)) = (event, state) {
            if let Some(request) = state.request.as_ref().filter(|_| !state.is_warm()) {
                minute.job_waits_ms.push(at.millis_since(request.at));
            }
        }
        minute.end = levels;
        match (before.owed, after.owed) {
            (0, 1) => {
                self.owed_since.insert(stream.clone(), event.at());
            }
            (_, 0) => {
                self.owed_since.remove(stream);
            }
            _ => {}
        }
        let overdue = self.overdue_at(event.at());
        if let Some(minute) = self.minutes.back_mut() {
            minute.overdue = minute.overdue.max(overdue);
        }
    }

    /// The minute of `at` (the last one, for an event older than it),
    /// opening the minutes up to it with the levels carried on.
    fn minute_at(&mut self, at: Timestamp) -> &mut Minute {
        let start = minute_of(at);
        let last = self.minutes.back().map(|m| m.at);
        match last {
            Some(last) if start <= last => {}
            Some(last) if start.0 - last.0 <= KEPT_MS => {
                // The minute that ends, then each carried on, are judged
                // overdue at their ends.
                let overdue = self.overdue_at(Timestamp(last.0 + MINUTE_MS - 1));
                if let Some(m) = self.minutes.back_mut() {
                    m.overdue = m.overdue.max(overdue);
                }
                let carried = self.minutes.back().map(|m| m.end).unwrap_or_default();
                let mut next = Timestamp(last.0 + MINUTE_MS);
                while next <= start {
                    let overdue = self.overdue_at(Timestamp(next.0 + MINUTE_MS - 1));
                    self.minutes.push_back(Minute {
                        at: next,
                        most: carried,
                        end: carried,
                        overdue,
                        job_waits_ms: Vec::new(),
                    });
                    next = Timestamp(next.0 + MINUTE_MS);
                }
            }
            _ => {
                self.minutes.clear();
                self.minutes.push_back(Minute {
                    at: start,
                    most: self.levels,
                    end: self.levels,
                    overdue: 0,
                    job_waits_ms: Vec::new(),
                });
            }
        }
        while self
            .minutes
            .front()
            .is_some_and(|m| start.0 - m.at.0 >= KEPT_MS)
        {
            self.minutes.pop_front();
        }
        self.minutes.back_mut().expect("a minute is open")
    }

    /// The minutes from `since` to `until`, each minute of it present (those
    /// after the last event carry its levels on; those before the first are
    /// left out).
    pub fn window(&self, since: Timestamp, until: Timestamp) -> Vec<Minute> {
        let mut out: Vec<Minute> = self
            .minutes
            .iter()
            .filter(|m| m.at >= minute_of(since) && m.at <= until)
            .cloned()
            .collect();
        let carried = self.minutes.back().map_or(self.levels, |m| m.end);
        let mut next = match out.last() {
            Some(m) => Timestamp(m.at.0 + MINUTE_MS),
            None if self.minutes.back().is_some_and(|m| m.at > until) => return out,
            None => minute_of(since).max(self.minutes.back().map_or(minute_of(until), |m| m.at)),
        };
        while next <= until {
            out.push(Minute {
                at: next,
                most: carried,
                end: carried,
                overdue: self.overdue_at(Timestamp(next.0 + MINUTE_MS - 1).min(until)),
                job_waits_ms: Vec::new(),
            });
            next = Timestamp(next.0 + MINUTE_MS);
        }
        out
    }
}

/// Folds one event into `views` and `series` together (the projector's fold
/// when a live series is kept). Returns what [`RunnerViews::apply`] returns.
pub fn apply_with_series(
    views: &mut RunnerViews,
    series: &mut FleetSeries,
    position: u64,
    stream: &jitr_domain::StreamId,
    event: &RunnerEvent,
) -> Option<RunnerState> {
    if position <= views.position {
        return None;
    }
    let before = Share::of(views.open.get(stream));
    let closed = views.apply(position, stream, event);
    let state = closed.as_ref().or_else(|| views.open.get(stream));
    let after = if closed.is_some() {
        Share::default()
    } else {
        Share::of(state)
    };
    series.observe(stream, before, after, event, state);
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitr_domain::{
        ClientToken, Deadlines, InstanceId, InstanceSpec, JobRef, StreamId, TerminationEvidence,
    };

    fn at(minute: i64, second: i64) -> Timestamp {
        Timestamp(1_800_000_000_000 + minute * MINUTE_MS + second * 1000)
    }

    fn life(job: u64, start: i64, market: Market) -> (StreamId, Vec<RunnerEvent>) {
        let job = JobRef {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: job,
            run_id: 1,
        };
        let stream = StreamId::for_job(&job, 1).unwrap();
        let token = ClientToken(format!("t{}", job.job_id));
        let events = vec![
            RunnerEvent::Requested {
                at: at(start, 0),
                job: job.clone(),
                attempt: 1,
                labels: vec!["self-hosted".into()],
                spec: InstanceSpec {
                    instance_type: "c5.xlarge".into(),
                    vcpus: 4,
                    image: "ami".into(),
                    pool: Some("linux".into()),
                    avoid_spot: vec![],
                    park: false,
                },
                deadlines: Deadlines::default(),
                installation: None,
                deployment: None,
            },
            RunnerEvent::LaunchIntended {
                at: at(start + 2, 0),
                client_token: token.clone(),
                market,
            },
            RunnerEvent::Launched {
                at: at(start + 2, 1),
                client_token: token,
                instance_id: InstanceId(format!("i-{}", job.job_id)),
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                market,
            },
            RunnerEvent::TokenMinted {
                at: at(start + 2, 30),
                runner_name: format!("r-{}", job.job_id),
                runner_id: None,
            },
            RunnerEvent::JobStarted {
                at: at(start + 3, 0),
                source: Default::default(),
                job: None,
            },
            RunnerEvent::JobCompleted {
                at: at(start + 5, 0),
                conclusion: Some("success".into()),
                source: Default::default(),
                job: None,
            },
            RunnerEvent::Terminated {
                at: at(start + 6, 0),
                instance_id: Some(InstanceId(format!("i-{}", job.job_id))),
                evidence: TerminationEvidence::ReportedTerminated,
            },
        ];
        (stream, events)
    }

    #[test]
    fn levels_follow_the_runners_and_minutes_carry_them_on() {
        let mut views = RunnerViews::default();
        let mut series = FleetSeries::default();
        let (a, a_events) = life(1, 0, Market::Spot);
        let (b, b_events) = life(2, 1, Market::OnDemand);
        let mut all: Vec<(StreamId, RunnerEvent)> = a_events
            .into_iter()
            .map(|e| (a.clone(), e))
            .chain(b_events.into_iter().map(|e| (b.clone(), e)))
            .collect();
        all.sort_by_key(|(_, e)| e.at());
        for (position, (stream, event)) in all.iter().enumerate() {
            apply_with_series(&mut views, &mut series, position as u64 + 1, stream, event);
        }
        let minutes = series.window(at(0, 0), at(9, 0));
        assert_eq!(minutes.len(), 10);
        let waiting: Vec<u32> = minutes.iter().map(|m| m.most.waiting).collect();
        // a waits minutes 0-2, b minutes 1-3 (each launched in its third minute).
        assert_eq!(waiting, [1, 2, 2, 1, 0, 0, 0, 0, 0, 0]);
        let spot: Vec<u32> = minutes.iter().map(|m| m.most.spot_vcpus).collect();
        assert_eq!(spot, [0, 0, 4, 4, 4, 4, 4, 0, 0, 0]);
        let on_demand: Vec<u32> = minutes.iter().map(|m| m.most.on_demand_vcpus).collect();
        assert_eq!(on_demand, [0, 0, 0, 4, 4, 4, 4, 4, 0, 0]);
        // Both jobs waited 3 minutes from their request.
        let waits: Vec<u64> = minutes
            .iter()
            .flat_map(|m| m.job_waits_ms.clone())
            .collect();
        assert_eq!(waits, [180_000, 180_000]);
        assert_eq!(series.levels(), Levels::default());
        // Each runner owed its termination from the drain grace's end to
        // its Terminated, within the minute: never overdue.
        assert!(minutes.iter().all(|m| m.overdue == 0));
    }

    #[test]
    fn a_failed_runner_is_owed_until_its_termination_and_old_minutes_go() {
        let mut views = RunnerViews::default();
        let mut series = FleetSeries::default();
        let (a, events) = life(1, 0, Market::OnDemand);
        let mut position = 0;
        for event in &events[..3] {
            position += 1;
            apply_with_series(&mut views, &mut series, position, &a, event);
        }
        let failed = RunnerEvent::Failed {
            at: at(4, 0),
            stage: jitr_domain::FailureStage::Token,
            reason: "no JIT config".into(),
        };
        position += 1;
        apply_with_series(&mut views, &mut series, position, &a, &failed);
        assert_eq!(series.levels().owed, 1);
        position += 1;
        apply_with_series(&mut views, &mut series, position, &a, &events[6]);
        let minutes = series.window(at(0, 0), at(7, 0));
        let owed: Vec<u32> = minutes.iter().map(|m| m.most.owed).collect();
        // Owed from its failure (minute 4) to its termination (minute 6),
        // overdue from a minute after the failure until then.
        assert_eq!(owed, [0, 0, 0, 0, 1, 1, 1, 0]);
        let overdue: Vec<u32> = minutes.iter().map(|m| m.overdue).collect();
        assert_eq!(overdue, [0, 0, 0, 0, 0, 1, 1, 0]);
        // A day later, the first minutes are gone.
        let (b, later) = life(2, 24 * 60 + 3, Market::Spot);
        apply_with_series(&mut views, &mut series, position + 1, &b, &later[0]);
        assert_eq!(series.minutes().front().map(|m| m.at), Some(at(4, 0)));
    }
}
