//! The cluster as one: with PostgreSQL, any daemon's API shows every run of
//! the cluster (the shared history) and reads a run's log from the daemon
//! that ran it, or the last 64 KiB kept in the database when that daemon is
//! gone; `GET /api/cluster` lists the daemons and the job versions they run.

use std::collections::HashMap;
use std::path::Path as FsPath;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::views::RunView;
use super::{ApiState, error};
use crate::coordination::postgres::SharedRun;
use crate::key::{JobKey, JobKind};

/// Marks a request one daemon forwards to another (never forwarded again).
const PROXIED: &str = "x-webjobs-proxied";

fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(2)).build().unwrap_or_default()
    })
}

/// The runs of a triggered job across the cluster, newest first (with
/// `id`, that run): this daemon's own runs from their folders (fresher:
/// live progress), the others' from the database. `None` without a database.
pub async fn shared_runs(state: &ApiState, job: &str, base: &str, id: Option<&str>) -> Option<Vec<RunView>> {
    let pg = state.shared.coordinator.postgres()?;
    let key = JobKey::new(JobKind::Triggered, job);
    let limit = i64::from(state.config.switches.history_size.max(1)) * 4;
    let rows = match pg.runs(&key, id, limit).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(job, error = %e, "the cluster's history cannot be read; showing this daemon's runs");
            return None;
        }
    };
    let data = state.config.job_data_dir(&key);
    let mine = &state.shared.instance;
    let mut views: Vec<RunView> = Vec::with_capacity(rows.len());
    for SharedRun { id, instance, status, .. } in rows {
        let local = (instance.as_str() == mine.as_ref()).then(|| RunView::load(base, job, &data, &id)).flatten();
        views.push(local.unwrap_or_else(|| RunView::new(base, job, &id, status)));
    }
    views.truncate(state.config.switches.history_size.max(1) as usize);
    Some(views)
}

/// `…/triggered/{job}/{run}/output_log.txt` of a run this daemon does not
/// have: read from the daemon that ran it (same credentials), else the end
/// of its output kept in the database. `None`: not such a file, or no database.
pub async fn remote_output(
    state: &ApiState,
    headers: &HeaderMap,
    path: &str,
    relative: &FsPath,
    query: &HashMap<String, String>,
) -> Option<Response> {
    let pg = state.shared.coordinator.postgres()?;
    let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    let ["triggered", job, id, crate::layout::OUTPUT_LOG] = parts.as_slice() else { return None };
    let key = JobKey::new(JobKind::Triggered, *job);
    let runs = pg.runs(&key, Some(id), 4).await.ok()?;
    let run = runs.into_iter().find(|r| *r.instance != *state.shared.instance)?;
    if !headers.contains_key(PROXIED)
        && let Some(api) = pg.api_of(&run.instance).await
        && let Some(response) = forward(&api, path, headers, query).await
    {
        return Some(response);
    }
    let tail = run.output_tail.unwrap_or_default();
    let note = format!(
        "instance {} is not reachable: the last {} bytes kept in the cluster's history",
        run.instance,
        tail.len()
    );
    let mut response = (StatusCode::OK, tail).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert("x-webjobs-output", HeaderValue::from_str(&note).unwrap_or(HeaderValue::from_static("tail")));
    Some(response)
}

/// Reads `path` from the API at `api`, streamed back as it comes.
async fn forward(api: &str, path: &str, headers: &HeaderMap, query: &HashMap<String, String>) -> Option<Response> {
    let mut url = reqwest::Url::parse(&format!("{}/api/vfs/{path}", api.trim_end_matches('/'))).ok()?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query.iter());
    }
    let mut request = client().get(url);
    for name in [header::AUTHORIZATION, header::RANGE] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value.clone());
        }
    }
    let answer = request.header(PROXIED, "1").send().await.ok()?;
    let status = StatusCode::from_u16(answer.status().as_u16()).ok()?;
    if status == StatusCode::NOT_FOUND || status.is_server_error() {
        return None;
    }
    let mut response = Response::builder().status(status);
    for name in [header::CONTENT_TYPE, header::CONTENT_RANGE, header::CONTENT_LENGTH, header::CONTENT_DISPOSITION] {
        if let Some(value) =
            answer.headers().get(name.as_str()).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            response = response.header(name, value);
        }
    }
    response.body(Body::from_stream(answer.bytes_stream())).ok()
}

/// `GET /api/cluster`: the daemons sharing the database, what each runs,
/// and the jobs whose content differs between them (version skew).
pub async fn cluster(State(state): State<ApiState>) -> Response {
    let Some(pg) = state.shared.coordinator.postgres() else {
        let body =
            serde_json::json!({"coordination": state.shared.coordinator.describe(), "instances": [], "skew": {}});
        return axum::Json(body).into_response();
    };
    match pg.cluster().await {
        Ok(view) => axum::Json(view).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the database does not answer: {e}")),
    }
}
