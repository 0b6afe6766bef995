//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `xfer-data`; each variant names the file
/// (or split text) it is about and says what to do where that is not obvious.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "open directory", "rename", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing or reading a file failed (the operation and the file are in the error).
    #[error(transparent)]
    File(#[from] xfer_fs::Error),
    /// The file is empty (zero bytes).
    #[error("{}: file is empty (0 bytes)", path.display())]
    EmptyFile {
        /// The empty file.
        path: PathBuf,
    },
    /// The bytes are not an image format xfer can read.
    #[error("{}: not a supported image ({reason}); xfer reads JPEG, PNG, BMP, GIF, WebP and TIFF", path.display())]
    UnsupportedFormat {
        /// The file concerned.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The image is corrupt or truncated.
    #[error("{}: cannot decode image: {reason}", path.display())]
    Decode {
        /// The file concerned.
        path: PathBuf,
        /// The decoder's explanation.
        reason: String,
    },
    /// The image is larger than the decoder limits allow (decompression-bomb guard).
    #[error("{}: image exceeds the decoder limits ({reason}); at most {max_side}×{max_side} pixels and {max_alloc_mib} MiB are decoded", path.display())]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// The decoder's explanation.
        reason: String,
        /// The largest accepted width or height.
        max_side: u32,
        /// The largest accepted decoding allocation, in MiB.
        max_alloc_mib: u64,
    },
    /// A directory entry could not be followed (symlink loop, dangling link, ...).
    #[error("{}: skipped while listing the dataset: {reason}", path.display())]
    Unlistable {
        /// The entry concerned.
        path: PathBuf,
        /// Why it was skipped.
        reason: String,
    },
    /// The dataset folder or manifest is not usable.
    #[error("{}: not a usable dataset: {reason}", path.display())]
    InvalidDataset {
        /// The dataset root or manifest.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A line of a CSV manifest is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A split specification could not be parsed or does not fit the dataset.
    #[error("invalid split `{spec}`: {reason}")]
    InvalidSplit {
        /// The specification as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// Named splits share examples: images of one would leak into another.
    #[error(
        "the splits `{splits}` overlap: {}; make the slices disjoint",
        describe_overlaps(overlaps)
    )]
    OverlappingSplits {
        /// The assignment as given.
        splits: String,
        /// Every pair of splits that shares examples.
        overlaps: Vec<SplitOverlap>,
    },
    /// Invalid parameters (sizes, batch size, augmentation factor, ...).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The parameter concerned.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The demo-data source could not be imported.
    #[error("{}: cannot import: {reason}", path.display())]
    Import {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The output folder already holds a different dataset.
    #[error("{}: {reason}", path.display())]
    Conflict {
        /// The conflicting file or folder.
        path: PathBuf,
        /// What differs and what to do.
        reason: String,
    },
    /// Encoding an image failed.
    #[error("{}: cannot encode image: {reason}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The encoder's explanation.
        reason: String,
    },
    /// The background loader stopped unexpectedly (a worker thread panicked).
    #[error("the image loader stopped unexpectedly: {reason}")]
    LoaderStopped {
        /// What is known about the stop.
        reason: String,
    },
}

impl DataError {
    /// A short category for run summaries ("empty file", "decode error", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            DataError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => "permission denied",
                std::io::ErrorKind::NotFound => "not found",
                _ => "io error",
            },
            DataError::File(_) => "io error",
            DataError::EmptyFile { .. } => "empty file",
            DataError::UnsupportedFormat { .. } => "unsupported format",
            DataError::Decode { .. } => "decode error",
            DataError::TooLarge { .. } => "exceeds decoder limits",
            DataError::Unlistable { .. } => "unlistable entry",
            DataError::InvalidDataset { .. } => "invalid dataset",
            DataError::Manifest { .. } => "manifest error",
            DataError::InvalidSplit { .. } => "invalid split",
            DataError::OverlappingSplits { .. } => "overlapping splits",
            DataError::InvalidArgument { .. } => "invalid argument",
            DataError::Import { .. } => "import error",
            DataError::Conflict { .. } => "conflict",
            DataError::Encode { .. } => "encode error",
            DataError::LoaderStopped { .. } => "loader stopped",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Two named splits that share examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOverlap {
    /// The split named first.
    pub first: String,
    /// The split named later.
    pub second: String,
    /// How many examples both hold.
    pub shared: usize,
    /// One of them (the first in the later split's seeded order).
    pub example: String,
}

fn describe_overlaps(overlaps: &[SplitOverlap]) -> String {
    overlaps
        .iter()
        .map(|o| {
            format!(
                "`{}` and `{}` share {} image(s) (e.g. `{}`)",
                o.first, o.second, o.shared, o.example
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
