//! Kudu's web hooks: `GET/POST /api/hooks`, `GET/DELETE /api/hooks/{id}`
//! (stored by [`crate::hooks`]), and what they are sent: `TriggeredJobFinished`
//! with the run's JSON as the history API shows it, after every run;
//! `PostDeployment` after a deploy through the API. Both go through the
//! outbox (kept across a restart, retried; a 410 answer unsubscribes).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;

use super::views::RunView;
use super::{ApiState, base_url, error};
use crate::hooks::{self, Subscribed};

pub async fn list(State(state): State<ApiState>) -> Response {
    let data = state.config.data_dir.clone();
    let all = tokio::task::spawn_blocking(move || hooks::all(&data)).await.unwrap_or_default();
    axum::Json(all).into_response()
}

pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let data = state.config.data_dir.clone();
    let all = tokio::task::spawn_blocking(move || hooks::all(&data)).await.unwrap_or_default();
    match all.into_iter().find(|h| h.id.eq_ignore_ascii_case(&id)) {
        Some(hook) => axum::Json(hook).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no web hook {id}")),
    }
}

/// The body of a subscription (Kudu's `WebHook`).
#[derive(serde::Deserialize)]
pub struct Subscription {
    url: String,
    event: String,
    #[serde(default)]
    insecure_ssl: bool,
}

pub async fn subscribe(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let Ok(wanted) = serde_json::from_slice::<Subscription>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"expected a JSON object {"url": "https://…", "event": "TriggeredJobFinished" or "PostDeployment", "insecure_ssl": false}"#,
        );
    };
    let url = wanted.url.trim().to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(&url).is_err() {
        return error(StatusCode::BAD_REQUEST, format!("\"{url}\" is not an http:// or https:// URL"));
    }
    let Some(event) = hooks::EVENTS.iter().find(|e| e.eq_ignore_ascii_case(&wanted.event)) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown event `{}` (known: {})", wanted.event, hooks::EVENTS.join(", ")),
        );
    };
    let data = state.config.data_dir.clone();
    let insecure = wanted.insecure_ssl;
    let done = tokio::task::spawn_blocking(move || hooks::subscribe(&data, event, &url, insecure)).await;
    match done {
        Ok(Ok(Subscribed::Added(hook) | Subscribed::Existing(hook))) => {
            (StatusCode::CREATED, axum::Json(hook)).into_response()
        }
        Ok(Ok(Subscribed::Conflict(hook))) => error(
            StatusCode::CONFLICT,
            format!(
                "{} is subscribed to {} already (hook {}); one event per URL, as in Kudu",
                hook.url, hook.event, hook.id
            ),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the web hook: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Removes a hook; 200 whether or not it was there, as in Kudu.
pub async fn unsubscribe(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let data = state.config.data_dir.clone();
    match tokio::task::spawn_blocking(move || hooks::remove(&data, &id)).await {
        Ok(Ok(_)) => StatusCode::OK.into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove the web hook: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/notifications`: what waits in the outbox and what was given up
/// (`{"pending": [...], "failed": [...]}`, oldest first, as `webjobs notifications --json`).
pub async fn notifications(State(state): State<ApiState>) -> Response {
    let dir = state.config.data_dir.join(crate::layout::OUTBOX);
    let (pending, failed) = tokio::task::spawn_blocking(move || crate::outbox::read(&dir)).await.unwrap_or_default();
    axum::Json(serde_json::json!({"pending": pending, "failed": failed})).into_response()
}

/// Stores a notification of `event` with `body` for every hook subscribed to it.
fn notify(state: &ApiState, event: &str, job: &str, body: &serde_json::Value) {
    for hook in hooks::subscribed(&state.config.data_dir, event) {
        if let Err(e) =
            state.shared.outbox.add_body(event, job, &hook.url, body.clone(), Some(crate::outbox::Via::Hook(&hook)))
        {
            tracing::error!(hook = %hook.id, error = %e, "cannot store a web hook notification");
        }
    }
}

/// After a deploy through the API: `PostDeployment`, with what Kudu's
/// deployment record says that applies here.
pub fn deployed(state: &ApiState, headers: &HeaderMap, kind: &str, job: &str) {
    let now = crate::logs::format_time(std::time::SystemTime::now());
    let body = serde_json::json!({
        "id": format!("{:x}", crate::queue::random()),
        "status": 4,
        "status_text": "Success",
        "author": "webjobs",
        "deployer": "webjobs",
        "message": format!("{kind} job {job} deployed through the API"),
        "start_time": now,
        "end_time": now,
        "complete": true,
        "active": true,
        "url": format!("{}/api/{kind}webjobs/{job}", base_url(headers)),
        "site_name": state.config.instance_id,
    });
    let state = state.clone();
    let job = job.to_string();
    tokio::task::spawn_blocking(move || notify(&state, "PostDeployment", &job, &body));
}

/// Sends `TriggeredJobFinished` after every run, until every job has stopped.
pub async fn finished_runs(state: ApiState, base: String) {
    let (_, mut events) = state.shared.events.subscribe(None);
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "web hooks fell behind the event stream; some TriggeredJobFinished were not sent"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if event.kind == "daemon.stopped" {
            return;
        }
        if event.kind != "run.ended" {
            continue;
        }
        let (Some(run), Some(detail)) = (&event.run, &event.detail) else { continue };
        let Ok(status) = serde_json::from_str::<crate::history::RunStatus>(detail.get()) else { continue };
        let body = serde_json::to_value(RunView::new(&base, &event.job, run, status)).unwrap_or_default();
        let (state, job) = (state.clone(), event.job.clone());
        let _ = tokio::task::spawn_blocking(move || notify(&state, "TriggeredJobFinished", &job, &body)).await;
    }
}
