//! The embedded default's cloud: a local EC2 simulator and a local GitHub stand-in,
//! persisted in `cloud.db` in the data directory. They are the outside world: their
//! instances and registrations outlive a jitr restart, as real ones would.
//!
//! The simulator behaves as EC2 does where it matters to jitr: vCPU quotas per
//! market (`VcpuLimitExceeded`, `MaxSpotInstanceCountExceeded`), spot capacity
//! (`InsufficientInstanceCapacity`), client-token idempotency (which moto lacks),
//! boot and shutdown times, `InvalidInstanceID.NotFound` as "already gone".

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jitr_domain::{ClientToken, InstanceId, Market, StreamId, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::ports::{
    Architecture, Compute, ComputeError, ConsoleOutput, InstanceState, LaunchError, LaunchFailure,
    LaunchSpec, LaunchedInstance, ManagedInstance, TerminateOutcome, architecture_mismatch,
};
use crate::ports::{
    GitHub, GitHubError, JitRequest, JitRunner, JobState, QueuedJob, RUNNERS_PER_PAGE,
    RequestUsage, Runner, RunnerGroup, RunnerPage, RunnerScope,
};
use crate::ports::{JitConfig, RunnerSecrets, SecretError};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS instances (
    id             TEXT PRIMARY KEY,
    stream         TEXT    NOT NULL,
    client_token   TEXT    NOT NULL UNIQUE,
    market         TEXT    NOT NULL,
    instance_type  TEXT    NOT NULL,
    vcpus          INTEGER NOT NULL,
    launched_at    INTEGER NOT NULL,
    terminating_at INTEGER,
    reclaim_at     INTEGER,
    stopped_at     INTEGER,
    started_at     INTEGER
);
CREATE TABLE IF NOT EXISTS gh_runners (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    scope  TEXT NOT NULL,
    name   TEXT NOT NULL,
    labels TEXT NOT NULL,
    busy   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (scope, name)
);
CREATE TABLE IF NOT EXISTS jit_configs (
    instance TEXT PRIMARY KEY,
    config   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consoles (
    instance     TEXT PRIMARY KEY,
    boot_ms      INTEGER NOT NULL,
    config_chars INTEGER
);
CREATE TABLE IF NOT EXISTS gh_jobs (
    owner  TEXT    NOT NULL,
    repo   TEXT    NOT NULL,
    job_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    name   TEXT    NOT NULL,
    labels TEXT    NOT NULL,
    status TEXT    NOT NULL,
    runner_name TEXT,
    PRIMARY KEY (owner, repo, job_id)
);
"#;

/// A moment source in milliseconds; the simulator never reads a clock itself
/// when given one (deterministic scenarios).
pub type SimClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock.
pub fn system_clock() -> SimClock {
    Arc::new(|| {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        )
    })
}

/// A manually advanced clock, for deterministic runs.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// Starts at `at`.
    pub fn new(at: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(at.0)))
    }
    /// Moves forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms as i64, Ordering::SeqCst);
    }
    /// Sets the moment.
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::SeqCst);
    }
    /// The moment.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
    /// As a [`SimClock`].
    pub fn clock(&self) -> SimClock {
        let inner = Arc::clone(&self.0);
        Arc::new(move || Timestamp(inner.load(Ordering::SeqCst)))
    }
}

/// The simulated account's limits and timings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSettings {
    /// Standard on-demand vCPU quota.
    pub on_demand_vcpus: u32,
    /// Spot vCPU quota.
    pub spot_vcpus: u32,
    /// Spot instances the region can supply at once (None: as many as the quota).
    pub spot_capacity: Option<u32>,
    /// Instances of a type the region can supply at once, in both markets (a
    /// type not named: as many as the quotas allow). Past it EC2 answers
    /// `InsufficientInstanceCapacity` for that type.
    #[serde(default)]
    pub type_capacity: std::collections::BTreeMap<String, u32>,
    /// The region's images and their architectures. A launch of a named image
    /// on a type of another architecture is refused as EC2 refuses it
    /// (`InvalidParameterValue`), and so is one for a pool of another
    /// architecture, as jitr's EC2 adapter refuses it; an image not named here
    /// launches on any type.
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, Architecture>,
    /// How long after a state change or an interruption warning EventBridge
    /// delivers its event ("within seconds"; 0: at once).
    #[serde(default)]
    pub event_delay_ms: u64,
    /// Spot instances EC2 reclaims (none: never).
    #[serde(default)]
    pub spot_interruptions: Option<SpotInterruptions>,
    /// From launch to `running`.
    pub boot_ms: u64,
    /// From terminate to `terminated` (the vCPUs stay counted meanwhile).
    pub shutdown_ms: u64,
    /// Boot times drawn per instance instead of `boot_ms` (none: `boot_ms`
    /// for every instance).
    #[serde(default)]
    pub boot_times: Option<BootTimes>,
}

impl Default for SimSettings {
    /// 32 on-demand and 32 spot vCPUs, as the seed incident's account; 20 s boot,
    /// 5 s shutdown.
    fn default() -> Self {
        SimSettings {
            on_demand_vcpus: 32,
            spot_vcpus: 32,
            spot_capacity: None,
            type_capacity: std::collections::BTreeMap::new(),
            images: std::collections::BTreeMap::new(),
            spot_interruptions: None,
            event_delay_ms: 0,
            boot_ms: 20_000,
            shutdown_ms: 5_000,
            boot_times: None,
        }
    }
}

/// How long instances take from launch (or start) until their bootstrap runs,
/// drawn per instance from log-normal distributions (issue 26).
///
/// The figures the scenarios use ([`BootTimes::measured`]) and where they come
/// from are in `docs/simulator.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimes {
    /// From RunInstances to the bootstrap running: EC2's `pending` to
    /// `running`, then the operating system's boot from a volume whose blocks
    /// are fetched from its snapshot as they are first read.
    pub cold: Spread,
    /// From StartInstances on a stopped instance to the bootstrap running: the
    /// volume is already warm.
    pub start: Spread,
    /// Which draw each instance gets: the same seed, the same boot times.
    pub seed: u64,
}

impl BootTimes {
    /// The figures measured by others (see `docs/simulator.md`): a cold boot
    /// p50 30 s, p99 75 s; a start from stopped p50 10 s, p99 25 s.
    pub fn measured(seed: u64) -> Self {
        BootTimes {
            cold: Spread {
                p50_ms: 30_000,
                p99_ms: 75_000,
            },
            start: Spread {
                p50_ms: 10_000,
                p99_ms: 25_000,
            },
            seed,
        }
    }

    /// The longest any draw can be.
    fn longest_ms(&self) -> u64 {
        self.cold.longest_ms().max(self.start.longest_ms())
    }
}

/// A log-normal distribution given by its median and 99th percentile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// Median.
    pub p50_ms: u64,
    /// 99th percentile (at least the median).
    pub p99_ms: u64,
}

