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
/// Metadata key: blake3 (hex) of the file's `embedding` values (float32, little endian, in
/// row order); checked whenever a whole file is read and by `xfer store verify`.
pub const META_CHECKSUM: &str = "xfer.checksum";
/// Metadata key: the [`ModelIdentity`] of the rows, as a JSON object.
pub const META_IDENTITY: &str = "xfer.identity";

/// Everything that changes the numbers of an embedding row, beyond the ONNX bytes (the
/// fingerprint; a size-dynamic graph has one fingerprint for every input size).
///
/// Rows of one fingerprint with different identities cannot be told apart in the `model`
/// column, so `extract` refuses to mix them, naming the differing field. Files written
/// before the identity existed lack `xfer.identity`: their identity is their footer's
/// fingerprint, input size and preprocessing with what xfer always used then (NCHW, RGB,
/// values 0..255, bilinear resize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// sha256 of the ONNX bytes.
    pub fingerprint: String,
    /// Input size `HxW`.
    pub image_size: String,
    /// Preprocessing inside the graph, in words.
    pub preprocessing: String,
    /// Input layout (`NCHW`).
    pub layout: String,
    /// Channel order (`RGB`).
    pub channel_order: String,
    /// Input value range (`0..255`).
    pub value_range: String,
    /// Resize method (`bilinear`, `bilinear-antialias`).
    pub resize: String,
    /// Execution provider whose kernels made the rows, where they are not ONNX Runtime's own
    /// (`openvino`); `None`: ONNX Runtime's CPU (or CUDA) kernels, as for every older file.
    pub provider: Option<String>,
    /// Numeric precision where it is not fp32 (`bf16`); `None`: fp32, as for every older file.
    pub precision: Option<String>,
}

impl ModelIdentity {
    /// The identity of `manifest`'s model run with `resize`.
    pub fn of(manifest: &xfer_runtime::ModelManifest, resize: xfer_data::ResizeMethod) -> Self {
        let [lo, hi] = manifest.value_range;
        ModelIdentity {
            fingerprint: manifest.fingerprint.clone(),
            image_size: size_text(manifest.image_size),
            preprocessing: manifest.preprocessing.clone(),
            layout: manifest.layout.clone(),
            channel_order: manifest.channel_order.clone(),
            value_range: format!("{lo}..{hi}"),
            resize: resize_name(resize).to_owned(),
            provider: None,
            precision: None,
        }
    }

    /// The identity of a file written before `xfer.identity` existed.
    fn legacy(fingerprint: &str, image_size: [u32; 2], preprocessing: &str) -> Self {
        ModelIdentity {
            fingerprint: fingerprint.to_owned(),
            image_size: size_text(image_size),
            preprocessing: preprocessing.to_owned(),
            layout: "NCHW".to_owned(),
            channel_order: "RGB".to_owned(),
            value_range: "0..255".to_owned(),
            resize: resize_name(xfer_data::ResizeMethod::Bilinear).to_owned(),
            provider: None,
            precision: None,
        }
    }

    /// The provider and precision fields of rows made on `device` at `precision`: fp32 rows of
    /// ONNX Runtime's own kernels leave both unset, so stores written before these fields
    /// existed keep their identity.
    pub fn engine(
        device: xfer_runtime::Device,
        precision: xfer_runtime::Precision,
    ) -> (Option<String>, Option<String>) {
        let provider = (device == xfer_runtime::Device::OpenVino).then(|| device.to_string());
        let precision = (precision != xfer_runtime::Precision::Fp32).then(|| precision.to_string());
        (provider, precision)
    }

    /// The provider, in words (`onnxruntime` when unset).
    pub fn provider_name(&self) -> &str {
        self.provider.as_deref().unwrap_or("onnxruntime")
    }

    /// The precision, in words (`fp32` when unset).
    pub fn precision_name(&self) -> &str {
        self.precision.as_deref().unwrap_or("fp32")
    }

