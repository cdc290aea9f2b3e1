//! A prepared UPDATE or DELETE run as text, its parameters written in.
//!
//! Sent as text, a tagged UPDATE or DELETE whose condition pins the primary key costs one
//! backend query for its before image, its write and its after image (`update.rs`,
//! `delete.rs`); its values are in its SQL. Prepared (Go's database/sql, JDBC with
//! server-side statements, mysql2's `execute`), the same statement took an execute for
//! each: three round trips where text takes one.
//!
//! So an execute whose every parameter has a literal the server reads back as the same
//! value, of the same type, runs as that text instead:
//! - integers as integers, NULL as NULL;
//! - a DECIMAL parameter as a decimal literal (exact, at most 65 digits, as the server's
//!   own DECIMAL is);
//! - a DOUBLE (and a FLOAT, which the server widens to a double) in exponent form, which
//!   the server reads as a DOUBLE, never a DECIMAL, and Rust writes with every digit the
//!   value needs;
//! - a string of printable ASCII without a quote or a backslash between single quotes:
//!   in every client character set those bytes are those characters, and a quoted literal
//!   takes the connection's character set and collation as a string parameter does.
//!
//! Anything else (dates and times, whose type changes what the server makes of them,
//! BLOBs, other strings, infinities) leaves the execute as it was. So does a statement
//! text with a backslash anywhere (whether it escapes depends on `NO_BACKSLASH_ESCAPES`)
//! or an executable comment (`/*!`, whose `?` the server counts), or whose placeholders,
//! found outside quotes and comments, do not number exactly the parameters sent.

use mysql_async::consts::ColumnType;
use mysql_async::Value;

use crate::params::ParamType;

/// The largest number of digits a DECIMAL holds (longer literals are DOUBLEs).
const DECIMAL_DIGITS: usize = 65;
/// The most digits a DECIMAL keeps after the point.
const DECIMAL_SCALE: usize = 38;

/// `sql` with each `?` placeholder replaced by the literal of its parameter, `types[i]`
/// being the client's type of `params[i]` (none: mysql_async's own); `None` when any
/// parameter, or the text, does not allow it (see the module doc).
pub fn inline(sql: &str, params: &[Value], types: &[ParamType]) -> Option<String> {
    if params.is_empty() {
        return None;
    }
    let at = placeholders(sql)?;
    if at.len() != params.len() {
        return None;
    }
    let literals = params
        .iter()
        .enumerate()
        .map(|(i, v)| literal(v, types.get(i).map(|t| t.0)))
        .collect::<Option<Vec<_>>>()?;
    let mut out =
        String::with_capacity(sql.len() + literals.iter().map(String::len).sum::<usize>());
    let mut from = 0;
    for (pos, lit) in at.into_iter().zip(&literals) {
        out.push_str(&sql[from..pos]);
        // Spaced, so that `balance -?` with -5 is `balance - -5`, not a comment.
        out.push(' ');
        out.push_str(lit);
        out.push(' ');
        from = pos + 1;
    }
    out.push_str(&sql[from..]);
    Some(out)
}

