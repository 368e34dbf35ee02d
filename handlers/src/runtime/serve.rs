//! `jitr serve`: every handler in one process — the webhook endpoint, the queue
//! consumers, the projector, compensation, the reaper and the rebalancer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use jitr_infra::{Queue, SimSettings, system_clock};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::embedded::Embedded;
use super::now;
use crate::app::App;
use crate::app::policy::RunnerPolicy;
use crate::app::webhook::{Delivery, Webhook};
use crate::runtime::consumer::{Consumer, drain};

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
    Projector(#[from] crate::app::projector::ProjectorError),
}

/// How often `serve` looks for a day whose books to close.
const BOOKS_EVERY: Duration = Duration::from_secs(3600);

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

/// The application on the embedded default in `data_dir` (see [`Embedded`]), on
/// the system clock.
pub fn embedded(
    data_dir: &Path,
    policy: RunnerPolicy,
    settings: SimSettings,
    secret: Vec<u8>,
) -> Result<App, ServeError> {
    let embedded = Embedded::open(data_dir, settings, system_clock(), 10)?;
    let queue = Arc::downgrade(&embedded.ports.ec2_events_queue);
    tokio::spawn(pump_sim_events(embedded.cloud.clone(), queue));
    Ok(App::new(embedded.ports, policy, secret))
}

/// Publishes the simulated EC2's state changes and spot interruption warnings
/// to the EC2-events queue every second, as EventBridge's rules do on AWS;
/// stops when the queue is dropped (the application is gone).
async fn pump_sim_events(cloud: jitr_infra::SimCloud, queue: std::sync::Weak<dyn Queue>) {
    let mut after = now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(queue) = queue.upgrade() else {
            return;
        };
        let upto = now();
        let events = cloud.state_changes(after, upto).and_then(|changes| {
            let warnings = cloud.interruption_warnings(after, upto)?;
            let mut bodies: Vec<(jitr_domain::Timestamp, String)> = changes
                .into_iter()
                .map(|(instance_id, state, at)| {
                    let body = jitr_infra::encode_state_change(
                        &instance_id,
                        state,
                        at,
                        "sim-1",
                        "000000000000",
                    );
                    (at, body)
                })
                .collect();
            bodies.extend(warnings.into_iter().map(|(instance_id, at)| {
                let body =
                    jitr_infra::encode_spot_interruption(&instance_id, at, "sim-1", "000000000000");
                (at, body)
            }));
            bodies.sort_by_key(|(at, _)| *at);
            Ok(bodies)
        });
        match events {
            Ok(bodies) => {
                for (_, body) in bodies {
                    if let Err(e) = queue.publish(&body, None, &[]).await {
                        tracing::warn!(error = %e, "simulated EC2 event not published");
                    }
                }
                after = upto;
            }
            Err(e) => tracing::warn!(error = %e, "simulated EC2 events not read"),
        }
    }
}

/// Runs `consumer` on `queue` until `stop` turns true.
async fn consume(
    queue: Arc<dyn Queue>,
    consumer: Arc<dyn Consumer>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let drained = tokio::select! {
            _ = stop.changed() => break,
            r = drain(&*queue, &*consumer, 10, Duration::from_secs(1), &now) => r,
        };
        if let Err(e) = drained {
            tracing::error!(handler = consumer.name(), error = %e, "receive failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn webhook_route(
    State(hook): State<Arc<Webhook>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, text) = match body {
        Ok(body) => {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let reply = hook.handle(Delivery::from_headers(header), &body).await;
            (
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                reply.body,
            )
        }
        // Above the body limit: the body was not read.
        Err(rejection) => {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                crate::app::metrics::webhook_refused(now(), 413);
            }
            (rejection.status(), rejection.body_text())
        }
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body is never read: the connection cannot carry
        // another request, and the client must know not to reuse it.
        return (status, [(axum::http::header::CONNECTION, "close")], text).into_response();
    }
    (status, text).into_response()
}

/// The runner views as the projector last folded them.
type SharedViews = Arc<std::sync::RwLock<Arc<jitr_projections::RunnerViews>>>;

/// The fleet over time as the projector last folded it.
type SharedSeries = Arc<std::sync::RwLock<Arc<jitr_projections::series::FleetSeries>>>;

