//! Starting a job process as `posix_spawn` does — `clone(CLONE_VM |
//! CLONE_VFORK)` on a stack of its own, so nothing of the daemon's memory is
//! copied — with two steps `posix_spawn` cannot take, done in the child before
//! it execs: entering the run's cgroup (so no process of the run, however
//! early it forks, is ever outside it) and marking every descriptor above 2
//! close-on-exec (a descriptor the daemon inherited never reaches a job).
//! A `std::process` pre-exec hook could do the same only through a full `fork`
//! of the daemon, 0.45 ms a start here.
//!
//! The leader is then waited for through a pidfd ([`Leader`]).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// Everything the child needs, made before the clone (the child allocates nothing).
pub struct Prepared {
    program: CString,
    cwd: CString,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const libc::c_char>,
}

impl Prepared {
    /// `program` (looked up on PATH when it has no `/`), its arguments (argv[0]
    /// is the program as given), the working folder and the whole environment.
    pub fn new(program: &Path, args: &[OsString], cwd: &Path, env: Vec<(OsString, OsString)>) -> io::Result<Prepared> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| io::Error::other("a NUL byte in a command or its environment"))
        };
        let resolved = resolve(program).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{} not found on PATH", program.display()))
        })?;
        let mut argv_c = vec![c(program.as_os_str())?];
        for a in args {
            argv_c.push(c(a)?);
        }
        let envp_c = env
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c(OsStr::from_bytes(&kv))
            })
            .collect::<io::Result<Vec<CString>>>()?;
        let ptrs = |v: &[CString]| v.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        Ok(Prepared {
            program: c(resolved.as_os_str())?,
            cwd: c(cwd.as_os_str())?,
            argv: ptrs(&argv_c),
            _argv: argv_c,
            envp: ptrs(&envp_c),
            _envp: envp_c,
        })
    }
}

fn resolve(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: access(2) on a valid C string.
        unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
    })
}

/// The child's standard descriptors and its cgroup.
pub struct Stdio {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// An open `cgroup.procs` the child writes `0` to, to enter the cgroup.
    pub cgroup_procs: Option<RawFd>,
    /// A descriptor the child keeps, as fd 3.
    pub keep: Option<RawFd>,
    /// The child is SIGKILLed when the daemon's thread that started it (a
    /// runtime worker, alive as long as the daemon) ends.
    pub die_with_parent: bool,
}

/// Starts the process; it leads a new process group. Returns once it has
/// exec'd (or failed to: then the exec's error).
pub fn spawn(prep: &Prepared, stdio: &Stdio) -> io::Result<Leader> {
    // The child reports a failure before exec here: it shares our memory
    // (CLONE_VM), and we resume only once it has exec'd or exited.
    let child_errno = std::sync::atomic::AtomicI32::new(0);
    let (program, cwd, argv, envp) = (prep.program.as_ptr(), prep.cwd.as_ptr(), prep.argv.as_ptr(), prep.envp.as_ptr());
    let fds = ChildFds {
        stdin: stdio.stdin,
        stdout: stdio.stdout,
        stderr: stdio.stderr,
        procs: stdio.cgroup_procs,
        keep: stdio.keep,
        die: stdio.die_with_parent,
        errno: &child_errno,
    };
    let child = Box::new(move || -> isize {
        // SAFETY: the vfork child: only async-signal-safe calls on data the
        // suspended parent keeps alive, no allocation, and _exit on failure.
        unsafe { child_main(program, cwd, argv, envp, &fds) }
    });
    // One stack serves every spawn, one at a time: the child is done with it
    // when we resume (it has exec'd into a memory of its own, or exited).
    let mut stack = STACK.lock().unwrap_or_else(|e| e.into_inner());
    if stack.is_none() {
        *stack = Some(Stack::new()?);
    }
    let usable = stack.as_mut().expect("made above").usable();
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: signal masks of this thread, restored below. With every signal
    // blocked, no handler of the daemon runs in the child before it resets them.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
    }
    let flags = nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK;
    // SAFETY: the callback runs on `stack`, in our address space, while this
    // thread is suspended (CLONE_VFORK) until the child execs or exits.
    let cloned = unsafe { nix::sched::clone(child, usable, flags, Some(libc::SIGCHLD)) };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    drop(stack);
    let pid = cloned.map_err(io::Error::from)?;
    let errno = child_errno.load(std::sync::atomic::Ordering::Acquire);
    if errno != 0 {
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Leader::new(pid)
}

