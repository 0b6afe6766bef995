//! The Parquet embeddings store of xfer: one row per (image, model).
//!
//! A store is a directory of Parquet files (`part-<run>-<seq>.parquet`), each
//! written under a temporary name (`.part-….parquet.….tmp`, an atomic file) and renamed when
//! complete, so a killed run never leaves a half file. Columns (see
//! [`schema::store_schema`]): `id`, `label`, `label_name`, `split`,
//! `content_hash` (blake3 of the image file bytes), `model` (backbone
//! fingerprint) and `embedding` (`FixedSizeList<Float32, D>`); every file
//! carries key/value metadata describing the model and the classes.
//!
//! * [`EmbeddingWriter`] appends rows and rolls part files.
//! * [`StoreReader`] opens a store: cache keys, [`StoreReader::load_split`],
//!   [`StoreReader::info`], [`StoreReader::compact`].
//! * [`StoreLock`] is the advisory lock every writer (`extract`, `compact`) holds.
//! * [`write_keyed_part`] writes one part under a caller's key (the Python and Ray writers):
//!   a key written again replaces its part instead of adding rows.
//! * [`extract`] runs a backbone over a dataset into a store (decode on the
//!   rayon pool, inference, writing — overlapped, memory bounded).
//!
//! When an image changes, its new row supersedes the older one: readers keep,
//! per `(id, model)`, the row of the newest part file (part names sort by
//! time), and `compact` drops the superseded rows. When an image is deleted, moved,
//! renamed or relabelled, the next `extract` drops its stale rows from the part files and
//! keeps its embedding under the new id or label (see [`Reconciliation`]).

pub mod extract;
mod keyed;
mod lock;
mod reader;
mod reconcile;
pub mod schema;
mod writer;

pub use keyed::{KeyedPart, key_suffix, write_keyed_part};
pub use lock::{LOCK_FILE, LockWait, StoreLock};
pub use reader::{
    CompactSummary, LoadedSplit, ModelInfo, StoreFile, StoreInfo, StoreReader, StoredKey,
};
pub use reconcile::Reconciliation;
pub use schema::{ModelIdentity, StoreMetadata, content_hash};
pub use writer::{EmbeddingRecord, EmbeddingWriter, WriteSummary, WriterOptions};

/// Errors of the embeddings store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the store could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create store directory`, `read`, `rename`).
        op: &'static str,
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a store file atomically failed (the operation and the file are in the error).
    #[error(transparent)]
    File(#[from] xfer_fs::Error),
    /// Parquet or Arrow failed on a store file.
    #[error("{op} {path}: {reason}")]
    Parquet {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: String,
        /// What Parquet/Arrow said.
        reason: String,
    },
    /// A store file does not have the schema or metadata xfer writes.
    #[error("{path} is not an xfer embeddings file: {reason}")]
    Format {
        /// The file involved.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Rows handed to the writer are inconsistent (lengths, dimension, label range).
    #[error("invalid rows for {op}: {reason}")]
    InvalidRows {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store holds embeddings of another model (or several) and mixing was not allowed.
    #[error(
        "store {store} holds embeddings of model(s) {existing}, not {requested}; use another --store directory, or pass --allow-mixed-models to keep both in one store"
    )]
    MixedModels {
        /// Store directory.
        store: String,
        /// Fingerprints already in the store, comma separated (name in parentheses).
        existing: String,
        /// Fingerprint of the model being written.
        requested: String,
    },
    /// The store holds rows of this model's ONNX bytes made another way (input size,
    /// preprocessing, resize, ...): the rows could not be told apart, so they are not mixed.
    #[error(
        "store {store} holds rows of this model's ONNX bytes made with {field} {stored}, but this run makes them with {field} `{requested}`; the two cannot share a store: use another --store, or the same {field}"
    )]
    IdentityMismatch {
        /// Store directory.
        store: String,
        /// The first differing field of the [`ModelIdentity`] (`image_size`, `resize`, ...).
        field: &'static str,
        /// Its value in the store, with the fingerprint and a file holding such rows.
        stored: String,
        /// Its value for this run.
        requested: String,
    },
    /// A part file's pages do not decode, or its embeddings do not match its checksum.
    #[error(
        "part file {path} is damaged ({reason}); move it out of the store (e.g. `mv {path} /tmp/`) and rerun `xfer extract` with the same arguments, which re-embeds exactly its rows"
    )]
    Damaged {
        /// The damaged part file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The store's files disagree with each other or with the request (classes, dimension, splits).
    #[error("store {store}: {reason}")]
    Inconsistent {
        /// Store directory.
        store: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The requested rows are not in the store.
    #[error("store {store}: {reason}")]
    NotFound {
        /// Store directory.
        store: String,
        /// What was asked and what is there.
        reason: String,
    },
    /// A split assignment or shard specification could not be parsed.
    #[error("invalid {what} `{spec}`: {reason}")]
    Spec {
        /// `--split` or `--shard`.
        what: &'static str,
        /// The text given.
        spec: String,
        /// What is wrong and the expected syntax.
        reason: String,
    },
    /// The dataset layer failed (listing, splitting, decoding).
    #[error(transparent)]
    Data(#[from] xfer_data::DataError),
    /// The runtime failed (library, session, inference).
    #[error(transparent)]
    Runtime(#[from] xfer_runtime::Error),
    /// Another writer holds the store's lock and `--no-wait` was given.
    #[error(
        "store {store} is locked by {holder}; wait for it to finish (drop --no-wait to wait for it)"
    )]
    Locked {
        /// Store directory.
        store: String,
        /// Who holds the lock (pid, host, command line), from its lock file.
        holder: String,
    },
    /// The extraction was cancelled through [`extract::ExtractConfig::cancel`].
    #[error(
        "extraction cancelled; the {stored} row(s) embedded before stopping are stored, rerun to resume"
    )]
    Cancelled {
        /// Rows written by the cancelled run.
        stored: usize,
    },
    /// Entries of the dataset could not be listed (symlink loops, dangling links, unreadable
    /// folders) and the run was asked to stop on unreadable input (`--on-error fail`).
    #[error(
        "{count} entr(y/ies) of {data} cannot be listed: {names}; fix or remove them, or pass --on-error skip"
    )]
    Unlisted {
        /// The dataset.
        data: std::path::PathBuf,
        /// How many entries.
        count: usize,
        /// Each entry and why, `; `-separated.
        names: String,
    },
    /// The thread writing the store's part files panicked.
    #[error("the store writer thread panicked: {message}")]
    WriterPanicked {
        /// The panic message (`no message` when it was not a string).
        message: String,
    },
    /// An example's class index does not fit the store's `label` column (Int32).
    #[error(
        "example `{id}` has label {label}, beyond the largest label the store holds ({}); the dataset has too many classes",
        i32::MAX
    )]
    LabelOutOfRange {
        /// The example id.
        id: String,
        /// Its class index.
        label: u32,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.display().to_string();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn pq_err<E: std::fmt::Display>(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(E) -> Error + use<E> {
    let path = path.display().to_string();
    move |e| Error::Parquet {
        op,
        path,
        reason: e.to_string(),
    }
}
