//! Jobs: list, get, start/stop, settings, delete.

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::views::JobView;
use super::{ApiState, ListCache, accepts_gzip, base_url, error, json_response};
use crate::jobs::{DISABLE_FILE, JobDef, JobKey, JobKind, valid_name};
use crate::supervisor::{CatalogEntry, Live};

/// `GET|PUT|DELETE /api/{kind}webjobs/{job}`, its settings, and the list of one kind.
pub fn kind_routes(kind: JobKind) -> Router<ApiState> {
    let prefix = format!("/api/{}webjobs", kind.as_str());
    Router::new()
        .route(&prefix, get(move |s, h| list(s, h, Some(kind))))
        .route(
            &format!("{prefix}/{{job}}"),
            get(move |s, h, p| get_job(s, h, p, kind))
                .put(move |s, h, p, b| super::deploy::put(s, h, p, b, kind))
                .delete(move |s, p| delete(s, p, kind)),
        )
        .route(
            &format!("{prefix}/{{job}}/settings"),
            get(move |s, p| get_settings(s, p, kind)).put(move |s, p, b| put_settings(s, p, b, kind)),
        )
}

pub async fn list_all(state: State<ApiState>, headers: HeaderMap) -> Response {
    list(state, headers, None).await
}

/// The job list: rendered once per change of anything, then served from memory.
async fn list(State(state): State<ApiState>, headers: HeaderMap, kind: Option<JobKind>) -> Response {
    let base = base_url(&headers);
    let generation = state.shared.generation.load(std::sync::atomic::Ordering::Acquire);
    let key = (generation, base.clone(), kind);
    let gzip = accepts_gzip(&headers);
    let mut cache = state.list_cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.as_ref().is_none_or(|c| c.key != key) {
        let catalog = state.catalog.borrow().clone();
        let views: Vec<JobView> = catalog
            .jobs
            .values()
            .filter(|e| kind.is_none_or(|k| e.def.key.kind == k))
            .map(|e| JobView::from_catalog(&base, e))
            .collect();
        let body = axum::body::Bytes::from(serde_json::to_vec(&views).unwrap_or_default());
        let etag = format!("\"{:016x}\"", crate::config::fnv1a(&body));
        *cache = Some(ListCache { key, body, gzip: None, etag });
    }
    let c = cache.as_mut().expect("filled above");
    if gzip && c.gzip.is_none() {
        c.gzip = Some(super::gzip(&c.body));
    }
    let (body, compressed, etag) = (c.body.clone(), c.gzip.clone().filter(|_| gzip), c.etag.clone());
    drop(cache);
    json_response(&headers, body, compressed, &etag)
}

fn entry(state: &ApiState, kind: JobKind, job: &str) -> Option<CatalogEntry> {
    state.catalog.borrow().jobs.get(&JobKey::new(kind, job)).cloned()
}

fn not_found(kind: JobKind, job: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no {} job named \"{job}\"", kind.as_str()))
}

/// The job's folder on disk (for writes), if it exists.
fn job_dir(state: &ApiState, kind: JobKind, job: &str) -> Option<JobDef> {
    if !valid_name(job) {
        return None;
    }
    crate::jobs::scan_job(&state.config, &JobKey::new(kind, job))
}

async fn get_job(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(job): Path<String>,
    kind: JobKind,
) -> Response {
    let Some(entry) = entry(&state, kind, &job) else { return not_found(kind, &job) };
    let mut view = JobView::from_catalog(&base_url(&headers), &entry);
    if kind == JobKind::Continuous {
        // Every daemon sharing the data folder: "<instance> - <Status>" lines.
        let data = state.config.job_data_dir(&entry.def.key);
        let lines: Vec<String> = crate::status::read_all(&data)
            .iter()
            .filter(|s| crate::coordination::instance_alive(&state.config.data_dir, &s.instance))
            .map(|s| format!("{} - {}", s.instance, s.status.as_str()))
            .collect();
        if !lines.is_empty() {
            view.detailed_status = Some(lines.join("\r\n"));
        }
    }
    axum::Json(view).into_response()
}

/// `POST /api/continuouswebjobs/{job}/start`: removes `disable.job`.
pub async fn start(State(state): State<ApiState>, Path(job): Path<String>) -> Response {
    toggle(&state, &job, true)
}

