//! Column names, the Arrow schema and the file-level metadata of store files.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::{Error, Result};

/// Column: image path relative to the dataset root (Utf8).
pub const COL_ID: &str = "id";
/// Column: class index into the classes list (Int32).
pub const COL_LABEL: &str = "label";
/// Column: class name (Dictionary<Int32, Utf8>).
pub const COL_LABEL_NAME: &str = "label_name";
/// Column: split tag (`train`, `val`, `test`; Utf8).
pub const COL_SPLIT: &str = "split";
/// Column: blake3 of the image file bytes, lowercase hex (Utf8).
pub const COL_CONTENT_HASH: &str = "content_hash";
/// Column: fingerprint (sha256 of the ONNX bytes) of the model that made the embedding (Utf8).
pub const COL_MODEL: &str = "model";
/// Column: the feature vector (FixedSizeList<Float32, D>).
pub const COL_EMBEDDING: &str = "embedding";

/// Metadata key: model name.
pub const META_MODEL_NAME: &str = "xfer.model_name";
/// Metadata key: model fingerprint.
pub const META_FINGERPRINT: &str = "xfer.fingerprint";
/// Metadata key: preprocessing applied inside the model graph.
pub const META_PREPROCESSING: &str = "xfer.preprocessing";
/// Metadata key: input image size as `HxW`.
pub const META_IMAGE_SIZE: &str = "xfer.image_size";
/// Metadata key: embedding dimension.
pub const META_FEATURE_DIM: &str = "xfer.feature_dim";
/// Metadata key: class names as a JSON array (index = label).
pub const META_CLASSES: &str = "xfer.classes";
/// Metadata key: version of xfer that wrote the file.
pub const META_XFER_VERSION: &str = "xfer.version";

/// The Arrow schema of a store file with `dim`-long embeddings.
pub fn store_schema(dim: usize) -> SchemaRef {
    let dim_i32 = i32::try_from(dim).unwrap_or(i32::MAX);
    Arc::new(Schema::new(vec![
        Field::new(COL_ID, DataType::Utf8, false),
        Field::new(COL_LABEL, DataType::Int32, false),
        Field::new(
            COL_LABEL_NAME,
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new(COL_SPLIT, DataType::Utf8, false),
        Field::new(COL_CONTENT_HASH, DataType::Utf8, false),
        Field::new(COL_MODEL, DataType::Utf8, false),
        Field::new(
            COL_EMBEDDING,
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim_i32,
            ),
            false,
        ),
    ]))
}

/// blake3 of a file's bytes as lowercase hex (the `content_hash` column).
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// What every store file records about the model and the dataset's classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMetadata {
    /// Model name (`xception`).
    pub model_name: String,
    /// Model fingerprint (sha256 of the ONNX bytes).
    pub fingerprint: String,
    /// Preprocessing inside the graph, in words (`x/127.5 - 1`).
    pub preprocessing: String,
    /// Input size `[height, width]`.
    pub image_size: [u32; 2],
    /// Embedding dimension.
    pub feature_dim: usize,
    /// Class names; `label` indexes this list.
    pub classes: Vec<String>,
    /// xfer version that wrote the file.
    pub xfer_version: String,
}

impl StoreMetadata {
    /// Metadata for embeddings of `manifest`'s model over a dataset with `classes`.
    pub fn from_manifest(manifest: &xfer_runtime::ModelManifest, classes: Vec<String>) -> Self {
        StoreMetadata {
            model_name: manifest.name.clone(),
            fingerprint: manifest.fingerprint.clone(),
            preprocessing: manifest.preprocessing.clone(),
            image_size: manifest.image_size,
            feature_dim: manifest.feature_dim,
            classes,
            xfer_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The key/value pairs written into the Parquet footer.
    pub fn to_key_values(&self) -> Vec<(String, String)> {
        vec![
            (META_MODEL_NAME.to_owned(), self.model_name.clone()),
            (META_FINGERPRINT.to_owned(), self.fingerprint.clone()),
            (META_PREPROCESSING.to_owned(), self.preprocessing.clone()),
            (
                META_IMAGE_SIZE.to_owned(),
                format!("{}x{}", self.image_size[0], self.image_size[1]),
            ),
            (META_FEATURE_DIM.to_owned(), self.feature_dim.to_string()),
            (
                META_CLASSES.to_owned(),
                serde_json::Value::from(self.classes.clone()).to_string(),
            ),
            (META_XFER_VERSION.to_owned(), self.xfer_version.clone()),
        ]
    }

    /// Parses the key/value pairs of a Parquet footer; `path` is used in messages.
    pub fn from_key_values(kv: &HashMap<String, String>, path: &str) -> Result<Self> {
        let get = |key: &str| {
            kv.get(key).cloned().ok_or_else(|| Error::Format {
                path: path.to_owned(),
                reason: format!("footer metadata lacks `{key}`"),
            })
        };
        let bad = |key: &str, v: &str| Error::Format {
            path: path.to_owned(),
            reason: format!("footer metadata `{key}` = `{v}` is malformed"),
        };
        let size = get(META_IMAGE_SIZE)?;
        let image_size = match size
            .split_once('x')
            .map(|(h, w)| (h.parse::<u32>(), w.parse::<u32>()))
        {
            Some((Ok(h), Ok(w))) => [h, w],
            _ => return Err(bad(META_IMAGE_SIZE, &size)),
        };
        let dim = get(META_FEATURE_DIM)?;
        let feature_dim = dim
            .parse::<usize>()
            .map_err(|_| bad(META_FEATURE_DIM, &dim))?;
        let classes_text = get(META_CLASSES)?;
        let classes: Vec<String> =
            serde_json::from_str(&classes_text).map_err(|_| bad(META_CLASSES, &classes_text))?;
        Ok(StoreMetadata {
            model_name: get(META_MODEL_NAME)?,
            fingerprint: get(META_FINGERPRINT)?,
            preprocessing: get(META_PREPROCESSING)?,
            image_size,
            feature_dim,
            classes,
            xfer_version: get(META_XFER_VERSION)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_key_values() {
        let meta = StoreMetadata {
            model_name: "m".into(),
            fingerprint: "abc".into(),
            preprocessing: "x/127.5 - 1".into(),
            image_size: [150, 120],
            feature_dim: 8,
            classes: vec!["cat".into(), "dog \"x\"".into()],
            xfer_version: "0.1.0".into(),
        };
        let kv: HashMap<String, String> = meta.to_key_values().into_iter().collect();
        assert_eq!(
            StoreMetadata::from_key_values(&kv, "f").expect("parse"),
            meta
        );
        let mut broken = kv.clone();
        broken.insert(META_IMAGE_SIZE.into(), "150".into());
        let err = StoreMetadata::from_key_values(&broken, "f").expect_err("must fail");
        assert!(err.to_string().contains(META_IMAGE_SIZE), "{err}");
    }

    #[test]
    fn content_hash_is_blake3_hex() {
        // blake3("abc"), from the BLAKE3 reference test vectors.
        assert_eq!(
            content_hash(b"abc"),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
