//! The `workday` scenario (issue 26): one organisation's working day, to weigh
//! what a warm pool buys (the time a job waits to start) against what it costs
//! (instances idle, volumes kept).
//!
//! The day (a Tuesday, Europe/Berlin) has a quiet night with one nightly batch,
//! a morning ramp, a steady working day with bursts when pull requests merge,
//! and an evening tail. Instances boot as [`jitr_infra::BootTimes::measured`]
//! says (figures and sources in `docs/simulator.md`).

use jitr_domain::{Timestamp, WarmSchedule, WarmWindow};
use jitr_projections::accounting::Distribution;
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::app::policy::{Pool, PoolScope, Warmth};

/// Midnight at the start of Tuesday 5 May 2026 in Europe/Berlin (22:00 UTC).
pub const MIDNIGHT: Timestamp = Timestamp(1_777_932_000_000);
/// The day's length.
pub const DAY_MS: u64 = 24 * 3_600_000;
/// How long GitHub takes to hand a queued job to an idle runner: a hot runner
/// starts a job in under 6 s as runs-on measures it (runs-on.com, "Warm
/// pools"); the simulation gives GitHub 2 s of that.
pub const GITHUB_DISPATCH_MS: u64 = 2_000;
/// From the bootstrap having its JIT config to the runner online.
pub const RUNNER_START_MS: u64 = 5_000;
/// The repository whose runners the warm ones are (an organisation pool's
/// warm runners take any of its repositories' jobs).
pub const WARM_FOR: (&str, &str) = ("acme", "_warm");
/// The working hours the warm schedule keeps runners for, and the window the
/// report's "while the schedule holds" figures cover, in every variant.
const WINDOW: (&str, &str, &str, &str) = ("mon-fri", "08:00", "18:00", "Europe/Berlin");
/// Runners kept idle while the window holds.
pub const WINDOW_MIN_IDLE: u32 = 8;
/// On-demand price of the pool's type (c5.xlarge, us-east-1, Linux), in US
/// dollars an hour, from AWS's on-demand price list.
pub const INSTANCE_USD_PER_HOUR: f64 = 0.17;
/// gp3 storage in us-east-1, US dollars per GiB-month (AWS's EBS pricing), and
/// the root volume's size.
pub const VOLUME_USD_PER_GIB_MONTH: f64 = 0.08;
/// The pool's root volume, GiB.
pub const VOLUME_GIB: f64 = 30.0;

/// How the pool keeps capacity warm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WarmSetting {
    /// No warm pool: every job waits for a boot.
    Off,
    /// Runners kept registered and idle on the working-hours schedule.
    #[default]
    Schedule,
    /// Instances booted once and stopped on the working-hours schedule,
    /// started when a job wants one (`warm_state = "stopped"`).
    Stopped,
}

/// The working-hours window.
fn window() -> WarmWindow {
    let (days, from, to, zone) = WINDOW;
    WarmWindow::parse(days, from, to, zone, WINDOW_MIN_IDLE).expect("a valid window")
}

/// Whether the working-hours window holds at `at`.
pub fn in_window(at: Timestamp) -> bool {
    window().holds_at(at)
}

/// The day's pool: an organisation pool of on-demand c5.xlarge, warm as `warm`
/// says.
pub fn pool(mut pool: Pool, warm: WarmSetting) -> Pool {
    pool.scope = Some(PoolScope::Organization);
    pool.spot = false;
    pool.warm = match warm {
        WarmSetting::Off => Warmth::default(),
        WarmSetting::Schedule | WarmSetting::Stopped => Warmth {
            schedule: WarmSchedule {
                min_idle: 0,
                windows: vec![window()],
            },
            max_idle_ms: None,
            warm_for: Some((WARM_FOR.0.into(), WARM_FOR.1.into())),
            stopped: warm == WarmSetting::Stopped,
        },
    };
    pool
}

/// One job of the day: when it is queued (ms after midnight) and in which
/// repository.
pub struct Arrival {
    /// Ms after midnight.
    pub at_ms: u64,
    /// Repository.
    pub repo: &'static str,
}

/// The day's jobs, oldest first.
pub fn arrivals(rng: &mut StdRng) -> Vec<Arrival> {
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    let mut at: Vec<u64> = Vec::new();
    // Jobs a minute, by the hour of the day (Poisson within each minute).
    let rate = |hour: u64| -> f64 {
        match hour {
            0..=6 => 0.02,
            7 => 0.4,
            8 => 1.0,
            9..=16 => 1.5,
            17 => 0.8,
            18 => 0.3,
            _ => 0.05,
        }
    };
    for minute in 0..DAY_MS / MIN {
        let lambda = rate(minute * MIN / HOUR);
        // Knuth's method: λ is small.
        let limit = (-lambda).exp();
        let mut p = rng.random::<f64>();
        while p > limit {
            at.push(minute * MIN + rng.random_range(0..MIN));
            p *= rng.random::<f64>();
        }
    }
    // The nightly batch at 02:00: 12 jobs within a minute.
    for _ in 0..12 {
        at.push(2 * HOUR + rng.random_range(0..MIN));
    }
    // Merges: 10 bursts of 10–20 jobs within 30 s, from 09:30 to 17:00.
    for _ in 0..10 {
        let start = 9 * HOUR + 30 * MIN + rng.random_range(0..450 * MIN);
        for _ in 0..rng.random_range(10..=20) {
            at.push(start + rng.random_range(0..30_000));
        }
    }
    at.sort_unstable();
    at.into_iter()
        .map(|at_ms| Arrival {
            at_ms,
            repo: match rng.random_range(0..10) {
                0..=4 => "api",
                5..=7 => "web",
                _ => "docs",
            },
        })
        .collect()
}

