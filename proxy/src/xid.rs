//! Cheap detection of the `/*+ XID('...') */` tag in a statement's leading comment.
//!
//! Untagged statements must not pay for SQL parsing, so this is a byte scan of the leading
//! comment only: skip whitespace, require `/*`, look for `XID(` before the closing `*/`.
//! Everything after the first comment is never looked at.

/// Returns the XID of a statement tagged in its leading comment, or `None`.
pub fn leading_xid(sql: &[u8]) -> Option<&[u8]> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &sql[start..];
    if !rest.starts_with(b"/*") {
        return None;
    }
    let body = &rest[2..];
    let end = body.windows(2).position(|w| w == b"*/")?;
    let comment = &body[..end];
    let at = comment
        .windows(4)
        .position(|w| w.eq_ignore_ascii_case(b"XID("))?;
    let args = &comment[at + 4..];
    let open = args.iter().position(|b| !b.is_ascii_whitespace())?;
    let quote = args[open];
    if quote != b'\'' && quote != b'"' {
        return None;
    }
    let value = &args[open + 1..];
    let close = value.iter().position(|&b| b == quote)?;
    let xid = &value[..close];
    // The tag must be closed by `)`.
    let after = &value[close + 1..];
    let paren = after.iter().position(|b| !b.is_ascii_whitespace())?;
    (after[paren] == b')' && !xid.is_empty()).then_some(xid)
}

#[cfg(test)]
mod tests {
    use super::leading_xid;

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