impl Spread {
    /// The draw for the well-mixed hash `h`, within a quarter of the median
    /// and three times the 99th percentile.
    pub fn draw(&self, h: u64) -> u64 {
        // Two uniform numbers in (0, 1) from the hash's halves; Box-Muller.
        let u1 = ((h >> 32) as f64 + 0.5) / 4_294_967_296.0;
        let u2 = ((h & 0xffff_ffff) as f64 + 0.5) / 4_294_967_296.0;
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        // The standard normal's 99th percentile.
        let sigma = (self.p99_ms.max(self.p50_ms) as f64 / self.p50_ms.max(1) as f64).ln() / 2.326;
        let ms = self.p50_ms as f64 * (sigma * z).exp();
        (ms.round() as u64).clamp(self.p50_ms / 4, self.longest_ms())
    }

    fn longest_ms(&self) -> u64 {
        3 * self.p99_ms.max(self.p50_ms)
    }
}

/// How EC2 reclaims spot instances in the simulator. As AWS documents it
/// ("Spot Instance interruption notices", EC2 User Guide), an interruption
/// warning ("EC2 Spot Instance Interruption Warning" on EventBridge) comes two
/// minutes before the instance is stopped or terminated; here it is terminated
/// (the `terminate` interruption behaviour, jitr's choice for runners).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotInterruptions {
    /// Spot instances reclaimed, per thousand launched.
    pub per_mille: u32,
    /// The warning comes within this long after the launch (uniformly).
    pub warn_within_ms: u64,
    /// Which instances, and when: the same seed reclaims the same ones.
    pub seed: u64,
}

/// EC2's notice before it reclaims a spot instance: two minutes.
pub const SPOT_NOTICE_MS: u64 = 120_000;

/// Whether an instance in `state` counts against its market's vCPU quota:
/// EC2 counts running instances' vCPUs, not a stopped one's.
fn holds_quota(state: InstanceState) -> bool {
    !matches!(state, InstanceState::Terminated | InstanceState::Stopped)
}

/// The number in a simulated instance id (`sim-…`).
fn instance_number(id: &str) -> u64 {
    id.strip_prefix("sim-")
        .and_then(|n| u64::from_str_radix(n, 16).ok())
        .unwrap_or(0)
}

/// A well-mixed 64-bit hash (splitmix64), for seeded choices.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SpotInterruptions {
    /// When the `n`-th instance, launched at `launched_at`, is reclaimed (None:
    /// it is not).
    fn reclaim_at(&self, n: u64, launched_at: i64) -> Option<i64> {
        let h = mix(self.seed ^ mix(n));
        if h % 1000 >= u64::from(self.per_mille) {
            return None;
        }
        let warn = mix(h) % self.warn_within_ms.max(1);
        Some(launched_at + warn as i64 + SPOT_NOTICE_MS as i64)
    }
}

fn open(path: &Path) -> Result<Connection, ComputeError> {
    let conn = Connection::open(path).map_err(|e| ComputeError::Unavailable(Box::new(e)))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(|e| ComputeError::Unavailable(Box::new(e)))?;
    // A cloud.db of an earlier version lacks columns added since.
    for (table, column, definition) in [
        ("gh_jobs", "runner_name", "TEXT"),
        ("instances", "reclaim_at", "INTEGER"),
        ("gh_runners", "busy", "INTEGER NOT NULL DEFAULT 0"),
        ("instances", "stopped_at", "INTEGER"),
        ("instances", "started_at", "INTEGER"),
    ] {
        let has: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        if has == 0 {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))
            .map_err(sql_err)?;
        }
    }
    Ok(conn)
}

fn sql_err(e: rusqlite::Error) -> ComputeError {
    ComputeError::Unavailable(Box::new(e))
}

/// The simulated EC2.
#[derive(Clone)]
pub struct SimCloud {
    conn: Arc<Mutex<Connection>>,
    settings: SimSettings,
    clock: SimClock,
    next_id: Arc<AtomicU64>,
}

/// How long the bootstrap waits for its JIT config (`JITR_CONFIG_WAIT_SECS`).
const CONFIG_WAIT_MS: i64 = 600_000;
/// How often it looks (`JITR_CONFIG_POLL_SECS`).
const CONFIG_POLL_MS: i64 = 5_000;

/// The stand-in console of an instance at `now`: what jitr's bootstrap
/// (`handlers/assets/bootstrap.sh`) prints, in its words, from what the
/// simulator knows: when it booted, whether a JIT config was put for it (and
/// its length, never its text), when it was told to stop or terminate. None
/// before it booted: EC2 has captured nothing yet.
fn sim_console(row: &Row, boot_ms: i64, config_chars: Option<i64>, now: i64) -> Option<String> {
    let booted = row.launched_at + boot_ms;
    let ended = [row.terminating_at, row.stopped_since()]
        .into_iter()
        .flatten()
        .min();
    let seconds = |at: i64| (at - row.launched_at).max(0) as f64 / 1000.0;
    let kernel = "[    0.000000] Linux version 6.1.0-jitr-sim (the jitr EC2 simulator)";
    match ended {
        // Stopped or terminated before its bootstrap ran.
        Some(end) if end < booted && end <= now => {
            return Some(format!(
                "{kernel}\n[{:>12.6}] reboot: Power down\n",
                seconds(end)
            ));
        }
        _ if now < booted => return None,
        _ => {}
    }
    let until = ended.unwrap_or(now).min(now);
    let mut lines = vec![
        kernel.to_owned(),
        format!(
            "[{:>12.6}] cloud-init[612]: running 'modules:final': user data (the jitr bootstrap)",
            seconds(booted)
        ),
    ];
    let id = &row.id;
    let parameter = format!("/jitr/{id}/jit-config");
    lines.push(format!(
        "jitr-bootstrap: instance {id} in sim-local-1; JIT config at {parameter}"
    ));
    let not_found = format!(
        "An error occurred (ParameterNotFound) when calling the GetParameter operation: Parameter {parameter} not found."
    );
    match config_chars {
        Some(chars) => {
            lines.push(format!(
                "jitr-bootstrap: JIT config read ({chars} characters)"
            ));
            lines.push("jitr-bootstrap: JIT config parameter deleted".into());
            lines.push("jitr-bootstrap: starting the runner as runner".into());
            lines.push("√ Connected to GitHub".into());
            lines.push(format!("{} Listening for Jobs", rfc3339_seconds(booted)));
        }
        None => {
            let waited = ((until - booted).max(0) / CONFIG_POLL_MS) * CONFIG_POLL_MS;
            let waited = waited.min(CONFIG_WAIT_MS);
            let mut at = 0;
            while at < waited {
                lines.push(format!(
                    "jitr-bootstrap: JIT config not there yet ({}s): {not_found}",
                    at / 1000
                ));
                at += if at < 30_000 { CONFIG_POLL_MS } else { 60_000 };
            }
            if waited >= CONFIG_WAIT_MS {
                lines.push(format!(
                    "jitr-bootstrap: no JIT config after {}s: {not_found}",
                    waited / 1000
                ));
                lines.push("jitr-bootstrap: done (exit 1): powering off".into());
            }
        }
    }
    if let Some(end) = ended.filter(|end| *end <= now) {
        lines.push(format!("[{:>12.6}] reboot: Power down", seconds(end)));
    }
    Some(lines.join("\n") + "\n")
}

