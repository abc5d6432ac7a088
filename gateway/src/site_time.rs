//! The site's local time: the facility's IANA time zone (`[site] timezone`, daylight saving
//! included) or, when a rules file pins one, a fixed offset from UTC.
//!
//! Night windows, daily maintenance windows and shift changes are local times; this type turns
//! the gateway clock's milliseconds into them. The zone rules come from the system's time-zone
//! database (`/usr/share/zoneinfo`, kept current by the OS), with a copy built into the binary
//! for a box that has none.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAY_MS: i64 = 86_400_000;

/// The zone a site's local times are in.
#[derive(Clone)]
pub struct SiteTime {
    name: String,
    zone: TimeZone,
}

impl std::fmt::Debug for SiteTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SiteTime").field(&self.name).finish()
    }
}

impl PartialEq for SiteTime {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The zone of a site that does not say (the deployments this gateway was first built for).
pub const DEFAULT_TIMEZONE: &str = "Asia/Shanghai";

impl SiteTime {
    /// An IANA zone by name (`Europe/Berlin`); the error says why a name is not one.
    pub fn zone(name: &str) -> Result<SiteTime, String> {
        if name.is_empty() {
            return Err("is empty: give an IANA time zone such as `Europe/Berlin`".into());
        }
        match jiff::tz::db().get(name) {
            Ok(zone) => Ok(SiteTime {
                name: name.to_owned(),
                zone,
            }),
            Err(_) => Err(format!(
                "`{name}` is not a time zone of the IANA database (for example `Asia/Shanghai`, `Europe/Berlin`)"
            )),
        }
    }

    /// A fixed offset from UTC in minutes, without daylight saving (a rules file's
    /// `utc_offset_min`). The caller checks the range (-720..=840).
    pub fn fixed(offset_min: i32) -> SiteTime {
        let seconds = offset_min.clamp(-720, 840) * 60;
        let zone = jiff::tz::Offset::from_seconds(seconds)
            .map(TimeZone::fixed)
            .unwrap_or(TimeZone::UTC);
        let sign = if offset_min < 0 { '-' } else { '+' };
        let a = offset_min.unsigned_abs();
        SiteTime {
            name: format!("UTC{sign}{:02}:{:02}", a / 60, a % 60),
            zone,
        }
    }

    /// The zone's name as configured, or `UTC+HH:MM` for a fixed offset.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn timestamp(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// The offset from UTC in force at `ms`, in minutes.
    pub fn offset_min(&self, ms: i64) -> i32 {
        self.zone.to_offset(Self::timestamp(ms)).seconds() / 60
    }

    /// Minute of the local day (0..1440) at `ms`.
    pub fn local_minute(&self, ms: i64) -> i64 {
        (ms + self.offset_min(ms) as i64 * 60_000).rem_euclid(DAY_MS) / 60_000
    }

    /// The instant of local time `minute` (minutes after midnight) on local day `date`. A time
    /// the clocks skip (spring forward) is moved forward by the gap (02:30 becomes 03:30), one
    /// that happens twice (fall back) is its first occurrence.
    fn instant(&self, date: Date, minute: i64) -> Option<i64> {
        let h = (minute / 60).clamp(0, 23) as i8;
        let m = (minute % 60) as i8;
        let dt = date.at(h, m, 0, 0);
        self.zone
            .to_ambiguous_timestamp(dt)
            .compatible()
            .ok()
            .map(|t| t.as_millisecond())
    }

