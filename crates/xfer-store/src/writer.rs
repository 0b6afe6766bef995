//! [`EmbeddingWriter`]: appends rows to part files written under a temporary
//! name and renamed when complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, DictionaryArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch,
    StringArray,
};
use arrow_schema::{Field, SchemaRef};
use ndarray::ArrayView2;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use xfer_data::Example;
use xfer_fs::AtomicFile;

use crate::schema::{StoreMetadata, store_schema};
use crate::{Error, Result, io_err, pq_err};

/// One row's identity; its embedding is passed alongside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingRecord {
    /// Image path relative to the dataset root.
    pub id: String,
    /// Class index into [`StoreMetadata::classes`].
    pub label: i32,
    /// Split tag.
    pub split: String,
    /// blake3 hex of the image file bytes.
    pub content_hash: String,
}

impl EmbeddingRecord {
    /// The record of `example` tagged `split` with the hash of its file bytes; an error when
    /// its label does not fit the `label` column.
    pub fn for_example(example: &Example, split: &str, content_hash: String) -> Result<Self> {
        let label = i32::try_from(example.label).map_err(|_| Error::LabelOutOfRange {
            id: example.id.clone(),
            label: example.label,
        })?;
        Ok(EmbeddingRecord {
            id: example.id.clone(),
            label,
            split: split.to_owned(),
            content_hash,
        })
    }
}

/// The Parquet settings of a store part file: zstd at `zstd_level`, `meta` in the footer,
/// at most `row_group` rows per row group.
pub(crate) fn part_properties(
    meta: &StoreMetadata,
    zstd_level: i32,
    row_group: usize,
) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(zstd_level).map_err(|e| Error::InvalidRows {
        op: "EmbeddingWriter::create",
        reason: format!("zstd level {zstd_level}: {e}"),
    })?;
    let kv = meta
        .to_key_values()
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_key_value_metadata(Some(kv))
        .set_max_row_group_row_count(Some(row_group))
        .build())
}

/// How an [`EmbeddingWriter`] names and sizes its part files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Rows per part file; a killed run loses at most this many rows of work.
    pub rows_per_part: usize,
    /// Extra tag in part names (e.g. `s0of2` for a shard); the process id is always added.
    pub tag: Option<String>,
    /// zstd level (1..=22).
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            rows_per_part: 256,
            tag: None,
            zstd_level: 3,
        }
    }
}

/// What a finished writer produced.
#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    /// Complete part files, in the order written.
    pub files: Vec<PathBuf>,
    /// Rows written.
    pub rows: usize,
}

struct OpenPart {
    writer: PartWriter,
    path: PathBuf,
    rows: usize,
}

/// One part file being written: an atomic file, and the checksum of its embeddings, written
/// into the footer (`xfer.checksum`) when committed. The writer and `compact` both use it.
pub(crate) struct PartWriter {
    writer: ArrowWriter<AtomicFile>,
    tmp: PathBuf,
    checksum: blake3::Hasher,
}

impl PartWriter {
    /// Starts `path` (under a temporary name until [`PartWriter::commit`]).
    pub(crate) fn create(
        path: &Path,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<PartWriter> {
        let file = AtomicFile::create(path)?;
        let tmp = file.temp_path().to_path_buf();
        let writer = ArrowWriter::try_new(file, schema, Some(props))
            .map_err(pq_err("start parquet file", &tmp))?;
        Ok(PartWriter {
            writer,
            tmp,
            checksum: blake3::Hasher::new(),
        })
    }

    /// Appends a batch of the store schema.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        crate::schema::hash_embeddings(&mut self.checksum, batch, &self.tmp)?;
        self.writer.write(batch).map_err(pq_err("write", &self.tmp))
    }

    /// Writes the footer with the checksum and renames the file into place.
    pub(crate) fn commit(mut self) -> Result<()> {
        let sum = self.checksum.finalize().to_hex().to_string();
        self.writer
            .append_key_value_metadata(KeyValue::new(crate::schema::META_CHECKSUM.to_owned(), sum));
        self.writer
            .into_inner()
            .map_err(pq_err("finish", &self.tmp))?
            .commit()?;
        Ok(())
    }
}