/// `2026-05-04 04:22:00Z`, as the runner prints its moments.
fn rfc3339_seconds(ms: i64) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
}

/// A row of the instances table.
struct Row {
    id: String,
    stream: String,
    client_token: String,
    market: Market,
    instance_type: String,
    vcpus: u32,
    launched_at: i64,
    terminating_at: Option<i64>,
    /// Last told to stop (kept after a start: the later of the two wins).
    stopped_at: Option<i64>,
    /// Last started from stopped.
    started_at: Option<i64>,
}

impl Row {
    /// Stopped (or stopping) since, unless started again after.
    fn stopped_since(&self) -> Option<i64> {
        self.stopped_at
            .filter(|stopped| self.started_at.is_none_or(|started| started < *stopped))
    }

    /// Started again after a stop, since.
    fn restarted_at(&self) -> Option<i64> {
        self.started_at
            .filter(|started| self.stopped_at.is_some_and(|stopped| stopped <= *started))
    }
}

fn market_name(m: Market) -> &'static str {
    m.as_str()
}

fn parse_market(s: &str) -> Market {
    if s == "spot" {
        Market::Spot
    } else {
        Market::OnDemand
    }
}

impl SimCloud {
    /// Opens (creating) the simulated cloud in `path`.
    pub fn open(
        path: impl AsRef<Path>,
        settings: SimSettings,
        clock: SimClock,
    ) -> Result<Self, ComputeError> {
        let conn = open(path.as_ref())?;
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
            .map_err(sql_err)?;
        Ok(SimCloud {
            conn: Arc::new(Mutex::new(conn)),
            settings,
            clock,
            next_id: Arc::new(AtomicU64::new(count as u64 + 1)),
        })
    }

    /// The limits in force.
    pub fn settings(&self) -> &SimSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance's row, if the simulator ever launched it.
    fn row(&self, conn: &Connection, instance: &InstanceId) -> Result<Option<Row>, ComputeError> {
        Ok(self
            .rows(conn, "WHERE id = ?1", Some(&instance.0))?
            .into_iter()
            .next())
    }

    fn state(&self, row: &Row, now: i64) -> InstanceState {
        match row.terminating_at {
            Some(t) if now >= t + self.settings.shutdown_ms as i64 => InstanceState::Terminated,
            Some(_) => InstanceState::ShuttingDown,
            None => match (row.stopped_since(), row.restarted_at()) {
                (Some(s), _) if now >= s + self.settings.shutdown_ms as i64 => {
                    InstanceState::Stopped
                }
                (Some(_), _) => InstanceState::Stopping,
                (None, Some(started)) if now < started + self.start_ms(&row.id) => {
                    InstanceState::Pending
                }
                (None, Some(_)) => InstanceState::Running,
                (None, None) if now < row.launched_at + self.boot_ms(&row.id) => {
                    InstanceState::Pending
                }
                (None, None) => InstanceState::Running,
            },
        }
    }

    /// How long the instance `id` takes from a start (from stopped) to `running`.
    fn start_ms(&self, id: &str) -> i64 {
        match &self.settings.boot_times {
            Some(times) => times
                .start
                .draw(mix(times.seed ^ mix(instance_number(id)) ^ 1))
                as i64,
            None => self.settings.boot_ms as i64,
        }
    }

    /// How long the instance `id` takes from its launch to `running`.
    fn boot_ms(&self, id: &str) -> i64 {
        match &self.settings.boot_times {
            Some(times) => times.cold.draw(mix(times.seed ^ mix(instance_number(id)))) as i64,
            None => self.settings.boot_ms as i64,
        }
    }

    /// The longest any instance takes to boot.
    fn longest_boot_ms(&self) -> i64 {
        self.settings
            .boot_times
            .map_or(self.settings.boot_ms, |t| t.longest_ms()) as i64
    }

    /// A filter for instances not yet terminated at `now` (they may still be
    /// shutting down): the listing and quota reads skip the rest in SQL.
    fn not_gone(&self, now: i64) -> String {
        format!(
            "(terminating_at IS NULL OR terminating_at > {})",
            now - self.settings.shutdown_ms as i64
        )
    }

    /// When the instance `id` is (or was) `running` after its launch: its
    /// bootstrap runs from then on (None: no such instance).
    pub fn running_at(&self, id: &InstanceId) -> Result<Option<Timestamp>, ComputeError> {
        let conn = self.lock();
        Ok(self
            .rows(&conn, "WHERE id = ?1", Some(&id.0))?
            .first()
            .map(|r| match r.restarted_at() {
                Some(started) => Timestamp(started + self.start_ms(&r.id)),
                None => Timestamp(r.launched_at + self.boot_ms(&r.id)),
            }))
    }

    /// Milliseconds instances spent stopped (their volumes kept) up to `upto`.
    pub fn stopped_ms(&self, upto: Timestamp) -> Result<u64, ComputeError> {
        let conn = self.lock();
        let shutdown = self.settings.shutdown_ms as i64;
        Ok(self
            .rows(&conn, "WHERE stopped_at IS NOT NULL", None)?
            .iter()
            .filter_map(|r| {
                let from = r.stopped_at? + shutdown;
                let until = [r.restarted_at(), r.terminating_at, Some(upto.0)]
                    .into_iter()
                    .flatten()
                    .min()?;
                Some(until.saturating_sub(from).max(0) as u64)
            })
            .sum())
    }

