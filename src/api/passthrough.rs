//! Kudu's continuous job passthrough: `…/continuouswebjobs/{job}/passthrough/{path}`
//! is proxied to `http://127.0.0.1:{WEBJOBS_PORT}/{path}` of the job's running
//! process: method, query, headers and body go through, and the answer streams
//! back as the job sends it. `Host` is the job's own; the daemon's credentials
//! (`Authorization`) are not passed on to the job.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::{ApiState, error};
use crate::key::{JobKey, JobKind};
use crate::status::JobStatus;
use crate::supervisor::Live;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"];

pub async fn root(state: State<ApiState>, Path(job): Path<String>, request: Request) -> Response {
    forward(state, job, String::new(), request).await
}

pub async fn with_path(
    state: State<ApiState>,
    Path((job, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    forward(state, job, path, request).await
}

async fn forward(State(state): State<ApiState>, job: String, path: String, request: Request) -> Response {
    let entry = state.catalog.borrow().jobs.get(&JobKey::new(JobKind::Continuous, &job)).cloned();
    let Some(entry) = entry else { return error(StatusCode::NOT_FOUND, format!("no continuous job named `{job}`")) };
    let Live::Continuous(status) = entry.live else { return error(StatusCode::NOT_FOUND, "not a continuous job") };
    let (running, port) = {
        let s = status.borrow();
        (s.status == JobStatus::Running, s.port)
    };
    let Some(port) = port.filter(|_| running) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("the job `{job}` is not running on this daemon"));
    };
    match send(port, &path, request).await {
        Ok(response) => response,
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!(
                "the job \"{job}\" does not answer on WEBJOBS_PORT {port} (it must listen on 127.0.0.1:{port}): {e}"
            ),
        ),
    }
}

async fn send(port: u16, path: &str, request: Request) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut outgoing = hyper::Request::builder().method(parts.method).uri(format!("/{path}{query}"));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::AUTHORIZATION {
            outgoing = outgoing.header(name, value);
        }
    }
    let outgoing = outgoing.header(header::HOST, format!("127.0.0.1:{port}")).body(body).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let answer = sender.send_request(outgoing).await.map_err(|e| e.to_string())?;
    let (mut parts, body) = answer.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}
