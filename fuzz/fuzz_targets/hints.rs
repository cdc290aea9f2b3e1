//! The byte scanners every statement meets before any parsing: the leading-comment hints
//! (`xid::leading_xid` / `leading_hint`, `Msg::of`, `Tcc::of`, `Barrier::of`, the XA tag),
//! the stacked-statement detector and the first-keyword classifier.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rewind_proxy::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::scan(data);
});
