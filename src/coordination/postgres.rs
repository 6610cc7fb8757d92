//! The PostgreSQL backend of [`super::Coordinator`]: daemons on machines
//! with no shared disk agree through one database.
//!
//! - **Sessions on the database's clock.** Each daemon holds one row in
//!   `webjobs_sessions` whose `expires` is set from the database's `now()`
//!   (never the daemon's clock) and renewed every ttl/5 by the *beat*, one
//!   statement that also reads what the daemon needs to know (live
//!   instances, held leases, jobs with due or orphaned requests).
//! - **Leases belong to a session** (`webjobs_leases`: singleton jobs, run
//!   locks). A lease is taken over only once its holder's session expired
//!   more than the lease's grace ago (the job's `stopping_wait_time` + 1 s),
//!   and every takeover draws a new **fencing token** from a sequence
//!   (`WEBJOBS_FENCE`).
//! - **The holder fences itself**: with no renewal confirmed for ttl − ttl/5
//!   (measured from when the renewal was sent), [`Beat::fenced`] is set and
//!   every leased job is stopped by the stop protocol — before a successor
//!   may start. A daemon whose session expired (it was paused, or cut off)
//!   opens a new one; its old leases are gone, and every write it makes is
//!   conditioned on what it still holds, so it never writes over a successor.
//! - **Ticks** are claimed in one statement that advances a job's last tick
//!   only if older, and only if the database's clock says it is due.
//! - **The queue** is `webjobs_queue`, taken `FOR UPDATE SKIP LOCKED`.
//! - No session state lives in a connection (no advisory locks beyond one
//!   transaction, no prepared statements: every statement is sent typed and
//!   unnamed), so PgBouncer in transaction mode works. The statement sent
//!   for every run (the take) is a PL/pgSQL function, whose plan the server
//!   keeps per connection on its own. `LISTEN webjobs` on a connection of its
//!   own is only a hint that brings the next beat forward.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::queue::{Duplicate, Place, Taken, Unstored};
use crate::key::JobKey;
use crate::queue::{Entry, Slot};

/// `"coordination": {"postgres": …}` in the daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgresql://user:password@host:port/db?sslmode=require` (libpq's URL
    /// or key=value form).
    pub url: String,
    /// How long a session lives without a renewal (renewed every ttl/5).
    pub ttl: Duration,
    /// Certificates (PEM) to trust for TLS to the database, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The URL other daemons reach this one's API at (log reads of its runs).
    pub advertise: Option<String>,
}

impl PgSettings {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

    /// The URL with its password hidden, for messages.
    pub fn shown(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.url[scheme + 3..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{}{user}:***{}", &self.url[..scheme + 3], &self.url[at..]),
                    None => self.url.clone(),
                }
            }
            _ => self.url.split_whitespace().filter(|w| !w.starts_with("password=")).collect::<Vec<_>>().join(" "),
        }
    }
}

/// The database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL URL {url}: {cause}")]
    Url { url: String, cause: String },
    #[error("cannot read the certificates in {path}: {cause}")]
    Ca { path: PathBuf, cause: String },
    #[error("cannot reach PostgreSQL at {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("cannot migrate the webjobs schema in {url}: {cause}")]
    Migrate { url: String, cause: String },
}

/// What the last beat told (and whether this daemon's session is confirmed).
#[derive(Debug, Clone, Default)]
pub struct Beat {
    /// Bumped at every beat, answered or not.
    pub seq: u64,
    /// This daemon's session.
    pub session: i64,
    /// No renewal confirmed for ttl − ttl/5: leased jobs stop now.
    pub fenced: bool,
    /// Instances with a live session.
    pub alive: BTreeSet<String>,
    /// Leases held by a live session (or one within its grace): by which
    /// session, and in how many milliseconds after the beat they may be
    /// taken over if that session is not renewed.
    pub held: std::collections::BTreeMap<String, (i64, i64)>,
    /// When the beat was answered.
    pub at: Option<tokio::time::Instant>,
    /// Jobs (`triggered/name`) with a due queued request.
    pub due: BTreeSet<String>,
    /// Jobs with a request taken by a session that is gone.
    pub orphaned: BTreeSet<String>,
    /// Jobs stopped (true) or started (false) on every daemon at once.
    pub toggled: std::collections::BTreeMap<String, bool>,
    /// Why the last beat failed, if it did.
    pub error: Option<String>,
}

/// The database backend, shared by every actor.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("url", &self.inner.shown).finish()
    }
}

struct Inner {
    db: Db,
    pg_config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    shown: String,
    /// This daemon's session id (0 before it registers).
    session: AtomicI64,
    beat: watch::Sender<Beat>,
    /// A beat is wanted now (a notification arrived, a lease was released).
    wake: tokio::sync::Notify,
    /// Where request payloads taken by this daemon are put for their runs.
    data_dir: PathBuf,
    /// The jobs this daemon runs and their content hashes, sent with the
    /// next beat when they changed.
    jobs: std::sync::Mutex<Option<serde_json::Value>>,
    /// Schedule ticks to claim, sent together ([`super::tick_claims`]).
    claims: super::tick_claims::Claimer,
    /// Records, requests put away and run slots freed, written together ([`super::pg_writes`]).
    writes: super::pg_writes::Writer,
}

