//! Kudu's virtual file system, read-only and confined to the jobs' data:
//! `GET /api/vfs/data/jobs/…` (and its older twin `/vfs/…`) serves the log
//! files at the URLs the job JSON gives, and lists folders in Kudu's VFS JSON
//! shape. Nothing outside `data/jobs/` is reachable: `..` is refused, and a
//! link that leads out of the folder is not followed. `?follow=1` streams a
//! file as it grows (a live tail; `&from=N` starts at byte N); `?download=1` asks the browser to save it.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiState, base_url, error};
use crate::history;

/// Bytes read per chunk of a streamed file.
const CHUNK: usize = 64 * 1024;

/// One entry of a folder listing, with Kudu's field names.
#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    size: u64,
    mtime: String,
    crtime: String,
    mime: &'static str,
    href: String,
    /// The path inside the VFS (`/data/jobs/…`), never the server's.
    path: String,
}

/// `GET /api/vfs/{*path}` and `GET /vfs/{*path}`.
pub async fn get(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(relative) = confined(&path) else { return error(StatusCode::NOT_FOUND, "not found") };
    let root = crate::layout::jobs_data_dir(&state.config.data_dir);
    let target = root.join(&relative);
    let checked = {
        let (root, target) = (root.clone(), target.clone());
        tokio::task::spawn_blocking(move || inside(&root, &target)).await.unwrap_or(None)
    };
    let Some(meta) = checked else {
        // A run of another daemon of the cluster: its log is read there.
        if let Some(response) = super::cluster::remote_output(&state, &headers, &path, &relative, &query).await {
            return response;
        }
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if meta.is_dir() {
        let vfs_path = format!("/data/jobs/{}", relative.display()).trim_end_matches('/').to_string();
        let href = format!("{}/api/vfs{vfs_path}/", base_url(&headers));
        let entries = tokio::task::spawn_blocking(move || list(&target, &href, &vfs_path)).await.unwrap_or_default();
        return axum::Json(entries).into_response();
    }
    let flag = |k: &str| query.get(k).is_some_and(|v| v != "0" && v != "false");
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut response = if flag("follow") {
        // `from`: where to start (a client that already read the end of the file).
        let from = query.get("from").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0).min(meta.len());
        Body::from_stream(tail(target.clone(), run_dir_of(&target), from)).into_response()
    } else {
        let len = meta.len();
        let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|r| byte_range(r, len)) {
            None => None,
            Some(Some(range)) => Some(range),
            Some(None) => {
                let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, format!("the file has {len} bytes"));
                r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{len}").parse().expect("ascii"));
                return r;
            }
        };
        let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
        let file = match tokio::fs::File::open(&target).await {
            Ok(file) => file,
            Err(_) => return error(StatusCode::NOT_FOUND, "not found"),
        };
        let count = if len == 0 { 0 } else { end - start + 1 };
        let mut r = Body::from_stream(chunks(file, start, count)).into_response();
        r.headers_mut().insert(header::CONTENT_LENGTH, count.into());
        r.headers_mut().insert(header::ACCEPT_RANGES, "bytes".parse().expect("ascii"));
        if range.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}").parse().expect("ascii"));
        }
        r
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, mime(&name).parse().expect("static header"));
    h.insert("x-content-type-options", "nosniff".parse().expect("static header"));
    if flag("download")
        && let Ok(v) = format!("attachment; filename=\"{name}\"").parse()
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// The part after `data/jobs/` of a VFS path, if it stays inside.
fn confined(path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix("data/jobs").filter(|r| r.is_empty() || r.starts_with('/'))?;
    let mut out = PathBuf::new();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." || segment.contains('\0') {
            return None;
        }
        out.push(segment);
    }
    Some(out)
}

/// The metadata of `target` when it is a file or folder that really lies
/// under `root` (links resolved).
fn inside(root: &FsPath, target: &FsPath) -> Option<std::fs::Metadata> {
    let real_root = std::fs::canonicalize(root).ok()?;
    let real = std::fs::canonicalize(target).ok()?;
    if !real.starts_with(&real_root) {
        return None;
    }
    std::fs::metadata(&real).ok().filter(|m| m.is_file() || m.is_dir())
}