    fn rows(
        &self,
        conn: &Connection,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<Row>, ComputeError> {
        // EC2 reclaims what is due before anything is read (only a simulator
        // with interruptions marks instances to reclaim).
        if self.settings.spot_interruptions.is_some() {
            conn.execute(
                "UPDATE instances SET terminating_at = reclaim_at
             WHERE reclaim_at IS NOT NULL AND reclaim_at <= ?1
               AND (terminating_at IS NULL OR terminating_at > reclaim_at)",
                [(self.clock)().0],
            )
            .map_err(sql_err)?;
        }
        let sql = format!(
            "SELECT id, stream, client_token, market, instance_type, vcpus, launched_at, terminating_at,
                    stopped_at, started_at
             FROM instances {filter} ORDER BY launched_at, id"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
        let map = |r: &rusqlite::Row<'_>| {
            Ok(Row {
                id: r.get(0)?,
                stream: r.get(1)?,
                client_token: r.get(2)?,
                market: parse_market(&r.get::<_, String>(3)?),
                instance_type: r.get(4)?,
                vcpus: r.get(5)?,
                launched_at: r.get(6)?,
                terminating_at: r.get(7)?,
                stopped_at: r.get(8)?,
                started_at: r.get(9)?,
            })
        };
        let rows = match arg {
            Some(a) => stmt.query_map([a], map),
            None => stmt.query_map([], map),
        }
        .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    fn to_managed(&self, row: &Row, now: i64) -> ManagedInstance {
        ManagedInstance {
            instance_id: InstanceId(row.id.clone()),
            stream: StreamId::parse(&row.stream).ok(),
            client_token: Some(ClientToken(row.client_token.clone())),
            state: self.state(row, now),
            launched_at: Timestamp(row.launched_at),
            instance_type: row.instance_type.clone(),
            market: row.market,
        }
    }

    /// The first instance matching `filter` that is not terminated.
    fn first_alive(
        &self,
        filter: &str,
        arg: &str,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        Ok(self
            .rows(&conn, filter, Some(arg))?
            .iter()
            .map(|r| self.to_managed(r, now))
            .find(|m| m.state != InstanceState::Terminated))
    }

    /// vCPUs counted against `market`'s quota now (every state but terminated).
    pub fn vcpus_in_use(&self, market: Market) -> Result<u32, ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        Ok(self
            .holding_quota(&conn, market, now)?
            .iter()
            .map(|r| r.vcpus)
            .sum())
    }

    /// The instances of `market` that count against its quota at `now`.
    fn holding_quota(
        &self,
        conn: &Connection,
        market: Market,
        now: i64,
    ) -> Result<Vec<Row>, ComputeError> {
        Ok(self
            .rows(
                conn,
                &format!("WHERE market = ?1 AND {}", self.not_gone(now)),
                Some(market_name(market)),
            )?
            .into_iter()
            .filter(|r| holds_quota(self.state(r, now)))
            .collect())
    }

    /// EC2's refusal when `more` vCPUs of `market` would pass its quota, with
    /// `live` holding it (a launch and a start are refused alike).
    fn within_quota(&self, live: &[Row], market: Market, more: u32) -> Result<(), LaunchFailure> {
        let used: u32 = live.iter().map(|r| r.vcpus).sum();
        let (quota, code) = match market {
            Market::Spot => (self.settings.spot_vcpus, "MaxSpotInstanceCountExceeded"),
            Market::OnDemand => (self.settings.on_demand_vcpus, "VcpuLimitExceeded"),
        };
        if used + more > quota {
            return Err(LaunchFailure::Rejected(LaunchError::new(
                code,
                format!(
                    "{used} vCPUs in use of a {quota} vCPU {} quota; {more} more requested",
                    market.as_str()
                ),
            )));
        }
        Ok(())
    }

    /// The instances that were alive (launched, not yet told to terminate) at `at`:
    /// the simulator's own record, to check the log's reconstruction against.
    pub fn alive_at(&self, at: Timestamp) -> Result<Vec<InstanceId>, ComputeError> {
        let conn = self.lock();
        Ok(self
            .rows(&conn, "", None)?
            .into_iter()
            .filter(|r| r.launched_at <= at.0 && r.terminating_at.is_none_or(|t| t > at.0))
            .map(|r| InstanceId(r.id))
            .collect())
    }

    /// The state changes EC2 would announce ("EC2 Instance State-change
    /// Notification") delivered in `(after, upto]` (each [`SimSettings::
    /// event_delay_ms`] after it happened), oldest first, with the moment it
    /// happened: `pending` at launch, `running` after the boot, `shutting-down`
    /// at termination, `terminated` after the shutdown.
    pub fn state_changes(
        &self,
        after: Timestamp,
        upto: Timestamp,
    ) -> Result<Vec<(InstanceId, &'static str, Timestamp)>, ComputeError> {
        let delay = self.settings.event_delay_ms as i64;
        let (after, upto) = (Timestamp(after.0 - delay), Timestamp(upto.0 - delay));
        let (boot, shutdown) = (self.longest_boot_ms(), self.settings.shutdown_ms as i64);
        let filter = format!(
            "WHERE (launched_at > {a} - {boot} AND launched_at <= {b})
                OR (terminating_at IS NOT NULL AND terminating_at > {a} - {shutdown}
                    AND terminating_at <= {b})",
            a = after.0,
            b = upto.0
        );
        let conn = self.lock();
        let mut changes = Vec::new();
        for row in self.rows(&conn, &filter, None)? {
            let id = InstanceId(row.id.clone());
            let mut at = vec![
                ("pending", row.launched_at),
                ("running", row.launched_at + self.boot_ms(&row.id)),
            ];
            if let Some(t) = row.terminating_at {
                // Terminated while pending: never running.
                at.retain(|(state, when)| *state == "pending" || *when < t);
                at.push(("shutting-down", t));
                at.push(("terminated", t + shutdown));
            }
            for (state, when) in at {
                if when > after.0 && when <= upto.0 {
                    changes.push((id.clone(), state, Timestamp(when)));
                }
            }
        }
        changes.sort_by_key(|(_, _, at)| *at);
        Ok(changes)
    }

    /// The spot interruption warnings EC2 would announce, delivered in
    /// `(after, upto]` (each [`SimSettings::event_delay_ms`] after it was
    /// issued), oldest first, with the moment it was issued: two minutes before
    /// each reclaim, for an instance not terminated by then.
    pub fn interruption_warnings(
        &self,
        after: Timestamp,
        upto: Timestamp,
    ) -> Result<Vec<(InstanceId, Timestamp)>, ComputeError> {
        let delay = self.settings.event_delay_ms as i64;
        let (after, upto) = (Timestamp(after.0 - delay), Timestamp(upto.0 - delay));
        let notice = SPOT_NOTICE_MS as i64;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, reclaim_at - ?3 FROM instances
                 WHERE reclaim_at IS NOT NULL
                   AND reclaim_at - ?3 > ?1 AND reclaim_at - ?3 <= ?2
                   AND (terminating_at IS NULL OR terminating_at >= reclaim_at - ?3)
                 ORDER BY reclaim_at, id",
            )
            .map_err(sql_err)?;
        let rows = stmt
            .query_map(params![after.0, upto.0, notice], |r| {
                Ok((InstanceId(r.get(0)?), Timestamp(r.get(1)?)))
            })
            .map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    /// Every instance the simulator ever ran, with its launch token, launch moment
    /// and the moment it was told to terminate (None: it still runs).
    pub fn lifetimes(&self) -> Result<Vec<SimLifetime>, ComputeError> {
        let conn = self.lock();
        Ok(self
            .rows(&conn, "", None)?
            .into_iter()
            .map(|r| SimLifetime {
                instance_id: InstanceId(r.id),
                client_token: ClientToken(r.client_token),
                launched_at: Timestamp(r.launched_at),
                terminating_at: r.terminating_at.map(Timestamp),
            })
            .collect())
    }

    /// Reclaims a spot instance, as AWS does with two minutes' notice (here: none).
    pub fn interrupt(&self, instance: &InstanceId) -> Result<bool, ComputeError> {
        let now = (self.clock)().0 - self.settings.shutdown_ms as i64;
        let changed = self
            .lock()
            .execute(
                "UPDATE instances SET terminating_at = ?2 WHERE id = ?1 AND terminating_at IS NULL",
                params![instance.0, now],
            )
            .map_err(sql_err)?;
        Ok(changed == 1)
    }
}

#[async_trait]
impl Compute for SimCloud {
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchedInstance, LaunchFailure> {
        let now = (self.clock)().0;
        let conn = self.lock();
        let unknown = |e: ComputeError| LaunchFailure::Unknown(Box::new(e));
        // Client-token idempotency: the same token returns the same instance.
        if let Some(existing) = self
            .rows(&conn, "WHERE client_token = ?1", Some(&spec.client_token.0))
            .map_err(unknown)?
            .into_iter()
            .next()
        {
            if existing.instance_type != spec.instance_type || existing.market != spec.market {
                return Err(LaunchFailure::Rejected(LaunchError::new(
                    "IdempotentParameterMismatch",
                    "client token reused with other parameters",
                )));
            }
            return Ok(LaunchedInstance {
                instance_id: InstanceId(existing.id),
                instance_type: existing.instance_type,
                vcpus: existing.vcpus,
                market: existing.market,
            });
        }
        if spec.image.is_empty() {
            return Err(LaunchFailure::Rejected(LaunchError::new(
                "InvalidAMIID.Malformed",
                "empty image id",
            )));
        }
        if let Some(&image) = self.settings.images.get(&spec.image) {
            if let Some(wanted) = spec.settings.architecture.filter(|w| *w != image) {
                return Err(LaunchFailure::Rejected(architecture_mismatch(
                    &spec.image,
                    Some(image.as_str()),
                    wanted,
                )));
            }
            let of_type = Architecture::of_instance_type(&spec.instance_type);
            if of_type != image {
                // EC2's words (RunInstances, InvalidParameterValue).
                return Err(LaunchFailure::Rejected(LaunchError::new(
                    "InvalidParameterValue",
                    format!(
                        "The architecture '{of_type}' of the specified instance type does \
                         not match the architecture '{image}' of the specified AMI. Specify \
                         an instance type and an AMI that have matching architectures, and \
                         try again."
                    ),
                )));
            }
        }
        let live = self
            .holding_quota(&conn, spec.market, now)
            .map_err(unknown)?;
        self.within_quota(&live, spec.market, spec.vcpus)?;
        if let Some(cap) = self.settings.type_capacity.get(&spec.instance_type) {
            let of_type = self
                .rows(
                    &conn,
                    &format!("WHERE instance_type = ?1 AND {}", self.not_gone(now)),
                    Some(&spec.instance_type),
                )
                .map_err(unknown)?
                .into_iter()
                .filter(|r| holds_quota(self.state(r, now)))
                .count();
            if of_type as u32 >= *cap {
                return Err(LaunchFailure::Rejected(LaunchError::new(
                    "InsufficientInstanceCapacity",
                    format!(
                        "no {} capacity: {of_type} of {cap} in use",
                        spec.instance_type
                    ),
                )));
            }
        }
        if spec.market == Market::Spot
            && self
                .settings
                .spot_capacity
                .is_some_and(|cap| live.len() as u32 >= cap)
        {
            return Err(LaunchFailure::Rejected(LaunchError::new(
                "InsufficientInstanceCapacity",
                "no spot capacity for this instance type",
            )));
        }
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let id = format!("sim-{n:017x}");
        let reclaim_at = match (spec.market, self.settings.spot_interruptions) {
            (Market::Spot, Some(storm)) => storm.reclaim_at(n, now),
            _ => None,
        };
        conn.execute(
            "INSERT INTO instances (id, stream, client_token, market, instance_type, vcpus, launched_at, reclaim_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                spec.stream.as_str(),
                spec.client_token.0,
                market_name(spec.market),
                spec.instance_type,
                spec.vcpus,
                now,
                reclaim_at
            ],
        )
        .map_err(|e| unknown(sql_err(e)))?;
        // What its console will say depends on when it boots: kept for a
        // reader with other settings (`jitr logs`).
        conn.execute(
            "INSERT OR REPLACE INTO consoles (instance, boot_ms) VALUES (?1, ?2)",
            params![id, self.boot_ms(&id)],
        )
        .map_err(|e| unknown(sql_err(e)))?;
        Ok(LaunchedInstance {
            instance_id: InstanceId(id),
            instance_type: spec.instance_type.clone(),
            vcpus: spec.vcpus,
            market: spec.market,
        })
    }

