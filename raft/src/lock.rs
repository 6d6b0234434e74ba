//! The data directory's exclusive lock: `<data_dir>/raftmq.lock`, held with an OS file lock
//! (flock) for the whole life of a node and released when the node shuts down or the process
//! dies. Two processes on one data directory would corrupt it, so the second one fails at once
//! with an error that names the directory and the holder's pid. On a shared directory
//! (active/standby), `shared.rs` adds what a lock alone cannot: a fencing epoch and checks that
//! the lock still guards the directory.

use fs2::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const LOCK_FILE_NAME: &str = "raftmq.lock";

#[derive(Debug, Error)]
pub enum LockError {
    #[error("data directory {dir} is in use by another raftmq process ({})", holder_text(.pid))]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The pid in a lock file: the whole text (`1234`) or its `pid=1234` field.
fn holder_pid(text: &str) -> Option<u32> {
    let text = text.trim();
    text.parse().ok().or_else(|| {
        text.split_whitespace()
            .find_map(|field| field.strip_prefix("pid="))
            .and_then(|pid| pid.parse().ok())
    })
}

fn holder_text(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_string(),
    }
}

/// A held lock on a data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock or fails at once (never waits): a second process should refuse to start,
    /// not hang behind the first.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let path = dir.join(LOCK_FILE_NAME);
        // Not truncated on open: the holder's pid must stay readable for the error message.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if let Err(e) = file.try_lock_exclusive() {
            if e.kind() == fs2::lock_contended_error().kind()
                || e.kind() == std::io::ErrorKind::WouldBlock
            {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| holder_pid(&text));
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            return Err(io(e));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DataDirLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same lock, named in messages by another path to the same file.
    pub fn described_as(mut self, path: PathBuf) -> DataDirLock {
        self.path = path;
        self
    }

    /// The (device, inode) of the locked file. If the path names another file later (the lock
    /// file was deleted or the directory moved), this lock no longer keeps anyone out.
    pub fn identity(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Replaces the holder description in the lock file (shown to whoever finds it taken).
    pub fn set_holder(&mut self, text: &str) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        writeln!(self.file, "{text}")?;
        self.file.sync_all()
    }

    /// Releases the lock explicitly (dropping does the same).
    pub fn release(self) {
        if let Err(e) = FileExt::unlock(&self.file) {
            tracing::warn!(path = %self.path.display(), error = %e, "unlocking the data directory failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        let err = DataDirLock::acquire(dir.path()).expect_err("second lock must fail");
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        first.release();
        DataDirLock::acquire(dir.path()).expect("lock again after release");
    }
}
