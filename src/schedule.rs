//! NCRONTAB schedules, read exactly as WebJobs reads them.
//!
//! Six fields `{second} {minute} {hour} {day} {month} {day-of-week}`; five
//! fields mean second = 0. Each field is `*` or a comma list of values,
//! ranges and steps (`*/15`, `2/5`, `10-40/15`); months and days may be
//! named (`jan`, `Monday`, any case). Day-of-week 0 is Sunday. A day must
//! match BOTH the day-of-month and the day-of-week field (NCRONTAB's rule,
//! unlike Vixie cron's "either").

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

/// Every hour of the day: such a schedule is an interval schedule for DST.
const ALL_HOURS: u32 = (1 << 24) - 1;
/// How far ahead a schedule is searched (a Feb 29 that is a Monday is rare).
const SEARCH_DAYS: u32 = 366 * 400;

/// A parsed schedule: one bit set per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    source: String,
    pub(crate) seconds: u64,
    pub(crate) minutes: u64,
    pub(crate) hours: u32,
    pub(crate) days: u32,
    pub(crate) months: u16,
    pub(crate) weekdays: u8,
}

/// Why an expression is not a valid schedule; names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid schedule \"{expr}\": expected 6 fields (second minute hour day month day-of-week) or 5 (minute hour day month day-of-week), found {found}"
    )]
    FieldCount { expr: String, found: usize },
    #[error("invalid schedule \"{expr}\": {field} field: {message}")]
    Field { expr: String, field: &'static str, message: String },
    #[error("invalid schedule \"{expr}\": it can never fire ({reason})")]
    Never { expr: String, reason: String },
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [FieldSpec; 6] = [
    FieldSpec { name: "second", min: 0, max: 59, names: &[] },
    FieldSpec { name: "minute", min: 0, max: 59, names: &[] },
    FieldSpec { name: "hour", min: 0, max: 23, names: &[] },
    FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
    },
    FieldSpec {
        name: "day-of-week",
        min: 0,
        max: 6,
        names: &["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"],
    },
];

