//! The HTTP API, with WebJobs' (Kudu's) routes and JSON field names, the
//! dashboard, `/metrics` and `/health`. Handlers read the catalog (published by
//! the supervisor) or files, and send requests to the supervisor; they hold no
//! job state.
//!
//! Served on a Unix socket (`data/instances/<instance>.sock`, guarded by its
//! file permissions) for the local CLI, and on TCP (loopback by default) where
//! every request is authenticated.

mod auth;
pub(crate) mod cluster;
mod connections;
mod dashboard;
mod deploy;
mod events;
mod hooks;
mod jobs;
pub mod list;
mod passthrough;
mod queue;
mod runs;
mod usage;
mod vfs;
pub mod views;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{mpsc, watch};

pub use auth::{Auth, load_or_create_token};

use crate::actor::Shared;
use crate::config::Config;
use crate::key::JobKind;
use crate::supervisor::{Catalog, Event};

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub events: mpsc::Sender<Event>,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// The rendered job lists (see [`list`]).
    pub lists: Arc<list::Lists>,
    /// The change generation after the newest API write: a list asked for
    /// afterwards shows at least that.
    pub written: Arc<std::sync::atomic::AtomicU64>,
}

impl ApiState {
    /// An API write has been applied: lists asked for from now on show it.
    pub fn mark_written(&self) {
        let now = self.shared.generation.load(std::sync::atomic::Ordering::Acquire);
        self.written.fetch_max(now, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Every route, unauthenticated (the TCP listener adds [`auth::require`]).
/// Kudu's older aliases are served too: `/api/{type}jobs/…`, `/jobs/{type}/…`
/// and `/api/jobs/{type}/…` beside `/api/{type}webjobs/…`.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new()
        .route("/api/triggeredwebjobsswagger", get(jobs::swagger))
        .route("/api/events", get(events::stream))
        .route("/api/hooks", get(hooks::list).post(hooks::subscribe))
        .route("/api/hooks/{id}", get(hooks::get).delete(hooks::unsubscribe))
        .route("/api/notifications", get(hooks::notifications))
        .route("/api/cluster", get(cluster::cluster))
        .route("/api/usage", get(usage::usage))
        .route("/api/vfs/{*path}", get(vfs::get))
        .route("/vfs/{*path}", get(vfs::get))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .merge(dashboard::routes());
    for prefix in ["/api/webjobs", "/api/jobs", "/jobs"] {
        router = router.route(prefix, get(jobs::list_all));
    }
    for kind in JobKind::ALL {
        for prefix in prefixes(kind) {
            router = router.merge(jobs::kind_routes(kind, &prefix));
        }
    }
    let limit = usize::try_from(state.config.api.max_upload).unwrap_or(usize::MAX);
    let config = state.config.clone();
    router
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limit, refuse_oversized))
        .layer(axum::middleware::map_response_with_state(config, redact_errors))
        .with_state(state)
}

/// The route prefixes of one kind of job: Kudu's own first, then its older aliases.
fn prefixes(kind: JobKind) -> [String; 4] {
    let k = kind.as_str();
    [format!("/api/{k}webjobs"), format!("/api/{k}jobs"), format!("/jobs/{k}"), format!("/api/jobs/{k}")]
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

/// The API's listeners, bound before any job starts.
pub struct Listeners {
    unix: tokio::net::UnixListener,
    tcp: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// The TCP address actually bound (the port may have been 0).
    pub fn tcp_address(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }
}

/// The API could not listen where it was told to.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on the Unix socket {path}: {cause}")]
    Socket { path: std::path::PathBuf, cause: std::io::Error },
    #[error("cannot listen on {address}: {cause}{}", listen_hint(cause))]
    Listen { address: String, cause: std::io::Error },
}

/// What to do about a TCP address that cannot be bound.
fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another program (perhaps another webjobs daemon) uses it: stop it, or choose another address with \
             `serve --listen ADDR:PORT` or `listen` in the config (`\"listen\": null` turns TCP off)"
        }
        std::io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges: choose a port above 1024",
        std::io::ErrorKind::AddrNotAvailable => "; no interface of this machine has that address",
        _ => "",
    }
}

