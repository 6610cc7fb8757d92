//! Jobs on disk: discovery of job folders, the choice of the script to run,
//! and the script hosts (interpreters) that run it.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::hash::fnv1a;
use crate::key::{JobKey, JobKind, name_problem};
use crate::layout::{DISABLE_FILE, SDK_MARKER};
use crate::settings::{self, Loaded};

/// The file a job runs and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// File name inside the script folder.
    pub file: String,
    /// The host command before the script (absolute program first); empty for a native executable.
    pub host: Vec<String>,
    /// `.js` jobs run in place unless settings.job says otherwise (as in WebJobs).
    pub in_place_default: bool,
}

/// What discovery found in one job folder, problems included.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDef {
    pub key: JobKey,
    /// `jobs/<kind>/<name>`.
    pub dir: PathBuf,
    /// The folder the script is in, after single-sub-folder descent.
    pub script_dir: PathBuf,
    /// `disable.job` is present.
    pub disabled: bool,
    /// Hash of the folder's files (names, sizes, times, modes), `disable.job` excluded.
    pub fingerprint: u64,
    pub script: Result<Script, ScriptError>,
    pub settings: Loaded,
    /// `webjobssdk.marker` is in the job's data folder (the WebJobs SDK writes
    /// it); read at each scan.
    pub using_sdk: bool,
}

/// A job that can run: a [`JobDef`] whose script was found and whose
/// settings are valid, and the parts of it that matter to a process. It
/// shares the definition (a copy of its paths and script took about 300
/// bytes a job).
#[derive(Debug, Clone)]
pub struct Runnable {
    def: Arc<JobDef>,
    pub script: Script,
    pub settings: Arc<settings::Settings>,
}

/// Equal when a process would run the same way (not when, say, only
/// `disable.job` or a warning changed).
impl PartialEq for Runnable {
    fn eq(&self, other: &Runnable) -> bool {
        self.key() == other.key()
            && self.script_dir() == other.script_dir()
            && self.fingerprint() == other.fingerprint()
            && self.script == other.script
            && self.settings == other.settings
    }
}

impl Runnable {
    pub fn key(&self) -> &JobKey {
        &self.def.key
    }

    pub fn script_dir(&self) -> &Path {
        &self.def.script_dir
    }

    pub fn fingerprint(&self) -> u64 {
        self.def.fingerprint
    }
}

#[cfg(test)]
impl Runnable {
    /// A continuous job `j` running `run.sh` with bash from `dir`, for tests.
    pub fn example(dir: &Path, fingerprint: u64) -> Runnable {
        let settings = Arc::new(settings::Settings::defaults(JobKind::Continuous));
        let script = Script { file: "run.sh".into(), host: vec!["/bin/bash".into()], in_place_default: false };
        let def = JobDef {
            key: JobKey::new(JobKind::Continuous, "j"),
            dir: dir.to_path_buf(),
            script_dir: dir.to_path_buf(),
            disabled: false,
            fingerprint,
            script: Ok(script.clone()),
            settings: settings::Loaded { settings: Ok(settings.clone()), warnings: Vec::new() },
            using_sdk: false,
        };
        Runnable { def: Arc::new(def), script, settings }
    }
}

impl JobDef {
    /// Every error that keeps this job from running, as one line each.
    pub fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = &self.script {
            errors.push(e.to_string());
        }
        if let Err(problems) = &self.settings.settings {
            errors.extend(problems.iter().map(|p| p.to_string()));
        }
        errors
    }

    pub fn warnings(&self) -> Vec<String> {
        self.settings.warnings.iter().map(|p| format!("warning: {p}")).collect()
    }

    /// The runnable form, when there is no error.
    pub fn runnable(self: &Arc<Self>) -> Option<Arc<Runnable>> {
        let (Ok(script), Ok(settings)) = (&self.script, &self.settings.settings) else {
            return None;
        };
        Some(Arc::new(Runnable { def: self.clone(), script: script.clone(), settings: settings.clone() }))
    }
}

impl Runnable {
    /// Whether the job runs straight from its folder instead of a working copy.
    pub fn in_place(&self) -> bool {
        self.settings.is_in_place.unwrap_or(self.script.in_place_default)
    }
}

