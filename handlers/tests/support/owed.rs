//! A log holding one runner owed a termination: launched, then failed at its
//! token mint, never compensated.

// Each test binary uses part of it.
#![allow(dead_code)]

use jitr_domain::{
    Command as RunnerCommand, Deadlines, FailureStage, InstanceId, InstanceSpec, JobRef, Market,
    RunnerState, StreamId, Timestamp, execute,
};
use jitr_infra::{CommandId, EventStore};

/// Appends to `store`, at `at`, a runner of `owner/repo` job `job_id` (pool
/// `pool`) whose on-demand instance `instance` (4 vCPUs) was launched and
/// whose token mint then failed. Returns its stream.
pub async fn runner_failed_after_launch<S: EventStore + ?Sized>(
    store: &S,
    (owner, repo, job_id): (&str, &str, u64),
    instance: &str,
    pool: Option<&str>,
    at: Timestamp,
) -> StreamId {
    let job = JobRef {
        owner: owner.into(),
        repo: repo.into(),
        job_id,
        run_id: 1,
    };
    let stream = StreamId::for_job(&job, 1).expect("a stream id of a valid repository");
    let mut state = RunnerState::default();
    let mut log = Vec::new();
    let mut step = |state: &mut RunnerState, command| {
        let (next, events) = execute(state, command, at).unwrap();
        *state = next;
        log.extend(events);
    };
    step(
        &mut state,
        RunnerCommand::Request {
            job,
            attempt: 1,
            labels: vec!["self-hosted".into(), "linux".into()],
            spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-jitr-runner".into(),
                pool: pool.map(str::to_owned),
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines::default(),
            installation: None,
            deployment: None,
        },
    );
    step(
        &mut state,
        RunnerCommand::IntendLaunch {
            market: Market::OnDemand,
        },
    );
    let client_token = state.pending_launch().cloned().unwrap();
    step(
        &mut state,
        RunnerCommand::RecordLaunch {
            client_token,
            instance_id: InstanceId(instance.into()),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        },
    );
    step(
        &mut state,
        RunnerCommand::Fail {
            stage: FailureStage::Token,
            reason: "mint failed".into(),
        },
    );
    store
        .append(&stream, 0, &log, &CommandId::new("seed"))
        .await
        .unwrap();
    stream
}
