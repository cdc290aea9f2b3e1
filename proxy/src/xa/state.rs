//! Carrying a client session over to a new backend connection, for when its own one must
//! stay with a prepared XA branch: the session variables that differ from the server's
//! defaults (and those the proxy sets on every connection: character sets, wait_timeout),
//! `LAST_INSERT_ID()`, the user variables with their types, and the current database.
//! Prepared statements are prepared again by the session itself. Temporary tables cannot
//! move between connections: a session that created one is refused XA instead.
//!
//! One query reads it all (MariaDB's `information_schema.SYSTEM_VARIABLES` and
//! `USER_VARIABLES`), one `SET` writes it all.
//!
//! Carrying only what differs from the globals is exact because the new connection is
//! reset when taken ([`crate::session_conn`]): it holds the globals of now, the ones the
//! read compared with. (A pooled connection unreset would hold those of its last return,
//! older than a `SET GLOBAL` since.) Left open: a `SET GLOBAL` in the moment between the
//! read and that reset.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use rewind_undo_log::undo_sql::quote_ident;

const CAPTURE: &str = "\
    SELECT 's', VARIABLE_NAME, SESSION_VALUE, VARIABLE_TYPE, NULL \
      FROM information_schema.SYSTEM_VARIABLES \
     WHERE READ_ONLY = 'NO' AND ((VARIABLE_SCOPE = 'SESSION' \
           AND NOT (SESSION_VALUE <=> GLOBAL_VALUE)) \
        OR VARIABLE_NAME IN ('CHARACTER_SET_CLIENT', 'CHARACTER_SET_CONNECTION', \
           'CHARACTER_SET_RESULTS', 'COLLATION_CONNECTION', 'WAIT_TIMEOUT', 'LAST_INSERT_ID')) \
    UNION ALL SELECT 'u', VARIABLE_NAME, VARIABLE_VALUE, VARIABLE_TYPE, CHARACTER_SET_NAME \
      FROM information_schema.USER_VARIABLES \
    UNION ALL SELECT 'd', DATABASE(), NULL, NULL, NULL";

/// Session variables whose values are per connection by nature, never carried.
const NOT_CARRIED: &[&str] = &[
    "PSEUDO_THREAD_ID",
    "TIMESTAMP",
    "RAND_SEED1",
    "RAND_SEED2",
    "INSERT_ID",
    "IDENTITY",
    "GTID_SEQ_NO",
    "WSREP_GTID_SEQ_NO",
    "IN_TRANSACTION",
];

/// A session's state, read from one connection to be given to another.
#[derive(Debug, Default, Clone)]
pub struct SessionState {
    /// `name = literal` assignments (system variables with `SESSION`, user variables).
    assignments: Vec<String>,
    /// The current database (`None`: none selected).
    pub db: Option<String>,
}

/// Reads the state of the session on `conn`.
pub async fn capture(conn: &mut Conn) -> Result<SessionState, mysql_async::Error> {
    let rows: Vec<Row> = conn.query(CAPTURE).await?;
    let mut st = SessionState::default();
    for mut row in rows {
        let mut col = |i: usize| row.take::<Value, _>(i).unwrap_or(Value::NULL);
        let (kind, name, value, ty, charset) = (
            text(&col(0)),
            text(&col(1)),
            col(2),
            text(&col(3)),
            text(&col(4)),
        );
        match (kind.as_deref(), name) {
            (Some("d"), db) => st.db = db,
            (Some("s"), Some(name)) => {
                if NOT_CARRIED.contains(&name.as_str()) {
                    continue;
                }
                let lit = system_literal(&value, ty.as_deref().unwrap_or(""));
                st.assignments
                    .push(format!("SESSION {} = {lit}", name.to_ascii_lowercase()));
            }
            (Some("u"), Some(name)) => {
                let lit = user_literal(&value, ty.as_deref().unwrap_or(""), charset.as_deref());
                st.assignments
                    .push(format!("@{} = {lit}", quote_ident(&name)));
            }
            _ => {}
        }
    }
    Ok(st)
}

/// Gives the state to the session on `conn`. The assignments go in one `SET`; should it
/// fail (a variable this user may not set), they go one at a time and the ones refused
/// are logged and left out.
pub async fn apply(conn: &mut Conn, st: &SessionState) -> Result<(), mysql_async::Error> {
    if !st.assignments.is_empty() {
        let all = format!("SET {}", st.assignments.join(", "));
        if conn.query_drop(&all).await.is_err() {
            for a in &st.assignments {
                if let Err(e) = conn.query_drop(format!("SET {a}")).await {
                    tracing::warn!(assignment = %a, error = %e, "a session variable could not be carried to the new backend connection");
                }
            }
        }
    }
    if let Some(db) = &st.db {
        conn.query_drop(format!("USE {}", quote_ident(db))).await?;
    }
    Ok(())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

/// A plain decimal number (digits, one optional point, an optional exponent), nothing
/// SQL could read as anything else.
fn is_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    digits.as_bytes().first().is_some_and(u8::is_ascii_digit) && s.parse::<f64>().is_ok()
}

fn hex_string(s: &[u8], charset: &str) -> String {
    let hex = rewind_undo_log::undo_sql::hex_digits(s);
    format!("_{charset} X'{hex}'")
}

/// A system variable's value as a literal its `SET` accepts: numbers bare (a quoted
/// number is refused for numeric variables), anything else as a string.
fn system_literal(v: &Value, ty: &str) -> String {
    let Some(s) = text(v) else {
        return "NULL".into();
    };
    let numeric = ty.contains("INT") || ty == "DOUBLE";
    if numeric && is_number(&s) {
        s
    } else {
        hex_string(s.as_bytes(), "utf8mb4")
    }
}

/// A user variable's value with its type: INT / DECIMAL / DOUBLE bare, strings in their
/// character set.
fn user_literal(v: &Value, ty: &str, charset: Option<&str>) -> String {
    let Some(s) = text(v) else {
        return "NULL".into();
    };
    match ty {
        "INT" | "DECIMAL" | "DOUBLE" if is_number(&s) => s,
        _ => {
            let cs = charset
                .filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .unwrap_or("binary");
            match v {
                Value::Bytes(b) => hex_string(b, cs),
                _ => hex_string(s.as_bytes(), cs),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        let b = |s: &str| Value::Bytes(s.as_bytes().to_vec());
        assert_eq!(system_literal(&b("100"), "BIGINT UNSIGNED"), "100");
        assert_eq!(system_literal(&b("ANSI"), "SET"), "_utf8mb4 X'414E5349'");
        assert_eq!(system_literal(&Value::NULL, "ENUM"), "NULL");
        assert_eq!(user_literal(&b("-3"), "INT", Some("latin1")), "-3");
        assert_eq!(user_literal(&b("1.50"), "DECIMAL", None), "1.50");
        assert_eq!(
            user_literal(&b("hi"), "VARCHAR", Some("utf8mb4")),
            "_utf8mb4 X'6869'"
        );
        assert_eq!(
            user_literal(&b("x"), "VARCHAR", Some("bad charset")),
            "_binary X'78'"
        );
        // Not a number after all: a string, never bare text.
        assert_eq!(
            user_literal(&b("1; DROP"), "INT", None),
            "_binary X'313B2044524F50'"
        );
    }
}
