//! Files for xfer: the one atomic writer every crate uses, and whole-file
//! reads and JSON files that name the file in their errors.
//!
//! An atomic write puts the bytes in a temporary file in the destination's
//! folder (`.<name>.<random>.tmp`), fsyncs it, renames it over the
//! destination and fsyncs the folder, so a reader (or a crash) sees the old
//! file or the complete new one, never a part. [`write_atomic`] does it for a
//! byte slice, [`AtomicFile`] for a stream (`impl Write`); a temporary file
//! that is never committed is removed when dropped.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Errors of this crate: what was being done, to which file, and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`creating`, `writing`, `syncing`, `renaming into`, `reading`).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file could not be serialised or parsed.
    #[error("{op} {}: {source}", path.display())]
    Json {
        /// What was being done (`serialising`, `parsing`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What serde_json said.
        source: serde_json::Error,
    },
}

impl Error {
    /// The file or folder the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. } | Error::Json { path, .. } => path,
        }
    }

    /// What was being done.
    pub fn op(&self) -> &'static str {
        match self {
            Error::Io { op, .. } | Error::Json { op, .. } => op,
        }
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `bytes` to `path` atomically (see [`AtomicFile`]); the folder is
/// created if missing. On failure `path` is untouched and no temporary file is left.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .map_err(Error::io("writing", file.temp_path()))?;
    file.commit()
}

/// Serialises `value` as pretty JSON plus a newline and writes it atomically.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        op: "serialising",
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io("reading", path))
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        op: "parsing",
        path: path.to_path_buf(),
        source,
    })
}

/// A file being written under a temporary name in its destination's folder.
///
/// Write to it (`impl Write`, unbuffered), then [`commit`](Self::commit):
/// flush, fsync, rename over the destination, fsync the folder. Dropped
/// without a commit, the temporary file is removed and the destination is
/// untouched.
#[derive(Debug)]
pub struct AtomicFile {
    temp: NamedTempFile,
    path: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`: creates its folder if missing and a temporary
    /// file `.<name>.<random>.tmp` in it.
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_with_suffix(path, "")
    }

    /// Like [`create`](Self::create), with `suffix` appended to the temporary
    /// name, for writers that choose a format by extension (`suffix = ".png"`).
    pub fn create_with_suffix(path: &Path, suffix: &str) -> Result<Self> {
        let dir = parent_dir(path);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let mut prefix = OsString::from(".");
        prefix.push(path.file_name().unwrap_or_else(|| "file".as_ref()));
        prefix.push(".");
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(&format!(".tmp{suffix}"))
            .tempfile_in(&dir)
            .map_err(Error::io("creating a temporary file for", path))?;
        Ok(AtomicFile {
            temp,
            path: path.to_path_buf(),
            dir,
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file, for writers that open it by path.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Flushes and fsyncs the temporary file without publishing it, so a
    /// caller replacing several files can make all of them durable before
    /// renaming any (the rename in [`commit`](Self::commit) then cannot lose data).
    pub fn sync(&mut self) -> Result<()> {
        let temp_path = self.temp.path().to_path_buf();
        self.temp
            .flush()
            .map_err(Error::io("writing", &temp_path))?;
        self.temp
            .as_file()
            .sync_all()
            .map_err(Error::io("syncing", &temp_path))
    }

    /// Publishes the file: flush, fsync, rename over the destination, fsync the folder.
    pub fn commit(mut self) -> Result<()> {
        self.sync()?;
        let AtomicFile { temp, path, dir } = self;
        temp.persist(&path)
            .map_err(|e| Error::io("renaming into", &path)(e.error))?;
        sync_dir(&dir)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.temp.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.temp.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// The folder `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename in `dir` durable (Unix; elsewhere folders cannot be opened and this is a no-op).
fn sync_dir(dir: &Path) -> Result<()> {
    if cfg!(unix) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("syncing the folder", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_is_in_the_current_folder() {
        assert_eq!(parent_dir(Path::new("model.json")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/model.json")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/model.json")), Path::new("/"));
    }

    #[test]
    fn folder_sync_of_a_missing_folder_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        sync_dir(dir.path()).expect("sync an existing folder");
        let missing = dir.path().join("gone");
        let err = sync_dir(&missing).expect_err("missing folder");
        assert_eq!(err.op(), "syncing the folder");
        assert_eq!(err.path(), missing);
    }
}
