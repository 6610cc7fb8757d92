//! Deploying a job over HTTP: `PUT /api/{type}webjobs/{job}` with a zip
//! (`Content-Type: application/zip`) or one file (named by
//! `Content-Disposition`), as WebJobs accepts them.
//!
//! The upload is unpacked into a staging folder beside the jobs (same file
//! system), checked like `webjobs validate` does, then swapped with the old
//! version in one atomic `renameat2(RENAME_EXCHANGE)`: the watcher never sees a
//! half-written job, and a refused upload leaves the old version untouched.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::views::JobView;
use super::{ApiState, base_url, error};
use crate::config::Config;
use crate::jobs::JobDef;
use crate::key::{JobKey, JobKind, name_problem};
use crate::layout::DISABLE_FILE;

/// Why an upload was not deployed. What is wrong with the upload (a damaged
/// zip, sizes that lie, names too long or clashing) is the client's to fix:
/// 400. A full disk is 507; anything else on the server's side, 500.
#[derive(Debug, thiserror::Error)]
enum DeployError {
    #[error("{0}")]
    Refused(String),
    #[error("no room to unpack the upload: {0}")]
    Full(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for DeployError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => DeployError::Full(e),
            _ => DeployError::Io(e),
        }
    }
}

impl DeployError {
    /// An error writing `name` (a path inside the upload): one the upload
    /// caused (a name too long, a file where a folder must go) refuses it.
    fn writing(name: &str, e: std::io::Error) -> DeployError {
        match e.raw_os_error() {
            Some(libc::ENAMETOOLONG) => {
                DeployError::Refused(format!("the name `{name}` is too long for the file system ({e})"))
            }
            Some(libc::ENOTDIR | libc::EISDIR | libc::EEXIST | libc::ENOTEMPTY) => DeployError::Refused(format!(
                "\"{name}\" clashes with another entry of the upload (a file and a folder of one name): {e}"
            )),
            _ => DeployError::from(e),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            DeployError::Refused(_) => StatusCode::BAD_REQUEST,
            DeployError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            DeployError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One deploy at a time: two uploads of one job never race to its folder.
static DEPLOYING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub async fn put(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(job): UrlPath<String>,
    body: axum::body::Bytes,
    kind: JobKind,
) -> Response {
    if let Some(problem) = name_problem(&job) {
        return error(StatusCode::BAD_REQUEST, problem);
    }
    let Some(filename) = disposition_filename(&headers) else {
        return error(StatusCode::BAD_REQUEST, "Missing Content-Disposition header.");
    };
    let is_zip = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/zip")));
    let config = state.config.clone();
    let key = JobKey::new(kind, &job);
    let target = key.clone();
    let outcome = tokio::task::spawn_blocking(move || deploy(&config, &target, &filename, &body, is_zip)).await;
    match outcome {
        Ok(Ok(def)) => {
            // Loaded before the answer: a `run` or `GET` right after it finds the new version.
            super::jobs::apply(&state, &key).await;
            super::hooks::deployed(&state, &headers, kind.as_str(), &job);
            let base = base_url(&headers);
            let loaded = state.catalog.borrow().jobs.get(&key).cloned();
            let view = match loaded {
                Some(entry) => JobView::from_catalog(&base, &entry),
                None => JobView::from_def(&base, &def),
            };
            axum::Json(view.redacted(&state.config)).into_response()
        }
        Ok(Err(refused @ DeployError::Refused(_))) => error(refused.status(), refused.to_string()),
        Ok(Err(e)) => error(e.status(), format!("deploy failed: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("deploy failed: {e}")),
    }
}

/// The file name of `Content-Disposition: attachment; filename="x.zip"`, without any folder.
fn disposition_filename(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let raw = value.split(';').find_map(|part| part.trim().strip_prefix("filename="))?;
    let name = raw.trim().trim_matches('"');
    let base = name.rsplit(['/', '\\']).next()?.to_string();
    (!base.is_empty() && base != "." && base != "..").then_some(base)
}

fn deploy(config: &Config, key: &JobKey, filename: &str, body: &[u8], is_zip: bool) -> Result<JobDef, DeployError> {
    let _one_at_a_time = DEPLOYING.lock().unwrap_or_else(|e| e.into_inner());
    let staging_root = crate::layout::staging_dir(&config.jobs_dir);
    std::fs::create_dir_all(&staging_root)?;
    let staging = staging_root.join(format!("{}-{}-{}", key.name, std::process::id(), nonce()));
    let result = (|| {
        std::fs::create_dir(&staging)?;
        if is_zip {
            unzip(body, &staging, config.api.max_unpacked)?;
        } else {
            std::fs::write(staging.join(filename), body).map_err(|e| DeployError::writing(filename, e))?;
        }
        let def = crate::jobs::read_job_at(config, key.clone(), staging.clone());
        check(&def)?;
        let target = crate::layout::job_dir(&config.jobs_dir, key);
        keep_disabled(&target, &def.script_dir)?;
        std::fs::create_dir_all(crate::layout::kind_dir(&config.jobs_dir, key.kind))?;
        swap_in(&staging, &target)?;
        Ok(crate::jobs::read_job_at(config, key.clone(), target))
    })();
    // A file swapped out of the way (where a job folder should have been) lands here too.
    let _ = std::fs::remove_dir_all(&staging).or_else(|_| std::fs::remove_file(&staging));
    result
}

fn nonce() -> u64 {
    crate::hash::fnv1a(format!("{:?}", std::time::SystemTime::now()).as_bytes())
}

/// A new version must be runnable and its settings valid.
fn check(def: &JobDef) -> Result<(), DeployError> {
    if let Err(e) = &def.script {
        let hint = match e {
            crate::jobs::ScriptError::NoScript { .. } => "No runnable script file was found.".to_string(),
            other => other.to_string(),
        };
        return Err(DeployError::Refused(hint));
    }
    if let Err(problems) = &def.settings.settings {
        let messages: Vec<String> =
            problems.iter().map(|p| format!("settings.job: key `{}`: {}", p.key, p.message)).collect();
        return Err(DeployError::Refused(messages.join("; ")));
    }
    Ok(())
}

/// A stopped job stays stopped across a deploy.
fn keep_disabled(old: &Path, new_script_dir: &Path) -> std::io::Result<()> {
    let Some(old_def_dir) = std::fs::read_dir(old).ok().map(|_| old.to_path_buf()) else { return Ok(()) };
    let disabled = walk_for(&old_def_dir, DISABLE_FILE);
    if disabled && !new_script_dir.join(DISABLE_FILE).exists() {
        std::fs::write(new_script_dir.join(DISABLE_FILE), b"")?;
    }
    Ok(())
}

fn walk_for(dir: &Path, name: &str) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name() == name {
                return true;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    false
}

/// Puts `staging` at `target` atomically; the old version ends up at `staging`.
fn swap_in(staging: &Path, target: &Path) -> std::io::Result<()> {
    if !target.exists() {
        return std::fs::rename(staging, target);
    }
    let (a, b) = (c_path(staging)?, c_path(target)?);
    // SAFETY: two valid NUL-terminated paths; the flags ask for an atomic exchange.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Unpacks a zip, refusing it whole if any entry would land outside the folder
/// (`..`, an absolute path), is a link, or if it unpacks to more than `max` bytes.
fn unzip(body: &[u8], into: &Path, max: u64) -> Result<(), DeployError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body))
        .map_err(|e| DeployError::Refused(format!("not a valid zip file: {e}")))?;
    let mut planned: Vec<(usize, PathBuf)> = Vec::new();
    let mut declared = 0u64;
    for i in 0..archive.len() {
        let entry =
            archive.by_index_raw(i).map_err(|e| DeployError::Refused(format!("unreadable zip entry {i}: {e}")))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .map_err(|e| DeployError::Refused(format!("zip entry {i} has an unreadable name: {e}")))?;
        let relative = safe_relative(&name).ok_or_else(|| {
            DeployError::Refused(format!(
                "zip entry `{name}` points outside the job folder (absolute path or `..`); refused"
            ))
        })?;
        if entry.is_symlink() {
            return Err(DeployError::Refused(format!("zip entry `{name}` is a link; links are refused")));
        }
        declared = declared.saturating_add(entry.size());
        planned.push((i, relative));
    }
    if declared > max {
        return Err(DeployError::Refused(format!(
            "the zip unpacks to {declared} bytes, more than max_unpacked_bytes ({max})"
        )));
    }
    let mut written = 0u64;
    for (i, relative) in planned {
        let mut entry =
            archive.by_index(i).map_err(|e| DeployError::Refused(format!("unreadable zip entry {i}: {e}")))?;
        let name = relative.display().to_string();
        let path = into.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| DeployError::writing(&name, e))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DeployError::writing(&name, e))?;
        }
        let mut out = std::fs::File::create(&path).map_err(|e| DeployError::writing(&name, e))?;
        written += copy_entry(&mut entry, &mut out, &name, max - written)?;
        if written > max {
            return Err(DeployError::Refused(format!("the zip unpacks to more than max_unpacked_bytes ({max})")));
        }
        if let Some(mode) = entry.unix_mode() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o755))?;
        }
    }
    Ok(())
}

