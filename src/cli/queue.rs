//! `webjobs enqueue`, `webjobs queue`, `webjobs dead`, `webjobs retry`, and
//! the request options `run` shares with `enqueue` (payload, key, priority,
//! correlation id, a time).

use std::io::Read;
use std::process::ExitCode;

use crate::cli::CliError;
use crate::cli::client::{Client, Response, encode};
use crate::config::Config;

/// What a run request carries besides its arguments.
#[derive(Debug, Default, clap::Args)]
pub struct RequestOptions {
    /// The run's payload (stdin of the script, and WEBJOBS_PAYLOAD_FILE):
    /// `@FILE`, `-` for this command's stdin, or the text itself.
    #[arg(long, value_name = "@FILE|-|TEXT")]
    pub payload: Option<String>,
    /// Dedup key: refused while a request with this key is queued or running.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// -100 (last) to 100 (first); default 0.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Kept on the run and given to the script as WEBJOBS_CORRELATION_ID.
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,
    /// Run once at this time (RFC 3339 with offset, e.g. 2026-12-01T09:00:00+01:00).
    #[arg(long, value_name = "TIME", conflicts_with = "in_")]
    pub at: Option<String>,
    /// Run once after this delay (90s, 15m, 2h, 1d, 1h30m).
    #[arg(long = "in", id = "in_", value_name = "DELAY")]
    pub in_: Option<String>,
}

impl RequestOptions {
    /// The query (after `?`, without it) and the body of the request.
    pub fn to_query(&self, args: &[String]) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
        // Exact words (`arg=` each), not Kudu's string: what follows `--` is the script's argv.
        let mut query: Vec<String> = args.iter().map(|a| format!("arg={}", encode(a))).collect();
        if let Some(at) = &self.at {
            let t = crate::queue::parse_at(at).map_err(CliError::Usage)?;
            query.push(format!("at={}", encode(&t.to_string())));
        }
        if let Some(delay) = &self.in_ {
            crate::queue::parse_in(delay).map_err(CliError::Usage)?;
            query.push(format!("in={}", encode(delay)));
        }
        if let Some(p) = self.priority {
            if !crate::queue::PRIORITY_RANGE.contains(&p) {
                return Err(CliError::Usage(format!("--priority must be from -100 to 100, not {p}")).into());
            }
            query.push(format!("priority={p}"));
        }
        for (name, value) in [("key", &self.key), ("correlation_id", &self.correlation_id)] {
            if let Some(v) = value {
                query.push(format!("{name}={}", encode(v)));
            }
        }
        let body = match self.payload.as_deref() {
            None => Vec::new(),
            Some("-") => {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes)?;
                bytes
            }
            Some(p) if p.starts_with('@') => std::fs::read(&p[1..])
                .map_err(|e| CliError::Usage(format!("cannot read the payload file {}: {e}", &p[1..])))?,
            Some(text) => text.as_bytes().to_vec(),
        };
        Ok((query, body))
    }

    /// Whether the request is for later (a one-off run).
    pub fn later(&self) -> bool {
        self.at.is_some() || self.in_.is_some()
    }
}

/// The path with its query; refused when too long to send.
pub fn with_query(mut path: String, query: &[String]) -> anyhow::Result<String> {
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    if path.len() > MAX_URL {
        let message = format!(
            "the arguments are too long to send to the daemon ({} bytes encoded, at most {MAX_URL}); use --payload @FILE",
            path.len()
        );
        return Err(CliError::Usage(message).into());
    }
    Ok(path)
}

/// The longest request line the CLI sends (the daemon reads at most about 400 KiB of head).
const MAX_URL: usize = 64 * 1024;

/// `webjobs enqueue JOB [options] [-- args…]`: queued whatever the overlap
/// policy; prints the request's id (or the run's, when it started at once).
pub fn enqueue(config: &Config, job: &str, options: &RequestOptions, args: &[String]) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let (query, body) = options.to_query(args)?;
    let path = with_query(format!("/api/triggeredwebjobs/{}/queue", encode(job)), &query)?;
    let response = client.post_body(&path, body)?;
    let body = accepted(response)?;
    let request = body["request"].as_str().unwrap_or_default();
    match body["queued"].as_bool() {
        Some(true) => println!("{request} queued"),
        _ => println!("{request} started as run {}", body["id"].as_str().unwrap_or_default()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON of a 202, or the error the status means.
pub fn accepted(response: Response) -> anyhow::Result<serde_json::Value> {
    match response.status {
        202 => Ok(response.json()),
        413 | 400 => Err(CliError::Usage(response.error()).into()),
        status => Err(CliError::from_status(status, response.error())),
    }
}

/// `webjobs queue JOB` (queued requests) and `webjobs dead JOB`.
pub fn list(config: &Config, job: &str, dead: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let what = if dead { "dead" } else { "queue" };
    let response = client.get(&format!("/api/triggeredwebjobs/{}/{what}", encode(job)))?;
    if response.status != 200 {
        return Err(CliError::from_status(response.status, response.error()));
    }
    let body = response.json();
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let requests = body["requests"].as_array().cloned().unwrap_or_default();
    if requests.is_empty() {
        println!("{}", if dead { format!("no dead requests of {job}") } else { format!("nothing queued for {job}") });
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    if dead {
        println!("{:<23}  {:<8}  {:<18}  ERROR", "REQUEST", "ATTEMPTS", "LAST RUN");
        for r in &requests {
            let last = r["runs"].as_array().and_then(|runs| runs.last()).map(text).unwrap_or_else(|| "-".into());
            println!("{:<23}  {:<8}  {:<18}  {}", text(&r["id"]), r["attempts"], last, text(&r["error"]));
        }
    } else {
        println!("{:<23}  {:>8}  {:<24}  {:<24}  TRIGGER", "REQUEST", "PRIORITY", "QUEUED", "DUE");
        for r in &requests {
            let (queued, due) = (text(&r["queued_at"]), text(&r["due"]));
            println!("{:<23}  {:>8}  {queued:<24}  {due:<24}  {}", text(&r["id"]), r["priority"], text(&r["trigger"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `webjobs retry JOB ID`: queues a dead request again (ID: the request's or its last run's).
pub fn retry(config: &Config, job: &str, id: &str) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let response = client.post(&format!("/api/triggeredwebjobs/{}/dead/{}/retry", encode(job), encode(id)))?;
    let body = accepted(response)?;
    println!("{} queued again", body["id"].as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// Cancels queued request `id` (for `webjobs cancel JOB ID` when ID is no active run).
pub fn dequeue(client: &Client, job: &str, id: &str) -> anyhow::Result<Option<ExitCode>> {
    let response = client.delete(&format!("/api/triggeredwebjobs/{}/queue/{}", encode(job), encode(id)))?;
    match response.status {
        200 => {
            println!("{id} Cancelled (it was queued)");
            Ok(Some(ExitCode::SUCCESS))
        }
        404 => Ok(None),
        status => Err(CliError::from_status(status, response.error())),
    }
}
