//! Starting daemons on temporary roots, writing jobs, and waiting for
//! conditions with a deadline (never a fixed sleep).

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_webjobs");

/// A temporary root with jobs/, data/, temp/ and a config file.
pub struct Root {
    pub dir: tempfile::TempDir,
    pub instance: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Root {
    /// A root with a fast debounce and a unique instance id.
    pub fn new() -> Root {
        Self::with_config(serde_json::json!({}))
    }

    /// `extra` keys are merged into the test config.
    pub fn with_config(extra: serde_json::Value) -> Root {
        let dir = tempfile::Builder::new().prefix("webjobs-test-").tempdir().unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let instance = format!("t{}x{n}", std::process::id());
        let root = Root { dir, instance };
        let mut config = serde_json::json!({"debounce_ms": 150, "listen": "127.0.0.1:0"});
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        root.write_config(&config);
        fs::create_dir_all(root.path().join("jobs/continuous")).unwrap();
        fs::create_dir_all(root.path().join("jobs/triggered")).unwrap();
        root
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("webjobs.json")
    }

    pub fn write_config(&self, config: &serde_json::Value) {
        fs::write(self.config_path(), serde_json::to_string_pretty(config).unwrap()).unwrap();
    }

    /// Merges `extra` keys into the config written already.
    pub fn add_config(&self, extra: serde_json::Value) {
        let mut config: serde_json::Value = serde_json::from_str(&read(&self.config_path())).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        self.write_config(&config);
    }

    pub fn job_dir(&self, kind: &str, name: &str) -> PathBuf {
        self.path().join("jobs").join(kind).join(name)
    }

    /// Writes a job's files (a `.sh` file is made executable).
    pub fn job(&self, kind: &str, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.job_dir(kind, name);
        for (file, text) in files {
            let path = dir.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            if file.ends_with(".sh") {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        dir
    }

    pub fn continuous(&self, name: &str, script: &str) -> PathBuf {
        self.job("continuous", name, &[("run.sh", script)])
    }

    pub fn data_dir(&self, kind: &str, name: &str) -> PathBuf {
        self.path().join("data/jobs").join(kind).join(name)
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.data_dir("continuous", name).join("job_log.txt")).unwrap_or_default()
    }

    /// This instance's status file of a continuous job, parsed.
    pub fn status(&self, name: &str) -> serde_json::Value {
        let path = self.data_dir("continuous", name).join(format!("status_{}", self.instance));
        fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::Value::Null)
    }

    pub fn status_is(&self, name: &str, status: &str) -> bool {
        self.status(name)["Status"] == status
    }

    /// Runs a client command against this root.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.instance, args)
    }

    /// Runs a client command as another instance would (it prefers its own daemon).
    pub fn cli_as(&self, instance: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--root")
            .arg(self.path())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("WEBJOBS_INSTANCE_ID", instance)
            .output()
            .unwrap()
    }

    /// Run ids of a triggered job, oldest first.
    pub fn runs(&self, job: &str) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.data_dir("triggered", job))
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.len() == 18).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The `status` file of a run, parsed.
    pub fn run_status(&self, job: &str, id: &str) -> serde_json::Value {
        let path = self.data_dir("triggered", job).join(id).join("status");
        fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::Value::Null)
    }

    pub fn run_log(&self, job: &str, id: &str) -> String {
        read(&self.data_dir("triggered", job).join(id).join("output_log.txt"))
    }

    /// Runs whose status is final.
    pub fn finished_runs(&self, job: &str) -> Vec<serde_json::Value> {
        self.runs(job)
            .iter()
            .map(|id| self.run_status(job, id))
            .filter(|s| !matches!(s["Status"].as_str(), Some("Initializing" | "Running") | None))
            .collect()
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(self, &[])
    }

    /// Runs `serve` on this root to its end (for a start that must be refused).
    pub fn serve_refused(&self) -> Output {
        Command::new(BIN)
            .args(["--root", self.path().to_str().unwrap(), "--config", self.config_path().to_str().unwrap(), "serve"])
            .env("WEBJOBS_INSTANCE_ID", &self.instance)
            .output()
            .unwrap()
    }
}

/// A `webjobs serve` process; SIGKILLed (with its jobs' groups) if dropped running.
pub struct Daemon {
    pub child: Option<Child>,
    pub stderr_path: PathBuf,
    pub marker_prefix: String,
}

impl Daemon {
    pub fn start(root: &Root, env: &[(&str, &str)]) -> Daemon {
        Self::start_as(root, &root.instance, env)
    }

