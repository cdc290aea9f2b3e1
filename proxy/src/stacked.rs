//! Cheap detection of a second ("stacked") statement in a COM_QUERY, for clients that did
//! not enable multi-statements.
//!
//! mysql_async always opens backend connections with CLIENT_MULTI_STATEMENTS, so the
//! backend would run `SELECT 1; DROP TABLE t` even for a client (JDBC without
//! allowMultiQueries, mysqli without multi_query) that relies on the server refusing it:
//! a stacked-query injection defence. This is a lexical byte scan (quotes, comments), not
//! parsing, and it only runs for such clients.

/// Offset of the start of a second statement in `sql`, if there is one. A trailing `;`
/// followed only by whitespace and comments is not a second statement.
pub fn second_statement(sql: &[u8], backslash_escapes: bool) -> Option<usize> {
    let n = sql.len();
    let mut i = 0;
    while i < n {
        match sql[i] {
            q @ (b'\'' | b'"' | b'`') => i = skip_quoted(sql, i, q, backslash_escapes && q != b'`'),
            b'#' => i = skip_line(sql, i),
            b'-' if is_dash_comment(sql, i) => i = skip_line(sql, i),
            // Executable comments (`/*! ... */`, `/*M! ... */`) are code to the server.
            b'/' if is_executable_comment(&sql[i..]) => i += 3,
            b'/' if sql.get(i + 1) == Some(&b'*') => i = skip_block(sql, i),
            b';' => {
                let start = i + 1;
                return rest_has_statement(&sql[start..]).then_some(start);
            }
            _ => i += 1,
        }
    }
    None
}

fn is_executable_comment(at: &[u8]) -> bool {
    at.starts_with(b"/*!") || at.starts_with(b"/*M!")
}

fn skip_quoted(sql: &[u8], mut i: usize, q: u8, backslash: bool) -> usize {
    i += 1;
    while i < sql.len() {
        let b = sql[i];
        if backslash && b == b'\\' {
            i += 2;
        } else if b == q {
            if sql.get(i + 1) == Some(&q) {
                i += 2; // doubled quote
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    sql.len()
}

fn is_dash_comment(sql: &[u8], i: usize) -> bool {
    sql.get(i + 1) == Some(&b'-')
        && sql
            .get(i + 2)
            .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control())
}

fn skip_line(sql: &[u8], i: usize) -> usize {
    sql[i..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(sql.len(), |p| i + p + 1)
}

fn skip_block(sql: &[u8], i: usize) -> usize {
    sql[i + 2..]
        .windows(2)
        .position(|w| w == b"*/")
        .map_or(sql.len(), |p| i + 2 + p + 2)
}

fn rest_has_statement(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b if b.is_ascii_whitespace() || b == b';' => i += 1,
            b'#' => i = skip_line(rest, i),
            b'-' if is_dash_comment(rest, i) => i = skip_line(rest, i),
            b'/' if is_executable_comment(&rest[i..]) => return true,
            b'/' if rest.get(i + 1) == Some(&b'*') => i = skip_block(rest, i),
            _ => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::second_statement as s;

    #[test]
    fn finds_stacked_statements() {
        assert_eq!(s(b"SELECT 1; SELECT 2", true), Some(9));
        assert_eq!(s(b"SELECT 'a\\'; DROP TABLE t; -- '", false), Some(12));
        assert!(s(b"SELECT 1;DROP TABLE t", true).is_some());
        assert!(s(b"SELECT 1 /* c */ ; /* d */ DELETE FROM t", true).is_some());
        assert!(s(b"SELECT 1 /*! ; DROP TABLE t */", true).is_some());
        assert!(s(b"SELECT 1 /*M!100000 ; DROP TABLE t */", true).is_some());
        assert!(s(b"SELECT 1; /*!40101 SET x = 1 */", true).is_some());
    }

    #[test]
    fn ignores_semicolons_in_quotes_comments_and_at_the_end() {
        assert_eq!(s(b"SELECT 1", true), None);
        assert_eq!(s(b"SELECT 1;", true), None);
        assert_eq!(s(b"SELECT 1 ;  \n -- bye\n /* end */ ;", true), None);
        assert_eq!(s(b"SELECT 'a;b', \"c;d\", `e;f`", true), None);
        assert_eq!(s(b"SELECT 'it''s; fine'", true), None);
        assert_eq!(s(b"SELECT 'a\\'; still string'", true), None);
        assert_eq!(s(b"SELECT 1 -- x; DROP\n", true), None);
        assert_eq!(s(b"SELECT 1 # x; DROP", true), None);
        assert_eq!(s(b"SELECT /* ; */ 1", true), None);
        assert_eq!(
            s(b"SELECT 5--1; ", true),
            None,
            "5 minus minus 1, then a trailing ;"
        );
        assert_eq!(s(b"SELECT 'unterminated; x", true), None);
        assert_eq!(
            s(&[0xFF, b';', 0x00], true),
            Some(2),
            "garbage is still scanned"
        );
    }
}
