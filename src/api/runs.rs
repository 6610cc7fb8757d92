//! Triggered runs: start (`POST …/run`), cancel, history.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::views::RunView;
use super::{ApiState, base_url, error};
use crate::history;
use crate::key::{JobKey, JobKind, valid_name};
use crate::supervisor::Event;
use crate::triggered::{Accepted, Control, Refused, RunRequest};

/// Sends a control to the job's actor and waits for its answer; a closed
/// reply channel means the job does not exist.
async fn ask<T>(state: &ApiState, job: &str, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let event = Event::Triggered { name: job.to_string(), control: make(tx) };
    state.events.send(event).await.ok()?;
    rx.await.ok()
}

fn not_found(job: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no triggered job named \"{job}\""))
}

/// `POST /api/triggeredwebjobs/{job}/run?arguments=…` → 202 with `Location`.
/// `arguments` is Kudu's raw string ([`crate::arguments`]); `arg=` (repeated,
/// our extension, used by the CLI) gives exact words instead.
pub async fn run(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let words: Vec<String> = query.iter().filter(|(k, _)| k == "arg").map(|(_, v)| v.clone()).collect();
    let raw = query.iter().find(|(k, _)| k == "arguments").map(|(_, v)| v.clone());
    let (arguments, text) = match raw {
        Some(_) if !words.is_empty() => {
            return error(StatusCode::BAD_REQUEST, "give the arguments either as `arguments=` or as `arg=`, not both");
        }
        Some(raw) => (crate::arguments::split(&raw), raw),
        None => {
            let text = crate::arguments::join(&words);
            (words, text)
        }
    };
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let request = RunRequest { arguments, text, trigger: format!("External - {agent}") };
    let Some(answer) = ask(&state, &job, |reply| Control::Run { request: Box::new(request), reply }).await else {
        return not_found(&job);
    };
    state.mark_written();
    match answer {
        Ok(Accepted::Started(id)) => {
            let url = format!("{}/api/triggeredwebjobs/{job}/history/{id}", base_url(&headers));
            let body = serde_json::json!({"id": id, "url": url, "queued": false});
            (StatusCode::ACCEPTED, [(header::LOCATION, url)], axum::Json(body)).into_response()
        }
        Ok(Accepted::Queued) => (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"queued": true}))).into_response(),
        Err(e @ (Refused::Running(_) | Refused::Stopped | Refused::Disabled(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ Refused::Invalid(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/triggeredwebjobs/{job}/cancel[?run=ID]` (an extension).
pub async fn cancel(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let run = query.get("run").cloned();
    let Some(answer) = ask(&state, &job, |reply| Control::Cancel { run, reply }).await else {
        return not_found(&job);
    };
    match answer {
        Ok(id) => axum::Json(serde_json::json!({"id": id, "status": "Cancelled"})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

fn job_data(state: &ApiState, job: &str) -> Option<std::path::PathBuf> {
    let key = JobKey::new(JobKind::Triggered, job);
    let exists = valid_name(job) && crate::layout::job_dir(&state.config.jobs_dir, &key).is_dir();
    exists.then(|| state.config.job_data_dir(&key))
}

/// `GET /api/triggeredwebjobs/{job}/history` → `{"runs": [newest first]}`.
pub async fn history(State(state): State<ApiState>, headers: HeaderMap, Path(job): Path<String>) -> Response {
    let Some(data) = job_data(&state, &job) else { return not_found(&job) };
    let base = base_url(&headers);
    let runs: Vec<RunView> =
        history::run_ids(&data).iter().filter_map(|id| RunView::load(&base, &job, &data, id)).collect();
    // WebJobs' ETag: the latest run's id, status and end time.
    let latest = runs.first().map(|r| format!("{}{}{:?}", r.id, r.status, r.end_time)).unwrap_or_default();
    let etag = format!("\"{:016x}\"", crate::hash::fnv1a(format!("{latest}{}{base}", runs.len()).as_bytes()));
    let body = axum::body::Bytes::from(serde_json::to_vec(&serde_json::json!({ "runs": runs })).unwrap_or_default());
    super::with_etag(&headers, body, &etag)
}

/// `GET /api/triggeredwebjobs/{job}/history/{id}[?wait=SECONDS]`: with `wait`,
/// answers when the run has ended (or the wait is over).
pub async fn one_run(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((job, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(data) = job_data(&state, &job) else { return not_found(&job) };
    let wait = query.get("wait").and_then(|w| w.parse::<f64>().ok()).filter(|w| *w > 0.0);
    if let Some(seconds) = wait {
        let run = id.clone();
        let waited = ask(&state, &job, |reply| Control::Wait { run, reply });
        let _ = tokio::time::timeout(Duration::from_secs_f64(seconds.min(3600.0)), waited).await;
    }
    match RunView::load(&base_url(&headers), &job, &data, &id) {
        Some(view) => axum::Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no run {id} of triggered job \"{job}\"")),
    }
}
