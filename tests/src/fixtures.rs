//! Runner histories built through the real decider, for tests across crates.

use jitr_domain::{
    Command, DEFAULT_CONSISTENCY_WINDOW_MS, Deadlines, FailureStage, InstanceId, InstanceSpec,
    JobRef, Market, RunnerEvent, RunnerState, StreamId, Timestamp, execute,
};

/// A fixed moment tests count from (2026-05-04 04:22 UTC, the seed incident).
pub const T0: Timestamp = Timestamp(1_777_868_520_000);

/// `T0` plus `secs` seconds.
pub fn at(secs: i64) -> Timestamp {
    Timestamp(T0.0 + secs * 1000)
}

/// The job `job_id` of `acme/widgets`.
pub fn job(job_id: u64) -> JobRef {
    JobRef {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id,
        run_id: 1000 + job_id,
    }
}

/// The first runner attempt's stream for `job_id`.
pub fn stream(job_id: u64) -> StreamId {
    StreamId::for_job(&job(job_id), 1).expect("a stream id of a valid repository")
}

/// The instance id tests give job `job_id`'s runner.
pub fn instance(job_id: u64) -> InstanceId {
    InstanceId(format!("i-{job_id:017x}"))
}

/// A `Request` command for `job_id`.
pub fn request(job_id: u64) -> Command {
    Command::Request {
        job: job(job_id),
        attempt: 1,
        labels: vec!["self-hosted".into(), "linux".into()],
        spec: InstanceSpec {
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami-0jitr".into(),
            pool: None,
            avoid_spot: Vec::new(),
            park: false,
        },
        deadlines: Deadlines {
            boot_timeout_ms: 600_000,
            max_age_ms: 6 * 3_600_000,
            drain_grace_ms: 120_000,
            consistency_window_ms: DEFAULT_CONSISTENCY_WINDOW_MS,
            max_wait_ms: None,
        },
        installation: None,
        deployment: None,
    }
}

/// Applies commands one by one from `state` at `now`; panics on a refusal.
pub fn run(
    state: &RunnerState,
    commands: impl IntoIterator<Item = Command>,
    now: Timestamp,
) -> (RunnerState, Vec<RunnerEvent>) {
    let mut state = state.clone();
    let mut all = Vec::new();
    for command in commands {
        let name = command.name();
        let (next, events) =
            execute(&state, command, now).unwrap_or_else(|e| panic!("{name} refused: {e}"));
        state = next;
        all.extend(events);
    }
    (state, all)
}

/// Commands that take a requested runner to `Launched` on spot.
pub fn launch(state: &RunnerState, job_id: u64, now: Timestamp) -> (RunnerState, Vec<RunnerEvent>) {
    let (state, mut events) = run(
        state,
        [Command::IntendLaunch {
            market: Market::Spot,
        }],
        now,
    );
    let token = state.pending_launch().cloned().expect("pending launch");
    let (state, more) = run(
        &state,
        [Command::RecordLaunch {
            client_token: token,
            instance_id: instance(job_id),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        }],
        now,
    );
    events.extend(more);
    (state, events)
}

/// Requested → LaunchIntended → Launched for `job_id`, at `now`.
pub fn launched(job_id: u64, now: Timestamp) -> (RunnerState, Vec<RunnerEvent>) {
    let (state, mut events) = run(&RunnerState::default(), [request(job_id)], now);
    let (state, more) = launch(&state, job_id, now);
    events.extend(more);
    (state, events)
}

/// A `Fail` at the token step.
pub fn fail_token() -> Command {
    Command::Fail {
        stage: FailureStage::Token,
        reason: "generate-jitconfig answered 500".into(),
    }
}
