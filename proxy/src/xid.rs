//! Cheap detection of the `/*+ XID('...') */` tag in a statement's leading comment.
//!
//! Untagged statements must not pay for SQL parsing, so this is a byte scan of the leading
//! comment only: skip whitespace, require `/*`, look for `XID(` before the closing `*/`.
//! Everything after the first comment is never looked at.

/// Returns the XID of a statement tagged in its leading comment, or `None`.
pub fn leading_xid(sql: &[u8]) -> Option<&[u8]> {
    match leading_hint(sql, b"XID")?.as_slice() {
        [xid] if !xid.is_empty() => Some(xid),
        _ => None,
    }
}

/// The quoted arguments of hint `name` (`NAME('a', "b")`) in a statement's leading comment,
/// or `None` when the comment does not carry it well-formed. The name matches
/// case-insensitively and only as a whole word; arguments are taken verbatim (no escapes).
pub fn leading_hint<'a>(sql: &'a [u8], name: &[u8]) -> Option<Vec<&'a [u8]>> {
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
    let mut args = &comment[at + name.len() + 1..];
    let mut out = Vec::new();
    loop {
        let open = args.iter().position(|b| !b.is_ascii_whitespace())?;
        let quote = args[open];
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value = &args[open + 1..];
        let close = value.iter().position(|&b| b == quote)?;
        out.push(&value[..close]);
        let after = &value[close + 1..];
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
    use super::{leading_hint, leading_xid};

    #[test]
    fn hints_with_several_arguments() {
        assert_eq!(
            leading_hint(
                b"/*+ BARRIER('orders', \"m-1\") */ INSERT INTO t VALUES (1)",
                b"BARRIER"
            ),
            Some(vec![&b"orders"[..], &b"m-1"[..]])
        );
        assert_eq!(
            leading_hint(b"/*+ barrier( 'c' ,'m' ) */ DO 1", b"BARRIER").map(|v| v.len()),
            Some(2)
        );
        assert_eq!(
            leading_hint(b"/*+ MYBARRIER('c', 'm') */ DO 1", b"BARRIER"),
            None
        );
        assert_eq!(
            leading_hint(b"/*+ BARRIER('c' 'm') */ DO 1", b"BARRIER"),
            None
        );
        assert_eq!(
            leading_hint(b"/*+ BARRIER('c', m) */ DO 1", b"BARRIER"),
            None
        );
        assert_eq!(
            leading_hint(b"DO 1 /*+ BARRIER('c', 'm') */", b"BARRIER"),
            None
        );
        // Both hints in one comment.
        let sql = b"/*+ XID('rw-1') BARRIER('c', 'm') */ UPDATE t SET a = 1";
        assert_eq!(leading_xid(sql), Some(&b"rw-1"[..]));
        assert_eq!(leading_hint(sql, b"BARRIER").map(|v| v.len()), Some(2));
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
