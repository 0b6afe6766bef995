//! [`StoreReader`]: lists a store's complete part files and reads them back.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{
    Array, BooleanArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
};
use arrow_schema::DataType;
use ndarray::Array2;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::schema::{
    COL_CONTENT_HASH, COL_EMBEDDING, COL_ID, COL_LABEL, COL_MODEL, COL_SPLIT, StoreMetadata,
};
use crate::{Error, Result, io_err, pq_err};

/// One complete part file of a store.
#[derive(Debug, Clone)]
pub struct StoreFile {
    /// Path of the file.
    pub path: PathBuf,
    /// Its footer metadata.
    pub meta: StoreMetadata,
    /// Rows in the file.
    pub rows: usize,
    /// Size on disk in bytes.
    pub bytes: u64,
    /// blake3 of its embedding values (`xfer.checksum`; `None` in files written before it).
    pub checksum: Option<String>,
}

/// The identity of one stored row (everything but the embedding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Image path relative to the dataset root.
    pub id: String,
    /// Class index.
    pub label: i32,
    /// Split tag.
    pub split: String,
    /// blake3 hex of the image bytes.
    pub content_hash: String,
    /// Model fingerprint.
    pub model: String,
    /// False when a newer row for the same `(id, model)` exists (the image changed).
    pub live: bool,
}

/// A split loaded into memory: one row of `features` per image, sorted by id.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    /// `[n, feature_dim]` embeddings.
    pub features: Array2<f32>,
    /// Class index of each row.
    pub labels: Vec<i32>,
    /// Image id (path relative to the dataset root) of each row.
    pub ids: Vec<String>,
    /// Class names; `labels` index this list.
    pub classes: Vec<String>,
    /// Fingerprint of the model that made the embeddings.
    pub fingerprint: String,
    /// Everything that made the numbers (fingerprint, input size, preprocessing, ...).
    pub identity: crate::ModelIdentity,
}

/// Row counts of one model in a store.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// Fingerprint.
    pub fingerprint: String,
    /// Model name from the file metadata.
    pub name: String,
    /// Embedding dimension.
    pub feature_dim: usize,
    /// Input size `[h, w]`.
    pub image_size: [u32; 2],
    /// Preprocessing in words.
    pub preprocessing: String,
    /// Numeric precision of the rows (`fp32`, `bf16`).
    pub precision: String,
    /// Execution provider whose kernels made them (`onnxruntime`, `openvino`).
    pub provider: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Live rows (one per image).
    pub rows: usize,
    /// Rows superseded by a newer row for the same image (dropped by `compact`).
    pub superseded: usize,
    /// Live rows per split.
    pub per_split: BTreeMap<String, usize>,
    /// Live rows per class name.
    pub per_label: BTreeMap<String, usize>,
    /// Live rows per (split, class name).
    pub per_split_label: BTreeMap<(String, String), usize>,
}

/// What `xfer store info` shows.
#[derive(Debug, Clone, Default)]
pub struct StoreInfo {
    /// Store directory.
    pub dir: PathBuf,
    /// Complete part files.
    pub files: usize,
    /// Bytes on disk of the complete part files.
    pub bytes: u64,
    /// Temporary files of writers still running or killed.
    pub temp_files: Vec<PathBuf>,
    /// Per model.
    pub models: Vec<ModelInfo>,
}

