//! Active/standby on a shared directory (Amazon MQ's ActiveMQ deployment on an EFS mount).
//!
//! The directory holds the one-member log of the pair (`db/`), the lock file
//! (`raftmq.lock`), the fencing epoch (`fence`) and a marker written once the log was first
//! formed there (`formed`). A process becomes active by taking the lock; the standby polls
//! for it. Taking over advances the fencing epoch, and while active a process checks, several
//! times a second ([`SharedDir::check`]):
//!
//! - that the lock path still names the file it locked (the lock file was not deleted or the
//!   directory moved or unmounted, which would let a second process lock a new file);
//! - that the fencing epoch is still its own (nobody else took over);
//! - that it can still create, write, fsync and remove a file there (the directory is not
//!   gone, read-only or hung).
//!
//! A frozen (SIGSTOP) active keeps its lock: the kernel, not the process, holds it, and an
//! NFS client keeps renewing it. So the standby does not take over while the old active is
//! frozen; when it resumes it carries on as the only writer. See `docs/failover.md` for why
//! this is the choice, and what the epoch adds.

use crate::lock::{DataDirLock, LockError};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const FENCE_FILE: &str = "fence";
pub const FORMED_FILE: &str = "formed";

/// What stops a process from becoming (or staying) active.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SharedError {
    /// The directory cannot be used now (missing, read-only, failing I/O); worth retrying.
    #[error("shared directory {dir} is unavailable: {reason}")]
    Unavailable { dir: PathBuf, reason: String },
    /// Someone else is the writer now: this process must stop at once, writing nothing.
    #[error("fenced off shared directory {dir}: {reason}")]
    Fenced { dir: PathBuf, reason: String },
}

/// The lock of the active process and the fencing epoch it took over with.
#[derive(Debug)]
pub struct ActiveLease {
    lock: DataDirLock,
    identity: (u64, u64),
    epoch: u64,
}

impl ActiveLease {
    /// The fencing epoch of this takeover (1 for the first active ever).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The lock, to hand to the log (which releases it when it closes).
    pub fn into_lock(self) -> DataDirLock {
        self.lock
    }
}

/// What the active process checks against: the lock's file and its epoch. Small and `Copy`, so
/// a watchdog can keep it while the log owns the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub identity: (u64, u64),
    pub epoch: u64,
}

impl ActiveLease {
    pub fn info(&self) -> LeaseInfo {
        LeaseInfo {
            identity: self.identity,
            epoch: self.epoch,
        }
    }
}

