//! Module functions: hashing, the split rule, dataset listing, manifests, the ORT library.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rayon::prelude::*;
use xfer_data::{Dataset, Example, SplitAssignment};
use xfer_runtime::{Device, ModelManifest};

use crate::{compute, to_py};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(content_hash, m)?)?;
    m.add_function(wrap_pyfunction!(hash_files, m)?)?;
    m.add_function(wrap_pyfunction!(assign_splits, m)?)?;
    m.add_function(wrap_pyfunction!(list_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(read_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(ort_library, m)?)?;
    Ok(())
}

/// blake3 of `data` as lowercase hex: the store's `content_hash` of an image file's bytes.
#[pyfunction]
fn content_hash(data: &Bound<'_, PyBytes>) -> String {
    xfer_store::content_hash(data.as_bytes())
}

/// The `content_hash` of each file (read as the loader reads it), in parallel; `None` for a
/// file that cannot be read.
#[pyfunction]
fn hash_files(py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Vec<Option<String>>> {
    compute(py, || {
        Ok(paths
            .par_iter()
            .map(|p| {
                xfer_data::read_image_file(p)
                    .ok()
                    .map(|b| xfer_store::content_hash(&b))
            })
            .collect())
    })
}

/// The split of each id under `spec` and `seed` (the CLI's rule over the seeded order of all
/// the ids given: give the whole dataset), `None` for ids in no split. `labels` (class
/// indices) are needed only with `stratified`.
#[pyfunction]
#[pyo3(signature = (ids, spec=xfer_data::DEMO_SPLITS, seed=xfer_data::DEFAULT_SEED, labels=None, stratified=false))]
fn assign_splits(
    py: Python<'_>,
    ids: Vec<String>,
    spec: &str,
    seed: u64,
    labels: Option<Vec<u32>>,
    stratified: bool,
) -> PyResult<Vec<Option<String>>> {
    if let Some(labels) = &labels
        && labels.len() != ids.len()
    {
        return Err(crate::XferError::new_err(format!(
            "assign_splits: {} ids but {} labels",
            ids.len(),
            labels.len()
        )));
    }
    let assignment = SplitAssignment::parse(spec)
        .map_err(to_py)?
        .stratified(stratified);
    compute(py, move || {
        let examples: Vec<Example> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Example {
                id: id.clone(),
                path: PathBuf::from(id),
                label: labels.as_ref().and_then(|l| l.get(i).copied()).unwrap_or(0),
            })
            .collect();
        let tagged = assignment.assign(&examples, seed).map_err(to_py)?;
        let by_id: std::collections::HashMap<String, String> =
            tagged.into_iter().map(|(e, s)| (e.id, s)).collect();
        Ok(ids.iter().map(|id| by_id.get(id).cloned()).collect())
    })
}

/// Lists a dataset as `xfer extract` does (class folders or a CSV manifest): a dict with
/// `classes`, and per image (sorted by id) `ids`, `paths`, `labels`; `problems` lists the
/// entries that could not be listed.
#[pyfunction]
fn list_dataset<'py>(py: Python<'py>, root: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let dataset = compute(py, || Dataset::open(&root).map_err(to_py))?;
    let out = PyDict::new(py);
    out.set_item("classes", dataset.classes().to_vec())?;
    let examples = dataset.examples();
    out.set_item(
        "ids",
        examples.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "paths",
        examples.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "labels",
        examples.iter().map(|e| e.label).collect::<Vec<_>>(),
    )?;
    let problems: Vec<String> = dataset
        .listing_problems()
        .iter()
        .map(|p| format!("{} ({})", p.path.display(), p.reason))
        .collect();
    out.set_item("problems", problems)?;
    Ok(out)
}

/// A model folder's manifest (no ONNX Runtime needed): `name`, `fingerprint`,
/// `feature_dim`, `image_size` (h, w), `preprocessing`.
#[pyfunction]
fn read_manifest<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let m = ModelManifest::read(&dir).map_err(to_py)?;
    let out = PyDict::new(py);
    out.set_item("name", m.name)?;
    out.set_item("fingerprint", m.fingerprint)?;
    out.set_item("feature_dim", m.feature_dim)?;
    out.set_item("image_size", (m.image_size[0], m.image_size[1]))?;
    out.set_item("preprocessing", m.preprocessing)?;
    Ok(out)
}

/// The ONNX Runtime library xfer would load for `device`, found as the CLI finds it:
/// `ORT_DYLIB_PATH`, then `.ort/` in the working directory or one of its ancestors
/// (`.ort-gpu/` first for cuda/tensorrt). An `XferError` lists the places searched.
#[pyfunction]
#[pyo3(signature = (device="cpu"))]
fn ort_library(device: &str) -> PyResult<PathBuf> {
    let device: Device = device.parse().map_err(crate::XferError::new_err)?;
    xfer_runtime::find_library(None, device).map_err(to_py)
}
