//! [`StoreLock`]: the advisory lock every writer of a store holds.
//!
//! `extract` and `store compact` lock the store before they look at it, so two writers
//! never plan against the same contents (two concurrent `extract`s would otherwise both
//! embed every image). The lock is an OS file lock (`flock` on Unix) on `.xfer-lock` in
//! the store directory: it dies with its process, so a writer killed with `kill -9` never
//! blocks the next one. The holder writes who it is (pid, host, command line, start time)
//! into the lock file, for the message a waiting writer prints.
//!
//! A `--shard I/N` writer takes the store lock *shared* plus an exclusive lock on its own
//! shard file (`.xfer-lock-s<I>of<N>`): the N shards of one store run side by side (their
//! images are disjoint), two writers of the same shard do not, and a whole-store writer
//! or `compact` waits for all of them. Readers take no lock: part files appear by rename.
//!
//! Part files of other writers (the Python/Ray writers name one part per input block) are
//! never touched by the lock holder except temporary `.part-*-p<pid>-*.parquet.tmp` files
//! whose process has exited.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::reader::{CompactSummary, StoreReader};
use crate::{Error, Result, io_err};

/// Name of the store's lock file (a dot name: readers and Parquet clients ignore it).
pub const LOCK_FILE: &str = ".xfer-lock";

/// Whether a writer waits for a held lock or fails at once (`--no-wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockWait {
    /// Wait (with a message naming the holder) until the lock is free.
    #[default]
    Wait,
    /// Fail at once with [`Error::Locked`] naming the holder.
    NoWait,
}

/// A held store lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    dir: PathBuf,
    /// The store lock (exclusive, or shared for a shard writer).
    store: File,
    /// The shard lock of a shard writer (exclusive).
    shard: Option<File>,
}

impl StoreLock {
    /// Locks the store `dir` (created if missing) for writing: exclusively, or for shard
    /// `shard` (e.g. `s0of4`) shared with the other shards. A held lock is waited for with
    /// a warning naming its holder, or refused with [`Error::Locked`] under [`LockWait::NoWait`].
    pub fn acquire(dir: &Path, shard: Option<&str>, wait: LockWait) -> Result<StoreLock> {
        std::fs::create_dir_all(dir).map_err(io_err("create store directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let mut store = open_lock_file(&path)?;
        let shared = shard.is_some();
        take(&store, &path, dir, shared, wait)?;
        let shard = match shard {
            None => {
                write_holder(&mut store, &path)?;
                None
            }
            Some(tag) => {
                // No exclusive holder can be running: a line left there is a killed one's.
                let _ = store.set_len(0);
                let shard_path = dir.join(format!("{LOCK_FILE}-{tag}"));
                let mut file = open_lock_file(&shard_path)?;
                take(&file, &shard_path, dir, false, wait)?;
                write_holder(&mut file, &shard_path)?;
                Some(file)
            }
        };
        Ok(StoreLock {
            dir: dir.to_path_buf(),
            store,
            shard,
        })
    }

    /// The locked store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the temporary part files of writers that are no longer running; how many.
    /// Another xfer writer cannot be running while this lock is held (shard writers aside,
    /// which keep theirs: their process is alive), so these are leftovers of killed ones.
    pub fn remove_dead_temp_files(&self) -> Result<usize> {
        Ok(StoreReader::open_or_empty(&self.dir)?.remove_dead_temp_files())
    }

    /// Merges the store's part files into one file per model, dropping superseded rows (see
    /// [`StoreReader::compact`]); the store is read under this lock, so no writer adds parts
    /// meanwhile.
    pub fn compact(&self) -> Result<CompactSummary> {
        if self.shard.is_some() {
            return Err(Error::Inconsistent {
                store: self.dir.display().to_string(),
                reason: "compact needs the whole store, not a shard's lock".to_owned(),
            });
        }
        StoreReader::open(&self.dir)?.compact()
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Clear the holder line before the lock goes (closing the file releases it).
        let holder = self.shard.as_ref().unwrap_or(&self.store);
        let _ = holder.set_len(0);
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open lock file", path))
}

/// Takes the lock on `file` (shared or exclusive), waiting or not.
fn take(file: &File, path: &Path, dir: &Path, shared: bool, wait: LockWait) -> Result<()> {
    let attempt = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match attempt {
        Ok(()) => return Ok(()),
        Err(TryLockError::Error(e)) => return Err(io_err("lock", path)(e)),
        Err(TryLockError::WouldBlock) => {}
    }
    let holder = holders(dir);
    if wait == LockWait::NoWait {
        return Err(Error::Locked {
            store: dir.display().to_string(),
            holder,
        });
    }
    tracing::warn!(
        "store {} is locked by {holder}; waiting for it to finish (--no-wait fails instead)",
        dir.display()
    );
    let blocked = if shared {
        file.lock_shared()
    } else {
        file.lock()
    };
    blocked.map_err(io_err("lock", path))
}

/// Writes this process's holder line into its lock file.
fn write_holder(file: &mut File, path: &Path) -> Result<()> {
    let line = holder_line();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(line.as_bytes()))
        .and_then(|()| file.flush())
        .map_err(io_err("write lock file", path))
}

/// `pid P on HOST since T (unix seconds): COMMAND`.
fn holder_line() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let command: Vec<String> = std::env::args().collect();
    format!(
        "pid {} on {} since {since} (unix seconds): {}\n",
        std::process::id(),
        host_name(),
        command.join(" ")
    )
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "an unknown host".to_owned())
}