/// The literal the server reads back as `v` of type `ty`, if there is one.
fn literal(v: &Value, ty: Option<ColumnType>) -> Option<String> {
    use ColumnType::*;
    let integer = matches!(
        ty,
        None | Some(
            MYSQL_TYPE_TINY
                | MYSQL_TYPE_SHORT
                | MYSQL_TYPE_INT24
                | MYSQL_TYPE_LONG
                | MYSQL_TYPE_LONGLONG
        )
    );
    match v {
        Value::NULL => Some("NULL".into()),
        Value::Int(i) if integer => Some(i.to_string()),
        Value::UInt(u) if integer => Some(u.to_string()),
        Value::Double(d) if d.is_finite() && matches!(ty, None | Some(MYSQL_TYPE_DOUBLE)) => {
            Some(format!("{d:e}"))
        }
        Value::Float(f) if f.is_finite() && matches!(ty, None | Some(MYSQL_TYPE_FLOAT)) => {
            Some(format!("{:e}", f64::from(*f)))
        }
        Value::Bytes(b) => match ty {
            Some(MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL) => decimal(b),
            None | Some(MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_STRING | MYSQL_TYPE_VARCHAR) => {
                let plain = b
                    .iter()
                    .all(|&c| (0x20..=0x7e).contains(&c) && c != b'\'' && c != b'\\');
                if !plain {
                    return None;
                }
                std::str::from_utf8(b).ok().map(|s| format!("'{s}'"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `-digits[.digits]` within DECIMAL's limits, as it came.
fn decimal(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?;
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |p: &str| p.bytes().all(|c| c.is_ascii_digit());
    let ok = !int.is_empty()
        && digits(int)
        && digits(frac)
        && (frac.len() <= DECIMAL_SCALE)
        && int.len() + frac.len() <= DECIMAL_DIGITS
        && !(unsigned.contains('.') && frac.is_empty());
    ok.then(|| s.to_string())
}

/// Byte offsets of the `?` placeholders of `sql`: outside quoted strings and identifiers
/// and comments. `None` for a text whose reading depends on the server's settings or that
/// the server reads differently (a backslash, an executable comment, an unterminated
/// quote or comment).
fn placeholders(sql: &str) -> Option<Vec<usize>> {
    let b = sql.as_bytes();
    if b.contains(&b'\\') {
        return None;
    }
    let mut at = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                // To the closing quote; a doubled one is part of the text.
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(&c) if c == q && b.get(i + 1) == Some(&q) => i += 2,
                        Some(&c) if c == q => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let body = &b[i + 2..];
                if body.starts_with(b"!") || body.starts_with(b"M!") {
                    return None;
                }
                let end = body.windows(2).position(|w| w == b"*/")?;
                i += 2 + end + 2;
            }
            b'#' => i = line_end(b, i),
            // `--` starts a comment only before a space or a control character.
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2)
                    .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
            {
                i = line_end(b, i)
            }
            b'?' => {
                at.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Some(at)
}

fn line_end(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| from + p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::consts::ColumnFlags;

    fn t(ty: ColumnType) -> ParamType {
        (ty, ColumnFlags::empty())
    }

    #[test]
    fn numbers_and_plain_strings_are_written_in() {
        let sql = "UPDATE account SET balance = balance -? , note = ? WHERE id=? AND k = ?";
        let params = [
            Value::Bytes(b"-12.50".to_vec()),
            Value::Bytes(b"order 7: paid".to_vec()),
            Value::Int(7),
            Value::NULL,
        ];
        let types = [
            t(ColumnType::MYSQL_TYPE_NEWDECIMAL),
            t(ColumnType::MYSQL_TYPE_VAR_STRING),
            t(ColumnType::MYSQL_TYPE_LONGLONG),
            t(ColumnType::MYSQL_TYPE_NULL),
        ];
        assert_eq!(
            inline(sql, &params, &types).unwrap(),
            "UPDATE account SET balance = balance - -12.50  , note =  'order 7: paid'  \
             WHERE id= 7  AND k =  NULL "
        );
    }

    #[test]
    fn doubles_keep_every_digit_and_stay_doubles() {
        let lit = |v| literal(&v, None).unwrap();
        assert_eq!(lit(Value::Double(0.1)), "1e-1");
        assert_eq!(lit(Value::Double(-1234.5)), "-1.2345e3");
        assert_eq!(lit(Value::Double(0.0)), "0e0");
        // A FLOAT is widened as the server widens it.
        assert_eq!(lit(Value::Float(0.1)), "1.0000000149011612e-1");
        assert_eq!(literal(&Value::Double(f64::NAN), None), None);
        for d in [0.1, 1.0 / 3.0, 1e300, -2.5e-300, 123456789.125] {
            assert_eq!(lit(Value::Double(d)).parse::<f64>().unwrap(), d);
        }
    }

    #[test]
    fn what_has_no_exact_literal_leaves_the_execute_alone() {
        let one =
            |v: Value, ty: ColumnType| inline("UPDATE t SET a = ? WHERE id = 1", &[v], &[t(ty)]);
        use ColumnType::*;
        assert_eq!(
            one(Value::Date(2024, 2, 29, 0, 0, 0, 0), MYSQL_TYPE_DATE),
            None
        );
        assert_eq!(
            one(Value::Bytes(b"it's".to_vec()), MYSQL_TYPE_VAR_STRING),
            None
        );
        assert_eq!(
            one(Value::Bytes(b"a\\b".to_vec()), MYSQL_TYPE_VAR_STRING),
            None
        );
        assert_eq!(one(Value::Bytes("é".into()), MYSQL_TYPE_VAR_STRING), None);
        assert_eq!(
            one(Value::Bytes(b"line\n".to_vec()), MYSQL_TYPE_VAR_STRING),
            None
        );
        assert_eq!(one(Value::Bytes(b"abc".to_vec()), MYSQL_TYPE_BLOB), None);
        assert_eq!(
            one(Value::Bytes(b"1e5".to_vec()), MYSQL_TYPE_NEWDECIMAL),
            None
        );
        assert_eq!(
            one(Value::Bytes(b"1.".to_vec()), MYSQL_TYPE_NEWDECIMAL),
            None
        );
        assert_eq!(
            one(Value::Bytes(vec![b'9'; 66]), MYSQL_TYPE_NEWDECIMAL),
            None
        );
        assert_eq!(one(Value::Int(2024), MYSQL_TYPE_YEAR), None);
        assert_eq!(one(Value::Double(1.5), MYSQL_TYPE_FLOAT), None);
        assert!(one(Value::Bytes(vec![b'9'; 65]), MYSQL_TYPE_NEWDECIMAL).is_some());
        assert!(one(Value::UInt(u64::MAX), MYSQL_TYPE_LONGLONG).is_some());
    }

    #[test]
    fn placeholders_are_found_where_the_server_finds_them() {
        let found = |s: &str| placeholders(s).map(|v| v.len());
        assert_eq!(found("SELECT ?, '?', \"?\", `?`, 'it''s ?', ?"), Some(2));
        assert_eq!(found("SELECT ? /* ? */ , ? # ?\n, ? -- ?\n, ?--?"), Some(5));
        assert_eq!(
            found("/*+ XID('x') */ UPDATE t SET a = ? WHERE id = ?"),
            Some(2)
        );
        // Settings or versions decide these: left alone.
        assert_eq!(found("SELECT 'a\\' , ?"), None);
        assert_eq!(found("SELECT /*! ? */ 1"), None);
        assert_eq!(found("SELECT /*M!100000 ? */ 1"), None);
        assert_eq!(found("SELECT 'open ?"), None);
        assert_eq!(found("SELECT 1 /* open ?"), None);
        // Counted wrong, nothing is written in.
        assert_eq!(
            inline("SELECT ?", &[Value::Int(1), Value::Int(2)], &[]),
            None
        );
    }
}
