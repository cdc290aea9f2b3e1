//! Protocol tests: the proxy runs in-process on 127.0.0.1:0 in front of the MariaDB at
//! 127.0.0.1:3306 (root, no password); real clients (mysql_async text and binary, the
//! `mariadb` CLI, sysbench, and a raw socket for bad input) talk to it. Each test uses its
//! own `rwp_<name>` database so tests run in parallel.

use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Column, Conn, Opts, OptsBuilder, Row, Value};
use rewind_proxy::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BACKEND: &str = "mysql://root@127.0.0.1:3306";

struct Proxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        Proxy::with(Config {
            backend: BACKEND.into(),
            ..Config::default()
        })
        .await
    }

    async fn with(config: Config) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            rewind_proxy::run(listener, config, token).await.unwrap();
        });
        Proxy {
            addr,
            shutdown,
            task,
        }
    }

    fn opts(&self, db: &str) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.addr.port())
            .user(Some("root"))
            .db_name(Some(db))
            .prefer_socket(false)
    }

    async fn conn(&self, db: &str) -> Conn {
        Conn::new(self.opts(db)).await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("proxy stops")
            .unwrap();
    }
}

fn direct_opts(db: &str) -> OptsBuilder {
    OptsBuilder::from_opts(Opts::from_url(BACKEND).unwrap())
        .db_name(Some(db))
        .prefer_socket(false)
}

async fn direct(db: &str) -> Conn {
    Conn::new(direct_opts(db)).await.unwrap()
}

