#!/usr/bin/env python3
"""webjobs benchmarks, side by side with the floor (no supervisor at all).

Usage: python3 benches/bench.py [log|logdd|footprint|crash|stop|reaction|trigger|schedule|queue|api|notify|scale|operator|cluster|clustertick|clusterdrain|all] [--quick] [--no-cgroups]

Builds nothing: run `cargo build --release` first. Every figure is measured
on the release binary with RUST_BACKTRACE and WEBJOBS_LOG unset (the script
clears them), then the log benchmark is repeated with them set to show that
debug variables do not slow the daemon down or make it fatter.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("WEBJOBS_BENCH_BIN") or os.path.join(ROOT, "target", "release", "webjobs")
CLK = os.sysconf("SC_CLK_TCK")
QUICK = "--quick" in sys.argv
# --no-cgroups: the daemons run with `"cgroups": false` (process groups only), to measure what cgroups cost.
NO_CGROUPS = "--no-cgroups" in sys.argv

LINES = 2_000_000 // (10 if QUICK else 1)
WRITER = r"""
import sys, time
n = int(sys.argv[1])
line = ("x" * 90 + "\n")
w = sys.stdout.write
t0 = time.perf_counter()
for i in range(n):
    w("%09d " % i + line)
sys.stdout.flush()
sys.stderr.write("WRITER_SECONDS %.6f\n" % (time.perf_counter() - t0))
"""


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "WEBJOBS_LOG", "RUST_LOG")}
    env.update(extra)
    return env


class Daemon:
    def __init__(self, root, env=None, config=None):
        self.root = root
        cfg = os.path.join(root, "webjobs.json")
        config = dict(config or {})
        if NO_CGROUPS:
            config["cgroups"] = False
        with open(cfg, "w") as f:
            json.dump(config, f)
        self.stderr = open(os.path.join(root, "daemon.log"), "w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([BIN, "--root", root, "--config", cfg, "serve"], env=env or clean_env(WEBJOBS_INSTANCE_ID="bench"),
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)

    def stat(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime, seconds

    def status_kib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def wait_for(cond, limit, step=0.001):
    deadline = time.perf_counter() + limit
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError
        time.sleep(step)


def start_ticks(pid):
    """A process's start time, in clock ticks since boot (from the kernel)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def marked_pids(prefix="bench."):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"WEBJOBS_RUN_MARKER=" + prefix.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def count_live(proc_file, matches):
    """Live (not zombie) processes whose /proc/<pid>/<proc_file> satisfies `matches`."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/{proc_file}", "rb") as f:
                if not matches(f.read()):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
        except OSError:
            continue
        n += 1
    return n


def marked(prefix="bench."):
    return count_live("environ", lambda env: b"WEBJOBS_RUN_MARKER=" + prefix.encode() in env)


CAT_WRITER = r"""
import subprocess, sys, time
t0 = time.perf_counter()
subprocess.run(["dd", "if=" + sys.argv[2], "bs=64k", "status=none"], check=True)
sys.stderr.write("WRITER_SECONDS %.6f\n" % (time.perf_counter() - t0))
"""


def bench_log(env_label="clean", env=None, kind="python"):
    """kind: "python" (a program printing line by line) or "dd" (a file
    streamed by dd, 64 KiB writes: the hardest case for a log stamper)."""
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    writer = os.path.join(tmp, "writer.py")
    with open(writer, "w") as f:
        f.write(WRITER if kind == "python" else CAT_WRITER)
    data = os.path.join(tmp, "lines.txt")
    with open(data, "w") as f:
        chunk = "".join("%09d " % i + "x" * 90 + "\n" for i in range(10000))
        for _ in range(LINES // 10000):
            f.write(chunk)
    # Floor: the same writer redirected straight to a file.
    floors = []
    for _ in range(3):
        with open(os.path.join(tmp, "floor.txt"), "w") as out:
            r = subprocess.run([sys.executable, writer, str(LINES), data], stdout=out, stderr=subprocess.PIPE, text=True, check=True)
        floors.append(float(r.stderr.split()[-1]))
    floor = min(floors)
    results = []
    for attempt in range(3):
        root = os.path.join(tmp, f"r{attempt}")
        job = os.path.join(root, "jobs", "continuous", "writer")
        os.makedirs(job)
        shutil.copy(writer, os.path.join(job, "writer.py"))
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write(f"{sys.executable} writer.py {LINES} {data}\nexec sleep 600\n")
        with open(os.path.join(job, "settings.job"), "w") as f:
            f.write('{"restart_delay": 600}')
        d = Daemon(root, env=env, config={"log": {"max_size": 1 << 40}})
        log = os.path.join(root, "data", "jobs", "continuous", "writer", "job_log.txt")
        wait_for(lambda: os.path.exists(log) and b"WRITER_SECONDS" in tail(log), 120, 0.01)
        seconds = float(tail(log).split(b"WRITER_SECONDS ")[1].split()[0])
        hwm = d.status_kib("VmHWM")
        d.stop()
        with open(log, "rb") as f:
            info = sum(1 for line in f if b": INFO] " in line)
        results.append((seconds, hwm, info))
    best = min(results)
    mb = LINES * 100 / 1e6
    print(f"log capture [{kind} writer, {env_label}]: {mb:.0f} MB in {LINES} lines of 100 bytes")
    print(f"  floor (redirect to file): {floor:.3f} s = {mb / floor:.0f} MB/s")
    print(f"  through webjobs:          {best[0]:.3f} s = {mb / best[0]:.0f} MB/s -> {100 * floor / best[0]:.1f} % of the floor")
    print(f"  lines in the log: {best[2]} of {LINES} ({'none lost' if best[2] == LINES else 'LOST LINES'}); daemon peak RSS {best[1] / 1024:.1f} MB")
    shutil.rmtree(tmp)


def tail(path, n=4096):
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read()


def bench_footprint():
    n = 200
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    # Floor: spawning the same 200 sleeps directly.
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(n)]
    floor = time.perf_counter() - t0
    for p in procs:
        p.kill()
        p.wait()
    for i in range(n):
        job = os.path.join(tmp, "jobs", "continuous", f"s{i:03}")
        os.makedirs(job)
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write("exec sleep 600\n")
    d = Daemon(tmp)
    wait_for(lambda: marked() >= n, 30, 0.05)
    # From the kernel's own start times: the last job's start minus the daemon's.
    startup = (max(start_ticks(p) for p in marked_pids()) - start_ticks(d.proc.pid)) / CLK
    time.sleep(2)
    rss = d.status_kib("VmRSS")
    anon, file = d.status_kib("RssAnon"), d.status_kib("RssFile")
    hwm = d.status_kib("VmHWM")
    idle = 10 if QUICK else 30
    c0 = d.stat()
    time.sleep(idle)
    cpu = d.stat() - c0
    # Stopping them all: the daemon's SIGTERM to its exit (every job stopped by the protocol).
    t0 = time.perf_counter()
    d.stop()
    stop = time.perf_counter() - t0
    left = marked()
    print(f"footprint: {n} continuous jobs (exec sleep)")
    print(f"  floor (spawn {n} sleeps directly from Python): {floor:.3f} s")
    print(f"  all running {startup:.2f} s after `serve` started (kernel start times, 10 ms resolution)")
    print(f"  daemon RSS {rss / 1024:.1f} MB (peak {hwm / 1024:.1f} MB): {anon / 1024:.1f} MB its own (RssAnon), "
          f"{file / 1024:.1f} MB pages of the binary and libraries (RssFile, shared, reclaimable)")
    print(f"  daemon CPU over {idle} s idle: {cpu:.3f} s = {100 * cpu / idle:.3f} % of one core")
    print(f"  stop: daemon SIGTERM to exit with all {n} stopped: {stop:.3f} s ({left} job processes left)")
    shutil.rmtree(tmp)


def bench_stop_escaped(n=300):
    """A job that scatters n TERM-deaf processes, each in a session of its own:
    time from `webjobs stop` to the last of them gone, against stopping_wait_time."""
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    job = os.path.join(tmp, "jobs", "continuous", "scatter")
    os.makedirs(job)
    tag = f"77{os.getpid() % 1000:03d}"
    with open(os.path.join(job, "run.sh"), "w") as f:
        f.write(f"for i in $(seq 1 {n}); do setsid sh -c \"trap '' TERM; exec sleep {tag}\" & done\nwhile true; do sleep 0.1; done\n")
    with open(os.path.join(job, "settings.job"), "w") as f:
        json.dump({"stopping_wait_time": 1}, f)
    d = Daemon(tmp)

    def alive():
        return count_live("cmdline", lambda cmd: cmd == b"sleep\0" + tag.encode() + b"\0")

    wait_for(lambda: alive() == n, 60, step=0.05)
    t0 = time.perf_counter()
    subprocess.run([BIN, "--root", tmp, "--config", os.path.join(tmp, "webjobs.json"), "stop", "scatter"], env=clean_env(WEBJOBS_INSTANCE_ID="bench"), capture_output=True, check=True)
    answered = time.perf_counter() - t0
    wait_for(lambda: alive() == 0, 30, step=0.005)
    gone = time.perf_counter() - t0
    d.stop()
    mode = "process groups only" if NO_CGROUPS else "cgroup per run"
    print(f"stop of a job with {n} TERM-deaf processes in sessions of their own ({mode}), stopping_wait_time 1 s")
    print(f"  all gone {gone:.3f} s after `webjobs stop` (= stopping_wait_time + {(gone - 1) * 1000:.0f} ms); the command returned after {answered:.3f} s")
    shutil.rmtree(tmp)


def bench_crash():
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    job = os.path.join(tmp, "jobs", "continuous", "crash")
    os.makedirs(job)
    shutil.copy("/bin/true", os.path.join(job, "run"))
    # First restart delay with the defaults.
    d = Daemon(tmp)
    log = os.path.join(tmp, "data", "jobs", "continuous", "crash", "job_log.txt")
    wait_for(lambda: os.path.exists(log) and open(log).read().count("started process") >= 2, 10)
    starts = [l for l in open(log) if "started process" in l][:2]
    ts = [parse_ts(l) for l in starts]
    d.stop()
    print("crash loop: a job that exits at once (a native `run` executable)")
    print(f"  first restart {ts[1] - ts[0]:.3f} s after the first start (default restart_delay 0.5 s)")
    # Floor: the same spawn + wait done by Python, CPU of the parent only.
    t0 = os.times()
    for _ in range(200):
        subprocess.run(["/bin/true"])
    t1 = os.times()
    floor = ((t1.user - t0.user) + (t1.system - t0.system)) / 200
    # CPU per restart: with no backoff at all (restart_delay 0, the issue's
    # measure), and with a 10 ms delay (each restart then runs cold).
    for delay, what in ((0, "no backoff (restart_delay 0)"), (0.01, "restart_delay 10 ms")):
        shutil.rmtree(os.path.join(tmp, "data"))
        with open(os.path.join(job, "settings.job"), "w") as f:
            f.write('{"restart_delay": %s, "max_restart_delay": %s}' % (delay, delay))
        d = Daemon(tmp)
        wait_for(lambda: os.path.exists(log), 10)
        time.sleep(1)
        c0, n0 = d.stat(), count(log, "started process")
        time.sleep(5 if QUICK else 15)
        c1, n1 = d.stat(), count(log, "started process")
        d.stop()
        restarts = n1 - n0
        print(f"  {what}: {restarts} restarts, daemon CPU {1000 * (c1 - c0) / restarts:.3f} ms per restart "
              f"(floor: Python spawn+wait {1000 * floor:.3f} ms)")
    shutil.rmtree(tmp)


def count(path, needle):
    with open(path) as f:
        return sum(1 for line in f if needle in line)


def parse_ts(line):
    t = line[1:24]
    h, m, s = t[11:].split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def bench_reaction():
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    os.makedirs(os.path.join(tmp, "jobs", "continuous"))
    d = Daemon(tmp)
    time.sleep(1)
    times = []
    for i in range(5):
        src = os.path.join(tmp, f"staging{i}")
        os.makedirs(src)
        with open(os.path.join(src, "run.sh"), "w") as f:
            f.write("exec sleep 600\n")
        before = marked()
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", src, os.path.join(tmp, "jobs", "continuous", f"new{i}")], check=True)
        wait_for(lambda: marked() > before, 10)
        times.append(time.perf_counter() - t0)
        time.sleep(0.5)
    d.stop()
    print("reaction: a job folder copied in (cp -r), default debounce 1 s")
    print(f"  running after: min {min(times):.3f} s, max {max(times):.3f} s")
    shutil.rmtree(tmp)


STAMP_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    printf("T %ld.%09ld\n", (long)t.tv_sec, t.tv_nsec);
    return 0;
}
"""


