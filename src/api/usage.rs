//! `GET /api/usage` (ours): CPU time and memory of every job's running
//! process group, for `webjobs top` and the dashboard. Two readings a known
//! interval apart give the CPU share (`time_ms` says when each was taken).

use std::collections::HashSet;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use crate::supervisor::Live;

#[derive(Serialize)]
struct JobUsage {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    pid: i32,
    #[serde(flatten)]
    usage: crate::usage::Usage,
}

pub async fn usage(State(state): State<ApiState>) -> Response {
    let catalog = state.catalog.borrow().clone();
    let running: Vec<(String, &'static str, i32)> = catalog
        .jobs
        .values()
        .filter_map(|e| {
            let pid = match &e.live {
                Live::Continuous(rx) => rx.borrow().pid,
                Live::Triggered(rx) => rx.borrow().latest.as_ref().filter(|l| !l.state.is_final())?.status()?.pid,
            }?;
            Some((e.def.key.name.to_string(), e.def.key.kind.as_str(), pid))
        })
        .collect();
    let jobs = tokio::task::spawn_blocking(move || {
        let groups: HashSet<i32> = running.iter().map(|(_, _, pid)| *pid).collect();
        let mut found = crate::usage::by_group(&groups);
        running
            .into_iter()
            .filter_map(|(name, kind, pid)| Some(JobUsage { name, kind, pid, usage: found.remove(&pid)? }))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let time_ms = jiff::Timestamp::now().as_millisecond();
    axum::Json(serde_json::json!({"time_ms": time_ms, "jobs": jobs})).into_response()
}
