//! Jobs: list, get, start/stop, settings, delete.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};

use super::views::JobView;
use super::{ApiState, base_url, error};
use crate::config::Config;
use crate::jobs::JobDef;
use crate::key::{JobKey, JobKind, valid_name};
use crate::layout::DISABLE_FILE;
use crate::status::{ContinuousStatus, JobStatus};
use crate::supervisor::{CatalogEntry, Changes, Event, Live};

/// The methods Kudu's passthrough forwards.
const PROXIED: MethodFilter = MethodFilter::GET
    .or(MethodFilter::HEAD)
    .or(MethodFilter::PUT)
    .or(MethodFilter::POST)
    .or(MethodFilter::DELETE)
    .or(MethodFilter::PATCH);

/// Every route of one kind of job under `prefix` (`/api/{kind}webjobs` or an alias).
pub fn kind_routes(kind: JobKind, prefix: &str) -> Router<ApiState> {
    let job = format!("{prefix}/{{job}}");
    let mut router = Router::new()
        .route(prefix, get(move |s, h| list(s, h, Some(kind))))
        .route(
            &job,
            get(move |s, h, p| get_job(s, h, p, kind))
                .put(move |s, h, p, b| super::deploy::put(s, h, p, b, kind))
                .delete(move |s, p| delete(s, p, kind)),
        )
        .route(
            &format!("{job}/settings"),
            get(move |s, p| get_settings(s, p, kind)).put(move |s, p, b| put_settings(s, p, b, kind)),
        )
        .route(&format!("{job}/start"), post(move |s, p| start(s, p, kind)))
        .route(&format!("{job}/stop"), post(move |s, p| stop(s, p, kind)));
    router = match kind {
        JobKind::Triggered => router
            .route(&format!("{job}/run"), post(super::runs::run))
            .route(&format!("{job}/queue"), get(super::queue::list).post(super::queue::enqueue))
            .route(&format!("{job}/queue/{{id}}"), axum::routing::delete(super::queue::remove))
            .route(&format!("{job}/dead"), get(super::queue::dead))
            .route(&format!("{job}/dead/{{id}}/retry"), post(super::queue::retry))
            .route(&format!("{job}/cancel"), post(super::runs::cancel))
            .route(&format!("{job}/history"), get(super::runs::history))
            .route(&format!("{job}/history/{{id}}"), get(super::runs::one_run)),
        JobKind::Continuous => router
            .route(&format!("{job}/restart"), post(restart))
            .route(&format!("{job}/passthrough"), on(PROXIED, super::passthrough::root))
            .route(&format!("{job}/passthrough/"), on(PROXIED, super::passthrough::root))
            .route(&format!("{job}/passthrough/{{*path}}"), on(PROXIED, super::passthrough::with_path)),
    };
    router
}

/// `GET /api/triggeredwebjobsswagger`: the triggered jobs as a Swagger 2.0
/// document, one `POST …/run` operation each (Kudu's "WebJobs as microservice").
pub async fn swagger(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let catalog = state.catalog.borrow().clone();
    let base = base_url(&headers);
    let (scheme, host) = base.split_once("://").unwrap_or(("http", "localhost"));
    let paths: serde_json::Map<String, serde_json::Value> = catalog
        .jobs
        .keys()
        .filter(|k| k.kind == JobKind::Triggered)
        .map(|k| {
            let operation = serde_json::json!({"post": {
                "deprecated": false,
                "operationId": &*k.name,
                "consumes": [],
                "produces": [],
                "responses": {"200": {"description": "Success"}, "default": {"description": "Success"}},
                "parameters": [{"name": "arguments", "in": "query", "description": "Web Job Arguments", "required": false, "type": "string"}],
            }});
            (format!("/api/triggeredjobs/{}/run", k.name), operation)
        })
        .collect();
    axum::Json(serde_json::json!({
        "swagger": "2.0",
        "info": {"version": "v1", "title": "WebJobs"},
        "host": host,
        "schemes": [scheme],
        "paths": paths,
    }))
    .into_response()
}

pub async fn list_all(state: State<ApiState>, headers: HeaderMap) -> Response {
    list(state, headers, None).await
}

async fn list(state: State<ApiState>, headers: HeaderMap, kind: Option<JobKind>) -> Response {
    super::list::list(state, headers, kind).await
}

fn entry(state: &ApiState, kind: JobKind, job: &str) -> Option<CatalogEntry> {
    state.catalog.borrow().jobs.get(&JobKey::new(kind, job)).cloned()
}

fn not_found(kind: JobKind, job: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no {} job named `{job}`", kind.as_str()))
}

