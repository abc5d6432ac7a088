//! Wall-clock text for scenario files: RFC 3339 instants (`2026-05-01T21:30:00+08:00`) and local
//! times of day (`02:00`), without a date-time crate (the simulator keeps its dependencies few).

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn num(s: &str, what: &str) -> Result<i64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {what} `{s}`"));
    }
    s.parse().map_err(|_| format!("bad {what} `{s}`"))
}

/// An RFC 3339 instant with an explicit offset (`Z` or `+08:00`): (ms since epoch, offset in
/// minutes east of UTC).
pub fn parse_rfc3339(text: &str) -> Result<(i64, i32), String> {
    let bad = || format!("`{text}` is not an RFC 3339 time like 2026-05-01T21:30:00+08:00");
    let (date, rest) = text.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut d = date.split('-');
    let (y, mo, da) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(d), None) if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            (num(y, "year")?, num(m, "month")?, num(d, "day")?)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || da < 1 || da > days_in_month(y, mo) {
        return Err(bad());
    }
    let (clock, offset_min) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').ok_or_else(bad)?;
        let (h, m) = (num(h, "offset hour")?, num(m, "offset minute")?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        (c, sign * (h * 60 + m) as i32)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (clock, ""),
    };
    let mut t = hms.split(':');
    let (h, mi, s) = match (t.next(), t.next(), t.next(), t.next()) {
        (Some(h), Some(m), Some(s), None) if h.len() == 2 && m.len() == 2 && s.len() == 2 => {
            (num(h, "hour")?, num(m, "minute")?, num(s, "second")?)
        }
        _ => return Err(bad()),
    };
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        num(&digits, "fraction")?
    };
    let days = days_from_civil(y, mo, da);
    let local_ms = ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms;
    Ok((local_ms - i64::from(offset_min) * 60_000, offset_min))
}

/// A local time of day `HH:MM` or `HH:MM:SS`: milliseconds after local midnight.
pub fn parse_time_of_day(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time of day like 02:00 or 02:00:30");
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let h = num(parts[0], "hour").map_err(|_| bad())?;
    let m = num(parts[1], "minute").map_err(|_| bad())?;
    let s = match parts.get(2) {
        Some(s) => num(s, "second").map_err(|_| bad())?,
        None => 0,
    };
    if h > 23 || m > 59 || s > 59 {
        return Err(bad());
    }
    Ok(((h * 60 + m) * 60 + s) * 1000)
}

/// The first instant at or after `from_ms` whose local time of day (at `offset_min`) is
/// `time_of_day_ms`.
pub fn next_time_of_day(from_ms: i64, offset_min: i32, time_of_day_ms: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    let local = from_ms + i64::from(offset_min) * 60_000;
    let midnight = local.div_euclid(DAY) * DAY;
    let mut t = midnight + time_of_day_ms;
    if t < local {
        t += DAY;
    }
    t - i64::from(offset_min) * 60_000
}

/// RFC 3339 text of an instant at an offset (for reports): `2026-05-01T21:30:00.000+08:00`.
pub fn format_rfc3339(ms: i64, offset_min: i32) -> String {
    let local = ms + i64::from(offset_min) * 60_000;
    let days = local.div_euclid(86_400_000);
    let in_day = local.rem_euclid(86_400_000);
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let sign = if offset_min < 0 { '-' } else { '+' };
    let off = offset_min.abs();
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}{sign}{:02}:{:02}",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
        off / 60,
        off % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instants_with_offsets() {
        // 2026-01-01T00:00:00Z
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Ok((1_767_225_600_000, 0)));
        assert_eq!(parse_rfc3339("2026-01-01T08:00:00+08:00"), Ok((1_767_225_600_000, 480)));
        assert_eq!(
            parse_rfc3339("2025-12-31T19:00:00.5-05:00"),
            Ok((1_767_225_600_500, -300))
        );
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00",
            "yesterday",
            "2026-01-01T25:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_of_day_roll_to_the_next_occurrence() {
        let (start, off) = parse_rfc3339("2026-05-01T21:30:00+08:00").expect("start");
        let two = parse_time_of_day("02:00").expect("tod");
        let t = next_time_of_day(start, off, two);
        assert_eq!(t - start, 4 * 3_600_000 + 30 * 60_000);
        assert_eq!(format_rfc3339(t, off), "2026-05-02T02:00:00.000+08:00");
        let t = next_time_of_day(start, off, parse_time_of_day("21:30").expect("tod"));
        assert_eq!(t, start);
        assert!(parse_time_of_day("2:00").is_err() && parse_time_of_day("24:00").is_err());
    }
}
