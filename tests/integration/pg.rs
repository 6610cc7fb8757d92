//! A throwaway PostgreSQL server for one test: `initdb` into a temporary
//! folder and `pg_ctl start` on a free loopback port (as the `postgres` user
//! when the tests run as root), stopped and removed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// Where Debian's (or any) PostgreSQL programs are.
fn bin_dir() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.exists() {
                return std::fs::canonicalize(&initdb).unwrap().parent().unwrap().to_path_buf();
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/test installs Debian's postgresql package)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    found.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program` as the server's user: `postgres` when the tests run as root
/// (neither PostgreSQL nor PgBouncer runs as root), else as we are.
fn as_server_user(program: &std::path::Path) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("webjobs-pg-").tempdir().unwrap();
        if as_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().expect("a postgres user (Debian's package)");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let cluster = Cluster { bin: bin_dir(), port: free_port(), dir };
        let data = cluster.data();
        let out = cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        cluster.start_server();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when we are root).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut command = as_server_user(&self.bin.join(program));
        command.args(args).current_dir(self.dir.path()).stdin(std::process::Stdio::null()).output().unwrap()
    }

    pub fn start_server(&self) {
        self.start_server_with("");
    }

    /// Starts the server with more `-c` options (`extra`).
    pub fn start_server_with(&self, extra: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 {extra}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "30", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server: `fast` (clients told) or `immediate` (a crash).
    pub fn stop_server(&self, mode: &str) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// The answer of `psql -tAc sql`, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-tAqX", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Cluster {
    /// Where the server's files are (owned by the server's user).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Gives `path` to the server's user (when the tests run as root).
    pub fn give(&self, path: &std::path::Path) {
        if as_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }
}

/// A TCP proxy on loopback in front of the database that can cut every
/// connection (a network partition) and let them through again.
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (o, c) = (open.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !o.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let mut streams = c.lock().unwrap();
                streams.push(client.try_clone().unwrap());
                streams.push(server.try_clone().unwrap());
                drop(streams);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, open, cut }
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// Cuts every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for stream in self.cut.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.open.store(true, Ordering::Release);
    }
}

/// PgBouncer (Debian's) in transaction mode in front of a [`Cluster`]: each
/// transaction may go to another server connection. Stopped when dropped.
pub struct Bouncer {
    process: std::process::Child,
    pub port: u16,
    log: PathBuf,
}

impl Bouncer {
    pub fn start(cluster: &Cluster) -> Bouncer {
        let dir = cluster.dir().join("bouncer");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = dir.join("pgbouncer.log");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let ini = format!(
            "[databases]\npostgres = host=127.0.0.1 port={pg} dbname=postgres user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\ndefault_pool_size = 4\n\
             max_client_conn = 200\nignore_startup_parameters = extra_float_digits,options\n\
             logfile = {log}\npidfile = {pid}\n",
            pg = cluster.port,
            users = dir.join("users.txt").display(),
            log = log.display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).unwrap();
        for path in [&dir, &ini_path, &dir.join("users.txt")] {
            cluster.give(path);
        }
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("PgBouncer is not installed (scripts/test installs Debian's pgbouncer package)");
        let process = as_server_user(std::path::Path::new(program))
            .arg(&ini_path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let bouncer = Bouncer { process, port, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "PgBouncer did not listen: {}", bouncer.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bouncer
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // runuser passes the signal on to PgBouncer.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.process.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.process.wait();
    }
}
