//! Cheap detection of hints in a statement's leading comment: the `/*+ XID('...') */` tag,
//! and the arguments of any other hint (`BARRIER(…)`, `TCC(…)`).
//!
//! Untagged statements must not pay for SQL parsing, so this is a byte scan of the leading
//! comment only: skip whitespace, require `/*`, look for `NAME(` before the closing `*/`.
//! Everything after the first comment is never looked at.

/// Returns the XID of a statement tagged in its leading comment, or `None`.
pub fn leading_xid(sql: &[u8]) -> Option<&[u8]> {
    match leading_hint(sql, b"XID")?.ok()?.as_slice() {
        [HintArg::Quoted(xid)] if !xid.is_empty() => Some(xid),
        _ => None,
    }
}

/// Hints the proxy reads in a statement's leading comment.
const HINTS: [&[u8]; 6] = [b"XID", b"XA", b"BARRIER", b"TCC", b"MSG", b"TRACEPARENT"];

/// The text the backend prepares for a client's statement: without its leading comment
/// when that comment carries a hint the proxy reads (the proxy acts on it; the server
/// would only skip it), so the same statement under another XID or message id is the same
/// text to the backend (see `session::reuse`). Any other text, including a leading
/// executable comment (`/*!…*/`, `/*M!…*/`), is unchanged.
pub fn backend_text(sql: &[u8]) -> &[u8] {
    let Some(start) = sql.iter().position(|b| !b.is_ascii_whitespace()) else {
        return sql;
    };
    let rest = &sql[start..];
    if !rest.starts_with(b"/*") || rest[2..].starts_with(b"!") || rest[2..].starts_with(b"M!") {
        return sql;
    }
    if !HINTS.iter().any(|h| leading_hint(rest, h).is_some()) {
        return sql;
    }
    match rest[2..].windows(2).position(|w| w == b"*/") {
        Some(end) => {
            let after = &rest[2 + end + 2..];
            let body = after.iter().position(|b| !b.is_ascii_whitespace());
            body.map_or(sql, |b| &after[b..])
        }
        None => sql,
    }
}

/// The W3C `traceparent` a statement carries, read only while traces are on (the caller
/// checks): a `TRACEPARENT('00-…-…-01')` hint in the leading comment (beside `XID(…)`), or
/// the sqlcommenter form `traceparent='00-…-…-01'` in any comment of the statement (as
/// Google's sqlcommenter and OpenTelemetry's SQL instrumentations append it). A malformed
/// value counts as none: it never fails the statement.
pub fn traceparent(sql: &[u8]) -> Option<rewind_protocol::trace::SpanContext> {
    let parse = |v: &[u8]| rewind_protocol::trace::parse_traceparent(std::str::from_utf8(v).ok()?);
    if let Some(Ok(args)) = leading_hint(sql, b"TRACEPARENT") {
        if let [HintArg::Quoted(v)] = args.as_slice() {
            if let Some(sc) = parse(v) {
                return Some(sc);
            }
        }
    }
    // sqlcommenter: `/*key='value',traceparent='…'*/`, usually trailing.
    let key = b"traceparent='";
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut rest = sql;
    while let Some(open) = rest.windows(2).position(|w| w == b"/*") {
        let body = &rest[open + 2..];
        let close = body.windows(2).position(|w| w == b"*/")?;
        let comment = &body[..close];
        let found = (0..(comment.len() + 1).saturating_sub(key.len())).find(|&i| {
            comment[i..i + key.len()].eq_ignore_ascii_case(key) && (i == 0 || !word(comment[i - 1]))
        });
        if let Some(at) = found {
            let value = &comment[at + key.len()..];
            if let Some(end) = value.iter().position(|&b| b == b'\'') {
                if let Some(sc) = parse(&value[..end]) {
                    return Some(sc);
                }
            }
        }
        rest = &body[close + 2..];
    }
    None
}

