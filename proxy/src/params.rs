//! A client's statement parameters sent on with the types the client gave them.
//!
//! Where the proxy needs a parameter's value (an AT image read, a write narrowed to locked
//! keys, a guarded statement) it decodes it into a `Value`, and mysql_async encodes a
//! `Value` with a type of its own choosing: every string as VAR_STRING, every date as
//! DATETIME. The server gives a parameter's type meaning. A DECIMAL parameter computes
//! exactly where a string one computes in DOUBLE (`balance - ?` with `0.0000000001`
//! on a DECIMAL(30,10) of 20 integer digits loses the fraction); a BLOB parameter compares
//! as binary where a string one takes the column's collation (`name = ?` with `abc`
//! matching `ABC`); a DATE written into a string column is `2024-02-29`, a DATETIME
//! `2024-02-29 00:00:00`. So the values the client sent keep the client's types here: the
//! execute is encoded as mysql_async would, then each such parameter's type byte is put
//! back where the value's encoding is that type's too.

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{BinaryProtocol, Conn, Params, QueryResult, Statement, Value};
use mysql_common::packets::ComStmtExecuteRequestBuilder;
use mysql_common::proto::MySerialize;

/// A parameter's type as the client bound it.
pub type ParamType = (ColumnType, ColumnFlags);

/// Whether `value`, as mysql_common encodes it, is also an encoding of type `ty`: strings
/// (length-encoded bytes) for the string and exact-number types, the date structure for
/// the date and time-of-day types.
fn keeps(value: &Value, ty: ColumnType) -> bool {
    use ColumnType::*;
    match value {
        Value::Bytes(_) => matches!(
            ty,
            MYSQL_TYPE_DECIMAL
                | MYSQL_TYPE_NEWDECIMAL
                | MYSQL_TYPE_STRING
                | MYSQL_TYPE_VARCHAR
                | MYSQL_TYPE_TINY_BLOB
                | MYSQL_TYPE_MEDIUM_BLOB
                | MYSQL_TYPE_LONG_BLOB
                | MYSQL_TYPE_BLOB
        ),
        Value::Date(..) => matches!(
            ty,
            MYSQL_TYPE_DATE | MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_NEWDATE
        ),
        _ => false,
    }
}

/// The COM_STMT_EXECUTE body (after the command byte) of `stmt_id` with `values`, where
/// `types[i]` is the client's type of `values[i]` (`types` may be shorter: the values
/// after it are the proxy's own). `None` when no type needs putting back, or when the
/// values are too large for one packet (mysql_async then sends them as long data).
pub fn typed_body(stmt_id: u32, values: &[Value], types: &[ParamType]) -> Option<Vec<u8>> {
    if !values
        .iter()
        .zip(types)
        .any(|(v, &(ty, _))| keeps(v, ty) && ty != ColumnType::MYSQL_TYPE_VAR_STRING)
    {
        return None;
    }
    let (request, as_long_data) = ComStmtExecuteRequestBuilder::new(stmt_id).build(values);
    if as_long_data {
        return None;
    }
    let mut body = Vec::new();
    request.serialize(&mut body);
    // command (1), statement id (4), flags (1), iterations (4), NULL bitmap, bound flag (1).
    let types_at = 1 + 4 + 1 + 4 + values.len().div_ceil(8) + 1;
    for (i, (v, &(ty, _))) in values.iter().zip(types).enumerate() {
        if keeps(v, ty) {
            body[types_at + 2 * i] = ty as u8;
        }
    }
    body.remove(0);
    Some(body)
}

/// Executes `stmt` with `values` (the first `types.len()` of them typed as the client
/// typed them), leaving the result pending on `conn` as `exec_iter` does.
pub async fn exec_pending(
    conn: &mut Conn,
    stmt: &Statement,
    values: Vec<Value>,
    types: &[ParamType],
) -> Result<(), mysql_async::Error> {
    match typed_body(stmt.id(), &values, types) {
        Some(body) => conn.exec_raw(stmt, &body).await,
        None => {
            let params = if values.is_empty() {
                Params::Empty
            } else {
                Params::Positional(values)
            };
            conn.exec_iter(stmt, params).await.map(drop)
        }
    }
}

/// [`exec_pending`], its result read and dropped (`exec_drop`).
pub async fn exec_drop(
    conn: &mut Conn,
    stmt: &Statement,
    values: Vec<Value>,
    types: &[ParamType],
) -> Result<(), mysql_async::Error> {
    exec_pending(conn, stmt, values, types).await?;
    QueryResult::<BinaryProtocol>::new(conn).drop_result().await
}

/// [`exec_pending`], the rows of its first result collected (`exec`).
pub async fn exec_rows(
    conn: &mut Conn,
    stmt: &Statement,
    values: Vec<Value>,
    types: &[ParamType],
) -> Result<Vec<mysql_async::Row>, mysql_async::Error> {
    exec_pending(conn, stmt, values, types).await?;
    QueryResult::<BinaryProtocol>::new(conn)
        .collect_and_drop()
        .await
}

/// `types[range]`, or nothing when the statement came as text (no types).
pub fn slice(
    types: &[ParamType],
    range: impl std::slice::SliceIndex<[ParamType], Output = [ParamType]>,
) -> &[ParamType] {
    types.get(range).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_and_a_date_keep_their_types() {
        let values = [
            Value::Bytes(b"0.5".to_vec()),
            Value::Date(2024, 2, 29, 0, 0, 0, 0),
            Value::Int(7),
            Value::Bytes(b"key".to_vec()),
        ];
        let types = [
            (ColumnType::MYSQL_TYPE_NEWDECIMAL, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_DATE, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_TINY, ColumnFlags::empty()),
        ];
        let body = typed_body(9, &values, &types).expect("types to put back");
        assert_eq!(&body[..4], &9u32.to_le_bytes());
        let at = 4 + 1 + 4 + 1 + 1;
        assert_eq!(
            &body[at..at + 8],
            &[
                ColumnType::MYSQL_TYPE_NEWDECIMAL as u8,
                0,
                ColumnType::MYSQL_TYPE_DATE as u8,
                0,
                // An integer stays mysql_common's LONGLONG (8 bytes follow, not 1).
                ColumnType::MYSQL_TYPE_LONGLONG as u8,
                0,
                // The proxy's own value after the client's: its own type.
                ColumnType::MYSQL_TYPE_VAR_STRING as u8,
                0,
            ]
        );
    }

    #[test]
    fn nothing_to_put_back_is_left_to_mysql_async() {
        let values = [Value::Bytes(b"x".to_vec()), Value::Int(1)];
        let types = [
            (ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::empty()),
            (ColumnType::MYSQL_TYPE_LONG, ColumnFlags::empty()),
        ];
        assert_eq!(typed_body(1, &values, &types), None);
        assert_eq!(typed_body(1, &values, &[]), None);
    }
}
