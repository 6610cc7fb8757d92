//! Several daemons on separate roots (no shared disk) coordinated through a
//! real PostgreSQL server (see [`crate::pg`]): singleton failover, fencing of
//! a paused or cut-off holder, each tick once, one shared queue.

use std::time::{Duration, Instant};

use crate::helper::*;
use crate::pg::{Bouncer, Cluster, Proxy};

/// A root whose daemon coordinates through `url` with a short session ttl.
fn root_on(url: &str, ttl_ms: u64) -> Root {
    Root::with_config(serde_json::json!({
        "coordination": {"postgres": url, "lease_ttl_ms": ttl_ms},
        "singleton_retry_ms": 200,
    }))
}

const SINGLETON: &str = r#"{"is_singleton": true, "stopping_wait_time": 1}"#;

/// The job `only` on `roots`: a singleton that prints its fencing token.
fn singleton_everywhere(roots: &[&Root]) {
    for root in roots {
        root.job(
            "continuous",
            "only",
            &[("run.sh", "echo \"fence=$WEBJOBS_FENCE\"\nexec sleep 300\n"), ("settings.job", SINGLETON)],
        );
    }
}

fn live(daemons: &[Option<Daemon>]) -> Vec<&Daemon> {
    daemons.iter().flatten().collect()
}

fn holders(daemons: &[&Daemon]) -> Vec<usize> {
    (0..daemons.len()).filter(|&i| !daemons[i].job_pids("only").is_empty()).collect()
}

/// The fencing tokens a root's job printed, in order.
fn fences(root: &Root) -> Vec<i64> {
    let log = root.log("only");
    log.lines().filter_map(|l| l.split("fence=").nth(1)?.trim().parse().ok()).collect()
}

#[test]
fn a_singleton_fails_over_after_a_sigkill_and_hands_over_at_a_stop() {
    let pg = Cluster::start();
    let roots: Vec<Root> = (0..3).map(|_| root_on(&pg.url(), 2000)).collect();
    singleton_everywhere(&roots.iter().collect::<Vec<_>>());
    let mut daemons: Vec<Option<Daemon>> = roots.iter().map(|r| Some(Daemon::start(r, &[]))).collect();
    wait_for("one daemon runs the singleton", Duration::from_secs(10), || holders(&live(&daemons)).len() == 1);
    let first = (0..3).find(|&i| !daemons[i].as_ref().unwrap().job_pids("only").is_empty()).unwrap();
    wait_for("its fencing token", Duration::from_secs(5), || !fences(&roots[first]).is_empty());
    let fence1 = fences(&roots[first])[0];
    let orphan = daemons[first].as_ref().unwrap().job_pids("only");
    // SIGKILL of the holder's daemon: its run dies with it (PR_SET_PDEATHSIG),
    // and another daemon takes over once the session expired plus the grace.
    let killed_at = Instant::now();
    let leftovers = daemons[first].take().unwrap().kill9();
    wait_for("the orphan to die with its daemon", Duration::from_secs(2), || orphan.iter().all(|p| !alive(*p)));
    let copies = || holders(&live(&daemons)).len();
    never_two("the takeover within 12 s", Duration::from_secs(12), copies, || copies() == 1);
    let failover = killed_at.elapsed();
    // ttl 2 s + grace (stopping_wait_time 1 s + 1 s): never before 3 s (the
    // last renewal may be up to ttl/5 old), at the latest ttl + grace + a beat.
    assert!(failover >= Duration::from_millis(3000), "taken over before the grace was over: {failover:?}");
    assert!(failover < Duration::from_millis(6000), "failover took {failover:?}");
    drop(leftovers);
    let second = (0..3).find(|&i| daemons[i].as_ref().is_some_and(|d| !d.job_pids("only").is_empty())).unwrap();
    wait_for("the new holder's fencing token", Duration::from_secs(5), || !fences(&roots[second]).is_empty());
    assert!(fences(&roots[second])[0] > fence1, "a takeover draws a greater token");
    let holder = stdout(&roots[3 - first - second].cli(&["status", "only"]));
    assert!(holder.contains("InactiveInstance"), "{holder}");
    // A graceful stop hands over at once: the lease is released, the others told.
    let stopped_at = Instant::now();
    daemons[second].take().unwrap().stop();
    let third = 3 - first - second;
    wait_for("the last daemon takes over", Duration::from_secs(3), || {
        !daemons[third].as_ref().unwrap().job_pids("only").is_empty()
    });
    let handover = stopped_at.elapsed();
    eprintln!("failover after SIGKILL {failover:?}, handover at a stop {handover:?}");
    assert!(handover < Duration::from_millis(2500), "handover took {handover:?}");
    let lease = pg.psql("SELECT holder FROM webjobs_leases WHERE name = 'singleton:continuous/only'");
    assert_eq!(lease, roots[third].instance);
}