/// The versioned schema: each step runs once, in order, in one transaction.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, leases, ticks, queue, dedup keys.
    "CREATE SEQUENCE webjobs_fence;
     CREATE TABLE webjobs_sessions (
        id bigserial PRIMARY KEY,
        instance text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        data_dir text NOT NULL,
        api text,
        version text NOT NULL,
        started timestamptz NOT NULL DEFAULT now(),
        expires timestamptz NOT NULL,
        ttl_ms bigint NOT NULL,
        jobs jsonb NOT NULL DEFAULT '{}');
     CREATE INDEX webjobs_sessions_instance ON webjobs_sessions (instance);
     -- Until when a session is alive: its expiry, but never before a ttl
     -- after the server (re)started: the database's own downtime does not
     -- count against the daemons, which could not renew meanwhile.
     CREATE FUNCTION webjobs_until(s webjobs_sessions) RETURNS timestamptz LANGUAGE sql STABLE AS
        'SELECT greatest(s.expires, pg_postmaster_start_time() + s.ttl_ms * interval ''1 millisecond'')';
     CREATE TABLE webjobs_leases (
        name text PRIMARY KEY,
        session bigint NOT NULL,
        holder text NOT NULL,
        fence bigint NOT NULL,
        grace_ms bigint NOT NULL,
        acquired timestamptz NOT NULL DEFAULT now());
     CREATE TABLE webjobs_ticks (job text PRIMARY KEY, last_tick timestamptz NOT NULL);
     CREATE TABLE webjobs_queue (
        id text PRIMARY KEY,
        job text NOT NULL,
        state text NOT NULL CHECK (state IN ('queued', 'taken', 'dead')),
        priority integer NOT NULL,
        due_ms bigint NOT NULL,
        entry jsonb NOT NULL,
        payload bytea,
        taken_by bigint,
        grace_ms bigint NOT NULL DEFAULT 0,
        updated timestamptz NOT NULL DEFAULT now());
     CREATE INDEX webjobs_queue_next ON webjobs_queue (job, state, priority DESC, id);
     CREATE INDEX webjobs_queue_due ON webjobs_queue (state, due_ms);
     CREATE TABLE webjobs_keys (
        job text NOT NULL,
        key text NOT NULL,
        id text NOT NULL,
        until timestamptz,
        PRIMARY KEY (job, key));",
    // 2: the cluster's run history (the full logs stay with the daemon that ran them).
    "CREATE TABLE webjobs_runs (
        job text NOT NULL,
        id text NOT NULL,
        instance text NOT NULL,
        status jsonb NOT NULL,
        output_tail text,
        updated timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (job, id, instance));
     CREATE INDEX webjobs_runs_newest ON webjobs_runs (job, id DESC);",
    // 3: jobs started or stopped on every daemon at once.
    "CREATE TABLE webjobs_jobs (
        job text PRIMARY KEY,
        disabled boolean NOT NULL,
        by_instance text NOT NULL,
        changed timestamptz NOT NULL DEFAULT now());",
    // 4: the take of a queued request with a run slot, as a function: PL/pgSQL
    // keeps its plan per server connection, so it is parsed and planned once
    // there, whoever sends the call (PgBouncer's transaction mode included),
    // not for every run. See `JobPg::take_leased`.
    "CREATE FUNCTION webjobs_take_leased(p_job text, p_session bigint, p_names text[], p_instance text,
        p_grace_ms bigint, p_busy text[])
     RETURNS TABLE (due bigint, name text, fence bigint, entry jsonb, payload bytea, free bigint)
     LANGUAGE plpgsql AS $$
     #variable_conflict use_column
     BEGIN
        WITH head AS (
            SELECT q.id FROM webjobs_queue q WHERE q.job = p_job AND q.state = 'queued'
            AND q.due_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint
            ORDER BY q.priority DESC, q.id LIMIT 1 FOR UPDATE SKIP LOCKED),
         free_slots AS (
            SELECT c.name FROM unnest(p_names) AS c(name)
            WHERE EXISTS (SELECT 1 FROM head)
            AND EXISTS (SELECT 1 FROM webjobs_sessions s WHERE s.id = p_session AND webjobs_until(s) > now())
            AND NOT EXISTS (SELECT 1 FROM webjobs_leases l JOIN webjobs_sessions s ON s.id = l.session
                WHERE l.name = c.name AND webjobs_until(s) + l.grace_ms * interval '1 millisecond' > now()
                AND NOT (l.session = p_session AND l.name <> ALL(p_busy)))),
         pick AS (SELECT f.name FROM free_slots f ORDER BY random() LIMIT 1),
         lease AS (
            INSERT INTO webjobs_leases AS t (name, session, holder, fence, grace_ms)
            SELECT pick.name, p_session, p_instance, nextval('webjobs_fence'), p_grace_ms FROM pick
            ON CONFLICT (name) DO UPDATE SET session = excluded.session, holder = excluded.holder,
                fence = excluded.fence, grace_ms = excluded.grace_ms, acquired = now()
            WHERE (t.session = excluded.session AND t.name <> ALL(p_busy))
                OR NOT EXISTS (SELECT 1 FROM webjobs_sessions s WHERE s.id = t.session
                AND webjobs_until(s) + t.grace_ms * interval '1 millisecond' > now())
            RETURNING t.name, t.fence),
         req AS (
            UPDATE webjobs_queue q SET state = 'taken', taken_by = p_session, grace_ms = p_grace_ms, updated = now()
            WHERE q.id = (SELECT head.id FROM head) AND EXISTS (SELECT 1 FROM lease)
            RETURNING q.entry, q.payload)
        SELECT (SELECT count(*) FROM head), l.name, l.fence, r.entry, r.payload, (SELECT count(*) FROM free_slots)
        INTO due, name, fence, entry, payload, free
        FROM (SELECT 1) one LEFT JOIN lease l ON true LEFT JOIN req r ON true;
        RETURN NEXT;
     END $$;",
];

/// Milliseconds since the epoch on the database's clock, in SQL.
pub(super) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// An error and its causes, as one line ("… : error performing TLS
/// handshake: invalid peer certificate: UnknownIssuer").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("PostgreSQL: {e}"))
}