impl std::fmt::Display for StoreInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "store {}", self.dir.display())?;
        writeln!(
            f,
            "  {} part file(s), {:.1} MiB on disk",
            self.files,
            self.bytes as f64 / (1024.0 * 1024.0)
        )?;
        if !self.temp_files.is_empty() {
            writeln!(
                f,
                "  {} temporary file(s) of running or killed writers (ignored by readers; `xfer store compact` removes those of dead writers)",
                self.temp_files.len()
            )?;
        }
        for m in &self.models {
            writeln!(f, "model {} ({})", m.name, m.fingerprint)?;
            writeln!(
                f,
                "  dimension {}, input {}x{}, preprocessing `{}`",
                m.feature_dim, m.image_size[0], m.image_size[1], m.preprocessing
            )?;
            writeln!(f, "  precision {}, provider {}", m.precision, m.provider)?;
            write!(f, "  rows {}", m.rows)?;
            if m.superseded > 0 {
                write!(
                    f,
                    " (+{} superseded by newer rows; `xfer store compact` drops them)",
                    m.superseded
                )?;
            }
            writeln!(f)?;
            let labels = m.classes.iter().filter(|c| m.per_label.contains_key(*c));
            let labels: Vec<&String> = labels.collect();
            write!(f, "  {:<12} {:>8}", "split", "rows")?;
            for c in &labels {
                write!(f, " {c:>8}")?;
            }
            writeln!(f)?;
            for (split, n) in &m.per_split {
                write!(f, "  {split:<12} {n:>8}")?;
                for c in &labels {
                    let k = m
                        .per_split_label
                        .get(&(split.clone(), (*c).clone()))
                        .copied()
                        .unwrap_or(0);
                    write!(f, " {k:>8}")?;
                }
                writeln!(f)?;
            }
            write!(f, "  {:<12} {:>8}", "all", m.rows)?;
            for c in &labels {
                write!(f, " {:>8}", m.per_label.get(*c).copied().unwrap_or(0))?;
            }
            writeln!(f)?;
        }
        if self.models.is_empty() {
            writeln!(f, "  (empty)")?;
        }
        Ok(())
    }
}

/// What [`StoreReader::compact`] did.
#[derive(Debug, Clone, Default)]
pub struct CompactSummary {
    /// Part files merged (and removed).
    pub files_in: usize,
    /// Files written (one per model).
    pub files_out: Vec<PathBuf>,
    /// Rows kept.
    pub rows: usize,
    /// Superseded or duplicate rows dropped.
    pub dropped: usize,
    /// Temporary files of dead writers removed.
    pub temp_removed: usize,
}

/// A read-only view of a store directory: its complete part files, in name (= time) order.
#[derive(Debug, Clone)]
pub struct StoreReader {
    dir: PathBuf,
    files: Vec<StoreFile>,
    temp_files: Vec<PathBuf>,
}

/// One row of the index (everything but the embedding), with its position.
pub(crate) struct IndexRow {
    /// Index of its file in [`StoreReader::files`].
    pub(crate) file: usize,
    /// Its row number in that file.
    pub(crate) row: usize,
    /// Its identity.
    pub(crate) key: StoredKey,
}

fn is_part_name(name: &str) -> bool {
    !name.starts_with('.') && !name.starts_with('_') && name.ends_with(".parquet")
}