/// The folder holding jobs of `kind`.
pub fn kind_dir(config: &Config, kind: JobKind) -> PathBuf {
    crate::layout::kind_dir(&config.jobs_dir, kind)
}

/// Every job folder of every kind, sorted.
pub fn scan_all(config: &Config) -> Vec<JobDef> {
    let hosts = Hosts::new(config);
    JobKind::ALL
        .into_iter()
        .flat_map(|kind| job_names(config, kind).into_iter().map(move |name| JobKey::new(kind, name)))
        .filter_map(|key| scan_with(config, &hosts, &key))
        .collect()
}

/// One job folder; `None` when it no longer exists.
pub fn scan_job(config: &Config, key: &JobKey) -> Option<JobDef> {
    scan_with(config, &Hosts::new(config), key)
}

/// Names of the folders directly under `jobs/<kind>/`, and of links there
/// (a link that leads nowhere is listed as an invalid job, not left out);
/// loose files are ignored.
pub fn job_names(config: &Config, kind: JobKind) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(kind_dir(config, kind)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir() || e.file_type().is_ok_and(|t| t.is_symlink()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn scan_with(config: &Config, hosts: &Hosts, key: &JobKey) -> Option<JobDef> {
    let dir = crate::layout::job_dir(&config.jobs_dir, key);
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Some(read_job(config, hosts, key.clone(), dir)),
        Ok(_) => None,
        Err(e) => {
            // Only a link is listed when it leads nowhere; a missing folder is gone.
            let link = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink());
            link.then(|| {
                let why = if e.raw_os_error() == Some(libc::ELOOP) { "a loop of links" } else { "a link to nothing" };
                unusable_folder(
                    key,
                    dir,
                    format!(
                        "the job folder {} is {why} ({e})",
                        crate::layout::job_dir(&config.jobs_dir, key).display()
                    ),
                )
            })
        }
    }
}

/// A job whose folder cannot be used: listed, with why, never run.
fn unusable_folder(key: &JobKey, dir: PathBuf, why: String) -> JobDef {
    JobDef {
        key: key.clone(),
        script_dir: dir.clone(),
        dir,
        disabled: false,
        fingerprint: 0,
        script: Err(ScriptError::Unusable(why)),
        settings: Loaded { settings: Ok(Arc::new(settings::Settings::defaults(key.kind))), warnings: Vec::new() },
        using_sdk: false,
    }
}

/// Reads one job folder: descent, script, settings, fingerprint.
pub fn read_job_at(config: &Config, key: JobKey, dir: PathBuf) -> JobDef {
    read_job(config, &Hosts::new(config), key, dir)
}

fn read_job(config: &Config, hosts: &Hosts, key: JobKey, dir: PathBuf) -> JobDef {
    let using_sdk = config.job_data_dir(&key).join(SDK_MARKER).exists();
    let script_dir = descend(&dir);
    let fingerprint = fingerprint(&dir, &script_dir);
    let disabled = script_dir.join(DISABLE_FILE).exists();
    let settings = settings::load(&script_dir, key.kind);
    let script = match name_problem(&key.name) {
        None => choose_script(&script_dir).and_then(|(file, ext)| hosts.resolve(&script_dir, file, ext.as_deref())),
        Some(problem) => Err(ScriptError::Unusable(problem)),
    };
    JobDef { key, dir, script_dir, disabled, fingerprint, script, settings, using_sdk }
}

/// While a folder's only entry is a folder, look inside it.
fn descend(dir: &Path) -> PathBuf {
    let mut current = dir.to_path_buf();
    for _ in 0..32 {
        let Ok(entries) = std::fs::read_dir(&current) else {
            break;
        };
        let entries: Vec<_> = entries.flatten().take(2).collect();
        match entries.as_slice() {
            [only] if only.path().is_dir() => current = only.path(),
            _ => break,
        }
    }
    current
}

/// Script extensions in the order `run.<ext>` is looked for.
pub const HOST_ORDER: [&str; 8] = ["sh", "py", "js", "php", "jar", "ps1", "exe", "dll"];
const WINDOWS_ONLY: [&str; 2] = ["cmd", "bat"];

fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// Why a job has no script to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error(
        "no runnable script in {}: expected run.sh, run.py, run.js, run.php, run.jar, run.ps1, run.exe, run.dll, an executable named `run`, or any file with one of those extensions",
        dir.display()
    )]
    NoScript { dir: PathBuf },
    /// A script is there but cannot be run, or the folder cannot be read (the reason).
    #[error("{0}")]
    Unusable(String),
}

/// Picks the script: `run.<ext>` in host order, then an executable `run`,
/// then the first supported file in name order. Returns the file and its extension.
pub fn choose_script(dir: &Path) -> Result<(String, Option<String>), ScriptError> {
    if let Err(e) = std::fs::read_dir(dir)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name).unwrap_or_default();
        return Err(ScriptError::Unusable(format!(
            "cannot read the job folder {}: permission denied (the daemon runs as `{me}`; let it read the folder, e.g. chmod u+rx or chown)",
            dir.display()
        )));
    }
    let files = top_level_files(dir);
    let is_run = |name: &str, ext: &str| name.len() == 4 + ext.len() && name[..4].eq_ignore_ascii_case("run.");
    for ext in HOST_ORDER {
        if let Some(name) = files.iter().find(|n| extension(n).as_deref() == Some(ext) && is_run(n, ext)) {
            return Ok((name.clone(), Some(ext.to_string())));
        }
    }
    if files.iter().any(|n| n == "run") && is_executable(&dir.join("run")) {
        return Ok(("run".to_string(), None));
    }
    let supported = |n: &&String| extension(n).is_some_and(|e| HOST_ORDER.contains(&e.as_str()));
    if let Some(name) = files.iter().find(supported) {
        return Ok((name.clone(), extension(name)));
    }
    if let Some(name) = files.iter().find(|n| extension(n).is_some_and(|e| WINDOWS_ONLY.contains(&e.as_str()))) {
        return Err(ScriptError::Unusable(format!(
            "{name}: .cmd and .bat scripts cannot run on Linux; add a run.sh (or another supported script) instead"
        )));
    }
    Err(ScriptError::NoScript { dir: dir.to_path_buf() })
}

fn top_level_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        entries.flatten().filter(|e| e.path().is_file()).filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

/// The script hosts, with the daemon's overrides, and a cache of PATH look-ups.
pub struct Hosts {
    overrides: BTreeMap<String, Vec<String>>,
    path: Vec<PathBuf>,
}

impl Hosts {
    pub fn new(config: &Config) -> Hosts {
        let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        Hosts { overrides: config.interpreters.clone(), path }
    }

    fn default_host(&self, dir: &Path, file: &str, ext: &str) -> Vec<&'static str> {
        match ext {
            "sh" => vec!["bash"],
            "py" => vec!["python3"],
            "js" => vec!["node"],
            "php" => vec!["php"],
            "jar" => vec!["java", "-jar"],
            "ps1" => vec!["pwsh", "-File"],
            "dll" => vec!["dotnet"],
            "exe" if is_elf(&dir.join(file)) => vec![],
            "exe" if self.which("mono").is_some() => vec!["mono"],
            _ => vec!["dotnet"],
        }
    }

    /// Turns a chosen file into a [`Script`], or says which host is missing.
    fn resolve(&self, dir: &Path, file: String, ext: Option<&str>) -> Result<Script, ScriptError> {
        let host: Vec<String> = match ext {
            None => Vec::new(),
            Some(ext) => match self.overrides.get(ext) {
                Some(argv) => argv.clone(),
                None => self.default_host(dir, &file, ext).into_iter().map(String::from).collect(),
            },
        };
        let in_place_default = ext == Some("js");
        if host.is_empty() {
            if !is_executable(&dir.join(&file)) {
                return Err(ScriptError::Unusable(format!(
                    "{file} is a native executable without the execute bit; run `chmod +x {file}`"
                )));
            }
            return Ok(Script { file, host, in_place_default });
        }
        let program = self.which(&host[0]).ok_or_else(|| {
            let ext = ext.unwrap_or_default();
            ScriptError::Unusable(format!(
                "{} not found on PATH; install it or set interpreters.{ext} in the daemon configuration (needed to run {file})",
                host[0]
            ))
        })?;
        let mut host = host;
        host[0] = program.to_string_lossy().into_owned();
        Ok(Script { file, host, in_place_default })
    }

    /// PATH look-up, as a shell would do it.
    pub fn which(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let p = PathBuf::from(program);
            return is_executable(&p).then_some(p);
        }
        self.path.iter().map(|d| d.join(program)).find(|p| is_executable(p))
    }
}

