//! INSERT in all its forms: VALUES and SET rows, ON DUPLICATE KEY UPDATE, REPLACE, IGNORE,
//! and INSERT … SELECT; how the keys of inserted rows are found.

use super::*;

/// A plain `INSERT INTO t [(cols)] VALUES (…), …` (or `INSERT … SET`).
#[derive(Debug, Clone, PartialEq)]
pub struct InsertPlan {
    pub table: TableRef,
    /// Explicit column list; empty means "all visible columns in table order".
    pub columns: Vec<String>,
    /// Number of rows in VALUES: the after image must find exactly that many.
    pub rows: usize,
    /// What each row gives each listed column, enough to derive primary keys.
    pub(super) cells: Vec<Vec<Cell>>,
    /// `ON DUPLICATE KEY UPDATE`: the columns it assigns (a row that hits an existing
    /// key updates that row instead of inserting).
    pub on_duplicate: Option<Vec<String>>,
    /// `INSERT IGNORE`: rows that hit an existing key (or another ignorable error) are
    /// skipped, so the inserted rows are found by key and counted.
    pub ignore: bool,
    /// `REPLACE`: rows that hit an existing primary or unique key delete those rows first.
    pub replace: bool,
    /// `INSERT … SELECT`: the query as written (its placeholders are the statement's);
    /// [`Self::rows`] is then unknown (0) and `cells` empty.
    pub select: Option<String>,
}

/// What an INSERT row gives one column, as far as deriving its key needs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    /// The n-th `?` of the statement.
    Param(usize),
    Literal(mysql_async::Value),
    /// `DEFAULT`: the column's default (for auto-increment, see [`AutoIncrement`]).
    Default,
    /// Any other expression: the value is known only to the server.
    Computed,
}

pub(super) fn analyze_insert(i: ast::Insert) -> Result<Dml> {
    let on_duplicate = match &i.on {
        None => None,
        Some(ast::OnInsert::DuplicateKeyUpdate(assignments)) => {
            let mut columns = Vec::with_capacity(assignments.len());
            for a in assignments {
                match &a.target {
                    AssignmentTarget::ColumnName(name) => {
                        let c = last_ident(name)?;
                        if !columns.contains(&c) {
                            columns.push(c);
                        }
                    }
                    AssignmentTarget::Tuple(_) => {
                        return Err(Error::Refused(
                            "tuple assignment in ON DUPLICATE KEY UPDATE".into(),
                        ))
                    }
                }
            }
            Some(columns)
        }
        Some(_) => return Err(Error::Refused("INSERT … ON CONFLICT".into())),
    };
    if i.returning.is_some() || i.output.is_some() {
        return Err(Error::Refused("INSERT … RETURNING".into()));
    }
    let name = match &i.table {
        ast::TableObject::TableName(name) => name,
        _ => return Err(Error::Refused("INSERT into a table function".into())),
    };
    let table = table_ref(name)?;
    let mut next_param = 0;
    let (columns, cells) = match (&i.source, i.assignments.is_empty()) {
        (None, false) => {
            let mut columns = Vec::new();
            let mut row = Vec::new();
            for a in &i.assignments {
                match &a.target {
                    AssignmentTarget::ColumnName(n) => columns.push(last_ident(n)?),
                    AssignmentTarget::Tuple(_) => {
                        return Err(Error::Refused("tuple assignment in INSERT … SET".into()))
                    }
                }
                row.push(cell(&a.value, &mut next_param)?);
            }
            (columns, vec![row])
        }
        (Some(query), true) if !matches!(query.body.as_ref(), SetExpr::Values(_)) => {
            if i.replace_into {
                return Err(Error::Refused(
                    "REPLACE … SELECT (which existing rows it replaces is known only to the \
                     server; use INSERT … SELECT or REPLACE … VALUES)"
                        .into(),
                ));
            }
            if on_duplicate.is_some() {
                return Err(Error::Refused(
                    "INSERT … SELECT … ON DUPLICATE KEY UPDATE".into(),
                ));
            }
            if !matches!(query.body.as_ref(), SetExpr::Select(_)) || query.with.is_some() {
                return Err(Error::Refused(
                    "INSERT … SELECT over a UNION or WITH (select from one query block)".into(),
                ));
            }
            if !query.locks.is_empty() {
                return Err(Error::Refused("INSERT … SELECT … FOR UPDATE".into()));
            }
            let columns = i
                .columns
                .iter()
                .map(last_ident)
                .collect::<Result<Vec<_>>>()?;
            return Ok(Dml::Insert(InsertPlan {
                table,
                columns,
                rows: 0,
                cells: Vec::new(),
                on_duplicate: None,
                ignore: i.ignore,
                replace: false,
                select: Some(query.to_string()),
            }));
        }
        (Some(query), true) => {
            let values = match query.body.as_ref() {
                SetExpr::Values(values) if query.with.is_none() => values,
                _ => return Err(Error::Refused("INSERT … SELECT".into())),
            };
            let columns = i
                .columns
                .iter()
                .map(last_ident)
                .collect::<Result<Vec<_>>>()?;
            let mut cells = Vec::with_capacity(values.rows.len());
            for row in &values.rows {
                let row = row
                    .content
                    .iter()
                    .map(|e| cell(e, &mut next_param))
                    .collect::<Result<Vec<_>>>()?;
                cells.push(row);
            }
            (columns, cells)
        }
        _ => return Err(Error::Refused("INSERT without VALUES".into())),
    };
    if i.ignore && on_duplicate.is_some() {
        return Err(Error::Refused(
            "INSERT IGNORE … ON DUPLICATE KEY UPDATE".into(),
        ));
    }
    Ok(Dml::Insert(InsertPlan {
        table,
        columns,
        rows: cells.len(),
        cells,
        on_duplicate,
        ignore: i.ignore,
        replace: i.replace_into,
        select: None,
    }))
}