/// A job's definition for a write: the catalog's, or, for a job folder the
/// daemon has not loaded yet, read from disk off the runtime.
pub(super) async fn job_def(state: &ApiState, kind: JobKind, job: &str) -> Option<Arc<JobDef>> {
    if !valid_name(job) {
        return None;
    }
    if let Some(entry) = entry(state, kind, job) {
        return Some(entry.def);
    }
    let (config, key) = (state.config.clone(), JobKey::new(kind, job));
    tokio::task::spawn_blocking(move || crate::jobs::scan_job(&config, &key)).await.ok().flatten().map(Arc::new)
}

/// Has the supervisor load `key` from disk now and waits until it has: the
/// answer to an API write comes after the daemon has taken it in.
pub async fn apply(state: &ApiState, key: &JobKey) {
    let (done, applied) = tokio::sync::oneshot::channel();
    let changes = Changes { jobs: [key.clone()].into_iter().collect(), ..Changes::default() };
    if state.events.send(Event::Apply { changes, done }).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(30), applied).await;
    }
    state.mark_written();
}

async fn get_job(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(job): Path<String>,
    kind: JobKind,
) -> Response {
    let Some(entry) = entry(&state, kind, &job) else { return not_found(kind, &job) };
    let mut view = JobView::from_catalog(&base_url(&headers), &entry);
    view.containment = Some(state.shared.containment.describe());
    view.redact(&state.config);
    // The SDK writes its marker while the job runs: look again (the list shows it from the last scan).
    view.using_sdk = tokio::fs::try_exists(state.config.job_data_dir(&entry.def.key).join(crate::layout::SDK_MARKER))
        .await
        .unwrap_or(view.using_sdk);
    if let Some(Some(run)) = view.latest_run.as_mut()
        && matches!(run.status.as_str(), "Initializing" | "Running")
    {
        // A live run's progress, as it writes it.
        let dir = state.config.job_data_dir(&entry.def.key).join(&run.id);
        run.progress = tokio::task::spawn_blocking(move || crate::history::Progress::read(&dir)).await.unwrap_or(None);
    }
    if kind == JobKind::Continuous {
        // Every daemon sharing the data folder: "<instance> - <Status>" lines.
        let dir = state.config.job_data_dir(&entry.def.key);
        let statuses = tokio::task::spawn_blocking(move || crate::status::read_all(&dir)).await.unwrap_or_default();
        let mut lines = Vec::new();
        for s in statuses {
            if state.shared.coordinator.instance_alive(&s.instance).await {
                lines.push(format!("{} - {}", s.instance, s.status.as_str()));
            }
        }
        if !lines.is_empty() {
            view.detailed_status = Some(lines.join("\r\n"));
        }
    }
    axum::Json(view).into_response()
}

/// `POST /api/{kind}webjobs/{job}/start`: removes `disable.job`; answers once the job has started
/// (continuous) or its schedule and runs are back (triggered).
async fn start(State(state): State<ApiState>, Path(job): Path<String>, kind: JobKind) -> Response {
    toggle(&state, kind, &job, true).await
}

/// `POST /api/{kind}webjobs/{job}/stop`: writes `disable.job` (persisted); answers once the
/// process is stopped (continuous) or the schedule paused (triggered; an active run goes on).
async fn stop(State(state): State<ApiState>, Path(job): Path<String>, kind: JobKind) -> Response {
    toggle(&state, kind, &job, false).await
}

