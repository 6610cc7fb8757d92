//! What a run leaves in the database when it starts and ends — its history
//! record, its request put away, its run slot freed — written together with
//! every other run's. One statement per write made the database's work grow
//! with runs (three daemons draining a queue spent about 0.4 ms of the
//! server's CPU on each statement, five per run: parsing, planning and a
//! commit each); written in batches, each kind costs one statement per
//! batch.
//!
//! One batch is in flight at a time; what arrives meanwhile makes the next.
//! A write nobody waits for (a run's record, its request put away, its slot
//! freed, all sent as the run ends) may wait up to [`LINGER`] for others to
//! join it; one somebody waits for goes at once, with whatever is waiting.
//! Within a batch, records come before requests put away, and those before
//! slots freed, as each run sent them. Each write is answered with its
//! batch's outcome; a caller that must not lose it tries again.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use super::postgres::Db;

/// At most this many writes in one batch.
const MAX_BATCH: usize = 1000;

/// How long a write nobody waits for may wait for others: runs ending a few
/// a millisecond then share a statement (three daemons draining a queue made
/// five statements a run, one for each write, the server's CPU their limit).
/// The cost: a run's end shows in the cluster's history, and its request
/// leaves the queue, up to this much later (a daemon killed meanwhile has
/// the request run again, as for a run in flight).
const LINGER: Duration = Duration::from_millis(50);

pub enum Write {
    /// A run's history record (its start, or its end with the tail of its
    /// output), the job's history trimmed to its newest `keep`.
    Record { job: String, id: String, instance: String, status: serde_json::Value, tail: Option<String>, keep: i64 },
    /// A taken request is done (if still taken by `session`); its dedup key
    /// stays held for `window_ms`.
    Done { job: String, id: String, session: i64, window_ms: i64 },
    /// A run slot's lease is freed (if still at `fence`).
    Release { name: String, fence: i64 },
    /// Nothing: answered once every write sent before it is written.
    Flush,
}

struct Pending {
    write: Write,
    /// Someone waits for it: the batch goes now.
    urgent: bool,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Sends writes to the batching task.
#[derive(Clone)]
pub struct Writer(mpsc::UnboundedSender<Pending>);

impl Writer {
    /// Starts the task that writes in batches; it ends when every sender is dropped.
    pub fn start(db: Db) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_in_batches(db, rx));
        Writer(tx)
    }

    /// Writes `write` with the batch it joins; the batch's outcome. `urgent`:
    /// the batch goes at once, rather than within [`LINGER`].
    pub async fn write(&self, write: Write, urgent: bool) -> std::io::Result<()> {
        let (reply, outcome) = oneshot::channel();
        let stopped = || std::io::Error::other("the database writer has stopped");
        self.0.send(Pending { write, urgent, reply }).map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?.map_err(std::io::Error::other)
    }

    /// Every write sent so far, written now.
    pub async fn flush(&self) -> std::io::Result<()> {
        self.write(Write::Flush, true).await
    }
}

