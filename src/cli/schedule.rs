//! `webjobs schedule "<expr>"`: the next occurrences of a schedule, one RFC 3339
//! timestamp per line, without a daemon.

use std::process::ExitCode;

use jiff::Timestamp;

use crate::config::Config;
use crate::schedule::{Schedule, resolve_zone, rfc3339};

pub fn schedule(
    config: &Config,
    expr: &str,
    from: Option<&str>,
    count: usize,
    timezone: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let schedule = match Schedule::parse(expr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let tz = match resolve_zone(timezone.or(config.timezone.as_deref())) {
        Ok(tz) => tz,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let from = match from {
        None => Timestamp::now(),
        Some(text) => match text.parse::<Timestamp>() {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "webjobs: --from \"{text}\" is not an RFC 3339 time with an offset (e.g. 2026-11-21T09:30:00Z): {e}"
                );
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    for t in schedule.upcoming(from, &tz, count) {
        println!("{}", rfc3339(t, &tz));
    }
    Ok(ExitCode::SUCCESS)
}
