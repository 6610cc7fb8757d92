//! A triggered job's queue over HTTP (our extension): queue a request
//! (`POST …/queue`, always queued whatever the overlap policy), list what is
//! queued or dead, cancel a queued request, queue a dead one again.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::runs::{accept, ask, not_found, refused};
use super::{ApiState, error};
use crate::queue::Entry;
use crate::triggered::Control;

/// `POST /api/triggeredwebjobs/{job}/queue?…`: as `…/run`, but queued even
/// while a run is active (`webjobs enqueue`).
pub async fn enqueue(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    accept(&state, &job, &query, &headers, body, true).await
}

/// `GET /api/triggeredwebjobs/{job}/queue[?limit=N][&id=ID]` → `{"count": N,
/// "requests": [...]}` in queue order (with `id`, that request if queued).
pub async fn list(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
    entries(&state, &job, false, limit, query.get("id").cloned()).await
}

/// `GET /api/triggeredwebjobs/{job}/dead` → the dead requests, newest first.
pub async fn dead(State(state): State<ApiState>, Path(job): Path<String>) -> Response {
    entries(&state, &job, true, usize::MAX, None).await
}

async fn entries(state: &ApiState, job: &str, dead: bool, limit: usize, id: Option<String>) -> Response {
    let Some(entries) = ask(state, job, |reply| Control::Queue { dead, limit, id, reply }).await else {
        return not_found(job);
    };
    let views: Vec<serde_json::Value> = entries.iter().map(view).collect();
    axum::Json(serde_json::json!({ "count": views.len(), "requests": views })).into_response()
}

/// `DELETE /api/triggeredwebjobs/{job}/queue/{id}`: cancels a queued request.
pub async fn remove(State(state): State<ApiState>, Path((job, id)): Path<(String, String)>) -> Response {
    let Some(answer) = ask(&state, &job, |reply| Control::Dequeue { id, reply }).await else {
        return not_found(&job);
    };
    state.mark_written();
    match answer {
        Ok(entry) => axum::Json(serde_json::json!({"request": entry.id, "status": "Cancelled"})).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /api/triggeredwebjobs/{job}/dead/{id}/retry`: queues a dead request
/// again (`id` is the request's, or one of its runs').
pub async fn retry(State(state): State<ApiState>, Path((job, id)): Path<(String, String)>) -> Response {
    let Some(answer) = ask(&state, &job, |reply| Control::Revive { id, reply }).await else {
        return not_found(&job);
    };
    state.mark_written();
    match answer {
        Ok(entry) => (StatusCode::ACCEPTED, axum::Json(view(&entry))).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// A request as the API shows it (times in RFC 3339).
fn view(e: &Entry) -> serde_json::Value {
    let time = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).ok();
    serde_json::json!({
        "id": e.id,
        "priority": e.priority,
        "queued_at": time(e.queued_ms),
        "due": e.due_ms.and_then(time),
        "attempts": e.attempts,
        "trigger": e.trigger,
        "arguments": e.arguments,
        "key": e.key,
        "correlation_id": e.correlation_id,
        "payload_bytes": e.payload,
        "runs": e.runs,
        "error": e.error,
    })
}
