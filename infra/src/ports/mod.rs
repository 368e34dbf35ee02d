//! The ports: what jitr needs from the outside world, one file each. Adapters
//! live beside this module (SQLite, the simulator, local queues, the GitHub App)
//! and in the `jitr-aws` crate (DynamoDB, EC2, SQS, EventBridge, SSM, CloudWatch).

mod bus;
mod compute;
mod ec2_events;
mod event_store;
mod github;
mod queue;
mod secrets;

pub use bus::{
    BusError, CommandBus, EVENT_SOURCE, TERMINATE_RUNNER, decode_terminate_runner,
    encode_terminate_runner,
};
pub use compute::{
    Architecture, Compute, ComputeError, ConsoleOutput, InstanceState, LaunchError, LaunchFailure,
    LaunchSettings, LaunchSpec, LaunchedInstance, MANAGED_BY, ManagedInstance, TAG_CLIENT_TOKEN,
    TAG_DEPLOYMENT, TAG_MANAGED_BY, TAG_POOL, TAG_REPOSITORY, TAG_RUNNER, TerminateOutcome,
    architecture_mismatch, classify,
};
pub use ec2_events::{
    EC2_SOURCE, Ec2Event, Ec2EventError, SPOT_INTERRUPTION, STATE_CHANGE, decode_ec2_event,
    encode_spot_interruption, encode_state_change,
};
pub use event_store::{
    AppendOutcome, BoxError, Checkpoint, CheckpointStore, ClosedStream, CommandId, EVENT_SCHEMA,
    EventStore, ExpiringLog, FeedPage, Lease, OpenStreams, RecordedEvent, RunnerLog, StoreError,
    StreamHead, UnreadableEvent, UnreadableHead, decode_event, read_feed_page,
};
pub use github::{
    GitHub, GitHubError, JitRequest, JitRunner, JobState, NoGitHub, QueuedJob, RUNNERS_PER_PAGE,
    RequestUsage, Runner, RunnerGroup, RunnerPage, RunnerScope, SECONDARY_RATE_LIMIT_MESSAGE,
    SECONDARY_WAIT, SECONDARY_WAIT_MAX, rate_limit_wait,
};
pub use queue::{
    DEAD_LETTER_REASON, DEFAULT_MAX_RECEIVES, DLQ_ALARM_THRESHOLD, DeadLetter, MAX_DELAY,
    MAX_WAITS, Queue, QueueError, QueueMessage, WAITS, send_again,
};
pub use secrets::{JitConfig, RunnerSecrets, SecretError};