/// What the read-only endpoints show: the projector's views and the queues.
struct Observed {
    views: SharedViews,
    series: SharedSeries,
    queues: [(&'static str, Arc<dyn Queue>); 4],
    store: Arc<dyn jitr_infra::RunnerLog>,
    policy: Arc<RunnerPolicy>,
    scaleup: Arc<crate::app::scaleup::ScaleUp>,
    compute: Arc<dyn jitr_infra::Compute>,
}

impl Observed {
    fn views(&self) -> Arc<jitr_projections::RunnerViews> {
        self.views
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Each queue's messages waiting and dead letters; a queue that could
    /// not be read is left out (and logged).
    async fn depths(&self) -> Vec<(&'static str, &dyn Queue, u64, u64)> {
        let mut depths = Vec::new();
        for (name, queue) in &self.queues {
            match (queue.waiting().await, queue.dead_letter_depth().await) {
                (Ok(waiting), Ok(dead)) => depths.push((*name, &**queue, waiting, dead)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(queue = %name, error = %e, "queue depth not read");
                }
            }
        }
        depths
    }

    /// What waits now, and why.
    fn waiting(
        &self,
        views: &jitr_projections::RunnerViews,
    ) -> Vec<(super::page::WaitingRow, jitr_domain::WaitReason)> {
        let at = now();
        super::page::waiting_now(
            views,
            &self.scaleup.waiting(),
            &crate::app::metrics::unserved_jobs(at),
            at,
        )
    }

    /// The figures of now: the views' and each queue's depths.
    async fn snapshot(&self) -> crate::app::metrics::Snapshot {
        let views = self.views();
        let mut snapshot = crate::app::metrics::Snapshot::of_views(&views, now());
        snapshot.waiting = super::page::waiting_counts(&self.waiting(&views));
        for (name, _, waiting, dead) in self.depths().await {
            snapshot.queues.push((name.to_owned(), waiting, dead));
        }
        snapshot
    }
}

/// `GET /`: the fleet page.
async fn fleet_route(
    State(observed): State<Arc<Observed>>,
    axum::extract::Query(filter): axum::extract::Query<super::page::Filter>,
) -> axum::response::Response {
    use askama::Template;
    let mut queues = Vec::new();
    for (name, queue, waiting, dead) in observed.depths().await {
        let reasons = if dead > 0 {
            queue.dead_letter_reasons(3).await.unwrap_or_else(|e| {
                tracing::warn!(queue = %name, error = %e, "dead-letter reasons not read");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        queues.push(super::page::QueueRow {
            name: name.to_owned(),
            waiting,
            dead,
            alarming: dead as f64 > jitr_infra::DLQ_ALARM_THRESHOLD,
            reasons,
        });
    }
    let views = observed.views();
    let series = observed
        .series
        .read()
        .map(|s| s.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let waiting = observed.waiting(&views);
    let page = super::page::FleetPage::of(
        &views,
        now(),
        super::page::Known {
            quotas: super::page::Quotas {
                known: observed.scaleup.quotas(),
                configured: observed.policy.quotas.clone(),
            },
            pool_names: observed
                .policy
                .pools
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            queues,
            waiting,
            series: Some(&series),
        },
        filter,
    );
    html(page.render())
}

/// `GET /runners/{stream}`: one runner's timeline.
async fn runner_route(
    State(observed): State<Arc<Observed>>,
    axum::extract::Path(stream): axum::extract::Path<String>,
) -> axum::response::Response {
    use askama::Template;
    use axum::response::IntoResponse;
    let Ok(stream_id) = jitr_domain::StreamId::parse(&stream) else {
        return (
            StatusCode::NOT_FOUND,
            format!("{stream} is not a runner id"),
        )
            .into_response();
    };
    match crate::commands::history::timelines(&*observed.store, &stream_id.to_string()).await {
        Ok(found) => match found.first() {
            Some(timeline) => {
                let console = match &timeline.instance_id {
                    None => super::page::Console::NoInstance,
                    Some(instance) => match observed.compute.console_output(instance).await {
                        Ok(Some(output)) => {
                            super::page::Console::Tail(output.tail(super::page::CONSOLE_LINES))
                        }
                        Ok(None) => super::page::Console::NotCaptured,
                        Err(e) => super::page::Console::NotRead(e.to_string()),
                    },
                };
                html(super::page::RunnerPage::of(timeline, console).render())
            }
            None => (
                StatusCode::NOT_FOUND,
                format!("no runner {stream} in the log"),
            )
                .into_response(),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The pages' policy: no script, nothing from elsewhere, inline style only.
const PAGE_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'";

fn html(rendered: Result<String, askama::Error>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match rendered {
        Ok(page) => (
            [(axum::http::header::CONTENT_SECURITY_POLICY, PAGE_POLICY)],
            axum::response::Html(page),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /metrics`: the OpenMetrics 1.0 text format, which Prometheus scrapes.
async fn metrics_route(State(observed): State<Arc<Observed>>) -> impl axum::response::IntoResponse {
    let text = crate::app::metrics::render_prometheus(&observed.snapshot().await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Runs everything of `app` until `stop` turns true: the webhook endpoint on
/// `listener`, a consumer per queue, the projector, the reaper and rebalancer.
pub async fn run(
    app: App,
    cadence: Cadence,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let mut tasks = tokio::task::JoinSet::new();
    let consumers: [(Arc<dyn Queue>, Arc<dyn Consumer>); 4] = [
        (app.ports.scaleup_queue.clone(), app.scaleup.clone()),
        (app.ports.lifecycle_queue.clone(), app.lifecycle.clone()),
        (
            app.ports.compensation_queue.clone(),
            app.compensation.clone(),
        ),
        (app.ports.ec2_events_queue.clone(), app.ec2_events.clone()),
    ];
    for (queue, consumer) in consumers {
        tasks.spawn(consume(queue, consumer, stop.clone()));
    }
    let views: SharedViews;
    let series: SharedSeries;
    {
        let mut stop = stop.clone();
        let mut projector = app
            .projector()
            .await?
            .counting_closed_since(now())
            .keeping_series();
        views = Arc::new(std::sync::RwLock::new(Arc::new(projector.views().clone())));
        series = Arc::new(std::sync::RwLock::new(Arc::new(
            projector.series().cloned().unwrap_or_default(),
        )));
        let shared = views.clone();
        let shared_series = series.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(cadence.projector);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        if let Err(e) = projector.tick(now()).await {
                            tracing::error!(error = %e, "projector tick failed");
                        }
                        let moved = shared
                            .read()
                            .map_or(true, |v| v.position != projector.views().position);
                        if moved && let Ok(mut v) = shared.write() {
                            *v = Arc::new(projector.views().clone());
                        }
                        if moved && let (Some(s), Ok(mut shared)) = (projector.series(), shared_series.write()) {
                            *shared = Arc::new(s.clone());
                        }
                    }
                }
            }
            // A clean stop hands the lease on at once (a crash: after its TTL).
            if let Err(e) = projector.release().await {
                tracing::warn!(error = %e, "projector lease not released");
            }
        });
    }
    // The reaper and the rebalancer run apart: a rebalancer waiting on GitHub's
    // rate limit never holds the reaper back.
    let reaper = app.reaper.clone();
    every(&mut tasks, cadence.sweep, stop.clone(), move || {
        let reaper = reaper.clone();
        async move {
            match reaper.sweep(now()).await {
                Ok(r)
                    if !r.orphans_terminated.is_empty()
                        || !r.compensated.is_empty()
                        || !r.found_gone.is_empty()
                        || !r.errors.is_empty() =>
                {
                    tracing::warn!(
                        orphans = r.orphans_terminated.len(),
                        compensated = r.compensated.len(),
                        gone = r.found_gone.len(),
                        errors = r.errors.len(),
                        "reaper sweep"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reaper sweep failed"),
            }
        }
    });
    let rebalancer = app.rebalancer.clone();
    every(&mut tasks, cadence.sweep, stop.clone(), move || {
        let rebalancer = rebalancer.clone();
        async move {
            match rebalancer.tick(now()).await {
                Ok(r) if !r.requested.is_empty() => tracing::warn!(
                    requested = r.requested.len(),
                    "rebalancer requested runners"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "rebalancer failed"),
            }
        }
    });

    // Closing the books (ADR-0023): each UTC day's snapshot, soon after it ends.
    let store = app.ports.store.clone();
    every(&mut tasks, BOOKS_EVERY, stop.clone(), move || {
        let store = store.clone();
        async move {
            match crate::app::books::close_books(&*store, now(), |_| {}).await {
                Ok(saved) => {
                    for e in saved {
                        tracing::info!(day = %e.day, position = e.position, bytes = e.bytes, "books closed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "closing the books failed"),
            }
        }
    });

    let webhook = app.webhook.clone();
    let observed = Arc::new(Observed {
        views,
        series,
        queues: app.ports.queues(),
        store: app.ports.store.clone(),
        policy: app.policy.clone(),
        scaleup: app.scaleup.clone(),
        compute: app.ports.compute.clone(),
    });
    let router = Router::new()
        .route("/webhook", post(webhook_route))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(webhook.max_body()))
        .with_state(webhook)
        .merge(
            Router::new()
                .route("/metrics", get(metrics_route))
                .route("/", get(fleet_route))
                .route("/runners/{*stream}", get(runner_route))
                .with_state(observed),
        );
    let mut http_stop = stop.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        })
        .await?;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Runs `round` every `period` until `stop` turns true. A stop also cancels a
/// round in flight (one stuck on GitHub, say): the reaper's and the
/// rebalancer's rounds are made of idempotent steps, taken again next time.
fn every<F, R>(
    tasks: &mut tokio::task::JoinSet<()>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
    mut round: F,
) where
    F: FnMut() -> R + Send + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
{
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = round() => {}
                    }
                }
            }
        }
    });
}

/// The address a listener is bound to, for people.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
