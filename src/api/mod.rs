//! The HTTP API, with WebJobs' (Kudu's) routes and JSON field names. Handlers
//! read files or send requests to the supervisor; they hold no job state.
//!
//! Served on a Unix socket (`data/instances/<instance>.sock`) for the local
//! CLI, guarded by its file permissions.

mod runs;
pub mod views;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::supervisor::Event;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub events: mpsc::Sender<Event>,
    pub config: Arc<Config>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/triggeredwebjobs/{job}/run", post(runs::run))
        .route("/api/triggeredwebjobs/{job}/cancel", post(runs::cancel))
        .route("/api/triggeredwebjobs/{job}/history", get(runs::history))
        .route("/api/triggeredwebjobs/{job}/history/{id}", get(runs::one_run))
        .with_state(state)
}

/// The socket of instance `id` on a data folder.
pub fn socket_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("instances").join(format!("{id}.sock"))
}

/// Binds the Unix socket (mode 0660), replacing a stale one.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.as_os_str().len() >= 108 {
        return Err(std::io::Error::other(format!(
            "the socket path {} is too long for a Unix socket (108 bytes); use a shorter data_dir",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// An error as JSON `{"error": "..."}` (WebJobs returns a message body).
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}