/// Who holds the store's locks, from the holder lines of its lock files.
fn holders(dir: &Path) -> String {
    let mut lines = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(LOCK_FILE))
            })
            .collect();
        paths.sort();
        for p in paths {
            let mut text = String::new();
            let Ok(mut file) = File::open(&p) else {
                continue;
            };
            // A shard lock file nobody holds is a killed writer's leftover line.
            let is_shard = p.file_name().is_some_and(|n| n != LOCK_FILE);
            if is_shard && file.try_lock_shared().is_ok() {
                continue;
            }
            if file.read_to_string(&mut text).is_ok() && !text.trim().is_empty() {
                lines.push(text.trim().to_owned());
            }
        }
    }
    if lines.is_empty() {
        "another writer (it has not written its name yet)".to_owned()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(dir: &Path, shard: Option<&str>) -> Result<StoreLock> {
        StoreLock::acquire(dir, shard, LockWait::NoWait)
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holder_named_until_the_first_drops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = locked(dir.path(), None).expect("first lock");
        let err = locked(dir.path(), None).expect_err("second writer must be refused");
        let text = err.to_string();
        assert!(matches!(err, Error::Locked { .. }), "{err:?}");
        assert!(
            text.contains(&format!("pid {} on ", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = locked(dir.path(), None).expect("free after drop");
        drop(again);
        let left = std::fs::read_to_string(dir.path().join(LOCK_FILE)).expect("lock file");
        assert!(left.is_empty(), "holder line left behind: {left}");
    }

    #[test]
    fn shards_run_side_by_side_but_not_twice_nor_with_a_whole_store_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s0 = locked(dir.path(), Some("s0of2")).expect("shard 0");
        let s1 = locked(dir.path(), Some("s1of2")).expect("shard 1");
        let err = locked(dir.path(), Some("s0of2")).expect_err("shard 0 twice");
        assert!(err.to_string().contains("pid "), "{err}");
        let err = locked(dir.path(), None).expect_err("whole store while shards run");
        assert!(matches!(err, Error::Locked { .. }), "{err:?}");
        assert!(
            s1.compact().is_err(),
            "compact under a shard's lock must be refused"
        );
        drop((s0, s1));
        locked(dir.path(), None).expect("free once the shards are done");
    }
}
