//! Operator authentication for the console and the operator API.
//!
//! Operators are named, each with a secret (a token or password) from the config. With
//! none configured, the first start generates one secret for the operator `admin` and
//! keeps it in the data directory (`operator-token`, mode 0600); the log says where it
//! is, never what it is.
//!
//! Two ways to present the credential:
//! - scripts: `Authorization: Bearer <secret>` on each call;
//! - the console: `POST /api/v1/login` with name and secret answers a session cookie
//!   (`HttpOnly`, `SameSite=Strict`, random, expires) and a CSRF token the page sends
//!   back in `X-CSRF-Token` on every mutating call.
//!
//! Secrets never travel in URLs and are never logged. Sessions live in memory: a
//! restart (or another cluster node) asks the operator to log in again, which is cheap
//! and leaves nothing to steal from disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;
use subtle::ConstantTimeEq;

use crate::error::CoordinatorError;

/// File name of the generated credential, in the data directory.
pub const TOKEN_FILE: &str = "operator-token";
/// The operator name a generated credential belongs to.
pub const GENERATED_OPERATOR: &str = "admin";
/// Cookie that carries a console session.
pub const COOKIE: &str = "rewind_session";
/// Live console sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 1024;

/// Who is acting, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
}

struct ConsoleSession {
    operator: String,
    csrf: String,
    expires: Instant,
}

pub struct Auth {
    /// name → secret.
    operators: BTreeMap<String, String>,
    sessions: DashMap<String, ConsoleSession>,
    ttl: Duration,
    /// Where the generated credential is, when there is one.
    pub generated: Option<PathBuf>,
}

/// What a login hands the console.
pub struct Login {
    pub cookie_value: String,
    pub csrf: String,
    pub max_age_secs: u64,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    // ThreadRng is a CSPRNG seeded from the OS.
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Auth {
    /// Operators from the config, or the generated credential (created on first start).
    pub fn load(
        configured: &BTreeMap<String, String>,
        data_dir: &Path,
        session_secs: u64,
    ) -> Result<Auth, CoordinatorError> {
        let ttl = Duration::from_secs(session_secs);
        if !configured.is_empty() {
            return Ok(Auth {
                operators: configured.clone(),
                sessions: DashMap::new(),
                ttl,
                generated: None,
            });
        }
        let path = data_dir.join(TOKEN_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            Ok(_) => {
                return Err(CoordinatorError::Storage(format!(
                    "{} is empty: delete it to have a new credential generated",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random_hex(24);
                write_private(&path, &format!("{secret}\n")).map_err(|e| {
                    CoordinatorError::Storage(format!("writing {}: {e}", path.display()))
                })?;
                secret
            }
            Err(e) => {
                return Err(CoordinatorError::Storage(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Auth {
            operators: BTreeMap::from([(GENERATED_OPERATOR.to_string(), secret)]),
            sessions: DashMap::new(),
            ttl,
            generated: Some(path),
        })
    }

    /// Checks a name and secret; on success opens a console session.
    pub fn login(&self, name: &str, secret: &str) -> Option<Login> {
        // Compare against every operator so timing does not tell which names exist.
        let mut ok = false;
        for (n, s) in &self.operators {
            ok |= same(n, name) & same(s, secret);
        }
        if !ok {
            return None;
        }
        self.expire();
        if self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|e| e.expires)
                .map(|e| e.key().clone());
            if let Some(k) = oldest {
                self.sessions.remove(&k);
            }
        }
        let cookie_value = random_hex(32);
        let csrf = random_hex(16);
        self.sessions.insert(
            cookie_value.clone(),
            ConsoleSession {
                operator: name.to_string(),
                csrf: csrf.clone(),
                expires: Instant::now() + self.ttl,
            },
        );
        Some(Login {
            cookie_value,
            csrf,
            max_age_secs: self.ttl.as_secs(),
        })
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(c) = cookie(headers) {
            self.sessions.remove(&c);
        }
    }

    /// The operator behind a request, or why not. `mutating` calls made with a session
    /// cookie must also carry the session's CSRF token.
    pub fn check(&self, headers: &HeaderMap, mutating: bool) -> Result<Operator, CoordinatorError> {
        if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
            let v = v.to_str().unwrap_or_default();
            let Some(secret) = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
            else {
                return Err(CoordinatorError::Unauthorized(
                    "Authorization must be `Bearer <operator token>`".into(),
                ));
            };
            let secret = secret.trim();
            let mut who = None;
            for (n, s) in &self.operators {
                if same(s, secret) {
                    who = Some(n.clone());
                }
            }
            return who
                .map(|name| Operator { name })
                .ok_or_else(|| CoordinatorError::Unauthorized("wrong operator token".into()));
        }
        let Some(c) = cookie(headers) else {
            return Err(CoordinatorError::Unauthorized(
                "operator credential required: log in to the console or send `Authorization: Bearer <token>`"
                    .into(),
            ));
        };
        let Some(s) = self.sessions.get(&c) else {
            return Err(CoordinatorError::Unauthorized(
                "session expired or unknown: log in again".into(),
            ));
        };
        if s.expires <= Instant::now() {
            drop(s);
            self.sessions.remove(&c);
            return Err(CoordinatorError::Unauthorized(
                "session expired: log in again".into(),
            ));
        }
        if mutating {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same(sent, &s.csrf) {
                return Err(CoordinatorError::Forbidden(
                    "missing or wrong X-CSRF-Token for this session".into(),
                ));
            }
        }
        Ok(Operator {
            name: s.operator.clone(),
        })
    }

    /// The CSRF token of the request's session (for a reloaded console page).
    pub fn csrf_of(&self, headers: &HeaderMap) -> Option<String> {
        cookie(headers).and_then(|c| self.sessions.get(&c).map(|s| s.csrf.clone()))
    }

    fn expire(&self) {
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires > now);
    }
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "rewind-auth-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    #[test]
    fn generated_credential_is_private_stable_and_works() {
        let d = dir();
        let a = Auth::load(&BTreeMap::new(), &d, 60).unwrap();
        let path = a.generated.clone().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
        assert_eq!(secret.len(), 48);
        // The same secret after a restart.
        let b = Auth::load(&BTreeMap::new(), &d, 60).unwrap();
        assert!(b.login("admin", &secret).is_some());
        assert!(b.login("admin", "wrong").is_none());
        assert!(b.login("root", &secret).is_none());
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {secret}")).unwrap(),
        );
        assert_eq!(b.check(&h, true).unwrap().name, "admin");
        h.insert("authorization", HeaderValue::from_static("Bearer nope"));
        assert!(b.check(&h, true).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn session_cookie_needs_csrf_for_mutations() {
        let ops = BTreeMap::from([("alice".to_string(), "s3cret".to_string())]);
        let a = Auth::load(&ops, &dir(), 60).unwrap();
        assert!(a.generated.is_none());
        let l = a.login("alice", "s3cret").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_str(&format!("x=1; {COOKIE}={}", l.cookie_value)).unwrap(),
        );
        assert_eq!(a.check(&h, false).unwrap().name, "alice");
        assert!(matches!(
            a.check(&h, true),
            Err(CoordinatorError::Forbidden(_))
        ));
        h.insert("x-csrf-token", HeaderValue::from_str(&l.csrf).unwrap());
        assert_eq!(a.check(&h, true).unwrap().name, "alice");
        a.logout(&h);
        assert!(a.check(&h, false).is_err());
    }
}
