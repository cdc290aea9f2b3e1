//! Table metadata and row images.
//!
//! [`TableMeta`] is what undo needs to know about a table beyond the rows themselves: the
//! primary key (to find a row again), the `ON UPDATE CURRENT_TIMESTAMP` columns (which the
//! server changes behind the statement's back) and the auto-increment column (to derive the
//! keys of inserted rows). It is read from information_schema and cached per table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::value::{ColumnType, TypeKind, TypedValue};

/// A table's fully qualified name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            table: table.into(),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// One column as information_schema describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMeta {
    pub name: String,
    pub ty: ColumnType,
    /// `ON UPDATE CURRENT_TIMESTAMP`: the server rewrites it on every row change, so undo
    /// must restore it explicitly and the dirty check must not compare it (AT_NOTES).
    pub on_update_now: bool,
    pub auto_increment: bool,
    /// A generated (VIRTUAL or STORED) column: the server computes it and refuses explicit
    /// values, so undo never writes it (it is still compared).
    #[serde(default)]
    pub generated: bool,
    /// INVISIBLE: left out of `SELECT *` and of an INSERT without a column list.
    #[serde(default)]
    pub invisible: bool,
    pub nullable: bool,
}

/// What undo needs to know about a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    pub name: TableName,
    /// In ordinal order.
    pub columns: Vec<ColumnMeta>,
    /// Primary-key column names in key order; never empty (tables without one are refused).
    pub primary_key: Vec<String>,
    /// Other UNIQUE indexes, each its columns in index order: INSERT … ON DUPLICATE KEY
    /// UPDATE can hit an existing row through any of them.
    #[serde(default)]
    pub unique_keys: Vec<Vec<String>>,
    /// Storage engine. Only transactional engines can hold a branch: a write to MyISAM
    /// survives the local rollback that must undo it.
    #[serde(default)]
    pub engine: String,
    /// Triggers on the table: they write rows the images never see.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Foreign keys of other tables that reference this one and change child rows
    /// themselves (CASCADE, SET NULL, SET DEFAULT): those child changes would have no undo.
    #[serde(default)]
    pub cascades: Vec<Cascade>,
    /// The table's definition as [`MetaCache::definition_query`] reads it, taken before the
    /// rest was loaded: a later read that differs means the table changed since (DDL made
    /// anywhere, through any client), and this metadata must not be used.
    #[serde(default)]
    pub definition: String,
}

/// A foreign key referencing a table, with the actions that rewrite child rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cascade {
    /// `schema.table.constraint` of the child's foreign key.
    pub constraint: String,
    /// The referenced columns of this (the parent) table.
    pub columns: Vec<String>,
    /// ON DELETE rewrites children.
    pub on_delete: bool,
    /// ON UPDATE rewrites children.
    pub on_update: bool,
}

impl TableMeta {
    /// Reads a table's columns and primary key from information_schema.
    ///
    /// Fails with [`Error::NoPrimaryKey`] for tables without a primary key: AT mode cannot
    /// find such rows again, so writes to them must be refused.
    pub async fn load(conn: &mut mysql_async::Conn, schema: &str, table: &str) -> Result<Self> {
        Self::load_with(conn, schema, table, String::new()).await
    }