/// Writes embedding rows into `part-<run>-<seq>.parquet` files of a store directory.
///
/// Each part is written to `.part-<run>-<seq>.parquet.<random>.tmp` (an atomic file) and renamed once it
/// holds `rows_per_part` rows (or at [`EmbeddingWriter::finish`]); readers
/// ignore the temporary names. Dropping the writer without `finish` discards
/// the part in progress.
pub struct EmbeddingWriter {
    dir: PathBuf,
    meta: StoreMetadata,
    schema: SchemaRef,
    props: WriterProperties,
    run_id: String,
    seq: usize,
    rows_per_part: usize,
    current: Option<OpenPart>,
    summary: WriteSummary,
}

impl std::fmt::Debug for EmbeddingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingWriter")
            .field("dir", &self.dir)
            .field("run_id", &self.run_id)
            .field("rows", &self.summary.rows)
            .finish()
    }
}

/// A run id that sorts by creation time: `<unix millis, 13 digits>-<tag>p<pid>`.
pub(crate) fn new_run_id(tag: Option<&str>) -> String {
    let millis = unique_millis();
    let tag = tag.map(|t| format!("{t}-")).unwrap_or_default();
    format!("{millis:013}-{tag}p{}", std::process::id())
}

/// The wall clock in milliseconds, bumped past the last value this process handed out: two
/// writers created in the same millisecond (one process, e.g. `xfer.Store.write` called twice)
/// must not get the same run id, or the second's first part would replace the first's.
fn unique_millis() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut id = now;
    // The closure always returns Some, so the update always succeeds with the last `id`.
    let _ = LAST.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
        id = now.max(last.saturating_add(1));
        Some(id)
    });
    u128::from(id)
}

impl EmbeddingWriter {
    /// Prepares a writer into `dir` (created if missing). Nothing is written until rows arrive.
    pub fn create(dir: &Path, meta: StoreMetadata, options: &WriterOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err("create store directory", dir))?;
        if let Some(tag) = &options.tag
            && !tag.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(Error::InvalidRows {
                op: "EmbeddingWriter::create",
                reason: format!("part tag `{tag}` must be ASCII letters and digits"),
            });
        }
        if meta.feature_dim == 0 || i32::try_from(meta.feature_dim).is_err() {
            return Err(Error::InvalidRows {
                op: "EmbeddingWriter::create",
                reason: format!(
                    "feature_dim {} is not a usable embedding length",
                    meta.feature_dim
                ),
            });
        }
        let props = part_properties(&meta, options.zstd_level, options.rows_per_part.max(1))?;
        Ok(EmbeddingWriter {
            dir: dir.to_path_buf(),
            schema: store_schema(meta.feature_dim),
            meta,
            props,
            run_id: new_run_id(options.tag.as_deref()),
            seq: 0,
            rows_per_part: options.rows_per_part.max(1),
            current: None,
            summary: WriteSummary::default(),
        })
    }

    /// The run id in this writer's part names.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The metadata written into every part.
    pub fn metadata(&self) -> &StoreMetadata {
        &self.meta
    }

    /// Rows written so far (including the part in progress).
    pub fn rows(&self) -> usize {
        self.summary.rows
    }

    /// Appends rows; `embeddings` has one row of `feature_dim` values per record.
    pub fn append(
        &mut self,
        records: &[EmbeddingRecord],
        embeddings: ArrayView2<'_, f32>,
    ) -> Result<()> {
        check_rows("EmbeddingWriter::append", &self.meta, records, embeddings)?;
        let mut start = 0;
        while start < records.len() {
            let room = self.rows_per_part - self.current.as_ref().map_or(0, |p| p.rows);
            let end = (start + room).min(records.len());
            let batch = self.record_batch(
                &records[start..end],
                embeddings.slice(ndarray::s![start..end, ..]),
            )?;
            let part = match self.current.as_mut() {
                Some(p) => p,
                None => self.open_part()?,
            };
            part.writer.write(&batch)?;
            part.rows += end - start;
            let full = part.rows >= self.rows_per_part;
            self.summary.rows += end - start;
            if full {
                self.close_part()?;
            }
            start = end;
        }
        Ok(())
    }

    /// Completes the part in progress and returns what was written.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.close_part()?;
        Ok(std::mem::take(&mut self.summary))
    }

    fn open_part(&mut self) -> Result<&mut OpenPart> {
        let name = format!("part-{}-{:05}.parquet", self.run_id, self.seq);
        self.seq += 1;
        let path = self.dir.join(&name);
        let writer = PartWriter::create(&path, self.schema.clone(), self.props.clone())?;
        Ok(self.current.insert(OpenPart {
            writer,
            path,
            rows: 0,
        }))
    }

    fn close_part(&mut self) -> Result<()> {
        let Some(part) = self.current.take() else {
            return Ok(());
        };
        // Dropped on failure, the atomic file removes the temporary part.
        let OpenPart { writer, path, rows } = part;
        let result = writer.commit();
        match result {
            Ok(()) => {
                self.summary.files.push(path);
                Ok(())
            }
            Err(e) => {
                self.summary.rows -= rows;
                Err(e)
            }
        }
    }

    fn record_batch(
        &self,
        records: &[EmbeddingRecord],
        embeddings: ArrayView2<'_, f32>,
    ) -> Result<RecordBatch> {
        build_batch(&self.schema, &self.meta, records, embeddings).map_err(|e| Error::InvalidRows {
            op: "EmbeddingWriter::append",
            reason: e,
        })
    }
}