/// The shared directory of an active/standby pair, as one process sees it.
#[derive(Clone, Debug)]
pub struct SharedDir {
    dir: PathBuf,
    /// Names this process's temporary files (two containers may both be pid 1).
    tag: u64,
    /// Set once this process saw the log formed here: an empty directory at this path later
    /// is then a missing share (unmounted, replaced), never a fresh start.
    seen_formed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SharedDir {
    pub fn new(dir: impl Into<PathBuf>) -> SharedDir {
        let mut tag = [0u8; 8];
        // A fixed tag still works (only two processes share the directory); randomness just
        // keeps their temporary names apart.
        let _ = getrandom::fill(&mut tag);
        let shared = SharedDir {
            dir: dir.into(),
            tag: u64::from_le_bytes(tag) ^ u64::from(std::process::id()),
            seen_formed: Default::default(),
        };
        shared.note_formed(&shared.dir);
        shared
    }

    /// Remembers whether the log is formed in `at` (this directory) now.
    fn note_formed(&self, at: &Path) -> bool {
        let formed = at.join(FORMED_FILE).exists();
        if formed {
            self.seen_formed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        formed
    }

    /// Whether the log is formed in `at`; an error if it is not although this process saw
    /// it formed here before (the share is missing and something empty stands in its place).
    fn check_not_emptied(&self, at: &Path) -> Result<bool, SharedError> {
        let formed = self.note_formed(at);
        if !formed && self.seen_formed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.unavailable(
                "it held this pair's log before and is empty now (the share is not mounted, or was replaced); not starting an empty broker over it",
            ));
        }
        Ok(formed)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(crate::lock::LOCK_FILE_NAME)
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> SharedError {
        SharedError::Unavailable {
            dir: self.dir.clone(),
            reason: reason.to_string(),
        }
    }

    fn fenced(&self, reason: impl std::fmt::Display) -> SharedError {
        SharedError::Fenced {
            dir: self.dir.clone(),
            reason: reason.to_string(),
        }
    }

    /// One attempt to become active (blocking I/O). `Ok(None)`: another process holds the lock.
    /// On success the directory is known to be writable, the fencing epoch has been advanced
    /// and written durably, and `holder` is in the lock file.
    ///
    /// The directory itself is never created here: a missing directory is an unmounted share,
    /// and a fresh empty log in its place would hide every message.
    ///
    /// Every step of one attempt happens in the one directory that was opened first, even if
    /// the path is made to name another directory meanwhile (a share mounted over a bare mount
    /// point): otherwise a lock taken in the old directory could be followed by an epoch
    /// written into the new one, fencing its rightful holder.
    pub fn try_take(&self, holder: &str) -> Result<Option<ActiveLease>, SharedError> {
        if !self.dir.is_dir() {
            return Err(self.unavailable("it does not exist (not mounted?)"));
        }
        let pinned = PinnedDir::open(&self.dir).map_err(|e| self.unavailable(e))?;
        let at = pinned.path();
        // Before the lock: an emptied directory is unavailable whoever holds its lock, and
        // the other process's own brief attempt on it must not read as storage that works.
        self.check_not_emptied(&at)?;
        let mut lock = match DataDirLock::acquire(&at) {
            Ok(lock) => lock.described_as(self.lock_path()),
            Err(LockError::InUse { .. }) => return Ok(None),
            Err(LockError::Io { source, .. }) => return Err(self.unavailable(source)),
        };
        // Holding the lock, nobody else writes here; check that we can before writing
        // anything that matters.
        probe(&at, self.tag).map_err(|e| self.unavailable(e))?;
        // Again under the lock: the other process may have formed the log meanwhile.
        let formed = self.check_not_emptied(&at)?;
        if formed && !at.join("db").join("CURRENT").exists() {
            return Err(self.unavailable(
                "it was formed but holds no database (db/CURRENT is missing): the wrong mount, or its data was removed; not starting an empty broker over it",
            ));
        }
        let epoch = self.read_epoch_at(&at)? + 1;
        self.write_epoch(&at, epoch)
            .map_err(|e| self.unavailable(e))?;
        let identity = lock.identity().map_err(|e| self.unavailable(e))?;
        lock.set_holder(&format!(
            "{holder} pid={} epoch={epoch}",
            std::process::id()
        ))
        .map_err(|e| self.unavailable(e))?;
        // The log is opened by its path next: the path must still name what was locked.
        if !pinned.still_at(&self.dir) || file_identity(&self.lock_path()).ok() != Some(identity) {
            return Err(self.unavailable(
                "it was replaced by another directory while this process took it over; trying again",
            ));
        }
        Ok(Some(ActiveLease {
            lock,
            identity,
            epoch,
        }))
    }

    /// Records that the log was formed here (call once it opened), so that an empty directory
    /// found here later is recognised as lost data rather than a fresh start.
    pub fn mark_formed(&self) -> std::io::Result<()> {
        if !self.note_formed(&self.dir) {
            write_durably(&self.dir, FORMED_FILE, b"raftmq shared log\n", self.tag)?;
            self.note_formed(&self.dir);
        }
        Ok(())
    }

    /// The current fencing epoch (0 before any takeover).
    pub fn read_epoch(&self) -> Result<u64, SharedError> {
        self.read_epoch_at(&self.dir)
    }

    fn read_epoch_at(&self, at: &Path) -> Result<u64, SharedError> {
        let path = at.join(FENCE_FILE);
        let mut text = String::new();
        match File::open(&path).and_then(|mut f| f.read_to_string(&mut text)) {
            Ok(_) => text.trim().parse().map_err(|_| {
                self.unavailable(format!("{} holds {text:?}, not an epoch", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    fn write_epoch(&self, at: &Path, epoch: u64) -> std::io::Result<()> {
        write_durably(at, FENCE_FILE, format!("{epoch}\n").as_bytes(), self.tag)
    }

    /// Who holds the lock, as its holder wrote it (for the standby's health).
    pub fn holder(&self) -> Option<String> {
        fs::read_to_string(self.lock_path())
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// The active's periodic check (blocking I/O): still the writer, and still able to write.
    pub fn check(&self, lease: &LeaseInfo) -> Result<(), SharedError> {
        use std::os::unix::fs::MetadataExt;
        let lock_path = self.lock_path();
        match fs::metadata(&lock_path) {
            Ok(meta) if (meta.dev(), meta.ino()) == lease.identity => {}
            Ok(_) => {
                return Err(self.fenced(format!(
                    "{} is no longer the file this process locked",
                    lock_path.display()
                )))
            }
            Err(e) if self.dir.is_dir() => {
                // The directory is there but our lock file is not: it was deleted, and
                // another process can now lock a new one.
                return Err(self.fenced(format!("{}: {e}", lock_path.display())));
            }
            Err(e) => {
                // Gone with the directory (moved, unmounted): stop writing and step down.
                return Err(self.unavailable(format!("{}: {e}", lock_path.display())));
            }
        }
        let epoch = self.read_epoch()?;
        if epoch != lease.epoch {
            return Err(self.fenced(format!(
                "the fencing epoch is {epoch}, this process took over at {}",
                lease.epoch
            )));
        }
        probe(&self.dir, self.tag).map_err(|e| self.unavailable(e))
    }
}

/// An open handle on a directory, and a path that reaches that directory through the handle
/// (Linux's `/proc/self/fd/N`) whatever its name becomes meanwhile.
struct PinnedDir {
    handle: File,
    dir: PathBuf,
}

impl PinnedDir {
    fn open(dir: &Path) -> std::io::Result<PinnedDir> {
        Ok(PinnedDir {
            handle: File::open(dir)?,
            dir: dir.to_path_buf(),
        })
    }

    /// Names inside the returned path resolve in the pinned directory. Without `/proc`, the
    /// original path is all there is, and [`PinnedDir::still_at`] is the only guard.
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        let through_fd = PathBuf::from(format!("/proc/self/fd/{}", self.handle.as_raw_fd()));
        if through_fd.is_dir() {
            through_fd
        } else {
            self.dir.clone()
        }
    }

    /// Does `dir` still name the pinned directory?
    fn still_at(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.handle.metadata(), file_identity(dir)) {
            (Ok(meta), Ok(now)) => (meta.dev(), meta.ino()) == now,
            _ => false,
        }
    }
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Creates, writes, fsyncs and removes a small file: can the directory take writes now?
fn probe(dir: &Path, tag: u64) -> std::io::Result<()> {
    let path = dir.join(format!(".raftmq-probe-{tag:016x}"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(b"probe\n")?;
        file.sync_all()
    })();
    let removed = fs::remove_file(&path);
    result?;
    removed
}

/// Writes `name` in `dir` atomically and durably: a temporary file, fsync, rename, fsync of
/// the directory.
fn write_durably(dir: &Path, name: &str, bytes: &[u8], tag: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{tag:016x}"));
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_each_takeover_advances_the_epoch() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let shared = SharedDir::new(tmp.path());
        let first = shared.try_take("node=1").unwrap().expect("first takes");
        assert_eq!(first.epoch(), 1);
        assert!(shared.try_take("node=2").unwrap().is_none(), "lock is held");
        assert!(shared.holder().unwrap().starts_with("node=1 pid="));
        shared
            .check(&first.info())
            .expect("the holder passes its check");
        first.into_lock().release();
        let second = shared.try_take("node=2").unwrap().expect("second takes");
        assert_eq!(second.epoch(), 2);
        assert_eq!(shared.read_epoch().unwrap(), 2);
    }

    #[test]
    fn a_newer_epoch_or_a_replaced_lock_file_fences_the_old_holder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let shared = SharedDir::new(tmp.path());
        let lease = shared.try_take("node=1").unwrap().expect("takes");
        let info = lease.info();
        shared.write_epoch(tmp.path(), 7).unwrap();
        assert!(matches!(
            shared.check(&info),
            Err(SharedError::Fenced { .. })
        ));
        shared.write_epoch(tmp.path(), info.epoch).unwrap();
        shared.check(&info).expect("back to its own epoch");
        // Someone deletes the lock file: another process could lock a new one.
        fs::remove_file(tmp.path().join(crate::lock::LOCK_FILE_NAME)).unwrap();
        let other = shared
            .try_take("node=2")
            .unwrap()
            .expect("a new file is free");
        assert!(matches!(
            shared.check(&info),
            Err(SharedError::Fenced { .. })
        ));
        drop(other);
        drop(lease);
    }

    #[test]
    fn a_missing_or_emptied_directory_is_unavailable_not_a_fresh_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let gone = SharedDir::new(tmp.path().join("not-mounted"));
        assert!(matches!(
            gone.try_take("n"),
            Err(SharedError::Unavailable { .. })
        ));

        let shared = SharedDir::new(tmp.path());
        let lease = shared.try_take("n").unwrap().expect("takes");
        shared.mark_formed().unwrap();
        drop(lease);
        // Formed, but no database: refuse.
        let err = shared.try_take("n").expect_err("no db");
        assert!(err.to_string().contains("db/CURRENT"), "{err}");
    }

    #[test]
    fn an_emptied_directory_seen_formed_before_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("share");
        fs::create_dir(&dir).unwrap();
        let shared = SharedDir::new(&dir);
        let lease = shared.try_take("n").unwrap().expect("takes");
        shared.mark_formed().unwrap();
        drop(lease);
        // The share goes away and an empty directory (a bare mount point) takes its place.
        fs::rename(&dir, tmp.path().join("away")).unwrap();
        fs::create_dir(&dir).unwrap();
        let err = shared
            .try_take("n")
            .expect_err("an empty stand-in is refused");
        assert!(err.to_string().contains("empty now"), "{err}");
        // The same while the other process holds the stand-in's lock for a moment (its own
        // attempt): still unavailable, not "held by the other, all is well".
        let held = DataDirLock::acquire(&dir).unwrap();
        let err = shared
            .try_take("n")
            .expect_err("an empty stand-in is refused whoever holds its lock");
        assert!(err.to_string().contains("empty now"), "{err}");
        drop(held);
        // A fresh process on a fresh directory forms a log as before.
        let fresh = SharedDir::new(tmp.path().join("away-fresh"));
        fs::create_dir(fresh.path()).unwrap();
        assert!(fresh.try_take("n").unwrap().is_some());
    }

    #[test]
    fn a_moved_directory_makes_the_check_fail() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("share");
        fs::create_dir(&dir).unwrap();
        let shared = SharedDir::new(&dir);
        let lease = shared.try_take("n").unwrap().expect("takes");
        fs::rename(&dir, tmp.path().join("moved")).unwrap();
        assert!(shared.check(&lease.info()).is_err());
    }

    #[test]
    fn a_pinned_directory_keeps_its_writes_when_the_path_is_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("share");
        fs::create_dir(&dir).unwrap();
        let pinned = PinnedDir::open(&dir).unwrap();
        assert!(pinned.still_at(&dir));
        // Another directory is put in its place (a share mounted over a bare mount point).
        fs::rename(&dir, tmp.path().join("bare")).unwrap();
        fs::create_dir(&dir).unwrap();
        assert!(!pinned.still_at(&dir));
        write_durably(&pinned.path(), FENCE_FILE, b"5\n", 1).unwrap();
        assert!(tmp.path().join("bare").join(FENCE_FILE).exists());
        assert!(
            !dir.join(FENCE_FILE).exists(),
            "the write followed the path"
        );
    }
}