    /// [`Self::load`] with the definition fingerprint read just before (see
    /// [`MetaCache::definition_query`]).
    async fn load_with(
        conn: &mut mysql_async::Conn,
        schema: &str,
        table: &str,
        definition: String,
    ) -> Result<Self> {
        // The stored spelling: with lower_case_table_names the statement's spelling may
        // differ, and lock keys must name a table one way only.
        let found: Vec<(String, String, Option<String>, String)> = conn
            .exec(
                "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_TYPE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (schema, table),
            )
            .await?;
        let Some((schema, table, engine, table_type)) = found
            .iter()
            .find(|(s, t, ..)| s == schema && t == table)
            .or(found.first())
            .cloned()
        else {
            return Err(Error::UnknownTable {
                schema: schema.into(),
                table: table.into(),
            });
        };
        let (schema, table) = (schema.as_str(), table.as_str());
        if table_type == "VIEW" {
            return Err(Error::Refused(format!(
                "writing through view `{schema}`.`{table}` (write to its base table, whose \
                 primary key the images need)"
            )));
        }
        let engine = engine.unwrap_or_default();
        type ColumnRow = (
            String,
            String,
            String,
            Option<u64>,
            Option<u64>,
            Option<String>,
            String,
            String,
            String,
        );
        let rows: Vec<ColumnRow> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_SCALE, DATETIME_PRECISION, \
                 CHARACTER_SET_NAME, EXTRA, IS_NULLABLE, IS_GENERATED \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (schema, table),
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::UnknownTable {
                schema: schema.into(),
                table: table.into(),
            });
        }
        let mut columns = Vec::with_capacity(rows.len());
        for (name, data_type, column_type, scale, fsp, charset, extra, nullable, generated) in rows
        {
            let ty = column_type_from_schema(
                &name,
                &data_type,
                &column_type,
                scale.or(fsp).unwrap_or(0),
                charset.is_some(),
            )?;
            let extra = extra.to_ascii_lowercase();
            columns.push(ColumnMeta {
                name,
                ty,
                on_update_now: extra.contains("on update current_timestamp"),
                auto_increment: extra.contains("auto_increment"),
                // Not EXTRA: MySQL 8 writes DEFAULT_GENERATED there for expression defaults.
                generated: generated.eq_ignore_ascii_case("ALWAYS"),
                invisible: extra.contains("invisible"),
                nullable: nullable.eq_ignore_ascii_case("YES"),
            });
        }
        let primary_key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
                 ORDER BY SEQ_IN_INDEX",
                (schema, table),
            )
            .await?;
        if primary_key.is_empty() {
            return Err(Error::NoPrimaryKey {
                schema: schema.into(),
                table: table.into(),
            });
        }
        let mut unique_keys: Vec<(String, Vec<String>)> = Vec::new();
        let index_columns: Vec<(String, String)> = conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
                 AND INDEX_NAME <> 'PRIMARY' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (schema, table),
            )
            .await?;
        for (index, column) in index_columns {
            match unique_keys.last_mut() {
                Some((name, cols)) if *name == index => cols.push(column),
                _ => unique_keys.push((index, vec![column])),
            }
        }
        let triggers: Vec<String> = conn
            .exec(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
                 WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ? ORDER BY TRIGGER_NAME",
                (schema, table),
            )
            .await?;
        let fk_columns: Vec<(String, String, String, String, String, String)> = conn
            .exec(
                "SELECT k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.REFERENCED_COLUMN_NAME, \
                 r.UPDATE_RULE, r.DELETE_RULE \
                 FROM information_schema.KEY_COLUMN_USAGE k \
                 JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
                 ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA \
                 AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME AND r.TABLE_NAME = k.TABLE_NAME \
                 WHERE k.REFERENCED_TABLE_SCHEMA = ? AND k.REFERENCED_TABLE_NAME = ? \
                 ORDER BY k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.POSITION_IN_UNIQUE_CONSTRAINT",
                (schema, table),
            )
            .await?;
        let rewrites = |rule: &str| !matches!(rule, "RESTRICT" | "NO ACTION");
        let mut cascades: Vec<Cascade> = Vec::new();
        for (child_schema, child, name, column, on_update, on_delete) in fk_columns {
            let (on_update, on_delete) = (rewrites(&on_update), rewrites(&on_delete));
            if !on_update && !on_delete {
                continue;
            }
            let constraint = format!("{child_schema}.{child}.{name}");
            match cascades.last_mut() {
                Some(c) if c.constraint == constraint => c.columns.push(column),
                _ => cascades.push(Cascade {
                    constraint,
                    columns: vec![column],
                    on_delete,
                    on_update,
                }),
            }
        }
        Ok(TableMeta {
            name: TableName::new(schema, table),
            columns,
            primary_key,
            unique_keys: unique_keys.into_iter().map(|(_, cols)| cols).collect(),
            engine,
            triggers,
            cascades,
            definition,
        })
    }

    /// The select list of an image: the primary key first, then every other column, each
    /// qualified by `qualifier` when given (`t`.`c`). TIMESTAMP columns are read as
    /// `UNIX_TIMESTAMP(c) AS c`: the value then does not depend on the session time zone
    /// of the client connection the image is read on ([`Row::from_image`] converts back).
    pub fn image_columns(&self, qualifier: Option<&str>) -> String {
        let mut names: Vec<&str> = self.primary_key.iter().map(String::as_str).collect();
        for c in &self.columns {
            if !names.contains(&c.name.as_str()) {
                names.push(&c.name);
            }
        }
        let prefix = qualifier.map(|q| format!("{q}.")).unwrap_or_default();
        names
            .iter()
            .map(|name| {
                let quoted = crate::undo_sql::quote_ident(name);
                match self.column(name) {
                    Some(c) if c.ty.kind == TypeKind::Timestamp => {
                        format!("UNIX_TIMESTAMP({prefix}{quoted}) AS {quoted}")
                    }
                    _ if qualifier.is_some() => format!("{prefix}{quoted} AS {quoted}"),
                    _ => format!("{prefix}{quoted}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn column(&self, name: &str) -> Option<&ColumnMeta> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn on_update_now_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.on_update_now)
            .map(|c| c.name.as_str())
    }

    pub fn generated_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.generated)
            .map(|c| c.name.as_str())
    }

    pub fn auto_increment_column(&self) -> Option<&ColumnMeta> {
        self.columns.iter().find(|c| c.auto_increment)
    }
}

/// Maps information_schema's description onto the same [`ColumnType`] a result set gives.
fn column_type_from_schema(
    name: &str,
    data_type: &str,
    column_type: &str,
    decimals: u64,
    has_charset: bool,
) -> Result<ColumnType> {
    let data_type = data_type.to_ascii_lowercase();
    let kind = match data_type.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => TypeKind::Int,
        "year" => TypeKind::Year,
        "float" => TypeKind::Float,
        "double" | "real" | "double precision" => TypeKind::Double,
        "decimal" | "numeric" => TypeKind::Decimal,
        "date" => TypeKind::Date,
        "datetime" => TypeKind::DateTime,
        "timestamp" => TypeKind::Timestamp,
        "time" => TypeKind::Time,
        "json" => TypeKind::Json,
        "bit" => TypeKind::Bit,
        "enum" => TypeKind::Enum,
        "set" => TypeKind::Set,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if has_charset => {
            TypeKind::Text
        }
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "binary"
        | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "vector" => {
            TypeKind::Binary
        }
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => TypeKind::Geometry,
        _ => {
            return Err(Error::UnsupportedType {
                column: name.into(),
                ty: column_type.into(),
            })
        }
    };
    let unsigned = matches!(kind, TypeKind::Int | TypeKind::Year)
        && (kind == TypeKind::Year || column_type.to_ascii_lowercase().contains("unsigned"));
    let decimals = match kind {
        TypeKind::Decimal | TypeKind::DateTime | TypeKind::Timestamp | TypeKind::Time => {
            u8::try_from(decimals).unwrap_or(u8::MAX)
        }
        _ => 0,
    };
    Ok(ColumnType {
        kind,
        unsigned,
        decimals,
    })
}