/// `POST /api/continuouswebjobs/{job}/stop`: writes `disable.job` (persisted).
pub async fn stop(State(state): State<ApiState>, Path(job): Path<String>) -> Response {
    toggle(&state, &job, false)
}

fn toggle(state: &ApiState, job: &str, start: bool) -> Response {
    let Some(def) = job_dir(state, JobKind::Continuous, job) else { return not_found(JobKind::Continuous, job) };
    let file = def.script_dir.join(DISABLE_FILE);
    let result = if start {
        std::fs::remove_file(&file).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
    } else {
        std::fs::write(&file, b"")
    };
    match result {
        Ok(()) => axum::Json(serde_json::json!({"name": job, "disabled": !start})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, format!("cannot change {}: {e}", file.display())),
    }
}

/// `GET …/settings`: the settings.job object as written (`{}` when there is none).
async fn get_settings(State(state): State<ApiState>, Path(job): Path<String>, kind: JobKind) -> Response {
    let Some(def) = job_dir(&state, kind, &job) else { return not_found(kind, &job) };
    let text = std::fs::read_to_string(def.script_dir.join(crate::settings::FILE_NAME)).unwrap_or_default();
    let value = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or(serde_json::json!({}));
    let mut response = axum::Json(value).into_response();
    if let Err(problems) = &def.settings.settings {
        let message = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        if let Ok(v) = axum::http::HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
            response.headers_mut().insert("x-webjobs-settings-error", v);
        }
    }
    response
}

/// `PUT …/settings`: validated first; on any problem 400 with every problem and
/// the file untouched; else written atomically (the job reloads through the watcher).
async fn put_settings(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    body: axum::body::Bytes,
    kind: JobKind,
) -> Response {
    let Some(def) = job_dir(&state, kind, &job) else { return not_found(kind, &job) };
    let path = def.script_dir.join(crate::settings::FILE_NAME);
    let text = String::from_utf8_lossy(&body);
    let loaded = crate::settings::parse(&path, &text, kind);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    if let Err(problems) = loaded.settings {
        let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let body = serde_json::json!({"error": messages.join("; "), "problems": messages, "warnings": warnings});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let tmp = def.script_dir.join(".settings.job.tmp");
    if let Err(e) = std::fs::write(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, &path)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write {}: {e}", path.display()));
    }
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    axum::Json(serde_json::json!({"settings": value, "warnings": warnings})).into_response()
}

/// `DELETE /api/{kind}webjobs/{job}`: the job is stopped (by the stop
/// protocol), then its folder and its data are removed.
async fn delete(State(state): State<ApiState>, Path(job): Path<String>, kind: JobKind) -> Response {
    let Some(def) = job_dir(&state, kind, &job) else { return not_found(kind, &job) };
    let trash =
        state.config.jobs_dir.join(super::deploy::STAGING).join(format!("deleted-{job}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(trash.parent().unwrap_or(&state.config.jobs_dir));
    if let Err(e) = std::fs::rename(&def.dir, &trash) {
        return error(StatusCode::CONFLICT, format!("cannot remove {}: {e}", def.dir.display()));
    }
    let live = entry(&state, kind, &job).map(|e| e.live);
    let changes = crate::supervisor::Changes { jobs: [def.key.clone()].into_iter().collect(), full: false };
    let _ = state.events.send(crate::supervisor::Event::Changed(changes)).await;
    let grace = def.settings.settings.as_ref().map(|s| s.stopping_wait_time).unwrap_or(Duration::from_secs(30));
    if let Some(live) = live {
        wait_actor_gone(live, grace + Duration::from_secs(15)).await;
    }
    let _ = std::fs::remove_dir_all(&trash);
    let data: PathBuf = state.config.job_data_dir(&def.key);
    let _ = std::fs::remove_dir_all(&data);
    axum::Json(serde_json::json!({"name": job, "deleted": true})).into_response()
}

/// Waits until the job's actor has ended (its status channel closes).
async fn wait_actor_gone(live: Live, limit: Duration) {
    async fn closed<T>(mut rx: tokio::sync::watch::Receiver<T>) {
        while rx.changed().await.is_ok() {}
    }
    let wait = async move {
        match live {
            Live::Continuous(rx) => closed(rx).await,
            Live::Triggered(rx) => closed(rx).await,
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
}
