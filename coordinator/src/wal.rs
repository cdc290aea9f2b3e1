//! Write-ahead log in front of redb. Why: on ext4 an fsync that extends or allocates a
//! file costs a journal commit (milliseconds); overwriting blocks of a file that was
//! zero-filled once costs a plain data flush (tens of microseconds). So each batch is
//! appended to a pre-zeroed log file with one `fdatasync`, and applied to redb without
//! an fsync; when the log is full, redb is committed durably (a checkpoint, recording
//! the last log sequence number it contains) and the log restarts at offset 0.
//!
//! Record: `len: u32 | lsn: u64 | check: u64 | payload[len]` (little endian), `check`
//! being the CRC-32 of `len | lsn | payload` (crc32fast) in its low half. Recovery
//! reads records from offset 0 while they are intact (length fits, check matches) and
//! applies those after the checkpoint, in sequence; anything after the checkpoint that
//! breaks the sequence ends the log (a torn write, or older records from before the
//! last restart at offset 0, which are all at or below the checkpoint).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 20;

/// Intact records found on open: (sequence number, payload), in order.
pub type Replay = Vec<(u64, Vec<u8>)>;

pub struct Wal {
    file: File,
    size: u64,
    offset: u64,
    path: PathBuf,
}

/// The record check: CRC-32 of the length, the sequence number and the payload.
pub fn check(lsn: u64, data: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(data.len() as u32).to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(data);
    u64::from(h.finalize())
}

/// The check that builds before crc32fast wrote (a multiply-xorshift over 8-byte words).
/// Still accepted when reading, so a data directory last written by such a build
/// recovers its acknowledged batches; after that first start every record it could
/// still need is rewritten with [`check`] (the log restarts at offset 0 after the
/// recovery checkpoint, and older records left behind are at or below it).
fn legacy_check(lsn: u64, data: &[u8]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ lsn ^ (data.len() as u64).rotate_left(32);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    for (i, b) in chunks.remainder().iter().enumerate() {
        h = (h ^ ((*b as u64) << (i * 8))).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
    h ^= h >> 32;
    h
}

fn zero_fill(path: &Path, size: u64) -> std::io::Result<File> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().read(true).write(true).open(path)
}