/// Table metadata per `schema.table`, loaded on first use and never trusted blindly.
///
/// A table's shape can change under a running proxy: DDL through this proxy, another
/// proxy, a migration tool or the mysql CLI. Metadata that no longer matches would undo
/// the wrong columns, miss a trigger's or a cascade's writes, or lock the wrong keys. So
/// the proxy clears the cache after DDL it relays, and before every AT write compares the
/// table's definition fingerprint ([`Self::definition_query`], one round trip) with the one the
/// cached metadata was loaded under; a difference reloads it. The fingerprint query also
/// opens the table, so the statement holds the table's metadata lock from then on: no
/// DDL on it can complete before the local transaction ends.
#[derive(Debug, Default)]
pub struct MetaCache {
    // A std Mutex is enough: it is never held across the `.await` of a load.
    tables: Mutex<HashMap<TableName, Arc<TableMeta>>>,
    /// Foreign keys referencing a table are fingerprinted from any schema through
    /// `information_schema.INNODB_SYS_FOREIGN` (cheap) while the backend user may read it
    /// (it needs PROCESS); otherwise from REFERENTIAL_CONSTRAINTS of the table's own
    /// schema. Set once the first read was refused.
    schema_only_foreign_keys: std::sync::atomic::AtomicBool,
}

impl MetaCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &TableName) -> Option<Arc<TableMeta>> {
        self.lock().get(name).cloned()
    }

    /// The cached metadata, or loads it through `conn`. Two concurrent first uses may both
    /// load; the results are identical, so the later insert is harmless.
    pub async fn get_or_load(
        &self,
        conn: &mut mysql_async::Conn,
        schema: &str,
        table: &str,
    ) -> Result<Arc<TableMeta>> {
        let name = TableName::new(schema, table);
        if let Some(meta) = self.get(&name) {
            return Ok(meta);
        }
        self.load(conn, schema, table).await
    }

    /// Loads the table's metadata afresh (fingerprint first, then the rest) and caches it.
    pub async fn load(
        &self,
        conn: &mut mysql_async::Conn,
        schema: &str,
        table: &str,
    ) -> Result<Arc<TableMeta>> {
        let definition = self.definition(conn, schema, table).await?;
        let meta = Arc::new(TableMeta::load_with(conn, schema, table, definition).await?);
        // Cached under the statement's spelling and the stored one: both find it.
        let mut tables = self.lock();
        tables.insert(TableName::new(schema, table), meta.clone());
        tables.insert(meta.name.clone(), meta.clone());
        Ok(meta)
    }

    /// Reads the table's definition fingerprint through `conn` (see
    /// [`Self::definition_query`]). Fails with 1146 when the table does not exist.
    pub async fn definition(
        &self,
        conn: &mut mysql_async::Conn,
        schema: &str,
        table: &str,
    ) -> Result<String> {
        use std::sync::atomic::Ordering;
        let name = TableName::new(schema, table);
        match read_definition(conn, &self.definition_query(&name)).await {
            // ER_SPECIFIC_ACCESS_DENIED_ERROR (needs PROCESS), ER_DBACCESS_DENIED_ERROR,
            // ER_TABLEACCESS_DENIED_ERROR: fall back to the schema's own constraints.
            Err(Error::Mysql(mysql_async::Error::Server(e)))
                if matches!(e.code, 1227 | 1044 | 1142) && !self.schema_only() =>
            {
                tracing::info!(
                    "information_schema.INNODB_SYS_FOREIGN is not readable by the backend user \
                     ({}); foreign keys referencing a table are checked within its own schema",
                    e.message
                );
                self.schema_only_foreign_keys.store(true, Ordering::Relaxed);
                read_definition(conn, &self.definition_query(&name)).await
            }
            other => other,
        }
    }

    /// Two statements sent as one query: the first reads the table itself (which takes
    /// its metadata lock for the rest of the local transaction, so no DDL on it can
    /// complete until then), its triggers and the foreign keys that may reference it; the
    /// second is `SHOW CREATE TABLE` (columns, types, defaults, keys, engine), printed
    /// under a fixed sql_mode so every client session reads the same text. Together they
    /// cover everything [`TableMeta`] describes, at a fraction of the cost of reading
    /// information_schema's COLUMNS and STATISTICS (measured: about 0.4 ms of server time
    /// against 1.2 ms). Names travel as hex literals: no quoting depends on the session.
    pub fn definition_query(&self, name: &TableName) -> String {
        let lit = |s: &str| {
            let hex = crate::undo_sql::hex_digits(s.as_bytes());
            if hex.is_empty() {
                "''".to_string()
            } else {
                // An introducer, not CONVERT(): information_schema uses the schema and
                // table names as lookup keys only when they are constants of this form
                // (CONVERT() made the trigger lookup scan every table: 0.84 ms against
                // 0.25 ms here on a small schema).
                format!("_utf8mb4 X'{hex}'")
            }
        };
        let (schema, table) = (lit(&name.schema), lit(&name.table));
        let foreign = if self.schema_only() {
            format!(
                "SELECT GROUP_CONCAT(TABLE_NAME, '.', CONSTRAINT_NAME, ' ', UPDATE_RULE, ' ', \
                 DELETE_RULE ORDER BY TABLE_NAME, CONSTRAINT_NAME SEPARATOR ',') \
                 FROM information_schema.REFERENTIAL_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = {schema} AND REFERENCED_TABLE_NAME = {table}"
            )
        } else {
            let fingerprint = "SELECT CONCAT(COUNT(*), ':', IFNULL(SUM(CRC32(CONCAT_WS(' ', \
                               ID, FOR_NAME, REF_NAME, TYPE))), 0)) \
                               FROM information_schema.INNODB_SYS_FOREIGN";
            match innodb_name(name) {
                // The foreign keys that reference this table, from any schema: what
                // `TableMeta::cascades` describes. The column's collation compares
                // without case, so with lower_case_table_names InnoDB's lowercase copy
                // still matches (and without it, a twin differing in case only adds
                // its keys: a change there reloads this table needlessly, never misses).
                Some(referenced) => format!("{fingerprint} WHERE REF_NAME = {}", lit(&referenced)),
                // Server-wide: any new, dropped or changed foreign key anywhere changes it.
                None => fingerprint.to_string(),
            }
        };
        let quoted = crate::undo_sql::quote_table(name);
        format!(
            "SELECT (SELECT 1 FROM {quoted} LIMIT 0), \
             (SELECT GROUP_CONCAT(TRIGGER_NAME, ' ', EVENT_MANIPULATION, ' ', ACTION_TIMING \
             ORDER BY TRIGGER_NAME SEPARATOR ',') FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = {schema} AND EVENT_OBJECT_TABLE = {table}), \
             ({foreign}); \
             SET STATEMENT sql_mode = '', sql_quote_show_create = 1 FOR SHOW CREATE TABLE {quoted}"
        )
    }

    /// Whether foreign keys are fingerprinted within the table's schema only.
    pub fn schema_only(&self) -> bool {
        self.schema_only_foreign_keys
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn invalidate(&self, name: &TableName) {
        self.lock().retain(|k, m| k != name && &m.name != name);
    }

    /// Forgets every table: after DDL the proxy relayed (a new child table's foreign key
    /// changes its parent's metadata, so no single entry is enough).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, Arc<TableMeta>>> {
        // A panic while holding the lock cannot leave the map half-updated (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `schema/table` as InnoDB's dictionary (INNODB_SYS_FOREIGN's REF_NAME) spells it, when
/// that is certain: its file-name encoding leaves `[A-Za-z0-9_]` as they are and turns
/// anything else into `@` codes (`my-db` is `my@002ddb`). `None` for other names, which
/// keep the server-wide fingerprint. Filtering by table matters: fingerprinted
/// server-wide, a foreign key created or dropped in any other database (another
/// service's migration) made every busy table look changed, and the global
/// transactions that had skipped its definition read rolled back at commit (1402).
fn innodb_name(name: &TableName) -> Option<String> {
    let plain =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (plain(&name.schema) && plain(&name.table)).then(|| format!("{}/{}", name.schema, name.table))
}

/// Runs [`MetaCache::definition_query`] and joins what it read into one fingerprint. The
/// table's `AUTO_INCREMENT=` option is left out: it moves with every insert.
async fn read_definition(conn: &mut mysql_async::Conn, query: &str) -> Result<String> {
    // Rows, not typed tuples: a view's SHOW CREATE has other columns, and a conversion
    // that does not fit must not panic.
    let mut result = conn.query_iter(query).await?;
    let first: Vec<mysql_async::Row> = result.collect().await?;
    let create: Vec<mysql_async::Row> = result.collect().await?;
    drop(result);
    let text = |rows: &[mysql_async::Row], i: usize| -> String {
        match rows.first().and_then(|r| r.as_ref(i)) {
            Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        }
    };
    Ok(format!(
        "{}\ntriggers: {}\nforeign keys: {}",
        strip_auto_increment(&text(&create, 1)),
        text(&first, 1),
        text(&first, 2)
    ))
}

/// `… AUTO_INCREMENT=123 …` without that option.
fn strip_auto_increment(create: &str) -> String {
    const OPTION: &str = " AUTO_INCREMENT=";
    let Some(at) = create.rfind(OPTION) else {
        return create.to_string();
    };
    // The table options follow the closing parenthesis of the column list.
    if create[..at].rfind(')').is_none() {
        return create.to_string();
    }
    let digits = create[at + OPTION.len()..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    format!("{}{}", &create[..at], &create[at + OPTION.len() + digits..])
}

/// One row: column name → value, in the order the SELECT returned them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Row {
    pub cells: Vec<(String, TypedValue)>,
}

impl Row {
    pub fn new(cells: Vec<(String, TypedValue)>) -> Self {
        Row { cells }
    }

    /// Decodes a result-set row (text or binary protocol).
    pub fn from_mysql(row: &mysql_async::Row) -> Result<Self> {
        let columns = row.columns_ref();
        let mut cells = Vec::with_capacity(columns.len());
        for (i, col) in columns.iter().enumerate() {
            let name = col.name_str().into_owned();
            // `None` means the caller already took the value out of the row.
            let value = row
                .as_ref(i)
                .ok_or_else(|| Error::MissingColumn(name.clone()))?;
            let value = TypedValue::from_mysql(value, col)?;
            cells.push((name, value));
        }
        Ok(Row { cells })
    }

    /// Decodes a row read by a phase-one image SELECT (see [`TableMeta::image_columns`]):
    /// TIMESTAMP columns arrive as `UNIX_TIMESTAMP(col)` and become UTC values.
    pub fn from_image(row: &mysql_async::Row, meta: &TableMeta) -> Result<Self> {
        let mut out = Row::from_mysql(row)?;
        for (name, value) in out.cells.iter_mut() {
            if let Some(col) = meta
                .column(name)
                .filter(|c| c.ty.kind == TypeKind::Timestamp)
            {
                if value.ty.kind != TypeKind::Timestamp {
                    *value = TypedValue::timestamp_from_epoch(col.ty.clone(), &value.value, name)?;
                }
            }
        }
        Ok(out)
    }

    /// The row as a JSON object (column → [`TypedValue::to_json`]), in column order.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::with_capacity(self.cells.len());
        for (name, value) in &self.cells {
            map.insert(name.clone(), value.to_json());
        }
        serde_json::Value::Object(map)
    }

    pub fn get(&self, column: &str) -> Option<&TypedValue> {
        self.cells.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.cells.iter().map(|(c, _)| c.as_str())
    }

    /// The row's primary-key values in key order.
    pub fn primary_key(&self, pk_columns: &[String]) -> Result<Vec<&TypedValue>> {
        pk_columns
            .iter()
            .map(|c| {
                let v = self.get(c).ok_or_else(|| Error::MissingColumn(c.clone()))?;
                if v.is_null() {
                    return Err(Error::NullPrimaryKey(c.clone()));
                }
                Ok(v)
            })
            .collect()
    }
}

