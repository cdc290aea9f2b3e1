//! Lossless typed MySQL values.
//!
//! Seata and seata-go lost data by squeezing column values through a host language's types
//! (BIGINT as float64, DECIMAL scale, DATETIME(6) truncated, TIMESTAMP shifted by time
//! zone). Here a value is kept as what the server stores: integers as `i64`/`u64`, DECIMAL
//! as its decimal string, temporal values as their fields with microseconds, floats as their
//! bits, strings and blobs as they are.
//!
//! Both result-set encodings are normalized into the same [`Value`] so that an image read
//! with the text protocol equals one read with the binary protocol. Two exceptions, both
//! server-side rounding in the text protocol and the reason the proxy reads images with the
//! binary protocol (prepared statements):
//! - MariaDB prints FLOAT with 6 significant digits: decoding a text-protocol FLOAT is an
//!   error ([`Error::InexactFloatText`]) rather than a silently wrong image.
//! - DOUBLE `-0` prints as `0`, so a text-protocol `-0.0` decodes as `0.0`.
//!
//! TIMESTAMP values travel in the session time zone. The proxy reads images and runs undo
//! SQL with `time_zone = '+00:00'`, so a stored [`Value::DateTime`] of kind
//! [`TypeKind::Timestamp`] is UTC. Writing it back in another time zone would shift it.

use std::fmt;

use mysql_async::consts::{ColumnFlags, ColumnType as MyType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The charset number MySQL reports for binary strings (`binary` collation).
const BINARY_CHARSET: u16 = 63;

/// What kind of value a column holds: decides how a value is decoded, compared and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeKind {
    /// TINYINT … BIGINT (signedness in [`ColumnType::unsigned`]).
    Int,
    Year,
    Float,
    Double,
    Decimal,
    Date,
    DateTime,
    /// Like DateTime but stored in UTC by the server and shown in the session time zone.
    Timestamp,
    Time,
    /// Character strings (CHAR, VARCHAR, TEXT) in a non-binary charset. MariaDB's JSON is
    /// LONGTEXT and lands here.
    Text,
    /// BINARY, VARBINARY, BLOB: bytes with charset `binary`.
    Binary,
    /// MySQL's native JSON type, kept as the server prints it.
    Json,
    Bit,
    Enum,
    Set,
    Geometry,
}

/// A column's type as far as restoring its values needs it.
///
/// Length (VARCHAR(n), DECIMAL precision) is left out on purpose: a value carries its own
/// bytes, and the result-set length (bytes) and information_schema length (characters)
/// disagree, which would make equal columns look different.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnType {
    #[serde(rename = "k")]
    pub kind: TypeKind,
    /// Integers (and YEAR) with the UNSIGNED attribute decode to [`Value::UInt`].
    #[serde(rename = "u", default, skip_serializing_if = "is_false")]
    pub unsigned: bool,
    /// DECIMAL scale, or fractional-second precision of DATETIME/TIMESTAMP/TIME; 0 otherwise.
    #[serde(rename = "d", default, skip_serializing_if = "is_zero")]
    pub decimals: u8,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(d: &u8) -> bool {
    *d == 0
}

impl ColumnType {
    pub fn new(kind: TypeKind) -> Self {
        ColumnType {
            kind,
            unsigned: false,
            decimals: 0,
        }
    }