/// A fresh, empty database for one test.
async fn fresh_db(name: &str) {
    let mut c = Conn::new(Opts::from_url(BACKEND).unwrap()).await.unwrap();
    c.query_drop(format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    c.query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

/// Everything a client sees of a column.
fn meta(c: &Column) -> String {
    format!(
        "{}|{}|{}|{}|{}|{:?}|{:?}|cs={}|len={}|dec={}",
        c.schema_str(),
        c.table_str(),
        c.org_table_str(),
        c.name_str(),
        c.org_name_str(),
        c.column_type(),
        c.flags(),
        c.character_set(),
        c.column_length(),
        c.decimals()
    )
}

fn values(rows: Vec<Row>) -> Vec<Vec<Value>> {
    rows.into_iter().map(Row::unwrap).collect()
}

async fn server_error<T>(r: Result<T, mysql_async::Error>) -> (u16, String, String) {
    match r {
        Err(mysql_async::Error::Server(e)) => (e.code, e.state, e.message),
        Err(e) => panic!("expected a server error, got {e}"),
        Ok(_) => panic!("expected a server error, got success"),
    }
}

mod t10_fidelity {
    use super::*;

    const TABLE: &str = r#"CREATE TABLE every_type (
        id INT PRIMARY KEY,
        ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
        mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
        bi BIGINT, biu BIGINT UNSIGNED,
        f FLOAT, d DOUBLE, dz DOUBLE, dec65 DECIMAL(65,30), decn DECIMAL(10,2),
        dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), tmn TIME, yr YEAR,
        ch CHAR(10), vc VARCHAR(100), vb VARBINARY(20), bn BINARY(4),
        bl BLOB, lb LONGBLOB, tx TEXT, js JSON,
        bt BIT(13), en ENUM('a','b'), st SET('x','y','z'),
        g GEOMETRY, nul INT NULL
    )"#;

    const ROW: &str = r#"INSERT INTO every_type VALUES (
        1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
        -9223372036854775808, 18446744073709551615,
        3.40282e38, 1.7976931348623157e308, -0.0,
        -99999999999999999999999999999999999.999999999999999999999999999999, -0.01,
        '9999-12-31', '2038-01-19 03:14:07.999999', '1970-01-02 00:00:01.000001',
        '-838:59:59.000000', '-00:00:01', 2155,
        'abc', 'emoji 😀 ünïcödé', X'00FF00', X'00000001',
        X'00010203FF00', REPEAT(X'00FF', 100000), 'text', '{"a": [1, 2, {"b": null}], "s": "😀"}',
        b'1010101010101', 'b', 'x,z',
        ST_GeomFromText('POINT(1 2)'), NULL
    ), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, '0000-00-00', '0000-00-00 00:00:00', NULL, '00:00:00', NULL, 0,
        '', '', '', NULL, '', NULL, NULL, NULL, NULL, NULL, '', NULL, NULL)"#;

    async fn compare(db: &str, proxy: &Proxy, sql: &str) {
        let mut p = proxy.conn(db).await;
        let mut d = direct(db).await;
        // Text protocol.
        let mut pr = p.query_iter(sql).await.unwrap();
        let pcols: Vec<String> = pr.columns_ref().iter().map(meta).collect();
        let prows = values(pr.collect::<Row>().await.unwrap());
        let mut dr = d.query_iter(sql).await.unwrap();
        let dcols: Vec<String> = dr.columns_ref().iter().map(meta).collect();
        let drows = values(dr.collect::<Row>().await.unwrap());
        assert_eq!(pcols, dcols, "text metadata");
        assert_eq!(prows, drows, "text values");
        // Binary protocol.
        let ps = p.prep(sql).await.unwrap();
        let ds = d.prep(sql).await.unwrap();
        let pcols: Vec<String> = ps.columns().iter().map(meta).collect();
        let dcols: Vec<String> = ds.columns().iter().map(meta).collect();
        assert_eq!(pcols, dcols, "prepared metadata");
        let mut pr = p.exec_iter(&ps, ()).await.unwrap();
        let pcols: Vec<String> = pr.columns_ref().iter().map(meta).collect();
        let prows = values(pr.collect::<Row>().await.unwrap());
        let mut dr = d.exec_iter(&ds, ()).await.unwrap();
        let dcols: Vec<String> = dr.columns_ref().iter().map(meta).collect();
        let drows = values(dr.collect::<Row>().await.unwrap());
        assert_eq!(pcols, dcols, "binary metadata");
        assert_eq!(prows, drows, "binary values");
        assert_eq!(prows.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_column_type_reads_back_identically() {
        let db = "rwp_fidelity";
        fresh_db(db).await;
        let mut d = direct(db).await;
        d.query_drop(TABLE).await.unwrap();
        d.query_drop(ROW).await.unwrap();
        let proxy = Proxy::start().await;
        compare(db, &proxy, "SELECT * FROM every_type ORDER BY id").await;
        compare(
            db,
            &proxy,
            "SELECT id, dec65 * 2 AS expr, CONCAT(vc, ch) AS c, CAST(biu AS CHAR) AS s, \
             -0.0e0 AS negz, CAST(1.5 AS DECIMAL(65,30)) AS big, NOW(6) > '2000-01-01' AS b \
             FROM every_type ORDER BY id",
        )
        .await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_params_of_every_type_and_null() {
        let db = "rwp_params";
        fresh_db(db).await;
        let proxy = Proxy::start().await;
        let mut p = proxy.conn(db).await;
        p.query_drop(
            "CREATE TABLE t (id INT PRIMARY KEY, bi BIGINT, biu BIGINT UNSIGNED, d DOUBLE, \
             f FLOAT, dec65 DECIMAL(65,30), dtm DATETIME(6), tm TIME(6), bl LONGBLOB, vc VARCHAR(50), n INT)",
        )
        .await
        .unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 256) as u8).collect();
        let params: Vec<Value> = vec![
            Value::Int(1),
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Double(-1.5e300),
            Value::Float(1.25),
            Value::Bytes(b"-12345678901234567890.123456789012345678901234567890".to_vec()),
            Value::Date(2024, 2, 29, 23, 59, 59, 999_999),
            Value::Time(true, 34, 22, 59, 59, 1),
            Value::Bytes(big.clone()),
            Value::Bytes("😀 ünï".as_bytes().to_vec()),
            Value::NULL,
        ];
        let stmt = p
            .prep("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?,?)")
            .await
            .unwrap();
        p.exec_drop(&stmt, params.clone()).await.unwrap();
        assert_eq!(p.affected_rows(), 1);
        let got: Vec<Row> = p
            .exec("SELECT * FROM t WHERE id = ? AND n IS NULL", (1,))
            .await
            .unwrap();
        let got = values(got).remove(0);
        assert_eq!(got[1], Value::Int(i64::MIN));
        assert_eq!(got[2], Value::UInt(u64::MAX));
        assert_eq!(got[3], Value::Double(-1.5e300));
        assert_eq!(got[4], Value::Float(1.25));
        assert_eq!(
            got[5],
            Value::Bytes(b"-12345678901234567890.123456789012345678901234567890".to_vec())
        );
        assert_eq!(got[6], Value::Date(2024, 2, 29, 23, 59, 59, 999_999));
        assert_eq!(got[7], Value::Time(true, 34, 22, 59, 59, 1));
        assert_eq!(got[8], Value::Bytes(big));
        assert_eq!(got[9], Value::Bytes("😀 ünï".as_bytes().to_vec()));
        assert_eq!(got[10], Value::NULL);
        p.close(stmt).await.unwrap();
        let nul: Option<i64> = p
            .exec_first("SELECT ?", (Value::NULL,))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(nul, None);
        proxy.stop().await;
    }
}

