//! Reading a JSON object key by key while collecting every problem at once.
//!
//! Both the daemon configuration and `settings.job` are read this way, so that a
//! user sees all that is wrong with a file in one pass, each problem naming the
//! file, the key and what was expected (never the first error only).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// One thing wrong with a file, located precisely enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The key (dotted for nested keys); empty for a problem with the whole file.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Parses `text` as a JSON object, or explains why it is not one.
pub fn parse_object(file: &Path, text: &str) -> Result<Map<String, Value>, Problem> {
    let whole = |message: String| Problem { file: file.to_path_buf(), key: String::new(), message };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(whole(format!("expected a JSON object {{ … }}, found {}", kind_of(&other)))),
        Err(e) => Err(whole(format!("invalid JSON at line {} column {}: {e}", e.line(), e.column()))),
    }
}

/// Names a JSON value's type the way a user would.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the keys of one JSON object; remembers which keys were read
/// so that the rest can be reported as unknown.
pub struct Reader<'a> {
    file: &'a Path,
    prefix: String,
    map: &'a Map<String, Value>,
    read: BTreeSet<&'a str>,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub fn new(file: &'a Path, map: &'a Map<String, Value>) -> Self {
        Self::nested(file, String::new(), map)
    }

    /// A reader for an object found under `prefix` (problems say `prefix.key`).
    pub fn nested(file: &'a Path, prefix: String, map: &'a Map<String, Value>) -> Self {
        Reader { file, prefix, map, read: BTreeSet::new(), problems: Vec::new() }
    }

    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// The value of `key` if present and not null; marks the key as known.
    pub fn value(&mut self, key: &'a str) -> Option<&'a Value> {
        self.read.insert(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let key = if self.prefix.is_empty() {
            key.to_string()
        } else if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{key}", self.prefix)
        };
        self.problems.push(Problem { file: self.file.to_path_buf(), key, message: message.into() });
    }

    fn expected(&mut self, key: &str, expected: &str, found: &Value) {
        let message = format!("expected {expected}, found {} ({found})", kind_of(found));
        self.problem(key, message);
    }

    pub fn bool(&mut self, key: &'a str) -> Option<bool> {
        match self.value(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.expected(key, "true or false", other);
                None
            }
        }
    }

    pub fn string(&mut self, key: &'a str) -> Option<&'a str> {
        match self.value(key)? {
            Value::String(s) => Some(s),
            other => {
                self.expected(key, "a string", other);
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub fn integer(&mut self, key: &'a str, min: u64, max: u64) -> Option<u64> {
        let value = self.value(key)?;
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(key, format!("expected a whole number from {min} to {max}, found {n}"));
                None
            }
            None => {
                self.expected(key, &format!("a whole number from {min} to {max}"), value);
                None
            }
        }
    }

    /// A non-negative number of seconds (fractions allowed).
    pub fn seconds(&mut self, key: &'a str) -> Option<Duration> {
        let value = self.value(key)?;
        match value.as_f64() {
            Some(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Some(Duration::from_secs_f64(s)),
            Some(s) if s < 0.0 => {
                self.problem(key, format!("expected a number of seconds of 0 or more, found {s}"));
                None
            }
            _ => {
                self.expected(key, "a number of seconds", value);
                None
            }
        }
    }

    /// One of `allowed` (exact spelling).
    pub fn choice(&mut self, key: &'a str, allowed: &[&str]) -> Option<&'a str> {
        let s = self.string(key)?;
        if allowed.contains(&s) {
            Some(s)
        } else {
            let message = format!("expected one of {}, found \"{s}\"", quoted_list(allowed));
            self.problem(key, message);
            None
        }
    }

    pub fn object(&mut self, key: &'a str) -> Option<&'a Map<String, Value>> {
        match self.value(key)? {
            Value::Object(map) => Some(map),
            other => {
                self.expected(key, "an object { … }", other);
                None
            }
        }
    }

    /// Whether `key` is present with the value null (and marks it as known).
    pub fn has_null(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(Value::is_null)
    }

    /// Keys present in the object that no accessor asked for.
    pub fn unknown_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.map.keys().filter(|k| !self.read.contains(k.as_str())).cloned().collect();
        keys.sort();
        keys
    }

    /// Reports every unread key as a problem.
    pub fn deny_unknown(&mut self, known_hint: &str) {
        for key in self.unknown_keys() {
            self.problem(&key, format!("unknown key (known keys: {known_hint})"));
        }
    }

    pub fn absorb(&mut self, other: Reader<'_>) {
        self.problems.extend(other.problems);
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// `"a", "b" or "c"`.
pub fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reader_on(value: &Value) -> (Reader<'_>, &Path) {
        let path = Path::new("x.json");
        (Reader::new(path, value.as_object().unwrap()), path)
    }

    #[test]
    fn collects_every_problem_with_key_and_expectation() {
        let v = json!({"a": "yes", "b": -3, "c": 1.5, "d": "nope", "e": 7});
        let (mut r, _) = reader_on(&v);
        assert_eq!(r.bool("a"), None);
        assert_eq!(r.seconds("b"), None);
        assert_eq!(r.integer("c", 0, 10), None);
        assert_eq!(r.choice("d", &["skip", "queue"]), None);
        assert_eq!(r.integer("e", 0, 5), None);
        let problems = r.into_problems();
        assert_eq!(problems.len(), 5);
        assert_eq!(problems[0].key, "a");
        assert!(problems[0].message.contains("expected true or false, found a string"));
        assert!(problems[1].message.contains("0 or more"));
        assert!(problems[3].message.contains("\"skip\" or \"queue\""));
        assert!(problems[4].message.contains("from 0 to 5, found 7"));
    }

    #[test]
    fn unknown_keys_are_those_never_read() {
        let v = json!({"known": true, "typo": 1});
        let (mut r, _) = reader_on(&v);
        r.bool("known");
        assert_eq!(r.unknown_keys(), vec!["typo".to_string()]);
    }

    #[test]
    fn parse_object_reports_position_and_kind() {
        let p = Path::new("s.job");
        let e = parse_object(p, "{\"a\": }").unwrap_err();
        assert!(e.message.contains("line 1 column"), "{}", e.message);
        let e = parse_object(p, "[1]").unwrap_err();
        assert!(e.message.contains("found an array"));
    }
}