impl StoreReader {
    /// Opens an existing store directory (an error if it does not exist).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotFound {
                store: dir.display().to_string(),
                reason:
                    "no such directory; create it with `xfer extract --store DIR` (`just extract`)"
                        .to_owned(),
            });
        }
        Self::open_or_empty(dir)
    }

    /// Opens a store directory; a missing directory is an empty store.
    pub fn open_or_empty(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut temp_files = Vec::new();
        if dir.is_dir() {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
                let entry = entry.map_err(io_err("list", dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_part_name(&name) && entry.path().is_file() {
                    names.push(name);
                } else if name.starts_with(".part-") && name.ends_with(".tmp") {
                    temp_files.push(entry.path());
                }
            }
            names.sort();
            temp_files.sort();
            for name in names {
                files.push(read_file_meta(&dir.join(name))?);
            }
        }
        Ok(StoreReader {
            dir: dir.to_path_buf(),
            files,
            temp_files,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Complete part files, oldest first.
    pub fn files(&self) -> &[StoreFile] {
        &self.files
    }

    /// Temporary files of running or killed writers.
    pub fn temp_files(&self) -> &[PathBuf] {
        &self.temp_files
    }

    /// Fingerprints in the store with their model names, in first-seen order.
    pub fn models(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for f in &self.files {
            if !out.iter().any(|(fp, _)| *fp == f.meta.fingerprint) {
                out.push((f.meta.fingerprint.clone(), f.meta.model_name.clone()));
            }
        }
        out
    }

    /// The metadata shared by the files of `fingerprint` (an error if their classes or dimension disagree).
    pub fn model_metadata(&self, fingerprint: &str) -> Result<Option<StoreMetadata>> {
        let mut found: Option<&StoreFile> = None;
        for f in self
            .files
            .iter()
            .filter(|f| f.meta.fingerprint == fingerprint)
        {
            match found {
                None => found = Some(f),
                Some(first) => {
                    self.check_same_identity(first, f)?;
                    if first.meta.classes != f.meta.classes
                        || first.meta.feature_dim != f.meta.feature_dim
                    {
                        return Err(Error::Inconsistent {
                            store: self.dir.display().to_string(),
                            reason: format!(
                                "{} (classes {:?}, dim {}) and {} (classes {:?}, dim {}) disagree; extract into separate stores",
                                first.path.display(),
                                first.meta.classes,
                                first.meta.feature_dim,
                                f.path.display(),
                                f.meta.classes,
                                f.meta.feature_dim
                            ),
                        });
                    }
                }
            }
        }
        Ok(found.map(|f| f.meta.clone()))
    }

    /// Refuses two files of one fingerprint whose rows were made another way (input size,
    /// preprocessing, ...): their rows cannot be told apart (stores written by an older xfer
    /// or another writer; `extract` refuses to mix them).
    fn check_same_identity(&self, first: &StoreFile, other: &StoreFile) -> Result<()> {
        let a = first.meta.model_identity();
        match a.difference(&other.meta.model_identity()) {
            None => Ok(()),
            Some((field, x, y)) => Err(Error::Inconsistent {
                store: self.dir.display().to_string(),
                reason: format!(
                    "{} and {} hold rows of model {} made with {field} `{x}` and `{y}`, which cannot be told apart; move the files of one {field} into another store and extract into separate stores",
                    first.path.display(),
                    other.path.display(),
                    a.fingerprint
                ),
            }),
        }
    }

    /// Every stored row's identity (no embeddings), oldest file first; `live` marks the current row per (id, model).
    pub fn stored_keys(&self) -> Result<Vec<StoredKey>> {
        Ok(self.index()?.into_iter().map(|r| r.key).collect())
    }

    /// Every stored row with its position; `live` marks the current row per `(id, model)`.
    pub(crate) fn index(&self) -> Result<Vec<IndexRow>> {
        let mut rows = Vec::new();
        for (fi, f) in self.files.iter().enumerate() {
            let keys = [COL_ID, COL_LABEL, COL_SPLIT, COL_CONTENT_HASH, COL_MODEL];
            let reader = read_columns(&f.path, Some(&keys), 8192)?;
            let mut r = 0;
            for batch in reader {
                let batch = batch.map_err(pq_err("read", &f.path))?;
                let ids = string_col(&batch, COL_ID, &f.path)?;
                let labels = int_col(&batch, COL_LABEL, &f.path)?;
                let splits = string_col(&batch, COL_SPLIT, &f.path)?;
                let hashes = string_col(&batch, COL_CONTENT_HASH, &f.path)?;
                let models = string_col(&batch, COL_MODEL, &f.path)?;
                for i in 0..batch.num_rows() {
                    rows.push(IndexRow {
                        file: fi,
                        row: r,
                        key: StoredKey {
                            id: ids.value(i).to_owned(),
                            label: labels.value(i),
                            split: splits.value(i).to_owned(),
                            content_hash: hashes.value(i).to_owned(),
                            model: models.value(i).to_owned(),
                            live: true,
                        },
                    });
                    r += 1;
                }
            }
        }
        // The newest row per (id, model) is live; files are in time order.
        let mut latest: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            latest.insert((row.key.id.as_str(), row.key.model.as_str()), i);
        }
        let mut live = vec![false; rows.len()];
        for i in latest.into_values() {
            live[i] = true;
        }
        for (row, l) in rows.iter_mut().zip(live) {
            row.key.live = l;
        }
        Ok(rows)
    }

    /// Resolves `fingerprint` (full or a unique prefix of 8+ characters) or the only model in the store.
    pub fn resolve_model(&self, fingerprint: Option<&str>) -> Result<String> {
        let models = self.models();
        let list = || {
            models
                .iter()
                .map(|(fp, name)| format!("{fp} ({name})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match fingerprint {
            None => match models.as_slice() {
                [] => Err(Error::NotFound {
                    store: self.dir.display().to_string(),
                    reason: "the store is empty; run `xfer extract` first".to_owned(),
                }),
                [(fp, _)] => Ok(fp.clone()),
                _ => Err(Error::Inconsistent {
                    store: self.dir.display().to_string(),
                    reason: format!(
                        "holds several models ({}); name one with --fingerprint FP (the full fingerprint or a unique prefix of 8+ characters)",
                        list()
                    ),
                }),
            },
            Some(want) => {
                let hits: Vec<&(String, String)> = models
                    .iter()
                    .filter(|(fp, _)| fp == want || (want.len() >= 8 && fp.starts_with(want)))
                    .collect();
                match hits.as_slice() {
                    [(fp, _)] => Ok(fp.clone()),
                    _ => Err(Error::NotFound {
                        store: self.dir.display().to_string(),
                        reason: format!(
                            "no single model with --fingerprint `{want}`; the store holds: {}",
                            list()
                        ),
                    }),
                }
            }
        }
    }

    /// Loads the live rows of `split` for one model into a matrix, sorted by id.
    ///
    /// `fingerprint` may be omitted when the store holds one model.
    pub fn load_split(&self, split: &str, fingerprint: Option<&str>) -> Result<LoadedSplit> {
        let fp = self.resolve_model(fingerprint)?;
        let meta = self.model_metadata(&fp)?.ok_or_else(|| Error::NotFound {
            store: self.dir.display().to_string(),
            reason: format!("no rows of model {fp}"),
        })?;
        let index = self.index()?;
        let mut chosen: Vec<&IndexRow> = index
            .iter()
            .filter(|r| r.key.live && r.key.model == fp && r.key.split == split)
            .collect();
        if chosen.is_empty() {
            let mut splits: BTreeMap<&str, usize> = BTreeMap::new();
            for r in index.iter().filter(|r| r.key.live && r.key.model == fp) {
                *splits.entry(r.key.split.as_str()).or_default() += 1;
            }
            let have = splits
                .iter()
                .map(|(s, n)| format!("{s} ({n} rows)"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NotFound {
                store: self.dir.display().to_string(),
                reason: format!(
                    "no rows in split `{split}` for model {}; splits present: {have}",
                    meta.model_name
                ),
            });
        }
        chosen.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        let features = self.read_embeddings(&chosen, meta.feature_dim)?;
        Ok(LoadedSplit {
            features,
            labels: chosen.iter().map(|r| r.key.label).collect(),
            ids: chosen.iter().map(|r| r.key.id.clone()).collect(),
            identity: meta.model_identity(),
            classes: meta.classes,
            fingerprint: fp,
        })
    }

    /// Reads the embeddings of `chosen` rows into a matrix, in the order given.
    pub(crate) fn read_embeddings(&self, chosen: &[&IndexRow], dim: usize) -> Result<Array2<f32>> {
        let n = chosen.len();
        let mut features = Array2::<f32>::zeros((n, dim));
        // (file, row) -> destination row.
        let mut wanted: BTreeMap<usize, HashMap<usize, usize>> = BTreeMap::new();
        for (dest, r) in chosen.iter().enumerate() {
            wanted.entry(r.file).or_default().insert(r.row, dest);
        }
        for (fi, rows) in &wanted {
            let f = &self.files[*fi];
            if f.meta.feature_dim != dim {
                return Err(Error::Inconsistent {
                    store: self.dir.display().to_string(),
                    reason: format!(
                        "{} has dimension {} but {dim} was expected",
                        f.path.display(),
                        f.meta.feature_dim
                    ),
                });
            }
            let reader = read_columns(&f.path, Some(&[COL_EMBEDDING]), 1024)?;
            let mut offset = 0;
            let mut checksum = blake3::Hasher::new();
            for batch in reader {
                let batch = batch.map_err(|e| damaged(f, &e.to_string()))?;
                crate::schema::hash_embeddings(&mut checksum, &batch, &f.path)?;
                let values = embedding_values(&batch, dim, &f.path)?;
                for i in 0..batch.num_rows() {
                    if let Some(&dest) = rows.get(&(offset + i)) {
                        features
                            .row_mut(dest)
                            .as_slice_mut()
                            .ok_or_else(|| Error::InvalidRows {
                                op: "load_split",
                                reason: "feature matrix is not contiguous".to_owned(),
                            })?
                            .copy_from_slice(&values[i * dim..(i + 1) * dim]);
                    }
                }
                offset += batch.num_rows();
            }
            check_sum(f, &checksum, offset)?;
        }
        Ok(features)
    }

    /// The live rows of model `fingerprint` for `ids` (those stored), with their embeddings.
    pub fn load_rows(
        &self,
        fingerprint: &str,
        ids: &std::collections::HashSet<String>,
    ) -> Result<(Vec<StoredKey>, Array2<f32>)> {
        let dim = self
            .model_metadata(fingerprint)?
            .map(|m| m.feature_dim)
            .unwrap_or(0);
        let index = self.index()?;
        let chosen: Vec<&IndexRow> = index
            .iter()
            .filter(|r| r.key.live && r.key.model == fingerprint && ids.contains(&r.key.id))
            .collect();
        let features = self.read_embeddings(&chosen, dim)?;
        Ok((chosen.iter().map(|r| r.key.clone()).collect(), features))
    }

    /// Decodes every page of every part file and checks each against its footer (row count,
    /// embedding checksum); the damaged parts, each with the reason.
    pub fn verify(&self) -> Vec<Error> {
        self.files
            .iter()
            .filter_map(|f| verify_file(f).err())
            .collect()
    }

    /// Row counts per model, split and label; dimension; size on disk.
    pub fn info(&self) -> Result<StoreInfo> {
        let index = self.index()?;
        let mut models = Vec::new();
        for (fp, _) in self.models() {
            let Some(meta) = self.model_metadata(&fp)? else {
                continue;
            };
            let identity = meta.model_identity();
            let mut m = ModelInfo {
                fingerprint: fp.clone(),
                name: meta.model_name.clone(),
                feature_dim: meta.feature_dim,
                image_size: meta.image_size,
                preprocessing: meta.preprocessing.clone(),
                precision: identity.precision_name().to_owned(),
                provider: identity.provider_name().to_owned(),
                classes: meta.classes.clone(),
                ..Default::default()
            };
            for r in index.iter().filter(|r| r.key.model == fp) {
                if !r.key.live {
                    m.superseded += 1;
                    continue;
                }
                m.rows += 1;
                let name = usize::try_from(r.key.label)
                    .ok()
                    .and_then(|l| meta.classes.get(l).cloned())
                    .unwrap_or_else(|| format!("#{}", r.key.label));
                *m.per_split.entry(r.key.split.clone()).or_default() += 1;
                *m.per_label.entry(name.clone()).or_default() += 1;
                *m.per_split_label
                    .entry((r.key.split.clone(), name))
                    .or_default() += 1;
            }
            models.push(m);
        }
        Ok(StoreInfo {
            dir: self.dir.clone(),
            files: self.files.len(),
            bytes: self.files.iter().map(|f| f.bytes).sum(),
            temp_files: self.temp_files.clone(),
            models,
        })
    }

    /// Merges all part files into one file per model, dropping superseded rows.
    ///
    /// The merged file is written under a temporary name and renamed into
    /// place before the old parts are removed; if interrupted in between, the
    /// merged file (newest) wins and a second `compact` removes the rest.
    /// Temporary files of writers that are no longer running are removed. Called under
    /// the store's lock: [`crate::StoreLock::compact`].
    pub(crate) fn compact(&self) -> Result<CompactSummary> {
        let index = self.index()?;
        let mut summary = CompactSummary {
            temp_removed: self.remove_dead_temp_files(),
            ..Default::default()
        };
        let live_per_file = self.live_per_file(&index);
        for (fp, _) in self.models() {
            let Some(meta) = self.model_metadata(&fp)? else {
                continue;
            };
            let group: Vec<usize> = (0..self.files.len())
                .filter(|&i| self.files[i].meta.fingerprint == fp)
                .collect();
            let all_live = group.iter().all(|&i| live_per_file[i].iter().all(|&l| l));
            if group.len() == 1 && all_live {
                summary.rows += self.files[group[0]].rows;
                continue;
            }
            let options = crate::WriterOptions {
                tag: Some("compact".to_owned()),
                ..Default::default()
            };
            let name = format!(
                "part-{}-00000.parquet",
                crate::writer::new_run_id(options.tag.as_deref())
            );
            let path = self.dir.join(&name);
            let props = crate::writer::part_properties(&meta, options.zstd_level, 4096)?;
            let schema = crate::schema::store_schema(meta.feature_dim);
            // Dropped on failure, the atomic file removes the temporary part.
            let write = || -> Result<usize> {
                let mut writer = crate::writer::PartWriter::create(&path, schema.clone(), props)?;
                let mut kept = 0;
                for &fi in &group {
                    let (f, mask) = (&self.files[fi], &live_per_file[fi]);
                    kept += copy_masked_rows(f, mask, Some(&schema), &mut writer)?;
                }
                writer.commit()?;
                Ok(kept)
            };
            let kept = write()?;
            self.remove_merged(&group, &mut summary)?;
            summary.dropped -= kept;
            summary.rows += kept;
            summary.files_out.push(path);
        }
        Ok(summary)
    }
}

impl StoreReader {
    /// Removes the temporary files of writers that are no longer running; how many.
    pub(crate) fn remove_dead_temp_files(&self) -> usize {
        self.temp_files
            .iter()
            .filter(|t| writer_is_dead(t) && std::fs::remove_file(t).is_ok())
            .count()
    }

    /// Per file, per row: whether the row is live (the current row of its `(id, model)`).
    fn live_per_file(&self, index: &[IndexRow]) -> Vec<Vec<bool>> {
        let mut live: Vec<Vec<bool>> = self.files.iter().map(|f| vec![false; f.rows]).collect();
        for r in index {
            if r.key.live
                && let Some(slot) = live.get_mut(r.file).and_then(|v| v.get_mut(r.row))
            {
                *slot = true;
            }
        }
        live
    }

    /// Removes the part files `group` once merged, counting their rows as dropped.
    fn remove_merged(&self, group: &[usize], summary: &mut CompactSummary) -> Result<()> {
        for &fi in group {
            let f = &self.files[fi];
            std::fs::remove_file(&f.path).map_err(io_err("remove merged part", &f.path))?;
            summary.dropped += f.rows;
            summary.files_in += 1;
        }
        Ok(())
    }
}

/// Copies the rows of part `f` whose `mask` entry is true into `writer` (re-typed to `schema`
/// when given, e.g. the store schema when merging parts); how many. `compact` keeps the live
/// rows this way, and reconciliation the rows whose image is still in the dataset.
pub(crate) fn copy_masked_rows(
    f: &StoreFile,
    mask: &[bool],
    schema: Option<&arrow_schema::SchemaRef>,
    writer: &mut crate::writer::PartWriter,
) -> Result<usize> {
    let reader = read_columns(&f.path, None, 1024)?;
    let mut offset = 0;
    let mut kept = 0;
    for batch in reader {
        let batch = batch.map_err(pq_err("read", &f.path))?;
        let n = batch.num_rows();
        let keep = mask
            .get(offset..offset + n)
            .ok_or_else(|| Error::InvalidRows {
                op: "copy rows",
                reason: format!("{} has more rows than its row mask", f.path.display()),
            })?;
        offset += n;
        let kept_batch =
            arrow_select::filter::filter_record_batch(&batch, &BooleanArray::from(keep.to_vec()))
                .map_err(pq_err("filter", &f.path))?;
        let kept_batch = match schema {
            Some(schema) => RecordBatch::try_new(schema.clone(), kept_batch.columns().to_vec())
                .map_err(pq_err("re-schema", &f.path))?,
            None => kept_batch,
        };
        kept += kept_batch.num_rows();
        writer.write(&kept_batch)?;
    }
    Ok(kept)
}

/// Reads every column of `f` (decoding every page) and checks it against its footer.
fn verify_file(f: &StoreFile) -> Result<()> {
    let reader = read_columns(&f.path, None, 1024).map_err(|e| damaged(f, &e.to_string()))?;
    let mut checksum = blake3::Hasher::new();
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| damaged(f, &e.to_string()))?;
        crate::schema::hash_embeddings(&mut checksum, &batch, &f.path)
            .map_err(|e| damaged(f, &e.to_string()))?;
        rows += batch.num_rows();
    }
    check_sum(f, &checksum, rows)
}

/// The error for a part file whose pages do not decode or whose embeddings do not match its
/// checksum, with the remedy.
fn damaged(f: &StoreFile, reason: &str) -> Error {
    Error::Damaged {
        path: f.path.display().to_string(),
        reason: reason.to_owned(),
    }
}

/// Checks the rows read and the checksum of a whole file's embeddings against its footer.
fn check_sum(f: &StoreFile, checksum: &blake3::Hasher, rows: usize) -> Result<()> {
    if rows != f.rows {
        return Err(damaged(
            f,
            &format!("{rows} rows decoded but its footer says {}", f.rows),
        ));
    }
    let sum = checksum.finalize().to_hex().to_string();
    match &f.checksum {
        Some(want) if *want != sum => Err(damaged(
            f,
            &format!("its embeddings hash to {sum} but its footer records {want}"),
        )),
        _ => Ok(()),
    }
}

/// The record batches of the part file `path`, `batch_size` rows each, with only `columns`
/// (all of them when `None`).
pub(crate) fn read_columns(
    path: &Path,
    columns: Option<&[&str]>,
    batch_size: usize,
) -> Result<ParquetRecordBatchReader> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err("read", path))?;
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    builder
        .with_batch_size(batch_size)
        .build()
        .map_err(pq_err("read", path))
}

/// True when the writer process named in a temporary part's name has exited (Linux: no `/proc/<pid>`).
fn writer_is_dead(tmp: &Path) -> bool {
    let name = tmp
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // .part-<millis>-[tag-]p<pid>-<seq>.parquet.<random>.tmp
    let pid = name
        .split('-')
        .filter_map(|s| s.strip_prefix('p'))
        .filter_map(|s| s.parse::<u32>().ok())
        .next_back();
    match pid {
        Some(pid) if Path::new("/proc/self").exists() => {
            !Path::new("/proc").join(pid.to_string()).exists()
        }
        _ => false,
    }
}

fn read_file_meta(path: &Path) -> Result<StoreFile> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let bytes = file.metadata().map_err(io_err("stat", path))?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::Format {
        path: path.display().to_string(),
        reason: format!("not a readable Parquet file ({e}); move it out of the store"),
    })?;
    let md = builder.metadata().file_metadata();
    let kv: HashMap<String, String> = md
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| kv.value.clone().map(|v| (kv.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    let meta = StoreMetadata::from_key_values(&kv, &path.display().to_string())?;
    let rows = usize::try_from(md.num_rows()).unwrap_or(0);
    let checksum = kv.get(crate::schema::META_CHECKSUM).cloned();
    let schema = builder.schema();
    let expect = crate::schema::store_schema(meta.feature_dim);
    for field in expect.fields() {
        let have = schema
            .field_with_name(field.name())
            .map_err(|_| Error::Format {
                path: path.display().to_string(),
                reason: format!("no column `{}`", field.name()),
            })?;
        let ok = match (field.data_type(), have.data_type()) {
            (DataType::FixedSizeList(_, a), DataType::FixedSizeList(_, b)) => a == b,
            (a, b) => a == b,
        };
        if !ok {
            return Err(Error::Format {
                path: path.display().to_string(),
                reason: format!(
                    "column `{}` is {} but xfer expects {}",
                    field.name(),
                    have.data_type(),
                    field.data_type()
                ),
            });
        }
    }
    Ok(StoreFile {
        path: path.to_path_buf(),
        meta,
        rows,
        bytes,
        checksum,
    })
}

fn string_col<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::Format {
            path: path.display().to_string(),
            reason: format!("column `{name}` is missing or not Utf8"),
        })
}

fn int_col<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a Int32Array> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .ok_or_else(|| Error::Format {
            path: path.display().to_string(),
            reason: format!("column `{name}` is missing or not Int32"),
        })
}

pub(crate) fn embedding_values<'a>(
    batch: &'a RecordBatch,
    dim: usize,
    path: &Path,
) -> Result<&'a [f32]> {
    let bad = |why: &str| Error::Format {
        path: path.display().to_string(),
        reason: format!("column `{COL_EMBEDDING}` {why}"),
    };
    let list = batch
        .column_by_name(COL_EMBEDDING)
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
        .ok_or_else(|| bad("is missing or not a FixedSizeList"))?;
    if list.value_length() as usize != dim {
        return Err(bad(&format!(
            "has length {} but {dim} was expected",
            list.value_length()
        )));
    }
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| bad("does not hold Float32"))?;
    let start = list.offset() * dim;
    let slice = values.values();
    slice
        .get(start..start + list.len() * dim)
        .ok_or_else(|| bad("is shorter than its row count"))
}