    /// The type of a result-set column, as the server describes it.
    pub fn from_column(col: &mysql_async::Column) -> Result<Self> {
        let flags = col.flags();
        let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
        let binary = col.character_set() == BINARY_CHARSET;
        let kind = match col.column_type() {
            MyType::MYSQL_TYPE_TINY
            | MyType::MYSQL_TYPE_SHORT
            | MyType::MYSQL_TYPE_INT24
            | MyType::MYSQL_TYPE_LONG
            | MyType::MYSQL_TYPE_LONGLONG => TypeKind::Int,
            MyType::MYSQL_TYPE_YEAR => TypeKind::Year,
            MyType::MYSQL_TYPE_FLOAT => TypeKind::Float,
            MyType::MYSQL_TYPE_DOUBLE => TypeKind::Double,
            MyType::MYSQL_TYPE_DECIMAL | MyType::MYSQL_TYPE_NEWDECIMAL => TypeKind::Decimal,
            MyType::MYSQL_TYPE_DATE | MyType::MYSQL_TYPE_NEWDATE => TypeKind::Date,
            MyType::MYSQL_TYPE_DATETIME | MyType::MYSQL_TYPE_DATETIME2 => TypeKind::DateTime,
            MyType::MYSQL_TYPE_TIMESTAMP | MyType::MYSQL_TYPE_TIMESTAMP2 => TypeKind::Timestamp,
            MyType::MYSQL_TYPE_TIME | MyType::MYSQL_TYPE_TIME2 => TypeKind::Time,
            MyType::MYSQL_TYPE_JSON => TypeKind::Json,
            MyType::MYSQL_TYPE_BIT => TypeKind::Bit,
            MyType::MYSQL_TYPE_ENUM => TypeKind::Enum,
            MyType::MYSQL_TYPE_SET => TypeKind::Set,
            MyType::MYSQL_TYPE_GEOMETRY => TypeKind::Geometry,
            // ENUM and SET columns arrive as STRING with a flag.
            _ if flags.contains(ColumnFlags::ENUM_FLAG) => TypeKind::Enum,
            _ if flags.contains(ColumnFlags::SET_FLAG) => TypeKind::Set,
            MyType::MYSQL_TYPE_VARCHAR
            | MyType::MYSQL_TYPE_VAR_STRING
            | MyType::MYSQL_TYPE_STRING
            | MyType::MYSQL_TYPE_TINY_BLOB
            | MyType::MYSQL_TYPE_MEDIUM_BLOB
            | MyType::MYSQL_TYPE_LONG_BLOB
            | MyType::MYSQL_TYPE_BLOB => {
                if binary {
                    TypeKind::Binary
                } else {
                    TypeKind::Text
                }
            }
            MyType::MYSQL_TYPE_VECTOR => TypeKind::Binary,
            other => {
                return Err(Error::UnsupportedType {
                    column: col.name_str().into_owned(),
                    ty: format!("{other:?}"),
                })
            }
        };
        let decimals = match kind {
            TypeKind::Decimal | TypeKind::DateTime | TypeKind::Timestamp | TypeKind::Time => {
                col.decimals()
            }
            _ => 0,
        };
        Ok(ColumnType {
            kind,
            unsigned: unsigned && matches!(kind, TypeKind::Int | TypeKind::Year),
            decimals,
        })
    }
}