/// Checks rows handed to a writer (`op` names it in errors): one embedding row per record,
/// `meta.feature_dim` columns, labels within `meta.classes`.
pub(crate) fn check_rows(
    op: &'static str,
    meta: &StoreMetadata,
    records: &[EmbeddingRecord],
    embeddings: ArrayView2<'_, f32>,
) -> Result<()> {
    if records.len() != embeddings.nrows() {
        return Err(Error::InvalidRows {
            op,
            reason: format!(
                "{} records but {} embedding rows",
                records.len(),
                embeddings.nrows()
            ),
        });
    }
    if embeddings.ncols() != meta.feature_dim {
        return Err(Error::InvalidRows {
            op,
            reason: format!(
                "embeddings have {} columns but the model's feature_dim is {}",
                embeddings.ncols(),
                meta.feature_dim
            ),
        });
    }
    let n_classes = meta.classes.len();
    if let Some(r) = records
        .iter()
        .find(|r| r.label < 0 || r.label as usize >= n_classes)
    {
        return Err(Error::InvalidRows {
            op,
            reason: format!(
                "`{}` has label {} but there are {n_classes} classes",
                r.id, r.label
            ),
        });
    }
    Ok(())
}

/// Builds one Arrow record batch of the store schema.
pub(crate) fn build_batch(
    schema: &SchemaRef,
    meta: &StoreMetadata,
    records: &[EmbeddingRecord],
    embeddings: ArrayView2<'_, f32>,
) -> std::result::Result<RecordBatch, String> {
    let ids = StringArray::from_iter_values(records.iter().map(|r| r.id.as_str()));
    let labels = Int32Array::from_iter_values(records.iter().map(|r| r.label));
    let names = DictionaryArray::<Int32Type>::try_new(
        labels.clone(),
        Arc::new(StringArray::from_iter_values(
            meta.classes.iter().map(String::as_str),
        )),
    )
    .map_err(|e| e.to_string())?;
    let splits = StringArray::from_iter_values(records.iter().map(|r| r.split.as_str()));
    let hashes = StringArray::from_iter_values(records.iter().map(|r| r.content_hash.as_str()));
    let models = StringArray::from_iter_values(records.iter().map(|_| meta.fingerprint.as_str()));
    let values: Vec<f32> = embeddings.iter().copied().collect();
    let dim = i32::try_from(meta.feature_dim).map_err(|e| e.to_string())?;
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", arrow_schema::DataType::Float32, false)),
        dim,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .map_err(|e| e.to_string())?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(labels),
        Arc::new(names),
        Arc::new(splits),
        Arc::new(hashes),
        Arc::new(models),
        Arc::new(list),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}