/// Classifies one VALUES expression, advancing the placeholder counter past it.
pub(super) fn cell(expr: &ast::Expr, next_param: &mut usize) -> Result<Cell> {
    use ast::{Expr, UnaryOperator, Value as V};
    let literal = |v: &V, negative: bool| -> Option<Cell> {
        let sign = if negative { "-" } else { "" };
        match v {
            V::Number(n, false) => {
                let n = format!("{sign}{n}");
                Some(Cell::Literal(if let Ok(i) = n.parse::<i64>() {
                    mysql_async::Value::Int(i)
                } else if let Ok(u) = n.parse::<u64>() {
                    mysql_async::Value::UInt(u)
                } else {
                    mysql_async::Value::Bytes(n.into_bytes())
                }))
            }
            // Parsed without unescaping: a backslash escape would have to be decoded the
            // way the server does; leave such keys to the server (Computed).
            V::SingleQuotedString(s) | V::DoubleQuotedString(s)
                if !negative && !s.contains('\\') =>
            {
                let quote = if matches!(v, V::SingleQuotedString(_)) {
                    "'"
                } else {
                    "\""
                };
                Some(Cell::Literal(mysql_async::Value::Bytes(
                    s.replace(&quote.repeat(2), quote).into_bytes(),
                )))
            }
            V::Null if !negative => Some(Cell::Literal(mysql_async::Value::NULL)),
            // X'00FF': the bytes themselves (an odd digit count is the server's error). The
            // tokenizer keeps whatever stands between the quotes, so pairs are taken as
            // bytes, not string slices (`X'é0'` must not split a character), and anything
            // but hex digits leaves the value to the server.
            V::HexStringLiteral(h) if !negative && h.len() % 2 == 0 => h
                .as_bytes()
                .chunks(2)
                .map(|pair| {
                    let digit = |b: u8| char::from(b).to_digit(16);
                    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
                })
                .collect::<Option<Vec<u8>>>()
                .map(|b| Cell::Literal(mysql_async::Value::Bytes(b))),
            _ => None,
        }
    };
    let found = match expr {
        Expr::Value(v) if matches!(v.value, V::Placeholder(_)) => {
            *next_param += 1;
            return Ok(Cell::Param(*next_param - 1));
        }
        Expr::Value(v) => literal(&v.value, false),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: inner,
        } => match inner.as_ref() {
            Expr::Value(v) => literal(&v.value, true),
            _ => None,
        },
        Expr::Identifier(id)
            if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("DEFAULT") =>
        {
            Some(Cell::Default)
        }
        _ => None,
    };
    *next_param += count_placeholders(&expr.to_string())?;
    Ok(found.unwrap_or(Cell::Computed))
}

