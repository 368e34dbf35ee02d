//! `jitr serve`: every handler in one process — the webhook endpoint, the queue
//! consumers, the projector, compensation, the reaper and the rebalancer.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use jitr_domain::{TerminateRunner, Timestamp};
use jitr_infra::{
    CheckpointStore, CommandBus, EventStore, InProcessBus, LocalQueue, Queue, SimCloud, SimGitHub,
    SimSecrets, SimSettings, SqliteEventStore, system_clock,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::compensation::Compensation;
use crate::lifecycle::Lifecycle;
use crate::policy::RunnerPolicy;
use crate::ports::{HandlerError, Outcome, Ports, settle};
use crate::projector::Projector;
use crate::reaper::Reaper;
use crate::rebalancer::Rebalancer;
use crate::scaleup::ScaleUp;
use crate::webhook::{Delivery, JobMessage, Webhook};

/// The moment, from the system clock (the one place `serve` reads it).
pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

/// Why `serve` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Files or sockets.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The log.
    #[error(transparent)]
    Store(#[from] jitr_infra::StoreError),
    /// The (simulated) cloud.
    #[error(transparent)]
    Compute(#[from] jitr_infra::ComputeError),
    /// A queue.
    #[error(transparent)]
    Queue(#[from] jitr_infra::QueueError),
    /// The projector.
    #[error(transparent)]
    Projector(#[from] crate::projector::ProjectorError),
}

/// How often things happen.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Projector ticks.
    pub projector: Duration,
    /// Reaper and rebalancer sweeps.
    pub sweep: Duration,
}

impl Default for Cadence {
    /// Projector every 100 ms, sweeps every 60 s.
    fn default() -> Self {
        Cadence {
            projector: Duration::from_millis(100),
            sweep: Duration::from_secs(60),
        }
    }
}

/// Where compensation commands arrive.
pub enum CompensationSource {
    /// The in-process bus (embedded).
    InProcess(mpsc::UnboundedReceiver<TerminateRunner>),
    /// A queue fed by an EventBridge rule (AWS).
    Queue(Arc<dyn Queue>),
}

/// Everything `serve` runs, wired to one set of adapters.
pub struct Assembly<S> {
    /// The log (concrete: the projector checkpoints in it).
    pub store: Arc<S>,
    /// Ports for the handlers.
    pub ports: Ports,
    /// Policy.
    pub policy: Arc<RunnerPolicy>,
    /// Webhook secret.
    pub secret: Vec<u8>,
    /// Queue of queued jobs.
    pub scaleup_queue: Arc<dyn Queue>,
    /// Queue of lifecycle events.
    pub lifecycle_queue: Arc<dyn Queue>,
    /// The command bus.
    pub bus: Arc<dyn CommandBus>,
    /// Where compensation commands arrive.
    pub compensation_source: CompensationSource,
    /// How often things happen.
    pub cadence: Cadence,
}

/// The embedded default in `data_dir`: SQLite log (`events.db`), simulated cloud
/// and GitHub (`cloud.db`), local queues (`queues.db`), in-process bus.
pub fn embedded(
    data_dir: &Path,
    policy: RunnerPolicy,
    settings: SimSettings,
    secret: Vec<u8>,
    cadence: Cadence,
) -> Result<Assembly<SqliteEventStore>, ServeError> {
    std::fs::create_dir_all(data_dir)?;
    let store = Arc::new(SqliteEventStore::open(data_dir.join("events.db"))?);
    let cloud_db = data_dir.join("cloud.db");
    let clock = system_clock();
    let cloud = SimCloud::open(&cloud_db, settings, clock.clone())?;
    let ports = Ports {
        store: store.clone(),
        compute: Arc::new(cloud),
        github: Arc::new(SimGitHub::open(&cloud_db)?),
        secrets: Arc::new(SimSecrets::open(&cloud_db)?),
    };
    let queues_db = data_dir.join("queues.db");
    let receives = 10;
    let scaleup_queue: Arc<dyn Queue> = Arc::new(LocalQueue::open(
        &queues_db,
        "scaleup",
        receives,
        Duration::from_secs(60),
        clock.clone(),
    )?);
    let lifecycle_queue: Arc<dyn Queue> = Arc::new(LocalQueue::open(
        &queues_db,
        "lifecycle",
        receives,
        Duration::from_secs(30),
        clock,
    )?);
    let (bus, receiver) = InProcessBus::new();
    Ok(Assembly {
        store,
        ports,
        policy: Arc::new(policy),
        secret,
        scaleup_queue,
        lifecycle_queue,
        bus: Arc::new(bus),
        compensation_source: CompensationSource::InProcess(receiver),
        cadence,
    })
}

async fn consume<F, Fut>(
    queue: Arc<dyn Queue>,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(JobMessage, u32) -> Fut,
    Fut: Future<Output = Result<Outcome, HandlerError>>,
{
    loop {
        let received = tokio::select! {
            _ = stop.changed() => break,
            r = queue.receive(10, Duration::from_secs(1)) => r,
        };
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(handler = what, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for message in messages {
            let outcome = match serde_json::from_str::<JobMessage>(&message.body) {
                Ok(job) => handle(job, message.receive_count).await,
                Err(e) => Ok(Outcome::DeadLetter(format!("undecodable job message: {e}"))),
            };
            settle(&*queue, &message, outcome, what, true).await;
        }
    }
}

async fn webhook_route(
    State(hook): State<Arc<Webhook>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let reply = hook
        .handle(
            Delivery {
                event: header("x-github-event"),
                id: header("x-github-delivery"),
                signature: header("x-hub-signature-256"),
            },
            &body,
        )
        .await;
    (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
}

/// Runs everything until `stop` turns true; serves HTTP on `listener`.
pub async fn run<S>(
    assembly: Assembly<S>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError>
where
    S: EventStore + CheckpointStore + 'static,
{
    let Assembly {
        store,
        ports,
        policy,
        secret,
        scaleup_queue,
        lifecycle_queue,
        bus,
        compensation_source,
        cadence,
    } = assembly;
    let webhook = Arc::new(Webhook::new(
        secret,
        crate::webhook::DEFAULT_MAX_BODY,
        policy.clone(),
        scaleup_queue.clone(),
        lifecycle_queue.clone(),
    ));
    let scaleup = Arc::new(ScaleUp::new(ports.clone(), policy.clone()));
    let lifecycle = Arc::new(Lifecycle::new(ports.clone()));
    let compensation = Arc::new(Compensation::new(ports.clone(), policy.clone()));
    let reaper = Arc::new(Reaper::new(
        ports.clone(),
        policy.clone(),
        compensation.clone(),
    ));
    let rebalancer = Arc::new(Rebalancer::new(
        ports.clone(),
        policy.clone(),
        scaleup_queue.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();

    {
        let scaleup = scaleup.clone();
        tasks.spawn(consume(
            scaleup_queue,
            "scale-up",
            stop.clone(),
            move |job, receives| {
                let scaleup = scaleup.clone();
                async move { scaleup.handle(&job, receives, now()).await }
            },
        ));
    }
    {
        let lifecycle = lifecycle.clone();
        tasks.spawn(consume(
            lifecycle_queue,
            "lifecycle",
            stop.clone(),
            move |job, _| {
                let lifecycle = lifecycle.clone();
                async move { lifecycle.handle(&job, now()).await }
            },
        ));
    }
    {
        let mut stop = stop.clone();
        let mut projector = Projector::start(store.clone(), bus, 60_000).await?;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(cadence.projector);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        if let Err(e) = projector.tick(now()).await {
                            tracing::error!(error = %e, "projector tick failed");
                        }
                    }
                }
            }
        });
    }
    {
        let mut stop = stop.clone();
        let compensation = compensation.clone();
        match compensation_source {
            CompensationSource::InProcess(mut receiver) => {
                tasks.spawn(async move {
                    loop {
                        let command = tokio::select! {
                            _ = stop.changed() => break,
                            c = receiver.recv() => match c { Some(c) => c, None => break },
                        };
                        match compensation.handle(&command, now()).await {
                            Ok(Outcome::Done(info)) => tracing::info!(%info, "compensated"),
                            // The projector emits it again while it stays owed.
                            Ok(other) => tracing::info!(?other, "compensation deferred"),
                            Err(e) => tracing::error!(error = %e, "compensation failed"),
                        }
                    }
                });
            }
            CompensationSource::Queue(queue) => {
                tasks.spawn(async move {
                    loop {
                        let received = tokio::select! {
                            _ = stop.changed() => break,
                            r = queue.receive(10, Duration::from_secs(1)) => r,
                        };
                        for message in received.unwrap_or_default() {
                            let outcome = match jitr_infra::decode_terminate_runner(&message.body) {
                                Ok(command) => compensation.handle(&command, now()).await,
                                Err(e) => Ok(Outcome::DeadLetter(e.to_string())),
                            };
                            settle(&*queue, &message, outcome, "compensation", true).await;
                        }
                    }
                });
            }
        }
    }
    {
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(cadence.sweep);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        match reaper.sweep(now()).await {
                            Ok(r) if !r.orphans_terminated.is_empty() || !r.compensated.is_empty() || !r.found_gone.is_empty() => {
                                tracing::warn!(orphans = r.orphans_terminated.len(), compensated = r.compensated.len(), gone = r.found_gone.len(), "reaper sweep");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "reaper sweep failed"),
                        }
                        match rebalancer.tick(now()).await {
                            Ok(r) if !r.requested.is_empty() => tracing::warn!(requested = r.requested.len(), "rebalancer requested runners"),
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "rebalancer failed"),
                        }
                    }
                }
            }
        });
    }

    let app = Router::new()
        .route("/webhook", post(webhook_route))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(webhook.max_body()))
        .with_state(webhook);
    let mut http_stop = stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        })
        .await?;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The address a listener is bound to, for people.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
