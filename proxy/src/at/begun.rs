//! Global transactions this proxy knows to be running, so that the XID check of a tagged
//! statement ([`crate::session::Session::check_xid`]) need not ask the coordinator again.
//!
//! A registration the coordinator accepted proves that its transaction was `begin` then.
//! Once the transaction is decided, the coordinator sends a phase-two command for every
//! registered branch to a proxy of the branch's resource, over the Attach stream. So from
//! this proxy's registration of a branch until a command for that XID arrives, the XID is
//! known to be running as far as a status call could tell: a status answer may be outdated
//! by a decision the moment it arrives, too. Either way, what decides is the branch's
//! registration at its COMMIT: a decided transaction refuses it (1397) and the local
//! transaction is rolled back. This only spares the round trip; an XID it does not know
//! is asked about as before.
//!
//! An XID stops being known when:
//! - a phase-two command or an operator's resolution for it arrives;
//! - a phase one of it reports failure (the coordinator need not send that branch a
//!   command);
//! - the Attach stream breaks or attaches again (a command may have been missed);
//! - [`KNOWN_FOR`] has passed since the registration. This bounds how long a decision
//!   can go unseen where another proxy of the same resource got the commands: the
//!   coordinator sends each command to one proxy of the resource.
//!
//! A command that overtakes the answer to the registration it follows (a timeout
//! rollback right after the registration, on another HTTP/2 stream) leaves a mark that
//! keeps the late answer from making the XID known.
//!
//! What it spares, measured with `bench/at` at one client (both branches of a transfer
//! through one proxy, so the second branch's check is answered here): 0.07–0.12 ms of the
//! second branch's latency and 35–100 µs of proxy CPU per transfer, alternated against
//! the build before it. At 16 clients the difference stays within the run-to-run noise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a registration its XID stays known without a command for it.
pub const KNOWN_FOR: Duration = Duration::from_secs(2);

/// Entries kept at most (about 1.5 MB); beyond it the expired go, and if that is not
/// enough, all of them (a forgotten XID only costs a status call).
const MAX_ENTRIES: usize = 16 * 1024;

#[derive(Default)]
pub struct Begun {
    inner: Mutex<Inner>,
    /// XID checks answered here (`known`) and by the coordinator.
    pub known: AtomicU64,
    pub asked: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Counts attachments of the stream; `None` while it is down.
    epoch: Option<u64>,
    attachments: u64,
    /// By XID: when it became known to be running, or when a command said it is decided
    /// (a mark that keeps a late registration answer out).
    entries: HashMap<String, (Instant, Entry)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Entry {
    Running,
    Decided,
}

impl Begun {
    /// The Attach stream is up (again): nothing known from before counts.
    pub fn attached(&self) {
        let mut i = self.lock();
        i.attachments += 1;
        i.epoch = Some(i.attachments);
        i.entries.clear();
    }

    /// The Attach stream is down: commands may be missed, so nothing is known.
    pub fn detached(&self) {
        let mut i = self.lock();
        i.epoch = None;
        i.entries.clear();
    }

    /// The stream's current attachment, taken before a registration is sent.
    pub fn epoch(&self) -> Option<u64> {
        self.lock().epoch
    }

    /// The coordinator accepted a registration of `xid` sent during attachment `epoch`.
    pub fn registered(&self, xid: &str, epoch: Option<u64>) {
        let now = Instant::now();
        let mut i = self.lock();
        if epoch.is_none() || i.epoch != epoch {
            return;
        }
        match i.entries.get_mut(xid) {
            Some((_, Entry::Decided)) => {}
            Some((at, Entry::Running)) => *at = now,
            None => {
                i.make_room(now);
                i.entries.insert(xid.to_string(), (now, Entry::Running));
            }
        }
    }

    /// A command for `xid` arrived: it is decided.
    pub fn decided(&self, xid: &str) {
        let now = Instant::now();
        let mut i = self.lock();
        if i.epoch.is_none() {
            return;
        }
        if let Some(e) = i.entries.get_mut(xid) {
            *e = (now, Entry::Decided);
            return;
        }
        i.make_room(now);
        i.entries.insert(xid.to_string(), (now, Entry::Decided));
    }

    /// A branch of `xid` failed its phase one: ask about it next time.
    pub fn forget(&self, xid: &str) {
        let mut i = self.lock();
        if let Some((_, Entry::Running)) = i.entries.get(xid) {
            i.entries.remove(xid);
        }
    }

    /// Whether `xid` is known to be running (the caller then skips the status call).
    pub fn is_running(&self, xid: &str) -> bool {
        let known = {
            let i = self.lock();
            i.epoch.is_some()
                && matches!(i.entries.get(xid), Some((at, Entry::Running)) if at.elapsed() < KNOWN_FOR)
        };
        if known {
            self.known.fetch_add(1, Relaxed);
        } else {
            self.asked.fetch_add(1, Relaxed);
        }
        known
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < MAX_ENTRIES {
            return;
        }
        // Expired: a known XID after KNOWN_FOR, and a decided mark too (the answer it keeps
        // out was already on its way when the command was sent: it arrives within
        // milliseconds, not seconds).
        self.entries
            .retain(|_, (at, _)| now.duration_since(*at) < KNOWN_FOR);
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_makes_its_xid_known_until_a_command_for_it() {
        let b = Begun::default();
        b.registered("rw-1", b.epoch());
        assert!(!b.is_running("rw-1"), "not attached: nothing is known");
        b.attached();
        b.registered("rw-1", b.epoch());
        assert!(b.is_running("rw-1"));
        assert!(!b.is_running("rw-2"));
        b.decided("rw-1");
        assert!(!b.is_running("rw-1"));
        // A registration answer that arrives after the command changes nothing.
        b.registered("rw-1", b.epoch());
        assert!(!b.is_running("rw-1"));
        assert_eq!(b.known.load(Relaxed), 1);
        assert_eq!(b.asked.load(Relaxed), 4);
    }

    #[test]
    fn a_break_in_the_stream_forgets_everything() {
        let b = Begun::default();
        b.attached();
        let before = b.epoch();
        b.registered("rw-1", before);
        b.detached();
        assert!(!b.is_running("rw-1"));
        b.attached();
        assert!(!b.is_running("rw-1"));
        // Sent before the stream came back: not recorded.
        b.registered("rw-3", before);
        assert!(!b.is_running("rw-3"));
    }

    #[test]
    fn a_failed_phase_one_forgets_its_xid() {
        let b = Begun::default();
        b.attached();
        b.registered("rw-1", b.epoch());
        b.forget("rw-1");
        assert!(!b.is_running("rw-1"));
        b.decided("rw-2");
        b.forget("rw-2");
        b.registered("rw-2", b.epoch());
        assert!(!b.is_running("rw-2"), "a decided mark is not forgotten");
    }

    #[test]
    fn entries_are_bounded() {
        let b = Begun::default();
        b.attached();
        for n in 0..MAX_ENTRIES + 10 {
            b.registered(&format!("rw-{n}"), b.epoch());
        }
        assert!(b.lock().entries.len() <= MAX_ENTRIES);
    }
}
