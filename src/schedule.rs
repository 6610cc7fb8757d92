//! NCRONTAB schedules, read exactly as WebJobs reads them.
//!
//! Six fields `{second} {minute} {hour} {day} {month} {day-of-week}`; five
//! fields mean second = 0. Each field is `*` or a comma list of values,
//! ranges and steps (`*/15`, `2/5`, `10-40/15`); months and days may be
//! named (`jan`, `Monday`, any case). Day-of-week 0 is Sunday. A day must
//! match BOTH the day-of-month and the day-of-week field (NCRONTAB's rule,
//! unlike Vixie cron's "either").

use std::fmt;

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
    Field {
        expr: String,
        field: &'static str,
        message: String,
    },
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
    FieldSpec {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
    },
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    FieldSpec {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
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
        names: &[
            "sunday",
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
        ],
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
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_string(),
                    found,
                });
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

    /// Refuses day/month combinations that exist in no year (`0 0 0 31 2 *`).
    fn check_possible(&self) -> Result<(), ScheduleError> {
        let possible = (1..=12u32).any(|m| {
            self.months & (1 << m) != 0
                && (1..=DAYS_IN_MONTH[m as usize - 1]).any(|d| self.days & (1 << d) != 0)
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
            let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                format!("step \"{step}\" in \"{item}\" must be a whole number above 0")
            })?;
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
        (
            v,
            if step > 1 || item.contains('/') {
                spec.max
            } else {
                v
            },
        )
    };
    Ok((lo..=hi)
        .step_by(step as usize)
        .fold(0u64, |bits, v| bits | (1 << v)))
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if (spec.min..=spec.max).contains(&n) {
            return Ok(n);
        }
        let hint = if spec.name == "day-of-week" && n == 7 {
            " (use 0 for Sunday)"
        } else {
            ""
        };
        return Err(format!(
            "{n} is out of range {}-{}{hint}",
            spec.min, spec.max
        ));
    }
    let lower = text.to_ascii_lowercase();
    let by_name = spec
        .names
        .iter()
        .position(|name| lower.len() >= 3 && name.starts_with(&lower));
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
            (
                "0 0 0 * * 7",
                "day-of-week field: 7 is out of range 0-6 (use 0 for Sunday)",
            ),
            ("0 0 0 * foo *", "month field: \"foo\" is neither a number"),
            ("0 0 0 * * */0", "step \"0\""),
            ("0 0 0 5-1 * *", "range \"5-1\" starts after it ends"),
            ("0 0 0 1,,2 * *", "empty item"),
            ("x * * * * *", "second field: \"x\" is not a number"),
            ("* * * *", "found 4"),
            ("* * * * * * *", "found 7"),
            (
                "0 0 0 31 2 *",
                "can never fire (no selected day exists in feb)",
            ),
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
}