    async fn terminate(&self, instance: &InstanceId) -> Result<TerminateOutcome, ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        let Some(row) = self.row(&conn, instance)? else {
            return Ok(TerminateOutcome::AlreadyGone);
        };
        if self.state(&row, now) == InstanceState::Terminated {
            return Ok(TerminateOutcome::AlreadyGone);
        }
        if row.terminating_at.is_none() {
            conn.execute(
                "UPDATE instances SET terminating_at = ?2 WHERE id = ?1",
                params![instance.0, now],
            )
            .map_err(sql_err)?;
        }
        Ok(TerminateOutcome::Terminating)
    }

    async fn stop(&self, instance: &InstanceId) -> Result<(), ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        let Some(row) = self.row(&conn, instance)? else {
            return Err(ComputeError::Unavailable(
                format!("InvalidInstanceID.NotFound: {instance}").into(),
            ));
        };
        match self.state(&row, now) {
            InstanceState::Stopping | InstanceState::Stopped => Ok(()),
            InstanceState::Pending | InstanceState::Running => {
                conn.execute(
                    "UPDATE instances SET stopped_at = ?2 WHERE id = ?1",
                    params![instance.0, now],
                )
                .map_err(sql_err)?;
                Ok(())
            }
            state => Err(ComputeError::Unavailable(
                format!("IncorrectInstanceState: {instance} is {state:?}").into(),
            )),
        }
    }

    async fn start(&self, instance: &InstanceId) -> Result<(), LaunchFailure> {
        let now = (self.clock)().0;
        let conn = self.lock();
        let unknown = |e: ComputeError| LaunchFailure::Unknown(Box::new(e));
        let Some(row) = self
            .rows(&conn, "WHERE id = ?1", Some(&instance.0))
            .map_err(unknown)?
            .into_iter()
            .next()
        else {
            return Err(LaunchFailure::Rejected(LaunchError::new(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance}' does not exist"),
            )));
        };
        match self.state(&row, now) {
            InstanceState::Pending | InstanceState::Running => return Ok(()),
            InstanceState::Stopped => {}
            state => {
                return Err(LaunchFailure::Rejected(LaunchError::new(
                    "IncorrectInstanceState",
                    format!("{instance} is {state:?}, not stopped"),
                )));
            }
        }
        let live = self
            .holding_quota(&conn, row.market, now)
            .map_err(unknown)?;
        self.within_quota(&live, row.market, row.vcpus)?;
        conn.execute(
            "UPDATE instances SET started_at = ?2 WHERE id = ?1",
            params![instance.0, now],
        )
        .map_err(|e| unknown(sql_err(e)))?;
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        Ok(self
            .rows(&conn, &format!("WHERE {}", self.not_gone(now)), None)?
            .iter()
            .map(|r| self.to_managed(r, now))
            .filter(|m| m.state != InstanceState::Terminated)
            .collect())
    }

    async fn find_by_client_token(
        &self,
        token: &ClientToken,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        self.first_alive("WHERE client_token = ?1", &token.0)
    }

    /// The simulator's own clock: it is the cloud's.
    fn cloud_time(&self) -> Option<Timestamp> {
        Some((self.clock)())
    }

    async fn console_output(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ConsoleOutput>, ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        let Some(row) = self.row(&conn, instance)? else {
            return Ok(None);
        };
        let (boot_ms, config_chars): (i64, Option<i64>) = conn
            .query_row(
                "SELECT boot_ms, config_chars FROM consoles WHERE instance = ?1",
                [&instance.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql_err)?
            .unwrap_or((self.boot_ms(&row.id), None));
        Ok(
            sim_console(&row, boot_ms, config_chars, now).map(|text| ConsoleOutput {
                instance_id: instance.clone(),
                text,
                captured_at: Some(Timestamp(now)),
            }),
        )
    }

    async fn retag(
        &self,
        instance: &InstanceId,
        stream: &StreamId,
        client_token: &ClientToken,
    ) -> Result<(), ComputeError> {
        // The simulator keeps no deployment tag: its listing is never filtered
        // by one. The runner and token tags are written again.
        self.lock()
            .execute(
                "UPDATE instances SET stream = ?2, client_token = ?3 WHERE id = ?1",
                params![instance.0, stream.as_str(), client_token.0],
            )
            .map_err(sql_err)?;
        Ok(())
    }

    async fn describe(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<ManagedInstance>, ComputeError> {
        let now = (self.clock)().0;
        let conn = self.lock();
        Ok(self
            .rows(&conn, "WHERE id = ?1", Some(&instance.0))?
            .iter()
            .map(|r| self.to_managed(r, now))
            .next())
    }
}

/// One simulated instance's life, as the simulator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimLifetime {
    /// The instance.
    pub instance_id: InstanceId,
    /// The token of the launch that started it.
    pub client_token: ClientToken,
    /// When it was launched.
    pub launched_at: Timestamp,
    /// When it was told to terminate (None: it still runs).
    pub terminating_at: Option<Timestamp>,
}

