//! Who hears about what: the `notify` rules of a `settings.job` and of the
//! daemon's config (its default for every job), and which events they match.
//! Delivery is [`crate::outbox`]'s.

use serde_json::Value;

use crate::problems::Reader;

/// What a rule can be told about (`"on": [...]`); `*` is every one.
pub const EVENTS: &[&str] = &[
    "started",
    "succeeded",
    "failed",
    "aborted",
    "cancelled",
    "dead",
    "recovered",
    "crash_loop",
    "invalid",
    "skipped",
    "missed",
];

/// One `notify` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Names from [`EVENTS`] (or `*`).
    pub on: Vec<String>,
    pub target: Target,
}

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An http:// or https:// URL the event is POSTed to, as JSON.
    Url(String),
    /// A command run by `/bin/sh -c`, the event's JSON on its stdin.
    Command(String),
}

impl Rule {
    /// Whether this rule wants notification `name` (see [`name_of`]).
    pub fn wants(&self, name: &str) -> bool {
        self.on.iter().any(|o| o == "*" || o == name)
    }
}

/// The notification name of an event of the [`crate::events`] bus, if it has one.
pub fn name_of(kind: &str, status: Option<&str>) -> Option<&'static str> {
    match (kind, status) {
        ("run.started", _) => Some("started"),
        ("run.ended", Some("Success")) => Some("succeeded"),
        ("run.ended", Some("Failed")) => Some("failed"),
        ("run.ended", Some("Aborted")) => Some("aborted"),
        ("run.ended", Some("Cancelled")) => Some("cancelled"),
        ("run.dead", _) => Some("dead"),
        ("job.recovered", _) => Some("recovered"),
        ("job.crash_loop", _) => Some("crash_loop"),
        ("job.invalid", _) => Some("invalid"),
        ("tick.skipped", _) => Some("skipped"),
        ("tick.missed", _) => Some("missed"),
        _ => None,
    }
}

/// Reads `key` (an array of rules), reporting every problem to `r`.
pub fn read_rules<'a>(r: &mut Reader<'a>, key: &'a str) -> Vec<Rule> {
    let Some(value) = r.value(key) else { return Vec::new() };
    let Value::Array(items) = value else {
        r.problem(key, r#"expected an array of rules such as [{"on": ["failed", "dead"], "url": "https://…"}]"#);
        return Vec::new();
    };
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        match rule(item) {
            Ok(rule) => rules.push(rule),
            Err(message) => r.problem(&at, message),
        }
    }
    rules
}

fn rule(item: &Value) -> Result<Rule, String> {
    let Value::Object(map) = item else {
        return Err(r#"expected an object {"on": [...], "url": "…"} or {"on": [...], "command": "…"}"#.into());
    };
    if let Some(unknown) = map.keys().find(|k| !["on", "url", "command"].contains(&k.as_str())) {
        return Err(format!("unknown key {unknown:?} (known: on, url, command)"));
    }
    let on: Vec<String> = match map.get("on") {
        Some(Value::Array(names)) if !names.is_empty() => names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("\"on\" must list names as strings")?,
        Some(Value::String(name)) => vec![name.clone()],
        _ => return Err(format!("\"on\" must list what to tell: {} or \"*\"", EVENTS.join(", "))),
    };
    if let Some(bad) = on.iter().find(|n| *n != "*" && !EVENTS.contains(&n.as_str())) {
        return Err(format!("unknown event {bad:?} in \"on\" (known: {}, or \"*\" for all)", EVENTS.join(", ")));
    }
    let target = match (map.get("url"), map.get("command")) {
        (Some(Value::String(url)), None) if url.starts_with("http://") || url.starts_with("https://") => {
            Target::Url(url.clone())
        }
        (Some(Value::String(url)), None) => {
            return Err(format!("\"url\" must start with http:// or https://, found {url:?}"));
        }
        (None, Some(Value::String(command))) if !command.trim().is_empty() => Target::Command(command.clone()),
        (Some(_), Some(_)) => return Err("a rule has a \"url\" or a \"command\", not both".into()),
        _ => return Err("a rule needs a \"url\" to POST the event to, or a \"command\" to run".into()),
    };
    Ok(Rule { on, target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn read(json: &str) -> (Vec<Rule>, Vec<String>) {
        let map = crate::problems::parse_object(Path::new("s.job"), json).unwrap();
        let mut r = Reader::new(Path::new("s.job"), &map);
        let rules = read_rules(&mut r, "notify");
        (rules, r.into_problems().into_iter().map(|p| format!("{}: {}", p.key, p.message)).collect())
    }

    #[test]
    fn rules_are_read_and_match_by_name() {
        let (rules, problems) = read(
            r#"{"notify": [{"on": ["failed", "dead"], "url": "http://127.0.0.1:9/h"}, {"on": "*", "url": "https://x/y"}]}"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(rules[0].wants("failed") && !rules[0].wants("succeeded"));
        assert!(rules[1].wants("started"));
        assert_eq!(name_of("run.ended", Some("Failed")), Some("failed"));
        assert_eq!(name_of("run.queued", None), None);
    }

    #[test]
    fn a_bad_rule_says_where_and_why() {
        let (_, problems) = read(
            r#"{"notify": [{"on": ["boom"], "url": "http://x"}, {"on": ["failed"], "url": "ftp://x"}, {"on": ["failed"]}, 3]}"#,
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("notify[0]: unknown event \"boom\""), "{problems:?}");
        assert!(problems[1].contains("http:// or https://"), "{problems:?}");
        assert!(problems[2].contains("needs a \"url\""), "{problems:?}");
        let (_, both) = read(r#"{"notify": [{"on": ["failed"], "url": "http://x", "command": "y"}]}"#);
        assert!(both[0].contains("not both"), "{both:?}");
        assert!(problems[3].starts_with("notify[3]: expected an object"), "{problems:?}");
    }
}