const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Schedule {
    /// Parses an NCRONTAB expression.
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let parts: Vec<&str> = match parts.len() {
            6 => parts,
            5 => std::iter::once("0").chain(parts).collect(),
            found => {
                return Err(ScheduleError::FieldCount { expr: expr.to_string(), found });
            }
        };
        let mut bits = [0u64; 6];
        for (i, (part, spec)) in parts.iter().zip(FIELDS.iter()).enumerate() {
            bits[i] = parse_field(part, spec).map_err(|message| ScheduleError::Field {
                expr: expr.to_string(),
                field: spec.name,
                message,
            })?;
        }
        let schedule = Schedule {
            source: expr.trim().to_string(),
            seconds: bits[0],
            minutes: bits[1],
            hours: bits[2] as u32,
            days: bits[3] as u32,
            months: bits[4] as u16,
            weekdays: bits[5] as u8,
        };
        schedule.check_possible()?;
        Ok(schedule)
    }

    /// The expression as written (trimmed).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first occurrence strictly after `after`, in zone `tz`.
    ///
    /// Daylight saving: a schedule whose hour field is `*` is an interval
    /// schedule and keeps real-time spacing (it fires in both passes of a
    /// repeated hour and simply has no ticks in a skipped one). A schedule with
    /// fixed hours fires a repeated wall-clock time once (the first pass), and a
    /// wall-clock time skipped by a spring-forward once, right after the gap.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        if self.hours == ALL_HOURS { self.next_interval(after, tz) } else { self.next_fixed(after, tz) }
    }

    /// The next `count` occurrences after `after`.
    pub fn upcoming(&self, after: Timestamp, tz: &TimeZone, count: usize) -> Vec<Timestamp> {
        std::iter::successors(self.next_after(after, tz), |t| self.next_after(*t, tz)).take(count).collect()
    }

    /// Real-time semantics: within each span of constant UTC offset, local time
    /// is a plain shift of UTC, so the civil search applies directly.
    fn next_interval(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut from = Timestamp::from_second(after.as_second().checked_add(1)?).ok()?;
        for _ in 0..10_000 {
            let offset = tz.to_offset(from);
            let span_end = tz.following(from).next().map(|t| t.timestamp());
            let found = self.next_civil(offset.to_datetime(from))?;
            let instant = offset.to_timestamp(found).ok()?;
            match span_end {
                Some(end) if instant >= end => from = end,
                _ => return Some(instant),
            }
        }
        None
    }

    /// Wall-clock semantics with the gap and fold rules.
    fn next_fixed(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut civil = tz.to_offset(after).to_datetime(Timestamp::from_second(after.as_second()).ok()?);
        for _ in 0..10_000 {
            let found = self.next_civil(civil)?;
            let instant = match tz.to_ambiguous_timestamp(found).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(found).ok()?,
                AmbiguousOffset::Fold { before, .. } => before.to_timestamp(found).ok()?,
                AmbiguousOffset::Gap { after: later, .. } => {
                    let inside = later.to_timestamp(found).ok()?;
                    tz.following(inside).next()?.timestamp()
                }
            };
            if instant > after {
                return Some(instant);
            }
            civil = found.checked_add(1.second()).ok()?;
        }
        None
    }

    /// The first civil date-time at or after `from` that matches every field.
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let mut earliest = (from.hour() as u32, from.minute() as u32, from.second() as u32);
        for _ in 0..SEARCH_DAYS {
            if self.date_matches(date)
                && let Some((h, m, s)) = self.time_at_or_after(earliest)
            {
                return Some(date.at(h as i8, m as i8, s as i8, 0));
            }
            date = date.tomorrow().ok()?;
            earliest = (0, 0, 0);
        }
        None
    }

    /// NCRONTAB's day rule: the day of the month AND the day of the week must match.
    fn date_matches(&self, date: Date) -> bool {
        let weekday = date.weekday().to_sunday_zero_offset() as u32;
        self.months & (1 << date.month()) != 0
            && self.days & (1 << date.day()) != 0
            && self.weekdays & (1 << weekday) != 0
    }

    fn time_at_or_after(&self, (h0, m0, s0): (u32, u32, u32)) -> Option<(u32, u32, u32)> {
        let first = |bits: u64| bits.trailing_zeros();
        let hour = next_bit(u64::from(self.hours), h0)?;
        if hour > h0 {
            return Some((hour, first(self.minutes), first(self.seconds)));
        }
        if let Some(minute) = next_bit(self.minutes, m0) {
            if minute > m0 {
                return Some((hour, minute, first(self.seconds)));
            }
            if let Some(second) = next_bit(self.seconds, s0) {
                return Some((hour, minute, second));
            }
            if let Some(minute) = next_bit(self.minutes, m0 + 1) {
                return Some((hour, minute, first(self.seconds)));
            }
        }
        let hour = next_bit(u64::from(self.hours), h0 + 1)?;
        Some((hour, first(self.minutes), first(self.seconds)))
    }

    /// Refuses day/month combinations that exist in no year (`0 0 0 31 2 *`).
    fn check_possible(&self) -> Result<(), ScheduleError> {
        let possible = (1..=12u32).any(|m| {
            self.months & (1 << m) != 0 && (1..=DAYS_IN_MONTH[m as usize - 1]).any(|d| self.days & (1 << d) != 0)
        });
        if possible {
            return Ok(());
        }
        let months: Vec<&str> = (1..=12u32)
            .filter(|m| self.months & (1 << m) != 0)
            .map(|m| &FIELDS[4].names[m as usize - 1][..3])
            .collect();
        Err(ScheduleError::Never {
            expr: self.source.clone(),
            reason: format!("no selected day exists in {}", months.join(", ")),
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A zone by IANA name, or the machine's zone (UTC if it cannot be told).
pub fn resolve_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        Some(name) => TimeZone::get(name)
            .map_err(|_| format!("unknown time zone \"{name}\" (expected an IANA name such as \"Europe/Paris\")")),
        None => Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC)),
    }
}

/// `2026-11-21T09:30:00+01:00` (whole seconds; `+00:00` for UTC).
pub fn rfc3339(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The smallest set bit at position `from` or above.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = bits >> from;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("empty item in \"{text}\""));
        }
        bits |= parse_item(item, spec)?;
    }
    Ok(bits)
}