    /// Starts a daemon with another instance id on the same root.
    pub fn start_as(root: &Root, instance: &str, env: &[(&str, &str)]) -> Daemon {
        let stderr_path =
            root.path().join(format!("daemon-{instance}-{}.log", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let stderr = fs::File::create(&stderr_path).unwrap();
        let child = Command::new(BIN)
            .arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(root.config_path())
            .arg("serve")
            .env("WEBJOBS_INSTANCE_ID", instance)
            .env("WEBJOBS_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut d = Daemon { child: Some(child), stderr_path, marker_prefix: format!("{instance}.") };
        d.wait_started();
        d
    }

    fn wait_started(&mut self) {
        let path = self.stderr_path.clone();
        wait_for("daemon to start", Duration::from_secs(10), || {
            let text = fs::read_to_string(&path).unwrap_or_default();
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("daemon exited at start with {status}:\n{text}");
            }
            text.contains("webjobs is running")
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(30))
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        wait_child(&mut self.child.take().unwrap(), limit, "daemon")
    }

    /// SIGKILL: the daemon dies without stopping its jobs. What it leaves is
    /// killed when the returned guard is dropped.
    pub fn kill9(mut self) -> Leftovers {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        Leftovers { prefix: std::mem::take(&mut self.marker_prefix) }
    }

    /// Live processes (not zombies) carrying this daemon's marker for `job`.
    pub fn job_pids(&self, job: &str) -> Vec<i32> {
        marked_pids(&self.marker_prefix, job)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_marked(&self.marker_prefix);
    }
}

/// Processes a SIGKILLed daemon left behind; killed on drop.
pub struct Leftovers {
    pub prefix: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        kill_marked(&self.prefix);
    }
}

fn kill_marked(prefix: &str) {
    if prefix.is_empty() {
        return;
    }
    for pid in marked_pids(prefix, "") {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    remove_cgroups(prefix);
}

/// Ends and removes the run cgroups of a daemon the test killed (a daemon
/// that stops cleanly removes its own), so tests leave nothing behind.
fn remove_cgroups(prefix: &str) {
    for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let Ok(entries) = fs::read_dir(mount) else { continue };
        for dir in entries.flatten().map(|e| e.path()) {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with(&format!("webjobs-{prefix}")) {
                continue;
            }
            for run in fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                let _ = fs::write(run.join("cgroup.kill"), "1");
                let deadline = Instant::now() + Duration::from_secs(5);
                while fs::remove_dir(&run).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// Live processes whose WEBJOBS_RUN_MARKER starts with `prefix` and names `job`.
pub fn marked_pids(prefix: &str, job: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if is_zombie(pid) {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let marker = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"WEBJOBS_RUN_MARKER="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if let Some(m) = marker
            && m.starts_with(prefix)
            && (job.is_empty() || m.contains(&format!("/{job}/")))
        {
            pids.push(pid);
        }
    }
    pids
}

pub fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with('Z') || rest.trim_start().starts_with('X'))
        .unwrap_or(true)
}

pub fn alive(pid: i32) -> bool {
    !is_zombie(pid)
}

/// Polls `condition` every 20 ms until it holds; panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_for`] but returns how long it took.
pub fn time_until(what: &str, limit: Duration, condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_for(what, limit, condition);
    start.elapsed()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Reads a file fully (for logs possibly being written).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Lines of a log that are the job's own output at `level` (INFO or ERROR).
pub fn output_lines(log: &str, level: &str) -> Vec<String> {
    let tag = format!(": {level}] ");
    log.lines().filter_map(|l| l.split_once(&tag).map(|(_, t)| t.to_string())).collect()
}

/// A raw HTTP/1.1 exchange on the daemon's TCP port (the request is sent as
/// written, so odd paths reach the server unchanged).
pub struct Http {
    pub addr: String,
    pub auth: Option<String>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Root {
    /// An HTTP client for this root's daemon, authenticated with its token.
    pub fn http(&self) -> Http {
        let addr_file = fs::read_dir(self.path().join("data/instances"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "addr"))
            .expect("the daemon wrote its address");
        let token = fs::read_to_string(self.path().join("data/api-token")).unwrap().trim().to_string();
        Http { addr: fs::read_to_string(addr_file).unwrap(), auth: Some(format!("Bearer {token}")) }
    }
}

impl Http {
    pub fn without_auth(&self) -> Http {
        Http { addr: self.addr.clone(), auth: None }
    }

    pub fn with_auth(&self, value: &str) -> Http {
        Http { addr: self.addr.clone(), auth: Some(value.to_string()) }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str) -> Reply {
        self.send("POST", path, &[], b"")
    }

    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(auth) = &self.auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // A server may answer before it has read the whole body (a 413 at
        // once) and close: as curl does, read its answer all the same.
        if let Err(e) = stream.write_all(body) {
            assert!(matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset), "{e}");
        }
        parse_reply(&read_response(&mut stream, method == "HEAD"))
    }
}

/// Reads one response: by Content-Length, by chunks, or to the end.
fn read_response(stream: &mut std::net::TcpStream, head_only: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = end + 4;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            if head_only || status == 304 || status == 204 || length == Some(0) {
                return raw;
            }
            if let Some(length) = length
                && raw.len() >= body + length
            {
                return raw;
            }
            if head.contains("transfer-encoding: chunked") && raw[body..].windows(5).any(|w| w == b"0\r\n\r\n") {
                return raw;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

/// A zip file made of `(name, content, unix mode)` entries, built with Python's zipfile
/// (so the test does not trust our own reading of what it writes).
pub fn make_zip(dir: &Path, entries: &[(&str, &str)]) -> Vec<u8> {
    let spec: Vec<(String, String)> = entries.iter().map(|(n, c)| (n.to_string(), c.to_string())).collect();
    let script = "import json, sys, zipfile\nentries = json.loads(sys.argv[2])\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n    for name, content in entries:\n        info = zipfile.ZipInfo(name)\n        info.external_attr = 0o755 << 16\n        z.writestr(info, content)\n";
    let path = dir.join(format!("upload-{}.zip", COUNTER.fetch_add(1, Ordering::Relaxed)));
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(serde_json::to_string(&spec).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    fs::read(path).unwrap()
}

/// Waits (bounded) for `child` to exit; past `limit` it is killed and the test fails.
pub fn wait_child(child: &mut std::process::Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, made by openssl in
/// `dir`: (certificate, key).
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        // An end-entity certificate (not a CA), so that it can be trusted as itself.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}