/// What the server reported about auto-increment for one INSERT, and the session setting
/// that decides what `DEFAULT` and `0` mean for an auto-increment column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoIncrement {
    /// The OK packet's last insert id: the first value the statement generated (0: none).
    pub last_insert_id: u64,
    /// `@@auto_increment_increment` of the session.
    pub increment: u64,
    /// `@@sql_mode` contains NO_AUTO_VALUE_ON_ZERO: then `0` and `DEFAULT` store 0
    /// instead of generating (MariaDB evaluates `DEFAULT` of such a column to 0).
    pub no_auto_value_on_zero: bool,
}

impl InsertPlan {
    /// The primary key of every inserted row, in VALUES order, as parameters for
    /// [`Self::after_image_sql`].
    ///
    /// Keys come from the statement (literals, `?` parameters) or, for an auto-increment
    /// key the server generates (omitted or `NULL`; `DEFAULT` and `0` unless
    /// NO_AUTO_VALUE_ON_ZERO), from the last insert id plus the increment per generated
    /// row: InnoDB reserves one consecutive block for an insert whose row count is known.
    /// Refused: keys the server computes (expressions, non-auto defaults) and a statement
    /// that mixes explicit and generated auto-increment keys (an explicit key moves the
    /// counter mid-statement). The caller must check that the after image finds exactly
    /// [`Self::rows`] rows and abort the local transaction otherwise.
    pub fn row_keys(
        &self,
        meta: &TableMeta,
        params: &[mysql_async::Value],
        auto_increment: AutoIncrement,
    ) -> Result<Vec<Vec<mysql_async::Value>>> {
        let listed = self.listed(meta)?;
        let auto = meta.auto_increment_column().map(|c| c.name.as_str());
        let zero_is_value = auto_increment.no_auto_value_on_zero;
        let mut generated = 0u64;
        let mut explicit_auto = false;
        let mut keys = Vec::with_capacity(self.cells.len());
        for row in &self.cells {
            let mut key = Vec::with_capacity(meta.primary_key.len());
            for pk in &meta.primary_key {
                let is_auto = auto.is_some_and(|a| same_name(a, pk));
                let position = listed.iter().position(|c| same_name(c, pk));
                // `None`: the server picks (omitted, NULL, or DEFAULT/0 as sql_mode says).
                let given =
                    match position.map(|p| &row[p]) {
                        None => None,
                        Some(Cell::Default) if is_auto && zero_is_value => {
                            Some(mysql_async::Value::UInt(0))
                        }
                        Some(Cell::Default) => None,
                        Some(Cell::Param(i)) => Some(params.get(*i).cloned().ok_or_else(|| {
                            Error::Refused(format!("missing parameter {}", i + 1))
                        })?),
                        Some(Cell::Literal(v)) => Some(v.clone()),
                        Some(Cell::Computed) => {
                            return Err(Error::Refused(format!(
                                "primary-key column `{pk}` set by an expression \
                             (use a literal or a parameter)"
                            )))
                        }
                    };
                let given = match given {
                    Some(mysql_async::Value::NULL) => None,
                    Some(v) if is_auto && !zero_is_value && is_zero(&v) => None,
                    other => other,
                };
                let value = match given {
                    None if is_auto => {
                        if auto_increment.last_insert_id == 0 {
                            return Err(Error::Refused(
                                "generated auto-increment key without a last insert id".into(),
                            ));
                        }
                        let id = auto_increment
                            .increment
                            .checked_mul(generated)
                            .and_then(|step| auto_increment.last_insert_id.checked_add(step))
                            .ok_or_else(|| Error::Refused("auto-increment overflow".into()))?;
                        generated += 1;
                        mysql_async::Value::UInt(id)
                    }
                    None => {
                        return Err(Error::Refused(format!(
                            "primary-key column `{pk}` left to its default"
                        )))
                    }
                    Some(v) => {
                        explicit_auto |= is_auto;
                        v
                    }
                };
                key.push(value);
            }
            keys.push(key);
        }
        if explicit_auto && generated > 0 {
            return Err(Error::Refused(
                "INSERT mixing explicit and generated auto-increment keys".into(),
            ));
        }
        Ok(keys)
    }

