//! Go programs under `tests/go/` (built with Debian's golang-go and go-sql-driver/mysql,
//! GOPATH mode, no network), and the example TCC participant
//! (`tests/go/tcc-participant`) as a process with its HTTP calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::dir::TempDir;
use crate::http::request;
use crate::process::{free_addr, Process};
use crate::wait::eventually;

/// Debian's GOPATH (golang-github-go-sql-driver-mysql-dev installs the driver there).
pub const GOPATH: &str = "/usr/share/gocode";
/// The driver's import path.
pub const GO_DRIVER: &str = "github.com/go-sql-driver/mysql";

/// A `go` command in GOPATH mode with the build cache in the temp directory. Panics
/// with what to install when go or the driver is missing.
pub fn go() -> Command {
    assert!(
        Command::new("go").arg("version").output().is_ok()
            && Path::new(GOPATH).join("src").join(GO_DRIVER).is_dir(),
        "needs go and go-sql-driver/mysql: run scripts/ensure-tools.sh --browser"
    );
    let mut c = Command::new("go");
    c.env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOFLAGS", "")
        .env("GOCACHE", std::env::temp_dir().join("rewind-go-cache"));
    c
}

/// Builds `tests/go/<program>` into `dir/<program>` and answers the binary's path.
pub fn build_go(dir: &TempDir, program: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/go")
        .join(program);
    let bin = dir.0.join(program);
    let built = go()
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .output()
        .expect("go build runs");
    assert!(
        built.status.success(),
        "go build {program}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    bin
}

/// The example TCC participant: Try / Confirm / Cancel on `tcc_account` in its database,
/// through a proxy.
pub struct TccParticipant {
    pub process: Process,
    pub addr: SocketAddr,
    args: Vec<String>,
    bin: PathBuf,
}

impl TccParticipant {
    /// Builds (once per test directory) and starts it on a free port with `dsn` (a
    /// go-sql-driver DSN); `fence = false` leaves the TCC hint out. Waits until it serves.
    pub async fn start(dir: &TempDir, name: &str, dsn: &str, fence: bool) -> TccParticipant {
        let bin = dir.0.join("tcc-participant");
        let bin = if bin.exists() {
            bin
        } else {
            build_go(dir, "tcc-participant")
        };
        let addr = free_addr();
        let args = vec![
            "-listen".to_string(),
            addr.to_string(),
            "-dsn".into(),
            dsn.to_string(),
            format!("-fence={fence}"),
        ];
        let process = Self::launch(&bin, &args, dir.0.join(format!("{name}.log")), addr).await;
        TccParticipant {
            process,
            addr,
            args,
            bin,
        }
    }

    async fn launch(bin: &Path, args: &[String], log: PathBuf, addr: SocketAddr) -> Process {
        let process = Process::spawn(bin, args, log);
        eventually(
            "the participant serves",
            Duration::from_secs(20),
            || async move {
                request(addr, "POST", "/admin/delay?ms=0", None, &[])
                    .await
                    .is_ok_and(|a| a.status == 200)
            },
        )
        .await;
        process
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port (after [`TccParticipant::kill`]).
    pub async fn restart(&mut self) {
        self.process.kill();
        let log = self.process.log.clone();
        self.process = Self::launch(&self.bin, &self.args, log, self.addr).await;
    }

    pub fn url(&self, phase: &str) -> String {
        format!("http://{}/{phase}", self.addr)
    }

    /// POSTs `body` to `/<phase>`: the status and the answer's text.
    pub async fn call(&self, phase: &str, body: &serde_json::Value) -> (u16, String) {
        let body = body.to_string();
        let a = request(
            self.addr,
            "POST",
            &format!("/{phase}"),
            Some(body.as_bytes()),
            &[],
        )
        .await
        .expect("the participant answers");
        (
            a.status,
            String::from_utf8_lossy(&a.body).trim().to_string(),
        )
    }

    /// The initiator's Try call.
    pub async fn try_phase(
        &self,
        xid: &str,
        branch_id: u64,
        account: i64,
        amount: i64,
    ) -> (u16, String) {
        self.call(
            "try",
            &serde_json::json!({"xid": xid, "branch_id": branch_id, "account": account, "amount": amount}),
        )
        .await
    }

    /// Confirm and Cancel answer 503 while on.
    pub async fn set_failing(&self, on: bool) {
        let path = format!("/admin/fail?on={}", u8::from(on));
        request(self.addr, "POST", &path, None, &[])
            .await
            .expect("admin call");
    }

    /// Confirm and Cancel wait this long before they run.
    pub async fn set_delay(&self, ms: u64) {
        let path = format!("/admin/delay?ms={ms}");
        request(self.addr, "POST", &path, None, &[])
            .await
            .expect("admin call");
    }
}