/// A folder's entries, folders first, then by name.
fn list(dir: &FsPath, href: &str, vfs_path: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().into_string().ok()?;
            let is_dir = meta.is_dir();
            let slash = if is_dir { "/" } else { "" };
            let time = |t: std::io::Result<std::time::SystemTime>| t.map(crate::logs::format_time).unwrap_or_default();
            Some(Entry {
                size: if is_dir { 0 } else { meta.len() },
                mtime: time(meta.modified()),
                crtime: time(meta.created()),
                mime: if is_dir { "inode/directory" } else { mime(&name) },
                href: format!("{href}{name}{slash}"),
                path: format!("{vfs_path}/{name}{slash}"),
                name,
            })
        })
        .collect();
    entries.sort_by(|a, b| (b.mime == "inode/directory").cmp(&(a.mime == "inode/directory")).then(a.name.cmp(&b.name)));
    entries
}

fn mime(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("txt" | "log") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ if name == crate::layout::RUN_STATUS || name.starts_with(crate::layout::STATUS_PREFIX) => "application/json",
        _ => "application/octet-stream",
    }
}

/// The run folder of a triggered run's output, so a followed output ends with the run.
fn run_dir_of(file: &FsPath) -> Option<PathBuf> {
    let dir = file.parent()?;
    let is_output = file.file_name().is_some_and(|n| n == crate::layout::OUTPUT_LOG);
    (is_output && dir.file_name().and_then(|n| n.to_str()).is_some_and(history::is_run_id)).then(|| dir.into())
}

/// One `Range: bytes=…` range of a file of `len` bytes, as inclusive
/// offsets; `None` when it cannot be satisfied (or is not one byte range).
fn byte_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => (len.checked_sub(suffix.parse::<u64>().ok()?.min(len))?, len.checked_sub(1)?),
        (start, "") => (start.parse().ok()?, len.checked_sub(1)?),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && start < len).then_some((start, end))
}

/// `count` bytes of a file from `start`, read in chunks: memory stays
/// bounded whatever the file's size.
fn chunks(file: tokio::fs::File, start: u64, count: u64) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    futures_util::stream::unfold((file, start, count, false), |(mut file, start, left, sought)| async move {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        if left == 0 {
            return None;
        }
        if !sought && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            return Some((Err(e), (file, start, 0, true)));
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), (file, start, left - n as u64, true)))
            }
            Err(e) => Some((Err(e), (file, start, 0, true))),
        }
    })
}

/// The bytes of `path` from `from`, then as they are appended. A followed
/// run output ends when the run has ended; a followed job log goes on until
/// the client leaves.
fn tail(
    path: PathBuf,
    run_dir: Option<PathBuf>,
    from: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    let finished =
        move || run_dir.as_ref().is_some_and(|d| history::read_status(d).is_some_and(|s| s.status.is_final()));
    futures_util::stream::unfold((from, false), move |(offset, done)| {
        let path = path.clone();
        let finished = finished.clone();
        async move {
            if done {
                return None;
            }
            loop {
                let ended = finished();
                let chunk = read_from(&path, offset).await;
                if !chunk.is_empty() {
                    let next = offset + chunk.len() as u64;
                    return Some((Ok(chunk), (next, false)));
                }
                if ended {
                    return None;
                }
                // Only while a client follows a live file.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

async fn read_from(path: &FsPath, offset: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else { return Vec::new() };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(1 << 20).read_to_end(&mut buf).await;
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_data_jobs_are_served() {
        assert_eq!(confined("data/jobs/continuous/a/job_log.txt"), Some(PathBuf::from("continuous/a/job_log.txt")));
        assert_eq!(confined("data/jobs/"), Some(PathBuf::new()));
        assert_eq!(confined("data/jobs"), Some(PathBuf::new()));
        for bad in ["data/api-token", "data/instances/x.sock", "data/jobs/../api-token", "data/jobsx", "etc/passwd"] {
            assert_eq!(confined(bad), None, "{bad}");
        }
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(byte_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(byte_range("bytes=1000-", 1000), None);
        assert_eq!(byte_range("bytes=5-1", 1000), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(byte_range("items=0-1", 1000), None);
    }

    #[test]
    fn a_link_out_of_the_folder_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("jobs");
        std::fs::create_dir_all(root.join("continuous/a")).unwrap();
        std::fs::write(d.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("continuous/a/job_log.1.txt")).unwrap();
        std::fs::write(root.join("continuous/a/job_log.txt"), "ok").unwrap();
        assert!(inside(&root, &root.join("continuous/a/job_log.1.txt")).is_none());
        assert!(inside(&root, &root.join("continuous/a/job_log.txt")).is_some());
    }
}
