//! Warm capacity (ADR-0022): runners kept registered and idle with no job, so
//! that a job starts on one at once instead of waiting for a boot.
//!
//! A pool keeps `min_idle` runners beyond its queued demand; windows of the
//! week (in a time zone) raise that floor while they hold, e.g. weekdays
//! 08:00–18:00 Europe/Berlin: 10. The reconciler launches what is missing and
//! the supply planner ([`crate::supply`]) retires only what is beyond it.

use std::fmt;

use chrono::{Datelike, TimeZone, Timelike};
use chrono_tz::Tz;

use crate::ids::Timestamp;
use crate::supply::PoolBalance;

/// Days of the week, Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A window of the week in which a pool keeps more runners warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmWindow {
    /// The days it holds on (bit 0: Monday … bit 6: Sunday), in `zone`.
    days: u8,
    /// From this minute of the day (inclusive) …
    from_minute: u16,
    /// … to this one (exclusive; 1440 is midnight at the day's end).
    to_minute: u16,
    /// The time zone its days and hours are in.
    zone: Tz,
    /// The idle runners the pool keeps while it holds.
    pub min_idle: u32,
}

/// A window that cannot be read: what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WindowError(String);

impl WarmWindow {
    /// A window on `days` (`"mon-fri"`, `"sat,sun"`, `"daily"`) from `from` to
    /// `to` (`"HH:MM"`, `to` after `from`; `"24:00"` ends at midnight) in the
    /// IANA time zone `zone`, keeping `min_idle` runners idle.
    pub fn parse(
        days: &str,
        from: &str,
        to: &str,
        zone: &str,
        min_idle: u32,
    ) -> Result<WarmWindow, WindowError> {
        let days = parse_days(days)?;
        let from_minute = parse_minute(from)?;
        let to_minute = parse_minute(to)?;
        if to_minute <= from_minute {
            return Err(WindowError(format!(
                "to {to:?} is not after from {from:?} (a window past midnight is two windows)"
            )));
        }
        let zone: Tz = zone.parse().map_err(|_| {
            WindowError(format!(
                "time_zone {zone:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"
            ))
        })?;
        Ok(WarmWindow {
            days,
            from_minute,
            to_minute,
            zone,
            min_idle,
        })
    }

    /// Whether the window holds at `at`, by the clock and calendar of its zone.
    pub fn holds_at(&self, at: Timestamp) -> bool {
        let Some(utc) = chrono::DateTime::from_timestamp_millis(at.0) else {
            return false;
        };
        let local = self.zone.from_utc_datetime(&utc.naive_utc());
        let day = local.weekday().num_days_from_monday();
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.days & (1 << day) != 0 && (self.from_minute..self.to_minute).contains(&minute)
    }
}

impl fmt::Display for WarmWindow {
    /// `mon,tue,wed,thu,fri 08:00-18:00 Europe/Berlin: 10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAYS[d])
            .collect();
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(
            f,
            "{} {}-{} {}: {}",
            days.join(","),
            hm(self.from_minute),
            hm(self.to_minute),
            self.zone.name(),
            self.min_idle
        )
    }
}

fn parse_days(text: &str) -> Result<u8, WindowError> {
    let bad = |what: &str| {
        WindowError(format!(
            "days {text:?}: {what:?} is not a day (mon … sun, a range like mon-fri, or daily)"
        ))
    };
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| name.trim().eq_ignore_ascii_case(d))
            .ok_or_else(|| bad(name))
    };
    let mut days = 0u8;
    for part in text.split(',') {
        let part = part.trim();
        if part.eq_ignore_ascii_case("daily") {
            days |= 0x7f;
            continue;
        }
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (day(first)?, day(last)?);
                if last < first {
                    return Err(WindowError(format!(
                        "days {text:?}: {part:?} runs backwards (the week starts on Monday)"
                    )));
                }
                for d in first..=last {
                    days |= 1 << d;
                }
            }
            None => days |= 1 << day(part)?,
        }
    }
    Ok(days)
}

fn parse_minute(text: &str) -> Result<u16, WindowError> {
    let bad = || {
        WindowError(format!(
            "{text:?} is not a time of day HH:MM (00:00 to 24:00)"
        ))
    };
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// How many idle runners a pool keeps, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WarmSchedule {
    /// Kept at all times.
    pub min_idle: u32,
    /// Raised while a window holds (the largest of those that hold).
    pub windows: Vec<WarmWindow>,
}

impl WarmSchedule {
    /// The idle runners to keep at `at`.
    pub fn min_idle_at(&self, at: Timestamp) -> u32 {
        self.windows
            .iter()
            .filter(|w| w.holds_at(at))
            .map(|w| w.min_idle)
            .fold(self.min_idle, u32::max)
    }

    /// Whether it ever keeps a runner warm.
    pub fn is_warm(&self) -> bool {
        self.min_idle > 0 || self.windows.iter().any(|w| w.min_idle > 0)
    }
}

/// What the reconciler does for one pool at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmPlan {
    /// Warm runners to launch: the demand and the floor that supply does not
    /// cover (runners booting count: they will be idle soon).
    pub launch: usize,
    /// Untaken runners beyond demand and the floor: the supply planner may
    /// retire this many (deregister-first, never a busy one).
    pub surplus: usize,
}

/// The plan for a pool whose runners balance as `balance`, keeping `min_idle`
/// runners idle beyond its queued demand.
pub fn plan_warmth(balance: &PoolBalance, min_idle: usize) -> WarmPlan {
    plan_balance(balance.demand + min_idle, balance.supply)
}