def stamp_binary(tmp):
    """A native job that prints the wall clock as its first act (static, so no loader work)."""
    src = os.path.join(tmp, "stamp.c")
    out = os.path.join(tmp, "stamp")
    with open(src, "w") as f:
        f.write(STAMP_C)
    subprocess.run(["gcc", "-O2", "-static", "-o", out, src], check=True)
    return out


def unix_http(sock_path):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    return s


def http(s, method, path):
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split()[1]), json.loads(body or b"null")


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def every_second_jobs(tmp, stamp, jobs):
    """`jobs` triggered jobs t00, t01, … running the stamp job every second."""
    for i in range(jobs):
        job = os.path.join(tmp, "jobs", "triggered", f"t{i:02}")
        os.makedirs(job)
        shutil.copy(stamp, os.path.join(job, "run"))
        with open(os.path.join(job, "settings.job"), "w") as f:
            f.write('{"schedule": "* * * * * *"}')


def bench_schedule(jobs=20):
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    stamp = stamp_binary(tmp)
    every_second_jobs(tmp, stamp, jobs)
    seconds = 30 if QUICK else 120
    d = Daemon(tmp, config={"history_size": 1000})
    time.sleep(seconds + 1.5)
    d.stop()
    delays, starts, missed, doubled = [], [], 0, 0
    for i in range(jobs):
        data = os.path.join(tmp, "data", "jobs", "triggered", f"t{i:02}")
        ticks = []
        for run in sorted(os.listdir(data)):
            log = os.path.join(data, run, "output_log.txt")
            if not run.isdigit() or not os.path.exists(log):
                continue
            starts.append(int(run[14:18]) / 10)  # the run id is stamped just before the spawn
            for line in open(log):
                if "INFO] T " in line:
                    t = float(line.split("INFO] T ")[1])
                    ticks.append(int(t))
                    delays.append((t - int(t)) * 1000)
        doubled += len(ticks) - len(set(ticks))
        full = range(min(ticks) + 1, max(ticks))  # whole seconds between the first and last
        missed += sum(1 for t in full if t not in set(ticks))
    print(f"schedule accuracy: {jobs} jobs on '* * * * * *' for {seconds} s ({len(delays)} runs)")
    print(f"  run start after the tick (daemon, just before the spawn): p50 {pct(starts, 50):.2f} ms, p99 {pct(starts, 99):.2f} ms, max {max(starts):.2f} ms")
    print(f"  child's first instruction after the tick:              p50 {pct(delays, 50):.2f} ms, p99 {pct(delays, 99):.2f} ms, max {max(delays):.2f} ms")
    floor = spawn_floor(stamp, jobs)
    print(f"  floor: {jobs} posix_spawns at once from a bare Python loop: p50 {pct(floor, 50):.2f} ms, p99 {pct(floor, 99):.2f} ms")
    print(f"  missed ticks {missed}, doubled ticks {doubled}")
    shutil.rmtree(tmp)