#[test]
fn a_paused_holder_loses_its_lease_and_on_waking_stops_its_copy_and_overwrites_nothing() {
    let pg = Cluster::start();
    let roots: Vec<Root> = (0..2).map(|_| root_on(&pg.url(), 2000)).collect();
    singleton_everywhere(&roots.iter().collect::<Vec<_>>());
    let a = Daemon::start(&roots[0], &[]);
    wait_for("the first daemon runs it", Duration::from_secs(10), || a.job_pids("only").len() == 1);
    let b = Daemon::start(&roots[1], &[]);
    wait_for("the second stands by", Duration::from_secs(10), || roots[1].status_is("only", "InactiveInstance"));
    let paused_copy = a.job_pids("only");
    // SIGSTOP: the daemon cannot renew its session; its job runs on (nothing
    // can stop it while its daemon sleeps); the other takes over after the grace.
    a.signal(libc::SIGSTOP);
    wait_for("the standby takes over", Duration::from_secs(10), || b.job_pids("only").len() == 1);
    wait_for("the new token", Duration::from_secs(5), || !fences(&roots[1]).is_empty());
    let lease =
        || pg.psql("SELECT holder || ' ' || fence FROM webjobs_leases WHERE name = 'singleton:continuous/only'");
    let taken = lease();
    assert_eq!(taken, format!("{} {}", roots[1].instance, fences(&roots[1])[0]));
    // Woken up, the old holder finds its session gone: it stops its copy at
    // once, and neither retakes nor overwrites the lease.
    a.signal(libc::SIGCONT);
    wait_for("the paused holder's copy is stopped", Duration::from_secs(5), || paused_copy.iter().all(|p| !alive(*p)));
    wait_for("its status says so", Duration::from_secs(5), || roots[0].status_is("only", "InactiveInstance"));
    let log = roots[0].log("only");
    assert!(log.contains("singleton lease lost"), "{log}");
    for _ in 0..10 {
        assert_eq!(lease(), taken, "the successor's lease stays untouched");
        assert!(a.job_pids("only").is_empty() && b.job_pids("only").len() == 1, "one copy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.stderr().contains("session of this daemon expired"), "{}", a.stderr());
}

/// A small random number generator (the test needs no cryptography).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn each_schedule_tick_runs_once_across_three_daemons_killed_at_random() {
    const JOBS: usize = 30;
    let pg = Cluster::start();
    let out = tempfile::tempdir().unwrap();
    let ticks = out.path().join("ticks.txt");
    let roots: Vec<Root> = (0..3).map(|_| root_on(&pg.url(), 2000)).collect();
    let script =
        format!("echo \"$WEBJOBS_NAME $WEBJOBS_TICK $WEBJOBS_ATTEMPT $WEBJOBS_RUN_ID\" >> {}\n", ticks.display());
    // A tick due while the previous run is still held by a killed daemon
    // (its grace) waits rather than being skipped.
    let settings =
        r#"{"schedule": "* * * * * *", "overlap": "queue", "stopping_wait_time": 1, "retries": 3, "retry_delay": 0.1}"#;
    for root in &roots {
        for n in 0..JOBS {
            root.job("triggered", &format!("tick{n:02}"), &[("run.sh", &script), ("settings.job", settings)]);
        }
    }
    let mut daemons: Vec<Option<Daemon>> = roots.iter().map(|r| Some(Daemon::start(r, &[]))).collect();
    // Counted from the first whole second after every daemon is up.
    let first = jiff::Timestamp::now().as_second() + 2;
    let mut seed = (std::process::id() as u64) << 20 | 0x9e37;
    let mut kills = 0;
    let run_until = Instant::now() + Duration::from_secs(36);
    while Instant::now() < run_until {
        std::thread::sleep(Duration::from_millis(2000 + next_random(&mut seed) % 2000));
        let victim = (next_random(&mut seed) % 3) as usize;
        drop(daemons[victim].take().unwrap().kill9());
        kills += 1;
        daemons[victim] = Some(Daemon::start(&roots[victim], &[]));
    }
    let last = jiff::Timestamp::now().as_second() - 2;
    // In-flight runs of the last killed daemon are retried after its grace.
    std::thread::sleep(Duration::from_secs(6));
    for daemon in daemons.iter_mut() {
        daemon.take().unwrap().stop();
    }
    let mut seen: std::collections::BTreeMap<(String, i64), Vec<u32>> = Default::default();
    for line in read(&ticks).lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let tick: jiff::Timestamp = parts[1].parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        seen.entry((parts[0].to_string(), tick.as_second())).or_default().push(parts[2].parse().unwrap());
    }
    let mut expected = 0;
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    for n in 0..JOBS {
        for second in first..=last {
            expected += 1;
            match seen.get(&(format!("tick{n:02}"), second)) {
                None => missing.push((n, second)),
                Some(attempts) if attempts.len() > 1 => twice.push((n, second, attempts.clone())),
                Some(_) => {}
            }
        }
    }
    eprintln!(
        "{expected} ticks across 3 daemons, {kills} SIGKILLs: {} missing, {} run twice (in flight at a kill, retried)",
        missing.len(),
        twice.len()
    );
    assert!(expected >= 900, "{expected} ticks");
    if let Some((n, second)) = missing.first() {
        let at = jiff::Timestamp::from_second(*second).unwrap().to_string();
        let near = |l: &str| {
            (second - 3..=second + 3).any(|s| {
                let t = jiff::Timestamp::from_second(s).unwrap().to_string();
                l.contains(&t[..19])
            })
        };
        let logs: Vec<String> = roots
            .iter()
            .map(|r| {
                let mut lines: Vec<String> = Vec::new();
                let log = read(&r.data_dir("triggered", &format!("tick{n:02}")).join("job_scheduler.log"));
                lines.extend(log.lines().filter(|l| near(l)).map(str::to_string));
                for entry in std::fs::read_dir(r.path()).unwrap().flatten() {
                    if entry.file_name().to_string_lossy().starts_with("daemon-") {
                        let text = read(&entry.path());
                        lines.extend(
                            text.lines()
                                .filter(|l| near(l))
                                .map(|l| format!("{}: {l}", entry.file_name().to_string_lossy())),
                        );
                    }
                }
                lines.join("\n")
            })
            .collect();
        let lines: Vec<String> =
            read(&ticks).lines().filter(|l| l.starts_with(&format!("tick{n:02} "))).map(str::to_string).collect();
        eprintln!("ticks.txt of tick{n:02}:\n{}", lines.join("\n"));
        let queue = pg.psql(&format!(
            "SELECT state || ' ' || (entry->>'attempts') || ' ' || (entry->>'tick_ms') || ' ' || coalesce(entry->>'error', '') FROM webjobs_queue WHERE job = 'triggered/tick{n:02}'"
        ));
        let runs = pg.psql(&format!(
            "SELECT id || ' ' || instance || ' ' || (status->>'Status') || ' ' || (status->>'Trigger') || ' ' || coalesce(status->>'Error', '') FROM webjobs_runs WHERE job = 'triggered/tick{n:02}' ORDER BY id"
        ));
        panic!(
            "ticks never run: {missing:?}\nscheduler logs of tick{n:02} around {at}:\n{}\nqueue:\n{queue}\nruns:\n{runs}",
            logs.join("\n---\n")
        );
    }
    // A tick runs twice only when its first run was in flight on a daemon
    // that was killed: the retry (a later attempt) is the second.
    for (n, second, attempts) in &twice {
        assert!(attempts.iter().any(|a| *a > 1), "tick{n:02} at {second} ran twice without a retry: {attempts:?}");
    }
    assert!(twice.len() <= kills * JOBS, "{} duplicates for {kills} kills", twice.len());
}