/// A stable hash of what is in a job folder. `disable.job` is left out so that
/// stopping and starting a job is not mistaken for a new version of it.
/// A hash of what a job folder holds (paths and bytes, not times): the same
/// on every machine the same job was deployed to, however it was copied.
pub fn content_hash(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) if entry.file_name() != DISABLE_FILE => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for path in files {
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        let bytes = std::fs::read(&path).unwrap_or_default();
        for part in [rel.as_os_str().as_encoded_bytes(), b"\0", &bytes, b"\0"] {
            hash = (hash ^ fnv1a(part)).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn fingerprint(dir: &Path, script_dir: &Path) -> u64 {
    let mut entries: Vec<(PathBuf, u64)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in read.flatten() {
            let path = entry.path();
            if current == script_dir && entry.file_name() == DISABLE_FILE {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let mut h = fnv1a(&meta.size().to_le_bytes()) ^ meta.mtime_nsec() as u64;
            h = h.wrapping_mul(31) ^ meta.mtime() as u64 ^ u64::from(meta.mode()) << 40;
            if meta.is_symlink() {
                h ^= std::fs::read_link(&path).map(|t| fnv1a(t.as_os_str().as_encoded_bytes())).unwrap_or(0);
            } else if meta.is_dir() && entries.len() < 200_000 {
                stack.push(path.clone());
            }
            entries.push((path, h));
        }
    }
    entries.sort();
    entries.iter().fold(0xcbf2_9ce4_8422_2325, |acc, (path, h)| {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        (acc ^ fnv1a(rel.as_os_str().as_encoded_bytes()) ^ h).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What is wrong with the `then` of a job set, across jobs: a job named
/// that is not a triggered job of the set, and each loop (with its path).
pub fn chain_problems(defs: &[JobDef]) -> Vec<(JobKey, String)> {
    let then_of = |d: &JobDef| d.settings.settings.as_ref().ok().map(|s| s.then.clone()).unwrap_or_default();
    let triggered: BTreeMap<&str, crate::settings::Then> =
        defs.iter().filter(|d| d.key.kind == JobKind::Triggered).map(|d| (d.key.name.as_ref(), then_of(d))).collect();
    let mut problems = Vec::new();
    for d in defs {
        for child in then_of(d).all() {
            if !triggered.contains_key(child.as_str()) {
                problems.push((d.key.clone(), format!("then: there is no triggered job {child}")));
            }
        }
    }
    // Each loop once, told at the job it starts from (the smallest name in it).
    let mut told = std::collections::BTreeSet::new();
    for start in triggered.keys() {
        let mut path = vec![start.to_string()];
        find_loops(&triggered, &mut path, &mut |cycle| {
            let mut members: Vec<String> = cycle[..cycle.len() - 1].to_vec();
            members.sort();
            if cycle[0] == members[0] && told.insert(members) {
                let key = JobKey::new(JobKind::Triggered, &cycle[0]);
                problems.push((key, format!("then: a loop: {}", cycle.join(" → "))));
            }
        });
    }
    problems
}

fn find_loops(
    graph: &std::collections::BTreeMap<&str, crate::settings::Then>,
    path: &mut Vec<String>,
    found: &mut dyn FnMut(&[String]),
) {
    let Some(then) = graph.get(path.last().map(String::as_str).unwrap_or_default()) else { return };
    let children: std::collections::BTreeSet<&String> = then.all().collect();
    for child in children {
        if *child == path[0] {
            path.push(child.clone());
            found(path);
            path.pop();
        } else if !path.contains(child) && graph.contains_key(child.as_str()) {
            path.push(child.clone());
            find_loops(graph, path, found);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(dir: &Path, name: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(name), "x").unwrap();
    }
    fn chosen(dir: &Path) -> String {
        choose_script(dir).map(|(f, _)| f).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn run_files_win_in_host_order() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.sh", "run.js", "run.py", "run.dll"] {
            touch(d.path(), f);
        }
        assert_eq!(chosen(d.path()), "run.py");
        touch(d.path(), "RUN.SH");
        assert_eq!(chosen(d.path()), "RUN.SH");
    }

    #[test]
    fn otherwise_first_supported_file_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        for f in ["zeta.sh", "beta.py", "alpha.txt", "settings.job", "README"] {
            touch(d.path(), f);
        }
        assert_eq!(chosen(d.path()), "beta.py");
    }

    #[test]
    fn executable_run_without_extension() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "run");
        touch(d.path(), "helper.sh");
        assert_eq!(chosen(d.path()), "helper.sh", "a non-executable `run` is not a script");
        fs::set_permissions(d.path().join("run"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(chosen(d.path()), "run");
        touch(d.path(), "run.sh");
        assert_eq!(chosen(d.path()), "run.sh");
    }

    #[test]
    fn windows_scripts_are_refused_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "run.cmd");
        assert!(chosen(d.path()).contains(".cmd and .bat scripts cannot run on Linux"));
        touch(d.path(), "job.js");
        assert_eq!(chosen(d.path()), "job.js");
    }

    #[test]
    fn nothing_runnable() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "notes.txt");
        assert!(chosen(d.path()).starts_with("no runnable script"));
    }

    #[test]
    fn single_sub_folder_descent() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        touch(&deep, "run.sh");
        assert_eq!(descend(d.path()), deep);
        touch(&d.path().join("a"), "other.txt");
        assert_eq!(descend(d.path()), d.path().join("a"));
    }

    #[test]
    fn fingerprint_ignores_disable_job_only() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "run.sh");
        let before = fingerprint(d.path(), d.path());
        touch(d.path(), DISABLE_FILE);
        assert_eq!(fingerprint(d.path(), d.path()), before);
        touch(d.path(), "lib.sh");
        assert_ne!(fingerprint(d.path(), d.path()), before);
    }

    fn config_at(root: &Path) -> Config {
        let sources = crate::config::Sources { file: None, root: Some(root.to_path_buf()), listen: None };
        Config::load_with_env(&sources, &|_| None).unwrap()
    }

    #[test]
    fn missing_interpreter_is_a_per_job_error() {
        let d = tempfile::tempdir().unwrap();
        let mut config = config_at(d.path());
        config.interpreters.insert("py".into(), vec!["python-does-not-exist".into()]);
        touch(&d.path().join("jobs/continuous/p"), "run.py");
        touch(&d.path().join("jobs/continuous/s"), "run.sh");
        let jobs = scan_all(&config);
        assert_eq!(jobs.len(), 2);
        let err = jobs[0].script.clone().unwrap_err().to_string();
        assert!(err.starts_with("python-does-not-exist not found on PATH; install it or set interpreters.py"), "{err}");
        assert!(jobs[1].script.as_ref().unwrap().host[0].ends_with("/bash"));
    }

    #[test]
    fn discovery_ignores_loose_files_and_reports_bad_names() {
        let d = tempfile::tempdir().unwrap();
        let config = config_at(d.path());
        touch(&d.path().join("jobs/triggered"), "loose.sh");
        touch(&d.path().join("jobs/triggered/bad name"), "run.sh");
        touch(&d.path().join("jobs/triggered/good"), "run.sh");
        let jobs = scan_all(&config);
        let names: Vec<&str> = jobs.iter().map(|j| j.key.name.as_ref()).collect();
        assert_eq!(names, ["bad name", "good"]);
        assert!(jobs[0].errors()[0].contains("invalid job name"));
        assert!(jobs[1].errors().is_empty());
    }

    #[test]
    fn native_elf_exe_runs_directly_and_js_runs_in_place() {
        let d = tempfile::tempdir().unwrap();
        let config = config_at(d.path());
        let job = d.path().join("jobs/continuous/n");
        fs::create_dir_all(&job).unwrap();
        fs::copy("/bin/true", job.join("tool.exe")).unwrap();
        let def = scan_job(&config, &JobKey::new(JobKind::Continuous, "n")).unwrap();
        let script = def.script.unwrap();
        assert!(script.host.is_empty());
        touch(&d.path().join("jobs/continuous/j"), "app.js");
        let def = scan_job(&config, &JobKey::new(JobKind::Continuous, "j")).unwrap();
        assert!(Arc::new(def).runnable().unwrap().in_place());
    }
}
