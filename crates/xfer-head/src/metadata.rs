//! What an exported model (`xfer export`, the fine-tune export) records in its ONNX
//! metadata, and how `xfer evaluate` / `xfer predict` read it back: one type for both.

use serde::{Deserialize, Serialize};
use xfer_onnx::ModelProto;

use crate::export::{METADATA_CLASSES, METADATA_IMAGE_SIZE, METADATA_INPUT, PROBABILITIES_OUTPUT};
use crate::{Error, Result};

/// Metadata key saying the model was fine-tuned (`"true"`); absent otherwise.
pub const METADATA_FINETUNED: &str = "xfer.finetuned";

/// The metadata of an exported model (pixels → `probabilities`). The ONNX metadata
/// keys are the field names (`xfer.finetuned` for [`ModelMetadata::finetuned`]);
/// lists are stored as compact JSON, the rest as plain strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Input size `[height, width]` images are resized to.
    pub image_size: [u32; 2],
    /// Name of the pixel input.
    pub input: String,
    /// Tensor layout of the input (`NCHW`).
    pub layout: String,
    /// Channel order of the input (`RGB`).
    pub channel_order: String,
    /// Range of the pixel values.
    pub value_range: [f32; 2],
    /// Backbone name.
    pub backbone: String,
    /// Fingerprint of the backbone.
    pub fingerprint: String,
    /// Name of the probabilities output.
    pub output: String,
    /// Whether the backbone was fine-tuned (`xfer finetune`) rather than frozen (`xfer export`).
    #[serde(rename = "xfer.finetuned", default)]
    pub finetuned: bool,
}

impl ModelMetadata {
    /// Metadata of a model with the usual layout (NCHW, RGB, output `probabilities`).
    pub fn new(
        classes: Vec<String>,
        image_size: [u32; 2],
        input: &str,
        value_range: [f32; 2],
        backbone: &str,
        fingerprint: &str,
    ) -> Self {
        ModelMetadata {
            classes,
            image_size,
            input: input.to_owned(),
            layout: "NCHW".to_owned(),
            channel_order: "RGB".to_owned(),
            value_range,
            backbone: backbone.to_owned(),
            fingerprint: fingerprint.to_owned(),
            output: PROBABILITIES_OUTPUT.to_owned(),
            finetuned: false,
        }
    }

    /// The `(key, value)` pairs, in the order they are written.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let pair = |v: [String; 2]| format!("[{},{}]", v[0], v[1]);
        let mut entries = vec![
            (
                METADATA_CLASSES,
                serde_json::Value::from(self.classes.clone()).to_string(),
            ),
            (
                METADATA_IMAGE_SIZE,
                pair(self.image_size.map(|v| v.to_string())),
            ),
            (METADATA_INPUT, self.input.clone()),
            ("layout", self.layout.clone()),
            ("channel_order", self.channel_order.clone()),
            ("value_range", pair(self.value_range.map(|v| v.to_string()))),
            ("backbone", self.backbone.clone()),
            ("fingerprint", self.fingerprint.clone()),
            ("output", self.output.clone()),
        ];
        if self.finetuned {
            entries.push((METADATA_FINETUNED, "true".to_owned()));
        }
        entries
    }

    /// Writes the metadata into `model` (replacing keys it already has).
    pub fn write_to(&self, model: &mut ModelProto) {
        for (key, value) in self.entries() {
            model.set_metadata(key, &value);
        }
    }

    /// Reads the metadata of an exported model; `origin` names the model in errors.
    pub fn read_from(model: &ModelProto, origin: &str) -> Result<Self> {
        let r = Reader { model, origin };
        // Written by every exporter; older models may lack them, so they have defaults.
        let defaults = Self::new(Vec::new(), [0, 0], "", [0.0, 255.0], "", "");
        Ok(ModelMetadata {
            classes: r.json(METADATA_CLASSES, "a JSON list of names")?,
            image_size: r.json(METADATA_IMAGE_SIZE, "[h,w]")?,
            input: r.text(METADATA_INPUT)?.to_owned(),
            layout: r.or("layout", &defaults.layout),
            channel_order: r.or("channel_order", &defaults.channel_order),
            value_range: match model.metadata("value_range") {
                Some(_) => r.json("value_range", "[low,high]")?,
                None => defaults.value_range,
            },
            backbone: r.or("backbone", &defaults.backbone),
            fingerprint: r.or("fingerprint", &defaults.fingerprint),
            output: r.or("output", &defaults.output),
            finetuned: model.metadata(METADATA_FINETUNED) == Some("true"),
        })
    }
}

/// Reads metadata values of one model, naming the model and the key in errors.
struct Reader<'a> {
    model: &'a ModelProto,
    origin: &'a str,
}

impl Reader<'_> {
    fn error(&self, reason: String) -> Error {
        Error::Format {
            path: self.origin.to_owned(),
            reason,
        }
    }

    /// A required value as written.
    fn text(&self, key: &str) -> Result<&str> {
        self.model.metadata(key).ok_or_else(|| {
            self.error(format!(
                "no `{key}` metadata; this takes models written by `xfer export` or `xfer finetune`"
            ))
        })
    }

    /// A required value holding JSON (`what` says which, for the error).
    fn json<T: serde::de::DeserializeOwned>(&self, key: &str, what: &str) -> Result<T> {
        serde_json::from_str(self.text(key)?)
            .map_err(|e| self.error(format!("the `{key}` metadata is not {what}: {e}")))
    }

    /// An optional value as written, else `default`.
    fn or(&self, key: &str, default: &str) -> String {
        self.model.metadata(key).unwrap_or(default).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModelMetadata {
        ModelMetadata::new(
            vec!["cat".into(), "dog, big".into()],
            [150, 131],
            "pixels",
            [0.0, 255.0],
            "xception",
            "abc123",
        )
    }

    #[test]
    fn entries_keep_the_exporters_format() {
        let mut m = sample();
        m.finetuned = true;
        let entries = m.entries();
        let get = |k: &str| {
            entries
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("classes"), Some(r#"["cat","dog, big"]"#));
        assert_eq!(get("image_size"), Some("[150,131]"));
        assert_eq!(get("value_range"), Some("[0,255]"));
        assert_eq!(get("input"), Some("pixels"));
        assert_eq!(get("layout"), Some("NCHW"));
        assert_eq!(get("output"), Some("probabilities"));
        assert_eq!(get("xfer.finetuned"), Some("true"));
        assert_eq!(sample().entries().len(), 9, "no finetuned key when false");
    }

    #[test]
    fn round_trips_through_a_model() {
        for finetuned in [false, true] {
            let mut m = sample();
            m.finetuned = finetuned;
            let mut model = ModelProto::default();
            m.write_to(&mut model);
            assert_eq!(ModelMetadata::read_from(&model, "m.onnx").expect("read"), m);
        }
    }

    #[test]
    fn missing_or_bad_metadata_is_named() {
        let err = ModelMetadata::read_from(&ModelProto::default(), "m.onnx").expect_err("empty");
        let text = err.to_string();
        assert!(
            text.contains("m.onnx") && text.contains("`classes`"),
            "{text}"
        );
        assert!(text.contains("xfer export"), "{text}");
        let mut model = ModelProto::default();
        sample().write_to(&mut model);
        model.set_metadata("image_size", "150");
        let text = ModelMetadata::read_from(&model, "m.onnx")
            .expect_err("bad size")
            .to_string();
        assert!(text.contains("`image_size`"), "{text}");
    }
}