impl SimLifetime {
    /// Whether it ran at `at`.
    pub fn ran_at(&self, at: Timestamp) -> bool {
        self.launched_at <= at && self.terminating_at.is_none_or(|t| t > at)
    }
}

/// A registration from its row (`id, name, labels, busy`).
fn runner_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Runner> {
    Ok(Runner {
        id: r.get(0)?,
        name: r.get(1)?,
        status: "online".into(),
        busy: r.get(3)?,
        labels: split_labels(&r.get::<_, String>(2)?),
    })
}

/// The local GitHub stand-in: JIT configs, runner registrations, queued jobs.
#[derive(Clone)]
pub struct SimGitHub {
    conn: Arc<Mutex<Connection>>,
    failures: Arc<Mutex<Vec<u16>>>,
    failure_rate: Arc<Mutex<Option<(f64, u64)>>>,
    poll_failures: Arc<Mutex<Vec<u16>>>,
    spent: Arc<Mutex<HashMap<u64, SimRateWindow>>>,
    rate_limit: Arc<Mutex<Option<(u64, SimClock)>>>,
    groups: Arc<Mutex<Vec<(String, RunnerGroup)>>>,
    minted: Arc<Mutex<Vec<JitRequest>>>,
}

/// One installation's requests in the stand-in's rate-limit window.
#[derive(Clone, Copy, Debug, Default)]
struct SimRateWindow {
    sent: u64,
    window_start: Option<Timestamp>,
    used: u64,
}

/// GitHub's primary rate limit window.
const RATE_WINDOW_MS: u64 = 3_600_000;

fn scope_key(scope: &RunnerScope) -> String {
    match scope {
        RunnerScope::Repo { owner, repo } => format!("repo:{owner}/{repo}"),
        RunnerScope::Org { org } => format!("org:{org}"),
    }
}