/// Binds the Unix socket (mode 0660) and, if configured, the TCP address.
pub async fn bind(config: &Config) -> Result<Listeners, BindError> {
    let socket = crate::layout::socket(&config.data_dir, &config.instance_id);
    let unix = bind_unix(&socket).map_err(|cause| BindError::Socket { path: socket.clone(), cause })?;
    let Some(listen) = &config.api.listen else { return Ok(Listeners { unix, tcp: None }) };
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|cause| BindError::Listen { address: listen.clone(), cause })?;
    if let Ok(addr) = tcp.local_addr() {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the API listens beyond loopback; put TLS in front of it (see docs/api.md)");
        }
        let _ = std::fs::write(crate::layout::address(&config.data_dir, &config.instance_id), addr.to_string());
    }
    Ok(Listeners { unix, tcp: Some(tcp) })
}

/// Serves the API on the Unix socket and, if bound, on TCP (with auth).
pub fn serve_all(listeners: Listeners, state: ApiState, auth: Arc<Auth>) -> Vec<tokio::task::JoinHandle<()>> {
    // The runs' URLs in TriggeredJobFinished name the TCP address (the socket's, without one).
    let base = listeners.tcp_address().map_or_else(|| "http://localhost".to_string(), |a| format!("http://{a}"));
    // Not among the tasks stopped with the listeners: runs ending meanwhile are told too.
    tokio::spawn(hooks::finished_runs(state.clone(), base));
    tokio::spawn(list::expire(Arc::downgrade(&state.lists)));
    let app = router(state);
    let local = app.clone().layer(axum::middleware::map_request(local_request));
    let mut tasks = vec![tokio::spawn(serve(listeners.unix, local))];
    if let Some(tcp) = listeners.tcp {
        let app = app.layer(axum::middleware::from_fn_with_state(auth, auth::require));
        tasks.push(tokio::spawn(serve(tcp, app)));
    }
    tasks
}

/// How long a client has to send a request's headers; also how long a
/// keep-alive connection may wait for its next request before it is closed.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` so that clients cannot starve the daemon: headers must come
/// within [`HEADER_TIMEOUT`] (idle and slow connections are closed), and at
/// most [`connection_cap`] connections are open at once. A new connection
/// beyond the cap closes the one that has been idle longest (waiting for a
/// request, not sending a response: a live tail is never cut), so a client
/// that speaks is served even while others hold connections open doing
/// nothing; a log line says the cap was reached.
async fn serve<L: Accept>(listener: L, app: Router) {
    let cap = connection_cap();
    let table = Arc::new(Mutex::new(connections::Table::default()));
    let mut warned = false;
    loop {
        let io = match listener.accept_io().await {
            Ok(io) => io,
            Err(e) => {
                refused_connection(&e).await;
                continue;
            }
        };
        let (id, evicted) = {
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            let full = t.len() >= cap;
            if full && !warned {
                tracing::warn!(
                    cap,
                    "the API has as many connections open as it allows; the longest idle ones are closed for new ones"
                );
            }
            warned = full;
            let evicted = if full { t.evict_idlest() } else { None };
            (t.open(), evicted)
        };
        if let Some(evict) = evicted {
            let _ = evict.send(());
        }
        tokio::spawn(connections::serve(io, app.clone(), table.clone(), id));
    }
}

