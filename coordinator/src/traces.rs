//! The coordinator's spans (README "Traces"): `global.begin`, `global.commit`,
//! `global.rollback`, `branch.register`, `branch.phase_two`. The pipeline and the
//! `traceparent` helpers are [`rewind_protocol::trace`]'s.
//!
//! Each global transaction's trace context lives here, in memory, from its begin (or
//! its decision) on: the phase-two commands sent for it carry it to the proxies, so their
//! spans join the application's trace. A bounded map: the oldest entries go first; a
//! coordinator restart or a new leader forgets them (phase two then starts new traces).
//! Nothing here runs while traces are off.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rewind_protocol::trace::{self, Context, KeyValue, SpanContext, TraceContextExt};

use crate::engine::XidNum;

/// Transactions whose trace context is remembered.
const REMEMBERED: usize = 100_000;

#[derive(Default)]
struct Remembered {
    by_xid: HashMap<XidNum, SpanContext>,
    order: VecDeque<XidNum>,
}

static CONTEXTS: Mutex<Option<Remembered>> = Mutex::new(None);

fn remember(xid: XidNum, sc: SpanContext) {
    let mut g = CONTEXTS.lock().expect("trace contexts");
    let r = g.get_or_insert_with(Remembered::default);
    if r.by_xid.insert(xid, sc).is_none() {
        r.order.push_back(xid);
    }
    while r.order.len() > REMEMBERED {
        if let Some(old) = r.order.pop_front() {
            r.by_xid.remove(&old);
        }
    }
}

fn remembered(xid: XidNum) -> Option<SpanContext> {
    let g = CONTEXTS.lock().expect("trace contexts");
    g.as_ref()?.by_xid.get(&xid).cloned()
}

fn parent(sc: Option<SpanContext>) -> Context {
    sc.map(trace::remote).unwrap_or_default()
}

fn xid_attr(xid: XidNum) -> KeyValue {
    KeyValue::new("xid", rewind_protocol::xid::format(xid))
}

/// The `traceparent` an HTTP request carries (well-formed only).
pub fn from_headers(h: &axum::http::HeaderMap) -> Option<SpanContext> {
    trace::parse_traceparent(h.get(trace::TRACEPARENT)?.to_str().ok()?)
}

/// A span around a call, `None` while traces are off.
pub struct Call(Option<Context>);

impl Call {
    /// `global.begin`, child of the caller's span if it sent one.
    pub fn begin(caller: Option<SpanContext>, via: &'static str) -> Call {
        if !trace::enabled() {
            return Call(None);
        }
        Call(Some(trace::start(
            "global.begin",
            &parent(caller),
            vec![KeyValue::new("rewind.api", via)],
        )))
    }

    /// The transaction began as `xid`: its trace context is this span's from now on.
    pub fn begun(&self, xid: XidNum) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(xid_attr(xid));
            remember(xid, cx.span().span_context().clone());
        }
    }

    /// `global.commit` / `global.rollback`: child of the caller's span if it sent one,
    /// else of the transaction's remembered context. Phase two follows this span.
    pub fn decide(xid: XidNum, commit: bool, caller: Option<SpanContext>) -> Call {
        if !trace::enabled() {
            return Call(None);
        }
        let name = if commit {
            "global.commit"
        } else {
            "global.rollback"
        };
        let cx = trace::start(
            name,
            &parent(caller.or_else(|| remembered(xid))),
            vec![xid_attr(xid)],
        );
        remember(xid, cx.span().span_context().clone());
        Call(Some(cx))
    }

    /// `branch.register`, child of the proxy's `at.register` span.
    pub fn register(xid: XidNum, resource_id: &str, caller: Option<SpanContext>) -> Call {
        if !trace::enabled() {
            return Call(None);
        }
        Call(Some(trace::start(
            "branch.register",
            &parent(caller.or_else(|| remembered(xid))),
            vec![
                xid_attr(xid),
                KeyValue::new("resource_id", resource_id.to_string()),
            ],
        )))
    }

    /// Sets an attribute (e.g. `branch_id` once known).
    pub fn set(&self, key: &'static str, value: impl Into<trace::Value>) {
        if let Some(cx) = &self.0 {
            trace::set(cx, key, value);
        }
    }

    /// Records how the call ended (`outcome`: a status name or `error: …`) and ends the span.
    pub fn end<T, E: std::fmt::Display>(self, r: &Result<T, E>, ok: impl FnOnce(&T) -> String) {
        if let Some(cx) = self.0 {
            let outcome = match r {
                Ok(v) => ok(v),
                Err(e) => {
                    cx.span().set_status(trace::Status::error(e.to_string()));
                    format!("error: {e}")
                }
            };
            trace::set(&cx, "outcome", outcome);
            trace::end(&cx);
        }
    }
}

/// `branch.phase_two`: one phase-two command dispatched to a proxy (ended once sent: the
/// proxy's `at.phase_two` span, its child, covers the work). `None` while traces are off.
pub struct PhaseTwo(Option<Context>);

impl PhaseTwo {
    pub fn start(xid: XidNum, branch_id: u64, resource_id: &str, commit: bool) -> PhaseTwo {
        if !trace::enabled() {
            return PhaseTwo(None);
        }
        PhaseTwo(Some(trace::start(
            "branch.phase_two",
            &parent(remembered(xid)),
            vec![
                xid_attr(xid),
                KeyValue::new("branch_id", branch_id as i64),
                KeyValue::new("resource_id", resource_id.to_string()),
                KeyValue::new("action", if commit { "commit" } else { "rollback" }),
            ],
        )))
    }

    /// The `traceparent` the command carries (empty while traces are off).
    pub fn traceparent(&self) -> String {
        self.0
            .as_ref()
            .and_then(trace::traceparent_of)
            .unwrap_or_default()
    }

    /// Whether a proxy's stream took the command; ends the span.
    pub fn sent(self, sent: bool) {
        if let Some(cx) = self.0 {
            let outcome = if sent { "sent" } else { "no_proxy_attached" };
            trace::set(&cx, "outcome", outcome);
            trace::end(&cx);
        }
    }
}
