//! Traces, end to end: an OTLP/gRPC receiver started here (the collector's
//! `TraceService/Export`), a coordinator and a proxy exporting to it, real MariaDB. A
//! global transaction with two branches (two schemas, two sessions) carries the
//! application's `traceparent` — on begin and commit as an HTTP header, in the SQL as a
//! leading `TRACEPARENT('…')` hint on one branch and as a trailing sqlcommenter comment on
//! the other — and commits; a second one rolls back. Both processes' spans arrive in the
//! application's trace with `xid` and `branch_id`, `at.statement` is a child of the span
//! the statement named, `branch.register` of the proxy's `at.register`, and the proxy's
//! `at.phase_two` of the coordinator's `branch.phase_two`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use rewind_test_support::*;

const DB1: &str = "t17_traces_a";
const DB2: &str = "t17_traces_b";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receiver: every span of every export request.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(a)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let addr = free_addr();
        let svc = TraceServiceServer::new(r.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve(addr)
                .await
                .expect("OTLP receiver");
        });
        eventually(
            "the OTLP receiver listens",
            Duration::from_secs(10),
            || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        (r, addr)
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Got> {
        let got = self.0.lock().unwrap();
        got.iter()
            .filter(|g| g.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// The spans named `name` of one xid.
fn named<'a>(spans: &'a [Got], name: &str, xid: &str) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.name == name && s.attr("xid") == Some(xid))
        .collect()
}

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Begins over HTTP with the application's `traceparent` header.
async fn begin(coord: &Coordinator, traceparent: &str) -> String {
    let (code, body) = coord
        .http_with(
            "POST",
            "/api/v1/transactions",
            Some(br#"{"name": "traced", "timeout_ms": 30000}"#),
            &[("traceparent", traceparent)],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["xid"].as_str().expect("xid").to_string()
}

/// Runs one branch per schema: `UPDATE t SET v = v + 1 WHERE id = 1` in a local
/// transaction, the first with the hint form, the second with a sqlcommenter comment.
async fn two_branches(proxy: &Proxy, xid: &str, span_a: &str, span_b: &str, trace: &str) {
    let tp_a = format!("00-{trace}-{span_a}-01");
    let tp_b = format!("00-{trace}-{span_b}-01");
    let mut a = proxy.conn(DB1).await;
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop(format!(
        "/*+ XID('{xid}') TRACEPARENT('{tp_a}') */ UPDATE t SET v = v + 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    a.query_drop("COMMIT").await.unwrap();
    let mut b = proxy.conn(DB2).await;
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE t SET v = v + 1 WHERE id = 2 \
         /*controller='pay',traceparent='{tp_b}'*/"
    ))
    .await
    .unwrap();
    // A malformed traceparent is ignored, never an error.
    b.query_drop(format!(
        "/*+ XID('{xid}') TRACEPARENT('00-nope') */ UPDATE t SET v = v + 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    b.query_drop("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_both_processes_join_the_applications_trace() {
    let dir = TempDir::new("traces");
    setup(DB1).await;
    setup(DB2).await;
    let (rx, otlp) = Receiver::start().await;
    let endpoint = format!("http://{otlp}");
    let coord = Coordinator::start(&dir, &["--otlp-endpoint", &endpoint]).await;
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--otlp-endpoint", &endpoint, "--admin-addr", ""],
    )
    .await;

    // ---- a committed global transaction ----
    let trace = random_hex(16);
    let (app_span, span_a, span_b) = (random_hex(8), random_hex(8), random_hex(8));
    let app_tp = format!("00-{trace}-{app_span}-01");
    let xid = begin(&coord, &app_tp).await;
    two_branches(&proxy, &xid, &span_a, &span_b, &trace).await;
    let (code, body) = coord
        .http_with(
            "POST",
            &format!("/api/v1/transactions/{xid}/commit"),
            None,
            &[("traceparent", &app_tp)],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    coord
        .wait_status(&xid, "committed", Duration::from_secs(20))
        .await;

    // ---- a rolled-back one (decided without a traceparent: the begin's context goes on) ----
    let trace2 = random_hex(16);
    let app2 = format!("00-{trace2}-{}-01", random_hex(8));
    let xid2 = begin(&coord, &app2).await;
    two_branches(&proxy, &xid2, &random_hex(8), &random_hex(8), &trace2).await;
    assert_eq!(coord.rollback(&xid2).await, "rolled_back");

    // Everything expected arrives (the exporters send in batches, every few seconds).
    let want_one = [
        ("rewind-coordinator", "global.begin", 1),
        ("rewind-coordinator", "global.commit", 1),
        ("rewind-coordinator", "branch.register", 2),
        ("rewind-coordinator", "branch.phase_two", 2),
        ("rewind-proxy", "at.branch", 2),
        ("rewind-proxy", "at.statement", 3),
        ("rewind-proxy", "at.register", 2),
        ("rewind-proxy", "at.undo_insert", 2),
        ("rewind-proxy", "at.commit", 2),
        ("rewind-proxy", "at.phase_two", 2),
    ];
    let complete = |spans: &[Got], xid: &str, decision: &str| {
        want_one.iter().all(|(svc, name, n)| {
            let name = if *name == "global.commit" {
                decision
            } else {
                name
            };
            named(spans, name, xid)
                .iter()
                .filter(|s| s.service == *svc)
                .count()
                >= *n
        })
    };
    let rx2 = rx.clone();
    let (t1, t2, x1, x2) = (trace.clone(), trace2.clone(), xid.clone(), xid2.clone());
    eventually(
        "both transactions' spans exported",
        Duration::from_secs(45),
        || {
            let (rx, t1, t2, x1, x2) =
                (rx2.clone(), t1.clone(), t2.clone(), x1.clone(), x2.clone());
            async move {
                complete(&rx.of_trace(&t1), &x1, "global.commit")
                    && complete(&rx.of_trace(&t2), &x2, "global.rollback")
            }
        },
    )
    .await;

    let spans = rx.of_trace(&trace);
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert!(
        services.contains("rewind-proxy") && services.contains("rewind-coordinator"),
        "{services:?}"
    );
    // Nothing of this transaction left the application's trace.
    let all = rx.0.lock().unwrap().clone();
    for s in all.iter().filter(|s| s.attr("xid") == Some(xid.as_str())) {
        assert_eq!(s.trace_id, trace, "{s:?} left the trace");
    }

    // The coordinator's decision spans are children of the application's span.
    let begun = named(&spans, "global.begin", &xid);
    assert_eq!(begun[0].parent, app_span, "{:?}", begun[0]);
    let commit = named(&spans, "global.commit", &xid);
    assert_eq!(commit[0].parent, app_span, "{:?}", commit[0]);
    assert_eq!(commit[0].attr("outcome"), Some("committing"));

    // Branches: ids known, one per schema; every statement under the span it named.
    let branches = named(&spans, "at.branch", &xid);
    let ids: HashSet<&str> = branches
        .iter()
        .filter_map(|b| b.attr("branch_id"))
        .collect();
    assert_eq!(ids.len(), 2, "{branches:?}");
    let statements = named(&spans, "at.statement", &xid);
    let under = |p: &str| statements.iter().filter(|s| s.parent == p).count();
    assert_eq!(under(&span_a), 1, "{statements:?}");
    assert_eq!(under(&span_b), 1, "{statements:?}");
    // The statement with a malformed traceparent is a child of its branch's span.
    let branch_spans: HashSet<&str> = branches.iter().map(|b| b.span_id.as_str()).collect();
    assert_eq!(
        statements
            .iter()
            .filter(|s| branch_spans.contains(s.parent.as_str()))
            .count(),
        1,
        "{statements:?}"
    );
    // The first statement's span started each branch's span.
    let mut roots: Vec<&str> = branches.iter().map(|b| b.parent.as_str()).collect();
    roots.sort();
    let mut want = vec![span_a.as_str(), span_b.as_str()];
    want.sort();
    assert_eq!(roots, want);
    for name in ["at.register", "at.undo_insert", "at.commit"] {
        let steps = named(&spans, name, &xid);
        assert_eq!(steps.len(), 2, "{name}: {steps:?}");
        for s in &steps {
            assert!(branch_spans.contains(s.parent.as_str()), "{s:?}");
            assert!(ids.contains(s.attr("branch_id").unwrap_or("")), "{s:?}");
        }
    }
    // The coordinator's registrations continue the proxy's at.register spans.
    let at_register: HashSet<&str> = named(&spans, "at.register", &xid)
        .iter()
        .map(|s| s.span_id.as_str())
        .collect();
    for r in named(&spans, "branch.register", &xid) {
        assert!(at_register.contains(r.parent.as_str()), "{r:?}");
        assert!(ids.contains(r.attr("branch_id").unwrap_or("")), "{r:?}");
        assert_eq!(r.attr("outcome"), Some("registered"));
    }
    // Phase two: the coordinator's dispatch under its decision, the proxy's work under
    // the dispatch, per branch.
    let dispatched = named(&spans, "branch.phase_two", &xid);
    for d in &dispatched {
        assert_eq!(d.parent, commit[0].span_id, "{d:?}");
        assert_eq!(d.attr("action"), Some("commit"));
    }
    let dispatch_ids: HashSet<&str> = dispatched.iter().map(|d| d.span_id.as_str()).collect();
    let worked = named(&spans, "at.phase_two", &xid);
    let worked_ids: HashSet<&str> = worked.iter().filter_map(|w| w.attr("branch_id")).collect();
    assert_eq!(worked_ids, ids);
    for w in &worked {
        assert!(dispatch_ids.contains(w.parent.as_str()), "{w:?}");
        assert_eq!(w.attr("outcome"), Some("done"), "{w:?}");
        assert_eq!(w.attr("action"), Some("commit"));
    }

    // The rollback: its decision follows the begin (no traceparent on the call), the
    // undo ran in the same trace.
    let spans2 = rx.of_trace(&trace2);
    let begun2 = named(&spans2, "global.begin", &xid2);
    let rolled = named(&spans2, "global.rollback", &xid2);
    assert_eq!(rolled[0].parent, begun2[0].span_id, "{:?}", rolled[0]);
    let undone = named(&spans2, "at.phase_two", &xid2);
    assert_eq!(undone.len(), 2, "{undone:?}");
    for u in &undone {
        assert_eq!(u.attr("action"), Some("rollback"));
        assert_eq!(u.attr("outcome"), Some("done"), "{u:?}");
        assert_eq!(u.service, "rewind-proxy");
    }
    // The undo really ran: branch A's row 1 and branch B's rows are back.
    let mut c = direct(DB1).await;
    let v: Option<i64> = c.query_first("SELECT v FROM t WHERE id = 1").await.unwrap();
    assert_eq!(v, Some(1), "committed once, rolled back once");
}