#[test]
fn a_queue_is_drained_by_three_daemons_each_request_once_but_in_flight_ones_at_a_kill() {
    const REQUESTS: usize = 600;
    let pg = Cluster::start();
    let out = tempfile::tempdir().unwrap();
    let done = out.path().join("done.txt");
    let roots: Vec<Root> = (0..3).map(|_| root_on(&pg.url(), 2000)).collect();
    // Each daemon runs at most two at once: the job's six slots are shared.
    for root in &roots {
        root.add_config(serde_json::json!({"max_concurrent_runs": 2}));
    }
    let script =
        format!("sleep 0.05\necho \"$WEBJOBS_REQUEST_ID $WEBJOBS_ATTEMPT $WEBJOBS_DATA_PATH\" >> {}\n", done.display());
    let settings = r#"{"max_parallel": 6, "stopping_wait_time": 1, "retries": 3, "retry_delay": 0.1}"#;
    for root in &roots {
        root.job("triggered", "work", &[("run.sh", &script), ("settings.job", settings)]);
    }
    let mut daemons: Vec<Option<Daemon>> = roots.iter().map(|r| Some(Daemon::start(r, &[]))).collect();
    let http = roots[0].http();
    let mut ids = Vec::new();
    for n in 0..REQUESTS {
        let reply = http.post(&format!("/api/triggeredwebjobs/work/run?queue=1&arguments=n{n}"));
        assert!(reply.status < 300, "{} {}", reply.status, reply.text());
        ids.push(reply.json()["request"].as_str().expect("a request id").to_string());
    }
    // A daemon dies with runs in flight; its requests are recovered by the
    // others after its grace, as Aborted attempts retried.
    let victim = daemons[1].take().unwrap();
    wait_for("a run in flight on it", Duration::from_secs(30), || !victim.job_pids("work").is_empty());
    drop(victim.kill9());
    let ran = || read(&done).lines().map(str::to_string).collect::<Vec<_>>();
    wait_for("every request to run", Duration::from_secs(60), || {
        let lines = ran();
        ids.iter().all(|id| lines.iter().any(|l| l.starts_with(&format!("{id} "))))
    });
    wait_for("the queue to be empty", Duration::from_secs(20), || {
        pg.psql("SELECT count(*) FROM webjobs_queue WHERE job = 'triggered/work'") == "0"
    });
    let mut runs: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    let mut by_root = [0usize; 3];
    for line in ran() {
        let parts: Vec<&str> = line.split(' ').collect();
        runs.entry(parts[0].to_string()).or_default().push(parts[1].parse().unwrap());
        let root = roots.iter().position(|r| parts[2].starts_with(&r.path().display().to_string())).unwrap();
        by_root[root] += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, a)| a.len() > 1).collect();
    let retried = runs.values().filter(|a| a.iter().any(|n| *n > 1)).count();
    eprintln!(
        "{REQUESTS} requests: runs per daemon {by_root:?}; {retried} in flight at the kill, retried; {} of them had run before",
        twice.len()
    );
    assert!(retried >= 1, "the run in flight at the kill was retried");
    assert_eq!(runs.len(), REQUESTS, "every request ran");
    for (id, attempts) in &twice {
        assert!(attempts.iter().any(|a| *a > 1), "{id} ran twice without a retry: {attempts:?}");
    }
    assert!(twice.len() <= 6, "at most max_parallel in flight on the killed daemon: {}", twice.len());
    assert!(by_root.iter().all(|n| *n > 0), "every daemon took requests: {by_root:?}");
    for daemon in daemons.into_iter().flatten() {
        daemon.stop();
    }
}

