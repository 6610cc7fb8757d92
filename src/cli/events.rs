//! `webjobs events`: follows what happens to jobs and runs (the daemon's
//! `GET /api/events`), one line per event, or its JSON with `--json`.

use std::process::ExitCode;

use super::client::{Client, encode};
use super::error::CliError;

pub fn events(
    config: &crate::config::Config,
    job: Option<&str>,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let query: Vec<String> =
        [("job", job), ("type", kind)].into_iter().filter_map(|(k, v)| Some(format!("{k}={}", encode(v?)))).collect();
    let path = if query.is_empty() { "/api/events".to_string() } else { format!("/api/events?{}", query.join("&")) };
    let mut parser = Parser::default();
    let mut stopping = false;
    let streamed = client.stream(&path, |chunk| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (kind, data) in parser.feed(chunk) {
            stopping |= kind.starts_with("daemon.");
            let line = if json { data } else { describe(&kind, &data) };
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    });
    let status = match streamed {
        // A daemon that said it stops may be gone before its last words.
        Err(_) if stopping => return Ok(ExitCode::SUCCESS),
        other => other?,
    };
    if status != 200 {
        return Err(CliError::from_status(status, "cannot follow the daemon's events".to_string()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Splits a server-sent event stream into (type, data) pairs.
#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
}

impl Parser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let (mut kind, mut data) = (String::from("message"), Vec::new());
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            // A block of comments only (the keep-alive) is no event.
            if !data.is_empty() {
                events.push((kind, data.join("\n")));
            }
        }
        events
    }
}

/// One event as a line: time, type, job, run or request, status, and why.
fn describe(kind: &str, data: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
        return format!("{kind}  {data}");
    };
    let text = |key: &str| v[key].as_str().unwrap_or("").to_string();
    let job = match text("job_type").as_str() {
        "" => text("job"),
        kind => format!("{kind}/{}", text("job")),
    };
    let subject = v["run"].as_str().or(v["request"].as_str()).unwrap_or("");
    let mut line = format!("{}  {kind:<15} {job:<24} {subject:<23} {}", text("time"), text("status"));
    if let Some(error) = v["detail"]["Error"].as_str().or(v["detail"]["error"].as_str()) {
        line.push_str(&format!("  ({error})"));
    }
    if kind == "lagged" {
        line = format!("(too slow: {} events missed)", v["missed"]);
    }
    line.trim_end().to_string()
}

/// `webjobs notifications [--json]`: what waits in the outbox and what was
/// given up (read from the data folder: works without a daemon).
pub fn notifications(config: &crate::config::Config, json: bool) -> anyhow::Result<ExitCode> {
    let (pending, failed) = crate::outbox::read(&config.data_dir.join(crate::layout::OUTBOX));
    if json {
        let body = serde_json::json!({"pending": pending, "failed": failed});
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    if pending.is_empty() && failed.is_empty() {
        println!("no notification pending or given up");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8}  {:<28}  {:<20}  {:<10}  {:>8}  {:<30}  LAST ERROR",
        "STATE", "ID", "JOB", "EVENT", "ATTEMPTS", "URL"
    );
    let rows = pending.iter().map(|d| ("pending", d)).chain(failed.iter().map(|d| ("failed", d)));
    for (state, d) in rows {
        println!(
            "{state:<8}  {:<28}  {:<20}  {:<10}  {:>8}  {:<30}  {}",
            d.id,
            d.job,
            d.event,
            d.attempts,
            d.url,
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunks_and_keep_alives_skipped() {
        let mut p = Parser::default();
        assert!(p.feed(b": keep-alive\n\nid: 1\nevent: run.qu").is_empty());
        let got = p.feed(b"eued\ndata: {\"a\":1}\n\n");
        assert_eq!(got, [("run.queued".to_string(), "{\"a\":1}".to_string())]);
    }

    #[test]
    fn a_line_says_what_happened_to_what() {
        let data = r#"{"id":3,"time":"2026-11-23T22:00:00.000Z","type":"run.ended","job":"report","job_type":"triggered","run":"202611232200000001","status":"Failed","detail":{"Error":"Job failed due to exit code 3"}}"#;
        let line = describe("run.ended", data);
        assert!(line.starts_with("2026-11-23T22:00:00.000Z  run.ended"), "{line}");
        assert!(line.contains("triggered/report"), "{line}");
        assert!(line.contains("202611232200000001"), "{line}");
        assert!(line.contains("Failed  (Job failed due to exit code 3)"), "{line}");
    }
}