impl Postgres {
    /// Connects (a pool, nothing opened yet) and brings the schema up to date.
    pub async fn open(settings: &PgSettings, data_dir: &Path) -> Result<Postgres, PgError> {
        let shown = settings.shown();
        let mut pg_config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Url { url: shown.clone(), cause: e.to_string() })?;
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("webjobs");
        }
        pg_config.connect_timeout(settings.ttl);
        // A silent network (a cut cable) fails a statement within the ttl, not after minutes.
        pg_config.tcp_user_timeout(settings.ttl);
        pg_config.keepalives_idle(settings.ttl);
        let tls = tls_connector(settings.ca_file.as_deref())?;
        let manager = Manager::from_config(
            pg_config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            // The connection used last is used again: its server process has
            // the take's plan and the catalog cached; the others stay idle.
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.ttl))
            .create_timeout(Some(settings.ttl))
            .build()
            .map_err(|e| PgError::Connect { url: shown.clone(), cause: e.to_string() })?;
        let db = Db { pool, ttl: settings.ttl };
        let claims = super::tick_claims::Claimer::start(db.clone());
        let writes = super::pg_writes::Writer::start(db.clone());
        let pg = Postgres {
            inner: Arc::new(Inner {
                db,
                pg_config,
                tls,
                shown,
                session: AtomicI64::new(0),
                beat: watch::Sender::new(Beat::default()),
                wake: tokio::sync::Notify::new(),
                data_dir: data_dir.to_path_buf(),
                jobs: std::sync::Mutex::new(None),
                claims,
                writes,
            }),
        };
        pg.migrate().await?;
        Ok(pg)
    }

    pub fn describe(&self) -> String {
        format!("PostgreSQL at {} (session ttl {} ms)", self.inner.shown, self.inner.db.ttl.as_millis())
    }

    /// Applies the migrations not yet applied; returns the schema's version.
    /// Daemons starting together take turns (a lock held for the transaction).
    pub async fn migrate(&self) -> Result<usize, PgError> {
        let err = |e: &dyn std::fmt::Display| PgError::Migrate { url: self.inner.shown.clone(), cause: e.to_string() };
        let mut client = self
            .inner
            .db
            .pool
            .get()
            .await
            .map_err(|e| PgError::Connect { url: self.inner.shown.clone(), cause: with_causes(&e) })?;
        let tx = client.transaction().await.map_err(|e| err(&e))?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(2026112401);
             CREATE TABLE IF NOT EXISTS webjobs_schema (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .map_err(|e| err(&e))?;
        let row =
            tx.query_one("SELECT coalesce(max(version), 0) FROM webjobs_schema", &[]).await.map_err(|e| err(&e))?;
        let current = row.get::<_, i32>(0) as usize;
        if current > MIGRATIONS.len() {
            return Err(err(&format!(
                "the database's schema is version {current}, newer than this webjobs knows ({}); upgrade this daemon",
                MIGRATIONS.len()
            )));
        }
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            tx.batch_execute(sql).await.map_err(|e| err(&format!("step {}: {e}", n + 1)))?;
            tx.execute("INSERT INTO webjobs_schema (version) VALUES ($1)", &[&((n + 1) as i32)])
                .await
                .map_err(|e| err(&e))?;
        }
        tx.commit().await.map_err(|e| err(&e))?;
        Ok(MIGRATIONS.len())
    }

    /// One statement on a pooled connection, within the ttl ([`Db::query`]).
    async fn query(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> io::Result<Vec<Row>> {
        self.inner.db.query(sql, params).await
    }

    fn session(&self) -> i64 {
        self.inner.session.load(Ordering::Acquire)
    }

    /// Opens this daemon's session as instance `id`. A live session of the
    /// same instance on another host refuses it; one on this host and data
    /// folder is this daemon's previous life (the local instance lock says no
    /// other lives): it is expired now, its leases kept for their grace.
    pub async fn register(&self, id: &str, api: Option<String>) -> Result<(), String> {
        let host = hostname();
        let data = self.inner.data_dir.display().to_string();
        let rows = self
            .query(
                "SELECT host, data_dir, pid FROM webjobs_sessions WHERE instance = $1 AND webjobs_until(webjobs_sessions) > now() AND NOT (host = $2 AND data_dir = $3)",
                &[(&id, Type::TEXT), (&host, Type::TEXT), (&data, Type::TEXT)],
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(row) = rows.first() {
            let (other, dir, pid): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
            return Err(format!(
                "instance id `{id}` is in use by a live daemon on host {other} (pid {pid}, data folder {dir}); give each daemon its own instance_id"
            ));
        }
        self.query(
            "UPDATE webjobs_sessions SET expires = least(expires, now()) WHERE instance = $1 AND host = $2 AND data_dir = $3",
            &[(&id, Type::TEXT), (&host, Type::TEXT), (&data, Type::TEXT)],
        )
        .await
        .map_err(|e| e.to_string())?;
        self.open_session(id, api).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn open_session(&self, id: &str, api: Option<String>) -> io::Result<i64> {
        let ttl = self.inner.db.ttl.as_millis() as i64;
        let (host, pid, data) = (hostname(), std::process::id() as i32, self.inner.data_dir.display().to_string());
        let version = env!("CARGO_PKG_VERSION");
        let rows = self
            .query(
                "INSERT INTO webjobs_sessions (instance, host, pid, data_dir, api, version, expires, ttl_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 millisecond', $7) RETURNING id",
                &[
                    (&id, Type::TEXT),
                    (&host, Type::TEXT),
                    (&pid, Type::INT4),
                    (&data, Type::TEXT),
                    (&api, Type::TEXT),
                    (&version, Type::TEXT),
                    (&ttl, Type::INT8),
                ],
            )
            .await?;
        let session: i64 = rows.first().ok_or_else(|| io_err("no session id returned"))?.get(0);
        self.inner.session.store(session, Ordering::Release);
        self.inner.beat.send_modify(|b| {
            b.session = session;
            b.fenced = false;
        });
        Ok(session)
    }

    /// Keeps the session alive until the task is aborted: a beat every
    /// ttl/5 (sooner when woken), self-fencing when renewals stop being
    /// confirmed, a new session when the old one expired.
    pub async fn keep(self, instance: String, api: Option<String>) {
        let ttl = self.inner.db.ttl;
        let every = ttl / 5;
        let mut confirmed = tokio::time::Instant::now();
        // Ends with the keeper (aborted at a graceful stop).
        let _listener = AbortOnDrop(tokio::spawn(self.clone().listen()));
        loop {
            let sent = tokio::time::Instant::now();
            match tokio::time::timeout(every.max(Duration::from_millis(200)), self.beat()).await {
                Ok(Ok((renewed, mut beat))) => {
                    if renewed {
                        confirmed = sent;
                    } else {
                        tracing::warn!(
                            "the PostgreSQL session of this daemon expired (it was paused or cut off for longer than {} ms): its leased jobs are stopped and a new session is opened",
                            ttl.as_millis()
                        );
                        self.inner.beat.send_modify(|b| b.fenced = true);
                        match self.open_session(&instance, api.clone()).await {
                            Ok(_) => confirmed = sent,
                            Err(e) => beat.error = Some(e.to_string()),
                        }
                    }
                    self.publish(beat, confirmed);
                }
                Ok(Err(e)) => self.failed(e.to_string(), confirmed),
                Err(_) => self.failed(format!("no answer within {} ms", every.as_millis()), confirmed),
            }
            let fence_at = confirmed + ttl - every;
            tokio::select! {
                () = tokio::time::sleep_until(sent + every) => {}
                () = self.inner.wake.notified() => {
                    // Notifications in a burst bring one beat forward, not one each.
                    tokio::time::sleep_until(sent + Duration::from_millis(50)).await;
                }
                () = tokio::time::sleep_until(fence_at), if !self.inner.beat.borrow().fenced => {
                    self.fence_if_due(confirmed);
                    tokio::time::sleep_until(sent + every).await;
                }
            }
        }
    }

    fn publish(&self, mut beat: Beat, confirmed: tokio::time::Instant) {
        let fenced = self.is_overdue(confirmed);
        self.inner.beat.send_modify(|b| {
            if b.error.is_some() {
                tracing::info!("PostgreSQL answers again; leased jobs may start");
            }
            beat.seq = b.seq + 1;
            beat.session = self.session();
            beat.fenced = fenced;
            *b = beat;
        });
    }

    fn failed(&self, error: String, confirmed: tokio::time::Instant) {
        let fenced = self.is_overdue(confirmed);
        let shown = self.inner.shown.clone();
        self.inner.beat.send_modify(|b| {
            if b.error.is_none() {
                tracing::warn!("PostgreSQL at {shown} does not answer: {error}");
            }
            if fenced && !b.fenced {
                tracing::error!(
                    "no session renewal confirmed by PostgreSQL for {} ms: stopping every leased job (singletons, runs) until it answers",
                    self.inner.db.ttl.as_millis() * 4 / 5
                );
            }
            b.seq += 1;
            b.fenced = fenced;
            b.error = Some(error);
        });
    }

    fn is_overdue(&self, confirmed: tokio::time::Instant) -> bool {
        let ttl = self.inner.db.ttl;
        tokio::time::Instant::now() >= confirmed + ttl - ttl / 5
    }

    fn fence_if_due(&self, confirmed: tokio::time::Instant) {
        if self.is_overdue(confirmed) {
            let error = self.inner.beat.borrow().error.clone().unwrap_or_else(|| "no answer".into());
            self.failed(error, confirmed);
        }
    }

    /// Renews the session and reads the cluster's state, in one statement.
    async fn beat(&self) -> io::Result<(bool, Beat)> {
        let session = self.session();
        let ttl = self.inner.db.ttl.as_millis() as i64;
        let jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let rows = self
            .query(
                &format!(
                    "WITH renewed AS (
                        UPDATE webjobs_sessions SET expires = now() + $2 * interval '1 millisecond',
                            jobs = coalesce($3, jobs)
                        WHERE id = $1 AND webjobs_until(webjobs_sessions) > now() RETURNING id)
                     SELECT 'renewed', '' FROM renewed
                     UNION ALL SELECT 'alive', instance FROM webjobs_sessions WHERE webjobs_until(webjobs_sessions) > now()
                     UNION ALL SELECT 'held', l.name || ' ' || l.session || ' ' ||
                        (extract(epoch FROM webjobs_until(s) + l.grace_ms * interval '1 millisecond' - now()) * 1000)::bigint
                        FROM webjobs_leases l JOIN webjobs_sessions s ON s.id = l.session
                        WHERE webjobs_until(s) + l.grace_ms * interval '1 millisecond' > now()
                     UNION ALL (SELECT DISTINCT 'due', job FROM webjobs_queue WHERE state = 'queued' AND due_ms <= {NOW_MS})
                     UNION ALL (SELECT DISTINCT 'orphan', q.job FROM webjobs_queue q WHERE q.state = 'taken'
                        AND NOT EXISTS (SELECT 1 FROM webjobs_sessions s WHERE s.id = q.taken_by
                            AND webjobs_until(s) + q.grace_ms * interval '1 millisecond' > now()))
                     UNION ALL SELECT CASE WHEN disabled THEN 'stopped' ELSE 'started' END, job FROM webjobs_jobs"
                ),
                &[(&session, Type::INT8), (&ttl, Type::INT8), (&jobs, Type::JSONB)],
            )
            .await
            .inspect_err(|_| {
                // Sent again with the next beat.
                if let Some(jobs) = &jobs {
                    self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(jobs.clone());
                }
            })?;
        let mut beat = Beat { at: Some(tokio::time::Instant::now()), ..Beat::default() };
        let mut renewed = false;
        for row in rows {
            let (kind, name): (&str, String) = (row.get(0), row.get(1));
            match kind {
                "renewed" => renewed = true,
                "alive" => drop(beat.alive.insert(name)),
                "held" => {
                    let mut parts = name.rsplitn(3, ' ');
                    if let (Some(free_in), Some(session), Some(lease)) = (parts.next(), parts.next(), parts.next()) {
                        let (session, free_in) = (session.parse().unwrap_or(0), free_in.parse().unwrap_or(0));
                        beat.held.insert(lease.to_string(), (session, free_in));
                    }
                }
                "due" => drop(beat.due.insert(name)),
                "stopped" => drop(beat.toggled.insert(name, true)),
                "started" => drop(beat.toggled.insert(name, false)),
                _ => drop(beat.orphaned.insert(name)),
            }
        }
        Ok((renewed, beat))
    }

    /// `LISTEN webjobs` on a connection of its own: each notification brings
    /// the next beat forward. Reconnects after a second when it drops.
    async fn listen(self) {
        use futures_util::StreamExt;
        loop {
            if let Ok((client, mut connection)) = self.inner.pg_config.connect(self.inner.tls.clone()).await {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let driver = tokio::spawn(stream.for_each(move |message| {
                    if let Ok(tokio_postgres::AsyncMessage::Notification(_)) = message {
                        let _ = tx.send(());
                    }
                    std::future::ready(())
                }));
                if client.batch_execute("LISTEN webjobs").await.is_ok() {
                    while rx.recv().await.is_some() {
                        self.inner.wake.notify_one();
                    }
                }
                driver.abort();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Ends this daemon's session (a graceful stop): its leases go at once
    /// and the other daemons are told.
    pub async fn deregister(&self) {
        // What ended runs left to write goes first (their requests put
        // away): a request still taken by a session that is gone would run again.
        let _ = self.inner.writes.flush().await;
        let session = self.session();
        let _ = self
            .query(
                "WITH gone AS (DELETE FROM webjobs_sessions WHERE id = $1 RETURNING id),
                      freed AS (DELETE FROM webjobs_leases WHERE session IN (SELECT id FROM gone) RETURNING name)
                 SELECT pg_notify('webjobs', 'lease') FROM gone",
                &[(&session, Type::INT8)],
            )
            .await;
    }

    /// The cluster as the last beat saw it.
    pub fn beat_state(&self) -> watch::Receiver<Beat> {
        self.inner.beat.subscribe()
    }

    pub fn alive(&self, id: &str) -> bool {
        self.inner.beat.borrow().alive.contains(id)
    }

    pub fn instances(&self) -> Vec<String> {
        self.inner.beat.borrow().alive.iter().cloned().collect()
    }

    /// Takes lease `name` if free, or held by a session that expired more
    /// than its grace ago, or already ours; with a new fencing token.
    pub async fn try_lease(&self, name: &str, instance: &str, grace: Duration) -> io::Result<Option<PgLease>> {
        self.try_any(&[name.to_string()], instance, grace, &[]).await
    }

    /// Takes one of `names` (in random order: daemons taking slots at once
    /// seldom meet), free or held by a session gone for more than its grace,
    /// or held by this session but not in `busy` (taken again, a new token:
    /// a singleton after a fence, a run slot whose release never reached
    /// the database).
    async fn try_any(
        &self,
        names: &[String],
        instance: &str,
        grace: Duration,
        busy: &[String],
    ) -> io::Result<Option<PgLease>> {
        if self.inner.beat.borrow().fenced {
            return Err(io_err(
                "this daemon's session is not confirmed by the database (fenced) until it answers again",
            ));
        }
        let session = self.session();
        let grace_ms = grace.as_millis() as i64;
        // Two daemons may pick the same free slot at once: the loser tries once more.
        for _ in 0..if names.len() > 1 { 2 } else { 1 } {
            let rows = self
                .query(
                    "WITH pick AS (
                        SELECT c.name FROM unnest($1::text[]) AS c(name)
                        WHERE NOT EXISTS (SELECT 1 FROM webjobs_leases l JOIN webjobs_sessions s ON s.id = l.session
                            WHERE l.name = c.name AND webjobs_until(s) + l.grace_ms * interval '1 millisecond' > now()
                            AND NOT (l.session = $2 AND l.name <> ALL($5)))
                        ORDER BY random() LIMIT 1)
                     INSERT INTO webjobs_leases (name, session, holder, fence, grace_ms)
                     SELECT pick.name, $2, $3, nextval('webjobs_fence'), $4 FROM pick
                        WHERE EXISTS (SELECT 1 FROM webjobs_sessions WHERE id = $2 AND webjobs_until(webjobs_sessions) > now())
                     ON CONFLICT (name) DO UPDATE SET session = excluded.session, holder = excluded.holder,
                        fence = excluded.fence, grace_ms = excluded.grace_ms, acquired = now()
                     WHERE (webjobs_leases.session = excluded.session AND webjobs_leases.name <> ALL($5)) OR NOT EXISTS (
                        SELECT 1 FROM webjobs_sessions s WHERE s.id = webjobs_leases.session
                        AND webjobs_until(s) + webjobs_leases.grace_ms * interval '1 millisecond' > now())
                     RETURNING name, fence",
                    &[
                        (&names, Type::TEXT_ARRAY),
                        (&session, Type::INT8),
                        (&instance, Type::TEXT),
                        (&grace_ms, Type::INT8),
                        (&busy, Type::TEXT_ARRAY),
                    ],
                )
                .await?;
            if let Some(row) = rows.first() {
                return Ok(Some(PgLease { name: row.get(0), session, fence: row.get(1), pg: Some(self.clone()) }));
            }
        }
        Ok(None)
    }

    /// Who holds lease `name`, in words.
    pub async fn lease_holder(&self, name: &str) -> Option<String> {
        let rows = self
            .query(
                "SELECT l.holder, l.fence, s.host, webjobs_until(s) > now() FROM webjobs_leases l
                 LEFT JOIN webjobs_sessions s ON s.id = l.session WHERE l.name = $1",
                &[(&name, Type::TEXT)],
            )
            .await
            .ok()?;
        let row = rows.first()?;
        let (holder, fence, host, live): (String, i64, Option<String>, Option<bool>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let host = host.map(|h| format!(" on {h}")).unwrap_or_default();
        let state = if live == Some(true) { "" } else { ", its session expired: taken over after its grace" };
        Some(format!("instance {holder}{host} (fence {fence}{state})"))
    }

    /// Waits until a beat says lease `name` is free or ours, or until its
    /// holder's session (unless renewed) and grace are over, or `max`.
    pub async fn lease_free(&self, name: &str, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let mut rx = self.inner.beat.subscribe();
        let seq = rx.borrow().seq;
        loop {
            let until = {
                let b = rx.borrow_and_update();
                let held = b.held.get(name).filter(|(session, _)| *session != b.session);
                if b.seq != seq && !b.fenced && held.is_none() {
                    return;
                }
                let over =
                    held.zip(b.at).map(|((_, free_in), at)| at + Duration::from_millis((*free_in).max(0) as u64));
                over.map_or(deadline, |t| t.min(deadline))
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    fn release(&self, name: String, fence: i64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let pg = self.clone();
        handle.spawn(async move {
            // A database away for a moment: tried again (what is left after
            // that is taken again by this session's next run, see `try_any`).
            for _ in 0..5 {
                // Standbys of a singleton are told at once; a run slot is
                // found free by whoever tries next, and freed with others.
                let freed = if name.starts_with("singleton:") {
                    let sql = "WITH freed AS (DELETE FROM webjobs_leases WHERE name = $1 AND fence = $2 RETURNING name)
                               SELECT pg_notify('webjobs', 'lease') FROM freed";
                    pg.query(sql, &[(&name, Type::TEXT), (&fence, Type::INT8)]).await.map(drop)
                } else {
                    pg.inner.writes.write(super::pg_writes::Write::Release { name: name.clone(), fence }, false).await
                };
                if freed.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// The jobs this daemon runs (`kind/name` → content hash), for version
    /// skew: sent with the next beat.
    pub fn report_jobs(&self, jobs: serde_json::Value) {
        *self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(jobs);
    }

    /// Stops (or starts) job `key` on every daemon of the cluster.
    pub async fn set_disabled(&self, key: &JobKey, disabled: bool, instance: &str) -> io::Result<()> {
        let job = job_name(key);
        self.query(
            "WITH set AS (INSERT INTO webjobs_jobs (job, disabled, by_instance) VALUES ($1, $2, $3)
                ON CONFLICT (job) DO UPDATE SET disabled = excluded.disabled, by_instance = excluded.by_instance, changed = now()
                RETURNING job)
             SELECT pg_notify('webjobs', 'jobs') FROM set",
            &[(&job, Type::TEXT), (&disabled, Type::BOOL), (&instance, Type::TEXT)],
        )
        .await?;
        Ok(())
    }

    /// The daemons with a live session, and the jobs whose content differs
    /// between them.
    pub async fn cluster(&self) -> io::Result<serde_json::Value> {
        let rows = self
            .query(
                "SELECT instance, host, pid, api, version, started::text, expires::text, jobs, id
                 FROM webjobs_sessions WHERE webjobs_until(webjobs_sessions) > now() ORDER BY instance",
                &[],
            )
            .await?;
        let mut instances = Vec::new();
        let mut versions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>> =
            Default::default();
        for row in &rows {
            let instance: String = row.get(0);
            let jobs: serde_json::Value = row.get(7);
            for (job, hash) in jobs.as_object().into_iter().flatten() {
                let hash = hash.as_str().unwrap_or_default().to_string();
                versions.entry(job.clone()).or_default().entry(hash).or_default().push(instance.clone());
            }
            instances.push(serde_json::json!({
                "instance": instance,
                "host": row.get::<_, String>(1),
                "pid": row.get::<_, i32>(2),
                "api": row.get::<_, Option<String>>(3),
                "version": row.get::<_, String>(4),
                "started": row.get::<_, String>(5),
                "expires": row.get::<_, String>(6),
                "session": row.get::<_, i64>(8),
                "jobs": jobs.as_object().map_or(0, |j| j.len()),
                "this": row.get::<_, i64>(8) == self.session(),
            }));
        }
        let skew: serde_json::Map<String, serde_json::Value> = versions
            .into_iter()
            .filter(|(_, hashes)| hashes.len() > 1)
            .map(|(job, hashes)| (job, serde_json::json!(hashes)))
            .collect();
        Ok(serde_json::json!({"coordination": self.describe(), "instances": instances, "skew": skew}))
    }

    /// Where this daemon's API is reached by the others (log reads are
    /// proxied to the daemon that ran the run).
    pub async fn advertise(&self, api: &str) {
        let session = self.session();
        let _ = self
            .query("UPDATE webjobs_sessions SET api = $2 WHERE id = $1", &[(&session, Type::INT8), (&api, Type::TEXT)])
            .await;
    }

    /// The API of the live daemon registered as `instance`.
    pub async fn api_of(&self, instance: &str) -> Option<String> {
        let rows = self
            .query(
                "SELECT api FROM webjobs_sessions WHERE instance = $1 AND webjobs_until(webjobs_sessions) > now() AND api IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                &[(&instance, Type::TEXT)],
            )
            .await
            .ok()?;
        rows.first().map(|r| r.get(0))
    }

    /// The runs of job `key` across the cluster, newest first (with `id`,
    /// that run only): its id, the instance that ran it, its status, and
    /// the last 64 KiB of its output once it ended.
    pub async fn runs(&self, key: &JobKey, id: Option<&str>, limit: i64) -> io::Result<Vec<SharedRun>> {
        let job = job_name(key);
        let id = id.unwrap_or("");
        let rows = self
            .query(
                "SELECT id, instance, status, output_tail FROM webjobs_runs WHERE job = $1 AND ($2 = '' OR id = $2)
                 ORDER BY id DESC, updated DESC LIMIT $3",
                &[(&job, Type::TEXT), (&id, Type::TEXT), (&limit, Type::INT8)],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(SharedRun {
                    id: r.get(0),
                    instance: r.get(1),
                    status: serde_json::from_value(r.get(2)).ok()?,
                    output_tail: r.get(3),
                })
            })
            .collect())
    }

    pub fn job(&self, key: &JobKey) -> JobPg {
        JobPg {
            pg: self.clone(),
            job: job_name(key),
            payloads: crate::layout::job_data_dir(&self.inner.data_dir, key)
                .join(crate::layout::QUEUE_DIR)
                .join("payloads"),
        }
    }
}

/// The connection pool, and how long a statement may take on it.
#[derive(Clone)]
pub(super) struct Db {
    pub pool: Pool,
    /// The session's ttl.
    pub ttl: Duration,
}

impl Db {
    /// One statement, typed and unnamed (nothing is left on the server
    /// connection: a pooler may give the next one another), on a connection
    /// of the pool, within the ttl. A connection that did not answer in time
    /// is not given back.
    pub async fn query(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> io::Result<Vec<Row>> {
        let client = self.pool.get().await.map_err(|e| io_err(with_causes(&e)))?;
        match tokio::time::timeout(self.ttl, client.query_typed(sql, params)).await {
            // The server's own words ("db error" alone says nothing).
            Ok(result) => result.map_err(|e| io_err(with_causes(&e))),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(io_err(format!("no answer within {} ms", self.ttl.as_millis())))
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a job is named in the database.
pub fn job_name(key: &JobKey) -> String {
    format!("{}/{}", key.kind.as_str(), key.name)
}

fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}

fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Ca { path: PathBuf::new(), cause: e.to_string() })?;
    let config = match ca_file {
        None => builder
            .with_platform_verifier()
            .map_err(|e| PgError::Ca { path: PathBuf::from("(system certificates)"), cause: e.to_string() })?
            .with_no_client_auth(),
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let ca = |cause: String| PgError::Ca { path: path.to_path_buf(), cause };
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| ca(e.to_string()))? {
                roots.add(cert.map_err(|e| ca(e.to_string()))?).map_err(|e| ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca("no certificate in the file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// What taking the queue's head with a run slot came to.
#[derive(Debug)]
pub enum Leased {
    /// A request and its run slot; `true` when no other slot was free (the
    /// next try would find every slot held).
    Got(Box<(PgLease, Taken)>, bool),
    /// Every run slot is held (by runs on this or other daemons).
    Busy,
    /// Nothing is due.
    Empty,
}

/// A run as the cluster's history keeps it.
#[derive(Debug, Clone)]
pub struct SharedRun {
    pub id: String,
    pub instance: String,
    pub status: crate::history::RunStatus,
    pub output_tail: Option<String>,
}

/// How much of a run's output the shared history keeps.
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// A lease held in the database; released when dropped.
pub struct PgLease {
    name: String,
    session: i64,
    fence: i64,
    pg: Option<Postgres>,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease").field("name", &self.name).field("fence", &self.fence).finish()
    }
}

impl PgLease {
    pub fn fence(&self) -> i64 {
        self.fence
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Completes when the lease can no longer be trusted: this daemon is
    /// fenced (no confirmed renewal) or its session was replaced.
    pub fn watch_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.pg.as_ref().map(|pg| pg.inner.beat.subscribe());
        let session = self.session;
        async move {
            let Some(mut rx) = rx else { return std::future::pending().await };
            if rx.wait_for(|b| b.fenced || b.session != session).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Why it was lost, in words.
    pub fn why_lost(&self) -> String {
        let Some(pg) = &self.pg else { return String::new() };
        let beat = pg.inner.beat.borrow();
        let ttl = pg.inner.db.ttl.as_millis();
        if beat.session != self.session {
            format!("this daemon's database session expired (it was paused or cut off for more than {ttl} ms)")
        } else {
            let why = beat.error.clone().unwrap_or_else(|| "no answer".into());
            format!("no lease renewal confirmed by PostgreSQL for {} ms ({why})", ttl * 4 / 5)
        }
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            pg.release(std::mem::take(&mut self.name), self.fence);
        }
    }
}

/// The queue, run locks and ticks of one triggered job in the database.
#[derive(Debug, Clone)]
pub struct JobPg {
    pg: Postgres,
    job: String,
    /// Where payloads of requests taken here are written for their runs.
    payloads: PathBuf,
}

impl JobPg {
    /// One of the job's `slots` run locks, the first free one.
    /// One of the job's `slots` run locks; `busy`: the ones this daemon's
    /// active runs hold (any other held by this daemon's session is a
    /// release that never reached the database: taken again).
    pub async fn try_run(
        &self,
        instance: &str,
        slots: u32,
        grace: Duration,
        busy: &[String],
    ) -> io::Result<Option<PgLease>> {
        let names: Vec<String> = (0..slots.max(1)).map(|slot| format!("run:{}:{slot}", self.job)).collect();
        self.pg.try_any(&names, instance, grace, busy).await
    }

    /// Takes the queue's due head and a free run slot for it, both or
    /// neither, in one statement.
    pub async fn take_leased(
        &self,
        instance: &str,
        slots: u32,
        grace: Duration,
        busy: &[String],
    ) -> io::Result<Leased> {
        if self.pg.inner.beat.borrow().fenced {
            return Err(io_err(
                "this daemon's session is not confirmed by the database (fenced) until it answers again",
            ));
        }
        let session = self.pg.session();
        let grace_ms = grace.as_millis() as i64;
        let names: Vec<String> = (0..slots.max(1)).map(|slot| format!("run:{}:{slot}", self.job)).collect();
        let rows = self
            .pg
            .query(
                "SELECT * FROM webjobs_take_leased($1, $2, $3, $4, $5, $6)",
                &[
                    (&self.job, Type::TEXT),
                    (&session, Type::INT8),
                    (&names, Type::TEXT_ARRAY),
                    (&instance, Type::TEXT),
                    (&grace_ms, Type::INT8),
                    (&busy, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(Leased::Empty) };
        let due: i64 = row.get(0);
        let name: Option<String> = row.get(1);
        match (due, name) {
            (0, _) => Ok(Leased::Empty),
            (_, None) => Ok(Leased::Busy),
            (_, Some(name)) => {
                let lease = PgLease { name, session, fence: row.get(2), pg: Some(self.pg.clone()) };
                let taken = self.taken(row, 3, session)?;
                let free: i64 = row.get(5);
                Ok(Leased::Got(Box::new((lease, taken)), free <= 1))
            }
        }
    }

    pub async fn run_holder(&self) -> Option<String> {
        self.pg.lease_holder(&format!("run:{}:0", self.job)).await
    }

    /// Claims `tick` if it is newer than the last claimed one and due by the
    /// database's clock (a daemon whose clock runs ahead waits for it, at
    /// most ten seconds).
    pub async fn claim_tick(&self, tick: jiff::Timestamp) -> io::Result<bool> {
        let at_ms = tick.as_millisecond();
        for _ in 0..3 {
            let rows = self
                .pg
                .query(
                    &format!(
                        "WITH claim AS (
                            INSERT INTO webjobs_ticks (job, last_tick)
                            SELECT $1, to_timestamp($2::float8 / 1000) WHERE $2 <= {NOW_MS} + 1000
                            ON CONFLICT (job) DO UPDATE SET last_tick = excluded.last_tick
                            WHERE webjobs_ticks.last_tick < excluded.last_tick RETURNING 1)
                         SELECT (SELECT count(*) FROM claim), {NOW_MS}"
                    ),
                    &[(&self.job, Type::TEXT), (&at_ms, Type::INT8)],
                )
                .await?;
            let row = rows.first().ok_or_else(|| io_err("no answer to a tick claim"))?;
            let (claimed, now_ms): (i64, i64) = (row.get(0), row.get(1));
            if claimed > 0 {
                return Ok(true);
            }
            let ahead = at_ms - now_ms;
            if ahead <= 1000 {
                return Ok(false);
            }
            if ahead > 10_000 {
                return Err(io_err(format!(
                    "this machine's clock is {} s ahead of the database's: tick {tick} is not due there; fix the clock (NTP)",
                    ahead / 1000
                )));
            }
            tokio::time::sleep(Duration::from_millis(ahead as u64 - 1000)).await;
        }
        Ok(false)
    }

    pub async fn last_tick(&self) -> Option<jiff::Timestamp> {
        let rows = self
            .pg
            .query(
                "SELECT (extract(epoch FROM last_tick) * 1000)::bigint FROM webjobs_ticks WHERE job = $1",
                &[(&self.job, Type::TEXT)],
            )
            .await
            .ok()?;
        jiff::Timestamp::from_millisecond(rows.first()?.get(0)).ok()
    }

    /// Stores a request; refused while another with its key is queued,
    /// running, or ended within its window. Other daemons are told.
    pub async fn enqueue(&self, entry: &Entry, payload: Option<&[u8]>) -> io::Result<Result<(), Unstored>> {
        let json = serde_json::to_value(entry)?;
        let due = entry.due_ms.unwrap_or(0);
        let insert = "WITH queued AS (INSERT INTO webjobs_queue (id, job, state, priority, due_ms, entry, payload)
                        VALUES ($2, $1, 'queued', $3, $4, $5, $6) RETURNING job)
                      SELECT pg_notify('webjobs', job) FROM queued";
        let params: [(&(dyn ToSql + Sync), Type); 6] = [
            (&self.job, Type::TEXT),
            (&entry.id, Type::TEXT),
            (&entry.priority, Type::INT4),
            (&due, Type::INT8),
            (&json, Type::JSONB),
            (&payload, Type::BYTEA),
        ];
        if entry.key.is_none() && entry.tick_ms.is_none() {
            self.pg.query(insert, &params).await?;
            return Ok(Ok(()));
        }
        if let (None, Some(tick), None) = (&entry.key, entry.tick_ms, payload) {
            // The common tick: claimed and stored in one statement, together
            // with the other ticks of this moment (no one is told: the
            // claimer starts it, or it waits for a beat).
            let claim = super::tick_claims::Claim {
                job: self.job.clone(),
                id: entry.id.clone(),
                priority: entry.priority,
                due_ms: due,
                entry: json,
                tick_ms: tick,
            };
            let won = self.pg.inner.claims.claim(claim).await?;
            return Ok(if won { Ok(()) } else { Err(Unstored::TickTaken) });
        }
        // A tick is claimed, a key checked and taken, with the request: in
        // one transaction.
        let pg = &self.pg;
        let mut client = pg.inner.db.pool.get().await.map_err(|e| io_err(with_causes(&e)))?;
        let work = async {
            let tx = client.transaction().await?;
            if let Some(tick) = entry.tick_ms {
                let claimed = tx
                    .query_typed(
                        &format!(
                            "INSERT INTO webjobs_ticks (job, last_tick)
                             SELECT $1, to_timestamp($2::float8 / 1000) WHERE $2 <= {NOW_MS} + 1000
                             ON CONFLICT (job) DO UPDATE SET last_tick = excluded.last_tick
                             WHERE webjobs_ticks.last_tick < excluded.last_tick RETURNING 1"
                        ),
                        &[(&self.job, Type::TEXT), (&tick, Type::INT8)],
                    )
                    .await?;
                if claimed.is_empty() {
                    return Ok(Err(Unstored::TickTaken));
                }
            }
            let Some(key) = &entry.key else {
                tx.query_typed(insert, &params).await?;
                tx.commit().await?;
                return Ok(Ok(()));
            };
            let key_params: [(&(dyn ToSql + Sync), Type); 3] =
                [(&self.job, Type::TEXT), (key, Type::TEXT), (&entry.id, Type::TEXT)];
            let taken = tx
                .query_typed(
                    "INSERT INTO webjobs_keys (job, key, id) VALUES ($1, $2, $3)
                     ON CONFLICT (job, key) DO UPDATE SET id = excluded.id, until = NULL
                     WHERE webjobs_keys.until IS NOT NULL AND webjobs_keys.until <= now() RETURNING id",
                    &key_params,
                )
                .await?;
            if taken.is_empty() {
                let rows =
                    tx.query_typed("SELECT id FROM webjobs_keys WHERE job = $1 AND key = $2", &key_params[..2]).await?;
                let id = rows.first().map(|r| r.get::<_, String>(0)).unwrap_or_default();
                return Ok(Err(Duplicate { key: key.clone(), id }.into()));
            }
            tx.query_typed(insert, &params).await?;
            tx.commit().await?;
            Ok(Ok(()))
        };
        let outcome = tokio::time::timeout(pg.inner.db.ttl, work).await;
        match outcome {
            Ok(result) => result.map_err(|e: tokio_postgres::Error| io_err(e)),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(io_err("no answer in time"))
            }
        }
    }

    pub async fn scan(&self) -> io::Result<Vec<Slot>> {
        let rows = self
            .pg
            .query(
                "SELECT id, priority, due_ms FROM webjobs_queue WHERE job = $1 AND state = 'queued'",
                &[(&self.job, Type::TEXT)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Slot { id: r.get::<_, String>(0).into_boxed_str(), priority: r.get(1), due_ms: r.get(2) })
            .collect())
    }

    /// Takes request `slot` (or, with `None`, the queue's due head, skipping
    /// what another daemon is taking at this moment).
    pub async fn take(&self, slot: Option<&Slot>, grace: Duration) -> io::Result<Option<Taken>> {
        let session = self.pg.session();
        let grace_ms = grace.as_millis() as i64;
        let id = slot.map(|s| s.id.to_string()).unwrap_or_default();
        // The head along the queue's index; one request by its key.
        let pick = match slot {
            None => format!(
                "SELECT id FROM webjobs_queue WHERE job = $1 AND state = 'queued' AND due_ms <= {NOW_MS} AND $4 = ''
                 ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ),
            Some(_) => {
                "SELECT id FROM webjobs_queue WHERE id = $4 AND job = $1 AND state = 'queued' FOR UPDATE SKIP LOCKED"
                    .to_string()
            }
        };
        let rows = self
            .pg
            .query(
                &format!(
                    "UPDATE webjobs_queue SET state = 'taken', taken_by = $2, grace_ms = $3, updated = now()
                     WHERE id = ({pick}) RETURNING entry, payload"
                ),
                &[(&self.job, Type::TEXT), (&session, Type::INT8), (&grace_ms, Type::INT8), (&id, Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        self.taken(row, 0, session).map(Some)
    }

    /// The request in columns `at` (its entry) and `at + 1` (its payload,
    /// written where its run reads it).
    fn taken(&self, row: &Row, at: usize, session: i64) -> io::Result<Taken> {
        let entry: Entry =
            serde_json::from_value(row.get(at)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some(payload) = row.get::<_, Option<&[u8]>>(at + 1) {
            std::fs::create_dir_all(&self.payloads)?;
            std::fs::write(self.payload_path(&entry.id), payload)?;
        }
        Ok(Taken { entry, place: Place::Row { session } })
    }

    pub fn payload_path(&self, id: &str) -> PathBuf {
        self.payloads.join(id)
    }

    fn session_of(taken: &Taken) -> i64 {
        match taken.place {
            Place::Row { session } => session,
            Place::File(_) => 0,
        }
    }

    /// Done: the request goes; its key stays held for `window`. Only while
    /// the request is still ours (no daemon adopted it meanwhile).
    /// `soon`: nobody waits for it (it may be written with others, a little later).
    pub async fn done(&self, taken: Taken, window: Duration, soon: bool) -> io::Result<()> {
        let window_ms = window.as_millis() as i64;
        let session = Self::session_of(&taken);
        let id = taken.entry.id.clone();
        let write = super::pg_writes::Write::Done { job: self.job.clone(), id, session, window_ms };
        self.pg.inner.writes.write(write, !soon).await?;
        let _ = std::fs::remove_file(self.payload_path(&taken.entry.id));
        Ok(())
    }

    pub async fn requeue(&self, taken: Taken, entry: &Entry) -> io::Result<Slot> {
        let session = Self::session_of(&taken);
        let json = serde_json::to_value(entry)?;
        let due = entry.due_ms.unwrap_or(0);
        self.pg
            .query(
                "WITH back AS (UPDATE webjobs_queue SET state = 'queued', taken_by = NULL, entry = $3, priority = $4,
                    due_ms = $5, updated = now() WHERE id = $1 AND (taken_by = $2 OR $2 = 0) RETURNING job)
                 SELECT pg_notify('webjobs', job) FROM back",
                &[
                    (&entry.id, Type::TEXT),
                    (&session, Type::INT8),
                    (&json, Type::JSONB),
                    (&entry.priority, Type::INT4),
                    (&due, Type::INT8),
                ],
            )
            .await?;
        let _ = std::fs::remove_file(self.payload_path(&entry.id));
        Ok(entry.slot())
    }

    pub async fn bury(&self, taken: Taken, entry: &Entry, keep: usize) -> io::Result<()> {
        let session = Self::session_of(&taken);
        let json = serde_json::to_value(entry)?;
        let keep = keep.max(1) as i64;
        self.pg
            .query(
                "WITH dead AS (UPDATE webjobs_queue SET state = 'dead', taken_by = NULL, entry = $3, updated = now()
                    WHERE id = $1 AND (taken_by = $2 OR $2 = 0) RETURNING id),
                 freed AS (DELETE FROM webjobs_keys WHERE job = $4 AND id IN (SELECT id FROM dead) RETURNING key)
                 DELETE FROM webjobs_queue WHERE job = $4 AND state = 'dead' AND id <> $1 AND id NOT IN (
                    SELECT id FROM webjobs_queue WHERE job = $4 AND state = 'dead' ORDER BY id DESC LIMIT $5)",
                &[
                    (&entry.id, Type::TEXT),
                    (&session, Type::INT8),
                    (&json, Type::JSONB),
                    (&self.job, Type::TEXT),
                    (&keep, Type::INT8),
                ],
            )
            .await?;
        let _ = std::fs::remove_file(self.payload_path(&entry.id));
        Ok(())
    }

    pub async fn known(&self, id: &str) -> bool {
        let rows = self
            .pg
            .query(
                "SELECT 1 FROM webjobs_queue WHERE id = $1 AND job = $2",
                &[(&id, Type::TEXT), (&self.job, Type::TEXT)],
            )
            .await;
        rows.is_ok_and(|r| !r.is_empty())
    }

    async fn entries(&self, state: &str, limit: i64, id: &str, newest_first: bool) -> Vec<Entry> {
        let order = if newest_first { "id DESC" } else { "priority DESC, id" };
        let rows = self
            .pg
            .query(
                &format!(
                    "SELECT entry FROM webjobs_queue WHERE job = $1 AND state = $2 AND ($4 = '' OR id = $4)
                     ORDER BY {order} LIMIT $3"
                ),
                &[(&self.job, Type::TEXT), (&state, Type::TEXT), (&limit, Type::INT8), (&id, Type::TEXT)],
            )
            .await
            .unwrap_or_default();
        rows.iter().filter_map(|r| serde_json::from_value(r.get(0)).ok()).collect()
    }

    pub async fn dead(&self) -> Vec<Entry> {
        self.entries("dead", i64::MAX, "", true).await
    }

    pub async fn queued(&self, limit: usize, id: Option<&str>) -> Vec<Entry> {
        self.entries("queued", limit.min(i64::MAX as usize) as i64, id.unwrap_or(""), false).await
    }

    /// Queues dead request `id` (or the one whose runs include `id`) again,
    /// its attempts from the start; refused while its key is held.
    pub async fn revive(&self, id: &str) -> io::Result<Option<Entry>> {
        let Some(mut entry) = self.dead().await.into_iter().find(|e| e.id == id || e.runs.iter().any(|r| r == id))
        else {
            return Ok(None);
        };
        entry.attempts = 0;
        entry.due_ms = None;
        entry.error = None;
        if let Some(key) = &entry.key {
            let rows = self
                .pg
                .query(
                    "INSERT INTO webjobs_keys (job, key, id) VALUES ($1, $2, $3)
                     ON CONFLICT (job, key) DO UPDATE SET id = excluded.id, until = NULL
                     WHERE webjobs_keys.until IS NOT NULL AND webjobs_keys.until <= now() RETURNING id",
                    &[(&self.job, Type::TEXT), (key, Type::TEXT), (&entry.id, Type::TEXT)],
                )
                .await?;
            if rows.is_empty() {
                return Err(io::Error::other(Duplicate { key: key.clone(), id: "another request".into() }));
            }
        }
        let json = serde_json::to_value(&entry)?;
        self.pg
            .query(
                "WITH back AS (UPDATE webjobs_queue SET state = 'queued', entry = $2, due_ms = 0 WHERE id = $1 AND state = 'dead' RETURNING job)
                 SELECT pg_notify('webjobs', job) FROM back",
                &[(&entry.id, Type::TEXT), (&json, Type::JSONB)],
            )
            .await?;
        Ok(Some(entry))
    }

    pub async fn remove_queued(&self, id: &str) -> io::Result<Option<Entry>> {
        let rows = self
            .pg
            .query(
                "WITH gone AS (DELETE FROM webjobs_queue WHERE id = $1 AND job = $2 AND state = 'queued' RETURNING id, entry),
                      freed AS (DELETE FROM webjobs_keys WHERE job = $2 AND id IN (SELECT id FROM gone) RETURNING key)
                 SELECT entry FROM gone",
                &[(&id, Type::TEXT), (&self.job, Type::TEXT)],
            )
            .await?;
        Ok(rows.first().and_then(|r| serde_json::from_value(r.get(0)).ok()))
    }

    /// Records run `id` in the cluster's history (its start, its end with the
    /// last [`OUTPUT_TAIL`] bytes of its output), keeping the newest `keep`.
    /// `soon`: nobody waits for it (it may be written with others, a little later).
    pub async fn record_run(
        &self,
        id: &str,
        instance: &str,
        status: &crate::history::RunStatus,
        output_tail: Option<&str>,
        keep: u32,
        soon: bool,
    ) -> io::Result<()> {
        let write = super::pg_writes::Write::Record {
            job: self.job.clone(),
            id: id.to_string(),
            instance: instance.to_string(),
            status: serde_json::to_value(status)?,
            tail: output_tail.map(str::to_string),
            keep: i64::from(keep.max(1)),
        };
        self.pg.inner.writes.write(write, !soon).await
    }

    /// Run `id` of a daemon that is gone, recorded as still going, ended Aborted.
    pub async fn abort_run(&self, id: &str, why: &str) -> io::Result<()> {
        let end = crate::logs::format_time(std::time::SystemTime::now());
        self.pg
            .query(
                "UPDATE webjobs_runs SET status = status || jsonb_build_object('Status', 'Aborted', 'EndTime', $3::text, 'Error', $4::text),
                    updated = now()
                 WHERE job = $1 AND id = $2 AND status->>'Status' IN ('Running', 'Starting')",
                &[(&self.job, Type::TEXT), (&id, Type::TEXT), (&end, Type::TEXT), (&why, Type::TEXT)],
            )
            .await?;
        Ok(())
    }

    /// Requests taken by sessions that are gone (expired more than the
    /// request's grace ago), now taken by this daemon: each is found once.
    pub async fn orphans(&self) -> io::Result<Vec<Taken>> {
        let session = self.pg.session();
        let rows = self
            .pg
            .query(
                "UPDATE webjobs_queue q SET taken_by = $2, updated = now()
                 WHERE q.id IN (SELECT id FROM webjobs_queue o WHERE o.job = $1 AND o.state = 'taken' AND o.taken_by <> $2
                    AND NOT EXISTS (SELECT 1 FROM webjobs_sessions s WHERE s.id = o.taken_by
                        AND webjobs_until(s) + o.grace_ms * interval '1 millisecond' > now())
                    FOR UPDATE SKIP LOCKED)
                 RETURNING entry, payload",
                &[(&self.job, Type::TEXT), (&session, Type::INT8)],
            )
            .await?;
        rows.iter().map(|row| self.taken(row, 0, session)).collect()
    }
}
