//! Reconciliation: a rerun of `extract` makes the store agree with the dataset as it is now.
//!
//! The rule, for the rows of the model being extracted (rows of other models are never
//! touched): a stored row is **stale** when
//! * the dataset's full listing no longer holds its id and its file is gone: every class
//!   folder, or every line of the CSV manifest, whatever this run's splits, `--shard` or
//!   `--limit` select (so rows of images another shard or a later run takes are kept). For
//!   class folders the file must be gone from disk: an entry that exists but cannot be
//!   listed (an unreadable folder, a dangling link) keeps its rows; for a manifest, an
//!   image it no longer lists is gone from the dataset; or
//! * the dataset lists its id under another class (a relabelled image).
//!
//! Stale rows are dropped physically: each part file holding some is rewritten without
//! them (atomically, under the same name, so the newest-part-wins order is kept) or removed
//! when none of its rows is left, whatever wrote the part (any `*.parquet` name). pyarrow,
//! pandas and every xfer reader then see one row per image. Before that, every image this
//! run selected that has no row, and whose bytes equal a stale row's (the content hash), gets
//! a row with that row's embedding under its new id, label and split: a moved, renamed or
//! relabelled image is not re-embedded. A crash in between leaves stale rows that the next
//! run drops.
//!
//! Rewriting needs the whole store: it runs under the exclusive store lock. A `--shard`
//! run reconciles only when no other writer holds the lock at that moment (the first of
//! N shards started together); otherwise it says so and leaves it to the next run.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use xfer_data::{Dataset, DatasetSource, Example};

use crate::reader::{IndexRow, StoreFile, StoreReader, copy_masked_rows};
use crate::schema::{META_CHECKSUM, StoreMetadata, content_hash};
use crate::writer::{EmbeddingRecord, EmbeddingWriter, PartWriter, WriterOptions};
use crate::{Result, io_err, pq_err};

/// What reconciling a store with its dataset did (or, for [`StoreReader::stale_rows`],
/// would drop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Rows dropped because their image is gone from the dataset (deleted, moved or renamed).
    pub gone: usize,
    /// Rows dropped because the dataset now lists their image under another class.
    pub relabelled_rows: usize,
    /// Images moved or renamed that kept a dropped row's embedding under their new id.
    pub moved: usize,
    /// Relabelled images that kept their embedding under their new class.
    pub relabelled: usize,
    /// Part files rewritten without their stale rows.
    pub parts_rewritten: usize,
    /// Part files removed because every row in them was stale.
    pub parts_removed: usize,
    /// Why reconciliation did not run (a `--shard` run while other writers held the store).
    pub deferred: Option<String>,
}

impl Reconciliation {
    /// Stale rows dropped (or found).
    pub fn dropped(&self) -> usize {
        self.gone + self.relabelled_rows
    }

    /// Images that kept a stored embedding under a new id or label.
    pub fn reused(&self) -> usize {
        self.moved + self.relabelled
    }
}

impl fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.deferred {
            return write!(f, "not reconciled with the dataset: {why}");
        }
        write!(
            f,
            "reconciled with the dataset: dropped {} stale row(s) ({} of images gone, {} relabelled); {} moved/renamed and {} relabelled image(s) kept their embedding; {} part file(s) rewritten, {} removed",
            self.dropped(),
            self.gone,
            self.relabelled_rows,
            self.moved,
            self.relabelled,
            self.parts_rewritten,
            self.parts_removed
        )
    }
}

/// Why a stored row is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// Its image is gone from the dataset.
    Gone,
    /// The dataset lists its image under another class.
    Relabelled,
}

impl StoreReader {
    /// The rows of model `fingerprint` that `extract` with `dataset` would drop (see the
    /// module documentation for the rule); nothing is changed.
    pub fn stale_rows(&self, dataset: &Dataset, fingerprint: &str) -> Result<Reconciliation> {
        let index = self.index()?;
        let mut found = Reconciliation::default();
        for (_, why) in find_stale(&index, dataset, fingerprint) {
            count_dropped(&mut found, why);
        }
        Ok(found)
    }
}

/// Reconciles the store `dir` (whose exclusive lock the caller holds) with `dataset` for the
/// model of `meta`: the embeddings of stale rows are reused for the `selected` images that
/// have the same bytes, then the stale rows are dropped.
pub(crate) fn reconcile(
    dir: &Path,
    dataset: &Dataset,
    selected: &[(Example, String)],
    meta: &StoreMetadata,
    options: &WriterOptions,
) -> Result<Reconciliation> {
    let store = StoreReader::open_or_empty(dir)?;
    let index = store.index()?;
    let stale = find_stale(&index, dataset, &meta.fingerprint);
    let mut summary = Reconciliation::default();
    if stale.is_empty() {
        return Ok(summary);
    }
    for &(_, why) in &stale {
        count_dropped(&mut summary, why);
    }
    reuse_embeddings(
        &store,
        &index,
        &stale,
        selected,
        meta,
        options,
        &mut summary,
    )?;
    drop_rows(&store, &index, &stale, &mut summary)?;
    Ok(summary)
}

fn count_dropped(summary: &mut Reconciliation, why: Stale) {
    match why {
        Stale::Gone => summary.gone += 1,
        Stale::Relabelled => summary.relabelled_rows += 1,
    }
}