/// A column value kept exactly. Which variant a column uses is fixed by its [`TypeKind`]:
/// Int → Int/UInt, Year → UInt, Float/Double → Float/Double, Decimal → Decimal,
/// Date → Date, DateTime/Timestamp → DateTime, Time → Time, Text/Json/Enum/Set → Text,
/// Binary/Bit/Geometry → Bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    /// Stored as bits so -0.0 and every payload survive serialization.
    Float(#[serde(with = "f32_bits")] f32),
    Double(#[serde(with = "f64_bits")] f64),
    /// The exact decimal string the server printed (scale fixed by the column, so two
    /// values of one column are equal exactly when their strings are).
    Decimal(String),
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    /// TIME spans -838:59:59 … 838:59:59, so hours are not bounded by a day.
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    Text(String),
    Bytes(#[serde(with = "base64_bytes")] Vec<u8>),
}

/// Equality is exact: floats compare by bits (so `-0.0 != 0.0`, and NaN equals itself),
/// because the question is always "is this the same stored value", never numeric closeness.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Double(a), Double(b)) => a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) => a == b,
            (
                Date {
                    year: y1,
                    month: m1,
                    day: d1,
                },
                Date {
                    year: y2,
                    month: m2,
                    day: d2,
                },
            ) => (y1, m1, d1) == (y2, m2, d2),
            (
                DateTime {
                    year: a0,
                    month: a1,
                    day: a2,
                    hour: a3,
                    minute: a4,
                    second: a5,
                    micros: a6,
                },
                DateTime {
                    year: b0,
                    month: b1,
                    day: b2,
                    hour: b3,
                    minute: b4,
                    second: b5,
                    micros: b6,
                },
            ) => (a0, a1, a2, a3, a4, a5, a6) == (b0, b1, b2, b3, b4, b5, b6),
            (
                Time {
                    negative: a0,
                    hours: a1,
                    minutes: a2,
                    seconds: a3,
                    micros: a4,
                },
                Time {
                    negative: b0,
                    hours: b1,
                    minutes: b2,
                    seconds: b3,
                    micros: b4,
                },
            ) => (a0, a1, a2, a3, a4) == (b0, b1, b2, b3, b4),
            (Text(a), Text(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

/// A value with the type of the column it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypedValue {
    #[serde(rename = "t")]
    pub ty: ColumnType,
    #[serde(rename = "v")]
    pub value: Value,
}

impl TypedValue {
    pub fn new(ty: ColumnType, value: Value) -> Self {
        TypedValue { ty, value }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Decodes a result-set cell, whichever protocol (text or binary) produced it.
    pub fn from_mysql(value: &mysql_async::Value, col: &mysql_async::Column) -> Result<Self> {
        let ty = ColumnType::from_column(col)?;
        let value = decode(&ty, value, &col.name_str())?;
        Ok(TypedValue { ty, value })
    }

    /// The value as a statement parameter that writes back exactly this stored value.
    pub fn to_mysql(&self) -> mysql_async::Value {
        use mysql_async::Value as M;
        match &self.value {
            Value::Null => M::NULL,
            Value::Int(i) => M::Int(*i),
            Value::UInt(u) => M::UInt(*u),
            Value::Float(f) => M::Float(*f),
            Value::Double(d) => M::Double(*d),
            // A string parameter: the server parses it as an exact decimal, never a double.
            Value::Decimal(s) => M::Bytes(s.as_bytes().to_vec()),
            Value::Date { year, month, day } => M::Date(*year, *month, *day, 0, 0, 0, 0),
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            } => M::Date(*year, *month, *day, *hour, *minute, *second, *micros),
            Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => M::Time(
                *negative,
                hours / 24,
                (hours % 24) as u8,
                *minutes,
                *seconds,
                *micros,
            ),
            Value::Text(s) => M::Bytes(s.as_bytes().to_vec()),
            Value::Bytes(b) => M::Bytes(b.clone()),
        }
    }

    /// Canonical bytes for a lock key: the same stored value gives the same bytes whichever
    /// protocol read it. Distinct values of one column give distinct bytes.
    pub fn key_bytes(&self) -> Vec<u8> {
        match &self.value {
            Value::Text(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.clone(),
            // Bits, not text: two floats that print alike may still differ.
            Value::Float(f) => format!("f{:08x}", f.to_bits()).into_bytes(),
            Value::Double(d) => format!("d{:016x}", d.to_bits()).into_bytes(),
            _ => self.value.to_string().into_bytes(),
        }
    }
}

impl TypedValue {
    /// A TIMESTAMP read as `UNIX_TIMESTAMP(col)` (an integer, or a decimal with the
    /// column's fractional digits), turned into the UTC value a `time_zone = '+00:00'`
    /// session reads for the same column. Phase one reads TIMESTAMP columns this way on the
    /// client's own connection, whose time zone is the client's business and may have DST
    /// gaps and folds that a local time cannot round-trip through. `0` is the zero date.
    pub fn timestamp_from_epoch(ty: ColumnType, epoch: &Value, column: &str) -> Result<Self> {
        let bad = || Error::Decode {
            column: column.to_owned(),
            kind: TypeKind::Timestamp,
            got: format!("epoch {}", shape(epoch)),
        };
        let (secs, micros) = match epoch {
            Value::Null => return Ok(TypedValue::new(ty, Value::Null)),
            Value::Int(i) => (u64::try_from(*i).map_err(|_| bad())?, 0),
            Value::UInt(u) => (*u, 0),
            Value::Decimal(s) => {
                let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
                let secs = whole.parse::<u64>().map_err(|_| bad())?;
                let micros = if frac.is_empty() {
                    0
                } else {
                    micros(frac).ok_or_else(bad)?
                };
                (secs, micros)
            }
            _ => return Err(bad()),
        };
        if secs == 0 && micros == 0 {
            return Ok(TypedValue::new(
                ty,
                Value::DateTime {
                    year: 0,
                    month: 0,
                    day: 0,
                    hour: 0,
                    minute: 0,
                    second: 0,
                    micros: 0,
                },
            ));
        }
        let days = i64::try_from(secs / 86_400).map_err(|_| bad())?;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        Ok(TypedValue::new(
            ty,
            Value::DateTime {
                year: u16::try_from(year).map_err(|_| bad())?,
                month,
                day,
                hour: (rem / 3600) as u8,
                minute: (rem % 3600 / 60) as u8,
                second: (rem % 60) as u8,
                micros,
            },
        ))
    }

    /// The value as JSON for people (the console's side-by-side images): numbers that fit
    /// stay numbers, DECIMAL and temporal values are strings as MySQL prints them, text is
    /// text, bytes are text when they are UTF-8 and `{"hex": …}` otherwise. Within one
    /// column type the rendering is injective, so comparing renderings of the same row's
    /// cells compares the stored values.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            // Bits as well: `-0` and NaN payloads must stay distinguishable.
            Value::Float(f) => {
                serde_json::json!({"float": f.to_string(), "bits": format!("{:08x}", f.to_bits())})
            }
            Value::Double(d) => {
                serde_json::json!({"double": d.to_string(), "bits": format!("{:016x}", d.to_bits())})
            }
            Value::Text(s) => J::String(s.clone()),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) if self.ty.kind != TypeKind::Bit && self.ty.kind != TypeKind::Geometry => {
                    J::String(s.to_owned())
                }
                _ => {
                    serde_json::json!({"hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>()})
                }
            },
            other => J::String(other.to_string()),
        }
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A value's shape for error messages (never its content).
fn shape(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Int(_) | Value::UInt(_) => "integer",
        Value::Float(_) | Value::Double(_) => "float",
        Value::Decimal(_) => "decimal",
        Value::Date { .. } | Value::DateTime { .. } | Value::Time { .. } => "temporal",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    }
}

/// A readable rendering for operators and lock keys. Temporal values always print six
/// fractional digits so the rendering does not depend on the column's precision.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Double(x) => write!(f, "{x:?}"),
            Value::Decimal(s) => f.write_str(s),
            Value::Date { year, month, day } => write!(f, "{year:04}-{month:02}-{day:02}"),
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            } => write!(
                f,
                "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{micros:06}"
            ),
            Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => write!(
                f,
                "{}{hours:02}:{minutes:02}:{seconds:02}.{micros:06}",
                if *negative { "-" } else { "" }
            ),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                for byte in b {
                    write!(f, "{byte:02X}")?;
                }
                Ok(())
            }
        }
    }
}

