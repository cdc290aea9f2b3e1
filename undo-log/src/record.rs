//! The undo record of one branch and its byte encoding (the `rollback_info` column).
//!
//! # Format (version 1)
//! ```text
//! b"RWU" | version: u8 = 1 | codec: u8 | payload
//! codec 0: payload is the record as JSON
//! codec 1: payload is LZ4 block format with a little-endian u32 uncompressed-size prefix
//! ```
//! JSON because operators and tools can read a record with nothing but the server and a
//! decompressor, and because serde's defaults let later versions add fields. Bytes inside
//! JSON are base64, floats are their bit patterns (see [`crate::value`]). Records above
//! [`COMPRESS_THRESHOLD`] are compressed: images of wide rows or blobs are large and
//! repetitive, and every byte goes through the backend's redo log in phase one.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{RowImage, TableMeta, TableName};
use crate::lock_key::LockKey;

const MAGIC: &[u8; 3] = b"RWU";
/// Bump when the payload changes incompatibly; [`UndoRecord::decode`] refuses unknown ones.
pub const FORMAT_VERSION: u8 = 1;
const CODEC_JSON: u8 = 0;
const CODEC_LZ4_JSON: u8 = 1;
/// Below this, compression costs more CPU than the bytes it saves are worth.
pub const COMPRESS_THRESHOLD: usize = 4096;
/// The largest record payload (uncompressed JSON) either side accepts. Decode must not
/// trust a size prefix without a bound (one bad row could exhaust memory), and encode
/// refuses what decode would refuse, so phase one fails instead of writing an undo record
/// nobody can read back.
pub const MAX_RECORD_LEN: usize = 1 << 30;

/// Which kind of DML produced an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlKind {
    /// Before image empty, after image = inserted rows; undone by DELETE.
    Insert,
    /// Both images hold the same rows (by primary key); undone by UPDATE.
    Update,
    /// Before image = deleted rows, after image empty; undone by INSERT.
    Delete,
}

/// The part of [`TableMeta`] the rollback needs, frozen at phase one so a later DDL cannot
/// change how an old record is undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    pub name: TableName,
    pub primary_key: Vec<String>,
    /// `ON UPDATE CURRENT_TIMESTAMP` columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_update_now: Vec<String>,
    /// Generated columns: never written back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<String>,
}

impl From<&TableMeta> for TableSummary {
    fn from(meta: &TableMeta) -> Self {
        TableSummary {
            name: meta.name.clone(),
            primary_key: meta.primary_key.clone(),
            on_update_now: meta.on_update_now_columns().map(str::to_owned).collect(),
            generated: meta.generated_columns().map(str::to_owned).collect(),
        }
    }
}

/// The undo information for one DML statement on one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoItem {
    pub kind: SqlKind,
    pub table: TableSummary,
    /// For UPDATE: the columns the statement's SET clause assigns. Undo restores these (and
    /// the on-update timestamp columns); other image columns are only compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_columns: Vec<String>,
    pub before: RowImage,
    pub after: RowImage,
}

impl UndoItem {
    /// The on-update timestamp columns the statement did not assign itself: the server set
    /// them, so they say nothing about whether someone else wrote the row.
    pub fn implicit_timestamp_columns(&self) -> impl Iterator<Item = &str> {
        self.table
            .on_update_now
            .iter()
            .filter(|c| !self.set_columns.contains(c))
            .map(String::as_str)
    }

    /// The image holding the rows the undo acts on (and whose keys it locks).
    pub fn key_image(&self) -> &RowImage {
        match self.kind {
            SqlKind::Insert => &self.after,
            SqlKind::Update | SqlKind::Delete => &self.before,
        }
    }
}

/// Everything one branch must undo, items in execution order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UndoRecord {
    pub items: Vec<UndoItem>,
}

impl UndoRecord {
    /// Items in the order a rollback must apply them: last statement first.
    pub fn rollback_order(&self) -> impl Iterator<Item = &UndoItem> {
        self.items.iter().rev()
    }

