//! What kind of statement a query is, from its first keywords: a byte scan, no parser.
//!
//! Inside a global transaction's local transaction every statement is classified, and only
//! DML and locking reads go on to the SQL parser. Statements that would end the local
//! transaction behind the proxy's back (DDL's implicit commit, `SET autocommit = 1`, a
//! nested `START TRANSACTION`, `LOCK TABLES`, …) or write where the proxy cannot see
//! (`CALL`, `LOAD DATA`) land in [`Kind::Other`], which the proxy refuses there.

/// The statement kinds the AT path distinguishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// SELECT, VALUES, TABLE, DO; `WITH …` needs a parse to tell a read from DML.
    Select,
    With,
    Insert,
    Update,
    Delete,
    Replace,
    /// `COMMIT [WORK] [AND [NO] CHAIN] [[NO] RELEASE]`
    Commit,
    /// `ROLLBACK [WORK]` … without `TO`.
    Rollback,
    RollbackTo(String),
    Savepoint(String),
    ReleaseSavepoint(String),
    /// `BEGIN [WORK]` / `START TRANSACTION …`
    Begin,
    Set,
    Use,
    /// SHOW, DESCRIBE/DESC, EXPLAIN, HELP: read the catalog, write nothing.
    ReadOnly,
    /// Anything else, by its first keyword (upper-cased).
    Other(String),
}

impl Kind {
    /// BEGIN, COMMIT, ROLLBACK and the savepoint statements: they open, end or act on
    /// the transaction itself rather than do work inside it.
    pub fn is_transaction_control(&self) -> bool {
        matches!(
            self,
            Kind::Begin
                | Kind::Commit
                | Kind::Rollback
                | Kind::RollbackTo(_)
                | Kind::Savepoint(_)
                | Kind::ReleaseSavepoint(_)
        )
    }
}

/// Classifies `sql` by its first keywords, skipping leading whitespace and comments.
pub fn classify(sql: &[u8]) -> Kind {
    let mut words = Words { s: sql, at: 0 };
    let Some(first) = words.next_word() else {
        return Kind::Other(String::new());
    };
    let first = first.to_ascii_uppercase();
    match first.as_str() {
        "SELECT" | "VALUES" | "TABLE" | "DO" | "(" => Kind::Select,
        "WITH" => Kind::With,
        "INSERT" => Kind::Insert,
        "UPDATE" => Kind::Update,
        "DELETE" => Kind::Delete,
        "REPLACE" => Kind::Replace,
        "COMMIT" => Kind::Commit,
        "ROLLBACK" => {
            let mut next = words.next_word().map(|w| w.to_ascii_uppercase());
            if next.as_deref() == Some("WORK") {
                next = words.next_word().map(|w| w.to_ascii_uppercase());
            }
            if next.as_deref() == Some("TO") {
                let mut name = words.next_name();
                if name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case("SAVEPOINT"))
                {
                    name = words.next_name();
                }
                return match name {
                    Some(n) => Kind::RollbackTo(n),
                    None => Kind::Other("ROLLBACK TO".into()),
                };
            }
            Kind::Rollback
        }
        "SAVEPOINT" => match words.next_name() {
            Some(n) => Kind::Savepoint(n),
            None => Kind::Other(first),
        },
        "RELEASE" => {
            let next = words.next_word().map(|w| w.to_ascii_uppercase());
            match (next.as_deref(), words.next_name()) {
                (Some("SAVEPOINT"), Some(n)) => Kind::ReleaseSavepoint(n),
                _ => Kind::Other(first),
            }
        }
        // MariaDB's `BEGIN NOT ATOMIC … END` is a compound statement, not a transaction.
        "BEGIN" => match words.next_word().map(|w| w.to_ascii_uppercase()).as_deref() {
            None | Some("WORK") | Some(";") => Kind::Begin,
            _ => Kind::Other("BEGIN NOT ATOMIC".into()),
        },
        "START" => match words.next_word().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("TRANSACTION") => Kind::Begin,
            _ => Kind::Other(first),
        },
        "SET" => Kind::Set,
        "USE" => Kind::Use,
        "SHOW" | "DESCRIBE" | "DESC" | "EXPLAIN" | "HELP" => Kind::ReadOnly,
        _ => Kind::Other(first),
    }
}