fn decode(ty: &ColumnType, v: &mysql_async::Value, column: &str) -> Result<Value> {
    use mysql_async::Value as M;
    let bad = || Error::Decode {
        column: column.to_owned(),
        kind: ty.kind,
        got: describe(v),
    };
    if let M::NULL = v {
        return Ok(Value::Null);
    }
    let text = || match v {
        M::Bytes(b) => std::str::from_utf8(b).map_err(|_| bad()),
        _ => Err(bad()),
    };
    Ok(match ty.kind {
        TypeKind::Int | TypeKind::Year => {
            let unsigned = ty.unsigned || ty.kind == TypeKind::Year;
            match (v, unsigned) {
                (M::Int(i), false) => Value::Int(*i),
                (M::UInt(u), false) => Value::Int(i64::try_from(*u).map_err(|_| bad())?),
                // The binary protocol sends small unsigned types through Int.
                (M::Int(i), true) => Value::UInt(u64::try_from(*i).map_err(|_| bad())?),
                (M::UInt(u), true) => Value::UInt(*u),
                (M::Bytes(_), false) => Value::Int(text()?.parse().map_err(|_| bad())?),
                (M::Bytes(_), true) => Value::UInt(text()?.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        TypeKind::Float => match v {
            M::Float(x) => Value::Float(*x),
            M::Bytes(_) => {
                return Err(Error::InexactFloatText {
                    column: column.to_owned(),
                })
            }
            _ => return Err(bad()),
        },
        TypeKind::Double => match v {
            M::Double(x) => Value::Double(*x),
            // The server prints doubles with enough digits to round-trip (except -0).
            M::Bytes(_) => Value::Double(text()?.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        TypeKind::Decimal => {
            let s = text()?;
            if !is_decimal_literal(s) {
                return Err(bad());
            }
            Value::Decimal(s.to_owned())
        }
        TypeKind::Date => match v {
            M::Date(year, month, day, ..) => Value::Date {
                year: *year,
                month: *month,
                day: *day,
            },
            M::Bytes(_) => parse_date(text()?).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        TypeKind::DateTime | TypeKind::Timestamp => match v {
            M::Date(year, month, day, hour, minute, second, micros) => Value::DateTime {
                year: *year,
                month: *month,
                day: *day,
                hour: *hour,
                minute: *minute,
                second: *second,
                micros: *micros,
            },
            M::Bytes(_) => parse_datetime(text()?).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        TypeKind::Time => match v {
            M::Time(negative, days, hours, minutes, seconds, micros) => Value::Time {
                negative: *negative,
                // A day count past u32 hours is no TIME any server sends: refuse it rather
                // than store a wrapped value.
                hours: days
                    .checked_mul(24)
                    .and_then(|h| h.checked_add(u32::from(*hours)))
                    .ok_or_else(bad)?,
                minutes: *minutes,
                seconds: *seconds,
                micros: *micros,
            },
            M::Bytes(_) => parse_time(text()?).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        TypeKind::Text | TypeKind::Json | TypeKind::Enum | TypeKind::Set => {
            // The proxy's connections use utf8mb4, so the server converts every text column
            // to valid UTF-8; anything else means a misconfigured connection.
            Value::Text(text()?.to_owned())
        }
        TypeKind::Binary | TypeKind::Bit | TypeKind::Geometry => match v {
            M::Bytes(b) => Value::Bytes(b.clone()),
            _ => return Err(bad()),
        },
    })
}

/// What a bad cell looked like: its shape, never its content, because errors end up in
/// logs and row values must not (STYLE.md).
fn describe(v: &mysql_async::Value) -> String {
    use mysql_async::Value as M;
    match v {
        M::NULL => "NULL".into(),
        M::Bytes(b) => format!("a {}-byte string", b.len()),
        M::Int(_) => "a signed integer".into(),
        M::UInt(_) => "an unsigned integer".into(),
        M::Float(_) => "a float".into(),
        M::Double(_) => "a double".into(),
        M::Date(..) => "a date".into(),
        M::Time(..) => "a time".into(),
    }
}

fn is_decimal_literal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let mut parts = digits.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Fractional seconds as printed (1 to 6 digits) into microseconds.
fn micros(frac: &str) -> Option<u32> {
    if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{frac:0<6}");
    padded.parse().ok()
}

fn parse_date(s: &str) -> Option<Value> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some(Value::Date {
        year: num(y, 4)?,
        month: num(m, 2)?,
        day: num(d, 2)?,
    })
}

fn parse_datetime(s: &str) -> Option<Value> {
    let (date, time) = s.split_once(' ')?;
    let Value::Date { year, month, day } = parse_date(date)? else {
        return None;
    };
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, micros(frac)?),
        None => (time, 0),
    };
    let mut it = hms.split(':');
    let (h, mi, se) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some(Value::DateTime {
        year,
        month,
        day,
        hour: num(h, 2)?,
        minute: num(mi, 2)?,
        second: num(se, 2)?,
        micros: frac,
    })
}

fn parse_time(s: &str) -> Option<Value> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (hms, frac) = match rest.split_once('.') {
        Some((hms, frac)) => (hms, micros(frac)?),
        None => (rest, 0),
    };
    let mut it = hms.split(':');
    let (h, mi, se) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || h.len() < 2 || h.len() > 3 {
        return None;
    }
    Some(Value::Time {
        negative,
        hours: num(h, h.len())?,
        minutes: num(mi, 2)?,
        seconds: num(se, 2)?,
        micros: frac,
    })
}

mod f32_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(x.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(f32::from_bits(u32::deserialize(d)?))
    }
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

/// Bytes as base64 text: a JSON array of numbers would be ~4× the size of the blob.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::Value as M;
    use mysql_async::{consts::ColumnType as My, Column};

    fn col(t: My) -> Column {
        Column::new(t).with_name(b"c").with_character_set(45)
    }

    fn dec(c: &Column, v: M) -> TypedValue {
        TypedValue::from_mysql(&v, c).unwrap()
    }

    #[test]
    fn a_binary_time_too_long_for_its_hours_is_refused() {
        // Found by the undo_record fuzz target: `days * 24` overflowed (a panic in debug
        // builds, a wrong value in release ones).
        let c = col(My::MYSQL_TYPE_TIME);
        let huge = M::Time(false, 0x7f7f_7f7f, 127, 127, 127, 0);
        assert!(matches!(
            TypedValue::from_mysql(&huge, &c),
            Err(Error::Decode {
                kind: TypeKind::Time,
                ..
            })
        ));
        let edge = M::Time(true, u32::MAX / 24, 15, 0, 0, 0);
        assert!(TypedValue::from_mysql(&edge, &c).is_ok());
        let past = M::Time(true, u32::MAX / 24, 16, 0, 0, 0);
        assert!(TypedValue::from_mysql(&past, &c).is_err());
    }

    #[test]
    fn text_and_binary_protocol_decode_to_the_same_value() {
        let unsigned_big = col(My::MYSQL_TYPE_LONGLONG).with_flags(ColumnFlags::UNSIGNED_FLAG);
        assert_eq!(
            dec(&unsigned_big, M::Bytes(b"18446744073709551615".to_vec())),
            dec(&unsigned_big, M::UInt(u64::MAX))
        );
        let signed = col(My::MYSQL_TYPE_LONGLONG);
        assert_eq!(
            dec(&signed, M::Bytes(b"-9223372036854775808".to_vec())),
            dec(&signed, M::Int(i64::MIN))
        );
        let small_unsigned = col(My::MYSQL_TYPE_LONG).with_flags(ColumnFlags::UNSIGNED_FLAG);
        assert_eq!(
            dec(&small_unsigned, M::Int(4_294_967_295)).value,
            Value::UInt(4_294_967_295)
        );
        let dt = col(My::MYSQL_TYPE_DATETIME).with_decimals(6);
        assert_eq!(
            dec(&dt, M::Bytes(b"2024-02-29 23:59:59.000001".to_vec())),
            dec(&dt, M::Date(2024, 2, 29, 23, 59, 59, 1))
        );
        let dt3 = col(My::MYSQL_TYPE_TIMESTAMP).with_decimals(3);
        assert_eq!(
            dec(&dt3, M::Bytes(b"2024-01-01 00:00:00.120".to_vec())).value,
            dec(&dt3, M::Date(2024, 1, 1, 0, 0, 0, 120_000)).value
        );
        let t = col(My::MYSQL_TYPE_TIME).with_decimals(6);
        assert_eq!(
            dec(&t, M::Bytes(b"-838:59:59.000000".to_vec())),
            dec(&t, M::Time(true, 34, 22, 59, 59, 0))
        );
        let d = col(My::MYSQL_TYPE_DATE);
        assert_eq!(
            dec(&d, M::Bytes(b"0000-00-00".to_vec())),
            dec(&d, M::Date(0, 0, 0, 0, 0, 0, 0))
        );
        let dbl = col(My::MYSQL_TYPE_DOUBLE);
        assert_eq!(
            dec(&dbl, M::Bytes(b"0.30000000000000004".to_vec())),
            dec(&dbl, M::Double(0.1 + 0.2))
        );
        let year = col(My::MYSQL_TYPE_YEAR).with_flags(ColumnFlags::UNSIGNED_FLAG);
        assert_eq!(
            dec(&year, M::Bytes(b"2155".to_vec())),
            dec(&year, M::Int(2155))
        );
    }

    #[test]
    fn floats_compare_by_bits() {
        let f = col(My::MYSQL_TYPE_DOUBLE);
        assert_ne!(dec(&f, M::Double(-0.0)), dec(&f, M::Double(0.0)));
        assert_eq!(dec(&f, M::Double(f64::NAN)), dec(&f, M::Double(f64::NAN)));
    }

    #[test]
    fn text_protocol_float_is_refused() {
        let f = col(My::MYSQL_TYPE_FLOAT);
        let err = TypedValue::from_mysql(&M::Bytes(b"1.23457".to_vec()), &f).unwrap_err();
        assert!(matches!(err, Error::InexactFloatText { .. }), "{err}");
    }

    #[test]
    fn charset_decides_text_or_binary() {
        let bin = col(My::MYSQL_TYPE_BLOB).with_character_set(BINARY_CHARSET);
        assert_eq!(
            dec(&bin, M::Bytes(vec![0, 255, 0])).value,
            Value::Bytes(vec![0, 255, 0])
        );
        let txt = col(My::MYSQL_TYPE_VAR_STRING);
        assert_eq!(
            dec(&txt, M::Bytes("é😀".as_bytes().to_vec())).value,
            Value::Text("é😀".into())
        );
        assert!(TypedValue::from_mysql(&M::Bytes(vec![0xff]), &txt).is_err());
        let en = col(My::MYSQL_TYPE_STRING).with_flags(ColumnFlags::ENUM_FLAG);
        assert_eq!(dec(&en, M::Bytes(b"a".to_vec())).ty.kind, TypeKind::Enum);
    }

    #[test]
    fn malformed_values_are_errors_not_guesses() {
        let dec_col = col(My::MYSQL_TYPE_NEWDECIMAL).with_decimals(2);
        for bad in ["1e5", "", "1.", ".5", "abc", "1.2.3"] {
            assert!(
                TypedValue::from_mysql(&M::Bytes(bad.as_bytes().to_vec()), &dec_col).is_err(),
                "{bad}"
            );
        }
        let signed = col(My::MYSQL_TYPE_LONGLONG);
        assert!(TypedValue::from_mysql(&M::UInt(u64::MAX), &signed).is_err());
        let dt = col(My::MYSQL_TYPE_DATETIME);
        for bad in [
            "2024-01-01",
            "2024-01-01 1:00:00",
            "2024-01-01 10:00:00.1234567",
        ] {
            assert!(
                TypedValue::from_mysql(&M::Bytes(bad.as_bytes().to_vec()), &dt).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn to_mysql_round_trips_through_decode() {
        let cases = [
            (col(My::MYSQL_TYPE_LONGLONG), M::Int(i64::MIN)),
            (
                col(My::MYSQL_TYPE_LONGLONG).with_flags(ColumnFlags::UNSIGNED_FLAG),
                M::UInt(u64::MAX),
            ),
            (col(My::MYSQL_TYPE_FLOAT), M::Float(-0.0)),
            (col(My::MYSQL_TYPE_DOUBLE), M::Double(f64::MIN_POSITIVE)),
            (
                col(My::MYSQL_TYPE_DATETIME2).with_decimals(6),
                M::Date(9999, 12, 31, 23, 59, 59, 999_999),
            ),
            (
                col(My::MYSQL_TYPE_TIME).with_decimals(6),
                M::Time(false, 34, 22, 59, 59, 999_999),
            ),
            (col(My::MYSQL_TYPE_BIT), M::Bytes(vec![0x02, 0xaa])),
        ];
        for (c, v) in cases {
            let tv = dec(&c, v);
            assert_eq!(dec(&c, tv.to_mysql()), tv);
        }
    }

    #[test]
    fn display_is_precision_independent() {
        let v = Value::DateTime {
            year: 2024,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
            micros: 60,
        };
        assert_eq!(v.to_string(), "2024-01-02 03:04:05.000060");
        assert_eq!(Value::Bytes(vec![0, 0xab]).to_string(), "0x00AB");
    }
}
