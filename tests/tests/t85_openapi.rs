//! The coordinator's API description against the coordinator itself: the OpenAPI
//! document it serves at `/api/v1/openapi.json` (generated from its handlers) is valid
//! OpenAPI 3.1 and names the calls DESIGN.md lists; an operator logs in; with a few
//! transactions and messages to act on, schemathesis (PyPI, pinned by
//! `scripts/ensure-tools.sh --browser` into `tests/.venv`) generates requests from it,
//! valid and invalid, for a bounded time, with an operator's credential, and checks every
//! answer: no 5xx, only documented statuses, bodies and headers as described, invalid
//! input refused with a 4xx, nothing served without a required credential, and 405 with
//! `Allow` for undocumented methods.
//!
//! One check is left out, `positive_data_acceptance` (schema-valid input must get a 2xx):
//! valid-looking input that names no existing transaction or message, or a TCC URL
//! without a host, or cluster calls on a single node, is rightly refused, and a schema
//! cannot say which ids exist.
//!
//! Needs `tests/.venv/bin/schemathesis` (or `REWIND_SCHEMATHESIS`); without it this test
//! fails and says how to install it. The run's output stays in the test's directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rewind_test_support::*;
use serde_json::Value as Json;

/// How long schemathesis generates requests (its `--max-time`): fuzzing and stateful
/// sequences repeat until it is spent.
const BUDGET_SECS: u64 = 60;

fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("REWIND_SCHEMATHESIS") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/schemathesis");
    assert!(
        p.exists(),
        "no schemathesis at {}: run scripts/ensure-tools.sh --browser (or set REWIND_SCHEMATHESIS)",
        p.display()
    );
    p
}

/// The Python beside schemathesis, which carries the OpenAPI meta-schemas.
fn python_of(schemathesis: &Path) -> PathBuf {
    schemathesis.with_file_name("python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t85_the_api_answers_as_its_description_says() {
    let st = schemathesis();
    let dir = TempDir::new("openapi");
    let coord = Coordinator::start(&dir, &[]).await;

    // Phase 1: the description is served without a credential, is OpenAPI 3.1 by the
    // specification's own schema, and describes the calls users rely on.
    let (code, doc) = coord.http("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(code, 200, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for (path, method) in [
        ("/api/v1/transactions", "post"),
        ("/api/v1/transactions", "get"),
        ("/api/v1/transactions/{xid}", "get"),
        ("/api/v1/transactions/{xid}/commit", "post"),
        ("/api/v1/transactions/{xid}/rollback", "post"),
        ("/api/v1/transactions/{xid}/branches", "post"),
        ("/api/v1/messages", "post"),
        ("/api/v1/locks", "get"),
        ("/api/v1/conflicts", "get"),
        ("/api/v1/conflicts/{id}/resolve", "post"),
        ("/metrics", "get"),
        ("/healthz", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is described"
        );
    }
    let doc_file = dir.0.join("openapi.json");
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    let check = tokio::process::Command::new(python_of(&st))
        .arg("-c")
        .arg(
            "import json, sys\n\
             from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR\n\
             errors = list(OPENAPI_31_VALIDATOR.iter_errors(json.load(open(sys.argv[1]))))\n\
             for e in errors[:20]: print(e, end='\\n\\n')\n\
             sys.exit(1 if errors else 0)",
        )
        .arg(&doc_file)
        .output()
        .await
        .expect("schemathesis' python runs");
    assert!(
        check.status.success(),
        "the document is not valid OpenAPI 3.1:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Phase 2: an operator logs in as the console does; the session is the credential's
    // second form (the run below uses the first, the Bearer token, because it also calls
    // logout, which would end a session under it).
    let login = serde_json::json!({"name": "admin", "secret": coord.token()}).to_string();
    let a = request(
        coord.http,
        "POST",
        "/api/v1/login",
        Some(login.as_bytes()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let cookie = a
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let (code, who) = coord
        .http_with(
            "GET",
            "/api/v1/session",
            None,
            &[("Cookie", cookie.as_str())],
        )
        .await;
    assert_eq!(
        (code, &who["operator"]),
        (200, &Json::from("admin")),
        "{who}"
    );

    // Phase 3: things to act on, so that generated calls reach past "not found": open
    // transactions (one with a TCC branch, whose participant is a closed local port),
    // a decided one, a prepared message and a message branch. Half of the generated
    // `{xid}` and message `{id}` path values are drawn from these.
    let mut xids = Vec::new();
    for _ in 0..4 {
        xids.push(coord.begin(600_000).await);
    }
    let tcc =
        serde_json::json!({"type": "tcc", "name": "t85", "confirm_url": "http://127.0.0.1:9/c",
        "cancel_url": "http://127.0.0.1:9/x", "payload": {"n": 1}})
        .to_string();
    let (code, v) = coord
        .http(
            "POST",
            &format!("/api/v1/transactions/{}/branches", xids[0]),
            Some(tcc.as_bytes()),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(coord.rollback(&xids[3]).await, "rolled_back");
    let mut messages = Vec::new();
    for path in [
        "/api/v1/messages".to_string(),
        format!("/api/v1/transactions/{}/messages", xids[1]),
    ] {
        let m = serde_json::json!({"topic": "t85", "payload": {"n": 1}}).to_string();
        let (code, v) = coord.http("POST", &path, Some(m.as_bytes())).await;
        assert_eq!(code, 200, "{v}");
        messages.push(v["message_id"].as_str().unwrap().to_string());
    }
    let config = dir.0.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[dictionaries.xids]\nvalues = {xids:?}\n\
             [dictionaries.messages]\nvalues = {messages:?}\n\
             [parameters]\n\"path.xid\" = {{ dictionary = \"xids\", probability = 0.5 }}\n\
             [[operations]]\ninclude-path-regex = \"^/api/v1/messages/\"\n\
             parameters = {{ \"path.id\" = {{ dictionary = \"messages\", probability = 0.5 }} }}\n"
        ),
    )
    .unwrap();

    // Phase 4: schemathesis, bounded in time.
    let bearer = format!("Authorization: Bearer {}", coord.token());
    let out_file = dir.0.join("schemathesis.txt");
    let started = Instant::now();
    let run = tokio::process::Command::new(&st)
        .args([
            "--config-file",
            &config.display().to_string(),
            "run",
            &format!("http://{}{}", coord.http, "/api/v1/openapi.json"),
            "--header",
            &bearer,
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
            "--max-time",
            &BUDGET_SECS.to_string(),
            "--request-timeout",
            "15",
            "--no-color",
            "--output-truncate",
            "false",
        ])
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(BUDGET_SECS + 60), run)
        .await
        .expect("schemathesis finished within its budget and a minute")
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&out_file, &text).unwrap();
    eprintln!(
        "schemathesis: {} in {:.0?}, output in {}",
        out.status,
        started.elapsed(),
        out_file.display()
    );
    assert!(
        out.status.success(),
        "schemathesis found answers that break the description ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("passed") && !text.contains(" 0 generated"),
        "schemathesis tested nothing:\n{text}"
    );
}