/// Samples `copies` every 20 ms until `until` holds: never more than one.
fn never_two(what: &str, limit: Duration, copies: impl Fn() -> usize, mut until: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let n = copies();
        assert!(n <= 1, "{what}: {n} copies at once");
        if until() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daemon_cut_off_from_the_database_stops_its_singleton_before_another_starts_it() {
    let pg = Cluster::start();
    let proxy = Proxy::start(pg.port);
    let a_root = root_on(&proxy.url(), 2000);
    let b_root = root_on(&pg.url(), 2000);
    singleton_everywhere(&[&a_root, &b_root]);
    let a = Daemon::start(&a_root, &[]);
    wait_for("the cut-off-to-be daemon holds it", Duration::from_secs(10), || a.job_pids("only").len() == 1);
    let b = Daemon::start(&b_root, &[]);
    wait_for("the other stands by", Duration::from_secs(10), || b_root.status_is("only", "InactiveInstance"));
    let copies = || a.job_pids("only").len() + b.job_pids("only").len();
    let cut_at = Instant::now();
    proxy.cut();
    // A fences itself (ttl − ttl/5 without a renewal) and stops its copy;
    // B may start only after A's session expired and the grace passed.
    never_two("through the partition", Duration::from_secs(15), copies, || b.job_pids("only").len() == 1);
    let took = cut_at.elapsed();
    assert!(took >= Duration::from_secs(3), "taken over after {took:?}, before ttl + grace");
    let log = a_root.log("only");
    assert!(log.contains("singleton lease lost") && log.contains("no lease renewal confirmed"), "{log}");
    // Healed: A comes back with a new session and stands by; one copy throughout.
    proxy.heal();
    let healed = Instant::now();
    never_two("after healing", Duration::from_secs(10), copies, || {
        healed.elapsed() > Duration::from_secs(4) && a_root.status_is("only", "InactiveInstance")
    });
    assert_eq!(b.job_pids("only").len(), 1);
    assert!(a.stderr().contains("does not answer"), "{}", a.stderr());
}

#[test]
fn postgres_restarted_under_load_pauses_singletons_and_runs_no_tick_twice() {
    let pg = Cluster::start();
    let out = tempfile::tempdir().unwrap();
    let ticks = out.path().join("ticks.txt");
    let roots: Vec<Root> = (0..2).map(|_| root_on(&pg.url(), 2000)).collect();
    singleton_everywhere(&roots.iter().collect::<Vec<_>>());
    let script = format!("echo \"$WEBJOBS_NAME $WEBJOBS_TICK\" >> {}\n", ticks.display());
    let settings = r#"{"schedule": "* * * * * *", "stopping_wait_time": 1, "retries": 2, "retry_delay": 0.1}"#;
    for root in &roots {
        for n in 0..5 {
            root.job("triggered", &format!("tick{n}"), &[("run.sh", &script), ("settings.job", settings)]);
        }
    }
    let daemons: Vec<Daemon> = roots.iter().map(|r| Daemon::start(r, &[])).collect();
    let copies = || daemons.iter().map(|d| d.job_pids("only").len()).sum::<usize>();
    wait_for("the singleton runs", Duration::from_secs(10), || copies() == 1);
    wait_for("ticks run", Duration::from_secs(10), || read(&ticks).lines().count() >= 10);
    // Down for longer than the fencing delay (ttl − ttl/5 = 1.6 s): the
    // singleton stops everywhere; nothing runs it while no one can renew.
    pg.stop_server("fast");
    let down = Instant::now();
    never_two("while the database is down", Duration::from_secs(10), copies, || copies() == 0);
    assert!(down.elapsed() < Duration::from_secs(4), "paused after {:?}", down.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(copies(), 0, "no singleton runs while the database is away");
    pg.start_server();
    // Back: the daemons reconnect, one of them resumes the singleton, ticks resume.
    let lines = read(&ticks).lines().count();
    never_two("after the restart", Duration::from_secs(15), copies, || copies() == 1);
    wait_for("ticks resume", Duration::from_secs(10), || read(&ticks).lines().count() >= lines + 10);
    let mut seen = std::collections::BTreeSet::new();
    for line in read(&ticks).lines() {
        assert!(seen.insert(line.to_string()), "a tick ran twice: {line}");
    }
    for daemon in daemons {
        daemon.stop();
    }
}

#[test]
fn any_daemon_shows_every_run_of_the_cluster_and_reads_its_log_where_it_ran() {
    let pg = Cluster::start();
    let roots: Vec<Root> = (0..2).map(|_| root_on(&pg.url(), 2000)).collect();
    // Its payload (stdin) comes from the database to whichever daemon takes it.
    let script = "echo \"ran in $WEBJOBS_DATA_PATH\"\ncat\necho\necho second line\n";
    for (n, root) in roots.iter().enumerate() {
        root.add_config(serde_json::json!({"api_user": "ops", "api_password": "cluster-secret"}));
        root.job("triggered", "report", &[("run.sh", script)]);
        // The same job with other content on each machine: version skew.
        root.job("triggered", "skewed", &[("run.sh", &format!("echo version {n}\n"))]);
    }
    let daemons: Vec<Daemon> = roots.iter().map(|r| Daemon::start(r, &[])).collect();
    let basic = format!("Basic {}", base64_of("ops:cluster-secret"));
    let clients = [roots[0].http().with_auth(&basic), roots[1].http().with_auth(&basic)];
    let started = clients[1].send("POST", "/api/triggeredwebjobs/report/run", &[], b"payload through the database");
    assert_eq!(started.status, 202, "{}", started.text());
    // The queue is shared: the daemon asked stores the request, and either
    // may take it (the other hears of it at once). Whichever ran it, the
    // other shows it and reads its log.
    let mut ran = 0;
    wait_for("the run ends on one daemon", Duration::from_secs(10), || {
        let counts: Vec<usize> = roots.iter().map(|r| r.finished_runs("report").len()).collect();
        ran = usize::from(counts[1] == 1);
        counts.iter().sum::<usize>() == 1
    });
    let (runner, a) = (&roots[ran], &clients[1 - ran]);
    let id = runner.runs("report")[0].clone();
    let mut view = serde_json::Value::Null;
    wait_for("the other daemon shows it", Duration::from_secs(5), || {
        view = a.get(&format!("/api/triggeredwebjobs/report/history/{id}")).json();
        view["status"] == "Success"
    });
    assert_eq!(view["instance"], runner.instance);
    assert_eq!(view["request"], started.json()["request"]);
    let history = a.get("/api/triggeredwebjobs/report/history").json();
    assert!(history["runs"].as_array().unwrap().iter().any(|r| r["id"] == id.as_str()), "{history}");
    // Its log is read from the daemon that ran it, through the other (same credentials).
    let output_url = view["output_url"].as_str().unwrap();
    let path = &output_url[output_url.find("/vfs/").unwrap()..];
    let log = a.get(path);
    assert_eq!(log.status, 200, "{}", log.text());
    assert!(log.text().contains(&format!("ran in {}", runner.path().display())), "{}", log.text());
    assert!(log.text().contains("payload through the database"), "{}", log.text());
    assert!(log.header("x-webjobs-output").is_none(), "the whole log, from the daemon that ran it");
    // The cluster: both daemons, and the job that differs between them.
    // (Each daemon reports what it runs once its jobs are loaded.)
    let mut cluster = serde_json::Value::Null;
    wait_for("both daemons' jobs reported", Duration::from_secs(5), || {
        cluster = a.get("/api/cluster").json();
        cluster["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|d| d["jobs"] == 2))
    });
    assert!(cluster["skew"]["triggered/skewed"].as_object().is_some_and(|h| h.len() == 2), "{cluster}");
    assert!(cluster["skew"].get("triggered/report").is_none(), "{cluster}");
    let cli = stdout(&roots[0].cli(&["cluster"]));
    assert!(cli.contains(&roots[1].instance) && cli.contains("triggered/skewed"), "{cli}");
    // The daemon that ran it is gone: the other serves the end of the output kept in the database.
    let mut daemons = daemons;
    drop(daemons.remove(ran).kill9());
    let log = a.get(path);
    assert_eq!(log.status, 200, "{}", log.text());
    assert!(log.text().contains("second line"), "{}", log.text());
    assert!(
        log.header("x-webjobs-output").is_some_and(|h| h.contains("not reachable")),
        "{:?}",
        log.header("x-webjobs-output")
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_job_stopped_on_one_daemon_stops_on_every_daemon_of_the_cluster() {
    let pg = Cluster::start();
    let roots: Vec<Root> = (0..2).map(|_| root_on(&pg.url(), 2000)).collect();
    for root in &roots {
        root.continuous("everywhere", "exec sleep 300\n");
    }
    let daemons: Vec<Daemon> = roots.iter().map(|r| Daemon::start(r, &[])).collect();
    wait_for("it runs on both", Duration::from_secs(10), || {
        daemons.iter().all(|d| d.job_pids("everywhere").len() == 1)
    });
    let out = roots[0].cli(&["stop", "everywhere"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("it stops on the other daemon too", Duration::from_secs(10), || {
        daemons.iter().all(|d| d.job_pids("everywhere").is_empty()) && roots[1].status_is("everywhere", "Stopped")
    });
    assert!(roots[1].job_dir("continuous", "everywhere").join("disable.job").exists(), "persisted there too");
    let out = roots[1].cli(&["start", "everywhere"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("it runs on both again", Duration::from_secs(10), || {
        daemons.iter().all(|d| d.job_pids("everywhere").len() == 1)
    });
}

#[test]
fn a_daemon_whose_database_cannot_be_reached_says_so_and_exits() {
    let port = crate::pg::free_port();
    let root = root_on(&format!("postgresql://postgres:hunter2@127.0.0.1:{port}/postgres?sslmode=disable"), 2000);
    let out = root.serve_refused();
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(text.contains("cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1"), "{text}");
    assert!(!text.contains("hunter2"), "the password is never shown: {text}");
}

#[test]
fn the_database_is_reached_over_tls_with_its_certificate_checked() {
    let pg = Cluster::start();
    let (cert, key) = self_signed_certificate(pg.dir());
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    pg.give(&key);
    pg.give(&cert);
    pg.stop_server("fast");
    pg.start_server_with(&format!("-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert.display(), key.display()));
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres?sslmode=require", pg.port);
    // The server's certificate is not signed by a system authority: refused, and said why.
    let refused = Root::with_config(serde_json::json!({"coordination": {"postgres": url}}));
    let out = refused.serve_refused();
    assert!(
        stderr(&out).contains("cannot reach PostgreSQL") && stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );
    // Trusted through ca_file: the daemon's connections are encrypted.
    let root = Root::with_config(serde_json::json!({"coordination": {"postgres": url, "ca_file": cert}}));
    root.continuous("tls", "exec sleep 300\n");
    let daemon = Daemon::start(&root, &[]);
    let encrypted = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'webjobs' AND s.ssl";
    wait_for("an encrypted connection", Duration::from_secs(5), || pg.psql(encrypted) != "0");
    let plain = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'webjobs' AND NOT s.ssl";
    assert_eq!(pg.psql(plain), "0", "no connection in the clear");
    daemon.stop();
}

/// The ticks of many jobs falling on the same instant, claimed by two
/// daemons at once (their claims go in batches): each tick is stored once,
/// by one of them, a tick not newer than the last is refused, and two ticks
/// of one job sent together are both judged (not an error).
#[test]
fn ticks_of_many_jobs_at_one_instant_are_each_claimed_once_when_sent_together() {
    use webjobs::coordination::Coordinator;
    use webjobs::coordination::postgres::PgSettings;
    use webjobs::key::{JobKey, JobKind};
    use webjobs::queue::Entry;
    const JOBS: usize = 200;
    let pg = Cluster::start();
    // One thread: every claim below is sent before a batch is made of them.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let settings = PgSettings { url: pg.url(), ttl: Duration::from_secs(5), ca_file: None, advertise: None };
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut daemons = Vec::new();
        for dir in &dirs {
            daemons.push(Coordinator::open(dir.path(), Some(&settings)).await.unwrap());
        }
        let now = jiff::Timestamp::now().as_millisecond();
        let tick = |job: usize, at: i64| {
            let mut entry = Entry::new(format!("Schedule - job {job}"), Vec::new(), String::new());
            entry.id = format!("{at}-{job:03}-{}", rand_suffix());
            entry.tick_ms = Some(at);
            entry
        };
        // Every job's tick at `now`, claimed by both daemons at once.
        let mut claims = Vec::new();
        for job in 0..JOBS {
            for (d, daemon) in daemons.iter().enumerate() {
                let coordination = daemon.job(&JobKey::new(JobKind::Triggered, format!("j{job:03}"))).await.unwrap();
                let entry = tick(job, now);
                claims.push(tokio::spawn(async move { (job, d, coordination.enqueue(&entry, None).await) }));
            }
        }
        let mut won = vec![0; JOBS];
        for claim in claims {
            let (job, d, result) = claim.await.unwrap();
            match result.unwrap_or_else(|e| panic!("job {job} on daemon {d}: {e}")) {
                Ok(()) => won[job] += 1,
                Err(refused) => assert!(refused.to_string().contains("tick"), "{refused}"),
            }
        }
        assert!(won.iter().all(|n| *n == 1), "each tick stored once: {won:?}");
        let stored = pg.psql("SELECT count(*) FROM webjobs_queue WHERE job LIKE 'triggered/j%'");
        assert_eq!(stored.trim(), JOBS.to_string());
        // An older tick is refused; two ticks of one job sent together are
        // both judged: the newer one is stored whatever the order.
        let job = daemons[0].job(&JobKey::new(JobKind::Triggered, "j000")).await.unwrap();
        assert!(job.enqueue(&tick(0, now - 1000), None).await.unwrap().is_err());
        let (a, b) = (tick(0, now + 500), tick(0, now + 900));
        let (ra, rb) = tokio::join!(job.enqueue(&a, None), job.enqueue(&b, None));
        assert!(rb.unwrap().is_ok(), "the newer tick is stored");
        ra.unwrap().ok();
        let last = pg.psql(
            "SELECT (extract(epoch FROM last_tick) * 1000)::bigint FROM webjobs_ticks WHERE job = 'triggered/j000'",
        );
        assert_eq!(last.trim(), (now + 900).to_string());
    });
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs' history records written in batches (each run's start and end sent
/// without waiting, one start sent late, after its end): every run is one
/// row with its end, and a write somebody waits for is answered once
/// everything sent before it is in.
#[test]
fn history_records_sent_together_leave_each_run_once_with_its_end() {
    use webjobs::coordination::Coordinator;
    use webjobs::coordination::postgres::PgSettings;
    use webjobs::history::RunStatus;
    use webjobs::key::{JobKey, JobKind};
    let pg = Cluster::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let settings = PgSettings { url: pg.url(), ttl: Duration::from_secs(5), ca_file: None, advertise: None };
        let dir = tempfile::tempdir().unwrap();
        let daemon = Coordinator::open(dir.path(), Some(&settings)).await.unwrap();
        let job = daemon.job(&JobKey::new(JobKind::Triggered, "h")).await.unwrap();
        let status = |state: &str| -> RunStatus {
            serde_json::from_value(serde_json::json!({
                "Status": state, "StartTime": "2026-11-24T06:00:00Z", "Trigger": "External - test", "Instance": "a"
            }))
            .unwrap()
        };
        for n in 0..40 {
            let id = format!("2026112406000000{n:02}");
            job.record_later(&id, "a", &status("Running"), None, 100);
            job.record_later(&id, "a", &status("Success"), Some(format!("output {n}")), 100);
            if n == 3 {
                job.record_later(&id, "a", &status("Running"), None, 100);
            }
        }
        // Sent last and waited for: everything before it is written by then.
        tokio::task::yield_now().await;
        job.record_run("202611240600009999", "a", &status("Running"), None, 100).await.unwrap();
    });
    let rows = pg.psql("SELECT count(*), count(*) FILTER (WHERE status->>'Status' = 'Success' AND output_tail LIKE 'output %') FROM webjobs_runs WHERE job = 'triggered/h'");
    assert_eq!(rows.trim(), "41|40", "every run once, each with its end and output");
}

/// Two daemons behind PgBouncer in transaction mode (Debian's, which keeps no
/// prepared statements across its server connections): a queue is drained
/// and schedule ticks are claimed, each once, with statements sent unnamed.
#[test]
fn two_daemons_behind_pgbouncer_in_transaction_mode_drain_a_queue_and_tick_once() {
    const REQUESTS: usize = 60;
    let pg = Cluster::start();
    let bouncer = Bouncer::start(&pg);
    let out = tempfile::tempdir().unwrap();
    let done = out.path().join("done.txt");
    let ticks = out.path().join("ticks.txt");
    let roots: Vec<Root> = (0..2)
        .map(|_| {
            Root::with_config(serde_json::json!({
                "coordination": {"postgres": bouncer.url(), "lease_ttl_ms": 2000},
                // Every run stays in the shared history (it keeps a job's newest history_size).
                "history_size": 100,
            }))
        })
        .collect();
    for root in &roots {
        root.job(
            "triggered",
            "work",
            &[
                ("run.sh", &format!("echo \"$WEBJOBS_REQUEST_ID\" >> {}\n", done.display())),
                ("settings.job", r#"{"max_parallel": 4}"#),
            ],
        );
        root.job(
            "triggered",
            "tick",
            &[
                ("run.sh", &format!("echo \"$WEBJOBS_TICK\" >> {}\n", ticks.display())),
                ("settings.job", r#"{"schedule": "* * * * * *"}"#),
            ],
        );
    }
    let daemons: Vec<Daemon> = roots.iter().map(|r| Daemon::start(r, &[])).collect();
    let http = roots[0].http();
    let mut ids = Vec::new();
    for n in 0..REQUESTS {
        let reply = http.post(&format!("/api/triggeredwebjobs/work/run?queue=1&arguments=n{n}"));
        assert!(reply.status < 300, "{} {}\n{}", reply.status, reply.text(), bouncer.log());
        ids.push(reply.json()["request"].as_str().expect("a request id").to_string());
    }
    wait_for("every request to run", Duration::from_secs(60), || {
        let lines = read(&done);
        ids.iter().all(|id| lines.lines().any(|l| l == id))
    });
    wait_for("five ticks", Duration::from_secs(30), || read(&ticks).lines().count() >= 5);
    // A run's end reaches the shared history shortly after its output.
    let succeeded = "SELECT count(*) FROM webjobs_runs WHERE job = 'triggered/work' AND status->>'Status' = 'Success'";
    wait_for("every run in the shared history", Duration::from_secs(20), || pg.psql(succeeded) == REQUESTS.to_string());
    for daemon in daemons {
        daemon.stop();
    }
    let lines = read(&done);
    assert_eq!(lines.lines().count(), REQUESTS, "each request once");
    let mut seen: Vec<String> = read(&ticks).lines().map(str::to_string).collect();
    let all = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), all, "each tick once: {:?}", read(&ticks));
    assert_eq!(pg.psql(succeeded), REQUESTS.to_string(), "no run recorded twice");
}

/// `webjobs db migrate` brings a database made by an earlier version (schema
/// 3, before the take became a function) up to date, says so, and a daemon
/// then runs queued requests on it; run again, it changes nothing.
#[test]
fn db_migrate_upgrades_an_older_schema_and_a_daemon_runs_on_it() {
    let pg = Cluster::start();
    let root = root_on(&pg.url(), 2000);
    let migrate = || {
        let out = root.cli(&["db", "migrate"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert!(migrate().contains("is at version 4"), "a new database gets every step");
    // As an earlier version left it.
    pg.psql("DROP FUNCTION webjobs_take_leased; DELETE FROM webjobs_schema WHERE version = 4");
    assert_eq!(pg.psql("SELECT max(version) FROM webjobs_schema"), "3");
    assert!(migrate().contains("is at version 4"));
    assert!(migrate().contains("is at version 4"), "a second run changes nothing");
    assert_eq!(pg.psql("SELECT count(*) FROM webjobs_schema WHERE version = 4"), "1");
    let out = tempfile::tempdir().unwrap();
    let done = out.path().join("done.txt");
    root.job("triggered", "work", &[("run.sh", &format!("echo \"$WEBJOBS_REQUEST_ID\" >> {}\n", done.display()))]);
    let daemon = Daemon::start(&root, &[]);
    let reply = root.http().post("/api/triggeredwebjobs/work/run?queue=1");
    assert!(reply.status < 300, "{} {}", reply.status, reply.text());
    let id = reply.json()["request"].as_str().expect("a request id").to_string();
    wait_for("the queued request to run", Duration::from_secs(20), || read(&done).lines().any(|l| l == id));
    daemon.stop();
}
