//! Operator access: the generated credential, console sessions with CSRF, Bearer
//! tokens, which calls stay open for applications, and the audit log (durable).

use rewind_test_support::{request, Coordinator, TempDir};

#[tokio::test]
async fn t50_credential_sessions_csrf_and_audit() {
    let dir = TempDir::new("operator");
    let mut c = Coordinator::start(&dir, &[]).await;

    // A credential was generated, private to this user, and never logged.
    let token_path = c.data.join("operator-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let token = c.token();
    assert!(token.len() >= 32);

    // The console is served, framing and inline script forbidden.
    let page = request(c.http, "GET", "/", None, &[]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("Operator login"));
    let head = &page.headers;
    assert!(
        page.header("x-frame-options")
            .is_some_and(|v| v.eq_ignore_ascii_case("deny")),
        "{head:?}"
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|v| v.starts_with("default-src 'self'")),
        "{head:?}"
    );
    let js = request(c.http, "GET", "/console.js", None, &[])
        .await
        .unwrap();
    assert_eq!(js.status, 200);
    assert!(String::from_utf8_lossy(&js.body).contains("X-CSRF-Token"));

    // Wrong credentials are refused, without saying which part was wrong.
    for body in [
        format!(r#"{{"name":"admin","secret":"{token}x"}}"#),
        format!(r#"{{"name":"root","secret":"{token}"}}"#),
        r#"{"name":"admin"}"#.to_string(),
    ] {
        let a = request(c.http, "POST", "/api/v1/login", Some(body.as_bytes()), &[])
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["error"], "unauthorized");
    }
    let (st, _) = c
        .http_with(
            "GET",
            "/api/v1/audit",
            None,
            &[("Authorization", "Bearer not-the-token")],
        )
        .await;
    assert_eq!(st, 401);

    // Log in: an HttpOnly, SameSite=Strict session cookie plus a CSRF token.
    let body = format!(r#"{{"name":"admin","secret":"{token}"}}"#);
    let login = request(c.http, "POST", "/api/v1/login", Some(body.as_bytes()), &[])
        .await
        .unwrap();
    assert_eq!(login.status, 200);
    let set_cookie = login
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let attributes = set_cookie.to_ascii_lowercase();
    assert!(attributes.contains("httponly") && attributes.contains("samesite=strict"));
    let cookie = set_cookie.split(';').next().unwrap().trim().to_string();
    assert!(!cookie.contains(&token), "the cookie is not the secret");
    let csrf = login.json()["csrf"].as_str().unwrap().to_string();
    let (st, v) = c
        .http_with("GET", "/api/v1/session", None, &[("Cookie", &cookie)])
        .await;
    assert_eq!((st, v["operator"].as_str()), (200, Some("admin")), "{v}");
    assert_eq!(v["csrf"], csrf.as_str());

    // Cookie without the CSRF header cannot mutate; with it, it can (404: no such conflict).
    let resolve = Some(&br#"{"action":"retry"}"#[..]);
    let (st, _) = c
        .http_with(
            "POST",
            "/api/v1/conflicts/9/resolve",
            resolve,
            &[("Cookie", &cookie)],
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = c
        .http_with(
            "POST",
            "/api/v1/conflicts/9/resolve",
            resolve,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        )
        .await;
    assert_eq!(st, 404);

    // Application calls stay open; an operator's commit is audited.
    let (st, v) = c.http("POST", "/api/v1/transactions", None).await;
    assert_eq!(st, 200, "{v}");
    let xid = v["xid"].as_str().unwrap().to_string();
    let (st, v) = c
        .operator("POST", &format!("/api/v1/transactions/{xid}/commit"), None)
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("committed")), "{v}");

    let audit = |c: &Coordinator| {
        let auth = format!("Bearer {}", c.token());
        let addr = c.http;
        async move {
            let a = request(
                addr,
                "GET",
                "/api/v1/audit",
                None,
                &[("Authorization", auth.as_str())],
            )
            .await
            .unwrap();
            assert_eq!(a.status, 200);
            a.json().as_array().cloned().unwrap_or_default()
        }
    };
    let entries = audit(&c).await;
    let summary: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!(
        summary[0],
        (
            "admin".into(),
            "commit".into(),
            format!("transaction {xid}"),
            "ok: committed".into()
        )
    );
    assert_eq!(summary[1].1, "resolve retry");
    assert!(
        summary[1].3.starts_with("refused: conflict 9 not found"),
        "{summary:?}"
    );
    assert_eq!(summary[2].1, "login");
    assert!(entries
        .windows(2)
        .all(|w| w[0]["id"].as_u64() > w[1]["id"].as_u64()));

    // Logout ends the session.
    let (st, _) = c
        .http_with(
            "POST",
            "/api/v1/logout",
            None,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = c
        .http_with("GET", "/api/v1/session", None, &[("Cookie", &cookie)])
        .await;
    assert_eq!(st, 401);

    // kill -9: the audit log and the credential survive; the console session does not.
    c.kill();
    let c2 = Coordinator::start(&dir, &[]).await;
    assert_eq!(c2.token(), token);
    let after = audit(&c2).await;
    assert_eq!(after.len(), 4, "the logout too: {after:?}");
    assert_eq!(after[1..], entries[..]);
}

#[tokio::test]
async fn t51_configured_operators_and_api_auth_all() {
    let dir = TempDir::new("operator-cfg");
    let cfg = dir.0.join("c.toml");
    std::fs::write(
        &cfg,
        "api_auth = \"all\"\noperators = { alice = \"alice-secret-123\" }\n",
    )
    .unwrap();
    let c = Coordinator::start(&dir, &["--config", cfg.to_str().unwrap()]).await;
    assert!(
        !c.data.join("operator-token").exists(),
        "configured operators: nothing generated"
    );
    // Every API call needs the credential now; health and metrics do not.
    assert_eq!(c.http("POST", "/api/v1/transactions", None).await.0, 401);
    assert_eq!(c.http("GET", "/api/v1/locks", None).await.0, 401);
    assert_eq!(c.http("GET", "/healthz", None).await.0, 200);
    let auth = [("Authorization", "Bearer alice-secret-123")];
    let (st, v) = c
        .http_with("POST", "/api/v1/transactions", None, &auth)
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = c.http_with("GET", "/api/v1/audit", None, &auth).await;
    assert_eq!(st, 200);
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(0),
        "a begin is not an operator action: {v}"
    );

    // A short configured secret is refused at start.
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "operators = { bob = \"short\" }\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rewind-coordinator"))
        .args(["--config", bad.to_str().unwrap(), "--data-dir"])
        .arg(dir.0.join("bad-data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
