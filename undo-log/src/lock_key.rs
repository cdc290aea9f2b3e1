//! Global lock keys: which row of which table a branch holds.
//!
//! Seata's `table:pk1,pk2` with composite keys joined by `_` is ambiguous (a key value
//! containing `_`, `,` or `:` collides with another row) and its `row_key` column truncates
//! long keys (#6216). Here a key is structured ([`LockKey`]) and its transport string is an
//! injective encoding with no length limit:
//!
//! ```text
//! <schema>.<table>:<pk part 1>,<pk part 2>,…
//! ```
//! where every component is percent-encoded: bytes outside `[A-Za-z0-9_-]` become `%XX`
//! (uppercase hex). `.`, `:` and `,` therefore never occur inside a component, and each
//! byte string has exactly one encoding, so equal strings mean equal keys and vice versa.
//!
//! Key parts come from [`TypedValue::key_bytes`] of the *stored* row (images are read from
//! the table, not taken from the statement's literals), so two transactions touching one
//! row derive the same key even under a case-insensitive collation.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::image::{Row, TableName};
use crate::value::TypedValue;

/// One locked row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    /// `schema.table`, both parts percent-encoded (see the module docs), so a `.` inside
    /// a name cannot be confused with the separator.
    pub schema_table: String,
    /// The primary-key values in key order, as canonical bytes; never empty.
    pub pk: Vec<Vec<u8>>,
}

impl LockKey {
    pub fn new(table: &TableName, pk: Vec<Vec<u8>>) -> Result<Self> {
        if pk.is_empty() {
            return Err(Error::BadLockKey(format!("{table} with no key parts")));
        }
        Ok(LockKey {
            schema_table: Self::table_id(table),
            pk,
        })
    }

    /// The key of one image row.
    pub fn for_row(table: &TableName, pk_columns: &[String], row: &Row) -> Result<Self> {
        let key: Vec<&TypedValue> = row.primary_key(pk_columns)?;
        Self::new(table, key.iter().map(|v| v.key_bytes()).collect())
    }

    /// The encoded `schema.table` component.
    pub fn table_id(table: &TableName) -> String {
        let mut out = String::with_capacity(table.schema.len() + table.table.len() + 1);
        escape_into(&mut out, table.schema.as_bytes());
        out.push('.');
        escape_into(&mut out, table.table.as_bytes());
        out
    }

    /// The canonical transport string.
    pub fn encode(&self) -> String {
        let mut out = self.schema_table.clone();
        out.push(':');
        for (i, part) in self.pk.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            escape_into(&mut out, part);
        }
        out
    }

    /// Parses [`LockKey::encode`]'s output; rejects anything that is not in canonical form.
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || Error::BadLockKey(s.to_owned());
        let (table, pk) = s.split_once(':').ok_or_else(bad)?;
        let (schema, name) = table.split_once('.').ok_or_else(bad)?;
        // Decoding and re-encoding the table parts enforces canonical escaping there too.
        let schema = String::from_utf8(unescape(schema).ok_or_else(bad)?).map_err(|_| bad())?;
        let name = String::from_utf8(unescape(name).ok_or_else(bad)?).map_err(|_| bad())?;
        let parts = pk
            .split(',')
            .map(|p| unescape(p).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()?;
        let key = LockKey::new(&TableName::new(schema, name), parts)?;
        if key.encode() != s {
            return Err(bad());
        }
        Ok(key)
    }
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The table of a [`LockKey::table_id`] as `schema.table` for people (lossy only for
/// names that are not UTF-8, which MySQL does not allow); the input itself when it is not
/// in canonical form.
pub fn unescape_table(table_id: &str) -> String {
    let parsed = table_id.split_once('.').and_then(|(schema, table)| {
        let schema = unescape(schema)?;
        let table = unescape(table)?;
        Some(TableName::new(
            String::from_utf8_lossy(&schema),
            String::from_utf8_lossy(&table),
        ))
    });
    match parsed {
        Some(name) => name.to_string(),
        None => table_id.to_string(),
    }
}

/// The [`TableName`] of a [`LockKey::table_id`], if it is one.
pub fn table_name(table_id: &str) -> Option<TableName> {
    let (schema, table) = table_id.split_once('.')?;
    Some(TableName::new(
        String::from_utf8(unescape(schema)?).ok()?,
        String::from_utf8(unescape(table)?).ok()?,
    ))
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if is_plain(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{ColumnType, TypeKind, Value};

    fn key(schema: &str, table: &str, pk: &[&[u8]]) -> LockKey {
        LockKey::new(
            &TableName::new(schema, table),
            pk.iter().map(|p| p.to_vec()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn encoding_round_trips_and_is_unambiguous() {
        let cases = [
            key("shop", "order", &[b"42"]),
            key("a.b", "c", &[b"1"]),
            key("a", "b.c", &[b"1"]),
            key("s", "t", &[b"a_b", b"c"]),
            key("s", "t", &[b"a", b"b_c"]),
            key("s", "t", &[b"a,b"]),
            key("s", "t", &[b"a", b"b"]),
            key("s", "t:x", &[b"y"]),
            key("s", "t", &[b"x:y"]),
            key("s", "t", &[b""]),
            key("s", "t", &[b"", b""]),
            key("s", "t", &[&[0, 255, b'%', b'.']]),
            key("s", "t", &["😀 é".as_bytes()]),
            key("s", "t", &[&[b'x'; 10_000]]),
        ];
        let encoded: Vec<String> = cases.iter().map(LockKey::encode).collect();
        for (k, e) in cases.iter().zip(&encoded) {
            assert_eq!(&LockKey::decode(e).unwrap(), k, "{e}");
        }
        let mut unique = encoded.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), encoded.len(), "{encoded:?}");
        assert_eq!(encoded[3], "s.t:a_b,c");
        assert_eq!(encoded[1], "a%2Eb.c:1");
    }

    #[test]
    fn non_canonical_strings_are_rejected() {
        for bad in [
            "s.t", "st:1", "s.t:%4", "s.t:%4a", "s.t:%41", "s.t:a b", "s.t:",
        ] {
            // "s.t:" is a single empty part and valid; everything else is not.
            assert_eq!(LockKey::decode(bad).is_ok(), bad == "s.t:", "{bad}");
        }
    }

    #[test]
    fn key_from_row_uses_canonical_value_bytes() {
        let row = Row::new(vec![
            (
                "id".into(),
                TypedValue::new(
                    ColumnType {
                        kind: TypeKind::Int,
                        unsigned: true,
                        decimals: 0,
                    },
                    Value::UInt(u64::MAX),
                ),
            ),
            (
                "uuid".into(),
                TypedValue::new(ColumnType::new(TypeKind::Binary), Value::Bytes(vec![0; 16])),
            ),
        ]);
        let k = LockKey::for_row(
            &TableName::new("s", "t"),
            &["id".into(), "uuid".into()],
            &row,
        )
        .unwrap();
        assert_eq!(k.pk[0], b"18446744073709551615");
        assert_eq!(
            k.encode(),
            format!("s.t:18446744073709551615,{}", "%00".repeat(16))
        );
    }
}