    /// `SELECT <pk>, <all other columns> FROM <table> WHERE (<pk> = ? AND …) OR …` for
    /// `rows` keys from [`Self::row_keys`].
    pub fn after_image_sql(&self, meta: &TableMeta, rows: usize) -> String {
        let relation = match &self.table.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.table.table)),
            None => quote_ident(&self.table.table),
        };
        let mut sql = select_sql(
            meta,
            &relation,
            &format!(" WHERE {}", keys_predicate(meta, rows)),
        );
        // The rows are this transaction's own fresh inserts; no lock to take.
        sql.truncate(sql.len() - " FOR UPDATE".len());
        sql
    }
}

/// A key an `INSERT … ON DUPLICATE KEY UPDATE` row may hit: the key's columns and the
/// row's values for them.
pub type ConflictKey = (Vec<String>, Vec<mysql_async::Value>);

impl InsertPlan {
    /// The ON DUPLICATE KEY UPDATE columns spelled as the table spells them. Refuses an
    /// assignment to a primary-key or unique-key column: the rows are found again by those
    /// keys, before and after.
    pub fn on_duplicate_columns_in(&self, meta: &TableMeta) -> Result<Vec<String>> {
        let Some(cols) = &self.on_duplicate else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(cols.len());
        for column in cols {
            let known = meta
                .columns
                .iter()
                .find(|c| same_name(&c.name, column))
                .ok_or_else(|| Error::MissingColumn(column.clone()))?;
            let keyed = meta
                .primary_key
                .iter()
                .chain(meta.unique_keys.iter().flatten())
                .any(|k| same_name(k, &known.name));
            if keyed {
                return Err(Error::Refused(format!(
                    "ON DUPLICATE KEY UPDATE of key column `{}`",
                    known.name
                )));
            }
            out.push(known.name.clone());
        }
        Ok(out)
    }

