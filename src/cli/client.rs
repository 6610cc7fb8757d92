//! The CLI's connection to a running daemon: HTTP over the daemon's Unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::config::Config;
/// Whether daemon `id` on this host's data folder is alive: its socket is a
/// local file, found through the local lock files whatever the backend.
pub fn instance_alive(data_dir: &std::path::Path, id: &str) -> bool {
    crate::coordination::files::Files::new(data_dir).instance_alive(id)
}

/// Why the daemon could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no webjobs daemon is running on {data} (start one with `webjobs serve`, or pass the --root/--config it uses)"
    )]
    NotRunning { data: PathBuf },
    #[error(
        "cannot reach the daemon's socket {path}: permission denied (run as the daemon's user or a member of its group)"
    )]
    Permission { path: PathBuf },
    #[error("cannot talk to the daemon on {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "the daemon on {path} is not answering (nothing within {seconds}s); it may be stuck or overloaded: see its log (journalctl -u webjobs)"
    )]
    NotAnswering { path: PathBuf, seconds: u64 },
}

/// How long a read (`list`, `status`, `history`, …) waits for the daemon to
/// start answering; a long-poll (`?wait=N`) gets its N seconds on top. Writes
/// (run, start, stop, cancel) wait as long as the daemon works on them: a stop
/// takes up to the job's stopping_wait_time.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn answer_timeout(method: &str, path: &str) -> Option<std::time::Duration> {
    if method != "GET" {
        return None;
    }
    let wait = path
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|w| w.parse::<f64>().ok())
        .filter(|w| w.is_finite() && *w > 0.0)
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or_default();
    Some(READ_TIMEOUT + wait)
}

/// A response, read whole.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` message of an error response.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

pub struct Client {
    socket: PathBuf,
}

/// Where a streamed body goes, chunk by chunk.
type Sink<'a> = Option<&'a mut dyn FnMut(&[u8])>;

impl Client {
    /// The daemon of this configuration's instance, else any live one on the data folder.
    pub fn connect(config: &Config) -> Result<Client, ClientError> {
        let own = crate::layout::socket(&config.data_dir, &config.instance_id);
        if instance_alive(&config.data_dir, &config.instance_id) && own.exists() {
            return Ok(Client { socket: own });
        }
        let others = std::fs::read_dir(crate::layout::instances_dir(&config.data_dir)).into_iter().flatten().flatten();
        for entry in others {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".sock")
                && instance_alive(&config.data_dir, id)
            {
                return Ok(Client { socket: entry.path() });
            }
        }
        Err(ClientError::NotRunning { data: config.data_dir.clone() })
    }

    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path)
    }

    pub fn post(&self, path: &str) -> Result<Response, ClientError> {
        self.request("POST", path)
    }

    /// POSTs `body` (a run's payload).
    pub fn post_body(&self, path: &str, body: Vec<u8>) -> Result<Response, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| self.io(e))?;
        runtime.block_on(self.send_body("POST", path, None, Bytes::from(body)))
    }

    pub fn delete(&self, path: &str) -> Result<Response, ClientError> {
        self.request("DELETE", path)
    }

    fn request(&self, method: &str, path: &str) -> Result<Response, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| self.io(e))?;
        runtime.block_on(self.send(method, path, None))
    }

    /// GETs `path`, handing the body to `on_chunk` as it arrives (a live tail).
    /// Returns the status.
    pub fn stream(&self, path: &str, mut on_chunk: impl FnMut(&[u8])) -> Result<u16, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| self.io(e))?;
        runtime.block_on(async {
            let response = self.send("GET", path, Some(&mut on_chunk)).await?;
            Ok(response.status)
        })
    }

    async fn send(&self, method: &str, path: &str, sink: Sink<'_>) -> Result<Response, ClientError> {
        self.send_body(method, path, sink, Bytes::new()).await
    }

    async fn send_body(
        &self,
        method: &str,
        path: &str,
        mut sink: Sink<'_>,
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::Permission { path: self.socket.clone() },
            _ => self.io(e),
        })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| self.io(e))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("user-agent", format!("webjobs-cli/{} (uid {})", env!("CARGO_PKG_VERSION"), nix::unistd::getuid()))
            .body(Full::new(body))
            .map_err(|e| self.io(e))?;
        let response = match answer_timeout(method, path) {
            Some(limit) => tokio::time::timeout(limit, sender.send_request(request))
                .await
                .map_err(|_| ClientError::NotAnswering { path: self.socket.clone(), seconds: limit.as_secs() })?,
            None => sender.send_request(request).await,
        }
        .map_err(|e| self.io(e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.io(e))?;
            if let Some(data) = frame.data_ref() {
                match (&mut sink, status) {
                    (Some(sink), 200) => sink(data),
                    _ => bytes.extend_from_slice(data),
                }
            }
        }
        Ok(Response { status, body: bytes })
    }

    fn io(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Io { path: self.socket.clone(), message: e.to_string() }
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads from `offset` to the end of a file; returns the new offset.
pub fn print_from(path: &Path, offset: u64) -> u64 {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Ok(mut file) = std::fs::File::open(path) else { return offset };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset { 0 } else { offset };
    if file.seek(SeekFrom::Start(start)).is_err() {
        return offset;
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&buf);
    let _ = out.flush();
    start + buf.len() as u64
}
