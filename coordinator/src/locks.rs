//! Global row locks: which global transaction holds which (resource, table, pk tuple).
//!
//! Memory is what limits how many rows can be locked at once, so a held lock is kept
//! compact: resource and table names are interned to `u32`s, the primary-key tuple is
//! one length-prefixed byte string, and the holder is the transaction's number. A lock
//! costs its hash-table slot (~40 bytes) plus one small heap allocation for the pk.
//! Keys are structured end to end: no separator is ever reserved.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::XidNum;

/// A lock key as the outside world spells it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RowKey {
    pub table: String,
    pub pk: Vec<Vec<u8>>,
}

/// An interned, compact lock key. Only meaningful together with the [`LockTable`] that
/// made it (the ids index its name table).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InternedKey {
    resource: u32,
    table: u32,
    /// Each pk element as a LEB128 length followed by its bytes.
    pk: Box<[u8]>,
}

/// Holder of a lock: the transaction and how many of its branches took the key (two
/// branches of one transaction may touch the same row; rollback releases them one by
/// one in reverse order, and the row must stay locked until the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub xid: XidNum,
    pub count: u32,
}

#[derive(Default)]
pub struct LockTable {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
    held: HashMap<InternedKey, Holder>,
}

fn encode_pk(pk: &[Vec<u8>]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(pk.iter().map(|p| p.len() + 1).sum());
    for part in pk {
        let mut n = part.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(part);
    }
    out.into_boxed_slice()
}

fn decode_pk(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let b = bytes[0];
            bytes = &bytes[1..];
            n |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        out.push(bytes[..n].to_vec());
        bytes = &bytes[n..];
    }
    out
}

impl LockTable {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// Interns a key (names are kept for the table's lifetime; there are few).
    pub fn compact(&mut self, resource: &str, key: &RowKey) -> InternedKey {
        InternedKey {
            resource: self.intern(resource),
            table: self.intern(&key.table),
            pk: encode_pk(&key.pk),
        }
    }

    /// A key for lookups only: `None` if a name was never seen, so nothing can hold it.
    pub fn lookup_key(&self, resource: &str, key: &RowKey) -> Option<InternedKey> {
        Some(InternedKey {
            resource: *self.ids.get(resource)?,
            table: *self.ids.get(key.table.as_str())?,
            pk: encode_pk(&key.pk),
        })
    }

    pub fn expand(&self, key: &InternedKey) -> (String, RowKey) {
        (
            self.names[key.resource as usize].to_string(),
            RowKey {
                table: self.names[key.table as usize].to_string(),
                pk: decode_pk(&key.pk),
            },
        )
    }

    pub fn holder(&self, key: &InternedKey) -> Option<XidNum> {
        self.held.get(key).map(|h| h.xid)
    }

    /// Takes every key for `xid`, or none: returns the first key held by another
    /// transaction and its holder.
    pub fn acquire_all(
        &mut self,
        xid: XidNum,
        keys: &[InternedKey],
    ) -> Result<(), (InternedKey, XidNum)> {
        for key in keys {
            if let Some(h) = self.held.get(key) {
                if h.xid != xid {
                    return Err((key.clone(), h.xid));
                }
            }
        }
        for key in keys {
            self.held
                .entry(key.clone())
                .and_modify(|h| h.count += 1)
                .or_insert(Holder { xid, count: 1 });
        }
        Ok(())
    }

    /// Re-takes keys while loading durable state (no conflict check: the log is the truth).
    pub fn restore(&mut self, xid: XidNum, keys: &[InternedKey]) {
        for key in keys {
            self.held
                .entry(key.clone())
                .and_modify(|h| h.count += 1)
                .or_insert(Holder { xid, count: 1 });
        }
    }

    pub fn release_all(&mut self, xid: XidNum, keys: &[InternedKey]) {
        for key in keys {
            if let Some(h) = self.held.get_mut(key) {
                if h.xid == xid {
                    h.count -= 1;
                    if h.count == 0 {
                        self.held.remove(key);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// The tables holding at least one lock, per resource.
    pub fn tables(&self) -> HashMap<String, std::collections::HashSet<String>> {
        let mut ids: HashMap<u32, std::collections::HashSet<u32>> = HashMap::new();
        for k in self.held.keys() {
            ids.entry(k.resource).or_default().insert(k.table);
        }
        ids.into_iter()
            .map(|(r, tables)| {
                (
                    self.names[r as usize].to_string(),
                    tables
                        .into_iter()
                        .map(|t| self.names[t as usize].to_string())
                        .collect(),
                )
            })
            .collect()
    }

    /// Bytes the held locks use: hash-table slots (including the control byte and spare
    /// capacity) plus each pk's heap allocation rounded to the allocator's 16 bytes.
    pub fn approx_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(InternedKey, Holder)>() + 1;
        let table = self.held.capacity() * slot;
        let heap: usize = self
            .held
            .keys()
            .map(|k| k.pk.len().div_ceil(16).max(1) * 16)
            .sum();
        table + heap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(table: &str, pk: &[&[u8]]) -> RowKey {
        RowKey {
            table: table.into(),
            pk: pk.iter().map(|p| p.to_vec()).collect(),
        }
    }

    #[test]
    fn separators_do_not_collide() {
        let mut t = LockTable::default();
        // Seata would join these into the same "t:1_2" string.
        let a = t.compact("r", &key("t", &[b"1_2"]));
        let b = t.compact("r", &key("t", &[b"1", b"2"]));
        assert_ne!(a, b);
        t.acquire_all(1, std::slice::from_ref(&a)).unwrap();
        t.acquire_all(2, std::slice::from_ref(&b)).unwrap();
        assert_eq!(t.expand(&b).1, key("t", &[b"1", b"2"]));
        let long = vec![7u8; 300];
        let c = t.compact("r", &key("t:x;y", &[&long, b""]));
        assert_eq!(t.expand(&c).1.pk, vec![long, vec![]]);
    }

    #[test]
    fn all_or_nothing_and_refcount() {
        let mut t = LockTable::default();
        let k1 = t.compact("r", &key("t", &[b"1"]));
        let k2 = t.compact("r", &key("t", &[b"2"]));
        t.acquire_all(1, std::slice::from_ref(&k2)).unwrap();
        let err = t.acquire_all(2, &[k1.clone(), k2.clone()]).unwrap_err();
        assert_eq!(err.1, 1);
        assert_eq!(t.holder(&k1), None, "nothing taken on conflict");
        // Same transaction, second branch: re-entrant, counted.
        t.acquire_all(1, &[k1.clone(), k2.clone()]).unwrap();
        t.release_all(1, &[k1.clone(), k2.clone()]);
        assert_eq!(t.holder(&k2), Some(1));
        assert_eq!(t.holder(&k1), None);
        t.release_all(1, std::slice::from_ref(&k2));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn bytes_per_lock_is_small() {
        let mut t = LockTable::default();
        let n = 100_000u64;
        for i in 0..n {
            let k = t.compact("db1", &key("orders", &[i.to_string().as_bytes()]));
            t.acquire_all(i, &[k]).unwrap();
        }
        let per = t.approx_bytes() as f64 / n as f64;
        assert!(per < 120.0, "{per} bytes per lock");
    }
}
