//! [`write_keyed_part`]: one part file written under a caller's key, for writers outside
//! `xfer extract` (the Python API's `Store.write`, one Ray Data task per input block).
//!
//! A keyed part is named `part-<unix millis>-p<pid>-k<key hash>.parquet`: the time and pid
//! keep the store's rule that part names sort by time (the newest row of an image wins) and
//! let a lock holder tell a killed writer's temporary file from a live one's; the suffix
//! `k<first 16 hex of blake3(key)>` finds the part again. Writing a key that already has a
//! part renames the new file over the old one (same name, one atomic rename), so a retried
//! task replaces its own rows instead of adding them again, and a reader never sees both.
//!
//! The write happens under the store's exclusive [`StoreLock`] (the one `xfer extract` and
//! `xfer store compact` take), so a keyed writer never renames while those plan or merge,
//! and they never see a half-committed key. The lock is held only for the write itself
//! (encoding and renaming one part), not while the caller embeds.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ndarray::ArrayView2;

use crate::lock::{LockWait, StoreLock};
use crate::reader::StoreReader;
use crate::schema::{StoreMetadata, store_schema};
use crate::writer::{EmbeddingRecord, PartWriter, build_batch, check_rows, part_properties};
use crate::{Error, Result, io_err};

/// What [`write_keyed_part`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedPart {
    /// The part file now holding the key's rows.
    pub path: PathBuf,
    /// Rows written.
    pub rows: usize,
    /// Whether an earlier part of the same key was replaced.
    pub replaced: bool,
    /// Temporary files of killed writers removed while the lock was held.
    pub temp_removed: usize,
}

/// The file-name suffix of key `key`: `-k<first 16 hex of blake3(key)>.parquet`.
pub fn key_suffix(key: &str) -> String {
    let hex = blake3::hash(key.as_bytes()).to_hex();
    format!("-k{}.parquet", &hex.as_str()[..16])
}

/// Writes `records` with their `embeddings` as the part of `key` in store `dir` (created if
/// missing), replacing the key's earlier part, under the store lock (waited for or not per
/// `wait`). The rows must fit `meta` (dimension, labels), and `meta` must fit the store: the
/// same classes and identity as its rows of this model, and no other model's rows unless
/// `allow_mixed_models`.
pub fn write_keyed_part(
    dir: &Path,
    meta: &StoreMetadata,
    key: &str,
    records: &[EmbeddingRecord],
    embeddings: ArrayView2<'_, f32>,
    allow_mixed_models: bool,
    wait: LockWait,
) -> Result<KeyedPart> {
    check_rows("write_keyed_part", meta, records, embeddings)?;
    if key.is_empty() {
        return Err(Error::InvalidRows {
            op: "write_keyed_part",
            reason: "the part key is empty".to_owned(),
        });
    }
    let lock = StoreLock::acquire(dir, None, wait)?;
    let temp_removed = lock.remove_dead_temp_files()?;
    let store = StoreReader::open_or_empty(dir)?;
    check_fits(&store, meta, allow_mixed_models)?;
    let existing = parts_of_key(dir, key)?;
    let path = match existing.last() {
        Some(old) => old.clone(),
        None => dir.join(new_part_name(key)),
    };
    write_part(&path, meta, records, embeddings)?;
    for stale in existing.iter().filter(|p| **p != path) {
        std::fs::remove_file(stale).map_err(io_err("remove replaced part", stale))?;
    }
    drop(lock);
    Ok(KeyedPart {
        path,
        rows: records.len(),
        replaced: !existing.is_empty(),
        temp_removed,
    })
}

/// `part-<millis>-p<pid><suffix>` for a key's first part.
fn new_part_name(key: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "part-{millis:013}-p{}{}",
        std::process::id(),
        key_suffix(key)
    )
}

