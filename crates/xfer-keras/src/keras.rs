//! Reading a Keras 3 model: `config.json` plus the variables of `model.weights.h5`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use ndarray::ArrayD;

use crate::{Error, Result};

/// A Keras 3 model in memory: its config and its variables.
#[derive(Debug, Clone)]
pub struct KerasModel {
    /// The model config (`config.json`): `{"class_name": "Functional", "config": {...}}`.
    pub config: serde_json::Value,
    /// Variables by their HDF5 path without the leading slash
    /// (`layers/functional/layers/conv2d/vars/0`).
    pub weights: BTreeMap<String, ArrayD<f32>>,
}

impl KerasModel {
    /// A model from a config and variables built in memory (paths as in [`KerasModel::weights`]).
    pub fn new(config: serde_json::Value, weights: BTreeMap<String, ArrayD<f32>>) -> Self {
        KerasModel { config, weights }
    }

    /// Opens a `.keras` zip, or a `.weights.h5` file with `config.json` in the same folder.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.to_string_lossy();
        if name.ends_with(".h5") {
            let config = path.with_file_name("config.json");
            if !config.exists() {
                return Err(Error::Format {
                    path: name.into_owned(),
                    reason: format!(
                        "a bare weights file needs the model config; expected it at {} (or use KerasModel::from_parts)",
                        config.display()
                    ),
                });
            }
            return Self::from_parts(&config, path);
        }
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: name.to_string(),
            source,
        })?;
        let format_err = |reason: String| Error::Format {
            path: name.to_string(),
            reason,
        };
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            format_err(format!(
                "not a Keras 3 `.keras` file (a zip with config.json and model.weights.h5): {e}"
            ))
        })?;
        let mut read_entry = |entry: &str| -> Result<Vec<u8>> {
            let mut f = archive.by_name(entry).map_err(|e| {
                format_err(format!(
                    "no `{entry}` inside the archive ({e}); is this a Keras 3 model?"
                ))
            })?;
            let mut buf = Vec::with_capacity(usize::try_from(f.size()).unwrap_or(0));
            f.read_to_end(&mut buf)
                .map_err(|e| format_err(format!("reading `{entry}`: {e}")))?;
            Ok(buf)
        };
        let config_bytes = read_entry("config.json")?;
        let h5 = read_entry("model.weights.h5")?;
        let config = serde_json::from_slice(&config_bytes)
            .map_err(|e| format_err(format!("config.json is not valid JSON: {e}")))?;
        let weights = read_h5_weights(h5, &format!("{name}!model.weights.h5"))?;
        Ok(KerasModel { config, weights })
    }

    /// Reads `config.json` and a `.weights.h5` file given separately.
    pub fn from_parts(config: &Path, weights: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                path: p.display().to_string(),
                source,
            })
        };
        let config_bytes = read(config)?;
        let config = serde_json::from_slice(&config_bytes).map_err(|e| Error::Format {
            path: config.display().to_string(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let weights = read_h5_weights(read(weights)?, &weights.display().to_string())?;
        Ok(KerasModel { config, weights })
    }

    /// The variables stored under `<group>/vars/0`, `<group>/vars/1`, … in order.
    pub fn vars(&self, group: &str) -> Vec<&ArrayD<f32>> {
        (0..)
            .map_while(|i| self.weights.get(&format!("{group}/vars/{i}")))
            .collect()
    }
}

/// Reads every float dataset under `layers/` and `vars/` of a Keras 3 weights file.
fn read_h5_weights(bytes: Vec<u8>, path: &str) -> Result<BTreeMap<String, ArrayD<f32>>> {
    let format_err = |reason: String| Error::Format {
        path: path.to_owned(),
        reason,
    };
    let file = hdf5_reader::Hdf5File::from_vec(bytes)
        .map_err(|e| format_err(format!("not a readable HDF5 file: {e}")))?;
    let root = file.root_group().map_err(|e| format_err(e.to_string()))?;
    let (groups, _) = root.members().map_err(|e| format_err(e.to_string()))?;
    if !groups.iter().any(|g| g.name() == "layers") {
        return Err(format_err(
            "no `layers` group: this is not a Keras 3 weights file (Keras 2 `.h5` files are not supported; re-save the model with Keras 3 as `.keras`)"
                .to_owned(),
        ));
    }
    let mut out = BTreeMap::new();
    for group in groups {
        if group.name() == "layers" || group.name() == "vars" {
            let prefix = group.name().to_owned();
            walk(&group, &prefix, &mut out).map_err(format_err)?;
        }
    }
    Ok(out)
}

fn walk(
    group: &hdf5_reader::group::Group,
    prefix: &str,
    out: &mut BTreeMap<String, ArrayD<f32>>,
) -> Result<(), String> {
    let (groups, datasets) = group.members().map_err(|e| format!("{prefix}: {e}"))?;
    for d in datasets {
        let key = format!("{prefix}/{}", d.name());
        let array = match d.read_array::<f32>() {
            Ok(a) => a,
            Err(_) => d
                .read_array::<f64>()
                .map(|a| a.mapv(|v| v as f32))
                .map_err(|e| format!("dataset {key}: {e}"))?,
        };
        out.insert(key, array);
    }
    for g in groups {
        let name = format!("{prefix}/{}", g.name());
        walk(&g, &name, out)?;
    }
    Ok(())
}