async fn toggle(state: &ApiState, kind: JobKind, job: &str, start: bool) -> Response {
    let Some(def) = job_def(state, kind, job).await else { return not_found(kind, job) };
    let file = def.script_dir.join(DISABLE_FILE);
    let target = file.clone();
    let result = tokio::task::spawn_blocking(move || {
        if start {
            std::fs::remove_file(&target).or_else(|e| if e.kind() == ErrorKind::NotFound { Ok(()) } else { Err(e) })
        } else {
            std::fs::write(&target, b"")
        }
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = result {
        let action = if start { "remove" } else { "write" };
        return error(StatusCode::CONFLICT, io_problem(&state.config, action, &file, &e));
    }
    apply(state, &def.key).await;
    // With a database, every daemon of the cluster follows (its next beat).
    let mut cluster = serde_json::Value::Null;
    if let Some(pg) = state.shared.coordinator.postgres() {
        cluster = match pg.set_disabled(&def.key, !start, &state.shared.instance).await {
            Ok(()) => serde_json::json!({"applied": true}),
            Err(e) => serde_json::json!({"applied": false, "error": format!("only this daemon: {e}")}),
        };
    }
    let grace = def.settings.settings.as_ref().map(|s| s.stopping_wait_time).unwrap_or(Duration::from_secs(30));
    let status = match entry(state, kind, job).map(|e| e.live) {
        Some(live) => settled(live, start, grace + Duration::from_secs(15)).await,
        None => String::new(),
    };
    state.mark_written();
    let mut body = serde_json::json!({"name": job, "type": kind.as_str(), "disabled": !start, "status": status});
    if !cluster.is_null() {
        body["cluster"] = cluster;
    }
    axum::Json(body).into_response()
}

/// `POST /api/continuouswebjobs/{job}/restart` (ours): stops the process by the
/// stop protocol and starts it again; answers once the new process runs (or
/// the job settled otherwise), with its status and pid. 409 when the job is
/// stopped or cannot run.
async fn restart(State(state): State<ApiState>, Path(job): Path<String>) -> Response {
    let kind = JobKind::Continuous;
    let Some(CatalogEntry { def, live: Live::Continuous(rx) }) = entry(&state, kind, &job) else {
        return not_found(kind, &job);
    };
    let before = rx.borrow().start_time.clone();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let event = Event::Continuous { name: job.clone(), control: crate::continuous::Control::Restart(reply) };
    if state.events.send(event).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    match answer.await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return error(StatusCode::CONFLICT, format!("cannot restart {job}: {why}")),
        Err(_) => return not_found(kind, &job),
    }
    let grace = def.settings.settings.as_ref().map(|s| s.stopping_wait_time).unwrap_or(Duration::from_secs(30));
    let restarted = |s: &ContinuousStatus| match s.status {
        JobStatus::Running => s.start_time != before,
        JobStatus::Starting | JobStatus::Stopping | JobStatus::Initializing => false,
        _ => true,
    };
    let _ = tokio::time::timeout(grace + Duration::from_secs(15), rx.wait_for(restarted)).await;
    state.mark_written();
    let s = rx.borrow().clone();
    axum::Json(serde_json::json!({"name": job, "type": kind.as_str(), "status": s.status.as_str(), "pid": s.pid}))
        .into_response()
}

/// Waits (bounded) until the job's actor shows the effect of a start or stop; returns its status.
async fn settled(live: Live, start: bool, limit: Duration) -> String {
    let disabled_reason = Some(crate::continuous::DISABLED_REASON);
    match live {
        Live::Continuous(rx) => {
            let done = |s: &ContinuousStatus| {
                let stopped_by_file = s.status == JobStatus::Stopped && s.reason.as_deref() == disabled_reason;
                if start { !stopped_by_file } else { matches!(s.status, JobStatus::Stopped | JobStatus::Invalid) }
            };
            let _ = tokio::time::timeout(limit, rx.wait_for(done)).await;
            rx.borrow().status.as_str().to_string()
        }
        Live::Triggered(rx) => {
            let _ = tokio::time::timeout(limit, rx.wait_for(|s| s.disabled != start)).await;
            if rx.borrow().disabled { "Stopped".to_string() } else { "Ready".to_string() }
        }
    }
}

/// An I/O error on a job's files, said with what to do about it (and no
/// absolute server path).
pub fn io_problem(config: &Config, action: &str, path: &std::path::Path, e: &std::io::Error) -> String {
    let shown = super::redact(config, &path.display().to_string());
    if e.kind() != ErrorKind::PermissionDenied {
        return super::redact(config, &format!("cannot {action} {shown}: {e}"));
    }
    let folder = path.parent().unwrap_or(path);
    let folder_shown = super::redact(config, &folder.display().to_string());
    let name = |uid: u32| {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| format!("{} (uid {uid})", u.name))
            .unwrap_or_else(|| format!("uid {uid}"))
    };
    let me = nix::unistd::geteuid().as_raw();
    let owner = std::fs::metadata(folder).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let whose = match owner {
        Ok(uid) => format!("{folder_shown} belongs to {} and the daemon runs as {}", name(uid), name(me)),
        Err(_) => format!("the daemon runs as {}", name(me)),
    };
    let user = nix::unistd::User::from_uid(me.into()).ok().flatten().map(|u| u.name).unwrap_or(me.to_string());
    format!(
        "cannot {action} {shown}: permission denied: {whose}; give the daemon's user write access to the job folder, e.g. `chown -R {user} {folder_shown}`"
    )
}