    /// For INSERT … ON DUPLICATE KEY UPDATE, REPLACE and INSERT IGNORE (the statement
    /// [`Self::statement`] names): every key each VALUES row can collide on —
    /// its primary key when the statement gives it, and each unique key whose values it
    /// gives (a NULL part never collides). Refused: key values the server computes or
    /// defaults, and a row with a generated primary key and no other key to find it by
    /// (the last insert id does not say which rows were new when some rows collide).
    /// Empty when no row can collide (generated keys, no unique key): a plain INSERT.
    /// The statement's kind as messages name it.
    pub fn statement(&self) -> &'static str {
        match (self.replace, self.ignore, &self.on_duplicate, &self.select) {
            (true, ..) => "REPLACE",
            (_, true, _, None) => "INSERT IGNORE",
            (_, true, _, Some(_)) => "INSERT IGNORE … SELECT",
            (_, _, Some(_), _) => "INSERT … ON DUPLICATE KEY UPDATE",
            (_, _, _, Some(_)) => "INSERT … SELECT",
            _ => "INSERT",
        }
    }

    pub fn conflict_keys(
        &self,
        meta: &TableMeta,
        params: &[mysql_async::Value],
        no_auto_value_on_zero: bool,
    ) -> Result<Vec<ConflictKey>> {
        let listed = self.listed(meta)?;
        let auto = meta.auto_increment_column().map(|c| c.name.as_str());
        let mut out: Vec<ConflictKey> = Vec::new();
        let mut keys: Vec<&Vec<String>> = vec![&meta.primary_key];
        keys.extend(meta.unique_keys.iter());
        let mut any_key = false;
        let mut missing = 0;
        for row in &self.cells {
            let mut found = false;
            for columns in keys.iter() {
                let mut values = Vec::with_capacity(columns.len());
                let mut usable = true;
                for column in columns.iter() {
                    let is_auto = auto.is_some_and(|a| same_name(a, column));
                    let given = match listed
                        .iter()
                        .position(|c| same_name(c, column))
                        .map(|p| &row[p])
                    {
                        Some(Cell::Param(i)) => Some(params.get(*i).cloned().ok_or_else(|| {
                            Error::Refused(format!("missing parameter {}", i + 1))
                        })?),
                        Some(Cell::Literal(v)) => Some(v.clone()),
                        Some(Cell::Default) if is_auto && no_auto_value_on_zero => {
                            Some(mysql_async::Value::UInt(0))
                        }
                        Some(Cell::Default) | None if is_auto => None,
                        Some(Cell::Computed) => {
                            return Err(Error::Refused(format!(
                                "key column `{column}` set by an expression in {} (use a \
                                 literal or a parameter)",
                                self.statement()
                            )))
                        }
                        Some(Cell::Default) | None => {
                            return Err(Error::Refused(format!(
                                "key column `{column}` left to its default in {}",
                                self.statement()
                            )))
                        }
                    };
                    match given {
                        Some(v) if is_auto && !no_auto_value_on_zero && is_zero(&v) => {
                            usable = false
                        }
                        Some(mysql_async::Value::NULL) | None => usable = false,
                        Some(v) => values.push(v),
                    }
                }
                // An unusable key (generated or NULL) cannot collide; the row must then be
                // found by another one.
                if usable {
                    found = true;
                    out.push(((*columns).clone(), values));
                }
            }
            any_key |= found;
            missing += usize::from(!found);
        }
        if missing == self.cells.len() && meta.unique_keys.is_empty() {
            // Generated keys and nothing else unique: no row can collide.
            return Ok(Vec::new());
        }
        if missing > 0 || !any_key {
            return Err(Error::Refused(format!(
                "{} row with a generated primary key and no unique key value to find it by",
                self.statement()
            )));
        }
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out.dedup();
        Ok(out)
    }

    /// `SELECT <image columns> FROM t WHERE (<key 1> = ?) OR … [FOR UPDATE]` over
    /// [`Self::conflict_keys`]: the rows the statement can update (before) and, read again
    /// afterwards without the lock, every row it updated or inserted.
    pub fn conflict_image_sql(
        &self,
        meta: &TableMeta,
        keys: &[ConflictKey],
        lock: bool,
    ) -> Result<(String, Vec<mysql_async::Value>)> {
        let params: Vec<mysql_async::Value> = keys.iter().flat_map(|(_, v)| v.clone()).collect();
        if params.len() > rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS {
            return Err(Error::Refused(
                "INSERT … ON DUPLICATE KEY UPDATE with more key values than one statement \
                 can carry (split it)"
                    .into(),
            ));
        }
        let predicate = if keys.is_empty() {
            "FALSE".to_string()
        } else {
            keys.iter()
                .map(|(cols, _)| {
                    let one = cols
                        .iter()
                        .map(|c| format!("{} = ?", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    format!("({one})")
                })
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        Ok((
            format!(
                "SELECT {} FROM {} WHERE {predicate}{}",
                meta.image_columns(None),
                rewind_undo_log::undo_sql::quote_table(&meta.name),
                if lock { " FOR UPDATE" } else { "" }
            ),
            params,
        ))
    }

    /// For INSERT … SELECT: where each primary-key column (in key order) sits among the
    /// SELECT's columns, `None` when the column list leaves it out (the server fills it:
    /// refused unless it is the auto-increment column).
    pub fn select_key_positions(&self, meta: &TableMeta) -> Result<Vec<Option<usize>>> {
        let listed = self.listed(meta)?;
        let auto = meta.auto_increment_column().map(|c| c.name.as_str());
        meta.primary_key
            .iter()
            .map(|pk| {
                let at = listed.iter().position(|c| same_name(c, pk));
                if at.is_none() && !auto.is_some_and(|a| same_name(a, pk)) {
                    return Err(Error::Refused(format!(
                        "INSERT … SELECT leaving primary-key column `{pk}` to its default"
                    )));
                }
                Ok(at)
            })
            .collect()
    }

    /// The columns each VALUES row lists, in order.
    pub(super) fn listed<'a>(&'a self, meta: &'a TableMeta) -> Result<Vec<&'a str>> {
        let listed: Vec<&str> = if self.columns.is_empty() {
            meta.columns
                .iter()
                .filter(|c| !c.invisible)
                .map(|c| c.name.as_str())
                .collect()
        } else {
            self.columns.iter().map(String::as_str).collect()
        };
        if let Some(row) = self.cells.iter().find(|r| r.len() != listed.len()) {
            return Err(Error::Refused(format!(
                "INSERT row with {} values for {} columns",
                row.len(),
                listed.len()
            )));
        }
        Ok(listed)
    }
}

pub(super) fn is_zero(v: &mysql_async::Value) -> bool {
    match v {
        mysql_async::Value::Int(0) | mysql_async::Value::UInt(0) => true,
        mysql_async::Value::Bytes(b) => b.iter().all(|c| *c == b'0') && !b.is_empty(),
        _ => false,
    }
}