    /// The global lock keys of every row the record would undo, sorted and without
    /// duplicates (a row touched by two statements is locked once; a stable order lets the
    /// coordinator take them without lock-order surprises).
    pub fn lock_keys(&self) -> Result<Vec<LockKey>> {
        let mut keys = Vec::new();
        for item in &self.items {
            for row in &item.key_image().rows {
                keys.push(LockKey::for_row(
                    &item.table.name,
                    &item.table.primary_key,
                    row,
                )?);
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Where one row (by table and lock-key bytes) appears: its image in the first item
    /// that touched it (for its key and columns) and its state before the branch (the
    /// first item's before image; `None` when the branch inserted it). `None` when no item
    /// holds the row (already settled).
    pub fn row_history(
        &self,
        table: &crate::TableName,
        pk: &[Vec<u8>],
    ) -> Result<Option<(&UndoItem, &crate::Row, Option<&crate::Row>)>> {
        for item in &self.items {
            if &item.table.name != table {
                continue;
            }
            for image in [&item.before, &item.after] {
                for row in &image.rows {
                    if row_key(row, &item.table.primary_key)? == pk {
                        let before = find_by_key(&item.before, &item.table.primary_key, pk)?;
                        return Ok(Some((item, row, before)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Takes one row out of every item, as settled by an operator: the retried rollback
    /// leaves it alone. Items left with no rows go. Returns whether anything was removed.
    pub fn settle_row(&mut self, table: &crate::TableName, pk: &[Vec<u8>]) -> Result<bool> {
        let mut removed = false;
        for item in self.items.iter_mut().filter(|i| &i.table.name == table) {
            let key_cols = item.table.primary_key.clone();
            for image in [&mut item.before, &mut item.after] {
                let n = image.rows.len();
                let mut keep = Vec::with_capacity(n);
                for row in image.rows.drain(..) {
                    if row_key(&row, &key_cols)? != pk {
                        keep.push(row);
                    }
                }
                removed |= keep.len() != n;
                image.rows = keep;
            }
        }
        self.items
            .retain(|i| !(i.before.rows.is_empty() && i.after.rows.is_empty()));
        Ok(removed)
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Codec(e.to_string()))?;
        if json.len() > MAX_RECORD_LEN {
            return Err(Error::Codec(format!(
                "record of {} bytes exceeds the {MAX_RECORD_LEN}-byte limit",
                json.len()
            )));
        }
        let mut out = Vec::with_capacity(5 + json.len().min(COMPRESS_THRESHOLD));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        if json.len() > COMPRESS_THRESHOLD {
            out.push(CODEC_LZ4_JSON);
            out.extend_from_slice(&lz4_flex::block::compress_prepend_size(&json));
        } else {
            out.push(CODEC_JSON);
            out.extend_from_slice(&json);
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (header, payload) = bytes
            .split_at_checked(5)
            .ok_or_else(|| Error::Codec("shorter than its header".into()))?;
        if &header[..3] != MAGIC {
            return Err(Error::Codec("not an undo record (bad magic)".into()));
        }
        if header[3] != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(header[3]));
        }
        let json = match header[4] {
            CODEC_JSON => std::borrow::Cow::Borrowed(payload),
            CODEC_LZ4_JSON => {
                let size = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or_else(|| Error::Codec("truncated compressed payload".into()))?;
                if size > MAX_RECORD_LEN {
                    return Err(Error::Codec(format!("claims {size} bytes uncompressed")));
                }
                // LZ4 never expands a byte into more than 255: a larger claim is corrupt, and
                // believing it would allocate up to MAX_RECORD_LEN for a few bytes of input.
                if size > payload.len().saturating_mul(255) {
                    return Err(Error::Codec(format!(
                        "claims {size} bytes uncompressed from {} compressed",
                        payload.len()
                    )));
                }
                std::borrow::Cow::Owned(
                    lz4_flex::block::decompress_size_prepended(payload)
                        .map_err(|e| Error::Codec(e.to_string()))?,
                )
            }
            other => return Err(Error::Codec(format!("unknown codec {other}"))),
        };
        serde_json::from_slice(&json).map_err(|e| Error::Codec(e.to_string()))
    }
}

/// A row's lock-key bytes.
pub fn row_key(row: &crate::Row, pk: &[String]) -> Result<Vec<Vec<u8>>> {
    Ok(row.primary_key(pk)?.iter().map(|v| v.key_bytes()).collect())
}

fn find_by_key<'a>(
    image: &'a RowImage,
    pk_cols: &[String],
    pk: &[Vec<u8>],
) -> Result<Option<&'a crate::Row>> {
    for row in &image.rows {
        if row_key(row, pk_cols)? == pk {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::Row;
    use crate::value::{ColumnType, TypeKind, TypedValue, Value};

    fn ty(kind: TypeKind, unsigned: bool, decimals: u8) -> ColumnType {
        ColumnType {
            kind,
            unsigned,
            decimals,
        }
    }

    /// One row with an edge value of every type.
    pub(crate) fn edge_row(id: i64, blob_len: usize) -> Row {
        let c = |name: &str, t: ColumnType, v: Value| (name.to_string(), TypedValue::new(t, v));
        Row::new(vec![
            c("id", ty(TypeKind::Int, false, 0), Value::Int(id)),
            c("i_min", ty(TypeKind::Int, false, 0), Value::Int(i64::MIN)),
            c("u_max", ty(TypeKind::Int, true, 0), Value::UInt(u64::MAX)),
            c(
                "f_negzero",
                ty(TypeKind::Float, false, 0),
                Value::Float(-0.0),
            ),
            c(
                "f_nan",
                ty(TypeKind::Float, false, 0),
                Value::Float(f32::NAN),
            ),
            c(
                "d_negzero",
                ty(TypeKind::Double, false, 0),
                Value::Double(-0.0),
            ),
            c(
                "d_max",
                ty(TypeKind::Double, false, 0),
                Value::Double(f64::MAX),
            ),
            c(
                "d_tiny",
                ty(TypeKind::Double, false, 0),
                Value::Double(f64::from_bits(1)),
            ),
            c(
                "dec",
                ty(TypeKind::Decimal, false, 30),
                Value::Decimal(
                    "-99999999999999999999999999999999999.999999999999999999999999999999".into(),
                ),
            ),
            c(
                "dt6",
                ty(TypeKind::DateTime, false, 6),
                Value::DateTime {
                    year: 9999,
                    month: 12,
                    day: 31,
                    hour: 23,
                    minute: 59,
                    second: 59,
                    micros: 999_999,
                },
            ),
            c(
                "ts",
                ty(TypeKind::Timestamp, false, 6),
                Value::DateTime {
                    year: 2038,
                    month: 1,
                    day: 19,
                    hour: 3,
                    minute: 14,
                    second: 7,
                    micros: 1,
                },
            ),
            c(
                "d",
                ty(TypeKind::Date, false, 0),
                Value::Date {
                    year: 0,
                    month: 0,
                    day: 0,
                },
            ),
            c(
                "t",
                ty(TypeKind::Time, false, 6),
                Value::Time {
                    negative: true,
                    hours: 838,
                    minutes: 59,
                    seconds: 59,
                    micros: 0,
                },
            ),
            c("y", ty(TypeKind::Year, true, 0), Value::UInt(2155)),
            c(
                "s",
                ty(TypeKind::Text, false, 0),
                Value::Text("nul\0 emoji 😀 quote ' \" \\ end".into()),
            ),
            c(
                "j",
                ty(TypeKind::Json, false, 0),
                Value::Text(r#"{"a": [1, 2.5, "x\u0000"], "b": null}"#.into()),
            ),
            c(
                "bin",
                ty(TypeKind::Binary, false, 0),
                Value::Bytes(vec![0, 0, 255, 0]),
            ),
            c(
                "bit",
                ty(TypeKind::Bit, false, 0),
                Value::Bytes(vec![0x02, 0xaa]),
            ),
            c(
                "blob",
                ty(TypeKind::Binary, false, 0),
                Value::Bytes((0..blob_len).map(|i| (i * 7 % 251) as u8).collect()),
            ),
            c("n", ty(TypeKind::Text, false, 0), Value::Null),
        ])
    }

    pub(crate) fn sample_item(kind: SqlKind, blob_len: usize) -> UndoItem {
        let name = TableName::new("shop", "all`types");
        let rows = vec![edge_row(1, blob_len), edge_row(2, 0)];
        let (before, after) = match kind {
            SqlKind::Insert => (
                RowImage::empty(name.clone()),
                RowImage::new(name.clone(), rows),
            ),
            SqlKind::Delete => (
                RowImage::new(name.clone(), rows),
                RowImage::empty(name.clone()),
            ),
            SqlKind::Update => (
                RowImage::new(name.clone(), rows.clone()),
                RowImage::new(name.clone(), rows),
            ),
        };
        UndoItem {
            kind,
            table: TableSummary {
                name,
                primary_key: vec!["id".into()],
                on_update_now: vec!["ts".into()],
                generated: vec![],
            },
            set_columns: if kind == SqlKind::Update {
                vec!["s".into(), "blob".into()]
            } else {
                vec![]
            },
            before,
            after,
        }
    }

    #[test]
    fn round_trip_every_value_type_small_record() {
        let record = UndoRecord {
            items: vec![
                sample_item(SqlKind::Update, 10),
                sample_item(SqlKind::Delete, 0),
            ],
        };
        let bytes = record.encode().unwrap();
        assert_eq!(&bytes[..4], b"RWU\x01");
        let back = UndoRecord::decode(&bytes).unwrap();
        assert_eq!(back, record);
        // Bit-exact floats, not just PartialEq (which already compares bits).
        let Value::Double(d) = back.items[0].before.rows[0].get("d_negzero").unwrap().value else {
            panic!()
        };
        assert!(d.is_sign_negative() && d == 0.0);
    }

    #[test]
    fn small_records_stay_readable_json() {
        let bytes = UndoRecord::default().encode().unwrap();
        assert_eq!(bytes, b"RWU\x01\x00{\"items\":[]}");
    }

    #[test]
    fn huge_blob_is_compressed_and_round_trips() {
        let record = UndoRecord {
            items: vec![sample_item(SqlKind::Insert, 3 << 20)],
        };
        let bytes = record.encode().unwrap();
        assert_eq!(bytes[4], CODEC_LZ4_JSON);
        assert!(bytes.len() < 3 << 20, "compressed to {}", bytes.len());
        assert_eq!(UndoRecord::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn decode_refuses_what_it_does_not_know() {
        let bytes = UndoRecord::default().encode().unwrap();
        let mut newer = bytes.clone();
        newer[3] = 2;
        assert!(matches!(
            UndoRecord::decode(&newer),
            Err(Error::UnsupportedVersion(2))
        ));
        assert!(UndoRecord::decode(b"RW").is_err());
        assert!(UndoRecord::decode(b"XYZ\x01\x00{}").is_err());
        assert!(UndoRecord::decode(b"RWU\x01\x07{}").is_err());
        assert!(UndoRecord::decode(b"RWU\x01\x01\xff\xff\xff\xff").is_err());
        // A size the compressed bytes cannot hold is refused before anything is allocated.
        assert!(matches!(
            UndoRecord::decode(b"RWU\x01\x01\xff\xff\xff\x3f\x00"),
            Err(Error::Codec(e)) if e.contains("from 5 compressed")
        ));
        let mut truncated = sample_item(SqlKind::Insert, 10_000);
        truncated.set_columns.clear();
        let full = UndoRecord {
            items: vec![truncated],
        }
        .encode()
        .unwrap();
        assert!(UndoRecord::decode(&full[..full.len() / 2]).is_err());
    }

    #[test]
    fn lock_keys_cover_every_row_once() {
        let record = UndoRecord {
            items: vec![
                sample_item(SqlKind::Update, 0),
                sample_item(SqlKind::Delete, 0),
                sample_item(SqlKind::Insert, 0),
            ],
        };
        let keys: Vec<String> = record
            .lock_keys()
            .unwrap()
            .iter()
            .map(LockKey::encode)
            .collect();
        assert_eq!(keys, ["shop.all%60types:1", "shop.all%60types:2"]);
    }

    /// Seeds for the `undo_record` fuzz target: records as phase one writes them, in both
    /// codecs. Run by hand after a format change:
    /// `cargo test -p rewind-undo-log --lib -- --ignored write_fuzz_seeds`.
    #[test]
    #[ignore = "writes fuzz/corpus/undo_record"]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/undo_record");
        std::fs::create_dir_all(&dir).unwrap();
        let records = [
            ("empty", UndoRecord::default()),
            (
                "update-delete",
                UndoRecord {
                    items: vec![
                        sample_item(SqlKind::Update, 10),
                        sample_item(SqlKind::Delete, 0),
                    ],
                },
            ),
            (
                "insert",
                UndoRecord {
                    items: vec![sample_item(SqlKind::Insert, 0)],
                },
            ),
            (
                "insert-lz4",
                UndoRecord {
                    items: vec![sample_item(SqlKind::Insert, 6000)],
                },
            ),
        ];
        for (name, record) in records {
            std::fs::write(dir.join(format!("seed-{name}")), record.encode().unwrap()).unwrap();
        }
    }

    #[test]
    fn rollback_order_is_reverse_execution_order() {
        let record = UndoRecord {
            items: vec![
                sample_item(SqlKind::Insert, 0),
                sample_item(SqlKind::Delete, 0),
            ],
        };
        let kinds: Vec<_> = record.rollback_order().map(|i| i.kind).collect();
        assert_eq!(kinds, [SqlKind::Delete, SqlKind::Insert]);
    }
}
