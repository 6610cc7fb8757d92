//! Several daemons on separate roots (no shared disk) coordinated through a
//! real PostgreSQL server (see [`crate::pg`]): singleton failover, fencing of
//! a paused or cut-off holder, each tick once, one shared queue.

use std::time::{Duration, Instant};

use crate::helper::*;
use crate::pg::{Cluster, Proxy};

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
    loop {
        let now = holders(&live(&daemons));
        assert!(now.len() <= 1, "two copies at once");
        if now.len() == 1 {
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(12), "no takeover within 12 s");
        std::thread::sleep(Duration::from_millis(20));
    }
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
