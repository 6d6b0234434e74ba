//! Snapshot data in files beside the database: `<data_dir>/snapshots/<id>.snap`, the stored
//! snapshot meta (in RocksDB) naming which one is current.
//!
//! A snapshot holds every queued message, so it can be gigabytes. As a RocksDB value it went
//! through the write-ahead log and the memtable (two more copies in memory while written) and
//! had to be read whole whenever openraft asked for the current snapshot, which it does at
//! every start just to learn its meta. As a file it is written once, read only when needed,
//! and handed to openraft as an open file that it streams to a follower in chunks.
//!
//! Writes are atomic and durable: a temporary file, fsync, rename, fsync of the directory.
//! Only then does the meta point at it; files that no meta points at are removed. A file is
//! never changed once renamed into place, so it can be mapped into memory and decoded without
//! copying its message bodies (`map`).

use crate::types::SnapshotMeta;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = ".incoming-";

/// The directory of snapshot files.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    next_temp: AtomicU64,
}

impl SnapshotFiles {
    /// The snapshot directory of the database at `db_path` (`<data_dir>/db`):
    /// `<data_dir>/snapshots`, created if missing.
    pub(crate) fn beside(db_path: &Path) -> std::io::Result<SnapshotFiles> {
        let dir = db_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("snapshots");
        fs::create_dir_all(&dir)?;
        Ok(SnapshotFiles {
            dir,
            next_temp: AtomicU64::new(0),
        })
    }

    /// Where the snapshot of `meta` lives. The id is made by a leader of this cluster, but it
    /// becomes a file name here, so only plain characters are kept.
    pub(crate) fn path(&self, meta: &SnapshotMeta) -> PathBuf {
        let name: String = meta
            .snapshot_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// A fresh temporary path in the directory (for a snapshot being received).
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TEMP_PREFIX}{}-{n}.tmp", std::process::id()))
    }

    /// Writes `data` as the snapshot of `meta`, durably.
    pub(crate) fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<()> {
        self.write_with(meta, |out| out.write_all(data))
    }

    /// Writes the snapshot of `meta` durably, its bytes produced by `fill` straight into the
    /// (buffered) file: a snapshot can be gigabytes, and encoding it into memory first doubled
    /// the process's memory while one was taken.
    pub(crate) fn write_with(
        &self,
        meta: &SnapshotMeta,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let temp = self.temp_path();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        self.adopt(&temp, meta)
    }

    /// Moves a complete, synced temporary file into place as the snapshot of `meta`.
    pub(crate) fn adopt(&self, temp: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
        fs::rename(temp, self.path(meta))?;
        File::open(&self.dir)?.sync_all()
    }

    /// The snapshot file at `path` mapped into memory, as bytes that messages decoded from it
    /// can share (see `raftmq_broker::shared_bytes`): a restart does not read or copy the
    /// queued bodies, the kernel pages them in from the page cache when touched. The mapping
    /// lives while any message decoded from it does; a later snapshot unlinks the file, and the
    /// disk space returns when the last such message is gone.
    pub(crate) fn map(path: &Path) -> std::io::Result<Bytes> {
        SnapshotFiles::map_file(&File::open(path)?)
    }

    /// `map` of a snapshot file already open.
    pub(crate) fn map_file(file: &File) -> std::io::Result<Bytes> {
        // SAFETY: a mapped file that is truncated or rewritten under the mapping would change
        // memory behind Rust's back (or fault). Snapshot files are never written in place:
        // each one is written (or received) under a temporary name, synced, then renamed into
        // place, and afterwards only unlinked, which leaves a mapping intact.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Bytes::from_owner(map))
    }

    /// Removes every snapshot file but `keep` (and every leftover temporary file).
    pub(crate) fn remove_all_but(&self, keep: Option<&SnapshotMeta>) {
        let keep = keep.map(|m| self.path(m));
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name.ends_with(SUFFIX) || name.starts_with(TEMP_PREFIX);
            if ours && Some(&path) != keep.as_ref() {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove an old snapshot file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredMembership;

    fn meta(id: &str) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: id.to_string(),
        }
    }

    #[test]
    fn written_snapshots_are_found_by_meta_and_old_ones_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::beside(&tmp.path().join("db")).unwrap();
        files.write(&meta("T1-N1-10-5"), b"first").unwrap();
        files.write(&meta("T1-N1-20-6"), b"second").unwrap();
        fs::write(files.temp_path(), b"half received").unwrap();
        files.remove_all_but(Some(&meta("T1-N1-20-6")));
        let left: Vec<_> = fs::read_dir(tmp.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["T1-N1-20-6.snap".to_string()]);
        assert_eq!(
            fs::read(files.path(&meta("T1-N1-20-6"))).unwrap(),
            b"second"
        );
    }

    #[test]
    fn an_id_cannot_name_a_path_outside_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::beside(&tmp.path().join("db")).unwrap();
        let path = files.path(&meta("../../etc/passwd"));
        assert_eq!(path.parent().unwrap(), tmp.path().join("snapshots"));
    }
}
