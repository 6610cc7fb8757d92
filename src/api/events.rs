//! `GET /api/events`: what happens to jobs and runs, as server-sent events
//! (see [`crate::events`]). `?job=NAME` keeps one job's, `?type=run.` the
//! types starting with a prefix; `Last-Event-ID` replays what a reconnecting
//! client missed (of the newest [`crate::events::RECENT`]). Each event's
//! `event:` is its type, `id:` its id, `data:` its JSON. A client too slow to
//! keep up gets a `lagged` event with the number it missed. The stream ends
//! after `daemon.stopped`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;

use super::ApiState;
use crate::events::{Event, Filter};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let after = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let filter = Filter { job: query.get("job").cloned(), kind: query.get("type").cloned() };
    let (replay, live) = state.shared.events.subscribe(after);
    let listener = Listener { replay: replay.into_iter(), live, filter, over: false };
    let events = futures_util::stream::unfold(listener, |mut listener| async move {
        let sent = listener.next().await?;
        Some((Ok::<_, Infallible>(sent), listener))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// One client's subscription.
struct Listener {
    replay: std::vec::IntoIter<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    filter: Filter,
    /// `daemon.stopped` was sent: nothing follows.
    over: bool,
}

impl Listener {
    /// The next event the client wants; `None` when the stream is over.
    async fn next(&mut self) -> Option<Sent> {
        loop {
            if self.over {
                return None;
            }
            let event = match self.replay.next() {
                Some(event) => event,
                None => match self.live.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some(Sent::default().event("lagged").data(format!("{{\"missed\":{missed}}}")));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            self.over = event.kind == "daemon.stopped";
            if self.filter.wants(&event) {
                let data = serde_json::to_string(&*event).unwrap_or_default();
                return Some(Sent::default().id(event.id.to_string()).event(event.kind).data(data));
            }
        }
    }
}