/// Labels as the stand-in stores them (comma separated).
fn split_labels(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn gh_sql(e: rusqlite::Error) -> GitHubError {
    GitHubError::Decode(format!("local GitHub stand-in: {e}"))
}

impl SimGitHub {
    /// At most `limit` of a scope's runners, by id, after the first `offset`.
    fn runners_from(
        &self,
        scope: &RunnerScope,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Runner>, GitHubError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, name, labels, busy FROM gh_runners WHERE scope = ?1
                 ORDER BY id LIMIT ?2 OFFSET ?3",
            )
            .map_err(gh_sql)?;
        let rows = stmt
            .query_map(params![scope_key(scope), limit, offset], runner_row)
            .map_err(gh_sql)?;
        rows.collect::<Result<_, _>>().map_err(gh_sql)
    }

    /// Opens (creating) the stand-in in `path` (shared with [`SimCloud`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ComputeError> {
        Ok(SimGitHub {
            conn: Arc::new(Mutex::new(open(path.as_ref())?)),
            failures: Arc::default(),
            failure_rate: Arc::default(),
            poll_failures: Arc::default(),
            spent: Arc::default(),
            rate_limit: Arc::default(),
            groups: Arc::default(),
            minted: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next JIT mints answer with these HTTP statuses (e.g. 500: the
    /// seed incident's mint failure after RunInstances).
    pub fn fail_next_mints(&self, statuses: &[u16]) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(statuses);
    }

    /// Every JIT runner registered so far, as requested.
    pub fn jit_requests(&self) -> Vec<JitRequest> {
        self.minted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Creates runner group `name` in `org` (every organisation also has
    /// `Default`, id 1); returns its id.
    pub fn add_runner_group(&self, org: &str, name: &str) -> u64 {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let id = groups.len() as u64 + 2;
        groups.push((
            org.to_owned(),
            RunnerGroup {
                id,
                name: name.to_owned(),
            },
        ));
        id
    }

    /// Limits every installation to `per_hour` requests per hour, as GitHub's
    /// primary rate limit does (an hour from the window's first request, by
    /// `clock`); a request past it is refused as rate limited until the window
    /// resets. Without it the stand-in only counts requests.
    pub fn limit_requests(&self, per_hour: u64, clock: SimClock) {
        *self.rate_limit.lock().unwrap_or_else(|p| p.into_inner()) = Some((per_hour, clock));
    }

    /// Counts one request of `installation` against its rate limit.
    fn spend(&self, installation: u64) -> Result<(), GitHubError> {
        let limit = self
            .rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let window = spent.entry(installation).or_default();
        window.sent += 1;
        let Some((per_hour, clock)) = limit else {
            return Ok(());
        };
        let now = clock();
        if window
            .window_start
            .is_none_or(|start| now.millis_since(start) >= RATE_WINDOW_MS)
        {
            window.window_start = Some(now);
            window.used = 0;
        }
        if window.used >= per_hour {
            let start = window.window_start.unwrap_or(now);
            let left = RATE_WINDOW_MS.saturating_sub(now.millis_since(start));
            return Err(GitHubError::RateLimited {
                retry_after: std::time::Duration::from_millis(left),
            });
        }
        window.used += 1;
        Ok(())
    }

    /// Makes the next job reads (`GET …/actions/jobs/{job_id}`) answer with
    /// these HTTP statuses.
    pub fn fail_next_job_polls(&self, statuses: &[u16]) {
        self.poll_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(statuses);
    }

    /// Makes a fraction `rate` of JIT mints fail with 422 (a definitive refusal),
    /// chosen by a generator seeded with `seed` (deterministic runs).
    pub fn fail_mints_at_rate(&self, rate: f64, seed: u64) {
        *self.failure_rate.lock().unwrap_or_else(|p| p.into_inner()) = Some((rate, seed));
    }

    /// Records a job as queued (what a `workflow_job` `queued` webhook announces).
    pub fn queue_job(&self, job: &QueuedJob) -> Result<(), GitHubError> {
        self.lock()
            .execute(
                "INSERT INTO gh_jobs (owner, repo, job_id, run_id, name, labels, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued')
                 ON CONFLICT (owner, repo, job_id) DO UPDATE SET status = 'queued'",
                params![
                    job.owner,
                    job.repo,
                    job.job_id,
                    job.run_id,
                    job.name,
                    job.labels.join(",")
                ],
            )
            .map(|_| ())
            .map_err(gh_sql)
    }

    /// Moves a job on (`in_progress`, `completed`), on `runner` when it names the
    /// runner that took it. As on GitHub, a runner running a job is busy, and a
    /// JIT runner's registration is removed once its job is over (a JIT runner
    /// takes one job).
    pub fn set_job_status(
        &self,
        owner: &str,
        repo: &str,
        job_id: u64,
        status: &str,
        runner: Option<&str>,
    ) -> Result<(), GitHubError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE gh_jobs SET status = ?4, runner_name = COALESCE(?5, runner_name)
             WHERE owner = ?1 AND repo = ?2 AND job_id = ?3",
            params![owner, repo, job_id, status, runner],
        )
        .map_err(gh_sql)?;
        if let Some(runner) = runner {
            let change = match status {
                "in_progress" => "UPDATE gh_runners SET busy = 1 WHERE name = ?1",
                "completed" => "DELETE FROM gh_runners WHERE name = ?1",
                _ => return Ok(()),
            };
            conn.execute(change, [runner]).map_err(gh_sql)?;
        }
        Ok(())
    }

    /// The job a runner is running or ran, as GitHub's job records say.
    pub fn job_of_runner(&self, runner: &str) -> Option<(String, String, u64)> {
        self.lock()
            .query_row(
                "SELECT owner, repo, job_id FROM gh_jobs WHERE runner_name = ?1",
                [runner],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ok()
            .flatten()
    }

    /// Whether a runner of that name is registered (in any scope).
    pub fn is_registered(&self, runner: &str) -> bool {
        self.lock()
            .query_row("SELECT 1 FROM gh_runners WHERE name = ?1", [runner], |_| {
                Ok(())
            })
            .is_ok()
    }

    /// Whether a runner of that name is registered and not running a job: one
    /// GitHub may give a queued job.
    pub fn is_idle(&self, runner: &str) -> bool {
        self.lock()
            .query_row(
                "SELECT 1 FROM gh_runners WHERE name = ?1 AND busy = 0",
                [runner],
                |_| Ok(()),
            )
            .is_ok()
    }
}

#[async_trait]
impl GitHub for SimGitHub {
    async fn generate_jit_config(
        &self,
        installation: u64,
        request: &JitRequest,
    ) -> Result<JitRunner, GitHubError> {
        self.spend(installation)?;
        let injected = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        let injected = injected.or_else(|| {
            let mut rate = self.failure_rate.lock().unwrap_or_else(|p| p.into_inner());
            let (p, state) = rate.as_mut()?;
            // SplitMix64: a tiny deterministic generator.
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 <= *p).then_some(422)
        });
        if let Some(status) = injected {
            let message = format!("{status} injected by the local GitHub stand-in");
            return Err(GitHubError::from_status(
                status,
                format!("POST generate-jitconfig: {message}"),
                message,
            ));
        }
        if request.labels.is_empty() {
            return Err(GitHubError::Invalid(
                "labels: at least one is required".into(),
            ));
        }
        let conn = self.lock();
        let scope = scope_key(&request.scope);
        let inserted = conn.execute(
            "INSERT INTO gh_runners (scope, name, labels) VALUES (?1, ?2, ?3)",
            params![scope, request.name, request.labels.join(",")],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(GitHubError::RunnerNameExists(format!(
                    "a runner named {} exists in {scope}",
                    request.name
                )));
            }
            Err(e) => return Err(gh_sql(e)),
        }
        let id = conn.last_insert_rowid() as u64;
        self.minted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.clone());
        Ok(JitRunner {
            runner_id: id,
            name: request.name.clone(),
            config: JitConfig::new(format!("sim-jit-{id}-{}", request.name)),
        })
    }

    async fn delete_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<bool, GitHubError> {
        self.spend(installation)?;
        let conn = self.lock();
        let busy: Option<(String, bool)> = conn
            .query_row(
                "SELECT name, busy FROM gh_runners WHERE scope = ?1 AND id = ?2",
                params![scope_key(scope), runner_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(gh_sql)?;
        if let Some((name, true)) = busy {
            // GitHub refuses to remove a runner that is running a job.
            return Err(GitHubError::Invalid(format!(
                "DELETE runner {runner_id}: Bad request - Runner \"{name}\" is still running a job"
            )));
        }
        let deleted = conn
            .execute(
                "DELETE FROM gh_runners WHERE scope = ?1 AND id = ?2",
                params![scope_key(scope), runner_id],
            )
            .map_err(gh_sql)?;
        Ok(deleted == 1)
    }

    async fn list_runners(
        &self,
        installation: u64,
        scope: &RunnerScope,
    ) -> Result<Vec<Runner>, GitHubError> {
        // GitHub pages the listing (at most 100 a page): one request a page.
        let count: u64 = self
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM gh_runners WHERE scope = ?1",
                [scope_key(scope)],
                |r| r.get(0),
            )
            .map_err(gh_sql)?;
        for _ in 0..count.div_ceil(100).max(1) {
            self.spend(installation)?;
        }
        self.runners_from(scope, 0, u32::MAX)
    }

    async fn runners_page(
        &self,
        installation: u64,
        scope: &RunnerScope,
        page: u32,
    ) -> Result<RunnerPage, GitHubError> {
        self.spend(installation)?;
        let per_page = RUNNERS_PER_PAGE as u32;
        let offset = (page.max(1) - 1).saturating_mul(per_page);
        // One more than a page: whether GitHub would link a next one.
        let mut runners = self.runners_from(scope, offset, per_page + 1)?;
        let more = runners.len() > RUNNERS_PER_PAGE;
        runners.truncate(RUNNERS_PER_PAGE);
        Ok(RunnerPage { runners, more })
    }

    async fn get_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<Option<Runner>, GitHubError> {
        self.spend(installation)?;
        self.lock()
            .query_row(
                "SELECT id, name, labels, busy FROM gh_runners WHERE scope = ?1 AND id = ?2",
                params![scope_key(scope), runner_id],
                runner_row,
            )
            .optional()
            .map_err(gh_sql)
    }

    async fn runner_groups(
        &self,
        installation: u64,
        org: &str,
    ) -> Result<Vec<RunnerGroup>, GitHubError> {
        self.spend(installation)?;
        let mut groups = vec![RunnerGroup {
            id: 1,
            name: "Default".into(),
        }];
        groups.extend(
            self.groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(o, _)| o.eq_ignore_ascii_case(org))
                .map(|(_, g)| g.clone()),
        );
        Ok(groups)
    }

    async fn queued_runs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<u64>, GitHubError> {
        self.spend(installation)?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT run_id FROM gh_jobs
                 WHERE owner = ?1 AND repo = ?2 AND status = 'queued' ORDER BY run_id",
            )
            .map_err(gh_sql)?;
        let rows = stmt
            .query_map(params![owner, repo], |r| r.get(0))
            .map_err(gh_sql)?;
        rows.collect::<Result<_, _>>().map_err(gh_sql)
    }

    async fn queued_jobs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<QueuedJob>, GitHubError> {
        self.spend(installation)?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT owner, repo, job_id, run_id, name, labels FROM gh_jobs
                 WHERE owner = ?1 AND repo = ?2 AND run_id = ?3 AND status = 'queued'
                 ORDER BY job_id",
            )
            .map_err(gh_sql)?;
        let rows = stmt
            .query_map(params![owner, repo, run_id], |r| {
                Ok(QueuedJob {
                    owner: r.get(0)?,
                    repo: r.get(1)?,
                    job_id: r.get(2)?,
                    run_id: r.get(3)?,
                    name: r.get(4)?,
                    labels: split_labels(&r.get::<_, String>(5)?),
                })
            })
            .map_err(gh_sql)?;
        rows.collect::<Result<_, _>>().map_err(gh_sql)
    }

    fn usage(&self, installation: u64) -> RequestUsage {
        let limit = self
            .rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let window = self
            .spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&installation)
            .copied()
            .unwrap_or_default();
        let Some((per_hour, clock)) = limit else {
            return RequestUsage {
                sent: window.sent,
                ..RequestUsage::default()
            };
        };
        let now = clock();
        let (used, start) = match window.window_start {
            Some(start) if now.millis_since(start) < RATE_WINDOW_MS => (window.used, start),
            _ => (0, now),
        };
        RequestUsage {
            sent: window.sent,
            limit: Some(per_hour),
            remaining: Some(per_hour.saturating_sub(used)),
            reset_at: Some(start.plus_ms(RATE_WINDOW_MS).0 / 1000),
        }
    }

    async fn get_job(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<Option<JobState>, GitHubError> {
        self.spend(installation)?;
        let injected = {
            let mut failures = self.poll_failures.lock().unwrap_or_else(|p| p.into_inner());
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        if let Some(status) = injected {
            let message = format!("{status} injected by the local GitHub stand-in");
            return Err(GitHubError::from_status(
                status,
                format!("GET job {job_id}: {message}"),
                message,
            ));
        }
        self.lock()
            .query_row(
                "SELECT status, runner_name FROM gh_jobs
                 WHERE owner = ?1 AND repo = ?2 AND job_id = ?3",
                params![owner, repo, job_id],
                |r| {
                    Ok(JobState {
                        status: r.get(0)?,
                        conclusion: None,
                        runner_name: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(gh_sql)
    }
}

/// Where simulated instances pick up their JIT config (SSM's stand-in).
#[derive(Clone)]
pub struct SimSecrets {
    conn: Arc<Mutex<Connection>>,
}

impl SimSecrets {
    /// Opens (creating) the store in `path` (shared with [`SimCloud`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ComputeError> {
        Ok(SimSecrets {
            conn: Arc::new(Mutex::new(open(path.as_ref())?)),
        })
    }

    /// Whether a config is waiting for `instance`.
    pub fn has_config(&self, instance: &InstanceId) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_row(
                "SELECT 1 FROM jit_configs WHERE instance = ?1",
                [&instance.0],
                |_| Ok(()),
            )
            .is_ok()
    }
}

#[async_trait]
impl RunnerSecrets for SimSecrets {
    async fn put_jit_config(
        &self,
        instance: &InstanceId,
        config: &JitConfig,
    ) -> Result<String, SecretError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO jit_configs (instance, config) VALUES (?1, ?2)
             ON CONFLICT (instance) DO UPDATE SET config = excluded.config",
            params![instance.0, config.expose()],
        )
        // The console says how long the config was, never what.
        .and_then(|_| {
            conn.execute(
                "UPDATE consoles SET config_chars = ?2 WHERE instance = ?1",
                params![instance.0, config.expose().chars().count() as i64],
            )
        })
        .map_err(|e| SecretError(Box::new(e)))?;
        Ok(format!("sim:{}", instance.0))
    }

    async fn delete_jit_config(&self, instance: &InstanceId) -> Result<(), SecretError> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute("DELETE FROM jit_configs WHERE instance = ?1", [&instance.0])
            .map_err(|e| SecretError(Box::new(e)))?;
        Ok(())
    }
}
