//! The API's connections: which are idle (waiting for a request) and since
//! when, so that a new client beyond the cap takes the place of the one idle
//! longest. A connection is busy from a request's headers to the end of its
//! response body (a live tail is busy for as long as it streams).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use http_body::Frame;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// Open connections by id.
#[derive(Default)]
pub struct Table {
    next: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    /// `None` while a request is being answered.
    idle_since: Option<Instant>,
    evict: Option<oneshot::Sender<()>>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Registers a new connection (idle until its first request).
    pub fn open(&mut self) -> u64 {
        self.next += 1;
        self.open.insert(self.next, Entry { idle_since: Some(Instant::now()), evict: None });
        self.next
    }

    /// Takes the connection idle longest out of the table; its sender closes it.
    pub fn evict_idlest(&mut self) -> Option<oneshot::Sender<()>> {
        let id = self.open.iter().filter_map(|(id, e)| Some((e.idle_since?, *id))).min().map(|(_, id)| id)?;
        self.open.remove(&id)?.evict
    }

    fn set_idle(&mut self, id: u64, idle: bool) {
        if let Some(e) = self.open.get_mut(&id) {
            e.idle_since = idle.then(Instant::now);
        }
    }
}

type Shared = Arc<Mutex<Table>>;

fn with(table: &Shared, f: impl FnOnce(&mut Table)) {
    f(&mut table.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Serves one connection until it ends, times out, or is evicted.
pub async fn serve<IO>(io: IO, app: Router, table: Shared, id: u64)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (evict, evicted) = oneshot::channel();
    with(&table, |t| {
        if let Some(e) = t.open.get_mut(&id) {
            e.evict = Some(evict);
        }
    });
    let requests = table.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (app, table) = (app.clone(), requests.clone());
        with(&table, |t| t.set_idle(id, false));
        async move {
            let stalled = Arc::new(AtomicBool::new(false));
            let request = request.map(|body| {
                if http_body::Body::is_end_stream(&body) {
                    Body::new(body)
                } else {
                    Body::new(Patient::new(body, stalled.clone()))
                }
            });
            let mut response = app.oneshot(request).await?;
            if stalled.load(Ordering::Acquire) {
                response = stalled_response();
            }
            let guard = IdleOnDrop { table, id };
            Ok::<_, std::convert::Infallible>(response.map(|body| Body::new(Tracked { body, _guard: guard })))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(super::HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        _ = connection => {}
        _ = evicted => {}
    }
    with(&table, |t| {
        t.open.remove(&id);
    });
}

/// A request body the client stopped sending: 408, and the connection closes.
fn stalled_response() -> axum::response::Response {
    let text = format!("the request body stopped arriving: nothing came for {} s", super::HEADER_TIMEOUT.as_secs());
    let mut response = super::error(axum::http::StatusCode::REQUEST_TIMEOUT, text);
    response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

/// A request body that fails when nothing of it arrives for
/// [`super::HEADER_TIMEOUT`], so a client cannot hold a request (and the
/// handler waiting for its body) open by announcing more than it sends.
struct Patient<B> {
    body: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    stalled: Arc<AtomicBool>,
}

impl<B> Patient<B> {
    fn new(body: B, stalled: Arc<AtomicBool>) -> Self {
        Patient { body, deadline: Box::pin(tokio::time::sleep(super::HEADER_TIMEOUT)), stalled }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("nothing of the request body arrived for {} s", super::HEADER_TIMEOUT.as_secs())]
struct Stalled;

impl<B> http_body::Body for Patient<B>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + super::HEADER_TIMEOUT;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.stalled.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Stalled.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Marks the connection idle when its response body is done (or dropped).
struct IdleOnDrop {
    table: Shared,
    id: u64,
}

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        with(&self.table, |t| t.set_idle(self.id, true));
    }
}

/// A response body that keeps its connection busy until it ends.
struct Tracked {
    body: Body,
    _guard: IdleOnDrop,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_longest_goes_first_and_busy_ones_never() {
        let mut t = Table::default();
        let (a, b, c) = (t.open(), t.open(), t.open());
        let mut receivers = HashMap::new();
        for id in [a, b, c] {
            let (tx, rx) = oneshot::channel();
            t.open.get_mut(&id).unwrap().evict = Some(tx);
            receivers.insert(id, rx);
        }
        t.set_idle(a, false); // answering a request (a live tail, say)
        t.evict_idlest().unwrap().send(()).unwrap();
        assert!(receivers.get_mut(&b).unwrap().try_recv().is_ok(), "b was idle longest");
        t.evict_idlest().unwrap().send(()).unwrap();
        assert!(receivers.get_mut(&c).unwrap().try_recv().is_ok());
        assert!(t.evict_idlest().is_none(), "a busy connection is never evicted");
        assert_eq!(t.len(), 1);
    }
}