async fn write_in_batches(db: Db, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut urgent = first.urgent;
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + LINGER;
        while !urgent && batch.len() < MAX_BATCH {
            tokio::select! {
                pending = rx.recv() => match pending {
                    Some(pending) => {
                        urgent = pending.urgent;
                        batch.push(pending);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(until) => break,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (mut records, mut dones, mut releases, mut flushes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pending in batch {
            match pending.write {
                Write::Record { .. } => records.push(pending),
                Write::Done { .. } => dones.push(pending),
                Write::Release { .. } => releases.push(pending),
                Write::Flush => flushes.push(pending),
            }
        }
        if !records.is_empty() {
            let outcome = write_records(&db, &records).await;
            answer(records, &outcome);
        }
        if !dones.is_empty() {
            let outcome = write_dones(&db, &dones).await;
            answer(dones, &outcome);
        }
        if !releases.is_empty() {
            let outcome = write_releases(&db, &releases).await;
            answer(releases, &outcome);
        }
        answer(flushes, &Ok(()));
    }
}

fn answer(batch: Vec<Pending>, outcome: &std::io::Result<()>) {
    for pending in batch {
        let _ = pending.reply.send(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    }
}

/// The status of a record, `Running` and `Initializing` being a start.
fn is_start(status: &serde_json::Value) -> bool {
    matches!(status.get("Status").and_then(|s| s.as_str()), Some("Initializing" | "Running"))
}

/// A run's record: job, id, instance, status, tail of the output.
type RecordRow<'a> = (&'a str, &'a str, &'a str, &'a serde_json::Value, Option<&'a str>);

/// The records of a batch, one per run (an upsert may touch a row once):
/// a later record of a run replaces an earlier one, except that a start
/// never replaces an end; the output's tail is kept from whichever has it.
fn merged(batch: &[Pending]) -> Vec<RecordRow<'_>> {
    let mut rows: Vec<RecordRow<'_>> = Vec::new();
    let mut at: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for pending in batch {
        let Write::Record { job, id, instance, status, tail, .. } = &pending.write else { continue };
        let key = (job.as_str(), id.as_str(), instance.as_str());
        match at.get(&key) {
            None => {
                at.insert(key, rows.len());
                rows.push((key.0, key.1, key.2, status, tail.as_deref()));
            }
            Some(&i) => {
                let row = &mut rows[i];
                // A start never replaces an end.
                if !is_start(status) || is_start(row.3) {
                    row.3 = status;
                }
                row.4 = tail.as_deref().or(row.4);
            }
        }
    }
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    rows
}

async fn write_records(db: &Db, batch: &[Pending]) -> std::io::Result<()> {
    let rows = merged(batch);
    let mut keep: HashMap<&str, i64> = HashMap::new();
    for pending in batch {
        if let Write::Record { job, keep: k, .. } = &pending.write {
            keep.insert(job, *k);
        }
    }
    let jobs: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let instances: Vec<&str> = rows.iter().map(|r| r.2).collect();
    let statuses: Vec<&serde_json::Value> = rows.iter().map(|r| r.3).collect();
    let tails: Vec<Option<&str>> = rows.iter().map(|r| r.4).collect();
    let (trim_jobs, trim_keep): (Vec<&str>, Vec<i64>) = keep.into_iter().unzip();
    db.query(
        "WITH kept AS (
            INSERT INTO webjobs_runs (job, id, instance, status, output_tail)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[])
            ON CONFLICT (job, id, instance) DO UPDATE SET status = excluded.status,
                output_tail = coalesce(excluded.output_tail, webjobs_runs.output_tail), updated = now()
            -- A start recorded late never hides the end.
            WHERE NOT (webjobs_runs.status->>'Status' NOT IN ('Initializing', 'Running')
                AND excluded.status->>'Status' IN ('Initializing', 'Running'))
            RETURNING id)
         DELETE FROM webjobs_runs r USING unnest($6::text[], $7::int8[]) AS t(job, keep)
         WHERE r.job = t.job AND r.id < (
            SELECT id FROM webjobs_runs x WHERE x.job = t.job ORDER BY id DESC OFFSET t.keep LIMIT 1)",
        &[
            (&jobs, Type::TEXT_ARRAY),
            (&ids, Type::TEXT_ARRAY),
            (&instances, Type::TEXT_ARRAY),
            (&statuses, Type::JSONB_ARRAY),
            (&tails, Type::TEXT_ARRAY),
            (&trim_jobs, Type::TEXT_ARRAY),
            (&trim_keep, Type::INT8_ARRAY),
        ],
    )
    .await
    .map(drop)
}

async fn write_dones(db: &Db, batch: &[Pending]) -> std::io::Result<()> {
    let (mut ids, mut sessions, mut jobs, mut windows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for pending in batch {
        if let Write::Done { job, id, session, window_ms } = &pending.write {
            ids.push(id.as_str());
            sessions.push(*session);
            jobs.push(job.as_str());
            windows.push(*window_ms);
        }
    }
    db.query(
        "WITH gone AS (
            DELETE FROM webjobs_queue q USING unnest($1::text[], $2::int8[], $3::text[], $4::int8[])
                AS i(id, session, job, window_ms)
            WHERE q.id = i.id AND q.taken_by = i.session RETURNING q.id, i.job, i.window_ms),
              kept AS (UPDATE webjobs_keys k SET until = now() + g.window_ms * interval '1 millisecond'
                FROM gone g WHERE k.job = g.job AND k.id = g.id AND g.window_ms > 0 RETURNING k.key)
         DELETE FROM webjobs_keys k USING gone g WHERE k.job = g.job AND k.id = g.id AND g.window_ms = 0",
        &[
            (&ids, Type::TEXT_ARRAY),
            (&sessions, Type::INT8_ARRAY),
            (&jobs, Type::TEXT_ARRAY),
            (&windows, Type::INT8_ARRAY),
        ],
    )
    .await
    .map(drop)
}

async fn write_releases(db: &Db, batch: &[Pending]) -> std::io::Result<()> {
    let (mut names, mut fences) = (Vec::new(), Vec::new());
    for pending in batch {
        if let Write::Release { name, fence } = &pending.write {
            names.push(name.as_str());
            fences.push(*fence);
        }
    }
    db.query(
        "DELETE FROM webjobs_leases l USING unnest($1::text[], $2::int8[]) AS r(name, fence)
         WHERE l.name = r.name AND l.fence = r.fence",
        &[(&names, Type::TEXT_ARRAY), (&fences, Type::INT8_ARRAY)],
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: &str, tail: Option<&str>) -> Pending {
        let write = Write::Record {
            job: "triggered/j".into(),
            id: id.into(),
            instance: "a".into(),
            status: serde_json::json!({ "Status": status }),
            tail: tail.map(str::to_string),
            keep: 5,
        };
        Pending { write, urgent: false, reply: oneshot::channel().0 }
    }

    #[test]
    fn a_run_recorded_twice_in_a_batch_is_one_row_and_its_end_wins() {
        let batch = [
            record("2", "Running", None),
            record("1", "Running", None),
            record("1", "Success", Some("out")),
            // A start that arrives after the end (sent late) never hides it.
            record("1", "Running", None),
        ];
        let rows = merged(&batch);
        let shown: Vec<(&str, &str, Option<&str>)> =
            rows.iter().map(|r| (r.1, r.3["Status"].as_str().unwrap(), r.4)).collect();
        assert_eq!(shown, [("1", "Success", Some("out")), ("2", "Running", None)]);
    }
}
