//! `xfer.Store` (native half): info, the cache check, keyed writes, the live rows.

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::PyReadonlyArray2;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use xfer_store::{EmbeddingRecord, LockWait, StoreLock, StoreReader};

use crate::model::Model;
use crate::{XferError, compute, to_py};

/// A store directory (the Python class `xfer.Store` wraps this one).
#[pyclass(module = "xfer._native", frozen)]
pub(crate) struct Store {
    dir: PathBuf,
}

fn wait_mode(wait: bool) -> LockWait {
    if wait {
        LockWait::Wait
    } else {
        LockWait::NoWait
    }
}

/// The rows handed to `Store.write`, checked for equal lengths.
struct Rows {
    ids: Vec<String>,
    labels: Vec<i32>,
    splits: Vec<String>,
    content_hashes: Vec<String>,
}

impl Rows {
    fn records(self, n_embeddings: usize) -> PyResult<Vec<EmbeddingRecord>> {
        let n = self.ids.len();
        let lengths = [
            self.labels.len(),
            self.splits.len(),
            self.content_hashes.len(),
            n_embeddings,
        ];
        if lengths.iter().any(|&l| l != n) {
            return Err(XferError::new_err(format!(
                "Store.write: {n} ids but {} labels, {} splits, {} content hashes and {} embedding rows",
                lengths[0], lengths[1], lengths[2], lengths[3]
            )));
        }
        Ok(self
            .ids
            .into_iter()
            .zip(self.labels)
            .zip(self.splits)
            .zip(self.content_hashes)
            .map(|(((id, label), split), content_hash)| EmbeddingRecord {
                id,
                label,
                split,
                content_hash,
            })
            .collect())
    }
}

#[pymethods]
impl Store {
    #[new]
    fn new(dir: PathBuf) -> Self {
        Store { dir }
    }

    /// The store directory.
    #[getter]
    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// `xfer store info` as a dict: `files`, `bytes`, `temp_files`, `models` (each with
    /// `fingerprint`, `name`, `feature_dim`, `image_size`, `classes`, `rows`, `superseded`,
    /// `per_split`, `per_label`) and `text` (the CLI's report).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let info = compute(py, || {
            StoreReader::open(&self.dir)
                .and_then(|s| s.info())
                .map_err(to_py)
        })?;
        let out = PyDict::new(py);
        out.set_item("dir", &info.dir)?;
        out.set_item("files", info.files)?;
        out.set_item("bytes", info.bytes)?;
        out.set_item("temp_files", &info.temp_files)?;
        let mut models = Vec::new();
        for m in &info.models {
            let d = PyDict::new(py);
            d.set_item("fingerprint", &m.fingerprint)?;
            d.set_item("name", &m.name)?;
            d.set_item("feature_dim", m.feature_dim)?;
            d.set_item("image_size", (m.image_size[0], m.image_size[1]))?;
            d.set_item("classes", &m.classes)?;
            d.set_item("rows", m.rows)?;
            d.set_item("superseded", m.superseded)?;
            d.set_item("per_split", m.per_split.clone())?;
            d.set_item("per_label", m.per_label.clone())?;
            models.push(d);
        }
        out.set_item("models", models)?;
        out.set_item("text", info.to_string())?;
        Ok(out)
    }

    /// The ids (of `ids`, in order) whose image the store does not hold yet for model
    /// `fingerprint` with the given content hash (new or changed images).
    fn missing(
        &self,
        py: Python<'_>,
        ids: Vec<String>,
        content_hashes: Vec<String>,
        fingerprint: String,
    ) -> PyResult<Vec<String>> {
        if ids.len() != content_hashes.len() {
            return Err(XferError::new_err(format!(
                "Store.missing: {} ids but {} content hashes",
                ids.len(),
                content_hashes.len()
            )));
        }
        compute(py, || {
            let store = StoreReader::open_or_empty(&self.dir).map_err(to_py)?;
            let stored: HashMap<String, String> = store
                .stored_keys()
                .map_err(to_py)?
                .into_iter()
                .filter(|k| k.live && k.model == fingerprint)
                .map(|k| (k.id, k.content_hash))
                .collect();
            Ok(ids
                .into_iter()
                .zip(content_hashes)
                .filter(|(id, hash)| stored.get(id) != Some(hash))
                .map(|(id, _)| id)
                .collect())
        })
    }

    /// Writes one part file of rows made by `model` over `classes`, atomically and under the
    /// store lock; a part written under the same `part_key` replaces it. A dict with `path`,
    /// `rows`, `replaced`, `temp_removed`.
    #[pyo3(signature = (model, classes, ids, labels, splits, content_hashes, embeddings, part_key, allow_mixed_models=false, wait=true))]
    #[allow(clippy::too_many_arguments)]
    fn write<'py>(
        &self,
        py: Python<'py>,
        model: PyRef<'py, Model>,
        classes: Vec<String>,
        ids: Vec<String>,
        labels: Vec<i32>,
        splits: Vec<String>,
        content_hashes: Vec<String>,
        embeddings: PyReadonlyArray2<'py, f32>,
        part_key: String,
        allow_mixed_models: bool,
        wait: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let meta = model.store_metadata(classes)?;
        let features = embeddings.as_array().to_owned();
        let rows = Rows {
            ids,
            labels,
            splits,
            content_hashes,
        };
        let records = rows.records(features.nrows())?;
        let part = compute(py, || {
            xfer_store::write_keyed_part(
                &self.dir,
                &meta,
                &part_key,
                &records,
                features.view(),
                allow_mixed_models,
                wait_mode(wait),
            )
            .map_err(to_py)
        })?;
        let out = PyDict::new(py);
        out.set_item("path", part.path)?;
        out.set_item("rows", part.rows)?;
        out.set_item("replaced", part.replaced)?;
        out.set_item("temp_removed", part.temp_removed)?;
        Ok(out)
    }

    /// Under the store lock, removes the temporary part files of writers that are no longer
    /// running; how many.
    #[pyo3(signature = (wait=true))]
    fn remove_dead_temp_files(&self, py: Python<'_>, wait: bool) -> PyResult<usize> {
        compute(py, || {
            StoreLock::acquire(&self.dir, None, wait_mode(wait))
                .and_then(|lock| lock.remove_dead_temp_files())
                .map_err(to_py)
        })
    }

    /// The store's complete part files in time order, each with a list saying which of its
    /// rows are live (the current row of their `(id, model)`; xfer's readers skip the others).
    fn live_rows(&self, py: Python<'_>) -> PyResult<Vec<(PathBuf, Vec<bool>)>> {
        compute(py, || {
            let store = StoreReader::open(&self.dir).map_err(to_py)?;
            let mut keys = store.stored_keys().map_err(to_py)?.into_iter();
            Ok(store
                .files()
                .iter()
                .map(|f| {
                    let live = keys.by_ref().take(f.rows).map(|k| k.live).collect();
                    (f.path.clone(), live)
                })
                .collect())
        })
    }
}
