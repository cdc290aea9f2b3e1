//! Traces, shared by the proxy and the coordinator: the OTLP/gRPC pipeline, W3C
//! `traceparent` parsing and formatting, and carrying it in gRPC metadata.
//!
//! Off unless an endpoint is configured ([`init`]): then no tracer provider is installed,
//! [`enabled`] is false and callers create no spans at all (the statement path checks
//! [`enabled`] before looking for a `traceparent`).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::global;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState, Tracer};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use opentelemetry::trace::{Span, SpanContext, Status, TraceContextExt};
pub use opentelemetry::{Context, KeyValue, Value};

/// The gRPC metadata key and HTTP header carrying a span context (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether an exporter is installed: spans are worth creating.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The installed pipeline; [`Pipeline::shutdown`] flushes what is still queued.
pub struct Pipeline(SdkTracerProvider);

impl Pipeline {
    /// Exports the queued spans and stops the exporter (blocking: call it off the async
    /// workers, e.g. in `spawn_blocking`).
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.0.shutdown() {
            eprintln!("flushing spans failed: {e}");
        }
    }
}

/// The endpoint to export to: `configured` when set, else the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, else none (traces off).
pub fn endpoint(configured: &str) -> Option<String> {
    let configured = configured.trim();
    if !configured.is_empty() {
        return Some(configured.to_string());
    }
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
}

/// Installs the OTLP/gRPC exporter (batched, on its own thread) as the global tracer
/// provider, when an endpoint is configured (see [`endpoint`]); `None` when traces are off.
/// Must run inside a Tokio runtime (the tonic channel's worker runs on it).
pub fn init(
    service: &'static str,
    configured_endpoint: &str,
    resource: Vec<KeyValue>,
) -> Result<Option<Pipeline>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(endpoint) = endpoint(configured_endpoint) else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attributes(resource)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Pipeline(provider)))
}

/// Starts span `name` as a child of `parent` (a root when `parent` holds no span) and
/// answers the context holding it; the span ends when the last clone of that context
/// goes, or at [`end`].
pub fn start(name: &'static str, parent: &Context, attrs: Vec<KeyValue>) -> Context {
    let tracer = global::tracer("rewind");
    let span = tracer
        .span_builder(name)
        .with_attributes(attrs)
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Adds an attribute to the span of `cx`.
pub fn set(cx: &Context, key: &'static str, value: impl Into<Value>) {
    cx.span().set_attribute(KeyValue::new(key, value));
}

/// Ends the span of `cx` now.
pub fn end(cx: &Context) {
    cx.span().end();
}

/// A context whose parent is the remote span `sc` (a client's or another process's).
pub fn remote(sc: SpanContext) -> Context {
    Context::new().with_remote_span_context(sc)
}

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`);
/// `None` for anything malformed, an all-zero id, or version `ff`. Later versions are read
/// by their first four fields, as the specification asks.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 55 || (b.len() > 55 && (b[..2] == *b"00" || b[55] != b'-')) {
        return None;
    }
    let hex = |p: &[u8]| {
        p.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let (version, trace, span, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) || version == b"ff" {
        return None;
    }
    let trace_id = TraceId::from_hex(&s[3..35]).ok()?;
    let span_id = SpanId::from_hex(&s[36..52]).ok()?;
    let flags = u8::from_str_radix(&s[53..55], 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` of a span context (version 00).
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The `traceparent` of the span in `cx`, if it holds a valid one.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format_traceparent(sc))
}

/// Puts the span context of `cx` on an outgoing gRPC request.
pub fn inject<T>(req: &mut tonic::Request<T>, cx: Option<&Context>) {
    if let Some(tp) = cx.and_then(traceparent_of) {
        if let Ok(v) = tp.parse() {
            req.metadata_mut().insert(TRACEPARENT, v);
        }
    }
}

/// The remote span context an incoming gRPC request carries, if any (well-formed).
pub fn extract(meta: &tonic::metadata::MetadataMap) -> Option<SpanContext> {
    parse_traceparent(meta.get(TRACEPARENT)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(format_traceparent(&sc), tp);
        // Not sampled is kept.
        let off = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .expect("valid");
        assert!(!off.is_sampled());
        // A later version with more fields: the first four count.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
                .is_some()
        );
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
