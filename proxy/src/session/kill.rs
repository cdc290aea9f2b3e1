//! `KILL [HARD | SOFT] [CONNECTION | QUERY] <id>` naming a session by the id its handshake
//! announced. Drivers cancel a statement that way: the mariadb CLI on Ctrl-C, Connector/J's
//! `Statement.cancel()` and query timeouts open another connection and send
//! `KILL QUERY <thread id of the handshake>`. The proxy announces ids of its own, far above
//! the backend's thread ids (see `SESSION_ID_BASE`), so the statement goes to the backend
//! with the backend thread id of that session's connection in their place. An id in the
//! proxy's range that names no session of this process gets the server's own answer to an
//! unknown id (1094). Ids below the range (the backend's own, as `CONNECTION_ID()` shows
//! them) and every other form of KILL go to the backend unchanged. The older command for
//! it, COM_PROCESS_KILL (`mysql_kill()`), is run as the `KILL CONNECTION` it stands for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::ProxyError;

/// The backend thread id of every session's connection, by the session's handshake id.
#[derive(Default)]
pub struct BackendIds(Mutex<HashMap<u32, u32>>);

impl BackendIds {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u32>> {
        // Entries are inserted and removed whole: a panic elsewhere cannot leave one torn.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records session `id` on backend thread `backend` until the returned entry drops.
    pub fn register(self: &Arc<Self>, id: u32, backend: u32) -> Registered {
        self.map().insert(id, backend);
        Registered {
            ids: self.clone(),
            id,
        }
    }

    fn backend_of(&self, id: u32) -> Option<u32> {
        self.map().get(&id).copied()
    }
}

/// A session's entry in [`BackendIds`], removed when the session ends.
pub struct Registered {
    ids: Arc<BackendIds>,
    id: u32,
}

impl Registered {
    /// The session moved to another backend connection (XA).
    pub fn moved(&self, backend: u32) {
        self.ids.map().insert(self.id, backend);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ids.map().remove(&self.id);
    }
}

/// A KILL of a thread id: the text before the id, and the id.
#[derive(Debug, PartialEq)]
struct Kill<'a> {
    head: &'a str,
    id: u32,
}

/// `KILL [HARD | SOFT] [CONNECTION | QUERY] <decimal id>` with an optional `;`, case-
/// insensitive, whitespace between words; anything else (comments, `QUERY ID`, `USER`, an
/// expression) is not this form.
fn parse(sql: &[u8]) -> Option<Kill<'_>> {
    // Every COM_QUERY passes here: anything not starting with the word KILL, or longer
    // than such a statement can be, is let go before reading further.
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let word = sql.get(start..start + 5)?;
    if sql.len() > 128 || !word[..4].eq_ignore_ascii_case(b"KILL") || !word[4].is_ascii_whitespace()
    {
        return None;
    }
    let sql = std::str::from_utf8(sql).ok()?;
    let trimmed = sql.trim();
    let trimmed = trimmed.strip_suffix(';').unwrap_or(trimmed).trim_end();
    let mut words = trimmed.split_ascii_whitespace().peekable();
    if !words.next()?.eq_ignore_ascii_case("KILL") {
        return None;
    }
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("HARD") || w.eq_ignore_ascii_case("SOFT"))
    {
        words.next();
    }
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("CONNECTION") || w.eq_ignore_ascii_case("QUERY"))
    {
        words.next();
    }
    let last = words.next()?;
    if words.next().is_some() || !last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = last.parse().ok()?;
    let head = trimmed[..trimmed.len() - last.len()].trim_start();
    Some(Kill { head, id })
}

/// The statement to send for `sql`: `None` when it is not a KILL of one of this proxy's
/// session ids (send it as it is), the KILL with that session's backend thread id, or the
/// server's error for an unknown thread.
pub(super) fn translate(
    sql: &[u8],
    first_session_id: u32,
    ids: &BackendIds,
) -> Option<Result<String, ProxyError>> {
    let kill = parse(sql).filter(|k| k.id >= first_session_id)?;
    Some(match ids.backend_of(kill.id) {
        Some(backend) => Ok(format!("{}{backend}", kill.head)),
        None => Err(ProxyError::Backend {
            code: 1094,
            state: "HY000".into(),
            message: format!("Unknown thread id: {}", kill.id),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_of_kill_by_id() {
        let k = |s: &str| parse(s.as_bytes()).map(|k| (k.head.to_string(), k.id));
        assert_eq!(k("KILL 7"), Some(("KILL ".into(), 7)));
        assert_eq!(
            k("  kill query\t2147483650 ;"),
            Some(("kill query\t".into(), 2147483650))
        );
        assert_eq!(
            k("KILL HARD CONNECTION 12"),
            Some(("KILL HARD CONNECTION ".into(), 12))
        );
        assert_eq!(k("KILL SOFT 3;"), Some(("KILL SOFT ".into(), 3)));
        for other in [
            "KILL QUERY ID 5",
            "KILL USER root",
            "KILL 5 + 1",
            "KILL",
            "KILL QUERY",
            "/* c */ KILL 5",
            "SELECT 1",
            "KILLS 5",
            "KILL 99999999999",
        ] {
            assert_eq!(k(other), None, "{other}");
        }
        // Longer than a KILL by id can be: not read.
        assert_eq!(k(&format!("KILL {}5", " ".repeat(200))), None);
    }

    #[test]
    fn session_ids_become_backend_ids_and_unknown_ones_are_refused() {
        let ids = Arc::new(BackendIds::default());
        let base = 0x8000_0000;
        let reg = ids.register(base + 1, 42);
        let t = |s: &str| translate(s.as_bytes(), base, &ids);
        assert_eq!(
            t("KILL QUERY 2147483649").unwrap().unwrap(),
            "KILL QUERY 42"
        );
        reg.moved(43);
        assert_eq!(t("kill 2147483649").unwrap().unwrap(), "kill 43");
        // The backend's own ids, and anything not a KILL, go as they are.
        assert!(t("KILL QUERY 42").is_none());
        assert!(t("SELECT 2147483649").is_none());
        drop(reg);
        match t("KILL 2147483649") {
            Some(Err(ProxyError::Backend { code, message, .. })) => {
                assert_eq!(
                    (code, message.as_str()),
                    (1094, "Unknown thread id: 2147483649")
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
