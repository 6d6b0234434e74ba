//! Write-ahead-log files written once, in advance, on a new database.
//!
//! Every synced log write lands in RocksDB's write-ahead log. Into a file that is new and
//! growing, each `fdatasync` also has to commit the file's new size and block allocation to
//! the filesystem journal; into a reused file (`recycle_log_file_num`) it writes data only.
//! RocksDB reuses a file only after it has been released (its memtables flushed), and only
//! within one run of the process, so a new node wrote its first two files, about 128 MiB,
//! the slow way: on 2 cores a fresh cluster confirmed 27-35k msg/s in g's first 4 s against
//! 37-45k after (docs/benchmarks.md, session 21).
//!
//! [`prewrite`] fills two files with throwaway writes to one key of the meta and state
//! families, synced, and has RocksDB release them, so the first real writes already go into
//! reused files. It runs once, on a database that did not exist before; a restarted node
//! replays its log and starts a new file as RocksDB always does.

use crate::store::{cf, open_db, StoreError, CF_META, CF_SM};
use rocksdb::{FlushOptions, DB};
use std::path::Path;
use std::sync::Arc;

/// The throwaway key. Deleted by the time [`prewrite`] returns; [`clear_leftover`] removes
/// what a prewrite cut short by a crash left behind.
const KEY_FILL: &[u8] = b"wal-prewrite-fill";

/// How much a write-ahead-log file holds when RocksDB switches to the next one, in MiB: the
/// log family's 64 MiB memtable and what the small families wrote meanwhile (measured: 64.0-64.1
/// MB). A reused file written past its old end grows again, so the files are a little larger.
pub const DEFAULT_MIB_PER_FILE: usize = 70;

/// Half of a file goes into each of two families; past this a family's 64 MiB memtable would
/// fill and switch files in the middle of one.
pub const MAX_MIB_PER_FILE: usize = 120;

/// Opens the database at `path` (`store::open_db`); a new one gets its write-ahead-log files
/// prewritten with `mib_per_file` MiB each (none with 0).
pub(crate) fn open(path: &Path, mib_per_file: usize) -> Result<Arc<DB>, StoreError> {
    let new = is_new_database(path).map_err(|source| StoreError::Dir {
        path: path.display().to_string(),
        source,
    })?;
    let db = open_db(path)?;
    if new && mib_per_file > 0 {
        let began = std::time::Instant::now();
        prewrite(&db, mib_per_file)?;
        tracing::info!(
            mib_per_file,
            ms = began.elapsed().as_millis() as u64,
            "new database: write-ahead-log files prewritten"
        );
    } else {
        clear_leftover(&db)?;
    }
    Ok(db)
}

/// True when `path` holds no database yet (RocksDB's `CURRENT` file is written at creation).
fn is_new_database(path: &Path) -> std::io::Result<bool> {
    Ok(!path.join("CURRENT").try_exists()?)
}

/// Writes two write-ahead-log files of `mib_per_file` MiB each, syncs them, and flushes the
/// families so RocksDB releases them into its list of files to reuse.
fn prewrite(db: &DB, mib_per_file: usize) -> Result<(), StoreError> {
    let chunk = vec![0u8; 1 << 20];
    // Half into each small family: a family's memtable reaching its 64 MiB limit would flush
    // and switch files in the middle of one.
    // Unsynced writes (RocksDB's default); one sync of the whole file at the end.
    let families = [cf(db, CF_META), cf(db, CF_SM)];
    let mut flush = FlushOptions::default();
    flush.set_wait(true);
    let all: Vec<_> = crate::store::COLUMN_FAMILIES
        .iter()
        .map(|name| cf(db, name))
        .collect();
    // The first flush switches to a new file (none is free yet) and frees the first; the
    // second switches into the first and frees the second.
    for _ in 0..2 {
        for i in 0..mib_per_file {
            db.put_cf(families[i % 2], KEY_FILL, &chunk)?;
        }
        for family in families {
            db.delete_cf(family, KEY_FILL)?;
        }
        db.flush_wal(true)?;
        db.flush_cfs_opt(&all, &flush)?;
    }
    Ok(())
}

/// Deletes the throwaway key if a crash cut a prewrite short and left it in the database.
fn clear_leftover(db: &DB) -> Result<(), StoreError> {
    for family in [CF_META, CF_SM] {
        if db.get_pinned_cf(cf(db, family), KEY_FILL)?.is_some() {
            db.delete_cf(cf(db, family), KEY_FILL)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_numbers_and_sizes(dir: &Path) -> Vec<(u64, u64)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| {
                let number = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                (number, p.metadata().unwrap().len())
            })
            .collect()
    }

    fn wal_files(dir: &Path) -> Vec<u64> {
        let mut sizes: Vec<u64> = wal_numbers_and_sizes(dir)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        sizes.sort();
        sizes
    }

    #[test]
    fn a_new_database_gets_two_full_log_files_and_no_leftover_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        assert!(is_new_database(&path).unwrap());
        let db = open_db(&path).unwrap();
        assert!(!is_new_database(&path).unwrap());
        prewrite(&db, 4).unwrap();
        let sizes = wal_files(&path);
        assert_eq!(sizes.len(), 2, "write-ahead-log files: {sizes:?}");
        assert!(sizes.iter().all(|&s| s >= 4 << 20), "sizes: {sizes:?}");
        for family in [CF_META, CF_SM] {
            assert!(db.get_cf(cf(&db, family), KEY_FILL).unwrap().is_none());
        }
        // The next synced write goes into the start of a reused file: no file appears or
        // grows.
        db.put_cf_opt(cf(&db, CF_META), b"k", b"v", &crate::store::synced())
            .unwrap();
        assert_eq!(wal_files(&path), sizes);
    }

    #[test]
    fn open_prewrites_a_new_database_only_and_clears_a_leftover_fill() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        let db = open(&path, 4).unwrap();
        assert_eq!(wal_files(&path).len(), 2);
        let newest = wal_numbers_and_sizes(&path)
            .into_iter()
            .map(|(number, _)| number)
            .max()
            .unwrap();
        // A crash in the middle of a prewrite leaves the key behind.
        db.put_cf(cf(&db, CF_META), KEY_FILL, b"junk").unwrap();
        drop(db);
        let db = open(&path, 4).unwrap();
        assert!(db.get_cf(cf(&db, CF_META), KEY_FILL).unwrap().is_none());
        // Not prewritten again: no file newer than the first run's holds 4 MiB.
        for (number, size) in wal_numbers_and_sizes(&path) {
            assert!(
                number <= newest || size < 4 << 20,
                "file {number}: {size} bytes"
            );
        }
    }

    #[test]
    fn a_leftover_fill_is_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        db.put_cf(cf(&db, CF_SM), KEY_FILL, b"junk").unwrap();
        db.put_cf(cf(&db, CF_META), b"other", b"kept").unwrap();
        clear_leftover(&db).unwrap();
        assert!(db.get_cf(cf(&db, CF_SM), KEY_FILL).unwrap().is_none());
        assert_eq!(
            db.get_cf(cf(&db, CF_META), b"other").unwrap().as_deref(),
            Some(&b"kept"[..])
        );
    }
}