mod t20_session {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ok_packets_status_flags_and_errors_match_direct() {
        let db = "rwp_ok";
        fresh_db(db).await;
        let proxy = Proxy::start().await;
        let mut p = proxy.conn(db).await;
        let mut d = direct(db).await;
        for c in [&mut d] {
            c.query_drop("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)")
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        for c in [&mut p, &mut d] {
            let mut s = Vec::new();
            for sql in [
                "INSERT INTO t (v) VALUES (1), (2), (3)",
                "BEGIN",
                "UPDATE t SET v = v + 1 WHERE id > 1",
                "INSERT IGNORE INTO t (v) VALUES (99999999999)",
                "ROLLBACK",
                "SET autocommit = 0",
                "DELETE FROM t WHERE id = 1",
                "COMMIT",
                "SET autocommit = 1",
            ] {
                c.query_drop(sql).await.unwrap();
                let ok = c.last_ok_packet().unwrap();
                s.push((
                    sql,
                    ok.affected_rows(),
                    ok.last_insert_id(),
                    ok.warnings(),
                    ok.status_flags()
                        & (mysql_async::consts::StatusFlags::SERVER_STATUS_IN_TRANS
                            | mysql_async::consts::StatusFlags::SERVER_STATUS_AUTOCOMMIT),
                    ok.info_str().map(|x| x.into_owned()),
                ));
            }
            // Reset for the second run, so both see the same ids.
            c.query_drop("TRUNCATE TABLE t").await.unwrap();
            seen.push(s);
        }
        assert_eq!(seen[0], seen[1]);
        let pe = server_error(p.query_drop("SELECT * FROM no_such_table").await).await;
        let de = server_error(d.query_drop("SELECT * FROM no_such_table").await).await;
        assert_eq!(pe, de);
        assert_eq!(pe.0, 1146);
        // The session survives an error.
        let one: i64 = p.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_statements_and_call_relay_every_result_set() {
        let db = "rwp_multi";
        fresh_db(db).await;
        let proxy = Proxy::start().await;
        let mut p = proxy.conn(db).await;
        p.query_drop("CREATE PROCEDURE two() BEGIN SELECT 1 AS a; SELECT 2 AS b, 'x' AS c; END")
            .await
            .unwrap();
        let mut r = p
            .query_iter("SELECT 1; SELECT 'a', 'b'; DO 1")
            .await
            .unwrap();
        let s1: Vec<i64> = r.collect().await.unwrap();
        let s2: Vec<(String, String)> = r.collect().await.unwrap();
        assert_eq!(s1, vec![1]);
        assert_eq!(s2, vec![("a".into(), "b".into())]);
        r.drop_result().await.unwrap();
        let mut r = p.query_iter("CALL two()").await.unwrap();
        let s1: Vec<i64> = r.collect().await.unwrap();
        let s2: Vec<(i64, String)> = r.collect().await.unwrap();
        assert_eq!((s1, s2), (vec![1], vec![(2, "x".into())]));
        r.drop_result().await.unwrap();
        // CALL through a prepared statement (PS_MULTI_RESULTS).
        let mut r = p.exec_iter("CALL two()", ()).await.unwrap();
        let s1: Vec<i64> = r.collect().await.unwrap();
        assert_eq!(s1, vec![1]);
        r.drop_result().await.unwrap();
        // An error in a later statement ends the sequence with that error.
        let mut r = p
            .query_iter("SELECT 1; SELECT * FROM nope; SELECT 3")
            .await
            .unwrap();
        let s1: Vec<i64> = r.collect().await.unwrap();
        assert_eq!(s1, vec![1]);
        let e = server_error(r.collect::<i64>().await).await;
        assert_eq!(e.0, 1146);
        drop(r);
        let x: i64 = p.query_first("SELECT 42").await.unwrap().unwrap();
        assert_eq!(x, 42);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_state_is_the_backends_and_is_reset_on_quit() {
        let db = "rwp_state";
        fresh_db(db).await;
        let proxy = Proxy::with(Config {
            backend: BACKEND.into(),
            max_connections: 4,
            ..Config::default()
        })
        .await;
        let mut a = proxy.conn(db).await;
        a.query_drop("SET @leftover = 7, SESSION sql_mode = 'ANSI_QUOTES'")
            .await
            .unwrap();
        a.query_drop("CREATE TEMPORARY TABLE tmp (x INT)")
            .await
            .unwrap();
        a.query_drop("INSERT INTO tmp VALUES (1)").await.unwrap();
        let (v, n): (i64, i64) = a
            .query_first("SELECT @leftover, (SELECT COUNT(*) FROM tmp)")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v, n), (7, 1));
        a.query_drop("USE mysql").await.unwrap();
        let cur: String = a.query_first("SELECT DATABASE()").await.unwrap().unwrap();
        assert_eq!(cur, "mysql");
        a.ping().await.unwrap();
        // COM_RESET_CONNECTION through the proxy.
        a.reset().await.unwrap();
        let v: Option<i64> = a.query_first("SELECT @leftover").await.unwrap().unwrap();
        assert_eq!(v, None);
        a.query_drop("SET @leftover = 8").await.unwrap();
        // COM_CHANGE_USER: re-authenticates and starts a clean session, like MySQL.
        a.change_user(mysql_async::ChangeUserOpts::default().with_db_name(Some(db.into())))
            .await
            .unwrap();
        let (v, cur): (Option<i64>, String) = a
            .query_first("SELECT @leftover, DATABASE()")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v, cur.as_str()), (None, db));
        a.query_drop("SET @leftover = 9").await.unwrap();
        let a_id: u64 = a
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        a.disconnect().await.unwrap();
        // The next sessions see nothing of it, though they get the same backend connection.
        // The connection goes back to the pool (and is reset) asynchronously: keep
        // connecting until a session lands on it, checking every session on the way.
        let mut reused = false;
        for _ in 0..40 {
            if reused {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut b = proxy.conn(db).await;
            let b_id: u64 = b
                .query_first("SELECT CONNECTION_ID()")
                .await
                .unwrap()
                .unwrap();
            reused |= a_id == b_id;
            let (v, mode): (Option<i64>, String) = b
                .query_first("SELECT @leftover, @@sql_mode")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(v, None);
            assert!(!mode.contains("ANSI_QUOTES"));
            assert!(b.query_drop("SELECT * FROM tmp").await.is_err());
            b.disconnect().await.unwrap();
        }
        assert!(reused, "the pool handed the backend connection on");
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn found_rows_flag_reaches_the_backend() {
        let db = "rwp_found";
        fresh_db(db).await;
        let proxy = Proxy::start().await;
        let mut setup = proxy.conn(db).await;
        setup
            .query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1)")
            .await
            .unwrap();
        for (found, expected) in [(false, 0), (true, 1)] {
            let mut c = Conn::new(proxy.opts(db).client_found_rows(found))
                .await
                .unwrap();
            c.query_drop("UPDATE t SET v = 1 WHERE id = 1")
                .await
                .unwrap();
            assert_eq!(c.affected_rows(), expected, "found_rows={found}");
        }
        proxy.stop().await;
    }
}