impl Wal {
    /// Opens (or creates, zero-filled) the log and returns it with its intact records
    /// of sequence number above `after`, in order. The caller checkpoints them and then
    /// calls [`Wal::restart`].
    pub fn open(path: &Path, size: u64, after: u64) -> std::io::Result<(Wal, Replay)> {
        let mut records = Vec::new();
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => {
                let len = f.metadata()?.len();
                let mut off = 0u64;
                let mut expect = after + 1;
                let mut head = [0u8; HEADER];
                while off + HEADER as u64 <= len {
                    f.read_exact_at(&mut head, off)?;
                    let n = u32::from_le_bytes(head[0..4].try_into().expect("4")) as u64;
                    let lsn = u64::from_le_bytes(head[4..12].try_into().expect("8"));
                    let h = u64::from_le_bytes(head[12..20].try_into().expect("8"));
                    if n == 0 || off + HEADER as u64 + n > len {
                        break;
                    }
                    let mut data = vec![0u8; n as usize];
                    f.read_exact_at(&mut data, off + HEADER as u64)?;
                    if check(lsn, &data) != h && legacy_check(lsn, &data) != h {
                        break;
                    }
                    if lsn > after {
                        if lsn != expect {
                            break;
                        }
                        expect += 1;
                        records.push((lsn, data));
                    }
                    off += HEADER as u64 + n;
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => zero_fill(path, size)?,
            Err(e) => return Err(e),
        };
        Ok((
            Wal {
                file,
                size,
                offset: 0,
                path: path.to_path_buf(),
            },
            records,
        ))
    }

    /// After the caller checkpointed the replayed records: starts writing from offset 0,
    /// first re-creating the file if its size is not the configured one (only now, so
    /// a crash before the checkpoint still finds the old records).
    pub fn restart_after_recovery(&mut self) -> std::io::Result<()> {
        if self.file.metadata()?.len() != self.size {
            self.file = zero_fill(&self.path, self.size)?;
        }
        self.offset = 0;
        self.mark_durable();
        Ok(())
    }

    /// Whether a record of `len` payload bytes fits before the end.
    pub fn fits(&self, len: usize) -> bool {
        self.offset + (HEADER + len) as u64 <= self.size
    }

    /// Appends one record and makes it durable.
    pub fn append(&mut self, lsn: u64, data: &[u8]) -> std::io::Result<()> {
        self.append_with(lsn, data, true)
    }

    /// Appends one record, made durable now (`sync`) or by the next synced append: the
    /// file is written in order and `fdatasync` flushes every earlier write with it, so
    /// an unsynced record is lost in a crash only together with everything after it
    /// (recovery stops at the first record that is not intact).
    pub fn append_with(&mut self, lsn: u64, data: &[u8], sync: bool) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(HEADER + data.len());
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&lsn.to_le_bytes());
        buf.extend_from_slice(&check(lsn, data).to_le_bytes());
        buf.extend_from_slice(data);
        self.file.write_all_at(&buf, self.offset)?;
        if sync {
            self.file.sync_data()?;
        }
        self.offset += buf.len() as u64;
        if sync {
            self.mark_durable();
        }
        Ok(())
    }

    /// Makes every record appended so far durable (those appended without `sync`).
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.mark_durable();
        Ok(())
    }

    /// After a checkpoint: everything in the log is in redb, write from the start.
    pub fn restart(&mut self) {
        self.offset = 0;
        self.mark_durable();
    }

    /// Test hook (`failpoints` feature): writes the offset up to which the log is
    /// durable to `<log>.durable`, so that a test can model a power cut by zeroing the
    /// log from there (everything after it was written without a sync). Without the
    /// feature it does nothing.
    fn mark_durable(&self) {
        #[cfg(feature = "failpoints")]
        {
            let mark = format!("{}.durable", self.path.display());
            if let Err(e) = std::fs::write(&mark, self.offset.to_string()) {
                tracing::error!(error = %e, "failpoint: writing {mark}");
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A fresh directory under the system's temporary one, for tests of files on disk.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rewind-{name}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_torn_tail_is_ignored() {
        let dir = test_dir("wal");
        let path = dir.join("wal");
        let (mut w, recs) = Wal::open(&path, 4096, 0).unwrap();
        assert!(recs.is_empty());
        for lsn in 1..=5u64 {
            w.append(lsn, format!("record {lsn}").as_bytes()).unwrap();
        }
        // Tear the fifth record.
        let off = w.offset - 3;
        w.file.write_all_at(b"XYZ", off).unwrap();
        drop(w);
        // Reopened with another size: records are still read, the resize waits.
        let (mut w, recs) = Wal::open(&path, 8192, 2).unwrap();
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        w.restart_after_recovery().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        assert_eq!(recs[0].1, b"record 3");
        // Checkpoint at 4, restart from offset 0: old records are at or below it.
        w.restart();
        w.append(5, b"new five").unwrap();
        drop(w);
        let (w, recs) = Wal::open(&path, 8192, 4).unwrap();
        assert_eq!(recs, vec![(5, b"new five".to_vec())]);
        assert!(!w.fits(8192));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A record written without a sync is in the log like any other (durable once a
    /// later record is synced), in sequence with the synced ones around it.
    #[test]
    fn unsynced_records_are_replayed_in_order() {
        let dir = test_dir("wal-unsynced");
        let path = dir.join("wal");
        let (mut w, _) = Wal::open(&path, 4096, 0).unwrap();
        w.append(1, b"synced").unwrap();
        w.append_with(2, b"lazy", false).unwrap();
        w.append_with(3, b"lazy too", false).unwrap();
        w.append(4, b"synced again").unwrap();
        w.append_with(5, b"last, lazy", false).unwrap();
        drop(w);
        let (_, recs) = Wal::open(&path, 4096, 0).unwrap();
        assert_eq!(
            recs,
            vec![
                (1, b"synced".to_vec()),
                (2, b"lazy".to_vec()),
                (3, b"lazy too".to_vec()),
                (4, b"synced again".to_vec()),
                (5, b"last, lazy".to_vec()),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_written_with_the_legacy_check_are_still_read() {
        let dir = test_dir("wal-legacy");
        let path = dir.join("wal");
        let (w, _) = Wal::open(&path, 4096, 0).unwrap();
        let mut off = 0;
        for lsn in 1..=2u64 {
            let data = format!("old {lsn}").into_bytes();
            let mut buf = (data.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&lsn.to_le_bytes());
            buf.extend_from_slice(&legacy_check(lsn, &data).to_le_bytes());
            buf.extend_from_slice(&data);
            w.file.write_all_at(&buf, off).unwrap();
            off += buf.len() as u64;
        }
        drop(w);
        let (_, recs) = Wal::open(&path, 4096, 0).unwrap();
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