/// A listener whose accept errors are ours to handle.
trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        let (stream, _) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// A connection that could not be accepted. One the client gave up on is
/// nothing; running out of descriptors (`Too many open files`) repeats while
/// it lasts, so it is told once a minute with a count, and accepting pauses
/// briefly instead of spinning.
async fn refused_connection(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    crate::repeats::report("accept", &"api", |held| {
        tracing::error!(error = %e, "the API cannot accept a connection{}", crate::repeats::held_note(held));
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Connections served at once: a quarter of the descriptors this process may
/// open (the rest are for jobs' pipes, logs and files), between 16 and 1024.
fn connection_cap() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    usize::try_from(soft / 4).unwrap_or(1024).clamp(16, 1024)
}

/// An error as JSON `{"error": "..."}` (WebJobs returns a message body).
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    error_body(status, serde_json::json!({ "error": message.into() }))
}

/// An error answer with a JSON body of its own shape; marked so that
/// [`redact_errors`] takes server paths out of it.
pub fn error_body(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(ErrorBody);
    response
}

/// Marks a response as one of our error answers.
#[derive(Debug, Clone, Copy)]
struct ErrorBody;

/// Text for API clients with the daemon's absolute folders replaced by their
/// short names (`jobs/…`, `data/…`, `temp/…`): answers never show server paths.
pub fn redact(config: &Config, text: &str) -> String {
    let mut pairs = [(&config.jobs_dir, "jobs"), (&config.data_dir, "data"), (&config.temp_dir, "temp")];
    pairs.sort_by_key(|(path, _)| std::cmp::Reverse(path.as_os_str().len()));
    let mut out = text.to_string();
    for (path, short) in pairs {
        let path = path.display().to_string();
        if !path.is_empty() && out.contains(&path) {
            out = out.replace(&path, short);
        }
    }
    out
}

/// A body announced larger than the limit is refused at once (413), before
/// a byte of it is read, instead of after the client has sent it all.
async fn refuse_oversized(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = announced.filter(|l| *l > limit as u64) {
        let mut response = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body ({length} bytes) is larger than max_upload_bytes ({limit})"),
        );
        // The body will not be read: the connection cannot be reused.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Takes server paths out of every error answer, whichever handler made it.
async fn redact_errors(State(config): State<Arc<Config>>, response: Response) -> Response {
    if response.extensions().get::<ErrorBody>().is_none() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let text = redact(&config, &String::from_utf8_lossy(&bytes));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// Requests on the Unix socket have no meaningful host: URLs in JSON stay relative.
async fn local_request(mut request: axum::extract::Request) -> axum::extract::Request {
    request.headers_mut().remove(header::HOST);
    request
}

/// `http://host` for absolute URLs in JSON (empty on the Unix socket).
pub fn base_url(headers: &HeaderMap) -> String {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return String::new() };
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}")
}

/// A JSON body with an ETag, or 304 when the client has it already.
pub fn with_etag(headers: &HeaderMap, body: axum::body::Bytes, etag: &str) -> Response {
    json_response(headers, body, None, etag)
}

/// Whether the client accepts a gzipped body.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

/// Like [`with_etag`], serving `gzip` (the same JSON, compressed) when given.
pub fn json_response(
    headers: &HeaderMap,
    body: axum::body::Bytes,
    gzip: Option<axum::body::Bytes>,
    etag: &str,
) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.to_string())]).into_response();
    }
    let compressed = gzip.is_some();
    let mut response = (StatusCode::OK, gzip.unwrap_or(body)).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if compressed {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// Gzips a body (fast level: this runs once per change of the job list).
pub fn gzip(body: &[u8]) -> axum::body::Bytes {
    use std::io::Write;
    // The default level: bodies are compressed once and served many times
    // (the 10,000-job list: 150 KB rather than 268 KB at the fast level).
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::default());
    let _ = encoder.write_all(body);
    axum::body::Bytes::from(encoder.finish().unwrap_or_default())
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<ApiState>) -> Response {
    let catalog = state.catalog.borrow().clone();
    let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for entry in catalog.jobs.values() {
        let view = views::JobView::from_catalog("", entry);
        *counts.entry((view.kind.to_string(), view.status)).or_default() += 1;
    }
    let counts: Vec<(String, String, i64)> = counts.into_iter().map(|((k, s), n)| (k, s, n)).collect();
    let body = state.shared.metrics.render(&counts);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// `GET /health`: 200 once the jobs are loaded, 503 before.
async fn health(State(state): State<ApiState>) -> Response {
    let catalog = state.catalog.borrow().clone();
    if catalog.loaded {
        let containment = &state.shared.containment;
        axum::Json(serde_json::json!({
            "status": "ready",
            "jobs": catalog.jobs.len(),
            "instance": state.config.instance_id,
            "containment": containment.kind(),
            "containment_detail": redact(&state.config, &containment.describe()),
        }))
        .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "loading"}))).into_response()
    }
}