/// The rows of one table a statement touched, before or after it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowImage {
    pub table: TableName,
    pub rows: Vec<Row>,
}

impl RowImage {
    pub fn new(table: TableName, rows: Vec<Row>) -> Self {
        RowImage { table, rows }
    }

    pub fn empty(table: TableName) -> Self {
        RowImage {
            table,
            rows: Vec::new(),
        }
    }

    pub fn from_mysql(table: TableName, rows: &[mysql_async::Row]) -> Result<Self> {
        let rows = rows.iter().map(Row::from_mysql).collect::<Result<_>>()?;
        Ok(RowImage { table, rows })
    }

    /// Rows of a phase-one image SELECT; see [`Row::from_image`].
    pub fn from_image(meta: &TableMeta, rows: &[mysql_async::Row]) -> Result<Self> {
        let rows = rows
            .iter()
            .map(|r| Row::from_image(r, meta))
            .collect::<Result<_>>()?;
        Ok(RowImage {
            table: meta.name.clone(),
            rows,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Finds the row with this primary key.
    pub fn find(&self, pk_columns: &[String], key: &[&TypedValue]) -> Result<Option<&Row>> {
        for row in &self.rows {
            if row.primary_key(pk_columns)?.as_slice() == key {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn tv(kind: TypeKind, v: Value) -> TypedValue {
        TypedValue::new(ColumnType::new(kind), v)
    }

    #[test]
    fn innodb_spells_only_plain_names_as_they_are() {
        let name = |s: &str, t: &str| innodb_name(&TableName::new(s, t));
        assert_eq!(
            name("Shop_2", "order_items"),
            Some("Shop_2/order_items".into())
        );
        // InnoDB writes these with `@` codes (`my@002ddb`): fingerprinted server-wide.
        for (s, t) in [
            ("my-db", "t"),
            ("db", "a b"),
            ("db", "ä"),
            ("db", "t$"),
            ("", "t"),
        ] {
            assert_eq!(name(s, t), None, "{s}.{t}");
        }
        let cache = MetaCache::new();
        let q = cache.definition_query(&TableName::new("db", "t"));
        assert!(
            q.contains("INNODB_SYS_FOREIGN WHERE REF_NAME = _utf8mb4 X'64622F74'"),
            "{q}"
        );
        let q = cache.definition_query(&TableName::new("my-db", "t"));
        assert!(q.contains("INNODB_SYS_FOREIGN)"), "{q}");
    }

    #[test]
    fn composite_and_binary_primary_keys() {
        let uuid: Vec<u8> = (0u8..16).collect();
        let row = Row::new(vec![
            ("name".into(), tv(TypeKind::Text, Value::Text("ä b".into()))),
            (
                "id".into(),
                tv(TypeKind::Binary, Value::Bytes(uuid.clone())),
            ),
            ("n".into(), tv(TypeKind::Int, Value::Int(1))),
        ]);
        let pk = vec!["id".to_string(), "name".to_string()];
        let key = row.primary_key(&pk).unwrap();
        assert_eq!(key[0].value, Value::Bytes(uuid));
        assert_eq!(key[1].value, Value::Text("ä b".into()));
        let image = RowImage::new(TableName::new("s", "t"), vec![row.clone()]);
        assert_eq!(image.find(&pk, &key).unwrap(), Some(&row));
        assert!(matches!(
            row.primary_key(&["missing".into()]),
            Err(Error::MissingColumn(_))
        ));
    }

    #[test]
    fn null_primary_key_is_an_error() {
        let row = Row::new(vec![("id".into(), tv(TypeKind::Int, Value::Null))]);
        assert!(matches!(
            row.primary_key(&["id".into()]),
            Err(Error::NullPrimaryKey(_))
        ));
    }

    #[test]
    fn auto_increment_option_is_not_part_of_the_definition() {
        let a = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  PRIMARY KEY \
                 (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=17 DEFAULT CHARSET=latin1";
        let b = a.replace("=17", "=18");
        assert_eq!(strip_auto_increment(a), strip_auto_increment(&b));
        assert!(strip_auto_increment(a).contains("NOT NULL AUTO_INCREMENT,"));
        assert!(!strip_auto_increment(a).contains("=17"));
        assert_eq!(
            strip_auto_increment("CREATE TABLE t (id int)"),
            "CREATE TABLE t (id int)"
        );
    }

    #[test]
    fn schema_types_match_result_set_types() {
        let t = column_type_from_schema("c", "bigint", "bigint(20) unsigned", 0, false).unwrap();
        assert_eq!((t.kind, t.unsigned), (TypeKind::Int, true));
        let t = column_type_from_schema("c", "decimal", "decimal(65,30)", 30, false).unwrap();
        assert_eq!((t.kind, t.decimals), (TypeKind::Decimal, 30));
        let t = column_type_from_schema("c", "varbinary", "varbinary(16)", 0, false).unwrap();
        assert_eq!(t.kind, TypeKind::Binary);
        let t = column_type_from_schema("c", "longtext", "longtext", 0, true).unwrap();
        assert_eq!(t.kind, TypeKind::Text);
        let t = column_type_from_schema("c", "timestamp", "timestamp(6)", 6, false).unwrap();
        assert_eq!((t.kind, t.decimals), (TypeKind::Timestamp, 6));
        assert!(column_type_from_schema("c", "frobnicate", "frobnicate", 0, false).is_err());
    }
}
