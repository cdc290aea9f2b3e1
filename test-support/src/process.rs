//! The workspace's binaries as child processes: free ports to give them, where cargo
//! put them, and a handle that keeps their output in a log file and kills them on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, for a process the test starts next.
///
/// Not the kernel's pick (`bind(:0)`): that comes from the ephemeral range, where every
/// outgoing connection of a busy suite (MariaDB clients, gRPC) also takes its source port,
/// so a port released here could be taken by one before the process binds it (seen: a
/// cluster member failing with "Address already in use"). Ports below the ephemeral range
/// are only ever taken by listeners; each is handed out once per test process.
pub fn free_addr() -> SocketAddr {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    // Below Linux's default ephemeral range (32768–60999) and above well-known services.
    const RANGE: std::ops::Range<u16> = 20_000..32_000;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1_000 {
        let port = rand::random_range(RANGE);
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            return l.local_addr().expect("local addr");
        }
    }
    // Everything tried was busy: fall back to the kernel's pick.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr")
}

/// How many threads of process `pid` ("self" for this one) have a name starting with
/// `prefix` (Linux: `/proc/<pid>/task/*/comm`).
pub fn threads_named(pid: &str, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with(prefix))
        .count()
}

/// A binary of this workspace, built by `cargo build --workspace` into the target
/// directory the test itself runs from (`target/<profile>/deps/<test>` →
/// `target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --all-targets` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process whose stdout and stderr go to a log file; killed on drop.
pub struct Process {
    /// None once the process has been killed or seen to exit (and is reaped).
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Process {
        Self::spawn_env(program, args, &[], log)
    }

    pub fn spawn_env(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Process {
        // Appending: a restarted process continues the log of the one before it.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            // REWIND_IT_LOG=debug (or any filter) to see more in the kept logs.
            .env(
                "RUST_LOG",
                std::env::var("REWIND_IT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        Process {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (a graceful stop); whether the signal was delivered.
    pub fn sigterm(&self) -> bool {
        self.signal("-TERM")
    }

    /// Stops the process (`pause`: SIGSTOP) or lets it run again (SIGCONT): alive, its
    /// connections open, but silent meanwhile, as a hung machine or one cut off without its
    /// connections being reset looks to its peers.
    pub fn pause(&self, pause: bool) {
        let sig = if pause { "-STOP" } else { "-CONT" };
        assert!(self.signal(sig), "kill {sig} {:?}", self.pid());
    }

    fn signal(&self, sig: &str) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM and wait for the exit; its code, or None (and kill -9) if it did not
    /// exit `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.sigterm();
        let mut c = self.child.take()?;
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Whether the process has ended (and is reaped).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | None => {
                self.child = None;
                true
            }
            _ => false,
        }
    }

    /// Waits for the process to end by itself: its exit status, or None if it still
    /// runs after `within` (or had already been reaped).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.as_mut()?.try_wait() {
                self.child = None;
                return Some(st);
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Number of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