/// The positions in `index` of the stale rows of model `fingerprint`, each with why.
fn find_stale(index: &[IndexRow], dataset: &Dataset, fingerprint: &str) -> Vec<(usize, Stale)> {
    let listed: HashMap<&str, u32> = dataset
        .examples()
        .iter()
        .map(|e| (e.id.as_str(), e.label))
        .collect();
    index
        .iter()
        .enumerate()
        .filter(|(_, r)| r.key.model == fingerprint)
        .filter_map(|(i, r)| match listed.get(r.key.id.as_str()) {
            Some(&label) => {
                (i64::from(label) != i64::from(r.key.label)).then_some((i, Stale::Relabelled))
            }
            None => is_gone(dataset, &r.key.id).then_some((i, Stale::Gone)),
        })
        .collect()
}

/// Whether the image `id`, which `dataset` does not list, is gone: for a manifest, always
/// (the manifest is the dataset); for class folders, when nothing is at its path (an entry
/// that exists but could not be listed keeps its rows).
fn is_gone(dataset: &Dataset, id: &str) -> bool {
    match dataset.source() {
        DatasetSource::CsvManifest => true,
        DatasetSource::ClassFolders => {
            let path = dataset.root().join(xfer_data::id_to_path(id));
            matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        }
    }
}

/// Writes, for each selected image without a row whose bytes equal a stale row's, a row
/// with that embedding under the image's id, label and split (a new part file).
fn reuse_embeddings(
    store: &StoreReader,
    index: &[IndexRow],
    stale: &[(usize, Stale)],
    selected: &[(Example, String)],
    meta: &StoreMetadata,
    options: &WriterOptions,
    summary: &mut Reconciliation,
) -> Result<()> {
    let stale_pos: HashSet<usize> = stale.iter().map(|&(i, _)| i).collect();
    let kept_ids: HashSet<&str> = index
        .iter()
        .enumerate()
        .filter(|(i, r)| r.key.model == meta.fingerprint && !stale_pos.contains(i))
        .map(|(_, r)| r.key.id.as_str())
        .collect();
    let by_hash: HashMap<&str, &IndexRow> = stale
        .iter()
        .filter_map(|&(i, _)| index.get(i))
        .map(|r| (r.key.content_hash.as_str(), r))
        .collect();
    let mut records = Vec::new();
    let mut sources = Vec::new();
    for (example, split) in selected
        .iter()
        .filter(|(e, _)| !kept_ids.contains(e.id.as_str()))
    {
        let Ok(bytes) = xfer_data::read_image_file(&example.path) else {
            continue;
        };
        let hash = content_hash(&bytes);
        let Some(&source) = by_hash.get(hash.as_str()) else {
            continue;
        };
        if source.key.id == example.id {
            summary.relabelled += 1;
        } else {
            summary.moved += 1;
        }
        records.push(EmbeddingRecord::for_example(example, split, hash)?);
        sources.push(source);
    }
    if records.is_empty() {
        return Ok(());
    }
    let features = store.read_embeddings(&sources, meta.feature_dim)?;
    let options = WriterOptions {
        tag: Some("reconcile".to_owned()),
        ..options.clone()
    };
    let mut writer = EmbeddingWriter::create(store.dir(), meta.clone(), &options)?;
    writer.append(&records, features.view())?;
    writer.finish()?;
    Ok(())
}

/// Rewrites every part file holding stale rows without them, or removes it when no row is left.
fn drop_rows(
    store: &StoreReader,
    index: &[IndexRow],
    stale: &[(usize, Stale)],
    summary: &mut Reconciliation,
) -> Result<()> {
    let mut keep: HashMap<usize, Vec<bool>> = HashMap::new();
    for &(i, _) in stale {
        let Some(row) = index.get(i) else { continue };
        let Some(file) = store.files().get(row.file) else {
            continue;
        };
        let mask = keep
            .entry(row.file)
            .or_insert_with(|| vec![true; file.rows]);
        if let Some(slot) = mask.get_mut(row.row) {
            *slot = false;
        }
    }
    let mut files: Vec<(usize, Vec<bool>)> = keep.into_iter().collect();
    files.sort_by_key(|(fi, _)| *fi);
    for (fi, mask) in files {
        let Some(file) = store.files().get(fi) else {
            continue;
        };
        if mask.iter().any(|&k| k) {
            rewrite_part(file, &mask)?;
            summary.parts_rewritten += 1;
        } else {
            std::fs::remove_file(&file.path).map_err(io_err("remove stale part", &file.path))?;
            summary.parts_removed += 1;
        }
    }
    Ok(())
}

/// Replaces part `file` (atomically, same name) by its rows whose `keep` entry is true, with
/// its own schema and footer metadata (a new checksum).
fn rewrite_part(file: &StoreFile, keep: &[bool]) -> Result<()> {
    let (schema, props) = part_layout(&file.path)?;
    let mut writer = PartWriter::create(&file.path, schema, props)?;
    copy_masked_rows(file, keep, None, &mut writer)?;
    writer.commit()
}

/// The Arrow schema (fields only) and the writer settings of an existing part: zstd, its
/// footer's key/value metadata except the checksum (recomputed) and the encoded Arrow schema.
fn part_layout(path: &Path) -> Result<(SchemaRef, WriterProperties)> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err("read", path))?;
    let schema = Arc::new(Schema::new(builder.schema().fields().clone()));
    let kv: Vec<KeyValue> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter(|kv| kv.key != META_CHECKSUM && kv.key != "ARROW:schema")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let level = ZstdLevel::try_new(crate::WriterOptions::default().zstd_level)
        .map_err(pq_err("zstd level", path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_key_value_metadata(Some(kv))
        .set_max_row_group_row_count(Some(4096))
        .build();
    Ok((schema, props))
}
