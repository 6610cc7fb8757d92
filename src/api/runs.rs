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
pub(super) async fn ask<T>(state: &ApiState, job: &str, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let event = Event::Triggered { name: job.to_string(), control: make(tx) };
    state.events.send(event).await.ok()?;
    rx.await.ok()
}

pub(super) fn not_found(job: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no triggered job named `{job}`"))
}

/// `POST /api/triggeredwebjobs/{job}/run?arguments=…` → 202 with `Location`.
/// `arguments` is Kudu's raw string ([`crate::arguments`]); `arg=` (repeated,
/// our extension, used by the CLI) gives exact words instead. A request body
/// is the run's payload; `key`, `priority`, `correlation_id` and `at`/`in`
/// (a one-off run later) are our extensions (see [`request_from`]).
pub async fn run(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    accept(&state, &job, &query, &headers, body, false).await
}

/// Reads a request (with `queue`: queued whatever the overlap policy) and
/// hands it to the job.
pub(super) async fn accept(
    state: &ApiState,
    job: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: axum::body::Body,
    queue: bool,
) -> Response {
    match request_from(state, query, headers, body).await {
        Ok(mut request) => {
            request.queue |= queue;
            submit(state, job, headers, request).await
        }
        Err(response) => response,
    }
}

/// Hands a request to the job's actor and answers as Kudu does: 202 with
/// the run's `Location` when it started, 202 `queued` when it waits.
async fn submit(state: &ApiState, job: &str, headers: &HeaderMap, request: RunRequest) -> Response {
    let key = JobKey::new(JobKind::Triggered, job);
    let unknown = !state.catalog.borrow().jobs.contains_key(&key);
    if unknown && super::jobs::job_def(state, JobKind::Triggered, job).await.is_some() {
        // A job folder made a moment ago that the watcher has not loaded yet
        // (its quiet second): loaded now, so `mkdir … && webjobs run …` works.
        super::jobs::apply(state, &key).await;
    }
    let Some(answer) = ask(state, job, |reply| Control::Run { request: Box::new(request), reply }).await else {
        return not_found(job);
    };
    state.mark_written();
    match answer {
        Ok(Accepted::Started { run: id, request }) => {
            let url = format!("{}/api/triggeredwebjobs/{job}/history/{id}", base_url(headers));
            let body = serde_json::json!({"id": id, "url": url, "queued": false, "request": request});
            (StatusCode::ACCEPTED, [(header::LOCATION, url)], axum::Json(body)).into_response()
        }
        Ok(Accepted::Queued(id)) => {
            let url = format!("{}/api/triggeredwebjobs/{job}/queue", base_url(headers));
            let body = serde_json::json!({"queued": true, "request": id, "url": url});
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(e) => refused(e),
    }
}

/// The status of a refused request.
pub(super) fn refused(e: Refused) -> Response {
    let status = match &e {
        Refused::Running(_) | Refused::Stopped | Refused::Disabled(_) | Refused::Invalid(_) => StatusCode::CONFLICT,
        Refused::Duplicate(_) | Refused::TickTaken => StatusCode::CONFLICT,
        Refused::NoActiveRun(_) => StatusCode::NOT_FOUND,
        Refused::Storage { full: true, .. } => StatusCode::INSUFFICIENT_STORAGE,
        Refused::Storage { .. } | Refused::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// A run request from the query and body: `arguments=` or `arg=` (words),
/// `key=`, `priority=`, `correlation_id=` (or the `X-Correlation-Id`
/// header), `at=` (RFC 3339) or `in=` (`15m`, `90s`, `2h`), `queue=1`.
async fn request_from(
    state: &ApiState,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<RunRequest, Response> {
    let bad = |text: String| error(StatusCode::BAD_REQUEST, text);
    let one = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let words: Vec<String> = query.iter().filter(|(k, _)| k == "arg").map(|(_, v)| v.clone()).collect();
    let (arguments, text) = match one("arguments") {
        Some(_) if !words.is_empty() => {
            return Err(bad("give the arguments either as `arguments=` or as `arg=`, not both".into()));
        }
        Some(raw) => (crate::arguments::split(&raw), raw),
        None => {
            let text = crate::arguments::join(&words);
            (words, text)
        }
    };
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let mut request = RunRequest::new(format!("External - {agent}"), arguments, text);
    if let Some(p) = one("priority") {
        request.priority = match p.parse::<i32>() {
            Ok(n) if crate::queue::PRIORITY_RANGE.contains(&n) => n,
            _ => return Err(bad(format!("priority must be a whole number from -100 to 100, not {p:?}"))),
        };
    }
    request.key = one("key").filter(|k| !k.is_empty());
    let header_id = headers.get("x-correlation-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    request.correlation_id = one("correlation_id").or(header_id).filter(|c| !c.is_empty());
    for (name, value) in [("key", &request.key), ("correlation_id", &request.correlation_id)] {
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(bad(format!("{name} is longer than 256 bytes")));
        }
    }
    request.at = match (one("at"), one("in")) {
        (Some(_), Some(_)) => return Err(bad("give either `at` or `in`, not both".into())),
        (Some(at), None) => Some(crate::queue::parse_at(&at).map_err(bad)?),
        (None, Some(delay)) => {
            let delay = crate::queue::parse_in(&delay).map_err(bad)?;
            Some(jiff::Timestamp::now() + delay)
        }
        (None, None) => None,
    };
    request.queue = one("queue").is_some_and(|q| q != "0" && q != "false");
    request.payload = payload(state, headers, body).await?;
    Ok(request)
}

/// The request body, up to `max_payload_bytes` (413 beyond); none when empty.
async fn payload(state: &ApiState, headers: &HeaderMap, body: axum::body::Body) -> Result<Option<Vec<u8>>, Response> {
    let limit = state.config.api.max_payload;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the payload is larger than max_payload_bytes ({limit} bytes); raise it in the daemon's config"),
        )
    };
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(bytes) if bytes.is_empty() => Ok(None),
        Ok(bytes) => Ok(Some(bytes.to_vec())),
        Err(e) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            Err(too_large())
        }
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
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
    let runs: Vec<RunView> = match super::cluster::shared_runs(&state, &job, &base, None).await {
        Some(runs) => runs,
        None => history::run_ids(&data).iter().filter_map(|id| RunView::load(&base, &job, &data, id)).collect(),
    };
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
    let base = base_url(&headers);
    let local = RunView::load(&base, &job, &data, &id);
    let found = match local {
        Some(view) => Some(view),
        None => super::cluster::shared_runs(&state, &job, &base, Some(&id)).await.and_then(|mut v| v.pop()),
    };
    match found {
        Some(view) => axum::Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no run {id} of triggered job `{job}`")),
    }
}
