//! Failpoints at the two-phase boundaries, so tests can stop or kill the proxy exactly
//! where a crash matters (as tikv's client does with `fail_point!`).
//!
//! Configured once, from the environment, by the test that starts the binary:
//! `REWIND_FAILPOINTS="after-register=sleep(2000);rollback-before-commit=abort"`.
//! Actions: `sleep(ms)` pauses the task; `abort` ends the process on the spot, like
//! `kill -9` (no cleanup, no flush). Unset, a failpoint costs one load of a static.
//!
//! Compiled in only with the `failpoints` cargo feature (`scripts/test.sh` builds the test
//! binaries with it); without it [`hit`] is empty and a set `REWIND_FAILPOINTS` is only
//! reported at start, so a release binary can never be made to abort from its environment.

#[cfg(feature = "failpoints")]
use std::collections::HashMap;
#[cfg(feature = "failpoints")]
use std::sync::OnceLock;
#[cfg(feature = "failpoints")]
use std::time::Duration;

/// At start: says whether failpoints are armed, or set but not compiled in.
pub fn announce() {
    let Ok(spec) = std::env::var("REWIND_FAILPOINTS") else {
        return;
    };
    if spec.trim().is_empty() {
        return;
    }
    if cfg!(feature = "failpoints") {
        tracing::warn!(%spec, "failpoints armed (tests only)");
    } else {
        tracing::warn!(
            "REWIND_FAILPOINTS is set but this binary was built without the `failpoints` \
             feature; ignored"
        );
    }
}

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &str) {}

#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Sleep(Duration),
    Abort,
}

#[cfg(feature = "failpoints")]
fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("REWIND_FAILPOINTS")
            .map(|spec| parse(&spec))
            .unwrap_or_default()
    })
}

#[cfg(feature = "failpoints")]
fn parse(spec: &str) -> HashMap<String, Action> {
    let mut out = HashMap::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, action)) = entry.split_once('=') else {
            tracing::warn!(%entry, "ignoring malformed failpoint");
            continue;
        };
        let action = match action.trim() {
            "abort" => Action::Abort,
            a => match a
                .strip_prefix("sleep(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|ms| ms.parse().ok())
            {
                Some(ms) => Action::Sleep(Duration::from_millis(ms)),
                None => {
                    tracing::warn!(%entry, "ignoring malformed failpoint");
                    continue;
                }
            },
        };
        out.insert(name.trim().to_string(), action);
    }
    out
}

/// Runs the action configured for `name`, if any.
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str) {
    let points = points();
    if points.is_empty() {
        return;
    }
    match points.get(name) {
        Some(Action::Sleep(d)) => {
            tracing::info!(failpoint = name, "failpoint: sleeping {d:?}");
            tokio::time::sleep(*d).await;
        }
        Some(Action::Abort) => {
            tracing::info!(failpoint = name, "failpoint: aborting");
            std::process::abort();
        }
        None => {}
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn spec_is_parsed() {
        let p = parse(" a=sleep(15); b = abort ;bad;c=sleep(x)");
        assert_eq!(p.get("a"), Some(&Action::Sleep(Duration::from_millis(15))));
        assert_eq!(p.get("b"), Some(&Action::Abort));
        assert_eq!(p.len(), 2);
    }
}