/// The stack the children of [`spawn`] start on.
static STACK: std::sync::Mutex<Option<Stack>> = std::sync::Mutex::new(None);

/// The child's stack: mapped once, with a guard page below it, so that an
/// overflow faults instead of writing over the daemon's memory.
struct Stack {
    base: *mut libc::c_void,
}

// SAFETY: the mapping belongs to no thread; STACK's lock gives it to one spawn at a time.
unsafe impl Send for Stack {}

const STACK_SIZE: usize = 64 * 1024;
const GUARD: usize = 4096;

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh private anonymous mapping, checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE + GUARD,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping just made.
        unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) };
        Ok(Stack { base })
    }

    /// The writable part (stacks grow down towards the guard page).
    fn usable(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is STACK_SIZE + GUARD bytes long and lives as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.base.cast::<u8>().add(GUARD), STACK_SIZE) }
    }
}

/// The descriptors the child works with.
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    procs: Option<RawFd>,
    keep: Option<RawFd>,
    die: bool,
    /// Where the child leaves errno when it fails before exec.
    errno: *const std::sync::atomic::AtomicI32,
}

/// The child, between clone and exec.
unsafe fn child_main(
    program: *const libc::c_char,
    cwd: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    fds: &ChildFds,
) -> isize {
    let report = fds.errno;
    /// Reports errno to the parent and ends the child.
    unsafe fn fail(report: *const std::sync::atomic::AtomicI32) -> ! {
        unsafe {
            let errno = *libc::__errno_location();
            (*report).store(errno.max(1), std::sync::atomic::Ordering::Release);
            libc::_exit(127)
        }
    }
    unsafe {
        // Handlers of the daemon mean nothing in the job: back to the defaults
        // (an ignored SIGPIPE too, which Rust programs set up).
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(report);
        }
        if fds.die && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(report);
        }
        if let Some(fd) = fds.procs
            && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
        {
            fail(report);
        }
        for (src, dst) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            let ok = if src == dst { libc::fcntl(dst, libc::F_SETFD, 0) == 0 } else { libc::dup2(src, dst) == dst };
            if !ok {
                fail(report);
            }
        }
        // Every other descriptor closes at exec (kernel 5.11+; best effort before).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if let Some(fd) = fds.keep {
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(fd, 3) == 3 };
            if !ok {
                fail(report);
            }
        }
        if libc::chdir(cwd) != 0 {
            fail(report);
        }
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        libc::execve(program, argv, envp);
        fail(report)
    }
}

/// Run leaders (waited for through their pidfds); the adopted-orphan reaper
/// leaves them alone.
pub static LEADERS: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The leaders running now.
pub fn leaders() -> Vec<Pid> {
    LEADERS.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|p| Pid::from_raw(*p)).collect()
}

/// Forgets a leader once it has been reaped (or let go).
pub fn leader_reaped(pid: Pid) {
    LEADERS.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid.as_raw());
}

/// A run's leader: our child, waited for through its pidfd (the daemon's
/// orphan reaper leaves leaders alone). Killed if let go before it ended.
pub struct Leader {
    pub pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Leader {
    fn new(pid: Pid) -> io::Result<Leader> {
        // SAFETY: pidfd_open of our own child, which cannot be reaped by anyone
        // else yet (the reaper skips the pids in LEADERS).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
        // SAFETY: a new descriptor, owned here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: an open fd that stays open as long as the AsyncFd.
        let pidfd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Leader { pid, pidfd, status: None })
    }

    /// Waits until the leader has exited and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut guard = self.pidfd.readable().await?;
            match try_reap(guard.get_inner().as_raw_fd())? {
                Some(status) => {
                    self.status = Some(status);
                    leader_reaped(self.pid);
                    return Ok(status);
                }
                None => guard.clear_ready(),
            }
        }
    }
}

/// Reaps the child behind `pidfd` if it has exited.
fn try_reap(pidfd: RawFd) -> io::Result<Option<ExitStatus>> {
    // SAFETY: waitid on a pidfd into a zeroed siginfo.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::waitid(libc::P_PIDFD, pidfd as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled in by waitid for an exited child; pid 0 means not yet.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    let raw = match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => status | 0x80,
        _ => status,
    };
    Ok(Some(ExitStatus::from_raw(raw)))
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            // Not ours to wait for any more: the orphan reaper takes it.
            leader_reaped(self.pid);
        }
    }
}