def spawn_floor(binary, n, trials=20):
    """Delay to the first instruction of `n` children spawned at once, no daemon."""
    res = []
    for _ in range(trials):
        r, w = os.pipe()
        t0 = time.time()
        pids = [os.posix_spawn(binary, [binary], {}, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)]) for _ in range(n)]
        os.close(w)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        os.close(r)
        for p in pids:
            os.waitpid(p, 0)
        res += [(float(line.split()[1]) - t0) * 1000 for line in out.decode().splitlines()]
        time.sleep(0.05)
    return res


def stamp_job(tmp):
    """A triggered job `stamp` (the static C job) and its daemon: (daemon,
    socket path, the job's data folder, the job's folder)."""
    stamp = stamp_binary(tmp)
    job = os.path.join(tmp, "jobs", "triggered", "stamp")
    os.makedirs(job)
    shutil.copy(stamp, os.path.join(job, "run"))
    d = Daemon(tmp, config={"history_size": 1000})
    sock = os.path.join(tmp, "data", "instances", "bench.sock")
    wait_for(lambda: os.path.exists(sock), 10)
    return d, sock, os.path.join(tmp, "data", "jobs", "triggered", "stamp"), job


def child_stamp(data, run_id):
    """The time the stamp job's run `run_id` printed as its first act."""
    log = os.path.join(data, run_id, "output_log.txt")
    wait_for(lambda: os.path.exists(log) and "INFO] T " in open(log).read(), 10)
    return float(open(log).read().split("INFO] T ")[1].split()[0])