/// Copies one zip entry out, stopping past `room` bytes (the count then says
/// so). An entry whose data does not match its header (a size or checksum
/// that lies) refuses the upload.
fn copy_entry(entry: &mut impl Read, out: &mut std::fs::File, name: &str, room: u64) -> Result<u64, DeployError> {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DeployError::Refused(format!("zip entry `{name}` is damaged: {e}"))),
        };
        copied += n as u64;
        if copied > room {
            return Ok(copied);
        }
        out.write_all(&buf[..n]).map_err(|e| DeployError::writing(name, e))?;
    }
}

/// A zip entry name as a relative path inside the job, or `None` if it escapes.
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') || name.starts_with('\\') || name.contains('\0') || name.contains('\\') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_that_escape_are_refused() {
        assert_eq!(safe_relative("a/b.sh"), Some(PathBuf::from("a/b.sh")));
        assert_eq!(safe_relative("./run.sh"), Some(PathBuf::from("run.sh")));
        for bad in ["../x", "a/../../x", "/etc/passwd", "..", "a\\..\\x", "C:\\x"] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_disposition_names_a_file_without_folders() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_DISPOSITION, "attachment; filename=\"../../evil.sh\"".parse().unwrap());
        assert_eq!(disposition_filename(&h).as_deref(), Some("evil.sh"));
        h.insert(header::CONTENT_DISPOSITION, "attachment; filename=run.py".parse().unwrap());
        assert_eq!(disposition_filename(&h).as_deref(), Some("run.py"));
        h.insert(header::CONTENT_DISPOSITION, "attachment; filename=\"..\"".parse().unwrap());
        assert_eq!(disposition_filename(&h), None);
    }
}