/// One argument of a hint: quoted text (`'a'` or `"a"`, verbatim, no escapes), or a bare
/// unsigned integer (`42`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintArg<'a> {
    Quoted(&'a [u8]),
    Number(&'a [u8]),
}

impl<'a> HintArg<'a> {
    /// The argument as an unsigned 64-bit integer, bare (`42`) or quoted (`'42'`).
    pub fn number(self) -> Option<u64> {
        let (HintArg::Quoted(digits) | HintArg::Number(digits)) = self;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

/// A hint whose name is there but whose arguments do not parse (unquoted words, a
/// missing comma or parenthesis, an unterminated quote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The arguments of hint `name` (`NAME('a', "b", 42)`) in a statement's leading comment:
/// `None` when the comment does not name it, `Some(Err(Malformed))` when it does but the
/// arguments do not parse. The name matches case-insensitively and only as a whole word
/// followed by `(`.
pub fn leading_hint<'a>(sql: &'a [u8], name: &[u8]) -> Option<Result<Vec<HintArg<'a>>, Malformed>> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &sql[start..];
    if !rest.starts_with(b"/*") {
        return None;
    }
    let body = &rest[2..];
    let end = body.windows(2).position(|w| w == b"*/")?;
    let comment = &body[..end];
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let at = (0..comment.len().saturating_sub(name.len())).find(|&i| {
        comment[i..i + name.len()].eq_ignore_ascii_case(name)
            && comment[i + name.len()] == b'('
            && (i == 0 || !word(comment[i - 1]))
    })?;
    Some(arguments(&comment[at + name.len() + 1..]).ok_or(Malformed))
}

/// The arguments after a hint's `(`, up to its `)`.
fn arguments(mut args: &[u8]) -> Option<Vec<HintArg<'_>>> {
    let mut out = Vec::new();
    loop {
        let open = args.iter().position(|b| !b.is_ascii_whitespace())?;
        let after = match args[open] {
            quote @ (b'\'' | b'"') => {
                let value = &args[open + 1..];
                let close = value.iter().position(|&b| b == quote)?;
                out.push(HintArg::Quoted(&value[..close]));
                &value[close + 1..]
            }
            b'0'..=b'9' => {
                let digits = &args[open..];
                let len = digits
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .unwrap_or(digits.len());
                out.push(HintArg::Number(&digits[..len]));
                &digits[len..]
            }
            _ => return None,
        };
        let next = after.iter().position(|b| !b.is_ascii_whitespace())?;
        match after[next] {
            b')' => return Some(out),
            b',' => args = &after[next + 1..],
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{backend_text, leading_hint, leading_xid, traceparent, HintArg, Malformed};

    #[test]
    fn the_backend_prepares_the_text_after_a_hint_comment() {
        let b = |s: &str| String::from_utf8(backend_text(s.as_bytes()).to_vec()).unwrap();
        assert_eq!(
            b("/*+ XID('rw-1') */ UPDATE t SET a = ?"),
            "UPDATE t SET a = ?"
        );
        assert_eq!(
            b("  /*+ BARRIER('c', 'm1') */\n  INSERT INTO t VALUES (?)"),
            "INSERT INTO t VALUES (?)"
        );
        // Not a hint the proxy reads, an executable comment, nothing after the hint:
        // unchanged.
        for same in [
            "/* app */ UPDATE t SET a = ?",
            "/*+ MAX_EXECUTION_TIME(1) */ SELECT 1",
            "/*!40101 XID('x') */ SELECT 1",
            "/*M!100100 XID('x') */ SELECT 1",
            "/*+ XID('x') */",
            "UPDATE t SET a = ? /*+ XID('x') */",
        ] {
            assert_eq!(b(same), same);
        }
    }

    #[test]
    fn traceparent_in_a_hint_or_a_sqlcommenter_comment() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = |sql: &str| {
            traceparent(sql.as_bytes())
                .map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string()))
        };
        let want = Some((
            "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
            "00f067aa0ba902b7".to_string(),
        ));
        // Leading hint, beside the XID (which still reads).
        let hinted = format!("/*+ XID('rw-1') TRACEPARENT('{tp}') */ UPDATE t SET a = 1");
        assert_eq!(ids(&hinted), want);
        assert_eq!(leading_xid(hinted.as_bytes()), Some(&b"rw-1"[..]));
        // sqlcommenter, trailing, among other keys, any case of the key.
        let commented = format!(
            "/*+ XID('rw-1') */ UPDATE t SET a = 1 /*action='pay',traceparent='{tp}',x='y'*/"
        );
        assert_eq!(ids(&commented), want);
        assert_eq!(
            ids(&format!("UPDATE t SET a = 1 /*TraceParent='{tp}'*/")),
            want
        );
        // A malformed hint falls back to a comment; malformed everywhere is none.
        assert_eq!(
            ids(&format!(
                "/*+ TRACEPARENT('00-xyz') */ DO 1 /*traceparent='{tp}'*/"
            )),
            want
        );
        for none in [
            "UPDATE t SET a = 1".to_string(),
            "/*+ XID('rw-1') */ UPDATE t SET a = 1".to_string(),
            "/*+ TRACEPARENT('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7') */ DO 1"
                .to_string(),
            "DO 1 /*traceparent='00-00000000000000000000000000000000-00f067aa0ba902b7-01'*/"
                .to_string(),
            format!("/*+ TRACEPARENT('{tp}' */ DO 1"),
            format!("DO 1 /*traceparent='{tp}"),
            format!("DO 1 /*xtraceparent='{tp}'*/"),
            format!("DO 1 /*traceparent=\"{tp}\"*/"),
            format!("SELECT 'traceparent=''{tp}'''"),
        ] {
            assert_eq!(ids(&none), None, "{none}");
        }
    }

    /// The quoted arguments' texts (`None` for a bare number).
    fn quoted<'a>(sql: &'a [u8], name: &[u8]) -> Option<Vec<Option<&'a [u8]>>> {
        let args = leading_hint(sql, name)?.ok()?;
        let text = |a| match a {
            HintArg::Quoted(t) => Some(t),
            HintArg::Number(_) => None,
        };
        Some(args.into_iter().map(text).collect())
    }

    #[test]
    fn hints_with_several_arguments() {
        assert_eq!(
            quoted(
                b"/*+ BARRIER('orders', \"m-1\") */ INSERT INTO t VALUES (1)",
                b"BARRIER"
            ),
            Some(vec![Some(&b"orders"[..]), Some(&b"m-1"[..])])
        );
        assert_eq!(
            leading_hint(b"/*+ barrier( 'c' ,'m' ) */ DO 1", b"BARRIER")
                .map(|v| v.map(|v| v.len())),
            Some(Ok(2))
        );
        assert_eq!(
            leading_hint(b"/*+ MYBARRIER('c', 'm') */ DO 1", b"BARRIER"),
            None
        );
        assert_eq!(
            leading_hint(b"DO 1 /*+ BARRIER('c', 'm') */", b"BARRIER"),
            None
        );
        // Named, but not well-formed: the caller can tell it from an absent hint.
        for bad in [
            &b"/*+ BARRIER('c' 'm') */ DO 1"[..],
            b"/*+ BARRIER('c', m) */ DO 1",
            b"/*+ BARRIER('c', 'm' */ DO 1",
            b"/*+ BARRIER('c', 'm */ DO 1",
            b"/*+ BARRIER('c',) */ DO 1",
            b"/*+ TCC('x', 7a, 'try') */ DO 1",
            b"/*+ TCC('x', -7, 'try') */ DO 1",
        ] {
            let name = if bad.starts_with(b"/*+ TCC") {
                &b"TCC"[..]
            } else {
                b"BARRIER"
            };
            assert_eq!(
                leading_hint(bad, name),
                Some(Err(Malformed)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Both hints in one comment.
        let sql = b"/*+ XID('rw-1') BARRIER('c', 'm') */ UPDATE t SET a = 1";
        assert_eq!(leading_xid(sql), Some(&b"rw-1"[..]));
        assert_eq!(quoted(sql, b"BARRIER").map(|v| v.len()), Some(2));
    }

    #[test]
    fn bare_integers_are_arguments() {
        assert_eq!(
            leading_hint(b"/*+ TCC('rw-1', 42, 'try') */ UPDATE t SET a = 1", b"TCC"),
            Some(Ok(vec![
                HintArg::Quoted(b"rw-1"),
                HintArg::Number(b"42"),
                HintArg::Quoted(b"try")
            ]))
        );
        assert_eq!(
            leading_hint(b"/*+TCC( 'x' ,7 ,'cancel' )*/DO 1", b"TCC")
                .and_then(Result::ok)
                .map(|a| a[1].number()),
            Some(Some(7))
        );
        // A number may also be quoted; anything but digits, or past u64, is no number.
        assert_eq!(
            HintArg::Quoted(b"18446744073709551615").number(),
            Some(u64::MAX)
        );
        assert_eq!(HintArg::Number(b"18446744073709551616").number(), None);
        assert_eq!(HintArg::Quoted(b"7 ").number(), None);
        assert_eq!(HintArg::Quoted(b"").number(), None);
        assert_eq!(HintArg::Number(b"0").number(), Some(0));
        // An XID is quoted text, never a number.
        assert_eq!(leading_xid(b"/*+ XID(12) */ SELECT 1"), None);
    }

    #[test]
    fn finds_a_leading_tag() {
        assert_eq!(
            leading_xid(b"/*+ XID('abc-1') */ UPDATE t SET a=1"),
            Some(&b"abc-1"[..])
        );
        assert_eq!(
            leading_xid(b"  \n/*+xid(\"x:2\")*/SELECT 1"),
            Some(&b"x:2"[..])
        );
        assert_eq!(
            leading_xid(b"/* XID( 'k' ) */ DELETE FROM t"),
            Some(&b"k"[..])
        );
    }

    #[test]
    fn ignores_untagged_and_non_leading() {
        assert_eq!(leading_xid(b"SELECT 1"), None);
        assert_eq!(leading_xid(b""), None);
        assert_eq!(leading_xid(b"SELECT /*+ XID('a') */ 1"), None);
        assert_eq!(
            leading_xid(b"/* just a comment */ SELECT 'XID(\\'a\\')'"),
            None
        );
        assert_eq!(leading_xid(b"/*+ XID('a') "), None, "unterminated comment");
        assert_eq!(leading_xid(b"/*+ XID(a) */ SELECT 1"), None, "unquoted");
        assert_eq!(leading_xid(b"/*+ XID('') */ SELECT 1"), None, "empty");
        assert_eq!(
            leading_xid(b"/*+ XID('a' */ SELECT 1"),
            None,
            "unclosed paren"
        );
        assert_eq!(leading_xid(&[0xff, 0x00, b'/', b'*']), None, "garbage");
    }
}