mod t30_limits {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authentication_as_mysql() {
        let proxy = Proxy::with(Config {
            backend: BACKEND.into(),
            users: vec![rewind_proxy::config::User {
                name: "app".into(),
                password: "s3cret".into(),
            }],
            ..Config::default()
        })
        .await;
        let base = OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(proxy.addr.port())
            .prefer_socket(false);
        let mut ok = Conn::new(base.clone().user(Some("app")).pass(Some("s3cret")))
            .await
            .unwrap();
        let one: i64 = ok.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
        let e =
            server_error(Conn::new(base.clone().user(Some("app")).pass(Some("nope"))).await).await;
        assert_eq!((e.0, e.1.as_str()), (1045, "28000"));
        assert!(e.2.contains("Access denied for user 'app'"));
        let e = server_error(Conn::new(base.clone().user(Some("root"))).await).await;
        assert_eq!(e.0, 1045);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_connections_gives_1040() {
        let proxy = Proxy::with(Config {
            backend: BACKEND.into(),
            max_connections: 2,
            ..Config::default()
        })
        .await;
        let a = proxy.conn("test").await;
        let b = proxy.conn("test").await;
        let e = server_error(Conn::new(proxy.opts("test")).await).await;
        assert_eq!((e.0, e.2.as_str()), (1040, "Too many connections"), "{e:?}");
        drop(a);
        drop(b);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backend_down_is_a_clear_error_and_others_keep_working() {
        // A closed port: bind, note, drop.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let down = Proxy::with(Config {
            backend: format!("mysql://root@127.0.0.1:{}", closed.port()),
            connect_timeout_secs: 3,
            ..Config::default()
        })
        .await;
        let up = Proxy::start().await;
        let e = server_error(Conn::new(down.opts("test")).await).await;
        assert_eq!(e.0, 1429, "{e:?}");
        assert!(e.2.contains("backend"), "{e:?}");
        let mut c = up.conn("test").await;
        let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
        down.stop().await;
        up.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_shutdown_lets_running_statements_finish() {
        let proxy = Proxy::start().await;
        let mut c = proxy.conn("test").await;
        let addr = proxy.addr;
        let running = tokio::spawn(async move {
            let r: Option<i64> = c.query_first("SELECT SLEEP(1)").await.unwrap();
            r
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.shutdown.cancel();
        assert_eq!(running.await.unwrap(), Some(0));
        tokio::time::timeout(Duration::from_secs(10), proxy.task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }
}

mod t40_bad_input {
    use super::*;

    pub(super) async fn read_packet(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).await?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await?;
        Ok(p)
    }

    pub(super) fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
        let l = (payload.len() as u32).to_le_bytes();
        let mut v = vec![l[0], l[1], l[2], seq];
        v.extend_from_slice(payload);
        v
    }

    /// Logs in as root with no password, by hand.
    pub(super) async fn raw_login(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let greeting = read_packet(&mut s).await.unwrap();
        assert_eq!(greeting[0], 10);
        // PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | LONG_PASSWORD | TRANSACTIONS
        let caps: u32 = 0x0200 | 0x8000 | 0x0008_0000 | 0x1 | 0x2000;
        let mut r = caps.to_le_bytes().to_vec();
        r.extend_from_slice(&(16u32 << 20).to_le_bytes());
        r.push(45);
        r.extend_from_slice(&[0u8; 23]);
        r.extend_from_slice(b"root\0");
        r.push(0);
        r.extend_from_slice(b"mysql_native_password\0");
        s.write_all(&frame(1, &r)).await.unwrap();
        let ok = read_packet(&mut s).await.unwrap();
        assert_eq!(ok[0], 0, "login OK");
        s
    }

    /// Reads until an ERR packet; returns its code, or None if the connection closed.
    async fn expect_err_or_close(s: &mut TcpStream) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), read_packet(s)).await {
                Ok(Ok(p)) if p.as_slice().first() == Some(&0xFF) => {
                    return Some(u16::from_le_bytes([p[1], p[2]]))
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => return None,
                Err(_) => panic!("proxy neither answered nor closed"),
            }
        }
    }

    async fn still_serving(proxy: &Proxy) {
        let mut c = proxy.conn("test").await;
        let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handshake_id_never_names_a_backend_thread() {
        let proxy = Proxy::start().await;
        let mut a = proxy.conn("test").await;
        let announced = a.id();
        assert!(announced >= 0x8000_0000, "{announced:#x}");
        let mut b = proxy.conn("test").await;
        let e = server_error(b.query_drop(format!("KILL QUERY {announced}")).await).await;
        assert_eq!(e.0, 1094, "unknown thread id: {e:?}");
        let one: i64 = a.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stacked_statements_need_multi_statements() {
        let proxy = Proxy::start().await;
        let mut s = raw_login(proxy.addr).await; // without CLIENT_MULTI_STATEMENTS
        s.write_all(&frame(0, b"\x03SELECT 1; DROP DATABASE rwp_never"))
            .await
            .unwrap();
        assert_eq!(expect_err_or_close(&mut s).await, Some(1064));
        // A trailing semicolon is fine, as on MySQL.
        s.write_all(&frame(0, b"\x03SELECT ';' ; ")).await.unwrap();
        assert_eq!(read_packet(&mut s).await.unwrap(), vec![1]);
        for _ in 0..4 {
            read_packet(&mut s).await.unwrap(); // column, EOF, row, EOF
        }
        // COM_SET_OPTION(MULTI_STATEMENTS_ON) answers EOF and allows them.
        s.write_all(&frame(0, &[0x1b, 0, 0])).await.unwrap();
        assert_eq!(read_packet(&mut s).await.unwrap()[0], 0xFE);
        s.write_all(&frame(0, b"\x03SELECT 1; SELECT 2"))
            .await
            .unwrap();
        let mut eofs = Vec::new();
        while eofs.len() < 4 {
            let p = read_packet(&mut s).await.unwrap();
            if p[0] == 0xFE {
                eofs.push(u16::from_le_bytes([p[3], p[4]]));
            }
        }
        assert!(eofs[1] & 0x0008 != 0, "first set says more results follow");
        assert!(eofs[3] & 0x0008 == 0, "the last does not");
        proxy.stop().await;
    }

    /// Execute parameters as libmysql/libmariadb send them, one of every wire type.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execute_params_of_every_wire_type_by_hand() {
        let db = "rwp_wire_params";
        fresh_db(db).await;
        let mut d = direct(db).await;
        d.query_drop(
            "CREATE TABLE t (ti TINYINT UNSIGNED, si SMALLINT, i INT, bu BIGINT UNSIGNED, \
             f FLOAT, d DOUBLE, dt DATE, dtm DATETIME(6), tm TIME(6), de DECIMAL(10,3), \
             vc VARCHAR(10), bl BLOB, n INT, yr YEAR)",
        )
        .await
        .unwrap();
        let proxy = Proxy::start().await;
        let mut s = raw_login(proxy.addr).await;
        let mut prep = vec![0x16];
        prep.extend_from_slice(
            format!("INSERT INTO {db}.t VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)").as_bytes(),
        );
        s.write_all(&frame(0, &prep)).await.unwrap();
        let head = read_packet(&mut s).await.unwrap();
        assert_eq!(head[0], 0, "prepare OK: {}", String::from_utf8_lossy(&head));
        let id = [head[1], head[2], head[3], head[4]];
        for _ in 0..15 {
            read_packet(&mut s).await.unwrap(); // 14 params + EOF
        }
        let mut ex = vec![0x17];
        ex.extend_from_slice(&id);
        ex.push(0);
        ex.extend_from_slice(&1u32.to_le_bytes());
        ex.extend_from_slice(&[0, 0b0001_0000]); // param 12 is NULL
        ex.push(1);
        for (ty, unsigned) in [
            (0x01, true),  // TINY
            (0x02, false), // SHORT
            (0x03, false), // LONG
            (0x08, true),  // LONGLONG
            (0x04, false), // FLOAT
            (0x05, false), // DOUBLE
            (0x0a, false), // DATE
            (0x0c, false), // DATETIME
            (0x0b, false), // TIME
            (0xf6, false), // NEWDECIMAL
            (0xfd, false), // VAR_STRING
            (0xfc, false), // BLOB
            (0x06, false), // NULL
            (0x0d, false), // YEAR
        ] {
            ex.extend_from_slice(&[ty, if unsigned { 0x80 } else { 0 }]);
        }
        ex.push(255);
        ex.extend_from_slice(&(-32768i16).to_le_bytes());
        ex.extend_from_slice(&i32::MIN.to_le_bytes());
        ex.extend_from_slice(&u64::MAX.to_le_bytes());
        ex.extend_from_slice(&1.5f32.to_le_bytes());
        ex.extend_from_slice(&(-2.25f64).to_le_bytes());
        ex.extend_from_slice(&[4, 0xE8, 0x07, 2, 29]);
        ex.extend_from_slice(&[11, 0xE8, 0x07, 2, 29, 23, 59, 59]);
        ex.extend_from_slice(&123_456u32.to_le_bytes());
        ex.extend_from_slice(&[12, 1, 1, 0, 0, 0, 2, 3, 4, 5, 0, 0, 0]);
        ex.extend_from_slice(b"\x08-123.456");
        ex.extend_from_slice("\x04😀".as_bytes());
        ex.extend_from_slice(&[3, 0, 255, 0]);
        ex.extend_from_slice(&2155u16.to_le_bytes());
        s.write_all(&frame(0, &ex)).await.unwrap();
        let ok = read_packet(&mut s).await.unwrap();
        assert_eq!(
            ok[..2],
            [0, 1],
            "one row inserted: {}",
            String::from_utf8_lossy(&ok)
        );
        let row: Row = d
            .query_first("SELECT ti, si, i, bu, f, d, dt, dtm, tm, de, vc, HEX(bl), n, yr FROM t")
            .await
            .unwrap()
            .unwrap();
        let text: Vec<Option<String>> = row
            .unwrap()
            .into_iter()
            .map(|v| match v {
                Value::NULL => None,
                Value::Bytes(b) => Some(String::from_utf8(b).unwrap()),
                other => Some(format!("{other:?}")),
            })
            .collect();
        let want = [
            "255",
            "-32768",
            "-2147483648",
            "18446744073709551615",
            "1.5",
            "-2.25",
            "2024-02-29",
            "2024-02-29 23:59:59.123456",
            "-26:03:04.000005",
            "-123.456",
            "😀",
            "00FF00",
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(text[i].as_deref(), Some(*w), "column {i}");
        }
        assert_eq!(text[12], None);
        assert_eq!(text[13].as_deref(), Some("2155"));
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_data_and_split_packets_by_hand() {
        let proxy = Proxy::start().await;
        let mut s = raw_login(proxy.addr).await;
        let mut prep = vec![0x16];
        prep.extend_from_slice(b"SELECT LENGTH(?), ? IS NULL");
        s.write_all(&frame(0, &prep)).await.unwrap();
        let head = read_packet(&mut s).await.unwrap();
        assert_eq!(head[0], 0, "prepare OK");
        let id = [head[1], head[2], head[3], head[4]];
        assert_eq!(&head[5..9], &[2, 0, 2, 0], "2 columns, 2 params");
        for _ in 0..6 {
            read_packet(&mut s).await.unwrap(); // 2 params + EOF, 2 columns + EOF
        }
        // Two long-data chunks for parameter 0; no reply by protocol.
        let chunk = vec![0xABu8; 100_000];
        for _ in 0..2 {
            let mut ld = vec![0x18];
            ld.extend_from_slice(&id);
            ld.extend_from_slice(&0u16.to_le_bytes());
            ld.extend_from_slice(&chunk);
            s.write_all(&frame(0, &ld)).await.unwrap();
        }
        // Execute: param 1 NULL, param 0 from long data, types bound (BLOB, LONGLONG).
        let mut ex = vec![0x17];
        ex.extend_from_slice(&id);
        ex.push(0);
        ex.extend_from_slice(&1u32.to_le_bytes());
        ex.push(0b10);
        ex.push(1);
        ex.extend_from_slice(&[0xFC, 0, 0x08, 0]);
        s.write_all(&frame(0, &ex)).await.unwrap();
        assert_eq!(read_packet(&mut s).await.unwrap(), vec![2], "two columns");
        for _ in 0..3 {
            read_packet(&mut s).await.unwrap();
        }
        let row = read_packet(&mut s).await.unwrap();
        assert_eq!(row[0], 0, "binary row");
        // LENGTH() is a LONG column: 4 bytes.
        let len = u32::from_le_bytes(row[2..6].try_into().unwrap());
        assert_eq!(len, 200_000);
        assert_eq!(read_packet(&mut s).await.unwrap()[0], 0xFE, "end of rows");

        // A query split over two packets (16 MB - 1, then the rest).
        let mut q = b"\x03SELECT LENGTH('".to_vec();
        q.extend(std::iter::repeat_n(b'z', 0xFF_FFFF + 10 - q.len() - 2));
        q.extend_from_slice(b"')");
        let (a, b) = q.split_at(0xFF_FFFF);
        let mut wire = frame(0, a);
        wire.extend_from_slice(&frame(1, b));
        s.write_all(&wire).await.unwrap();
        let first = read_packet(&mut s).await.unwrap();
        if first[0] == 0xFF {
            // The backend's max_allowed_packet may be smaller: its own error is relayed.
            assert_eq!(
                u16::from_le_bytes([first[1], first[2]]),
                1153,
                "{}",
                String::from_utf8_lossy(&first)
            );
        } else {
            assert_eq!(first, vec![1]);
            for _ in 0..2 {
                read_packet(&mut s).await.unwrap();
            }
            let row = read_packet(&mut s).await.unwrap();
            assert_eq!(&row[1..], (0xFF_FFFF + 10 - 17 - 2).to_string().as_bytes());
        }
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_truncation_unknown_commands_and_early_disconnects() {
        let proxy = Proxy::start().await;
        let mut keeper = proxy.conn("test").await;

        // Garbage instead of a handshake response.
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        read_packet(&mut s).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let _ = expect_err_or_close(&mut s).await;

        // A truncated handshake response, then close.
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        read_packet(&mut s).await.unwrap();
        s.write_all(&frame(1, &[0x00, 0x02, 0x00])).await.unwrap();
        assert_eq!(expect_err_or_close(&mut s).await, Some(1835));

        // Unknown command: a clear error, and the session goes on.
        let mut s = raw_login(proxy.addr).await;
        s.write_all(&frame(0, &[0x99, 1, 2, 3])).await.unwrap();
        assert_eq!(expect_err_or_close(&mut s).await, Some(1047));
        // COM_STATISTICS answers with the backend's numbers as a bare string.
        s.write_all(&frame(0, &[0x09])).await.unwrap();
        let stats = read_packet(&mut s).await.unwrap();
        assert!(
            stats.starts_with(b"Uptime: "),
            "{}",
            String::from_utf8_lossy(&stats)
        );
        s.write_all(&frame(0, b"\x03SELECT 1")).await.unwrap();
        let first = read_packet(&mut s).await.unwrap();
        assert_eq!(first, vec![1], "one column");
        // Truncated COM_STMT_EXECUTE.
        let mut s2 = raw_login(proxy.addr).await;
        s2.write_all(&frame(0, &[0x17, 1])).await.unwrap();
        assert_eq!(expect_err_or_close(&mut s2).await, Some(1835));
        // Empty packet.
        s2.write_all(&frame(0, &[])).await.unwrap();
        assert_eq!(expect_err_or_close(&mut s2).await, Some(1835));
        // A header promising more than is sent, then a close.
        s2.write_all(&[0x10, 0x00, 0x00, 0x00, 0x03, b'S'])
            .await
            .unwrap();
        drop(s2);

        // A client that disconnects in the middle of a big result.
        let mut s3 = raw_login(proxy.addr).await;
        s3.write_all(&frame(
            0,
            b"\x03SELECT REPEAT('x', 1000) FROM information_schema.COLUMNS a, information_schema.COLUMNS b LIMIT 200000",
        ))
        .await
        .unwrap();
        let mut buf = [0u8; 8192];
        s3.read_exact(&mut buf).await.unwrap();
        drop(s3);

        // Everyone else is fine.
        let one: i64 = keeper.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
        still_serving(&proxy).await;
        proxy.stop().await;
    }
}

mod t50_real_clients {
    use super::*;
    use std::process::Command;

    fn mariadb_cli(port: u16, db: &str, sql: &str) -> (bool, String, String) {
        mariadb_cli_cs(port, db, sql, "utf8mb4")
    }

    fn mariadb_cli_cs(port: u16, db: &str, sql: &str, charset: &str) -> (bool, String, String) {
        let out = Command::new("mariadb")
            .args([
                "-h127.0.0.1",
                &format!("-P{port}"),
                "-uroot",
                "--skip-auto-rehash",
                &format!("--default-character-set={charset}"),
                "--batch",
                "--column-type-info",
                db,
                "-e",
                sql,
            ])
            .output()
            .expect("mariadb client installed (scripts/ensure-tools.sh)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_cli_sees_the_same_as_direct() {
        let db = "rwp_cli";
        fresh_db(db).await;
        let proxy = Proxy::start().await;
        let port = proxy.addr.port();
        let sql = "CREATE TABLE t (id INT PRIMARY KEY, d DECIMAL(20,6), b BLOB, j JSON, \
                   u BIGINT UNSIGNED, ts DATETIME(6)); \
                   INSERT INTO t VALUES (1, -1.5, X'00FF61', '{\"k\": \"😀\"}', 18446744073709551615, '2020-01-01 00:00:00.123456'); \
                   SELECT * FROM t; SHOW WARNINGS; SELECT @@autocommit, DATABASE(); DROP TABLE t";
        let via = tokio::task::spawn_blocking(move || mariadb_cli(port, db, sql))
            .await
            .unwrap();
        let direct = tokio::task::spawn_blocking(move || mariadb_cli(3306, db, sql))
            .await
            .unwrap();
        assert!(via.0, "proxy: {}", via.2);
        assert_eq!(via, direct);
        let bad = tokio::task::spawn_blocking(move || mariadb_cli(port, db, "SELECT * FROM nope"))
            .await
            .unwrap();
        assert!(!bad.0);
        assert!(bad.2.contains("ERROR 1146 (42S02)"), "{}", bad.2);
        // LOAD DATA LOCAL is refused with a clear error, not a hang or a misleading one.
        let csv = std::env::temp_dir().join(format!("rwp_cli_{}.csv", std::process::id()));
        std::fs::write(&csv, "1,a\n").unwrap();
        let sql = format!(
            "CREATE TEMPORARY TABLE li (a INT, b TEXT); LOAD DATA LOCAL INFILE '{}' INTO TABLE li FIELDS TERMINATED BY ','",
            csv.display()
        );
        let out = tokio::task::spawn_blocking(move || {
            Command::new("mariadb")
                .args([
                    "-h127.0.0.1",
                    &format!("-P{port}"),
                    "-uroot",
                    "--local-infile=1",
                    db,
                    "-e",
                ])
                .arg(sql)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ERROR 1235 (42000)") && err.contains("LOAD DATA LOCAL INFILE"),
            "{err}"
        );
        // A client with another connection charset gets it on the backend session.
        let sql =
            "SELECT @@character_set_client, @@collation_connection, @@character_set_results, \
                   HEX(CONVERT(_latin1 X'E9' USING utf8mb4)), 'caf\u{e9}'";
        for cs in ["latin1", "utf8mb3", "binary"] {
            let via = tokio::task::spawn_blocking(move || mariadb_cli_cs(port, db, sql, cs))
                .await
                .unwrap();
            let direct = tokio::task::spawn_blocking(move || mariadb_cli_cs(3306, db, sql, cs))
                .await
                .unwrap();
            assert!(via.0, "{cs}: {}", via.2);
            assert_eq!(via, direct, "{cs}");
        }
        proxy.stop().await;
    }

    fn sysbench(port: u16, db: &str, cmd: &str) -> String {
        let out = Command::new("sysbench")
            .args([
                "oltp_read_write",
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
                &format!("--mysql-port={port}"),
                "--mysql-user=root",
                &format!("--mysql-db={db}"),
                "--tables=1",
                "--table-size=2000",
                // One thread: two deadlock legitimately now and then (direct too); any
                // error at all fails the run below.
                "--threads=1",
                "--time=3",
                "--mysql-ignore-errors=none",
                "--db-ps-mode=auto",
                cmd,
            ])
            .output()
            .expect("sysbench installed (scripts/ensure-tools.sh)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sysbench {cmd}: {text}");
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sysbench_oltp_read_write_has_zero_errors() {
        let db = "rwp_sysbench";
        fresh_db(db).await;
        let proxy = Proxy::start().await;
        let port = proxy.addr.port();
        let out = tokio::task::spawn_blocking(move || {
            sysbench(port, db, "prepare");
            sysbench(port, db, "run")
        })
        .await
        .unwrap();
        let errors = out
            .lines()
            .find(|l| l.trim_start().starts_with("ignored errors:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("sysbench prints ignored errors");
        let reconnects = out
            .lines()
            .find(|l| l.trim_start().starts_with("reconnects:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("sysbench prints reconnects");
        assert_eq!((errors, reconnects), (0, 0), "{out}");
        // Same data through the proxy and direct.
        let mut p = proxy.conn(db).await;
        let mut d = direct(db).await;
        let sql = "SELECT COUNT(*), SUM(k), SUM(CRC32(c)) FROM sbtest1";
        let a: Row = p.query_first(sql).await.unwrap().unwrap();
        let b: Row = d.query_first(sql).await.unwrap().unwrap();
        assert_eq!(a.unwrap(), b.unwrap());
        proxy.stop().await;
    }
}

mod t60_binary {
    use super::*;
    use std::process::{Command, Stdio};

    const BIN: &str = env!("CARGO_BIN_EXE_rewind-proxy");

    #[test]
    fn help_lists_the_design_flags() {
        let out = Command::new(BIN).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in [
            "--listen",
            "--backend",
            "--coordinator",
            "--undo-schema",
            "--config",
            "--max-connections",
        ] {
            assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
        }
    }

    #[test]
    fn unknown_config_keys_are_rejected_at_start() {
        let dir = std::env::temp_dir().join(format!("rwp_cfg_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:0\"\nmax_conections = 3\n").unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
    }

    async fn free_port() -> u16 {
        // Bind, note, drop; the binary binds it next.
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Starts the binary on `port` and waits until it serves.
    async fn spawn_binary(port: u16, extra: &[&str]) -> std::process::Child {
        let mut child = Command::new(BIN)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("proxy binary did not come up");
    }

    fn peak_rss_mb(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
            / 1024
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_results_stream_row_by_row() {
        use super::t40_bad_input::{frame, raw_login, read_packet};
        let port = free_port().await;
        let mut child = spawn_binary(port, &[]).await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut s = raw_login(addr).await;
        // 256 MB of rows, read and thrown away by a raw client.
        s.write_all(&frame(
            0,
            b"\x03SELECT REPEAT('x', 1048576) FROM test.seq_1_to_256",
        ))
        .await
        .unwrap();
        let (mut rows, mut eofs) = (0, 0);
        while eofs < 2 {
            let p = read_packet(&mut s).await.unwrap();
            match p.as_slice().first() {
                Some(0xFE) if p.len() < 9 => eofs += 1,
                Some(0xFF) => panic!("{}", String::from_utf8_lossy(&p)),
                _ if eofs == 1 => rows += 1,
                _ => {}
            }
        }
        assert_eq!(rows, 256);
        let peak = peak_rss_mb(child.id());
        // A collected result would need 256 MB at least.
        assert!(peak < 64, "proxy peak RSS {peak} MB");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_drains_running_statements_then_exits() {
        let port = free_port().await;
        let dir = std::env::temp_dir().join(format!("rwp_term_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.toml");
        // The flag overrides the file's listen address.
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nshutdown_grace_secs = 10\n",
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&file)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let opts = OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some("root"))
            .prefer_socket(false);
        let mut conn = None;
        for _ in 0..100 {
            if let Ok(c) = Conn::new(opts.clone()).await {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut conn = conn.expect("proxy binary came up");
        let running = tokio::spawn(async move {
            let r: Option<i64> = conn.query_first("SELECT SLEEP(1.5)").await.unwrap();
            r
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert_eq!(running.await.unwrap(), Some(0), "statement finished");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}
