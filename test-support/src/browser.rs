//! The console tests' headless Chromium: where it is, and one run of a driver script in
//! `tests/console/` (playwright-core, installed by `scripts/ensure-tools.sh --browser`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;

/// Debian's Chromium, or `REWIND_CHROMIUM`.
pub fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("REWIND_CHROMIUM") {
        return p.into();
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "no chromium: install Debian's `chromium` package (scripts/ensure-tools.sh --browser) \
         or set REWIND_CHROMIUM"
    );
}

/// Runs `node <script>` in `driver_dir` with the JSON `plan` in `REWIND_CONSOLE` (at most 3
/// minutes), and returns the report it prints last, which must say `"ok": true`.
pub async fn run_console_driver(driver_dir: &Path, script: &str, plan: &Json) -> Json {
    assert!(
        driver_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/console` (scripts/test.sh does)"
    );
    let run = tokio::process::Command::new("node")
        .arg(script)
        .current_dir(driver_dir)
        .env("REWIND_CONSOLE", plan.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run finished within 3 minutes")
        .expect("node runs (install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let report: Json = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("driver report {stdout:?}: {e}"));
    assert_eq!(report["ok"], true, "{report}");
    report
}