/// What the day cost and bought (`--json`: the report's `workday`).
#[derive(Clone, Debug, Serialize)]
pub struct WorkdayFigures {
    /// How the pool kept capacity warm.
    pub warm: WarmSetting,
    /// Runners kept idle while the working-hours window holds (0: off).
    pub window_min_idle: u32,
    /// From a job's `queued` to its start on a runner, every job that started.
    pub queued_to_started_ms: Distribution,
    /// The same, for jobs queued while the working-hours window held.
    pub queued_to_started_in_window_ms: Distribution,
    /// The same, for jobs queued outside it.
    pub queued_to_started_outside_window_ms: Distribution,
    /// Jobs that found a runner online and idle when they were queued.
    pub warm_hits: u64,
    /// Parked runners started for a job (a stopped pool).
    pub parked_runners_woken: u64,
    /// Warm hits per job started.
    pub warm_hit_ratio: f64,
    /// Minutes instances ran with no job on them (booting, idle, draining).
    pub idle_instance_minutes: f64,
    /// Minutes instances ran a job.
    pub busy_instance_minutes: f64,
    /// Minutes volumes were kept for stopped instances.
    pub stopped_volume_minutes: f64,
    /// What the idle minutes and the stopped volumes cost at the prices above.
    pub idle_cost_usd: f64,
}

/// The figures from each started job's `(queued, started, warm hit)`, the
/// instance-minutes and the stopped volume-minutes.
pub fn figures(
    warm: WarmSetting,
    starts: &[(Timestamp, Timestamp, bool)],
    instance_ms: u64,
    busy_ms: u64,
    stopped_ms: u64,
    woken: u64,
) -> WorkdayFigures {
    let wait = |keep: &dyn Fn(Timestamp) -> bool| {
        Distribution::of(
            starts
                .iter()
                .filter(|(queued, _, _)| keep(*queued))
                .map(|(queued, started, _)| started.millis_since(*queued))
                .collect(),
        )
    };
    let hits = starts.iter().filter(|(_, _, hit)| *hit).count() as u64;
    let minutes = |ms: u64| (ms as f64 / 60_000.0 * 100.0).round() / 100.0;
    let idle_ms = instance_ms.saturating_sub(busy_ms);
    let hours = |ms: u64| ms as f64 / 3_600_000.0;
    let month_hours = 730.0;
    let cost = hours(idle_ms) * INSTANCE_USD_PER_HOUR
        + hours(stopped_ms) / month_hours * VOLUME_GIB * VOLUME_USD_PER_GIB_MONTH;
    WorkdayFigures {
        warm,
        window_min_idle: match warm {
            WarmSetting::Off => 0,
            WarmSetting::Schedule | WarmSetting::Stopped => WINDOW_MIN_IDLE,
        },
        queued_to_started_ms: wait(&|_| true),
        queued_to_started_in_window_ms: wait(&in_window),
        queued_to_started_outside_window_ms: wait(&|at| !in_window(at)),
        warm_hits: hits,
        parked_runners_woken: woken,
        warm_hit_ratio: if starts.is_empty() {
            0.0
        } else {
            (hits as f64 / starts.len() as f64 * 1000.0).round() / 1000.0
        },
        idle_instance_minutes: minutes(idle_ms),
        busy_instance_minutes: minutes(busy_ms),
        stopped_volume_minutes: minutes(stopped_ms),
        idle_cost_usd: (cost * 100.0).round() / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_day_has_a_quiet_night_a_busy_day_and_merge_bursts() {
        let day = arrivals(&mut StdRng::seed_from_u64(1));
        let hour = |h: u64| day.iter().filter(|a| a.at_ms / 3_600_000 == h).count();
        assert!(day.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(hour(2) >= 12, "the nightly batch");
        assert!(hour(4) <= 3, "a quiet night: {}", hour(4));
        assert!(hour(11) > 60, "a busy day: {}", hour(11));
        // The busiest 30 s of the day holds a merge burst.
        let most = day
            .iter()
            .map(|a| {
                day.iter()
                    .filter(|b| b.at_ms >= a.at_ms && b.at_ms < a.at_ms + 30_000)
                    .count()
            })
            .max()
            .unwrap();
        assert!(most >= 10, "{most}");
        assert!(in_window(MIDNIGHT.plus_ms(9 * 3_600_000)));
        assert!(!in_window(MIDNIGHT.plus_ms(19 * 3_600_000)));
    }

    #[test]
    fn idle_minutes_and_stopped_volumes_are_priced() {
        let q = MIDNIGHT.plus_ms(9 * 3_600_000);
        let starts = [(q, q.plus_ms(2_000), true), (q, q.plus_ms(40_000), false)];
        let f = figures(
            WarmSetting::Schedule,
            &starts,
            3 * 3_600_000,
            3_600_000,
            730 * 3_600_000,
            0,
        );
        assert_eq!(f.warm_hits, 1);
        assert_eq!(f.warm_hit_ratio, 0.5);
        assert_eq!(f.idle_instance_minutes, 120.0);
        assert_eq!(f.queued_to_started_in_window_ms.count, 2);
        assert_eq!(f.queued_to_started_outside_window_ms.count, 0);
        // Two idle hours at $0.17, a month of a 30 GiB volume at $0.08.
        assert_eq!(f.idle_cost_usd, 2.74);
    }
}
