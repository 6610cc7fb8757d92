//! Schedule ticks claimed together. Many jobs' ticks fall on the same
//! instant (every minute, every hour), and on every daemon of a cluster at
//! once: one statement per job and daemon made the database's work at that
//! instant grow with jobs × daemons, every statement a commit. The ticks a
//! daemon's jobs claim at the same moment go in one statement instead: each
//! tick is claimed (advanced only if newer, and only if the database's clock
//! says it is due) and its request stored, in one transaction, as before.
//!
//! One batch is in flight at a time; what arrives meanwhile makes the next.
//! A batch takes the job rows in name order, so two daemons' batches wait on
//! each other's rows in the same order (never a deadlock), and holds one
//! tick of a job at most (an upsert may touch a row once).

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use super::postgres::{Db, NOW_MS};

/// At most this many ticks in one statement.
const MAX_BATCH: usize = 500;

/// A tick to claim, with the request to store when it is won.
pub struct Claim {
    pub job: String,
    pub id: String,
    pub priority: i32,
    pub due_ms: i64,
    pub entry: serde_json::Value,
    pub tick_ms: i64,
}

struct Pending {
    claim: Claim,
    /// Whether this daemon won the tick (its request is stored), or why the
    /// statement failed.
    reply: oneshot::Sender<Result<bool, String>>,
}

/// Sends claims to the batching task.
pub struct Claimer(mpsc::UnboundedSender<Pending>);

impl Claimer {
    /// Starts the task that claims ticks in batches; it ends when the claimer is dropped.
    pub fn start(db: Db) -> Claimer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(claim_in_batches(db, rx));
        Claimer(tx)
    }

    /// Claims the tick with the batch it joins: whether this daemon won it
    /// (its request is stored).
    pub async fn claim(&self, claim: Claim) -> std::io::Result<bool> {
        let (reply, won) = oneshot::channel();
        let stopped = || std::io::Error::other("the tick claimer has stopped");
        self.0.send(Pending { claim, reply }).map_err(|_| stopped())?;
        won.await.map_err(|_| stopped())?.map_err(std::io::Error::other)
    }
}

async fn claim_in_batches(db: Db, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut held: Option<Pending> = None;
    loop {
        let first = match held.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // The other jobs woken by the same tick send theirs first.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(pending) = rx.try_recv() else { break };
            if batch.iter().any(|p| p.claim.job == pending.claim.job) {
                held = Some(pending);
                break;
            }
            batch.push(pending);
        }
        batch.sort_by(|a, b| a.claim.job.cmp(&b.claim.job));
        match claim_all(&db, &batch).await {
            Ok(won) => {
                for pending in batch {
                    let _ = pending.reply.send(Ok(won.contains(&pending.claim.id)));
                }
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Claims every tick of `batch` that is due and newer than its job's last
/// one, storing its request; returns the ids of the requests stored.
async fn claim_all(db: &Db, batch: &[Pending]) -> std::io::Result<Vec<String>> {
    let batch: Vec<&Claim> = batch.iter().map(|p| &p.claim).collect();
    let jobs: Vec<&str> = batch.iter().map(|c| c.job.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|c| c.id.as_str()).collect();
    let priorities: Vec<i32> = batch.iter().map(|c| c.priority).collect();
    let due: Vec<i64> = batch.iter().map(|c| c.due_ms).collect();
    let entries: Vec<&serde_json::Value> = batch.iter().map(|c| &c.entry).collect();
    let ticks: Vec<i64> = batch.iter().map(|c| c.tick_ms).collect();
    let rows = db
        .query(
            &format!(
                "WITH input AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::jsonb[], $6::int8[])
                WITH ORDINALITY AS i(job, id, priority, due_ms, entry, tick, n)),
             claim AS (
                INSERT INTO webjobs_ticks (job, last_tick)
                SELECT job, to_timestamp(tick::float8 / 1000) FROM input WHERE tick <= {NOW_MS} + 1000 ORDER BY n
                ON CONFLICT (job) DO UPDATE SET last_tick = excluded.last_tick
                WHERE webjobs_ticks.last_tick < excluded.last_tick RETURNING job),
             queued AS (
                INSERT INTO webjobs_queue (id, job, state, priority, due_ms, entry)
                SELECT i.id, i.job, 'queued', i.priority, i.due_ms, i.entry FROM input i JOIN claim c USING (job)
                RETURNING id)
             SELECT id FROM queued"
            ),
            &[
                (&jobs, Type::TEXT_ARRAY),
                (&ids, Type::TEXT_ARRAY),
                (&priorities, Type::INT4_ARRAY),
                (&due, Type::INT8_ARRAY),
                (&entries, Type::JSONB_ARRAY),
                (&ticks, Type::INT8_ARRAY),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
