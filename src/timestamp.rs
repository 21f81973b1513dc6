//! Timestamps as integer microseconds since the Unix epoch (UTC), and the text forms
//! readings arrive in. Pure functions; no clock is ever read.

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|±HH:MM]` (RFC 3339 and NAB's
/// `YYYY-MM-DD HH:MM:SS`, taken as UTC when no offset is given) or a plain number of
/// Unix seconds (fractions allowed). Returns `None` for anything else.
pub fn parse(s: &str) -> Option<Micros> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs);
    }
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b' ' || b[10] == b'T' || b[10] == b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut scale = 100_000;
        for c in frac[..digits].bytes().take(6) {
            micros += (c - b'0') as i64 * scale;
            scale /= 10;
        }
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "" | "Z" | "z" => 0,
        // ASCII first: a byte offset inside a multi-byte character must not be sliced.
        o if o.len() == 6 && o.is_ascii() && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = o[1..3].parse().ok()?;
            let m: i64 = o[4..6].parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Largest Unix time in seconds accepted: the end of year 9999 (µs fit i64 far beyond).
pub const MAX_UNIX_SECONDS: f64 = 253_402_300_800.0;

/// Unix seconds (fractions allowed) as µs, for |secs| up to [`MAX_UNIX_SECONDS`];
/// `None` beyond or for non-finite input (never a silent overflow).
pub fn seconds(secs: f64) -> Option<Micros> {
    (secs.is_finite() && secs.abs() < MAX_UNIX_SECONDS).then(|| (secs * 1e6).round() as i64)
}

/// Formats as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.
pub fn format_rfc3339(t: Micros) -> String {
    let (date, time) = split(t);
    let us = t.rem_euclid(1_000_000);
    if us == 0 {
        format!("{date}T{time}Z")
    } else {
        format!("{date}T{time}.{us:06}Z")
    }
}

/// Formats as NAB writes it: `YYYY-MM-DD HH:MM:SS`.
pub fn format_nab(t: Micros) -> String {
    let (date, time) = split(t);
    format!("{date} {time}")
}

fn split(t: Micros) -> (String, String) {
    let secs = t.div_euclid(1_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60),
    )
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + if m <= 2 { 1 } else { 0 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_readings_use() {
        assert_eq!(parse("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse("2014-02-14 14:30:00"), Some(1_392_388_200_000_000));
        assert_eq!(parse("2014-02-14T14:30:00Z"), Some(1_392_388_200_000_000));
        assert_eq!(parse("2014-02-14 14:30:00.000000"), Some(1_392_388_200_000_000));
        assert_eq!(parse("2014-02-14T15:30:00.5+01:00"), Some(1_392_388_200_500_000));
        assert_eq!(parse("1392388200"), Some(1_392_388_200_000_000));
        assert_eq!(parse("1392388200.25"), Some(1_392_388_200_250_000));
        assert_eq!(
            parse("2016-02-29 00:00:00").map(format_nab).as_deref(),
            Some("2016-02-29 00:00:00")
        );
        for bad in [
            "",
            "yesterday",
            "2015-02-29 00:00:00",
            "2014-13-01 00:00:00",
            "2014-02-14 25:00:00",
            "nan",
            "inf",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for t in [0, 1_392_388_200_000_000, -86_400_000_000, 951_782_400_123_456] {
            assert_eq!(parse(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_rfc3339(1_392_388_200_500_000), "2014-02-14T14:30:00.500000Z");
    }
}