/// Whether a SET statement only sets session variables that cannot change how later text
/// parses or which database it names: `autocommit`, the transaction's isolation level and
/// access mode, and lock and statement timeouts (what JDBC, ORMs and pools send around
/// transactions). Everything else, and anything this scan cannot read with certainty,
/// answers false: every word must be one of a fixed list, and no quote of any kind may
/// appear (a quoted string could hide text from this scan, and the server would still
/// read it). `sql` must hold one statement (the caller rejects any `;`).
pub fn set_leaves_parsing_alone(sql: &[u8]) -> bool {
    const WORDS: &[&str] = &[
        // Scopes and values.
        "GLOBAL",
        "SESSION",
        "LOCAL",
        "ON",
        "OFF",
        "TRUE",
        "FALSE",
        "DEFAULT",
        // SET [scope] TRANSACTION ISOLATION LEVEL … | READ ONLY | READ WRITE
        "TRANSACTION",
        "ISOLATION",
        "LEVEL",
        "READ",
        "WRITE",
        "ONLY",
        "UNCOMMITTED",
        "COMMITTED",
        "REPEATABLE",
        "SERIALIZABLE",
        // Variables.
        "AUTOCOMMIT",
        "TRANSACTION_READ_ONLY",
        "TX_READ_ONLY",
        "INNODB_LOCK_WAIT_TIMEOUT",
        "LOCK_WAIT_TIMEOUT",
        "MAX_STATEMENT_TIME",
        "WAIT_TIMEOUT",
        "INTERACTIVE_TIMEOUT",
        "NET_READ_TIMEOUT",
        "NET_WRITE_TIMEOUT",
    ];
    if sql.iter().any(|b| matches!(b, b'\'' | b'"' | b'`' | b';')) {
        return false;
    }
    let mut words = Words { s: sql, at: 0 };
    if !words
        .next_word()
        .is_some_and(|w| w.eq_ignore_ascii_case("SET"))
    {
        return false;
    }
    let mut any = false;
    while let Some(w) = words.next_word() {
        any = true;
        let first = w.as_bytes()[0];
        let fits = if first.is_ascii_alphabetic() || first == b'_' {
            WORDS.iter().any(|k| k.eq_ignore_ascii_case(&w))
        } else {
            // Numbers arrive a digit at a time; `@@session.x`, `:=`, lists, `-1`.
            first.is_ascii_digit() || matches!(first, b'@' | b'.' | b'=' | b':' | b',' | b'-')
        };
        if !fits {
            return false;
        }
    }
    any
}

/// Whether a SET statement touches `autocommit` (which commits an open transaction when
/// switched on). A byte search: a false positive only refuses a harmless SET inside a
/// global transaction, never lets a commit slip by.
pub fn mentions_autocommit(sql: &[u8]) -> bool {
    mentions(sql, b"autocommit")
}

/// Whether `sql` contains `word` in any ASCII case: the proxy's cheap byte search for
/// statements that may need a closer look (false positives only cost that look).
pub fn mentions(sql: &[u8], word: &[u8]) -> bool {
    sql.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// Whether a statement may change the session's current database (`USE`, possibly inside
/// a multi-statement query or an executable comment): a word search for `use`. A false
/// positive only costs one `SELECT DATABASE()` later.
pub fn may_change_database(sql: &[u8]) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    sql.windows(3).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(b"use")
            && (i == 0 || !ident(sql[i - 1]))
            && sql.get(i + 3).is_none_or(|&b| !ident(b))
    })
}

/// Whether a statement may change a table's definition (`ALTER`, `CREATE`, `DROP`,
/// `RENAME` as a word anywhere: inside a multi-statement query or an executable comment
/// too). One pass over the bytes; a false positive only makes the proxy reload table
/// metadata (which it also checks against the server before every AT write).
pub fn may_change_schema(sql: &[u8]) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    let mut i = 0;
    while i < sql.len() {
        if !ident(sql[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < sql.len() && ident(sql[i]) {
            i += 1;
        }
        let word = &sql[start..i];
        if (4..=6).contains(&word.len())
            && [&b"ALTER"[..], b"CREATE", b"DROP", b"RENAME"]
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k))
        {
            return true;
        }
    }
    false
}

/// Whether a SELECT may be a locking read worth parsing (`… FOR UPDATE`).
pub fn mentions_for_update(sql: &[u8]) -> bool {
    sql.windows(6).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(b"UPDATE")
            && sql[..i]
                .iter()
                .rev()
                .skip_while(|b| b.is_ascii_whitespace())
                .take(3)
                .map(u8::to_ascii_uppercase)
                .eq(b"ROF".iter().copied())
    })
}

struct Words<'a> {
    s: &'a [u8],
    at: usize,
}

