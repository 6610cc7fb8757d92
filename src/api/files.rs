//! Log files at the URLs the JSON gives (`/vfs/data/jobs/…`), read-only, and
//! nothing else of the disk: every path segment is checked against the shapes
//! of job names, run ids and log file names. `?follow=1` streams the file as
//! it grows (a live tail); `?download=1` asks the browser to save it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiState, error};
use crate::history::{self, is_run_id};
use crate::jobs::{JobKey, JobKind, valid_name};

/// Files a job's data folder may show.
fn allowed(kind: JobKind, file: &str) -> bool {
    let rotated = |stem: &str, ext: &str| {
        file.strip_prefix(stem).and_then(|rest| rest.strip_suffix(ext)).is_some_and(|mid| {
            mid.is_empty()
                || mid.strip_prefix('.').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    match kind {
        JobKind::Continuous => rotated("job_log", ".txt"),
        JobKind::Triggered => rotated("job_scheduler", ".log"),
    }
}

/// `GET /vfs/data/jobs/{kind}/{job}/{file}`: a job's log (continuous) or scheduler log.
pub async fn job_file(
    State(state): State<ApiState>,
    Path((kind, job, file)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(kind) = JobKind::parse(&kind) else { return error(StatusCode::NOT_FOUND, "not found") };
    if !valid_name(&job) || !allowed(kind, &file) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let path = state.config.job_data_dir(&JobKey::new(kind, &job)).join(&file);
    serve(path, &query, None).await
}

/// `GET /vfs/data/jobs/triggered/{job}/{id}/output_log.txt`: a run's output.
pub async fn run_output(
    State(state): State<ApiState>,
    Path((job, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !valid_name(&job) || !is_run_id(&id) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let dir = state.config.job_data_dir(&JobKey::new(JobKind::Triggered, &job)).join(&id);
    serve(dir.join("output_log.txt"), &query, Some(dir)).await
}

/// The file, whole, or followed. A followed run output ends when the run has
/// ended; a followed job log goes on until the client leaves.
async fn serve(path: PathBuf, query: &HashMap<String, String>, run_dir: Option<PathBuf>) -> Response {
    let flag = |k: &str| query.get(k).is_some_and(|v| v != "0" && v != "false");
    if !path.is_file() {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut response = if flag("follow") {
        Body::from_stream(tail(path, run_dir)).into_response()
    } else {
        match tokio::fs::read(&path).await {
            Ok(bytes) => bytes.into_response(),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    headers.insert("x-content-type-options", "nosniff".parse().expect("static header"));
    if flag("download")
        && let Ok(v) = format!("attachment; filename=\"{name}\"").parse()
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// The bytes of `path` from the start, then as they are appended.
fn tail(path: PathBuf, run_dir: Option<PathBuf>) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    let finished =
        move || run_dir.as_ref().is_some_and(|d| history::read_status(d).is_some_and(|s| s.status.is_final()));
    futures_util::stream::unfold((0u64, false), move |(offset, done)| {
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

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
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
    fn only_log_files_are_served() {
        for ok in ["job_log.txt", "job_log.1.txt", "job_log.12.txt"] {
            assert!(allowed(JobKind::Continuous, ok), "{ok}");
        }
        for bad in
            ["status_a1", "job_log.txt.bak", "../x", "job_log..txt", "job_log.a.txt", "singleton.job.lock", "api-token"]
        {
            assert!(!allowed(JobKind::Continuous, bad), "{bad}");
        }
        assert!(allowed(JobKind::Triggered, "job_scheduler.log"));
        assert!(!allowed(JobKind::Triggered, "job_log.txt"));
    }
}