def bench_trigger():
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    n = 50 if QUICK else 200
    d, sock, data, _ = stamp_job(tmp)
    stamp = os.path.join(tmp, "stamp")

    def child_time(run_id):
        return child_stamp(data, run_id)

    # At the daemon: a connected client sends the request; the child stamps its start.
    s = unix_http(sock)
    direct = []
    for _ in range(n):
        t0 = time.time()
        code, body = http(s, "POST", "/api/triggeredwebjobs/stamp/run")
        assert code == 202, body
        direct.append((child_time(body["id"]) - t0) * 1000)
        http(s, "GET", f"/api/triggeredwebjobs/stamp/history/{body['id']}?wait=10")
    # Through the CLI: from starting `webjobs run` to the child's first instruction.
    cli = []
    env = clean_env(WEBJOBS_INSTANCE_ID="bench")
    for _ in range(n // 2):
        t0 = time.time()
        out = subprocess.run([BIN, "--root", tmp, "--config", os.path.join(tmp, "webjobs.json"), "run", "stamp"], env=env, capture_output=True, text=True, check=True)
        cli.append((child_time(out.stdout.strip()) - t0) * 1000)
        http(s, "GET", f"/api/triggeredwebjobs/stamp/history/{out.stdout.strip()}?wait=10")
    # Floor: a bare spawn of the same binary.
    bare = []
    for _ in range(n):
        t0 = time.time()
        out = subprocess.run([stamp], capture_output=True, text=True)
        bare.append((float(out.stdout.split()[1]) - t0) * 1000)
    # Throughput: back-to-back runs, each awaited, history written.
    m = 200 if QUICK else 1000
    t0 = time.perf_counter()
    for _ in range(m):
        code, body = http(s, "POST", "/api/triggeredwebjobs/stamp/run")
        assert code == 202, body
        http(s, "GET", f"/api/triggeredwebjobs/stamp/history/{body['id']}?wait=10")
    rate = m / (time.perf_counter() - t0)
    s.close()
    d.stop()
    print("trigger to exec: request to the child's first instruction (a static C job)")
    print(f"  at the daemon (API request on the Unix socket): p50 {pct(direct, 50):.2f} ms, p95 {pct(direct, 95):.2f} ms")
    print(f"  through the CLI (`webjobs run`):                p50 {pct(cli, 50):.2f} ms, p95 {pct(cli, 95):.2f} ms")
    print(f"  floor (Python subprocess spawn of the binary):   p50 {pct(bare, 50):.2f} ms, p95 {pct(bare, 95):.2f} ms")
    print(f"throughput: {m} runs back to back, each awaited, history written: {rate:.0f} runs/s")
    shutil.rmtree(tmp)


def seed_queue(tmp, job, n, due_ms=0):
    """n queued requests of a triggered job, written as the daemon stores them
    (one file per request, named by rank, id and due time)."""
    queue = os.path.join(tmp, "data", "jobs", "triggered", job, "queue")
    os.makedirs(queue, exist_ok=True)
    now = int(time.time() * 1000)
    for i in range(n):
        rid = f"{now:013}{i:010x}"
        entry = {"id": rid, "priority": 0, "queued_ms": now, "attempts": 0, "trigger": "bench", "arguments": [], "text": ""}
        if due_ms:
            entry["due_ms"] = due_ms
        with open(os.path.join(queue, f"100-{rid}-{due_ms}.run"), "w") as f:
            json.dump(entry, f)


def queued_count(tmp, job):
    queue = os.path.join(tmp, "data", "jobs", "triggered", job, "queue")
    return sum(1 for n in os.listdir(queue) if n.endswith(".run")) if os.path.isdir(queue) else 0


def bench_queue():
    """The run queue: enqueue to exec, draining 10,000 queued runs, memory with
    100,000 queued, and acknowledged runs across SIGKILLs during a drain."""
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    n = 50 if QUICK else 200
    d, sock, data, job = stamp_job(tmp)
    s = unix_http(sock)
    direct = []
    for _ in range(n):
        t0 = time.time()
        code, body = http(s, "POST", "/api/triggeredwebjobs/stamp/queue")
        assert code == 202, body
        direct.append((child_stamp(data, body["id"]) - t0) * 1000)
        http(s, "GET", f"/api/triggeredwebjobs/stamp/history/{body['id']}?wait=10")
    s.close()
    d.stop()
    print("queue: enqueue (POST …/queue on the Unix socket) to the child's first instruction")
    print(f"  p50 {pct(direct, 50):.2f} ms, p95 {pct(direct, 95):.2f} ms")
    shutil.rmtree(os.path.join(tmp, "data"))

    # File landed (renamed into the inbox) to the child's first instruction.
    with open(os.path.join(job, "settings.job"), "w") as f:
        f.write('{"trigger": {"inbox": "inbox"}}')
    d = Daemon(tmp, config={"history_size": 1000})
    wait_for(lambda: os.path.exists(sock), 10)
    inbox = os.path.join(tmp, "data", "inbox")
    wait_for(lambda: os.path.isdir(inbox), 10)
    staging = os.path.join(tmp, "staging")
    os.makedirs(staging)
    landed = []
    for i in range(n):
        src = os.path.join(staging, f"f{i}.csv")
        open(src, "w").write("x")
        before = set(os.listdir(data))
        t0 = time.time()
        os.rename(src, os.path.join(inbox, f"f{i}.csv"))
        def new_run():
            new = [r for r in os.listdir(data) if r not in before and r.isdigit()]
            return new[0] if new else None
        wait_for(lambda: new_run() is not None, 10, 0.001)
        landed.append((child_stamp(data, new_run()) - t0) * 1000)
    d.stop()
    os.remove(os.path.join(job, "settings.job"))
    print(f"  file renamed into an inbox to the child's first instruction: p50 {pct(landed, 50):.2f} ms, p99 {pct(landed, 99):.2f} ms")
    shutil.rmtree(os.path.join(tmp, "data"))

    # Drain: 10,000 queued trivial runs (a native `true`), history written.
    shutil.copy("/bin/true", os.path.join(job, "run"))
    m = 2000 if QUICK else 10000
    seed_queue(tmp, "stamp", m)
    d = Daemon(tmp)
    wait_for(lambda: os.path.exists(sock), 10)
    t0 = time.perf_counter()
    wait_for(lambda: queued_count(tmp, "stamp") == 0 and not os.listdir(os.path.join(data, "queue", "taken", "bench")), 300, 0.05)
    drain = m / (time.perf_counter() - t0)
    rss_after = d.status_kib("VmRSS")
    d.stop()
    print(f"  {m} queued runs drained, history written: {drain:.0f} runs/s (daemon RSS after {rss_after / 1024:.1f} MB)")
    shutil.rmtree(os.path.join(tmp, "data"))

    # Memory: 100,000 requests queued (due tomorrow, so none starts).
    big = 20000 if QUICK else 100000
    seed_queue(tmp, "stamp", big, due_ms=int(time.time() * 1000) + 86_400_000)
    t0 = time.perf_counter()
    d = Daemon(tmp)
    wait_for(lambda: os.path.exists(sock), 60)
    s = unix_http(sock)
    wait_for(lambda: http(s, "GET", "/api/triggeredwebjobs/stamp")[1].get("queued") == big, 120, 0.1)
    loaded = time.perf_counter() - t0
    rss = d.status_kib("VmRSS")
    s.close()
    d.stop()
    print(f"  {big} queued: read in {loaded:.2f} s after `serve`, daemon RSS {rss / 1024:.1f} MB (payloads not held)")
    shutil.rmtree(os.path.join(tmp, "data"))

    # SIGKILLs during a drain: every acknowledged request runs; only those in flight twice.
    with open(os.path.join(job, "run.sh"), "w") as f:
        f.write(f'echo "$WEBJOBS_REQUEST_ID" >> {tmp}/done\n')
    os.remove(os.path.join(job, "run"))
    with open(os.path.join(job, "settings.job"), "w") as f:
        f.write('{"retries": 3, "retry_delay": 0}')
    total = 500 if QUICK else 2000
    seed_queue(tmp, "stamp", total)
    done = os.path.join(tmp, "done")
    kills = 0
    for _ in range(10):
        d = Daemon(tmp)
        time.sleep(0.05)
        if d.proc.poll() is not None:
            lock = os.path.join(tmp, "data", "instances", "bench.lock")
            ino = os.stat(lock).st_ino
            holders = [l for l in open("/proc/locks").read().splitlines() if f":{ino} " in l]
            for l in holders:
                pid = l.split()[4]
                try:
                    print("lock held by", pid, open(f"/proc/{pid}/cmdline").read().replace("\0", " "), open(f"/proc/{pid}/status").read().split("State:")[1].split("\n")[0])
                except OSError:
                    print("lock held by", pid, "(gone)")
            raise SystemExit(open(os.path.join(tmp, "daemon.log")).read())
        before = len(open(done).read().splitlines()) if os.path.exists(done) else 0
        # Killed once a twentieth more has run (or the queue is empty: a quick drain ends before ten kills).
        drained = lambda: queued_count(tmp, "stamp") == 0
        wait_for(lambda: drained() or (os.path.exists(done) and len(open(done).read().splitlines()) >= before + total // 20), 60, 0.01)
        d.proc.kill()
        d.proc.wait()
        kills += 1
        if drained():
            break
    d = Daemon(tmp)
    def finished():
        return len(set(open(done).read().split())) >= total and queued_count(tmp, "stamp") == 0
    wait_for(finished, 300, 0.1)
    lines = open(done).read().split()
    d.stop()
    print(f"  {kills} SIGKILLs during a drain of {total}: {total - len(set(lines))} acknowledged runs lost, "
          f"{len(lines) - len(set(lines))} ran twice (in flight at a kill)")
    shutil.rmtree(tmp)


def seed_api_jobs(tmp, jobs=1000, runs=50):
    """1,000 triggered jobs (half on a schedule) with 50 runs of history each, written directly."""
    for i in range(jobs):
        job = os.path.join(tmp, "jobs", "triggered", f"job{i:04}")
        os.makedirs(job)
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write("echo hi\n")
        if i % 2 == 0:
            with open(os.path.join(job, "settings.job"), "w") as f:
                f.write('{"schedule": "0 0 3 * * *"}')
        data = os.path.join(tmp, "data", "jobs", "triggered", f"job{i:04}")
        for r in range(runs):
            run = os.path.join(data, f"2026112103{r:02}000000")
            os.makedirs(run)
            status = {"Status": "Success" if r % 7 else "Failed", "StartTime": f"2026-11-21T03:{r:02}:00.000Z",
                      "EndTime": f"2026-11-21T03:{r:02}:01.000Z", "Trigger": "Schedule - 0 0 3 * * *", "Instance": "bench",
                      "ExitCode": 0 if r % 7 else 1, "DurationMs": 1000}
            with open(os.path.join(run, "status"), "w") as f:
                json.dump(status, f)
            with open(os.path.join(run, "output_log.txt"), "w") as f:
                f.write(f"[2026-11-21T03:{r:02}:00.100Z > bench: INFO] hi\n")


def bench_api():
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    seed_api_jobs(tmp)
    d = Daemon(tmp, config={"listen": "127.0.0.1:0"})
    addr_file = os.path.join(tmp, "data", "instances", "bench.addr")
    wait_for(lambda: os.path.exists(addr_file), 30)
    addr = open(addr_file).read().strip()
    token = open(os.path.join(tmp, "data", "api-token")).read().strip()
    wait_for(lambda: http_status(addr, token, "/health") == 200, 30)
    rss = d.status_kib("VmRSS")
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    duration = "10s" if QUICK else "30s"
    size = len(http_get(addr, token, "/api/webjobs"))
    print(f"API: GET /api/webjobs with 1000 jobs (50 runs each), 50 concurrent clients (wrk -t2 -c50, {duration}), {size / 1024:.0f} KiB of JSON")
    for label, extra in (("plain", []), ("gzip", ["-H", "Accept-Encoding: gzip"])):
        out = subprocess.run(["wrk", "-t2", "-c50", "-d" + duration, "--latency", "-H", f"Authorization: Bearer {token}", *extra,
                              f"http://{addr}/api/webjobs"], capture_output=True, text=True).stdout
        lat = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip().startswith(("50%", "75%", "90%", "99%"))}
        rps = next((line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")), "?")
        print(f"  {label:5}: latency p50 {lat.get('50%')}, p90 {lat.get('90%')}, p99 {lat.get('99%')}; {rps} requests/s")
    print(f"  daemon RSS after start {rss / 1024:.1f} MB, after the load {d.status_kib('VmRSS') / 1024:.1f} MB")
    render = dashboard_first_render(addr, token, tmp)
    d.stop()
    if render is not None:
        print(f"dashboard: first render of 1000 jobs (its first page of 100) in headless Chromium: {render:.0f} ms after navigation start")
    shutil.rmtree(tmp)


def bench_scale(n=10000):
    """n triggered jobs on one daemon, each scheduled once a minute at second
    i % 50 (so seconds 50-59 of every minute have no tick): load time, memory,
    CPU in the quiet seconds, and the job list under load."""
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    for i in range(n):
        job = os.path.join(tmp, "jobs", "triggered", f"t{i:05}")
        os.makedirs(job)
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write("exit 0\n")
        with open(os.path.join(job, "settings.job"), "w") as f:
            f.write('{"schedule": "%d * * * * *"}' % (i % 50))
    d = Daemon(tmp, config={"listen": "127.0.0.1:0"})
    try:
        scale_measure(d, tmp, n)
    finally:
        # Ten thousand jobs ticking every second must not outlive a failed measurement.
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def scale_measure(d, tmp, n):
    addr_file = os.path.join(tmp, "data", "instances", "bench.addr")
    wait_for(lambda: os.path.exists(addr_file), 30)
    addr = open(addr_file).read().strip()
    token = open(os.path.join(tmp, "data", "api-token")).read().strip()
    # Loaded: every job listed, with its next tick armed.
    def loaded():
        try:
            jobs = json.loads(http_get(addr, token, "/api/webjobs"))
        except Exception:
            return False
        return len(jobs) == n and all(j.get("next_run") for j in jobs)
    wait_for(loaded, 60, 0.05)
    load = time.perf_counter() - d.started
    # The quiet seconds: from second 51 to 59 of a minute.
    def second():
        return time.time() % 60
    wait_for(lambda: 50.5 < second() < 51.5, 70, 0.05)
    c0, t0 = d.stat(), time.perf_counter()
    wait_for(lambda: second() >= 59.0, 10, 0.05)
    quiet = d.stat() - c0
    quiet_span = time.perf_counter() - t0
    rss = d.status_kib("VmRSS")
    file = d.status_kib("RssFile")

    def wrk(seconds):
        out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {token}",
                              "-H", "Accept-Encoding: gzip", f"http://{addr}/api/webjobs"], capture_output=True, text=True).stdout
        lat = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip().startswith(("50%", "99%"))}
        rps = next((line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")), "?")
        return lat, rps
    # The list alone: in the tick-free seconds of the next minute.
    wait_for(lambda: 50.2 < second() < 51.0, 70, 0.05)
    # A second minute of ticks: every job has run (at least) twice, as it stays.
    rss2 = d.status_kib("VmRSS")
    quiet_lat, quiet_rps = wrk(8)
    # While ticks fire (about 200 runs a second, bash each, on the same 2 cores as wrk).
    lat, rps = wrk(10 if QUICK else 20)
    runs = sum(len([r for r in os.listdir(os.path.join(tmp, "data", "jobs", "triggered", j)) if r.isdigit()])
               for j in os.listdir(os.path.join(tmp, "data", "jobs", "triggered")))
    hwm = d.status_kib("VmHWM")
    d.stop()
    print(f"scale: {n} triggered jobs, each scheduled once a minute (spread over seconds 0-49)")
    print(f"  all loaded, every next tick armed, {load:.2f} s after `serve` started")
    print(f"  daemon RSS {rss / 1024:.1f} MB after the first minute, {rss2 / 1024:.1f} MB after the second "
          f"(peak {hwm / 1024:.1f} MB, under wrk); {runs} runs made meanwhile; of it {file / 1024:.1f} MB the binary's "
          f"and libraries' pages (RssFile)")
    print(f"  daemon CPU in the tick-free seconds: {quiet:.3f} s over {quiet_span:.1f} s = {100 * quiet / quiet_span:.2f} % of one core")
    print(f"  GET /api/webjobs (gzip, wrk -t2 -c50) between ticks: p50 {quiet_lat.get('50%')}, p99 {quiet_lat.get('99%')}, {quiet_rps} requests/s")
    print(f"  … while ticks fire: p50 {lat.get('50%')}, p99 {lat.get('99%')}, {rps} requests/s")


def http_get(addr, token, path):
    import urllib.request
    req = urllib.request.Request(f"http://{addr}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return r.read()


def http_status(addr, token, path):
    try:
        http_get(addr, token, path)
        return 200
    except Exception:
        return 0


class Browser:
    """Headless Chromium through ChromeDriver, sending the API token with every request."""

    def __init__(self, token, tmp):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.driver = subprocess.Popen(["/usr/bin/chromedriver", f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.port}/status"), 20, 0.05)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                f"--user-data-dir={tmp}/chrome"]
        self.sid = self.wd("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}})["sessionId"]
        self.wd("POST", f"/session/{self.sid}/goog/cdp/execute", {"cmd": "Network.enable", "params": {}})
        self.wd("POST", f"/session/{self.sid}/goog/cdp/execute", {"cmd": "Network.setExtraHTTPHeaders", "params": {"headers": {"Authorization": f"Bearer {token}"}}})

    def wd(self, method, path, body=None):
        import urllib.request
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())["value"]

    def go(self, url):
        self.wd("POST", f"/session/{self.sid}/url", {"url": url})

    def js(self, script):
        return self.wd("POST", f"/session/{self.sid}/execute/sync", {"script": script, "args": []})

    def wait_js(self, script, limit=30):
        value, deadline = None, time.time() + limit
        while value is None and time.time() < deadline:
            value = self.js(script)
            time.sleep(0.01)
        return value

    def close(self):
        try:
            self.wd("DELETE", f"/session/{self.sid}")
        finally:
            self.driver.kill()


def first_render(browser, addr, rows, total):
    """Median over 5 loads of the time from navigation start to the job table's
    first render (a mark the page sets), with its first page of rows."""
    times = []
    for i in range(5):
        browser.go(f"http://{addr}/?{i}")
        script = ("const m = performance.getEntriesByName('jobs-rendered')[0]; "
                  f"return m && document.querySelectorAll('#jobs tbody tr').length === {rows} "
                  f"&& document.querySelector('#shown').textContent.endsWith('of {total}') ? m.startTime : null;")
        times.append(browser.wait_js(script))
    return sorted(times)[len(times) // 2]


def dashboard_first_render(addr, token, tmp, rows=100, total=1000):
    if not os.path.exists("/usr/bin/chromedriver"):
        print("  (chromedriver not installed: no dashboard figure)")
        return None
    browser = Browser(token, tmp)
    try:
        return first_render(browser, addr, rows, total)
    finally:
        browser.close()


def bench_operator(n=10000):
    """What an operator waits for with n jobs: `webjobs list` end to end, the
    dashboard's first render and how soon it shows a status change, and how
    soon `logs -f` prints a line the job wrote."""
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    for i in range(n - 2):
        job = os.path.join(tmp, "jobs", "triggered", f"t{i:05}")
        os.makedirs(job)
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write("exit 0\n")
    worker = os.path.join(tmp, "jobs", "continuous", "worker")
    os.makedirs(worker)
    with open(os.path.join(worker, "run.sh"), "w") as f:
        f.write("exec sleep 600\n")
    # Writes its own clock (ns) every 50 ms: how late `logs -f` shows each line.
    stamper = os.path.join(tmp, "jobs", "continuous", "stamper")
    os.makedirs(stamper)
    with open(os.path.join(stamper, "run.py"), "w") as f:
        f.write("import time, sys\nwhile True:\n    print('T', time.time_ns(), flush=True)\n    time.sleep(0.05)\n")
    d = Daemon(tmp, config={"listen": "127.0.0.1:0"})
    addr_file = os.path.join(tmp, "data", "instances", "bench.addr")
    try:
        wait_for(lambda: os.path.exists(addr_file), 30)
        addr = open(addr_file).read().strip()
        token = open(os.path.join(tmp, "data", "api-token")).read().strip()
        wait_for(lambda: http_status(addr, token, "/health") == 200, 30)
        wait_for(lambda: len(json.loads(http_get(addr, token, "/api/webjobs"))) == n, 60, 0.05)
        cli = [BIN, "--root", tmp, "--config", os.path.join(tmp, "webjobs.json")]
        env = clean_env(WEBJOBS_INSTANCE_ID="bench")
        took = []
        for _ in range(5 if QUICK else 15):
            t0 = time.perf_counter()
            subprocess.run(cli + ["list"], env=env, stdout=subprocess.DEVNULL, check=True)
            took.append((time.perf_counter() - t0) * 1000)
        print(f"operator: {n} jobs on one daemon")
        print(f"  `webjobs list` end to end (process start to exit, table to a pipe): median {pct(took, 50):.0f} ms, max {max(took):.0f} ms")
        took = []
        for _ in range(3 if QUICK else 5):
            t0 = time.perf_counter()
            subprocess.run(cli + ["logs", "--all"], env=env, stdout=subprocess.DEVNULL, check=True)
            took.append((time.perf_counter() - t0) * 1000)
        print(f"  `webjobs logs --all` (the last 20 lines of every job's log, merged by time): median {pct(took, 50):.0f} ms")
        logs = subprocess.Popen(cli + ["logs", "stamper", "-f", "-n", "0"], env=env, stdout=subprocess.PIPE, text=True)
        late = []
        for line in logs.stdout:
            now = time.time_ns()
            if "] T " in line:
                late.append((now - int(line.rsplit(" ", 1)[1])) / 1e6)
            if len(late) >= (40 if QUICK else 200):
                break
        logs.kill()
        logs.wait()
        print(f"  `logs -f`: from the job's write to the line read from the command's stdout: p50 {pct(late, 50):.1f} ms, p99 {pct(late, 99):.1f} ms ({len(late)} lines)")
        if not os.path.exists("/usr/bin/chromedriver"):
            print("  (chromedriver not installed: no dashboard figures)")
            return
        browser = Browser(token, tmp)
        try:
            render = first_render(browser, addr, 100, n)
            print(f"  dashboard: first render (the first 100 of {n} rows and the counts) {render:.0f} ms after navigation start")
            browser.wait_js("return document.body.dataset.live === '1' ? true : null;")
            status = os.path.join(tmp, "data", "jobs", "continuous", "worker", "status_bench")
            delays = []
            for i in range(3 if QUICK else 6):
                verb, shown = ("stop", "Stopped 1") if i % 2 == 0 else ("start", "Running 2")
                browser.js("window.seenAt = null; const look = () => { if (document.querySelector('#summary').textContent.includes(%s)) window.seenAt = Date.now(); else requestAnimationFrame(look); }; look(); return null;" % json.dumps(shown))
                subprocess.run(cli + [verb, "worker"], env=env, stdout=subprocess.DEVNULL, check=True)
                seen = browser.wait_js("return window.seenAt;")
                with open(status) as f:
                    changed = json.load(f)["Updated"]
                import datetime
                at = datetime.datetime.fromisoformat(changed.replace("Z", "+00:00")).timestamp()
                delays.append(seen - at * 1000)
            print(f"  dashboard: a status change (stop/start of a job) visible in the counts after: median {pct(delays, 50):.0f} ms, max {max(delays):.0f} ms")
        finally:
            browser.close()
    finally:
        if d.proc.poll() is None:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def http_ok(url):
    import urllib.request
    try:
        urllib.request.urlopen(url)
        return True
    except Exception:
        return False


class Receiver:
    """A webhook receiver on loopback (a thread): notes when each POST arrived,
    and answers with `status` (503 while "down")."""

    def __init__(self):
        import http.server, threading
        outer = self
        self.got = []  # (arrival time, body)
        self.status = 200

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = outer.status
                if status == 200:
                    outer.got.append((time.time(), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def event_time(body):
    from datetime import datetime
    return datetime.strptime(body["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=__import__("datetime").timezone.utc).timestamp()


def bench_notify():
    """Completion (issue 11): run end to webhook received; a backlog after the
    receiver was down; the event stream to 100 clients."""
    tmp = tempfile.mkdtemp(prefix="wj-bench-")
    receiver = Receiver()
    job = os.path.join(tmp, "jobs", "triggered", "ping")
    os.makedirs(job)
    shutil.copy("/bin/true", os.path.join(job, "run"))
    with open(os.path.join(job, "settings.job"), "w") as f:
        json.dump({"notify": [{"on": ["succeeded"], "url": receiver.url}]}, f)
    d = Daemon(tmp, config={"listen": "127.0.0.1:0", "history_size": 100})
    sock = os.path.join(tmp, "data", "instances", "bench.sock")
    wait_for(lambda: os.path.exists(sock), 10)
    s = unix_http(sock)
    n = 50 if QUICK else 200
    latency = []
    for i in range(n):
        code, body = http(s, "POST", "/api/triggeredwebjobs/ping/run")
        assert code in (200, 202), body
        http(s, "GET", f"/api/triggeredwebjobs/ping/history/{body['id']}?wait=10")
        wait_for(lambda: len(receiver.got) > i, 10)
        arrived, got = receiver.got[i]
        latency.append((arrived - event_time(got)) * 1000)
    print("notify: a run's end (the event's time, ms resolution) to the webhook received on loopback")
    print(f"  p50 {pct(latency, 50):.2f} ms, p95 {pct(latency, 95):.2f} ms, max {max(latency):.2f} ms ({n} runs)")

    # The receiver is down while 1,000 events happen, then comes back.
    down_for = 10 if QUICK else 60
    receiver.status = 503
    receiver.got.clear()
    t_down = time.perf_counter()
    for _ in range(1000):
        code, body = http(s, "POST", "/api/triggeredwebjobs/ping/queue")
        assert code in (200, 202), body
    out = os.path.join(tmp, "data", "outbox")
    wait_for(lambda: len([f for f in os.listdir(out) if f.endswith(".json")]) == 1000, 120, 0.05)
    time.sleep(max(0.0, down_for - (time.perf_counter() - t_down)))
    receiver.status = 200
    back = time.perf_counter()
    wait_for(lambda: len(receiver.got) >= 1000, 120, 0.01)
    drained = time.perf_counter() - back
    ordered = [g["run"] for _, g in receiver.got] == sorted(g["run"] for _, g in receiver.got)
    print(f"  receiver down {down_for} s while 1000 runs ended: all 1000 delivered {drained:.2f} s after it came back, in order: {ordered}")

    # The event stream: 100 clients, one status change.
    import socket, select
    s.close()
    s = unix_http(sock)  # the keep-alive one was closed while idle
    addr = open(os.path.join(tmp, "data", "instances", "bench.addr")).read().strip()
    token = open(os.path.join(tmp, "data", "api-token")).read().strip()
    host, port = addr.rsplit(":", 1)
    clients = []
    for _ in range(100):
        c = socket.create_connection((host, int(port)))
        c.sendall(f"GET /api/events?type=run.started HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.recv(4096)
        clients.append(c)
    c0 = d.stat()
    time.sleep(5)
    idle = d.stat() - c0
    s.close()
    s = unix_http(sock)
    rounds = 5 if QUICK else 20
    delays = []
    for _ in range(rounds):
        code, body = http(s, "POST", "/api/triggeredwebjobs/ping/run")
        pending = {c.fileno(): (c, b"") for c in clients}
        deadline = time.time() + 10
        while pending and time.time() < deadline:
            ready, _, _ = select.select([c for c, _ in pending.values()], [], [], 1)
            now = time.time()
            for c in ready:
                sock_, buf = pending[c.fileno()]
                buf += c.recv(65536)
                if b"\n\n" in buf and b"data: " in buf:
                    line = next(l for l in buf.split(b"\n") if l.startswith(b"data: "))
                    delays.append((now - event_time(json.loads(line[6:]))) * 1000)
                    del pending[c.fileno()]
                else:
                    pending[c.fileno()] = (sock_, buf)
        http(s, "GET", f"/api/triggeredwebjobs/ping/history/{body['id']}?wait=10")
    print(f"  event stream, 100 clients: a run's start reaches each p50 {pct(delays, 50):.2f} ms, p99 {pct(delays, 99):.2f} ms ({len(delays)} deliveries)")
    print(f"  daemon CPU over 5 s idle with 100 clients connected: {idle:.3f} s")
    for c in clients:
        c.close()
    s.close()
    d.stop()
    receiver.server.shutdown()
    shutil.rmtree(tmp)



class Postgres:
    """A throwaway PostgreSQL server (initdb in a temp dir on a free loopback
    port, as the postgres user when run as root), stopped by `stop`."""

    def __init__(self):
        import glob
        import pwd
        import socket
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            sys.exit("cluster benchmark: PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = os.path.dirname(bins[-1])
        self.dir = tempfile.mkdtemp(prefix="wj-pg-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.root = os.geteuid() == 0
        if self.root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        data = os.path.join(self.dir, "data")
        self.run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                "-c shared_preload_libraries=pg_stat_statements")
        self.run("pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-o", opts, "-w", "start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def run(self, prog, *args):
        cmd = [os.path.join(self.bin, prog), *args]
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)

    def sql(self, query):
        out = subprocess.run([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-tAqX", "-c", query], check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def session(self):
        """One psql kept open: a query a line, its answer a line (polling
        with a new psql each time cost the machine 7 % of a core)."""
        proc = subprocess.Popen([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                                 "-tAqX"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

        def ask(query):
            proc.stdin.write(query.rstrip(";") + ";\n")
            proc.stdin.flush()
            return proc.stdout.readline().strip()
        ask.close = lambda: (proc.stdin.close(), proc.wait())
        return ask

    def stop(self):
        self.run("pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster_daemon(tmp, name, url, ttl_ms=None, extra=None):
    coordination = {"postgres": url}
    if ttl_ms:
        coordination["lease_ttl_ms"] = ttl_ms
    config = {"coordination": coordination, "listen": "127.0.0.1:0", **(extra or {})}
    d = Daemon(tmp, env=clean_env(WEBJOBS_INSTANCE_ID=name), config=config)
    wait_for(lambda: "webjobs is running" in open(os.path.join(tmp, "daemon.log")).read(), 20, 0.01)
    return d


def failover_trials(pg, ttl_ms, settings, trials, graceful):
    """Seconds from the holder's SIGKILL (or SIGTERM) to the job's process on another daemon."""
    times = []
    for trial in range(trials):
        roots = []
        for n in range(2):
            tmp = tempfile.mkdtemp(prefix="wj-bench-")
            job = os.path.join(tmp, "jobs", "continuous", "only")
            os.makedirs(job)
            with open(os.path.join(job, "run.sh"), "w") as f:
                f.write("exec sleep 1000\n")
            with open(os.path.join(job, "settings.job"), "w") as f:
                json.dump({"is_singleton": True, **settings}, f)
            roots.append(tmp)
        names = [f"fo{trial}a", f"fo{trial}b"]
        daemons = [cluster_daemon(roots[0], names[0], pg.url, ttl_ms)]
        wait_for(lambda: marked_pids(names[0] + "."), 20, 0.005)
        daemons.append(cluster_daemon(roots[1], names[1], pg.url, ttl_ms))
        time.sleep(1)
        t0 = time.perf_counter()
        if graceful:
            daemons[0].stop()
        else:
            daemons[0].proc.kill()
            daemons[0].proc.wait()
        wait_for(lambda: marked_pids(names[1] + "."), 60, 0.005)
        times.append(time.perf_counter() - t0)
        daemons[1].stop()
        for tmp in roots:
            shutil.rmtree(tmp, ignore_errors=True)
    return times


def cluster_ticks(pg):
    """Tick start delay with the database in the loop: three daemons claim every tick."""
    seconds = 20 if QUICK else 60
    jobs = 10
    roots, daemons = [], []
    stamp_dir = tempfile.mkdtemp(prefix="wj-bench-")
    stamp = stamp_binary(stamp_dir)
    for n in range(3):
        tmp = tempfile.mkdtemp(prefix="wj-bench-")
        every_second_jobs(tmp, stamp, jobs)
        roots.append(tmp)
        daemons.append(cluster_daemon(tmp, f"tick{n}", pg.url, extra={"history_size": 1000}))
    time.sleep(seconds + 1.5)
    for d in daemons:
        d.stop()
    delays, ticks = [], {}
    for tmp in roots:
        for i in range(jobs):
            data = os.path.join(tmp, "data", "jobs", "triggered", f"t{i:02}")
            for run in os.listdir(data) if os.path.isdir(data) else []:
                log = os.path.join(data, run, "output_log.txt")
                if run.isdigit() and os.path.exists(log):
                    for line in open(log):
                        if "INFO] T " in line:
                            t = float(line.split("INFO] T ")[1])
                            delays.append((t - int(t)) * 1000)
                            ticks[(i, int(t))] = ticks.get((i, int(t)), 0) + 1
    doubled = sum(1 for c in ticks.values() if c > 1)
    print(f"  {jobs} jobs on '* * * * * *' on three daemons for {seconds} s ({len(delays)} runs, {doubled} ticks run twice):")
    print(f"    child's first instruction after the tick: p50 {pct(delays, 50):.2f} ms, p99 {pct(delays, 99):.2f} ms, max {max(delays):.2f} ms")
    for tmp in roots + [stamp_dir]:
        shutil.rmtree(tmp, ignore_errors=True)



def cluster_drain(pg):
    """A queue of trivial runs drained by three daemons, each on its own root."""
    n = 2000 if QUICK else 10000
    roots, daemons = [], []
    for k in range(3):
        tmp = tempfile.mkdtemp(prefix="wj-bench-")
        job = os.path.join(tmp, "jobs", "triggered", "drain")
        os.makedirs(job)
        shutil.copy("/bin/true", os.path.join(job, "run"))
        with open(os.path.join(job, "settings.job"), "w") as f:
            f.write('{"max_parallel": 48}')
        roots.append(tmp)
        daemons.append(cluster_daemon(tmp, f"drain{k}", pg.url, extra={"history_size": 5}))
    now = int(time.time() * 1000)
    rid = f"'{now:013}' || lpad(to_hex(i), 10, '0')"
    pg.sql(f"INSERT INTO webjobs_queue (id, job, state, priority, due_ms, entry) "
           f"SELECT {rid}, 'triggered/drain', 'queued', 0, 0, "
           f"jsonb_build_object('id', {rid}, 'queued_ms', {now}, 'trigger', 'bench') FROM generate_series(0, {n - 1}) i; "
           f"NOTIFY webjobs, 'triggered/drain'")
    ask = pg.session()
    t0 = time.perf_counter()
    wait_for(lambda: ask("SELECT NOT EXISTS (SELECT 1 FROM webjobs_queue WHERE job = 'triggered/drain')") == "t", 600, 0.05)
    elapsed = time.perf_counter() - t0
    ask.close()
    for d in daemons:
        d.stop()
    print(f"  queue of {n} runs drained by three daemons (max_parallel 48): {n / elapsed:.0f} runs/s")
    if os.environ.get("BENCH_PG_TOP"):
        # Where the database's time went: the statements by total time.
        print(pg.sql("SELECT rpad(calls::text, 8) || rpad(round(total_exec_time)::text, 8) || "
                     "left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements "
                     "ORDER BY total_exec_time DESC LIMIT 12"))
    for tmp in roots:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_cluster():
    """PostgreSQL coordination: failover, handover, database load, tick delay
    with the database in the loop, and a queue drained by three daemons."""
    pg = Postgres()
    try:
        trials = 2 if QUICK else 3
        default = failover_trials(pg, None, {}, trials, False)
        fast = failover_trials(pg, 2000, {"stopping_wait_time": 1}, trials, False)
        handover = failover_trials(pg, None, {}, trials, True)
        print("cluster: singleton failover across two daemons on PostgreSQL")
        print(f"  SIGKILL of the holder's daemon, default profile (ttl 5 s, grace stopping_wait_time 5 s + 1 s): "
              f"{', '.join(f'{t:.2f}' for t in default)} s")
        print(f"  SIGKILL, fast profile (lease_ttl_ms 2000, stopping_wait_time 1): {', '.join(f'{t:.2f}' for t in fast)} s")
        print(f"  graceful stop of the holder (SIGTERM): {', '.join(f'{t * 1000:.0f}' for t in handover)} ms")

        # Statements per second of one idle daemon (the example jobs, no run due).
        tmp = tempfile.mkdtemp(prefix="wj-bench-")
        shutil.copytree(os.path.join(ROOT, "jobs"), os.path.join(tmp, "jobs"))
        for dirpath, _, files in os.walk(os.path.join(tmp, "jobs")):
            if "settings.job" in files:
                path = os.path.join(dirpath, "settings.job")
                cfg = json.load(open(path))
                cfg.pop("schedule", None)
                json.dump(cfg, open(path, "w"))
        d = cluster_daemon(tmp, "idle", pg.url)
        time.sleep(3)
        # Every statement the daemon sent (pg_stat_statements), not this script's.
        count = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
        window = 10 if QUICK else 60
        before = int(pg.sql(count))
        time.sleep(window)
        after = int(pg.sql(count))
        d.stop()
        shutil.rmtree(tmp)
        print(f"  one idle daemon (the example jobs, schedules removed): {(after - before) / window:.2f} statements/s")

        cluster_ticks(pg)

        cluster_drain(pg)
    finally:
        pg.stop()

def main():
    which = next((a for a in sys.argv[1:] if not a.startswith("--")), "all")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if which == "logdd":
        bench_log(kind="dd")
    if which in ("log", "all"):
        bench_log()
        bench_log("RUST_BACKTRACE=1 WEBJOBS_LOG=debug", clean_env(WEBJOBS_INSTANCE_ID="bench", RUST_BACKTRACE="1", WEBJOBS_LOG="debug"))
        bench_log(kind="dd")
    if which in ("footprint", "all"):
        bench_footprint()
    if which in ("crash", "all"):
        bench_crash()
    if which in ("stop", "all"):
        bench_stop_escaped()
    if which in ("reaction", "all"):
        bench_reaction()
    if which in ("trigger", "all"):
        bench_trigger()
    if which in ("schedule", "all"):
        bench_schedule()
    if which in ("queue", "all"):
        bench_queue()
    if which in ("api", "all"):
        bench_api()
    if which in ("notify", "all"):
        bench_notify()
    if which in ("scale", "all"):
        bench_scale(1000 if QUICK else 10000)
    if which in ("operator", "all"):
        bench_operator(1000 if QUICK else 10000)
    if which in ("cluster", "all"):
        bench_cluster()
    for name, part in (("clustertick", cluster_ticks), ("clusterdrain", cluster_drain)):
        if which == name:
            pg = Postgres()
            try:
                part(pg)
            finally:
                pg.stop()
    if which == "schedule1":
        bench_schedule(1)


if __name__ == "__main__":
    main()