    /// `(field, value)` pairs, in the order they are compared and written.
    fn fields(&self) -> [(&'static str, Option<&str>); 9] {
        [
            ("fingerprint", Some(self.fingerprint.as_str())),
            ("image_size", Some(self.image_size.as_str())),
            ("preprocessing", Some(self.preprocessing.as_str())),
            ("layout", Some(self.layout.as_str())),
            ("channel_order", Some(self.channel_order.as_str())),
            ("value_range", Some(self.value_range.as_str())),
            ("resize", Some(self.resize.as_str())),
            ("provider", self.provider.as_deref()),
            ("precision", self.precision.as_deref()),
        ]
    }

    /// The first field in which `other` differs: `(field, self's value, other's value)`.
    pub fn difference(&self, other: &ModelIdentity) -> Option<(&'static str, String, String)> {
        self.fields()
            .into_iter()
            .zip(other.fields())
            .find(|((_, a), (_, b))| a != b)
            .map(|((field, a), (_, b))| (field, show(field, a), show(field, b)))
    }

    /// The identity as a JSON object (the `xfer.identity` footer value; heads record it too).
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map_or(serde_json::Value::Null, Into::into)))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// Parses [`ModelIdentity::to_json`]'s text; `path` names the file in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let bad = || Error::Format {
            path: path.to_owned(),
            reason: format!("footer metadata `{META_IDENTITY}` = `{text}` is malformed"),
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
        let opt = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let req = |k: &str| opt(k).ok_or_else(bad);
        Ok(ModelIdentity {
            fingerprint: req("fingerprint")?,
            image_size: req("image_size")?,
            preprocessing: req("preprocessing")?,
            layout: req("layout")?,
            channel_order: req("channel_order")?,
            value_range: req("value_range")?,
            resize: req("resize")?,
            provider: opt("provider"),
            precision: opt("precision"),
        })
    }
}

/// An identity field's value in words: unset provider and precision are ONNX Runtime's
/// own kernels at fp32.
fn show(field: &str, value: Option<&str>) -> String {
    let default = match field {
        "provider" => "onnxruntime",
        "precision" => "fp32",
        _ => "(default)",
    };
    value.unwrap_or(default).to_owned()
}

fn size_text(size: [u32; 2]) -> String {
    format!("{}x{}", size[0], size[1])
}

fn resize_name(resize: xfer_data::ResizeMethod) -> &'static str {
    match resize {
        xfer_data::ResizeMethod::Bilinear => "bilinear",
        xfer_data::ResizeMethod::BilinearAntialias => "bilinear-antialias",
    }
}

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