/// One list item: `*`, `n`, `n-m`, each optionally followed by `/step`.
fn parse_item(item: &str, spec: &FieldSpec) -> Result<u64, String> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => {
            let step: u32 = step
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("step \"{step}\" in \"{item}\" must be a whole number above 0"))?;
            (range, step)
        }
        None => (item, 1),
    };
    let (lo, hi) = if range == "*" {
        (spec.min, spec.max)
    } else if let Some((a, b)) = range.split_once('-') {
        let (lo, hi) = (value(a, spec)?, value(b, spec)?);
        if lo > hi {
            return Err(format!("range \"{range}\" starts after it ends"));
        }
        (lo, hi)
    } else {
        let v = value(range, spec)?;
        // NCRONTAB reads `n/step` as "from n to the end of the range, every step".
        (v, if step > 1 || item.contains('/') { spec.max } else { v })
    };
    Ok((lo..=hi).step_by(step as usize).fold(0u64, |bits, v| bits | (1 << v)))
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if (spec.min..=spec.max).contains(&n) {
            return Ok(n);
        }
        let hint = if spec.name == "day-of-week" && n == 7 { " (use 0 for Sunday)" } else { "" };
        return Err(format!("{n} is out of range {}-{}{hint}", spec.min, spec.max));
    }
    let lower = text.to_ascii_lowercase();
    let by_name = spec.names.iter().position(|name| lower.len() >= 3 && name.starts_with(&lower));
    match by_name {
        Some(i) => Ok(spec.min + i as u32),
        None if spec.names.is_empty() => Err(format!("\"{text}\" is not a number")),
        None => Err(format!(
            "\"{text}\" is neither a number from {} to {} nor a {} name",
            spec.min,
            spec.max,
            if spec.name == "month" { "month" } else { "day" }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(values: &[u32]) -> u64 {
        values.iter().fold(0, |b, v| b | (1 << v))
    }

    #[test]
    fn field_kinds() {
        let s = Schedule::parse("*/15 10-40/15 2/5 1,15,31 jan-MAR,Dec mon-fri").unwrap();
        assert_eq!(s.seconds, bits(&[0, 15, 30, 45]));
        assert_eq!(s.minutes, bits(&[10, 25, 40]));
        assert_eq!(u64::from(s.hours), bits(&[2, 7, 12, 17, 22]));
        assert_eq!(u64::from(s.days), bits(&[1, 15, 31]));
        assert_eq!(u64::from(s.months), bits(&[1, 2, 3, 12]));
        assert_eq!(u64::from(s.weekdays), bits(&[1, 2, 3, 4, 5]));
    }

    #[test]
    fn hour_range_with_step() {
        let s = Schedule::parse("0 0 10-20/5 * * *").unwrap();
        assert_eq!(u64::from(s.hours), bits(&[10, 15, 20]));
    }

    #[test]
    fn five_fields_mean_second_zero() {
        let s = Schedule::parse("30 9 * * 1-5").unwrap();
        assert_eq!(s.seconds, 1);
        assert_eq!(s.minutes, 1 << 30);
    }

    #[test]
    fn sunday_is_zero_and_names_any_case() {
        assert_eq!(Schedule::parse("0 0 0 * * SUN").unwrap().weekdays, 1);
        assert_eq!(Schedule::parse("0 0 0 * * sunday").unwrap().weekdays, 1);
        assert_eq!(Schedule::parse("0 0 0 * * Sat").unwrap().weekdays, 1 << 6);
        assert_eq!(Schedule::parse("0 0 0 * * 0").unwrap().weekdays, 1);
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases = [
            ("0 61 * * * *", "minute field: 61 is out of range 0-59"),
            ("0 0 24 * * *", "hour field: 24 is out of range 0-23"),
            ("0 0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
            ("0 0 0 * 13 *", "month field: 13 is out of range 1-12"),
            ("0 0 0 * * 7", "day-of-week field: 7 is out of range 0-6 (use 0 for Sunday)"),
            ("0 0 0 * foo *", "month field: \"foo\" is neither a number"),
            ("0 0 0 * * */0", "step \"0\""),
            ("0 0 0 5-1 * *", "range \"5-1\" starts after it ends"),
            ("0 0 0 1,,2 * *", "empty item"),
            ("x * * * * *", "second field: \"x\" is not a number"),
            ("* * * *", "found 4"),
            ("* * * * * * *", "found 7"),
            ("0 0 0 31 2 *", "can never fire (no selected day exists in feb)"),
            ("0 0 0 30,31 feb *", "can never fire"),
        ];
        for (expr, want) in cases {
            let err = Schedule::parse(expr).unwrap_err().to_string();
            assert!(err.contains(want), "{expr}: {err}");
        }
    }

    #[test]
    fn leap_day_is_possible() {
        assert!(Schedule::parse("0 0 0 29 2 *").is_ok());
    }

    fn next(expr: &str, from: &str, tz: &str, count: usize) -> Vec<String> {
        let tz = TimeZone::get(tz).unwrap();
        let from: Timestamp = from.parse().unwrap();
        Schedule::parse(expr)
            .unwrap()
            .upcoming(from, &tz, count)
            .into_iter()
            .map(|t| t.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
            .collect()
    }

    /// (expression, from, expected occurrences) in UTC.
    const CASES: &[(&str, &str, &[&str])] = &[
        // The five examples documented by WebJobs.
        (
            "0 */15 * * * *",
            "2026-11-21T09:07:30Z",
            &[
                "2026-11-21T09:15:00+00:00",
                "2026-11-21T09:30:00+00:00",
                "2026-11-21T09:45:00+00:00",
                "2026-11-21T10:00:00+00:00",
            ],
        ),
        ("0 0 * * * *", "2026-11-21T09:00:00Z", &["2026-11-21T10:00:00+00:00", "2026-11-21T11:00:00+00:00"]),
        (
            "0 0 9-17 * * *",
            "2026-11-21T16:30:00Z",
            &["2026-11-21T17:00:00+00:00", "2026-11-22T09:00:00+00:00", "2026-11-22T10:00:00+00:00"],
        ),
        ("0 30 9 * * *", "2026-11-21T09:30:00Z", &["2026-11-22T09:30:00+00:00", "2026-11-23T09:30:00+00:00"]),
        // 2026-11-20 is a Friday: Monday to Friday skips the weekend.
        ("0 30 9 * * 1-5", "2026-11-20T10:00:00Z", &["2026-11-23T09:30:00+00:00", "2026-11-24T09:30:00+00:00"]),
        // Seconds, strictly after the start.
        (
            "*/20 * * * * *",
            "2026-11-21T09:00:00.500Z",
            &["2026-11-21T09:00:20+00:00", "2026-11-21T09:00:40+00:00", "2026-11-21T09:01:00+00:00"],
        ),
        ("* * * * * *", "2026-11-21T09:00:59Z", &["2026-11-21T09:01:00+00:00", "2026-11-21T09:01:01+00:00"]),
        // Five fields: seconds = 0.
        ("15 10 * * *", "2026-11-21T10:15:00Z", &["2026-11-22T10:15:00+00:00"]),
        // Steps from a start value and inside a range.
        (
            "0 2/20 8 * * *",
            "2026-11-21T00:00:00Z",
            &[
                "2026-11-21T08:02:00+00:00",
                "2026-11-21T08:22:00+00:00",
                "2026-11-21T08:42:00+00:00",
                "2026-11-22T08:02:00+00:00",
            ],
        ),
        (
            "0 10-40/15 8 * * *",
            "2026-11-21T00:00:00Z",
            &["2026-11-21T08:10:00+00:00", "2026-11-21T08:25:00+00:00", "2026-11-21T08:40:00+00:00"],
        ),
        // Both day fields restricted: Friday the 13th only (NCRONTAB), not every 13th or every Friday (Vixie).
        (
            "0 0 0 13 * 5",
            "2026-01-01T00:00:00Z",
            &[
                "2026-02-13T00:00:00+00:00",
                "2026-03-13T00:00:00+00:00",
                "2026-11-13T00:00:00+00:00",
                "2027-08-13T00:00:00+00:00",
            ],
        ),
        // Sunday is 0, names in any case.
        ("0 0 12 * * 0", "2026-11-21T00:00:00Z", &["2026-11-22T12:00:00+00:00", "2026-11-29T12:00:00+00:00"]),
        ("0 0 12 * JAN,jul Sun", "2026-11-21T00:00:00Z", &["2027-01-03T12:00:00+00:00", "2027-01-10T12:00:00+00:00"]),
        // Month ends and leap years.
        (
            "0 0 0 31 * *",
            "2026-01-31T00:00:00Z",
            &[
                "2026-03-31T00:00:00+00:00",
                "2026-05-31T00:00:00+00:00",
                "2026-07-31T00:00:00+00:00",
                "2026-08-31T00:00:00+00:00",
            ],
        ),
        ("0 0 0 29 2 *", "2026-01-01T00:00:00Z", &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
        ("0 0 0 L * *", "2026-01-01T00:00:00Z", &[]),
        // Year boundary.
        ("0 0 0 1 1 *", "2026-12-31T23:59:59Z", &["2027-01-01T00:00:00+00:00"]),
    ];

    #[test]
    fn occurrences_table() {
        for (expr, from, want) in CASES {
            if want.is_empty() {
                assert!(Schedule::parse(expr).is_err(), "{expr} should not parse");
                continue;
            }
            assert_eq!(next(expr, from, "UTC", want.len()), *want, "{expr} from {from}");
        }
    }

    #[test]
    fn the_day_rule_is_and_not_or() {
        let got = next("0 0 0 1 * 1", "2026-01-01T00:00:00Z", "UTC", 3);
        // Months whose 1st is a Monday: June 2026, February 2027, March 2027.
        assert_eq!(got, ["2026-06-01T00:00:00+00:00", "2027-02-01T00:00:00+00:00", "2027-03-01T00:00:00+00:00"]);
    }

    #[test]
    fn paris_spring_forward_fixed_time_runs_once_right_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let got = next("0 30 2 * * *", "2026-03-28T12:00:00Z", "Europe/Paris", 3);
        assert_eq!(got, ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]);
        let many = next("0 0,10,20 2 * * *", "2026-03-29T00:00:00Z", "Europe/Paris", 2);
        assert_eq!(many, ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"], "several skipped times run once");
    }

    #[test]
    fn paris_fall_back_fixed_time_runs_once() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let got = next("0 30 2 * * *", "2026-10-24T12:00:00Z", "Europe/Paris", 2);
        assert_eq!(got, ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]);
    }

    #[test]
    fn paris_intervals_keep_real_time_spacing() {
        let spring = next("0 */30 * * * *", "2026-03-29T00:00:00Z", "Europe/Paris", 4);
        assert_eq!(
            spring,
            [
                "2026-03-29T01:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:30:00+02:00",
                "2026-03-29T04:00:00+02:00"
            ]
        );
        let fall = next("0 */30 * * * *", "2026-10-24T23:45:00Z", "Europe/Paris", 5);
        assert_eq!(
            fall,
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:00:00+01:00"
            ]
        );
    }

    #[test]
    fn new_york_transitions() {
        // 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
        assert_eq!(
            next("0 15 2 * * *", "2026-03-07T12:00:00Z", "America/New_York", 2),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:15:00-04:00"]
        );
        assert_eq!(
            next("0 30 1 * * *", "2026-10-31T12:00:00Z", "America/New_York", 2),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        assert_eq!(
            next("0 0 * * * *", "2026-11-01T04:30:00Z", "America/New_York", 3),
            ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]
        );
        // From inside the second pass of the repeated hour, a fixed 01:30 waits a day.
        assert_eq!(next("0 30 1 * * *", "2026-11-01T06:10:00Z", "America/New_York", 1), ["2026-11-02T01:30:00-05:00"]);
    }

    #[test]
    fn never_fires_twice_for_the_same_instant() {
        let tz = TimeZone::get("Europe/Paris").unwrap();
        let s = Schedule::parse("*/7 * * * * *").unwrap();
        let ticks = s.upcoming("2026-10-25T00:00:00Z".parse().unwrap(), &tz, 2000);
        assert!(ticks.windows(2).all(|w| w[0] < w[1]));
    }
}