impl Words<'_> {
    /// Skips whitespace and comments (`/* */`, `-- `, `#`). Executable comments
    /// (`/*!…*/`, `/*M!…*/`) hold code, so they stop the skip and read as a word.
    fn skip(&mut self) {
        loop {
            let rest = &self.s[self.at..];
            if let Some(p) = rest.iter().position(|b| !b.is_ascii_whitespace()) {
                self.at += p;
            } else {
                self.at = self.s.len();
                return;
            }
            let rest = &self.s[self.at..];
            if rest.starts_with(b"/*") && !rest.starts_with(b"/*!") && !rest.starts_with(b"/*M!") {
                match rest[2..].windows(2).position(|w| w == b"*/") {
                    Some(end) => self.at += 2 + end + 2,
                    None => {
                        self.at = self.s.len();
                        return;
                    }
                }
            } else if rest.starts_with(b"#")
                || (rest.starts_with(b"--") && rest.get(2).is_none_or(|b| b.is_ascii_whitespace()))
            {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(end) => self.at += end + 1,
                    None => {
                        self.at = self.s.len();
                        return;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// The next keyword, or the next single punctuation byte.
    fn next_word(&mut self) -> Option<String> {
        self.skip();
        let rest = &self.s[self.at..];
        let first = *rest.first()?;
        if !(first.is_ascii_alphabetic() || first == b'_') {
            self.at += 1;
            return Some((first as char).to_string());
        }
        let len = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
            .unwrap_or(rest.len());
        self.at += len;
        Some(String::from_utf8_lossy(&rest[..len]).into_owned())
    }

    /// The next identifier, backquoted (with `` `` `` doubling) or bare.
    fn next_name(&mut self) -> Option<String> {
        self.skip();
        let rest = &self.s[self.at..];
        if rest.first() == Some(&b'`') {
            let mut name = Vec::new();
            let mut i = 1;
            while i < rest.len() {
                if rest[i] == b'`' {
                    if rest.get(i + 1) == Some(&b'`') {
                        name.push(b'`');
                        i += 2;
                        continue;
                    }
                    self.at += i + 1;
                    return Some(String::from_utf8_lossy(&name).into_owned());
                }
                name.push(rest[i]);
                i += 1;
            }
            return None;
        }
        let len = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80))
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        self.at += len;
        Some(String::from_utf8_lossy(&rest[..len]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_changes_are_seen_anywhere_as_words() {
        assert!(may_change_schema(b"ALTER TABLE t ADD c INT"));
        assert!(may_change_schema(
            b"select 1; create trigger x before update on t"
        ));
        assert!(may_change_schema(b"/*!50000 DROP TABLE t */"));
        assert!(may_change_schema(b"rename table a to b"));
        assert!(!may_change_schema(b"SELECT created, dropped FROM t_alter"));
        assert!(!may_change_schema(b"UPDATE t SET n = n + 1"));
    }

    #[test]
    fn first_keywords() {
        assert_eq!(
            classify(b"/*+ XID('rw-1') */ UPDATE t SET a = 1"),
            Kind::Update
        );
        assert_eq!(classify(b"  -- note\n# more\n select 1"), Kind::Select);
        assert_eq!(classify(b"(SELECT 1) UNION (SELECT 2)"), Kind::Select);
        assert_eq!(classify(b"insert into t values (1)"), Kind::Insert);
        assert_eq!(classify(b"COMMIT WORK AND CHAIN"), Kind::Commit);
        assert_eq!(classify(b"rollback"), Kind::Rollback);
        assert_eq!(classify(b"ROLLBACK WORK"), Kind::Rollback);
        assert_eq!(
            classify(b"ROLLBACK TO SAVEPOINT `a``b`"),
            Kind::RollbackTo("a`b".into())
        );
        assert_eq!(
            classify(b"rollback work to s1"),
            Kind::RollbackTo("s1".into())
        );
        assert_eq!(classify(b"SAVEPOINT s1"), Kind::Savepoint("s1".into()));
        assert_eq!(
            classify(b"RELEASE SAVEPOINT s1"),
            Kind::ReleaseSavepoint("s1".into())
        );
        assert_eq!(classify(b"BEGIN"), Kind::Begin);
        assert_eq!(classify(b"begin work"), Kind::Begin);
        assert_eq!(classify(b"START TRANSACTION READ WRITE"), Kind::Begin);
        assert_eq!(
            classify(b"BEGIN NOT ATOMIC SELECT 1; END"),
            Kind::Other("BEGIN NOT ATOMIC".into())
        );
        assert_eq!(classify(b"set autocommit=0"), Kind::Set);
        assert_eq!(classify(b"SHOW TABLES"), Kind::ReadOnly);
        assert_eq!(
            classify(b"create table t (a int)"),
            Kind::Other("CREATE".into())
        );
        assert_eq!(
            classify(b"/*!40101 SET NAMES utf8 */"),
            Kind::Other("/".into())
        );
        assert_eq!(classify(b"CALL p()"), Kind::Other("CALL".into()));
        assert_eq!(classify(b""), Kind::Other(String::new()));
        assert_eq!(classify(b"/* unterminated"), Kind::Other(String::new()));
        assert_eq!(classify(&[0xff, 0xfe]), Kind::Other("\u{ff}".into()));
    }

    #[test]
    fn locking_read_and_autocommit_hints() {
        assert!(mentions_for_update(
            b"SELECT * FROM t WHERE id = 1 FOR  UPDATE"
        ));
        assert!(mentions_for_update(b"select a from t for\nupdate"));
        assert!(!mentions_for_update(b"SELECT updated FROM t"));
        assert!(!mentions_for_update(b"SELECT 1 FROM t LOCK IN SHARE MODE"));
        assert!(mentions_autocommit(b"SET @@session.AUTOCOMMIT = 1"));
        assert!(may_change_database(b"USE `db`"));
        assert!(may_change_database(b"SELECT 1; use db"));
        assert!(!may_change_database(b"SELECT used, user FROM t"));
        assert!(!mentions_autocommit(b"SET @x = 1"));
    }
}