/// A stopped pool's plan: its floor counts parked runners (and those booting
/// to be parked), whatever the demand, which wakes them.
pub fn plan_parking(balance: &PoolBalance, floor: usize) -> WarmPlan {
    plan_balance(floor, balance.parked)
}

fn plan_balance(wanted: usize, have: usize) -> WarmPlan {
    WarmPlan {
        launch: wanted.saturating_sub(have),
        surplus: have.saturating_sub(wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-07 (a Monday) 00:00 UTC.
    const MONDAY: i64 = 1_796_601_600_000;
    const HOUR: i64 = 3_600_000;

    fn berlin_office() -> WarmWindow {
        WarmWindow::parse("mon-fri", "08:00", "18:00", "Europe/Berlin", 10).unwrap()
    }

    #[test]
    fn a_window_holds_by_its_zones_clock() {
        let w = berlin_office();
        // Berlin is UTC+1 in December: 08:00 there is 07:00 UTC.
        assert!(!w.holds_at(Timestamp(MONDAY + 6 * HOUR + 59 * 60_000)));
        assert!(w.holds_at(Timestamp(MONDAY + 7 * HOUR)));
        assert!(w.holds_at(Timestamp(MONDAY + 16 * HOUR + 59 * 60_000)));
        assert!(!w.holds_at(Timestamp(MONDAY + 17 * HOUR)));
        // Saturday 10:00 Berlin.
        assert!(!w.holds_at(Timestamp(MONDAY + 5 * 24 * HOUR + 9 * HOUR)));
        assert_eq!(
            w.to_string(),
            "mon,tue,wed,thu,fri 08:00-18:00 Europe/Berlin: 10"
        );
    }

    #[test]
    fn summer_time_moves_the_window_in_utc() {
        // 2026-07-06, a Monday: Berlin is UTC+2, so 08:00 there is 06:00 UTC.
        let july = 1_783_296_000_000;
        let w = berlin_office();
        assert!(w.holds_at(Timestamp(july + 6 * HOUR)));
        assert!(!w.holds_at(Timestamp(july + 16 * HOUR)));
    }

    #[test]
    fn the_day_is_the_zones_day() {
        // Sunday 23:30 UTC is Monday 08:30 in Tokyo.
        let w = WarmWindow::parse("mon", "08:00", "09:00", "Asia/Tokyo", 2).unwrap();
        assert!(w.holds_at(Timestamp(MONDAY - HOUR / 2)));
        assert!(!w.holds_at(Timestamp(MONDAY + 23 * HOUR + HOUR / 2)));
    }

    #[test]
    fn the_largest_floor_that_holds_is_kept() {
        let schedule = WarmSchedule {
            min_idle: 1,
            windows: vec![
                berlin_office(),
                WarmWindow::parse("daily", "09:00", "10:00", "UTC", 4).unwrap(),
            ],
        };
        assert_eq!(schedule.min_idle_at(Timestamp(MONDAY + 3 * HOUR)), 1);
        assert_eq!(schedule.min_idle_at(Timestamp(MONDAY + 9 * HOUR)), 10);
        assert_eq!(
            schedule.min_idle_at(Timestamp(MONDAY + 6 * 24 * HOUR + 9 * HOUR)),
            4,
            "Sunday 09:00 UTC: only the daily window"
        );
        assert!(schedule.is_warm());
        assert!(!WarmSchedule::default().is_warm());
    }

    #[test]
    fn windows_that_cannot_be_read_say_why() {
        let err = |days, from, to, zone| {
            WarmWindow::parse(days, from, to, zone, 1)
                .unwrap_err()
                .to_string()
        };
        assert!(err("mon-fri", "18:00", "08:00", "UTC").contains("not after"));
        assert!(err("mon-fri", "8", "18:00", "UTC").contains("HH:MM"));
        assert!(err("mon-fri", "08:00", "24:01", "UTC").contains("HH:MM"));
        assert!(err("monday", "08:00", "18:00", "UTC").contains("\"monday\" is not a day"));
        assert!(err("fri-mon", "08:00", "18:00", "UTC").contains("backwards"));
        assert!(err("mon", "08:00", "18:00", "Europe/Nowhere").contains("IANA"));
        let whole_day = WarmWindow::parse("sat,sun", "00:00", "24:00", "UTC", 1).unwrap();
        assert!(whole_day.holds_at(Timestamp(MONDAY - 1)));
    }

    #[test]
    fn the_plan_launches_the_shortfall_and_frees_only_what_is_beyond_the_floor() {
        let balance = |demand, supply| PoolBalance {
            demand,
            supply,
            parked: 0,
        };
        assert_eq!(
            plan_warmth(&balance(0, 0), 2),
            WarmPlan {
                launch: 2,
                surplus: 0
            }
        );
        // Three queued jobs, each with its runner, and one warm one booting.
        assert_eq!(plan_warmth(&balance(3, 4), 2).launch, 1);
        assert_eq!(
            plan_warmth(&balance(0, 5), 2),
            WarmPlan {
                launch: 0,
                surplus: 3
            }
        );
        assert_eq!(plan_warmth(&balance(1, 1), 0), WarmPlan::default());
    }

    proptest! {
        /// After the plan's launches and retirements, supply is exactly demand
        /// plus the floor.
        #[test]
        fn the_plan_meets_the_floor_exactly(demand in 0usize..50, supply in 0usize..80, floor in 0usize..20) {
            let plan = plan_warmth(&PoolBalance { demand, supply, parked: 0 }, floor);
            prop_assert!(plan.launch == 0 || plan.surplus == 0);
            prop_assert_eq!(supply + plan.launch - plan.surplus, demand + floor);
        }
    }
}
