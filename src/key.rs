//! A job's identity: its kind and its name, and the rules a name follows.
//! A leaf: everything that names a job asks here, and this asks nothing.

use std::fmt;

/// The two kinds of job, named as the folders are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Continuous,
    Triggered,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::Continuous, JobKind::Triggered];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Continuous => "continuous",
            JobKind::Triggered => "triggered",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A job's identity: its kind and folder name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    pub kind: JobKind,
    /// Shared by every copy of the key (a job's is kept in half a dozen places).
    pub name: std::sync::Arc<str>,
}

impl JobKey {
    pub fn new(kind: JobKind, name: impl AsRef<str>) -> JobKey {
        JobKey { kind, name: name.as_ref().into() }
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// A letter or digit first, then letters, digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    name_problem(name).is_none()
}

/// The longest job name: it is part of folder and cgroup names, which the
/// kernel limits to 255 bytes with room to spare for prefixes and suffixes.
pub const MAX_NAME: usize = 128;

/// What is wrong with a job name, in the words every surface uses.
pub fn name_problem(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let well_formed = matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        let shown: String = name.chars().take(MAX_NAME).collect();
        return Some(format!(
            "invalid job name \"{shown}\": a job name starts with a letter or digit and has only letters, digits, `-` and `_`"
        ));
    }
    (name.len() > MAX_NAME)
        .then(|| format!("invalid job name: {} characters, more than the {MAX_NAME} a job name may have", name.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names() {
        for ok in ["a", "A1", "9lives", "my-job_2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "a b", "a.b", "é", ".hidden"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name(&"a".repeat(MAX_NAME)));
        let long = "a".repeat(MAX_NAME + 1);
        assert!(name_problem(&long).unwrap().contains("129 characters, more than the 128"));
    }
}