/// Adds the embedding values of `batch` (a batch of the store schema read from or written to
/// `path`) to the checksum `hasher`.
pub(crate) fn hash_embeddings(
    hasher: &mut blake3::Hasher,
    batch: &arrow_array::RecordBatch,
    path: &std::path::Path,
) -> Result<()> {
    let dim = match batch
        .schema()
        .field_with_name(COL_EMBEDDING)
        .map(|f| f.data_type().clone())
    {
        Ok(DataType::FixedSizeList(_, n)) => usize::try_from(n).unwrap_or(0),
        _ => 0,
    };
    let values = crate::reader::embedding_values(batch, dim, path)?;
    for v in values {
        hasher.update(&v.to_le_bytes());
    }
    Ok(())
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
    /// Everything that changes the numbers (`None`: derived from the fields above, as for
    /// files written before the identity existed).
    pub identity: Option<ModelIdentity>,
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
            identity: Some(ModelIdentity::of(
                manifest,
                xfer_data::ResizeMethod::Bilinear,
            )),
        }
    }

    /// The same metadata for rows resized with `resize`.
    pub fn with_resize(mut self, resize: xfer_data::ResizeMethod) -> Self {
        if let Some(identity) = self.identity.as_mut() {
            identity.resize = resize_name(resize).to_owned();
        }
        self
    }

    /// The same metadata for rows made on `device` at `precision` ([`ModelIdentity::engine`]).
    pub fn with_engine(
        mut self,
        device: xfer_runtime::Device,
        precision: xfer_runtime::Precision,
    ) -> Self {
        if let Some(identity) = self.identity.as_mut() {
            (identity.provider, identity.precision) = ModelIdentity::engine(device, precision);
        }
        self
    }

    /// The identity of the rows: the recorded one, or the one derived for older files.
    pub fn model_identity(&self) -> ModelIdentity {
        self.identity.clone().unwrap_or_else(|| {
            ModelIdentity::legacy(&self.fingerprint, self.image_size, &self.preprocessing)
        })
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
            (META_IDENTITY.to_owned(), self.model_identity().to_json()),
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
            identity: kv
                .get(META_IDENTITY)
                .map(|text| ModelIdentity::from_json(text, path))
                .transpose()?,
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
            identity: None,
        };
        let kv: HashMap<String, String> = meta.to_key_values().into_iter().collect();
        let back = StoreMetadata::from_key_values(&kv, "f").expect("parse");
        assert_eq!(
            StoreMetadata {
                identity: None,
                ..back.clone()
            },
            meta
        );
        assert_eq!(back.model_identity(), meta.model_identity());
        let mut broken = kv.clone();
        broken.insert(META_IMAGE_SIZE.into(), "150".into());
        let err = StoreMetadata::from_key_values(&broken, "f").expect_err("must fail");
        assert!(err.to_string().contains(META_IMAGE_SIZE), "{err}");
    }

    #[test]
    fn a_file_without_an_identity_gets_the_one_xfer_used_then_and_size_is_named() {
        let mut kv: HashMap<String, String> = [
            (META_MODEL_NAME, "m"),
            (META_FINGERPRINT, "abc"),
            (META_PREPROCESSING, "x/127.5 - 1"),
            (META_IMAGE_SIZE, "150x150"),
            (META_FEATURE_DIM, "8"),
            (META_CLASSES, "[\"cat\"]"),
            (META_XFER_VERSION, "0.1.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let old = StoreMetadata::from_key_values(&kv, "f").expect("old file");
        assert_eq!(old.identity, None);
        let legacy = old.model_identity();
        assert_eq!(legacy.image_size, "150x150");
        assert_eq!(legacy.resize, "bilinear");
        let mut bigger = legacy.clone();
        bigger.image_size = "224x224".into();
        assert_eq!(
            legacy.difference(&bigger),
            Some(("image_size", "150x150".into(), "224x224".into()))
        );
        assert_eq!(legacy.difference(&legacy.clone()), None);
        kv.insert(META_IDENTITY.into(), "{\"fingerprint\": 1}".into());
        let err = StoreMetadata::from_key_values(&kv, "f").expect_err("malformed identity");
        assert!(err.to_string().contains(META_IDENTITY), "{err}");
    }

    #[test]
    fn provider_and_precision_are_part_of_the_identity_and_unset_means_cpu_fp32() {
        use xfer_runtime::{Device, Precision};
        // What xfer wrote before provider and precision were filled (null), and what it
        // writes for the CPU at fp32 now, are the same identity: old stores keep working.
        let written_before = r#"{"fingerprint":"abc","image_size":"150x150","preprocessing":"p","layout":"NCHW","channel_order":"RGB","value_range":"0..255","resize":"bilinear","provider":null,"precision":null}"#;
        let old = ModelIdentity::from_json(written_before, "f").expect("old identity");
        let mut cpu = old.clone();
        (cpu.provider, cpu.precision) = ModelIdentity::engine(Device::Cpu, Precision::Fp32);
        assert_eq!(old.difference(&cpu), None);
        assert_eq!(
            (old.provider_name(), old.precision_name()),
            ("onnxruntime", "fp32")
        );

        let mut bf16 = old.clone();
        (bf16.provider, bf16.precision) = ModelIdentity::engine(Device::OpenVino, Precision::Bf16);
        assert_eq!(
            old.difference(&bf16),
            Some(("provider", "onnxruntime".into(), "openvino".into()))
        );
        let mut ov_fp32 = bf16.clone();
        (ov_fp32.provider, ov_fp32.precision) =
            ModelIdentity::engine(Device::OpenVino, Precision::Fp32);
        assert_eq!(
            ov_fp32.difference(&bf16),
            Some(("precision", "fp32".into(), "bf16".into()))
        );
        // Round trip through the footer.
        let back = ModelIdentity::from_json(&bf16.to_json(), "f").expect("parse");
        assert_eq!(back, bf16);
        assert_eq!(back.precision.as_deref(), Some("bf16"));
        assert_eq!(back.provider.as_deref(), Some("openvino"));
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