    /// The start of the current shift at `now_ms` and of the one before, for shift changes at
    /// local minutes `starts_min` (`[7 * 60, 15 * 60, 23 * 60]`).
    pub fn shift_bounds(&self, now_ms: i64, starts_min: &[i64]) -> (i64, i64) {
        let today = self.zone.to_datetime(Self::timestamp(now_ms)).date();
        let yesterday = today.yesterday().ok();
        let before = yesterday.and_then(|d| d.yesterday().ok());
        // Three local days of starts: with one start a day whose time today is still ahead, the
        // current shift began yesterday and the previous one the day before, however long those
        // days were (23 or 25 hours across a daylight-saving change).
        let mut all: Vec<i64> = Vec::with_capacity(starts_min.len() * 3);
        for date in [before, yesterday, Some(today)].into_iter().flatten() {
            all.extend(starts_min.iter().filter_map(|&m| self.instant(date, m)));
        }
        all.sort_unstable();
        all.dedup();
        match all.iter().rposition(|&t| t <= now_ms) {
            Some(i) if i > 0 => (all[i], all[i - 1]),
            Some(i) => (all[i], all[i] - DAY_MS),
            None => (now_ms, now_ms - DAY_MS),
        }
    }
}

impl Default for SiteTime {
    fn default() -> Self {
        SiteTime::zone(DEFAULT_TIMEZONE).unwrap_or_else(|_| SiteTime::fixed(480))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date and time.
    fn utc(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        TimeZone::UTC
            .to_timestamp(jiff::civil::date(y, mo, d).at(h, mi, 0, 0))
            .expect("valid")
            .as_millisecond()
    }

    #[test]
    fn unknown_zones_are_refused_with_the_reason() {
        let e = SiteTime::zone("Europe/Berln").expect_err("misspelt");
        assert!(e.contains("`Europe/Berln` is not a time zone"), "{e}");
        assert!(SiteTime::zone("").is_err());
        assert!(SiteTime::zone("Europe/Berlin").is_ok());
    }

    #[test]
    fn berlin_follows_daylight_saving_and_shanghai_does_not() {
        let berlin = SiteTime::zone("Europe/Berlin").expect("zone");
        let shanghai = SiteTime::zone("Asia/Shanghai").expect("zone");
        // 2027-03-28 is the last Sunday of March: Berlin goes from +01:00 to +02:00 at 01:00 UTC.
        assert_eq!(berlin.offset_min(utc(2027, 3, 27, 21, 0)), 60);
        assert_eq!(berlin.offset_min(utc(2027, 3, 28, 21, 0)), 120);
        assert_eq!(berlin.local_minute(utc(2027, 3, 27, 21, 0)), 22 * 60);
        assert_eq!(berlin.local_minute(utc(2027, 3, 28, 20, 0)), 22 * 60);
        assert_eq!(shanghai.local_minute(utc(2027, 3, 28, 14, 0)), 22 * 60);
        assert_eq!(shanghai.offset_min(utc(2027, 7, 1, 0, 0)), 480);
    }

    #[test]
    fn a_fixed_offset_has_no_daylight_saving() {
        let t = SiteTime::fixed(60);
        assert_eq!(t.name(), "UTC+01:00");
        assert_eq!(t.offset_min(utc(2027, 7, 1, 0, 0)), 60);
        assert_eq!(SiteTime::fixed(-330).name(), "UTC-05:30");
    }

    #[test]
    fn shift_bounds_are_local_times_in_both_zones() {
        let starts = [7 * 60, 15 * 60, 23 * 60];
        let berlin = SiteTime::zone("Europe/Berlin").expect("zone");
        // 10:00 in Berlin (summer, +02:00): the shift since 07:00, the previous since 23:00.
        let (cur, prev) = berlin.shift_bounds(utc(2027, 7, 1, 8, 0), &starts);
        assert_eq!((cur, prev), (utc(2027, 7, 1, 5, 0), utc(2027, 6, 30, 21, 0)));
        // 01:34 in Berlin: the night shift since 23:00 the day before.
        let (cur, prev) = berlin.shift_bounds(utc(2027, 1, 15, 0, 34), &starts);
        assert_eq!((cur, prev), (utc(2027, 1, 14, 22, 0), utc(2027, 1, 14, 14, 0)));
        // The night of the March change: 23:00 (+01:00) to 07:00 (+02:00) is 7 hours.
        let (cur, prev) = berlin.shift_bounds(utc(2027, 3, 28, 6, 0), &starts);
        assert_eq!((cur, prev), (utc(2027, 3, 28, 5, 0), utc(2027, 3, 27, 22, 0)));
        // One start a day (08:00) across the change: 07:00 on the Monday after is still the
        // Sunday's shift (08:00 +02:00 = 06:00 UTC), which followed Saturday's (08:00 +01:00).
        let (cur, prev) = berlin.shift_bounds(utc(2027, 3, 29, 5, 0), &[8 * 60]);
        assert_eq!((cur, prev), (utc(2027, 3, 28, 6, 0), utc(2027, 3, 27, 7, 0)));
        let shanghai = SiteTime::zone("Asia/Shanghai").expect("zone");
        let (cur, prev) = shanghai.shift_bounds(utc(2027, 7, 1, 8, 0), &starts);
        assert_eq!((cur, prev), (utc(2027, 7, 1, 7, 0), utc(2027, 6, 30, 23, 0)));
    }
}