/// The complete part files of `key` in `dir`, oldest first.
fn parts_of_key(dir: &Path, key: &str) -> Result<Vec<PathBuf>> {
    let suffix = key_suffix(key);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(&suffix) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// One part file of the store schema holding `records`, committed atomically at `path`.
fn write_part(
    path: &Path,
    meta: &StoreMetadata,
    records: &[EmbeddingRecord],
    embeddings: ArrayView2<'_, f32>,
) -> Result<()> {
    let schema = store_schema(meta.feature_dim);
    let batch =
        build_batch(&schema, meta, records, embeddings).map_err(|reason| Error::InvalidRows {
            op: "write_keyed_part",
            reason,
        })?;
    let props = part_properties(meta, 3, records.len().max(1))?;
    let mut part = PartWriter::create(path, schema, props)?;
    part.write(&batch)?;
    part.commit()
}

/// Refuses rows that the store's other rows of the same model could not stand beside:
/// another identity or other classes, or (unless allowed) another model.
fn check_fits(store: &StoreReader, meta: &StoreMetadata, allow_mixed_models: bool) -> Result<()> {
    let dir = store.dir().display().to_string();
    let identity = meta.model_identity();
    for f in store.files() {
        if f.meta.fingerprint != meta.fingerprint {
            if !allow_mixed_models {
                return Err(Error::MixedModels {
                    store: dir,
                    existing: format!("{} ({})", f.meta.fingerprint, f.meta.model_name),
                    requested: format!("{} ({})", meta.fingerprint, meta.model_name),
                });
            }
            continue;
        }
        if let Some((field, stored, requested)) = f.meta.model_identity().difference(&identity) {
            return Err(Error::IdentityMismatch {
                store: dir,
                field,
                stored: format!("`{stored}` (in {})", f.path.display()),
                requested,
            });
        }
        if f.meta.classes != meta.classes || f.meta.feature_dim != meta.feature_dim {
            return Err(Error::Inconsistent {
                store: dir,
                reason: format!(
                    "{} has classes {:?} (dim {}) but the rows written have classes {:?} (dim {}); write into another store",
                    f.path.display(),
                    f.meta.classes,
                    f.meta.feature_dim,
                    meta.classes,
                    meta.feature_dim
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn meta(classes: &[&str]) -> StoreMetadata {
        StoreMetadata {
            model_name: "m".into(),
            fingerprint: "f".repeat(64),
            preprocessing: "x/127.5 - 1".into(),
            image_size: [4, 4],
            feature_dim: 3,
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            xfer_version: "0.1.0".into(),
            identity: None,
        }
    }

    fn record(id: &str, label: i32) -> EmbeddingRecord {
        EmbeddingRecord {
            id: id.into(),
            label,
            split: "train".into(),
            content_hash: format!("h-{id}"),
        }
    }

    fn write(dir: &Path, key: &str, ids: &[&str], value: f32) -> Result<KeyedPart> {
        let records: Vec<EmbeddingRecord> = ids.iter().map(|id| record(id, 1)).collect();
        let features = Array2::from_elem((ids.len(), 3), value);
        write_keyed_part(
            dir,
            &meta(&["cat", "dog"]),
            key,
            &records,
            features.view(),
            false,
            LockWait::NoWait,
        )
    }

    #[test]
    fn a_key_written_twice_holds_one_part_with_the_last_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = write(dir.path(), "block-1", &["a", "b"], 1.0).expect("first");
        assert!(!first.replaced);
        let other = write(dir.path(), "block-2", &["c"], 2.0).expect("other key");
        let again = write(dir.path(), "block-1", &["a", "b"], 3.0).expect("again");
        assert!(again.replaced);
        assert_eq!(again.path, first.path, "the key keeps its file name");
        assert_ne!(other.path, first.path);
        let store = StoreReader::open(dir.path()).expect("open");
        assert_eq!(store.files().len(), 2);
        let keys = store.stored_keys().expect("keys");
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        let (_, features) = store
            .load_rows(&"f".repeat(64), &["a".to_owned()].into_iter().collect())
            .expect("rows");
        assert_eq!(
            features.row(0).to_vec(),
            vec![3.0; 3],
            "the replacement's values"
        );
        assert!(store.temp_files().is_empty());
        assert!(store.verify().is_empty(), "{:?}", store.verify());
    }

    #[test]
    fn keyed_parts_refuse_other_classes_and_a_held_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "k", &["a"], 1.0).expect("first");
        let err = write_keyed_part(
            dir.path(),
            &meta(&["x", "y"]),
            "k2",
            &[record("b", 0)],
            Array2::zeros((1, 3)).view(),
            false,
            LockWait::NoWait,
        )
        .expect_err("other classes");
        assert!(err.to_string().contains("classes"), "{err}");
        let held = StoreLock::acquire(dir.path(), None, LockWait::NoWait).expect("lock");
        let err = write(dir.path(), "k3", &["c"], 1.0).expect_err("locked");
        assert!(matches!(err, Error::Locked { .. }), "{err:?}");
        drop(held);
        let err = write(dir.path(), "k3", &["c", "d"], 1.0).map(|_| ());
        assert!(err.is_ok(), "{err:?}");
        let err = write_keyed_part(
            dir.path(),
            &meta(&["cat", "dog"]),
            "k4",
            &[record("e", 5)],
            Array2::zeros((1, 3)).view(),
            false,
            LockWait::NoWait,
        )
        .expect_err("label out of range");
        assert!(err.to_string().contains("label 5"), "{err}");
    }

    #[test]
    fn a_killed_keyed_writers_temp_file_is_removed_by_the_next_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A pid that cannot be running (above Linux's pid_max limit).
        let dead = dir
            .path()
            .join(".part-0000000000001-p4194305-kabc.parquet.XyZ123.tmp");
        std::fs::write(&dead, b"half").expect("temp");
        let part = write(dir.path(), "k", &["a"], 1.0).expect("write");
        if Path::new("/proc/self").exists() {
            assert_eq!(part.temp_removed, 1);
            assert!(!dead.exists());
        }
    }
}