/// `GET …/settings`: the settings.job object as written (`{}` when there is none).
async fn get_settings(State(state): State<ApiState>, Path(job): Path<String>, kind: JobKind) -> Response {
    let Some(def) = job_def(&state, kind, &job).await else { return not_found(kind, &job) };
    let path = def.script_dir.join(crate::layout::SETTINGS_FILE);
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let value = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or(serde_json::json!({}));
    let mut response = axum::Json(value).into_response();
    if let Err(problems) = &def.settings.settings {
        let message = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        let message = super::redact(&state.config, &message);
        if let Ok(v) = axum::http::HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
            response.headers_mut().insert("x-webjobs-settings-error", v);
        }
    }
    response
}

/// `PUT …/settings`: validated first; on any problem 400 with every problem and
/// the file untouched; else written atomically and loaded before the answer.
async fn put_settings(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    body: axum::body::Bytes,
    kind: JobKind,
) -> Response {
    let Some(def) = job_def(&state, kind, &job).await else { return not_found(kind, &job) };
    let path = def.script_dir.join(crate::layout::SETTINGS_FILE);
    let text = String::from_utf8_lossy(&body).into_owned();
    let loaded = crate::settings::parse(&path, &text, kind);
    let shown = |p: &crate::problems::Problem| super::redact(&state.config, &p.to_string());
    let warnings: Vec<String> = loaded.warnings.iter().map(shown).collect();
    if let Err(problems) = loaded.settings {
        let messages: Vec<String> = problems.iter().map(shown).collect();
        let body = serde_json::json!({"error": messages.join("; "), "problems": messages, "warnings": warnings});
        return super::error_body(StatusCode::BAD_REQUEST, body);
    }
    let tmp = def.script_dir.join(".settings.job.tmp");
    let (bytes, target) = (text.clone().into_bytes(), path.clone());
    let written =
        tokio::task::spawn_blocking(move || std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &target)))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = written {
        return error(StatusCode::CONFLICT, io_problem(&state.config, "write", &path, &e));
    }
    apply(&state, &def.key).await;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    axum::Json(serde_json::json!({"settings": value, "warnings": warnings})).into_response()
}

/// `DELETE /api/{kind}webjobs/{job}`: the job is stopped (by the stop
/// protocol), then its folder and its data are removed. A job that does not
/// exist answers 200 too, as in Kudu ("delete if it exists").
async fn delete(State(state): State<ApiState>, Path(job): Path<String>, kind: JobKind) -> Response {
    let Some(def) = job_def(&state, kind, &job).await else {
        return axum::Json(serde_json::json!({"name": job, "deleted": false})).into_response();
    };
    let trash =
        crate::layout::staging_dir(&state.config.jobs_dir).join(format!("deleted-{job}-{}", std::process::id()));
    let (from, to) = (def.dir.clone(), trash.clone());
    let moved = tokio::task::spawn_blocking(move || {
        let _ = std::fs::create_dir_all(to.parent().unwrap_or(&to));
        std::fs::rename(&from, &to)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = moved {
        return error(StatusCode::CONFLICT, io_problem(&state.config, "remove", &def.dir, &e));
    }
    let live = entry(&state, kind, &job).map(|e| e.live);
    apply(&state, &def.key).await;
    let grace = def.settings.settings.as_ref().map(|s| s.stopping_wait_time).unwrap_or(Duration::from_secs(30));
    if let Some(live) = live {
        wait_actor_gone(live, grace + Duration::from_secs(15)).await;
    }
    let data: PathBuf = state.config.job_data_dir(&def.key);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::remove_dir_all(&data)
    })
    .await;
    axum::Json(serde_json::json!({"name": job, "deleted": true})).into_response()
}

/// Waits until the job's actor has ended (its status channel closes).
async fn wait_actor_gone(live: Live, limit: Duration) {
    let wait = async move {
        match live {
            Live::Continuous(rx) => rx.closed().await,
            Live::Triggered(rx) => rx.closed().await,
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_error_says_whose_folder_and_how_to_fix_it() {
        let d = tempfile::tempdir().unwrap();
        let sources = crate::config::Sources { file: None, root: Some(d.path().to_path_buf()), listen: None };
        let config = Config::load_with_env(&sources, &|_| None).unwrap();
        let folder = config.jobs_dir.join("continuous/app");
        std::fs::create_dir_all(&folder).unwrap();
        let e = std::io::Error::from(ErrorKind::PermissionDenied);
        let text = io_problem(&config, "write", &folder.join(crate::layout::DISABLE_FILE), &e);
        assert!(text.starts_with("cannot write jobs/continuous/app/disable.job: permission denied: "), "{text}");
        assert!(text.contains("jobs/continuous/app belongs to ") && text.contains("the daemon runs as "), "{text}");
        assert!(text.contains("chown -R "), "{text}");
        assert!(!text.contains(&d.path().display().to_string()), "no server path: {text}");
        assert!(!text.contains("os error"), "{text}");
    }
}
